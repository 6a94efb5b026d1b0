"""The balance algorithms by configuration name (``backend.NAME.balance``)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from relaybal.balance.base import AlgorithmFactory, BalanceAlgorithm, Candidate
from relaybal.balance.chash import ConsistentHash
from relaybal.balance.first import FirstAvailable
from relaybal.balance.leastconn import LeastConnections
from relaybal.balance.roundrobin import SmoothWeightedRoundRobin
from relaybal.balance.static_rr import StaticRoundRobin
from relaybal.balance.twochoices import PowerOfTwoChoices

#: Factory of each algorithm, by the name the configuration uses.
ALGORITHMS: dict[str, AlgorithmFactory] = {
    "roundrobin": SmoothWeightedRoundRobin,
    "static-rr": StaticRoundRobin,
    "leastconn": LeastConnections,
    "first": FirstAvailable,
    "source": ConsistentHash,
    "random": PowerOfTwoChoices,
}


def make_algorithm(name: str, servers: Sequence[Candidate], rng: random.Random) -> BalanceAlgorithm:
    """Build the algorithm configured as ``name`` for ``servers`` (in configuration order).

    Raises :class:`ValueError` for a name not in :data:`ALGORITHMS`.
    """
    try:
        factory = ALGORITHMS[name]
    except KeyError:
        known = ", ".join(sorted(ALGORITHMS))
        raise ValueError(f"unknown balance algorithm {name!r} (known: {known})") from None
    return factory(servers, rng)
