"""Pooled, reused SMTP connections to one gateway.

A :class:`GatewayPool` keeps up to ``size`` connections to one gateway
(``connections_per_server``) and runs one transaction at a time on each.
Transactions wait in the pool's queue until a connection is free; a
connection is opened only when a transaction waits and none is idle, and an
idle one is closed with ``QUIT`` after ``idle_timeout``. The scheduler bounds
how many transactions it gives a pool (:attr:`GatewayPool.capacity`), so a
slow gateway never holds more than its share of the queue.

Connection failures are reported to the :class:`~relaybal.balance.backend.Server`
(passive health: ``observe``); when a gateway cannot be reached and no
connection to it is alive, every waiting transaction fails with a
:class:`~relaybal.delivery.client.DeliveryError` marked ``retry_elsewhere`` so
the scheduler tries another gateway at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaybal.balance.backend import Backend, Server
from relaybal.config import BackendConfig
from relaybal.delivery.client import (
    ClientSettings,
    DeliveryError,
    SMTPClientConnection,
    Transaction,
    TransactionResult,
    connect,
)

log = Logger()


def delivery_error(text: str) -> DeliveryError:
    """A :class:`DeliveryError` for a problem that is not the message's: try another gateway."""
    return DeliveryError(text, retry_elsewhere=True)


def _shutting_down() -> DeliveryError:
    return delivery_error("delivery is shutting down")

#: Opens one connection: ``connector(host, port, settings)``.
Connector = Callable[[str, int, ClientSettings], "Deferred[SMTPClientConnection]"]


@attrs.define(eq=False)
class _Job:
    txn: Transaction
    done: Deferred[TransactionResult]


class GatewayPool:
    """Connections to one gateway (``server``) and the transactions waiting for them."""

    def __init__(
        self,
        server: Server,
        settings: ClientSettings,
        connector: Connector,
        clock: IReactorTime,
        *,
        size: int = 4,
        idle_timeout: float = 30.0,
        depth: int = 2,
    ) -> None:
        self.server = server
        self.settings = settings
        self.connector = connector
        self.clock = clock
        self.size = max(1, size)
        self.idle_timeout = idle_timeout
        self.depth = max(1, depth)
        self._waiting: deque[_Job] = deque()
        self._idle: list[SMTPClientConnection] = []
        self._idle_timers: dict[SMTPClientConnection, IDelayedCall] = {}
        self._busy: set[SMTPClientConnection] = set()
        self._connecting = 0
        self._closing: Deferred[None] | None = None
        self._quitting: set[Deferred[None]] = set()
        #: Transactions given to :meth:`submit` and not finished yet.
        self.in_flight = 0
        #: Connections opened, and connection attempts that failed.
        self.opened = 0
        self.connect_failures = 0
        #: The reactor time a transaction last finished (or the pool was made).
        self.last_progress = clock.seconds()
        #: Called after each finished transaction (the scheduler dispatches more).
        self.on_free: Callable[[GatewayPool], None] | None = None
        #: The backend configuration the settings came from.
        self.config: BackendConfig | None = None

    # --- capacity

    @property
    def capacity(self) -> int:
        """How many transactions the scheduler may give this pool at once."""
        return self.size * self.depth

    @property
    def has_room(self) -> bool:
        return self.in_flight < self.capacity

    @property
    def connections(self) -> int:
        """Open connections (idle or busy)."""
        return len(self._idle) + len(self._busy)

    def stalled(self, after: float) -> bool:
        """Full, and no transaction finished for ``after`` seconds (a tarpit or a hung gateway)."""
        return not self.has_room and self.clock.seconds() - self.last_progress >= after

    # --- transactions

    def submit(self, txn: Transaction) -> Deferred[TransactionResult]:
        """Run ``txn`` on a connection of this pool as soon as one is free."""
        if self._closing is not None:
            raise RuntimeError("pool is closed")
        job = _Job(txn, Deferred())
        self.in_flight += 1
        self._waiting.append(job)
        self._pump()
        return job.done

    def _pump(self) -> None:
        # Each waiting transaction, in order, takes an idle connection that may carry its
        # client (with XCLIENT a connection may be bound to one client's identity).
        idle = self._idle
        if self._waiting and idle:
            for job in list(self._waiting):
                conn = next((c for c in reversed(idle) if c.usable and c.can_carry(job.txn.client)), None)
                if conn is None:
                    continue
                idle.remove(conn)
                self._cancel_idle_timer(conn)
                self._waiting.remove(job)
                self._run(conn, job)
                if not idle:
                    break
            for conn in [c for c in idle if not c.usable]:
                idle.remove(conn)
                self._cancel_idle_timer(conn)
        if self._closing is not None:
            return
        wanted = len(self._waiting) - self._connecting
        while wanted > 0:
            if self.connections + self._connecting >= self.size:
                if not idle:
                    break
                # Full of idle connections that cannot take these clients: make room.
                conn = idle.pop(0)
                self._cancel_idle_timer(conn)
                self._quit(conn)
            wanted -= 1
            self._open()

    def _cancel_idle_timer(self, conn: SMTPClientConnection) -> None:
        timer = self._idle_timers.pop(conn, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _open(self) -> None:
        self._connecting += 1
        address = self.server.config.address
        try:
            d = self.connector(address.host, address.port, self.settings)
        except Exception:
            d = fail(Failure())
        d.addCallbacks(self._opened, self._open_failed)

    def _opened(self, conn: SMTPClientConnection) -> None:
        self._connecting -= 1
        self.opened += 1
        self.server.record_success()
        conn.on_lost = self._lost
        if self._closing is not None:
            self._quit(conn)
            return
        self._idle.append(conn)
        self._pump()
        self._idle_check(conn)

    def _open_failed(self, failure: Failure) -> None:
        self._connecting -= 1
        self.connect_failures += 1
        error = failure.value
        reason = str(error) if isinstance(error, DeliveryError) else failure.getErrorMessage()
        self.server.record_failure(reason)
        log.info(
            "gateway {server}: connection failed: {reason}",
            server=f"{self.server.backend_name}/{self.server.name}",
            reason=reason,
        )
        if self.connections == 0 and self._connecting == 0:
            # Nobody can serve the waiting transactions: let them go elsewhere.
            if not isinstance(error, DeliveryError):
                error = delivery_error(f"cannot connect to {self.server.config.address}: {reason}")
            jobs = list(self._waiting)
            self._waiting.clear()
            for job in jobs:
                self._finish(job, Failure(error))
        self._check_closed()

    def _run(self, conn: SMTPClientConnection, job: _Job) -> None:
        self._busy.add(conn)

        def done(result: TransactionResult | Failure) -> None:
            self._busy.discard(conn)
            if self._closing is not None:
                self._quit(conn)
            elif conn.usable:
                self._idle.append(conn)
                self._idle_check(conn)
            else:
                conn.abort()
            self._finish(job, result)
            self._pump()

        try:
            d = conn.deliver(job.txn)
        except Exception:
            d = fail(Failure())
        d.addBoth(done)

    def _finish(self, job: _Job, result: TransactionResult | Failure) -> None:
        self.in_flight -= 1
        self.last_progress = self.clock.seconds()
        job.done.callback(result) if not isinstance(result, Failure) else job.done.errback(result)
        if self.on_free is not None:
            self.on_free(self)
        self._check_closed()

    def _idle_check(self, conn: SMTPClientConnection) -> None:
        if conn not in self._idle:
            return

        def expire() -> None:
            self._idle_timers.pop(conn, None)
            if conn in self._idle:
                self._idle.remove(conn)
                self._quit(conn)

        self._idle_timers[conn] = self.clock.callLater(self.idle_timeout, expire)

    def _lost(self, conn: SMTPClientConnection) -> None:
        if conn in self._idle:
            self._idle.remove(conn)
            timer = self._idle_timers.pop(conn, None)
            if timer is not None and timer.active():
                timer.cancel()
        # A busy connection is dealt with when its transaction's Deferred fires.
        self._check_closed()

    def _quit(self, conn: SMTPClientConnection) -> None:
        d = conn.quit()
        self._quitting.add(d)

        def gone(_: Any) -> None:
            self._quitting.discard(d)
            self._check_closed()

        d.addBoth(gone)

    # --- closing

    def close(self) -> Deferred[None]:
        """Stop taking transactions, let running ones finish, ``QUIT`` every connection."""
        if self._closing is None:
            self._closing = Deferred()
            jobs = list(self._waiting)
            self._waiting.clear()
            for job in jobs:
                self._finish(job, Failure(_shutting_down()))
            for conn in list(self._idle):
                timer = self._idle_timers.pop(conn, None)
                if timer is not None and timer.active():
                    timer.cancel()
                self._quit(conn)
            self._idle.clear()
            self._check_closed()
        if self._closing.called:
            return succeed(None)
        d: Deferred[None] = Deferred()

        def chain(result: None) -> None:
            d.callback(None)

        self._closing.addCallback(lambda _: chain(None))
        return d

    def _check_closed(self) -> None:
        closing = self._closing
        if closing is None or closing.called:
            return
        if not self._busy and not self._connecting and not self._quitting and not self._waiting:
            closing.callback(None)

    def abort(self) -> None:
        """Drop every connection now (a fast stop)."""
        for conn in [*self._idle, *self._busy]:
            conn.abort()


@attrs.define
class GatewayCounters:
    """What one gateway was given and what became of it."""

    messages: int = 0
    """Transactions that delivered at least one recipient."""
    recipients: int = 0
    bytes: int = 0
    deferred: int = 0
    """Recipients refused temporarily (or lost with the connection)."""
    bounced: int = 0
    """Recipients refused for good."""
    attempts: int = 0
    possible_duplicates: int = 0




def client_settings(config: BackendConfig, hostname: str) -> ClientSettings:
    """How connections to the gateways of ``config`` are made."""
    return ClientSettings(
        helo=hostname,
        tls=config.tls,
        tls_verify=config.tls_verify,
        xclient=config.xclient,
        xforward=config.xforward,
        timeout_connect=config.timeout_connect,
        timeout_banner=config.timeout_server,
        timeout_command=config.timeout_server,
        timeout_data_block=config.timeout_server,
        timeout_dot=max(config.timeout_server, 600.0),
    )




class Gateways:
    """The pools of every gateway, made on first use, and what each gateway was given.

    Shared by the scheduler (spooled mail) and cut-through delivery.
    ``backends()`` returns the current backends by name (a reload may
    change them: a pool follows its backend's new settings for new
    connections).
    """

    def __init__(
        self,
        reactor: Any,
        *,
        hostname: str,
        backends: Callable[[], Mapping[str, Backend]],
        connector: Connector | None = None,
        idle_timeout: float = 30.0,
    ) -> None:
        self.reactor = reactor
        self.hostname = hostname
        self.backends = backends
        if connector is None:

            def connector(host: str, port: int, settings: ClientSettings) -> Deferred[SMTPClientConnection]:
                return connect(reactor, host, port, settings)

        self.connector: Connector = connector
        self.idle_timeout = idle_timeout
        self.pools: dict[Server, GatewayPool] = {}
        self.counters: dict[Server, GatewayCounters] = {}
        #: Called with the pool after each finished transaction.
        self.on_free: list[Callable[[GatewayPool], None]] = []

    def config_of(self, server: Server) -> BackendConfig | None:
        backend = self.backends().get(server.backend_name)
        if backend is not None and backend.server(server.name) is server:
            return backend.config
        return None

    def pool(self, server: Server) -> GatewayPool:
        """The pool of ``server`` (made now if it has none)."""
        pool = self.pools.get(server)
        config = self.config_of(server)
        if pool is None:
            config = config if config is not None else BackendConfig(name=server.backend_name, servers=())
            pool = GatewayPool(
                server,
                client_settings(config, self.hostname),
                self.connector,
                self.reactor,
                size=config.connections_per_server,
                idle_timeout=self.idle_timeout,
            )
            pool.on_free = self._free
            self.pools[server] = pool
        elif config is not None and config is not pool.config:
            # A reload changed the backend: new connections use the new settings.
            pool.settings = client_settings(config, self.hostname)
            pool.size = max(1, config.connections_per_server)
        pool.config = config
        return pool

    def counters_of(self, server: Server) -> GatewayCounters:
        counters = self.counters.get(server)
        if counters is None:
            counters = self.counters[server] = GatewayCounters()
        return counters

    def _free(self, pool: GatewayPool) -> None:
        for observer in self.on_free:
            observer(pool)

    def close(self) -> Deferred[None]:
        """Close every pool (running transactions finish first)."""
        closing = [pool.close() for pool in self.pools.values()]
        return gatherResults(closing).addBoth(lambda _: None)
