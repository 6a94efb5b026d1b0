"""Smooth weighted round robin (``balance = "roundrobin"``), and the algorithm registry."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaybal.balance.chash import ConsistentHash
from relaybal.balance.first import FirstAvailable
from relaybal.balance.leastconn import LeastConnections
from relaybal.balance.registry import ALGORITHMS, make_algorithm
from relaybal.balance.roundrobin import SmoothWeightedRoundRobin
from relaybal.balance.static_rr import StaticRoundRobin
from relaybal.balance.twochoices import PowerOfTwoChoices
from tests.balance_fakes import (
    PROPERTY_SETTINGS,
    FakeServer,
    counts,
    longest_run,
    pick_names,
    seeded,
    server_lists,
    servers,
    subsets,
)


def swrr(pool: list[FakeServer] | None = None) -> SmoothWeightedRoundRobin:
    return SmoothWeightedRoundRobin(pool or [], seeded())


def assert_every_window_exact(names: list[str], weights: dict[str, int]) -> None:
    period = sum(weights.values())
    expected = {name: weight for name, weight in weights.items() if weight}
    for start in range(len(names) - period + 1):
        assert counts(names[start : start + period]) == expected, start


def test_empty_candidates_give_none() -> None:
    assert swrr().pick([], None) is None


def test_single_candidate_always_chosen() -> None:
    pool = servers(3)
    algorithm = swrr(pool)
    assert all(algorithm.pick(pool, None) is pool[0] for _ in range(10))


@pytest.mark.parametrize("weights", [(1, 2, 5), (5, 1, 1), (3, 3, 1), (1, 1, 1, 1), (256, 1), (7,)])
def test_every_window_of_one_period_is_exact(weights: tuple[int, ...]) -> None:
    pool = servers(*weights)
    names = pick_names(swrr(pool), pool, 4 * sum(weights))
    assert_every_window_exact(names, {s.name: s.effective_weight for s in pool})


def test_zero_weight_servers_left_out_by_the_caller_take_nothing() -> None:
    pool = servers(1, 0, 2, 0, 5)
    candidates = [s for s in pool if s.effective_weight > 0]
    names = pick_names(swrr(pool), candidates, 3 * 8)
    assert counts(names) == {"s0": 3, "s2": 6, "s4": 15}


def test_weights_5_1_1_are_interleaved() -> None:
    # nginx's documented sequence for {a=5, b=1, c=1}: a a b a c a a.
    pool = servers(5, 1, 1)
    names = pick_names(swrr(pool), pool, 7 * 10)
    assert names[:7] == ["s0", "s0", "s1", "s0", "s2", "s0", "s0"]
    # Across period boundaries the heavy server runs at most 4 times (a burst
    # scheduler would give 5), and the light ones are never back to back.
    assert longest_run(names, "s0") == 4
    assert all({a, b} != {"s1", "s2"} for a, b in itertools.pairwise(names))


def test_weights_1_2_5_spread_the_heavy_server() -> None:
    pool = servers(1, 2, 5)
    names = pick_names(swrr(pool), pool, 8 * 10)
    assert longest_run(names, "s2") == 2
    assert longest_run(names, "s1") == 1


@PROPERTY_SETTINGS
@given(st.lists(st.integers(1, 8), min_size=1, max_size=4))
def test_any_window_is_within_two_of_its_share(weights: list[int]) -> None:
    """Smoothness: over *any* stretch of picks, not just whole periods, each
    server's count is less than 2 away from its weighted share."""
    pool = servers(*weights)
    total = sum(weights)
    names = pick_names(swrr(pool), pool, 2 * total)
    for start in range(total):
        seen = dict.fromkeys([s.name for s in pool], 0)
        for length in range(1, total + 1):
            seen[names[start + length - 1]] += 1
            for server in pool:
                deviation = seen[server.name] * total - length * server.effective_weight
                assert abs(deviation) < 2 * total


def test_server_going_away_leaves_an_exact_rotation_for_the_others() -> None:
    pool = servers(1, 2, 5)
    algorithm = swrr(pool)
    pick_names(algorithm, pool, 3)
    rest = [pool[0], pool[2]]
    names = pick_names(algorithm, rest, 6 * 6)
    assert_every_window_exact(names[6:], {"s0": 1, "s2": 5})
    assert counts(names) == {"s0": 6, "s2": 30}


def test_returning_server_gets_neither_burst_nor_drought() -> None:
    pool = servers(1, 1, 1, 1)
    algorithm = swrr(pool)
    pick_names(algorithm, pool, 2)
    pick_names(algorithm, pool[:3], 5)
    names = pick_names(algorithm, pool, 16)
    for start in range(0, 16, 4):
        assert names[start : start + 4].count("s3") == 1, names
    assert_every_window_exact(names[4:], {"s0": 1, "s1": 1, "s2": 1, "s3": 1})


def test_flapping_server_keeps_its_share() -> None:
    # A server that leaves and returns at every other pick keeps its place in
    # the rotation while away, so it still gets its third of the picks it is
    # there for (forgetting it on leaving would starve it completely).
    pool = servers(1, 1, 1)
    algorithm = swrr(pool)
    chosen: list[str] = []
    for turn in range(600):
        chosen += pick_names(algorithm, pool if turn % 2 else pool[:2], 1)
    tally = counts(chosen)
    assert tally["s2"] == 100
    assert tally["s0"] >= 200 and tally["s1"] >= 200


@pytest.mark.parametrize("weights", [(1, 1, 1), (1, 2, 5), (3, 1, 1, 1)])
def test_random_membership_changes_keep_shares_fair(weights: tuple[int, ...]) -> None:
    pool = servers(*weights)
    algorithm = swrr(pool)
    rng = random.Random(3)
    due = dict.fromkeys([s.name for s in pool], 0.0)
    chosen: list[str] = []
    for _ in range(10000):
        candidates = [s for s in pool if rng.random() < 0.7] or pool[:1]
        total = sum(s.effective_weight for s in candidates)
        for server in candidates:
            due[server.name] += server.effective_weight / total
        chosen += pick_names(algorithm, candidates, 1)
    tally = counts(chosen)
    for name, share in due.items():
        assert abs(tally[name] - share) < 0.15 * share, (name, tally[name], share)


def test_weight_change_takes_effect_without_restart() -> None:
    pool = servers(1, 1)
    algorithm = swrr(pool)
    pick_names(algorithm, pool, 3)
    pool[1].effective_weight = 3  # e.g. slowstart ramping up
    names = pick_names(algorithm, pool, 4 * 10)
    assert_every_window_exact(names[4:], {"s0": 1, "s1": 3})


def test_weight_drop_does_not_leave_a_long_debt() -> None:
    pool = servers(200, 1, 1)
    algorithm = swrr(pool)
    pick_names(algorithm, pool, 101)
    pool[0].effective_weight = 1
    names = pick_names(algorithm, pool, 3 * 5)
    assert_every_window_exact(names[3 * 2 :], {"s0": 1, "s1": 1, "s2": 1})


@PROPERTY_SETTINGS
@given(st.data())
def test_pick_returns_a_candidate_whatever_the_history(data: st.DataObject) -> None:
    pool = data.draw(server_lists(max_size=6, max_weight=20))
    algorithm = swrr(pool)
    for _ in range(data.draw(st.integers(0, 15))):
        candidates = subsets(data, pool)
        for server in candidates:
            server.effective_weight = data.draw(st.integers(1, 20))
        for _ in range(data.draw(st.integers(1, 4))):
            chosen = algorithm.pick(candidates, None)
            if candidates:
                assert any(chosen is server for server in candidates)
            else:
                assert chosen is None


@PROPERTY_SETTINGS
@given(st.data())
def test_rotation_becomes_exact_soon_after_any_history(data: st.DataObject) -> None:
    pool = data.draw(server_lists(min_size=1, max_size=6, max_weight=20))
    algorithm = swrr(pool)
    for _ in range(data.draw(st.integers(0, 15))):
        candidates = subsets(data, pool) or pool[:1]
        for server in candidates:
            server.effective_weight = data.draw(st.integers(1, 20))
        pick_names(algorithm, candidates, data.draw(st.integers(1, 4)))
    stable = subsets(data, pool) or pool
    period = sum(s.effective_weight for s in stable)
    names = pick_names(algorithm, stable, 4 * period)
    assert_every_window_exact(names[2 * period :], {s.name: s.effective_weight for s in stable})
    # Even during the settling, nobody strays 3 picks from its share.
    seen = dict.fromkeys([s.name for s in stable], 0)
    for length, name in enumerate(names, 1):
        seen[name] += 1
        for server in stable:
            assert abs(seen[server.name] * period - length * server.effective_weight) < 3 * period


def test_registry_names_every_configured_algorithm() -> None:
    expected: dict[str, type] = {
        "roundrobin": SmoothWeightedRoundRobin,
        "static-rr": StaticRoundRobin,
        "leastconn": LeastConnections,
        "first": FirstAvailable,
        "source": ConsistentHash,
        "random": PowerOfTwoChoices,
    }
    assert set(ALGORITHMS) == set(expected)
    pool = servers(1, 2)
    for name, cls in expected.items():
        assert isinstance(make_algorithm(name, pool, random.Random(1)), cls)


def test_registry_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match=r"unknown balance algorithm 'hash'.*roundrobin"):
        make_algorithm("hash", servers(1), random.Random(1))


@PROPERTY_SETTINGS
@given(st.sampled_from(sorted(ALGORITHMS)), st.data())
def test_every_algorithm_returns_one_of_the_candidates(name: str, data: st.DataObject) -> None:
    pool = data.draw(server_lists(max_size=6, max_weight=16))
    algorithm = make_algorithm(name, pool, random.Random(data.draw(st.integers(0, 9))))
    for _ in range(5):
        candidates = subsets(data, pool)
        key = data.draw(st.none() | st.binary(max_size=16))
        chosen = algorithm.pick(candidates, key)
        if candidates:
            assert any(chosen is server for server in candidates)
        else:
            assert chosen is None
