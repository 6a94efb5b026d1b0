"""``balance = "roundrobin"``: smooth weighted round robin (nginx's algorithm).

Each pick adds every candidate's ``effective_weight`` to its *current* value,
chooses the candidate with the highest current value (the first one in
configuration order on a tie), and subtracts the sum of the weights from the
chosen one. With a stable set of candidates and weights this repeats with a
period of ``sum(weights)`` picks, in which each server is chosen exactly
``weight`` times, and the choices are interleaved rather than in bursts.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import attrs

from relaybal.balance.base import Candidate


@attrs.define
class _Slot:
    """Per-server state: running current value, weight and last pick it took part in."""

    weight: int
    current: int = 0
    seen: int = -1


class SmoothWeightedRoundRobin:
    """Smooth weighted round robin over the candidates of each pick.

    Promises:

    * with a stable set of candidates and weights, any ``sum(weights)``
      consecutive picks choose each server exactly ``weight`` times, and the
      picks of the heavier servers are spread between the lighter ones;
    * a weight change (slowstart, runtime ``set weight``) takes effect at the
      next pick, without restarting the rotation;
    * a server that leaves the candidates (down, drained, full) keeps its
      place in the rotation while the others share its turns; when it comes
      back its place is bounded to one period, so it gets at most about one
      period's worth of catching up, and a new server starts from a neutral
      place; a server that flaps still gets its share of the picks it was
      there for.
    """

    def __init__(self, servers: Sequence[Candidate], rng: random.Random) -> None:
        # State is created lazily from the candidates of each pick, keyed by
        # name; the configured list only serves to forget removed servers.
        del rng
        self._servers = servers
        self._state: dict[str, _Slot] = {}
        self._epoch = 0
        self._last_count = 0

    def pick(self, candidates: Sequence[Candidate], key: bytes | None) -> Candidate | None:
        """Return the next candidate in the smooth weighted rotation, or None if empty."""
        count = len(candidates)
        if count == 0:
            return None
        state = self._state
        previous = self._epoch
        epoch = previous + 1
        self._epoch = epoch
        # The set of candidates is unchanged iff it has the same size as last
        # time and every member also took part in the previous pick; checking
        # that in the same pass as the weight update costs no extra loop.
        changed = count != self._last_count
        self._last_count = count
        total = 0
        best: Candidate | None = None
        best_slot: _Slot | None = None
        best_current = 0
        for candidate in candidates:
            name = candidate.name
            weight = candidate.effective_weight
            slot = state.get(name)
            if slot is None:
                slot = state[name] = _Slot(weight)
                changed = True
            elif slot.seen != previous or slot.weight != weight:
                slot.weight = weight
                changed = True
            slot.seen = epoch
            total += weight
            current = slot.current + weight
            slot.current = current
            if best_slot is None or current > best_current:
                best, best_slot, best_current = candidate, slot, current
        if changed:
            best, best_slot = self._normalise(candidates, total)
        assert best_slot is not None
        best_slot.current -= total
        return best

    def servers_changed(self) -> None:
        """Forget servers no longer configured; other changes are seen at the next pick."""
        configured = {server.name for server in self._servers}
        self._state = {name: slot for name, slot in self._state.items() if name in configured}

    def _normalise(self, candidates: Sequence[Candidate], total: int) -> tuple[Candidate, _Slot]:
        """Clamp the candidates' current values to one period's worth (``±total``).

        Called after a change of candidates or weights; returns the new best
        candidate and its slot. Only the differences between current values
        matter (adding a constant to all of them changes no choice), so a
        departure, which leaves the others summing to something other than
        zero, needs no correction. A value left over from other weights or
        other company does: a server whose weight dropped from 200 to 1, or
        that returns after a long absence, would otherwise carry a debt or a
        credit that the new rotation takes many periods to settle, as a
        drought or a burst.
        """
        state = self._state
        slots = [state[candidate.name] for candidate in candidates]
        for slot in slots:
            slot.current = max(-total, min(total, slot.current))
        best_index = 0
        for index, slot in enumerate(slots):
            if slot.current > slots[best_index].current:
                best_index = index
        return candidates[best_index], slots[best_index]
