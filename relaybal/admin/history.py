"""Each server's traffic over the last hour, for the stats page's graphs.

A :class:`TrafficHistory` samples every server's cumulative counters
(``total`` units started, ``bytes_in + bytes_out``) every ``interval``
seconds (10 by default) and keeps the differences in a ring of ``buckets``
entries (360: one hour). Nothing runs per connection: the data path only
bumps the counters it already keeps, and one timer reads them.

Bytes are added to a server's counters when a unit (a splice session, a
message) ends, so a long session's bytes land in the bucket where it ended.

Servers are known by backend and name. A server that disappears (a reload
removed it) loses its history; one replaced by a new object of the same name
(its address changed) starts a new one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from relaybal.balance.backend import Backend, Server

#: Seconds per bucket.
INTERVAL = 10.0
#: Buckets kept (one hour of 10-second buckets).
BUCKETS = 360


@attrs.frozen
class Series:
    """One server's recent traffic, oldest bucket first.

    ``sessions[i]`` units started and ``bytes[i]`` bytes moved (both
    directions) during the ``interval`` seconds ending at
    ``end - (len - 1 - i) * interval``. At most ``buckets`` entries; fewer
    while the process is young.
    """

    interval: float
    end: float
    sessions: tuple[int, ...]
    bytes: tuple[int, ...]


@attrs.define(eq=False)
class _Ring:
    server: Server
    last_total: int
    last_bytes: int
    sessions: deque[int]
    bytes: deque[int]


class TrafficHistory:
    """Per-server rings of traffic buckets over the servers of ``backends``.

    ``backends`` is read at each sample, so backends added to (or removed
    from) the same mapping later are followed.
    """

    def __init__(
        self,
        backends: Mapping[str, Backend],
        clock: IReactorTime,
        interval: float = INTERVAL,
        buckets: int = BUCKETS,
    ) -> None:
        self.backends = backends
        self.clock = clock
        self.interval = interval
        self.buckets = buckets
        self.last_sample = clock.seconds()
        self._rings: dict[tuple[str, str], _Ring] = {}
        self._loop: LoopingCall | None = None
        self.sample()

    def start(self) -> None:
        """Sample every ``interval`` seconds on the clock until :meth:`stop`."""
        if self._loop is not None:
            return
        self._loop = LoopingCall(self.sample)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def sample(self) -> None:
        """Close the current bucket of every server (and start following new servers)."""
        self.last_sample = self.clock.seconds()
        seen: set[tuple[str, str]] = set()
        for backend_name, backend in self.backends.items():
            for server in backend.servers:
                key = (backend_name, server.name)
                seen.add(key)
                moved = server.bytes_in + server.bytes_out
                ring = self._rings.get(key)
                if ring is None or ring.server is not server:
                    # A server seen for the first time: its counters so far are not
                    # this bucket's traffic (they may cover hours), so start from them.
                    self._rings[key] = _Ring(
                        server, server.total, moved, deque(maxlen=self.buckets), deque(maxlen=self.buckets)
                    )
                    continue
                ring.sessions.append(max(0, server.total - ring.last_total))
                ring.bytes.append(max(0, moved - ring.last_bytes))
                ring.last_total = server.total
                ring.last_bytes = moved
        for key in [key for key in self._rings if key not in seen]:
            del self._rings[key]

    def series(self, backend: str, server: str) -> Series:
        """The buckets of one server (empty if it is not followed)."""
        ring = self._rings.get((backend, server))
        if ring is None:
            return Series(self.interval, self.last_sample, (), ())
        return Series(self.interval, self.last_sample, tuple(ring.sessions), tuple(ring.bytes))
