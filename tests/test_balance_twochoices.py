"""The power of two random choices (``balance = "random"``)."""

from __future__ import annotations

import random
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from relaybal.balance.twochoices import PowerOfTwoChoices
from tests.balance_fakes import PROPERTY_SETTINGS, FakeServer, counts, pick_names, server_lists


def test_empty_and_single() -> None:
    algorithm = PowerOfTwoChoices([], random.Random(1))
    assert algorithm.pick([], None) is None
    only = [FakeServer("a", 3, 99)]
    assert algorithm.pick(only, None) is only[0]


def test_never_picks_the_overloaded_server() -> None:
    pool = [
        FakeServer("a", 1, 3),
        FakeServer("b", 1, 500),
        FakeServer("c", 2, 4),
        FakeServer("d", 1, 0),
    ]
    names = pick_names(PowerOfTwoChoices(pool, random.Random(7)), pool, 2000)
    assert "b" not in names
    assert set(names) == {"a", "c", "d"}


def test_of_two_candidates_the_less_loaded_relative_to_weight() -> None:
    # a: 6 / 3 = 2 per unit of weight, b: 3 / 1 = 3
    pool = [FakeServer("a", 3, 6), FakeServer("b", 1, 3)]
    algorithm = PowerOfTwoChoices(pool, random.Random(3))
    assert pick_names(algorithm, pool, 50) == ["a"] * 50


def test_reproducible_with_a_seeded_random() -> None:
    pool = [FakeServer(f"s{n}", n + 1) for n in range(6)]
    first = pick_names(PowerOfTwoChoices(pool, random.Random(42)), pool, 200)
    again = pick_names(PowerOfTwoChoices(pool, random.Random(42)), pool, 200)
    other = pick_names(PowerOfTwoChoices(pool, random.Random(43)), pool, 200)
    assert first == again
    assert first != other


def test_idle_servers_share_by_weight() -> None:
    # With equal loads the first draw wins, so picks follow the weights.
    pool = [FakeServer("a", 1), FakeServer("b", 3), FakeServer("c", 6)]
    tally = counts(pick_names(PowerOfTwoChoices(pool, random.Random(5)), pool, 10_000))
    for server in pool:
        due = 1000 * server.effective_weight
        assert abs(tally[server.name] - due) < 0.1 * due, (server.name, tally[server.name])


def test_loads_stay_balanced_when_each_pick_adds_load() -> None:
    pool = [FakeServer(f"s{n}") for n in range(8)]
    algorithm = PowerOfTwoChoices(pool, random.Random(11))
    for _ in range(800):
        chosen = algorithm.pick(pool, None)
        assert isinstance(chosen, FakeServer)
        chosen.load += 1
    loads = [s.load for s in pool]
    # Two choices keep the spread tiny (one random choice would be about ±30).
    assert max(loads) - min(loads) <= 4, loads


def test_two_distinct_servers_are_drawn_even_when_one_weight_dominates() -> None:
    pool = [FakeServer("heavy", 256, 100), FakeServer("light", 1, 0)]
    assert pick_names(PowerOfTwoChoices(pool, random.Random(2)), pool, 100) == ["light"] * 100


@PROPERTY_SETTINGS
@given(st.data())
def test_pick_is_a_candidate_and_never_the_strictly_worst(data: st.DataObject) -> None:
    pool = data.draw(server_lists(max_size=8))
    algorithm = PowerOfTwoChoices(pool, random.Random(data.draw(st.integers(0, 2**32))))
    chosen = algorithm.pick(pool, None)
    if not pool:
        assert chosen is None
        return
    assert chosen is not None
    assert any(chosen is server for server in pool)
    ratios = sorted(Fraction(s.load, s.effective_weight) for s in pool)
    if len(pool) > 1 and ratios[-1] > ratios[-2]:
        assert Fraction(chosen.load, chosen.effective_weight) < ratios[-1]
