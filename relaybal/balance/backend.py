"""A backend: its servers, their runtime state, and the choice of one per unit.

The same object serves splice frontends (the unit is a connection) and relay
frontends (the unit is a message). No reactor here: time comes from an injected
``IReactorTime`` and randomness from an injected ``random.Random``.

A server's state has three parts, as in HAProxy:

* operational: ``up`` or down, decided by the health counter
  (:class:`~relaybal.health.state.HealthCounter`) from active checks and, with
  ``observe``, from real connection failures; a server without a ``check``
  table is always up (outside maintenance);
* administrative: ``ready``, ``drain`` (no new traffic, existing units
  finish) or ``maint`` (no traffic, no checks), changed by the configuration
  and the runtime API;
* weight: the configured or runtime weight, ramped by ``slowstart`` after the
  server comes (back) up.

Every change goes through the server's methods, which report it to the
backend; the backend logs it once, in HAProxy's words, and tells its
subscribers (the health checkers, anything else that cares).
"""

from __future__ import annotations

import contextlib
import random
from collections import deque
from collections.abc import Callable, Container, Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from relaybal.balance.base import BalanceAlgorithm, Candidate
from relaybal.balance.registry import make_algorithm
from relaybal.balance.stick import IStickShare, StickTable
from relaybal.config import ADMIN_STATES, BackendConfig, CheckConfig, ServerConfig
from relaybal.health.state import CheckResult, HealthCounter, Outcome

log = Logger(namespace="relaybal.health")

READY = "ready"
DRAIN = "drain"
MAINT = "maint"


@attrs.frozen
class ServerEvent:
    """One change of a server's state, as reported to its backend and the backend's subscribers.

    ``kind`` is one of ``up``, ``down`` (operational state), ``health`` (the
    health counter moved without a state change), ``ready``, ``drain``,
    ``maint`` (administrative state), ``weight``, ``checks`` (active checks
    enabled or disabled).
    """

    kind: str
    reason: str = ""
    """For ``up``/``down``/``health``: HAProxy's reason clause."""
    previous: str = ""
    """For administrative changes the previous state; for ``weight`` the previous weight."""
    was_up: bool = True
    """For ``maint``: whether the server was up when it entered maintenance."""
    log: bool = True
    """Whether this change is worth a log line (HAProxy logs a failed check only while the
    server is up, a passed one only while it is down)."""


@attrs.define(eq=False)
class Server:
    """One server of a backend, with its runtime state and counters."""

    config: ServerConfig
    clock: IReactorTime
    weight: int = 0
    admin_state: str = READY
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
    check: CheckConfig | None = None
    """The backend's active check, or None (then the server is never marked down by health)."""
    health: HealthCounter | None = None
    last_check: CheckResult | None = None
    """The latest check result (active, or ``HANA`` from passive observation)."""
    checking: bool = False
    """An active check is running now."""
    checks_enabled: bool = True
    """Active checks are administratively enabled (``enable``/``disable health``)."""
    observe: bool = False
    cert_days: int | None = None
    """Days to expiry of the certificate the last ``starttls`` check saw."""
    downtime: float = 0.0
    """Seconds spent down (or in maintenance), not counting the current spell."""
    down_since: float | None = None
    admin_from_config: bool = False
    """The administrative state is still the configured one (not changed at run time)."""
    consecutive_failures: int = 0
    """Real connection failures since the last real success (with ``observe``)."""
    passive_debt: int = 0
    """Health points the current run of real failures took (given back by a real success)."""
    sid: int = 0
    """1-based position in the backend (HAProxy's server id)."""
    backend_name: str = ""
    on_change: Callable[[Server, ServerEvent], None] | None = None

    def __attrs_post_init__(self) -> None:
        self.weight = self.config.weight
        self.admin_state = self.config.state
        now = self.clock.seconds()
        self.last_change = now
        # HAProxy never applies slowstart at start-up, only to a server seen down.
        self.up_since = now - self.config.slowstart
        if self.check is not None:
            self.health = HealthCounter.starting(self.check.rise, self.check.fall)
            self.observe = self.check.observe
        self.admin_from_config = self.admin_state != READY
        if self.admin_state == MAINT:
            self.up = False
            self.down_since = now

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
    def ramping(self) -> bool:
        """Up and still within ``slowstart`` of coming up (HAProxy's STARTING state)."""
        slowstart = self.config.slowstart
        return self.up and slowstart > 0 and self.clock.seconds() - self.up_since < slowstart

    @property
    def usable(self) -> bool:
        """May take new traffic now (up, admin state ready, weight above zero)."""
        return self.up and self.admin_state == READY and self.weight > 0

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

    # -- passive observation (called by the data paths)

    def record_failure(self, reason: str = "") -> None:
        """A real connection to this server failed (refused, timed out, bad greeting).

        With ``observe``, each one of a run of consecutive failures counts as a
        failed check (status ``HANA``), so ``fall`` of them take the server down.
        """
        self.failures += 1
        health = self.health
        if health is None or not self.observe or not self.up or self.admin_state == MAINT:
            return
        self.consecutive_failures += 1
        count = self.consecutive_failures
        info = f"{count} consecutive connection failure{'s' if count > 1 else ''}"
        if reason:
            info += f", last: {reason}"
        before = health.health
        result = CheckResult("HANA", info=info)
        self.last_check = result
        outcome = health.record(False)
        if health.up:
            self.passive_debt += before - health.health
        self._apply(outcome, result)

    def record_success(self) -> None:
        """A real connection to this server succeeded (and passed ``verify_banner``).

        Ends a run of real failures: the health points that run took are given
        back (a success does not otherwise count as a passed check, so a
        server whose checks fail is not kept up by traffic that connects).
        """
        if self.consecutive_failures:
            self.consecutive_failures = 0
            debt = self.passive_debt
            self.passive_debt = 0
            if debt and self.health is not None and self.health.restore(debt).changed:
                self._emit(ServerEvent("health", log=False))

    # -- active checks

    def check_done(self, result: CheckResult) -> None:
        """Feed one active check result into the health counter (ignored in maintenance)."""
        self.last_check = result
        if result.cert_days is not None:
            self.cert_days = result.cert_days
        if self.health is None or self.admin_state == MAINT:
            return
        self._apply(self.health.record(result.passed), result)

    def _apply(self, outcome: Outcome, result: CheckResult) -> None:
        health = self.health
        assert health is not None
        if outcome.went_down:
            self.passive_debt = 0
            self._set_up(False)
            self._emit(ServerEvent("down", reason=result.reason()))
        elif outcome.went_up:
            self.passive_debt = 0
            self._set_up(True)
            self._emit(ServerEvent("up", reason=result.reason()))
        elif outcome.changed:
            verdict = "succeeded" if result.passed else "failed"
            progress = (
                f"{health.health - health.rise + 1}/{health.fall} UP"
                if health.up
                else f"{health.health}/{health.rise} DOWN"
            )
            self._emit(
                ServerEvent(
                    "health",
                    reason=f"{verdict}, {result.reason()}, status: {progress}",
                    log=result.passed != health.up,
                )
            )

    # -- runtime changes

    def set_admin_state(self, state: str) -> bool:
        """Enter ``ready``, ``drain`` or ``maint``; False if already there.

        Entering ``maint`` takes the server down and pauses its checks;
        leaving it brings the server up unproven (``health = rise``: the next
        failed check takes it down again), with slowstart, and checks resume
        at once.
        """
        if state not in ADMIN_STATES:
            raise ValueError(f"unknown admin state {state!r} (expected one of {ADMIN_STATES})")
        previous = self.admin_state
        self.admin_from_config = False
        if state == previous:
            return False
        self.admin_state = state
        if state == MAINT:
            was_up = self.up
            if was_up:
                self._set_up(False)
            self._emit(ServerEvent(MAINT, previous=previous, was_up=was_up))
            return True
        if previous == MAINT:
            if self.health is not None:
                self.health.restart()
            self.passive_debt = self.consecutive_failures = 0
            self._set_up(True)
        self._emit(ServerEvent(state, previous=previous))
        return True

    def set_weight(self, weight: int) -> bool:
        """Change the weight (0-256; 0 takes no new traffic); False if unchanged."""
        if not 0 <= weight <= 256:
            raise ValueError("weight must be between 0 and 256")
        previous = self.weight
        if weight == previous:
            return False
        self.weight = weight
        self._emit(ServerEvent("weight", previous=str(previous)))
        return True

    def force_health(self, up: bool) -> bool:
        """Mark the server fully UP or fully DOWN now, whatever the checks said; False if unchanged.

        In maintenance only the health counter changes (the server stays out of
        service). Without checks the server simply stays in the forced state.
        """
        if self.health is not None:
            self.health.force(up)
        if self.admin_state == MAINT or up == self.up:
            return False
        self.passive_debt = 0
        self._set_up(up)
        self._emit(ServerEvent("up" if up else "down", reason="forced by the runtime API"))
        return True

    def set_checks_enabled(self, enabled: bool) -> bool:
        """Enable or disable active checks; False if unchanged."""
        if enabled == self.checks_enabled:
            return False
        self.checks_enabled = enabled
        self._emit(ServerEvent("checks", previous="disabled" if enabled else "enabled"))
        return True

    def _set_up(self, up: bool) -> None:
        now = self.clock.seconds()
        self.up = up
        self.last_change = now
        if up:
            self.up_since = now
            if self.down_since is not None:
                self.downtime += now - self.down_since
                self.down_since = None
        elif self.down_since is None:
            self.down_since = now

    def total_downtime(self) -> float:
        """Seconds spent down or in maintenance, including the current spell."""
        if self.down_since is None:
            return self.downtime
        return self.downtime + self.clock.seconds() - self.down_since

    # -- configuration reload

    def reconfigure(self, config: ServerConfig, check: CheckConfig | None) -> None:
        """Take a reloaded configuration of this server (same name and address).

        Counters, health and the units in flight are kept. A weight or
        administrative state that the new configuration changes is applied
        through :meth:`set_weight`/:meth:`set_admin_state` (so it is logged
        like a runtime change); one the configuration leaves as it was keeps
        its runtime value. New ``rise``/``fall`` keep the server UP or DOWN
        (a fully healthy server stays fully healthy); a check added to a
        server starts its health as at start-up; a check removed brings a
        server that was down (outside maintenance) back up.
        """
        previous = self.config
        self.config = config
        if config.weight != previous.weight:
            self.set_weight(config.weight)
        if config.state != previous.state:
            self.set_admin_state(config.state)
            self.admin_from_config = config.state != READY
        if check == self.check:
            return
        self.check = check
        self.consecutive_failures = self.passive_debt = 0
        if check is None:
            self.health = None
            self.observe = False
            self.last_check = None
            self.cert_days = None
            if not self.up and self.admin_state != MAINT:
                self._set_up(True)
                self._emit(ServerEvent("up", reason="health checks removed by a configuration reload"))
            return
        self.observe = check.observe
        old = self.health
        if old is None:
            self.health = HealthCounter.starting(check.rise, check.fall)
        elif (old.rise, old.fall) != (check.rise, check.fall):
            counter = HealthCounter(
                rise=check.rise,
                fall=check.fall,
                up=old.up,
                failed_checks=old.failed_checks,
                down_transitions=old.down_transitions,
            )
            if old.up:
                counter.health = counter.maximum if old.fully_up else check.rise
            self.health = counter

    def _emit(self, event: ServerEvent) -> None:
        if self.on_change is not None:
            self.on_change(self, event)


class QueueFull(Exception):
    """The backend's wait queue is at its bound."""


@attrs.define(eq=False)
class _Waiter:
    callback: Callable[[], None]
    timer: IDelayedCall | None = None


ServerListener = Callable[[Server, ServerEvent], None]


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
        self.servers = [Server(s, clock, check=config.check) for s in config.servers]
        for index, server in enumerate(self.servers, start=1):
            server.on_release = self._wake_one
            server.sid = index
            server.backend_name = self.name
            server.on_change = self._server_changed
        self._by_name = {s.name: s for s in self.servers}
        self.active = [s for s in self.servers if not s.backup]
        self.backups = [s for s in self.servers if s.backup]
        self._algorithm = make_algorithm(config.balance, self.active, self.rng)
        self._backup_algorithm = make_algorithm(config.balance, self.backups, self.rng)
        self._waiting: deque[_Waiter] = deque()
        self.max_queue = max_queue
        self.queued_total = 0
        self.stick: StickTable | None = (
            StickTable(config.stick.size, config.stick.expire) if config.stick is not None else None
        )
        self.stick_share: IStickShare | None = None
        """The stick table shared through ``[global] shared_state`` (set by the service), or None."""
        self._listeners: list[ServerListener] = []
        self._ramps: dict[Server, IDelayedCall] = {}
        now = clock.seconds()
        self.available = self.usable_count() > 0
        """Some server can take traffic (HAProxy's backend UP)."""
        self.last_change = now
        self.down_since: float | None = None if self.available else now
        self.downtime = 0.0
        self.down_transitions = 0

    def server(self, name: str) -> Server | None:
        return self._by_name.get(name)

    def servers_changed(self) -> None:
        """Weights or states changed at run time: let the algorithms rebuild."""
        self._algorithm.servers_changed()
        self._backup_algorithm.servers_changed()

    def subscribe(self, listener: ServerListener) -> None:
        """Call ``listener(server, event)`` after every change of one of this backend's servers."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: ServerListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

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

        With a stick table, a client ``key`` that was recently served goes back
        to the same server as long as that server is usable, among the servers
        the balance algorithm would choose from (so a client stuck to a backup
        returns to the active servers when they come back) and has room;
        otherwise the algorithm chooses and :meth:`connected` records the new
        server.
        """
        tier, algorithm = self._tier(exclude)
        stick = self.stick
        if stick is not None and key is not None:
            name = stick.lookup(key, self.clock.seconds())
            if name is not None:
                stuck = self._by_name.get(name)
                if stuck is not None and stuck.has_room and stuck in tier:
                    return stuck
        candidates: Sequence[Candidate] = (
            [s for s in tier if s.has_room] if any(s.config.maxconn for s in tier) else tier
        )
        chosen = algorithm.pick(candidates, key)
        return chosen  # type: ignore[return-value]  # always one of our Servers

    def prefetch(self, key: bytes | None) -> Deferred[None] | None:
        """With a shared stick table: a Deferred that fires once ``key``'s shared entry is local.

        None (nothing to wait for) without a stick table, a share or a key.
        The Deferred never fails and fires within ``shared_state.timeout``.
        """
        share = self.stick_share
        if share is None or key is None or self.stick is None:
            return None
        return share.prefetch(key)

    def connected(self, server: Server, key: bytes | None) -> None:
        """A unit for client ``key`` is now being served by ``server``."""
        server.record_success()
        stick = self.stick
        if stick is not None and key is not None:
            stick.record(key, server.name, self.clock.seconds())
            if self.stick_share is not None:
                self.stick_share.record(key, server.name)

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

    # -- state changes

    def _server_changed(self, server: Server, event: ServerEvent) -> None:
        if event.kind == "weight":
            self.servers_changed()
        if server.ramping and event.kind in ("up", READY):
            self._start_ramp(server)
        if event.log:
            message = self.describe(server, event)
            if event.kind in ("down", MAINT) or (event.kind == "health" and server.up):
                log.warn("{message}", message=message, **self._fields(server, event))
            else:
                log.info("{message}", message=message, **self._fields(server, event))
        self._update_availability()
        for listener in list(self._listeners):
            listener(server, event)

    def _fields(self, server: Server, event: ServerEvent) -> dict[str, object]:
        result = server.last_check
        return {
            "backend": self.name,
            "server": server.name,
            "change": event.kind,
            "check_status": result.status if result is not None else "",
            "check_code": result.code if result is not None else None,
            "check_info": result.info if result is not None else "",
        }

    def _update_availability(self) -> None:
        available = self.usable_count() > 0
        if available == self.available:
            return
        now = self.clock.seconds()
        self.available = available
        self.last_change = now
        if available:
            if self.down_since is not None:
                self.downtime += now - self.down_since
                self.down_since = None
        else:
            self.down_since = now
            self.down_transitions += 1
            log.error(
                "backend {backend} has no server available!",
                backend=self.name,
                change="backend-down",
            )

    def total_downtime(self) -> float:
        """Seconds during which no server was usable, including the current spell."""
        if self.down_since is None:
            return self.downtime
        return self.downtime + self.clock.seconds() - self.down_since

    def describe(self, server: Server, event: ServerEvent) -> str:
        """The log line for one change, in HAProxy's words."""
        who = f"{'Backup ' if server.backup else ''}Server {self.name}/{server.name}"
        active = sum(1 for s in self.active if s.usable)
        backup = sum(1 for s in self.backups if s.usable)
        on_backup = " Running on backup." if backup and not active else ""
        left = (
            f". {active} active and {backup} backup servers left.{on_backup}"
            f" {server.load} sessions active, 0 requeued, {self.queue_length} remaining in queue."
        )
        online = (
            f". {active} active and {backup} backup servers online.{on_backup}"
            f" 0 sessions requeued, {self.queue_length} total in queue."
        )
        kind = event.kind
        if kind == "down":
            return f"{who} is DOWN, {event.reason}{left}"
        if kind == "up":
            return f"{who} is UP, {event.reason}{online}"
        if kind == "health":
            backup_word = "backup " if server.backup else ""
            return f"Health check for {backup_word}server {self.name}/{server.name} {event.reason}."
        if kind == MAINT:
            if event.was_up:
                return f"{who} is going DOWN for maintenance{left}"
            return f"{who} was DOWN and now enters maintenance."
        if kind == DRAIN:
            return f"{who} enters drain state{left if server.up else '.'}"
        if kind == READY:
            state = "UP/READY" if server.up else "DOWN"
            leaving = "maintenance" if event.previous == MAINT else "drain"
            return f"{who} is {state} (leaving forced {leaving})."
        if kind == "weight":
            return f"{who} weight changed from {event.previous} to {server.weight}."
        if kind == "checks":
            now = "enabled" if server.checks_enabled else "disabled"
            return f"Health checks for server {self.name}/{server.name} {now}."
        return f"{who}: {kind}"

    def _start_ramp(self, server: Server) -> None:
        """Re-read weights in steps while ``server`` ramps up (hashing rings need a rebuild)."""
        old = self._ramps.pop(server, None)
        if old is not None and old.active():
            old.cancel()
        step = max(1.0, server.config.slowstart / 20)

        def tick() -> None:
            self._ramps.pop(server, None)
            self.servers_changed()
            if server.ramping:
                self._ramps[server] = self.clock.callLater(step, tick)

        self.servers_changed()
        self._ramps[server] = self.clock.callLater(step, tick)

    def stop(self) -> None:
        """Cancel the backend's own timers (slowstart steps); waiting units are left alone."""
        for call in self._ramps.values():
            if call.active():
                call.cancel()
        self._ramps.clear()

    # -- configuration reload

    def reconfigure(self, config: BackendConfig) -> None:
        """Apply a reloaded configuration of this backend without disturbing units in flight.

        Servers are matched by name: one whose address is unchanged is kept
        (counters, health, units in flight) and takes its new settings (see
        :meth:`Server.reconfigure`); one that is new, or whose address changed,
        starts as at start-up; one no longer configured leaves the backend,
        and the units in flight on it finish there (they no longer count
        towards this backend). Servers are renumbered in the new order. A
        changed ``balance`` starts its algorithm afresh and a changed
        ``stick`` table starts empty; timeouts and the other settings apply
        to the next unit, and to the idle checks of the ones in flight.
        """
        previous = self.config
        self.config = config
        servers: list[Server] = []
        for server_config in config.servers:
            server = self._by_name.get(server_config.name)
            if server is not None and server.config.address == server_config.address:
                server.reconfigure(server_config, config.check)
            else:
                server = Server(server_config, self.clock, check=config.check)
                server.backend_name = self.name
                server.on_change = self._server_changed
                log.info(
                    "Server {backend}/{server} added by a configuration reload.",
                    backend=self.name,
                    server=server.name,
                    change="added",
                )
            servers.append(server)
        for server in self.servers:
            if server in servers:
                continue
            server.on_release = None
            server.on_change = None
            ramp = self._ramps.pop(server, None)
            if ramp is not None and ramp.active():
                ramp.cancel()
            log.info(
                "Server {backend}/{server} removed by a configuration reload; "
                "{load} sessions active finish on it.",
                backend=self.name,
                server=server.name,
                load=server.load,
                change="removed",
            )
        for index, server in enumerate(servers, start=1):
            server.sid = index
            server.on_release = self._wake_one
        # The algorithms hold these very lists: update them in place.
        self.servers[:] = servers
        self.active[:] = [s for s in servers if not s.backup]
        self.backups[:] = [s for s in servers if s.backup]
        self._by_name = {s.name: s for s in servers}
        if config.balance != previous.balance:
            self._algorithm = make_algorithm(config.balance, self.active, self.rng)
            self._backup_algorithm = make_algorithm(config.balance, self.backups, self.rng)
        if config.stick != previous.stick:
            self.stick = (
                StickTable(config.stick.size, config.stick.expire) if config.stick is not None else None
            )
        self.servers_changed()
        self._update_availability()
