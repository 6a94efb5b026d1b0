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
    """Per-server state: the running current value and the last pick it took part in."""

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
    * a server that leaves the candidates (down, drained) is forgotten; when it
      comes back, or a new one appears, it starts from a neutral value, so it
      gets neither a burst nor a drought; the others keep their place in the
      rotation.
    """

    def __init__(self, servers: Sequence[Candidate], rng: random.Random) -> None:
        # Round robin needs neither the configured list nor randomness: state is
        # created lazily from the candidates of each pick, keyed by name.
        del servers, rng
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
            slot = state.get(name)
            if slot is None:
                slot = state[name] = _Slot()
                changed = True
            elif slot.seen != previous:
                changed = True
            slot.seen = epoch
            weight = candidate.effective_weight
            total += weight
            current = slot.current + weight
            slot.current = current
            if best_slot is None or current > best_current:
                best, best_slot, best_current = candidate, slot, current
        if changed:
            best, best_slot = self._recentre(candidates, epoch, total)
        assert best_slot is not None
        best_slot.current -= total
        return best

    def servers_changed(self) -> None:
        """Nothing to rebuild: membership and weight changes are seen at the next pick."""

    def _recentre(
        self, candidates: Sequence[Candidate], epoch: int, total: int
    ) -> tuple[Candidate, _Slot]:
        """Forget departed servers and bring the current values back to a zero sum.

        Each pick adds ``total`` to the sum of the current values and takes it
        away again, so with a stable set the sum stays 0; that is what makes
        every period exact. A departure takes its value with it and leaves the
        others summing to its opposite, so the difference is spread evenly over
        the remaining ones. Returns the new best candidate and its slot.
        """
        state = self._state
        self._state = state = {name: slot for name, slot in state.items() if slot.seen == epoch}
        slots = [state[candidate.name] for candidate in candidates]
        excess = sum(slot.current for slot in slots) - total
        if excess:
            share, remainder = divmod(excess, len(slots))
            for index, slot in enumerate(slots):
                slot.current -= share + (1 if index < remainder else 0)
        best_index = 0
        for index, slot in enumerate(slots):
            if slot.current > slots[best_index].current:
                best_index = index
        return candidates[best_index], slots[best_index]
