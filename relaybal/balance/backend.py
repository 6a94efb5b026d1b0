"""A backend: its servers, their runtime state, and the choice of one per unit.

The same object serves splice frontends (the unit is a connection) and relay
frontends (the unit is a message). No reactor here: time comes from an injected
``IReactorTime`` and randomness from an injected ``random.Random``.
"""

from __future__ import annotations

import contextlib
import random
from collections import deque
from collections.abc import Callable, Container, Sequence

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from relaybal.balance.base import BalanceAlgorithm, Candidate
from relaybal.balance.registry import make_algorithm
from relaybal.config import BackendConfig, ServerConfig


@attrs.define(eq=False)
class Server:
    """One server of a backend, with its runtime state and counters."""

    config: ServerConfig
    clock: IReactorTime
    weight: int = 0
    admin_state: str = "ready"
    up: bool = True
    load: int = 0
    max_load: int = 0
    total: int = 0
    failures: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    up_since: float = 0.0
    last_change: float = 0.0
    on_release: Callable[[], None] | None = None

    def __attrs_post_init__(self) -> None:
        self.weight = self.config.weight
        self.admin_state = self.config.state
        self.up_since = self.last_change = self.clock.seconds()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def maxconn(self) -> int:
        return self.config.maxconn

    @property
    def backup(self) -> bool:
        return self.config.backup

    @property
    def effective_weight(self) -> int:
        """The weight after slowstart: it ramps from 1 to the full weight after coming up."""
        slowstart = self.config.slowstart
        if slowstart > 0 and self.weight > 0:
            elapsed = self.clock.seconds() - self.up_since
            if elapsed < slowstart:
                return max(1, int(self.weight * elapsed / slowstart))
        return self.weight

    @property
    def usable(self) -> bool:
        """May take new traffic now (up, admin state ready, weight above zero)."""
        return self.up and self.admin_state == "ready" and self.weight > 0

    @property
    def has_room(self) -> bool:
        return self.config.maxconn == 0 or self.load < self.config.maxconn

    def acquire(self) -> None:
        """Count one more unit in flight on this server."""
        self.load += 1
        self.total += 1
        self.max_load = max(self.max_load, self.load)

    def release(self) -> None:
        """A unit finished; lets a queued unit proceed."""
        self.load -= 1
        if self.on_release is not None:
            self.on_release()

    def record_failure(self) -> None:
        """A real connection to this server failed (refused, timed out, bad greeting)."""
        self.failures += 1

    def record_success(self) -> None:
        """A real connection to this server succeeded (and passed ``verify_banner``)."""


class QueueFull(Exception):
    """The backend's wait queue is at its bound."""


@attrs.define(eq=False)
class _Waiter:
    callback: Callable[[], None]
    timer: IDelayedCall | None = None


class Backend:
    """A named group of servers and the balance algorithm that chooses among them."""

    def __init__(
        self,
        config: BackendConfig,
        clock: IReactorTime,
        rng: random.Random | None = None,
        max_queue: int = 10000,
    ) -> None:
        self.config = config
        self.name = config.name
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        self.servers = [Server(s, clock) for s in config.servers]
        for server in self.servers:
            server.on_release = self._wake_one
        self.active = [s for s in self.servers if not s.backup]
        self.backups = [s for s in self.servers if s.backup]
        self._algorithm = make_algorithm(config.balance, self.active, self.rng)
        self._backup_algorithm = make_algorithm(config.balance, self.backups, self.rng)
        self._waiting: deque[_Waiter] = deque()
        self.max_queue = max_queue
        self.queued_total = 0

    def server(self, name: str) -> Server | None:
        for s in self.servers:
            if s.name == name:
                return s
        return None

    def servers_changed(self) -> None:
        """Weights or states changed at run time: let the algorithms rebuild."""
        self._algorithm.servers_changed()
        self._backup_algorithm.servers_changed()

    def _tier(self, exclude: Container[Server]) -> tuple[list[Server], BalanceAlgorithm]:
        """The servers that may be chosen: active ones, or backups while no active one is."""
        actives = [s for s in self.active if s.usable and s not in exclude]
        if actives:
            return actives, self._algorithm
        return [s for s in self.backups if s.usable and s not in exclude], self._backup_algorithm

    def pick(self, key: bytes | None = None, exclude: Container[Server] = ()) -> Server | None:
        """Choose a server with room for one more unit, or None.

        Backup servers are used only while no active server is usable (servers in
        ``exclude``, already tried for this unit, do not count as usable). All
        usable backups share the load (HAProxy's ``option allbackups``).
        """
        tier, algorithm = self._tier(exclude)
        candidates: Sequence[Candidate] = (
            [s for s in tier if s.has_room] if any(s.config.maxconn for s in tier) else tier
        )
        chosen = algorithm.pick(candidates, key)
        return chosen  # type: ignore[return-value]  # always one of our Servers

    def connected(self, server: Server, key: bytes | None) -> None:
        """A unit for client ``key`` is now being served by ``server``."""
        server.record_success()

    def can_queue(self, exclude: Container[Server] = ()) -> bool:
        """True when usable servers exist but all are at their maxconn."""
        tier, _ = self._tier(exclude)
        return bool(tier) and not any(s.has_room for s in tier)

    def usable_count(self) -> int:
        return sum(1 for s in self.servers if s.usable)

    @property
    def queue_length(self) -> int:
        return len(self._waiting)

    def wait(
        self, callback: Callable[[], None], timeout: float, on_timeout: Callable[[], None]
    ) -> Callable[[], None]:
        """Wait (bounded by ``timeout``) until some server releases a slot.

        ``callback`` runs when a slot may be free (the caller picks again);
        ``on_timeout`` when the time is up. Returns a function that cancels the wait.
        Raises :class:`QueueFull` when ``max_queue`` units already wait.
        """
        if len(self._waiting) >= self.max_queue:
            raise QueueFull(self.name)
        waiter = _Waiter(callback)
        self.queued_total += 1

        def expire() -> None:
            waiter.timer = None
            self._remove(waiter)
            on_timeout()

        waiter.timer = self.clock.callLater(timeout, expire)
        self._waiting.append(waiter)

        def cancel() -> None:
            if waiter.timer is not None:
                waiter.timer.cancel()
                waiter.timer = None
            self._remove(waiter)

        return cancel

    def _remove(self, waiter: _Waiter) -> None:
        with contextlib.suppress(ValueError):
            self._waiting.remove(waiter)

    def _wake_one(self) -> None:
        if not self._waiting:
            return
        waiter = self._waiting.popleft()
        if waiter.timer is not None:
            waiter.timer.cancel()
            waiter.timer = None
        waiter.callback()
