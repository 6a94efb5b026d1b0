"""``balance = "static-rr"``: weighted round robin from a precomputed table (HAProxy's static-rr).

The rotation is computed once for a set of candidates, from the weights they
have at that moment, as a table of ``sum(weights)`` slots; a pick reads the
next slot. Like HAProxy's static-rr, weight changes do not take effect by
themselves: the tables (one per recently seen set of candidates) are rebuilt
when :meth:`StaticRoundRobin.servers_changed` is called.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from relaybal.balance.base import Candidate

#: Candidate sets whose tables are kept (least recently used dropped first).
_CACHED_TABLES = 8


class StaticRoundRobin:
    """Weighted rotation read from a precomputed table per set of candidates.

    Promises: while the candidates stay the same, every ``sum(weights)``
    consecutive picks choose each server exactly ``weight`` times (the weights
    read when the table was built), interleaved as evenly as smooth weighted
    round robin would. A pick costs one pass comparing names plus an index.
    """

    def __init__(self, servers: Sequence[Candidate], rng: random.Random) -> None:
        del servers, rng
        self._names: tuple[str, ...] = ()
        self._table: list[int] = []
        self._position = 0
        # Tables of recently seen candidate sets: with maxconn, a backend leaves
        # full servers out, so the set can flip back and forth at a high rate.
        self._tables: dict[tuple[str, ...], list[int]] = {}

    def pick(self, candidates: Sequence[Candidate], key: bytes | None) -> Candidate | None:
        """Return the candidate of the next table slot, or None if empty."""
        count = len(candidates)
        if count == 0:
            return None
        if not self._same_set(candidates):
            self._rebuild(candidates)
        table = self._table
        position = self._position
        chosen = table[position]
        position += 1
        self._position = 0 if position == len(table) else position
        return candidates[chosen]

    def servers_changed(self) -> None:
        """Drop the tables, so that the next pick rebuilds one with the current weights."""
        self._names = ()
        self._tables.clear()

    def _same_set(self, candidates: Sequence[Candidate]) -> bool:
        """Whether ``candidates`` are the ones the table was built for (no allocation)."""
        names = self._names
        if len(names) != len(candidates):
            return False
        # A plain loop, not all(<generator>): this runs on every pick.
        for index, candidate in enumerate(candidates):  # noqa: SIM110
            if candidate.name != names[index]:
                return False
        return True

    def _rebuild(self, candidates: Sequence[Candidate]) -> None:
        names = tuple(candidate.name for candidate in candidates)
        table = self._tables.pop(names, None)
        if table is None:
            table = _smooth_table(candidates)
            if len(self._tables) >= _CACHED_TABLES:
                del self._tables[next(iter(self._tables))]
        self._tables[names] = table  # (re)inserted last: the most recently used
        self._names = names
        self._table = table
        # Keep the position rather than restart at slot 0: a server that flaps
        # would otherwise send every rebuild's first pick to the same server.
        self._position %= len(table)


def _smooth_table(candidates: Sequence[Candidate]) -> list[int]:
    """One cycle of smooth weighted round robin over ``candidates``, as indexes."""
    weights = [max(candidate.effective_weight, 0) for candidate in candidates]
    if not any(weights):
        # Outside the contract (candidates have weight > 0), but an empty
        # table would make every pick fail: rotate evenly instead.
        weights = [1] * len(weights)
    total = sum(weights)
    # The slots are laid out by smooth weighted round robin, as HAProxy's
    # map does, so the heavier servers' slots are spread out. Rebuilding
    # costs O(total x candidates), once per change of the candidate set.
    current = [0] * len(weights)
    table: list[int] = []
    for _ in range(total):
        best = 0
        for index, weight in enumerate(weights):
            value = current[index] + weight
            current[index] = value
            if value > current[best]:
                best = index
        current[best] -= total
        table.append(best)
    return table
