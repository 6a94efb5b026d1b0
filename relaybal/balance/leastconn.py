"""``balance = "leastconn"``: the least loaded server relative to its weight.

The unit of load is whatever the backend counts (connections in splice mode,
messages in flight in relay mode).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from relaybal.balance.base import Candidate


class LeastConnections:
    """Chooses the candidate with the lowest ``(load + 1) / effective_weight``.

    The ``+ 1`` ranks servers by what their load would be after this unit, so
    that among idle servers the heavier one is preferred. Ties rotate: each
    pick scans from the position after the previous choice, and only a
    strictly better candidate displaces the first one met, so equally loaded
    servers take turns instead of the first one taking everything (which
    matters whenever the load is counted after the pick returns).
    Ratios are compared by cross-multiplication, in exact integers.
    """

    def __init__(self, servers: Sequence[Candidate], rng: random.Random) -> None:
        del servers, rng
        self._next = 0

    def pick(self, candidates: Sequence[Candidate], key: bytes | None) -> Candidate | None:
        """Return the least loaded candidate relative to weight, or None if empty."""
        count = len(candidates)
        if count == 0:
            return None
        index = self._next
        if index >= count:
            index = 0
        best_index = index
        best = candidates[index]
        best_load = best.load + 1
        best_weight = best.effective_weight
        for _ in range(count - 1):
            index += 1
            if index == count:
                index = 0
            candidate = candidates[index]
            load = candidate.load + 1
            weight = candidate.effective_weight
            # load / weight < best_load / best_weight, with weights >= 0.
            if load * best_weight < best_load * weight:
                best_index, best, best_load, best_weight = index, candidate, load, weight
        self._next = best_index + 1
        return best

    def servers_changed(self) -> None:
        """Nothing to rebuild: loads and weights are read at each pick."""
