"""Static weighted round robin (``balance = "static-rr"``)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaybal.balance.roundrobin import SmoothWeightedRoundRobin
from relaybal.balance.static_rr import StaticRoundRobin
from tests.balance_fakes import (
    PROPERTY_SETTINGS,
    counts,
    longest_run,
    pick_names,
    seeded,
    server_lists,
    servers,
    subsets,
)


def assert_every_window_exact(names: list[str], weights: dict[str, int]) -> None:
    period = sum(weights.values())
    for start in range(len(names) - period + 1):
        assert counts(names[start : start + period]) == weights, start


def test_empty_candidates_give_none() -> None:
    assert StaticRoundRobin([], seeded()).pick([], None) is None


@pytest.mark.parametrize("weights", [(1, 2, 5), (5, 1, 1), (1, 1, 1), (256, 3, 1), (4,)])
def test_every_window_of_one_cycle_is_exact(weights: tuple[int, ...]) -> None:
    pool = servers(*weights)
    names = pick_names(StaticRoundRobin(pool, seeded()), pool, 3 * sum(weights))
    assert_every_window_exact(names, {s.name: s.effective_weight for s in pool})


def test_zero_weight_servers_left_out_by_the_caller_take_nothing() -> None:
    pool = servers(0, 1, 2, 5, 0)
    candidates = [s for s in pool if s.effective_weight]
    names = pick_names(StaticRoundRobin(pool, seeded()), candidates, 2 * 8)
    assert counts(names) == {"s1": 2, "s2": 4, "s3": 10}


def test_rotation_is_interleaved_like_smooth_round_robin() -> None:
    pool = servers(5, 1, 1)
    names = pick_names(StaticRoundRobin(pool, seeded()), pool, 7 * 3)
    assert names == pick_names(SmoothWeightedRoundRobin(pool, seeded()), pool, 7 * 3)
    assert longest_run(names, "s0") == 4  # a burst rotation would give 5


def test_weight_changes_wait_for_servers_changed() -> None:
    pool = servers(1, 1)
    algorithm = StaticRoundRobin(pool, seeded())
    pick_names(algorithm, pool, 1)
    pool[1].effective_weight = 3
    assert counts(pick_names(algorithm, pool, 2 * 4)) == {"s0": 4, "s1": 4}
    algorithm.servers_changed()
    assert_every_window_exact(pick_names(algorithm, pool, 3 * 4), {"s0": 1, "s1": 3})


def test_candidate_set_change_rebuilds_at_once() -> None:
    pool = servers(1, 2, 5)
    algorithm = StaticRoundRobin(pool, seeded())
    pick_names(algorithm, pool, 3)
    names = pick_names(algorithm, [pool[0], pool[2]], 3 * 6)
    assert_every_window_exact(names, {"s0": 1, "s2": 5})
    # Same size, other members: also a new table.
    names = pick_names(algorithm, [pool[1], pool[2]], 3 * 7)
    assert_every_window_exact(names, {"s1": 2, "s2": 5})
    names = pick_names(algorithm, pool, 3 * 8)
    assert_every_window_exact(names, {"s0": 1, "s1": 2, "s2": 5})


def test_new_table_takes_weights_of_the_moment() -> None:
    pool = servers(1, 1, 1)
    algorithm = StaticRoundRobin(pool, seeded())
    pick_names(algorithm, pool, 2)
    pool[0].effective_weight = 4
    names = pick_names(algorithm, pool[:2], 2 * 5)
    assert counts(names) == {"s0": 8, "s1": 2}


def test_flipping_between_sets_reuses_their_tables() -> None:
    pool = servers(1, 2, 5)
    algorithm = StaticRoundRobin(pool, seeded())
    pick_names(algorithm, pool, 4)
    pick_names(algorithm, pool[1:], 1)
    pool[2].effective_weight = 1
    # Back to a set seen before: its table (and its weights) are kept...
    assert counts(pick_names(algorithm, pool, 8)) == {"s0": 1, "s1": 2, "s2": 5}
    # ...until servers_changed() drops every table.
    algorithm.servers_changed()
    assert counts(pick_names(algorithm, pool, 4)) == {"s0": 1, "s1": 2, "s2": 1}
    assert counts(pick_names(algorithm, pool[1:], 3)) == {"s1": 2, "s2": 1}


@PROPERTY_SETTINGS
@given(st.data())
def test_pick_returns_a_candidate_and_stable_sets_are_exact(data: st.DataObject) -> None:
    pool = data.draw(server_lists(max_size=6, max_weight=20))
    algorithm = StaticRoundRobin(pool, seeded())
    for _ in range(data.draw(st.integers(1, 6))):
        candidates = subsets(data, pool)
        chosen = algorithm.pick(candidates, None)
        if not candidates:
            assert chosen is None
            continue
        assert any(chosen is server for server in candidates)
        period = sum(s.effective_weight for s in candidates)
        assert counts(pick_names(algorithm, candidates, period)) == {
            s.name: s.effective_weight for s in candidates
        }
