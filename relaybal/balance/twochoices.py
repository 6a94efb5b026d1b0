"""``balance = "random"``: the power of two random choices.

Drawing two servers at random and keeping the less loaded one spreads load
almost as well as least-connections, while keeping random's immunity to herd
effects (many balancers, or stale load figures, all choosing the same server).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from relaybal.balance.base import Candidate


class PowerOfTwoChoices:
    """Draws two distinct candidates weighted by ``effective_weight``; keeps the less loaded.

    "Less loaded" is the lower ``load / effective_weight``, compared exactly by
    cross-multiplication; on a tie the first drawn wins. A single candidate is
    returned without drawing. All randomness comes from the injected
    :class:`random.Random`, so a seeded one gives a reproducible sequence.
    A pick costs at most three passes over the candidates and no allocation.
    """

    def __init__(self, servers: Sequence[Candidate], rng: random.Random) -> None:
        del servers
        self._rng = rng

    def pick(self, candidates: Sequence[Candidate], key: bytes | None) -> Candidate | None:
        """Return the better of two weighted random draws, or None if empty."""
        count = len(candidates)
        if count <= 1:
            return candidates[0] if count else None
        total = 0
        for candidate in candidates:
            total += candidate.effective_weight
        if total <= 0:
            # Outside the contract (weights > 0); draw uniformly rather than fail.
            return self._uniform_pair(candidates)
        rng = self._rng
        first_index = _index_at(candidates, rng.randrange(total), -1)
        first = candidates[first_index]
        first_weight = first.effective_weight
        rest = total - first_weight
        if rest <= 0:
            # Every other candidate has weight 0: there is no second choice.
            return first
        second = candidates[_index_at(candidates, rng.randrange(rest), first_index)]
        # second.load / second.effective_weight < first.load / first_weight
        if second.load * first_weight < first.load * second.effective_weight:
            return second
        return first

    def servers_changed(self) -> None:
        """Nothing to rebuild: weights and loads are read at each pick."""

    def _uniform_pair(self, candidates: Sequence[Candidate]) -> Candidate:
        first, second = self._rng.sample(range(len(candidates)), 2)
        a, b = candidates[first], candidates[second]
        return b if b.load < a.load else a


def _index_at(candidates: Sequence[Candidate], point: int, skip: int) -> int:
    """Index of the candidate whose stretch of the cumulative weights holds ``point``.

    The candidate at ``skip`` (-1 for none) is left out of the cumulation.
    """
    for index, candidate in enumerate(candidates):
        if index != skip:
            point -= candidate.effective_weight
            if point < 0:
                return index
    raise AssertionError("point beyond the total weight")  # pragma: no cover
