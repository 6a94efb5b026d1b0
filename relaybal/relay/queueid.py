"""Queue IDs: short, unique, time-ordered names for accepted messages."""

from __future__ import annotations

from collections.abc import Callable


class QueueIdGenerator:
    """Makes IDs like ``5F6A1B2C3D4E5``: microseconds since the epoch in hex, strictly increasing.

    ``clock`` returns seconds (an ``IReactorTime.seconds``). Two IDs from one
    generator are always different and sort in the order they were made (as
    strings of equal length, until the year 4253), even when the clock stands
    still or steps back.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._last = 0

    def next(self) -> str:
        value = int(self.clock() * 1_000_000)
        if value <= self._last:
            value = self._last + 1
        self._last = value
        return f"{value:X}"
