"""Queue IDs: short, unique, time-ordered names for accepted messages."""

from __future__ import annotations

from collections.abc import Callable

_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZ"  # no vowels: IDs never spell words


class QueueIdGenerator:
    """Makes IDs like ``4ZQ7KXB2M1``: microseconds since the epoch, strictly increasing.

    ``clock`` returns seconds (an ``IReactorTime.seconds``). Two IDs from one
    generator are always different and sort in the order they were made,
    even when the clock stands still or steps back.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._last = 0

    def next(self) -> str:
        value = max(int(self.clock() * 1_000_000), self._last + 1)
        self._last = value
        base = len(_ALPHABET)
        out = []
        while value:
            value, digit = divmod(value, base)
            out.append(_ALPHABET[digit])
        return "".join(reversed(out)) or "0"
