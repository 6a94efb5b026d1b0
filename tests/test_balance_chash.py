"""Consistent hashing of the client address (``balance = "source"``)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from relaybal.balance.base import Candidate
from relaybal.balance.chash import ConsistentHash
from tests.balance_fakes import (
    PROPERTY_SETTINGS,
    FakeServer,
    counts,
    seeded,
    server_lists,
    servers,
    subsets,
)

#: 10,000 distinct client addresses, as the backend passes them (packed bytes).
KEYS = [(ipaddress.IPv4Address("10.0.0.0") + n).packed for n in range(10_000)]


def mapping(algorithm: ConsistentHash, candidates: Sequence[Candidate]) -> list[str]:
    names = []
    for key in KEYS:
        chosen = algorithm.pick(candidates, key)
        assert chosen is not None
        names.append(chosen.name)
    return names


def test_empty_candidates_give_none() -> None:
    assert ConsistentHash(servers(1, 1), seeded()).pick([], b"\x7f\0\0\1") is None


def test_same_key_same_server() -> None:
    pool = servers(1, 1, 1, 1)
    algorithm = ConsistentHash(pool, seeded())
    key = bytes([192, 0, 2, 33])
    chosen = algorithm.pick(pool, key)
    assert all(algorithm.pick(pool, key) is chosen for _ in range(20))


def test_server_going_down_moves_only_its_own_keys() -> None:
    pool = servers(1, 1, 1, 1, 1)
    algorithm = ConsistentHash(pool, seeded())
    before = mapping(algorithm, pool)
    down = [s for s in pool if s.name != "s2"]
    after = mapping(algorithm, down)
    for old, new in zip(before, after, strict=True):
        if old == "s2":
            assert new != "s2"
        else:
            assert new == old
    # The orphaned keys are spread over the others, not dumped on a neighbour.
    moved = counts([new for old, new in zip(before, after, strict=True) if old == "s2"])
    assert len(moved) == 4 and min(moved.values()) > 0.1 * sum(moved.values())
    # Coming back, the server gets exactly its keys back.
    assert mapping(algorithm, pool) == before


def test_distribution_follows_weights() -> None:
    pool = servers(1, 1, 2, 3, 3)
    tally = counts(mapping(ConsistentHash(pool, seeded()), pool))
    for server in pool:
        due = len(KEYS) * server.effective_weight / 10
        assert abs(tally[server.name] - due) < 0.15 * due, (server.name, tally[server.name], due)


def test_mapping_depends_on_names_not_configuration_order() -> None:
    pool = servers(1, 2, 1, 3)
    reordered = list(reversed(pool))
    a = mapping(ConsistentHash(pool, seeded()), pool)
    b = mapping(ConsistentHash(reordered, seeded()), reordered)
    assert a == b


def test_mapping_of_a_subset_matches_the_full_ring() -> None:
    # The slow path (a ring restricted to the candidates) and the full ring
    # agree, and the restricted ring is reused for the same candidate set.
    pool = servers(2, 1, 1, 3, 1)
    algorithm = ConsistentHash(pool, seeded())
    before = mapping(algorithm, pool)
    only = [pool[0], pool[3]]
    after = mapping(algorithm, only)
    for old, new in zip(before, after, strict=True):
        assert new == old if old in ("s0", "s3") else new in ("s0", "s3")


def test_keys_stay_put_when_most_of_the_ring_is_unusable() -> None:
    # Four heavy servers own 200 of 202 shares; with only the two light ones
    # left, a pick uses the ring restricted to them. Keys already on a light
    # server must stay there, and the two still split the rest evenly.
    pool = servers(50, 50, 50, 50, 1, 1)
    algorithm = ConsistentHash(pool, seeded())
    with_one_heavy = mapping(algorithm, [pool[0], pool[4], pool[5]])
    light_only = mapping(algorithm, pool[4:])
    for wide, narrow in zip(with_one_heavy, light_only, strict=True):
        assert narrow == wide if wide != "s0" else narrow in ("s4", "s5")
    tally = counts(light_only)
    assert abs(tally["s4"] - tally["s5"]) < 0.3 * len(KEYS)
    # The same answers again once the restricted ring is cached.
    assert mapping(algorithm, pool[4:]) == light_only


def test_missing_key_hashes_like_empty_bytes() -> None:
    pool = servers(1, 1, 1, 1, 1, 1, 1)
    algorithm = ConsistentHash(pool, seeded())
    assert algorithm.pick(pool, None) is algorithm.pick(pool, b"")
    assert algorithm.pick(pool[2:], None) is algorithm.pick(pool[2:], b"")


def test_weight_increase_moves_keys_only_to_that_server() -> None:
    pool = servers(1, 1, 1, 1)
    algorithm = ConsistentHash(pool, seeded())
    before = mapping(algorithm, pool)
    pool[1].effective_weight = 3
    assert mapping(algorithm, pool) == before  # until told
    algorithm.servers_changed()
    after = mapping(algorithm, pool)
    gained = sum(1 for old, new in zip(before, after, strict=True) if old != new)
    assert all(new in (old, "s1") for old, new in zip(before, after, strict=True))
    assert counts(after)["s1"] > 0.4 * len(KEYS) and gained > 0.2 * len(KEYS)


def test_new_server_added_by_servers_changed_takes_only_its_share() -> None:
    pool = servers(1, 1, 1, 1)
    algorithm = ConsistentHash(pool, seeded())
    before = mapping(algorithm, pool)
    pool.append(FakeServer("s4"))
    algorithm.servers_changed()
    after = mapping(algorithm, pool)
    assert all(new in (old, "s4") for old, new in zip(before, after, strict=True))
    assert 0.15 * len(KEYS) < after.count("s4") < 0.25 * len(KEYS)


def test_candidates_without_points_still_get_keys() -> None:
    # Weight 0 when the ring was built (e.g. still in slowstart): no points, so
    # the keys are spread over the candidates by hash instead.
    pool = servers(0, 0)
    algorithm = ConsistentHash(pool, seeded())
    pool[0].effective_weight = pool[1].effective_weight = 1
    tally = counts(mapping(algorithm, pool))
    assert set(tally) == {"s0", "s1"}
    stranger = [FakeServer("unknown")]
    assert algorithm.pick(stranger, b"\1\2\3\4") is stranger[0]


@PROPERTY_SETTINGS
@given(st.data())
def test_a_key_stays_put_while_its_server_is_a_candidate(data: st.DataObject) -> None:
    pool = data.draw(server_lists(min_size=1, max_size=6, max_weight=8))
    algorithm = ConsistentHash(pool, seeded(), points_per_weight=20)
    key = data.draw(st.none() | st.binary(max_size=16))
    wider = subsets(data, pool)
    narrower = [s for s in wider if data.draw(st.booleans())]
    chosen = algorithm.pick(wider, key)
    if not wider:
        assert chosen is None
        return
    assert any(chosen is server for server in wider)
    if any(chosen is server for server in narrower):
        assert algorithm.pick(narrower, key) is chosen
    elif narrower:
        assert any(algorithm.pick(narrower, key) is server for server in narrower)
