"""In-memory stand-ins for the servers a balance algorithm sees, shared by the balance tests."""

from __future__ import annotations

import collections
import random
from collections.abc import Sequence

import attrs
from hypothesis import settings
from hypothesis import strategies as st

from relaybal.balance.base import BalanceAlgorithm, Candidate

#: Property tests run a fixed, reproducible set of examples.
PROPERTY_SETTINGS = settings(max_examples=200, derandomize=True, deadline=None)


@attrs.define
class FakeServer:
    """A :class:`~relaybal.balance.base.Candidate` whose figures the test sets directly."""

    name: str
    effective_weight: int = 1
    load: int = 0
    maxconn: int = 0


def servers(*weights: int) -> list[FakeServer]:
    """Servers named s0, s1, … with the given weights, in that (configuration) order."""
    return [FakeServer(f"s{index}", weight) for index, weight in enumerate(weights)]


def pick_names(
    algorithm: BalanceAlgorithm,
    candidates: Sequence[Candidate],
    count: int,
    key: bytes | None = None,
) -> list[str]:
    """The names chosen by ``count`` successive picks over the same candidates."""
    names = []
    for _ in range(count):
        chosen = algorithm.pick(candidates, key)
        assert chosen is not None
        names.append(chosen.name)
    return names


def counts(names: Sequence[str]) -> dict[str, int]:
    return dict(collections.Counter(names))


def longest_run(names: Sequence[str], name: str) -> int:
    """The longest stretch of consecutive ``name`` in ``names``."""
    longest = current = 0
    for each in names:
        current = current + 1 if each == name else 0
        longest = max(longest, current)
    return longest


def seeded() -> random.Random:
    return random.Random(1234)


@st.composite
def server_lists(
    draw: st.DrawFn, min_size: int = 0, max_size: int = 8, max_weight: int = 256
) -> list[FakeServer]:
    """Servers with unique names, weights 1..max_weight, and arbitrary loads and maxconns."""
    size = draw(st.integers(min_size, max_size))
    return [
        FakeServer(
            f"s{index}",
            draw(st.integers(1, max_weight)),
            draw(st.integers(0, 100)),
            draw(st.sampled_from([0, 1, 5, 50])),
        )
        for index in range(size)
    ]


def subsets(data: st.DataObject, pool: Sequence[FakeServer]) -> list[FakeServer]:
    """A subset of ``pool`` that keeps its order, as a backend's candidates do."""
    return [server for server in pool if data.draw(st.booleans())]
