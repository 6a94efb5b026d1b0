"""Least connections relative to weight (``balance = "leastconn"``)."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from relaybal.balance.leastconn import LeastConnections
from tests.balance_fakes import PROPERTY_SETTINGS, FakeServer, pick_names, seeded, server_lists


def leastconn() -> LeastConnections:
    return LeastConnections([], seeded())


def test_empty_candidates_give_none() -> None:
    assert leastconn().pick([], None) is None


def test_picks_the_least_loaded() -> None:
    pool = [FakeServer("a", 1, 5), FakeServer("b", 1, 1), FakeServer("c", 1, 3)]
    assert leastconn().pick(pool, None) is pool[1]


def test_load_is_relative_to_weight() -> None:
    # a: (2 + 1) / 1 = 3; b: (6 + 1) / 4 = 1.75; c: (1 + 1) / 1 = 2
    pool = [FakeServer("a", 1, 2), FakeServer("b", 4, 6), FakeServer("c", 1, 1)]
    assert leastconn().pick(pool, None) is pool[1]


def test_idle_servers_prefer_the_heavier() -> None:
    pool = [FakeServer("a", 1), FakeServer("b", 3), FakeServer("c", 2)]
    assert leastconn().pick(pool, None) is pool[1]


def test_ties_rotate() -> None:
    pool = [FakeServer("a"), FakeServer("b", 1, 7), FakeServer("c"), FakeServer("d")]
    algorithm = leastconn()
    assert pick_names(algorithm, pool, 7) == ["a", "c", "d", "a", "c", "d", "a"]


def test_ties_rotate_with_load_counted_after_the_pick() -> None:
    # A relay counts a message in flight only once it is handed to the pool;
    # meanwhile every pick sees the same loads and must not all go to "a".
    # (5 + 1) / 2 = (5 + 1) / 2 = (2 + 1) / 1
    pool = [FakeServer("a", 2, 5), FakeServer("b", 2, 5), FakeServer("c", 1, 2)]
    assert pick_names(leastconn(), pool, 6) == ["a", "b", "c", "a", "b", "c"]


def test_loads_follow_weights_when_each_pick_adds_load() -> None:
    pool = [FakeServer("a", 1), FakeServer("b", 2), FakeServer("c", 5)]
    algorithm = leastconn()
    for _ in range(80):
        chosen = algorithm.pick(pool, None)
        assert isinstance(chosen, FakeServer)
        chosen.load += 1
    assert [s.load for s in pool] == [10, 20, 50]


def test_release_makes_a_server_preferred_again() -> None:
    pool = [FakeServer("a", 1, 3), FakeServer("b", 1, 3)]
    algorithm = leastconn()
    pool[1].load = 2
    assert algorithm.pick(pool, None) is pool[1]
    pool[0].load = 0
    assert algorithm.pick(pool, None) is pool[0]


@PROPERTY_SETTINGS
@given(st.data())
def test_never_picks_a_more_loaded_candidate(data: st.DataObject) -> None:
    pool = data.draw(server_lists(max_size=8))
    algorithm = leastconn()
    for _ in range(data.draw(st.integers(1, 5))):
        for server in pool:
            server.load = data.draw(st.integers(0, 30))
        chosen = algorithm.pick(pool, None)
        if not pool:
            assert chosen is None
            continue
        assert any(chosen is server for server in pool)
        assert chosen is not None
        best = min(Fraction(s.load + 1, s.effective_weight) for s in pool)
        assert Fraction(chosen.load + 1, chosen.effective_weight) == best
