"""First available server in configuration order (``balance = "first"``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relaybal.balance.first import FirstAvailable
from tests.balance_fakes import PROPERTY_SETTINGS, FakeServer, seeded, server_lists, subsets


def first() -> FirstAvailable:
    return FirstAvailable([], seeded())


def test_empty_candidates_give_none() -> None:
    assert first().pick([], None) is None


def test_unlimited_first_server_takes_everything() -> None:
    pool = [FakeServer("a", load=10_000), FakeServer("b"), FakeServer("c", maxconn=5)]
    algorithm = first()
    assert all(algorithm.pick(pool, None) is pool[0] for _ in range(5))


def test_fills_servers_in_order_up_to_maxconn() -> None:
    pool = [FakeServer("a", maxconn=2), FakeServer("b", maxconn=3), FakeServer("c", maxconn=1)]
    algorithm = first()
    chosen = []
    for _ in range(6):
        server = algorithm.pick(pool, None)
        assert isinstance(server, FakeServer)
        chosen.append(server.name)
        server.load += 1
    assert chosen == ["a", "a", "b", "b", "b", "c"]


def test_released_slot_on_an_earlier_server_is_used_first() -> None:
    pool = [FakeServer("a", load=2, maxconn=2), FakeServer("b", load=1, maxconn=2)]
    algorithm = first()
    assert algorithm.pick(pool, None) is pool[1]
    pool[0].load = 1
    assert algorithm.pick(pool, None) is pool[0]


def test_weight_plays_no_part() -> None:
    pool = [FakeServer("a", 1, maxconn=4), FakeServer("b", 256, maxconn=4)]
    assert first().pick(pool, None) is pool[0]


def test_all_full_gives_the_first_so_the_caller_queues() -> None:
    pool = [FakeServer("a", load=2, maxconn=2), FakeServer("b", load=5, maxconn=3)]
    assert first().pick(pool, None) is pool[0]


@PROPERTY_SETTINGS
@given(st.data())
def test_pick_is_the_first_candidate_with_room(data: st.DataObject) -> None:
    pool = data.draw(server_lists())
    candidates = subsets(data, pool)
    chosen = first().pick(candidates, None)
    with_room = [s for s in candidates if s.maxconn == 0 or s.load < s.maxconn]
    if with_room:
        assert chosen is with_room[0]
    elif candidates:
        assert chosen is candidates[0]
    else:
        assert chosen is None
