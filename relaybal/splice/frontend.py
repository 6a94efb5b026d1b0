"""Splice mode: a layer-4 SMTP balancer, one server chosen per client connection.

The path of one connection::

    accept ─▶ [PROXY header, from trusted networks only] ─▶ Backend.pick
           ─▶ connect (timeout_connect; retries; redispatch) ─▶ [PROXY v1/v2 out]
           ─▶ [verify_banner: read the server's greeting; not 220 → next server]
           ─▶ splice bytes both ways with back-pressure ─▶ one log line

The client's socket is not read while a server is being found, so nothing the
client sends early is lost or reordered, and nothing reaches the client before
a server has accepted it. When no server can be had, the client is told so with
``421 4.3.2`` instead of a silent close.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from time import time as now_wall
from typing import Any

from twisted.internet import interfaces
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from relaybal import proxyproto
from relaybal.balance.backend import Backend, QueueFull, Server
from relaybal.config import FrontendConfig
from relaybal.netaddr import ClientCounts, in_networks, peer_ip
from relaybal.splice import lean

log = Logger(namespace="relaybal.splice")

# Session states; the second letter of the termination state names them.
PROXY_WAIT = "P"
QUEUED = "Q"
CONNECTING = "C"
BANNER = "B"
DATA = "D"
CLOSED = "-"

MAX_BANNER = 4096


class _Reactor(interfaces.IReactorTCP, interfaces.IReactorTime):
    """What a frontend needs from the reactor (for type checking only)."""


def direct_writer(transport: Any) -> Callable[[bytes], None]:
    """A ``write`` for a plain TCP transport that sends at once when nothing is queued.

    Twisted's ``write`` always queues and waits for the next reactor turn to send,
    which costs two ``epoll_ctl`` calls and a loop iteration per chunk. When the
    transport's buffer is empty we try ``send`` right away and hand only what the
    kernel did not take to ``transport.write``, which keeps ordering, buffering and
    producer back-pressure exactly as before.
    """
    sock = getattr(transport, "socket", None)
    if sock is None or getattr(transport, "TLS", False) or not hasattr(transport, "_tempDataLen"):
        return transport.write  # type: ignore[no-any-return]
    write = transport.write
    send = sock.send

    def send_now(data: bytes) -> None:
        if (
            transport._tempDataLen
            or transport.dataBuffer
            or transport.disconnecting
            or not transport.connected
        ):
            write(data)
            return
        try:
            sent = send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            write(data)  # let the transport discover and report the error its own way
            return
        if sent < len(data):
            write(data[sent:])

    return send_now


_second_cache: list[Any] = [-1, ""]


def _format_time(t: float) -> str:
    """HAProxy's accept date, ``23/Nov/2026:13:58:01.123`` (the second part cached)."""
    second = int(t)
    if second != _second_cache[0]:
        _second_cache[0] = second
        _second_cache[1] = time.strftime("%d/%b/%Y:%H:%M:%S", time.localtime(second))
    return f"{_second_cache[1]}.{int((t - second) * 1000):03d}"


class SpliceFrontend(Factory):
    """A splice listener: builds a :class:`SpliceSession` per accepted client."""

    noisy = False

    def __init__(
        self,
        config: FrontendConfig,
        backend: Backend,
        reactor: Any,
        hostname: str,
    ) -> None:
        self.config = config
        self.name = config.name
        self.backend = backend
        self.reactor = reactor
        self.hostname = hostname
        self.no_server_reply = f"421 4.3.2 {hostname} Service not available\r\n".encode()
        self.ports: list[IListeningPort] = []
        self.current = 0
        self.max_current = 0
        self.total = 0
        self.errors = 0
        self.no_server = 0
        self.retries = 0
        self.redispatches = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.per_client = ClientCounts()
        self._accepting = True
        # Real epoll reactor: lean client sockets for servers given as IP literals.
        self._lean_connect = lean.supported(reactor)
        self._lean_hosts: dict[str, bool] = {}

    def connect_tcp(self, host: str, port: int, factory: ClientFactory, timeout: float) -> Any:
        """Start connecting to a server, as ``reactor.connectTCP`` (see :mod:`relaybal.splice.lean`)."""
        lean_ok = self._lean_hosts.get(host)
        if lean_ok is None:
            lean_ok = self._lean_hosts[host] = self._lean_connect and lean.is_ip_literal(host)
        if lean_ok:
            return lean.connect_tcp(self.reactor, host, port, factory, timeout)
        return self.reactor.connectTCP(host, port, factory, timeout=timeout)

    def buildProtocol(self, addr: Any) -> SpliceSession:
        return SpliceSession(self)

    # -- connection accounting (maxconn pauses accepting: the listen backlog holds the rest)

    def session_started(self, session: SpliceSession) -> None:
        self.current += 1
        self.total += 1
        self.max_current = max(self.max_current, self.current)
        if self.current >= self.config.maxconn and self._accepting:
            self._accepting = False
            for port in self.ports:
                port.stopReading()  # type: ignore[attr-defined]

    def session_ended(self, session: SpliceSession) -> None:
        self.current -= 1
        self.bytes_in += session.bytes_from_client
        self.bytes_out += session.bytes_to_client
        if session.counted_client is not None:
            self.per_client.release(session.counted_client)
        if not self._accepting and self.current < self.config.maxconn:
            self._accepting = True
            for port in self.ports:
                port.startReading()  # type: ignore[attr-defined]


class _ServerConnector(ClientFactory):
    """One connection attempt to one server on behalf of one session."""

    noisy = False

    def __init__(self, session: SpliceSession, server: Server) -> None:
        self.session = session
        self.server = server

    def buildProtocol(self, addr: Any) -> _ServerSide:
        return _ServerSide(self.session, self.server)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.session.attempt_failed(self.server, "S", reason.getErrorMessage())


class _ServerSide(Protocol):
    """The relaybal → server half of a splice."""

    def __init__(self, session: SpliceSession, server: Server) -> None:
        self.session = session
        self.server = server
        self.banner = b""
        self.spliced = False
        self.linger: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.session.server_connected(self)

    def dataReceived(self, data: bytes) -> None:
        if self.spliced:
            session = self.session
            if session is _Detached:  # type: ignore[comparison-overlap]
                return  # the client is gone: nobody reads what the server says any more
            session.bytes_to_client += len(data)
            session.last_activity = session.seconds()
            session.client_turn = True
            session.to_client(data)
        else:
            self.banner += data
            self.session.banner_data(self)

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        if self.linger is not None:
            self.linger.cancel()
            self.linger = None
        self.session.server_lost(self, reason)

    def close_after_flush(self, reactor: Any, limit: float) -> None:
        """Close once what is queued is sent, or abort if the server does not take it in time."""
        transport = self.transport
        assert transport is not None
        transport.loseConnection()
        if getattr(transport, "disconnected", False):
            return
        # loseConnection stops reading. Keep reading (and dropping) what the server sends: a
        # server blocked writing replies nobody reads would stop reading what is still to be sent.
        start_reading = getattr(transport, "startReading", None)
        if start_reading is not None:
            start_reading()
        if not self.linger:
            self.linger = reactor.callLater(limit, self._give_up)

    def _give_up(self) -> None:
        self.linger = None
        self.transport.abortConnection()  # type: ignore[union-attr]


class SpliceSession(Protocol):
    """The client half of a splice, and the state of the whole connection."""

    # Accepted on a real epoll reactor, its socket gets a lean transport (relaybal.splice.lean).
    lean_transport = True

    def __init__(self, frontend: SpliceFrontend) -> None:
        self.frontend = frontend
        self.backend = frontend.backend
        self.reactor = frontend.reactor
        self.seconds = frontend.reactor.seconds
        self.state = PROXY_WAIT
        self.accepted = 0.0
        self.client: tuple[str, int] | None = None
        self.destination: tuple[str, int] | None = None
        self.counted_client: str | None = None
        self.pending = b""
        self.server: Server | None = None
        self.server_side: _ServerSide | None = None
        self.spliced_server: Server | None = None
        self.connector: Any = None
        self.tried: list[Server] = []
        self.attempts = 0
        self.max_attempts = 1
        self.redispatched = 0
        self.timer: IDelayedCall | None = None
        self.cancel_wait: Any = None
        self.t_queue = -1.0
        self.t_connect = -1.0
        self.bytes_from_client = 0
        self.bytes_to_client = 0
        self.last_activity = 0.0
        self.client_turn = True
        self.termination = "--"
        self.detail = ""
        self.linger: IDelayedCall | None = None
        self.to_client: Callable[[bytes], None] = _discard
        self.to_server: Callable[[bytes], None] = _discard

    # -- accept

    def connectionMade(self) -> None:
        self.accepted = self.last_activity = self.seconds()
        fe = self.frontend
        fe.session_started(self)
        transport = self.transport
        assert transport is not None
        self.client = peer_ip(transport.getPeer())
        # The local address is asked of the kernel only when a PROXY header needs it.
        self.destination = peer_ip(transport.getHost()) if self.backend.config.send_proxy != "none" else None
        if (
            self.client is not None
            and fe.config.accept_proxy
            and in_networks(self.client[0], fe.config.accept_proxy)
        ):
            # Trusted source: a PROXY header is required before anything else.
            self.timer = self.reactor.callLater(fe.config.proxy_timeout, self._proxy_timeout)
            transport.resumeProducing()  # type: ignore[attr-defined]  # a lean transport starts paused
            return
        transport.pauseProducing()  # type: ignore[attr-defined]
        self._client_known()

    def _client_known(self) -> None:
        """The real client address is known: apply per-client limits, find a server."""
        fe = self.frontend
        limit = fe.config.maxconn_per_client
        if self.client is not None and limit:
            host = self.client[0]
            if not fe.per_client.take(host, limit):
                self._refuse(b"421 4.7.0 Too many connections from your address\r\n", "R-")
                return
            self.counted_client = host
        self.state = CONNECTING
        servers = self.backend.usable_count()
        retries = self.backend.config.retries
        self.max_attempts = max(retries, servers, 1) if self.backend.config.redispatch else max(retries, 1)
        # A stick table shared through Redis is consulted first (bounded by its timeout).
        backend = self.backend
        shared = backend.prefetch(self._key()) if backend.stick_share is not None else None
        if shared is None:
            self._next_attempt()
        else:
            shared.addCallback(self._prefetched).addErrback(self._prefetch_failed)

    def _prefetched(self, _: object) -> None:
        if self.state == CONNECTING and self.server is None:  # not closed meanwhile
            self._next_attempt()

    def _prefetch_failed(self, failure: Failure) -> None:
        log.failure("splice: choosing a server failed", failure)
        if self.state != CLOSED:
            self._no_server("internal error")

    # -- PROXY header in

    def dataReceived(self, data: bytes) -> None:
        if self.state == DATA:
            self.bytes_from_client += len(data)
            self.last_activity = self.seconds()
            self.client_turn = False
            self.to_server(data)
        elif self.state == PROXY_WAIT:
            self._proxy_data(data)
        else:
            # Only reachable if data was already in flight when reading paused.
            self.pending += data

    def _proxy_data(self, data: bytes) -> None:
        self.pending += data
        result = proxyproto.parse(self.pending)
        if isinstance(result, proxyproto.Incomplete):
            return
        self._cancel_timer()
        if isinstance(result, proxyproto.Invalid):
            self.detail = f"bad PROXY header: {result.reason}"
            self._close("PP")
            return
        header = result.header
        self.pending = self.pending[result.consumed :]
        if (
            header.command == "PROXY"
            and header.source is not None
            and header.family
            in (
                "TCP4",
                "TCP6",
            )
        ):
            self.client = header.source
            self.destination = header.destination
        self.transport.pauseProducing()  # type: ignore[union-attr]
        self._client_known()

    def _proxy_timeout(self) -> None:
        self.timer = None
        self.detail = "no PROXY header in time"
        self._close("cP")

    # -- choosing and connecting to a server

    def _next_attempt(self) -> None:
        backend = self.backend
        key = self._key()
        exclude = self.tried if self.backend.config.redispatch else ()
        if self.tried and not self.backend.config.redispatch:
            server: Server | None = self.tried[-1] if self.tried[-1].usable else None
        else:
            server = backend.pick(key, exclude)
            if server is None and self.tried and backend.config.redispatch:
                # Every server was tried once: go round again while attempts remain.
                server = backend.pick(key, ())
        if server is None:
            if backend.can_queue(exclude) and self.state != QUEUED:
                self._enqueue(exclude)
                return
            self._no_server("no server available" if not self.tried else self.detail)
            return
        if self.tried:
            self.frontend.retries += 1
            if server is not self.tried[-1]:
                self.redispatched += 1
                self.frontend.redispatches += 1
        self.attempts += 1
        self.server = server
        server.acquire()
        addr = server.config.address
        self.state = CONNECTING
        self.connector = self.frontend.connect_tcp(
            addr.host, addr.port, _ServerConnector(self, server), self.backend.config.timeout_connect
        )

    def _key(self) -> bytes | None:
        """The client address as the balancer's hashing/stickiness key."""
        return self.client[0].encode() if self.client is not None else None

    def _enqueue(self, exclude: Sequence[Server]) -> None:
        self.state = QUEUED
        queued_at = self.seconds()

        def ready() -> None:
            self.cancel_wait = None
            self.t_queue = self.seconds() - queued_at
            self.state = CONNECTING
            self._next_attempt()

        def expired() -> None:
            self.cancel_wait = None
            self.t_queue = self.seconds() - queued_at
            self.detail = "queue timeout"
            self._no_server("queue timeout", "sQ")

        try:
            self.cancel_wait = self.backend.wait(ready, self.backend.config.timeout_queue, expired)
        except QueueFull:
            self._no_server("queue full", "RQ")

    def attempt_failed(self, server: Server, who: str, why: str) -> None:
        """A connection attempt (or its banner) failed; retry, redispatch or give up."""
        self.connector = None
        self.server_side = None
        self.server = None
        server.release()
        server.record_failure()
        self.tried.append(server)
        # Every failed attempt is named in the session's log line, oldest first.
        failure = f"{server.name}: {why}"
        self.detail = f"{self.detail}; {failure}" if self.detail else failure
        self._cancel_timer()
        if self.state == CLOSED:
            return
        if self.attempts >= self.max_attempts:
            self._no_server(self.detail, who + "C")
            return
        self._next_attempt()

    def server_connected(self, side: _ServerSide) -> None:
        if self.state == CLOSED:
            side.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.connector = None
        self.server_side = side
        self.t_connect = self.seconds() - self.accepted - max(self.t_queue, 0.0)
        config = self.backend.config
        transport = side.transport
        assert transport is not None
        if config.send_proxy != "none":
            encode = proxyproto.encode_v2 if config.send_proxy == "v2" else proxyproto.encode_v1
            transport.write(encode(self.client, self.destination))
        if config.verify_banner:
            self.state = BANNER
            self.timer = self.reactor.callLater(config.timeout_banner, self._banner_timeout)
        else:
            self._splice()

    def banner_data(self, side: _ServerSide) -> None:
        if self.state != BANNER:
            return
        banner = side.banner
        # The greeting may be multi-line ("220-…" lines, then "220 …"): wait for the last.
        start = 0
        while True:
            end = banner.find(b"\n", start)
            if end < 0:
                if len(banner) > MAX_BANNER:
                    self._bad_banner(side, "greeting too long")
                return
            line = banner[start : end + 1]
            if len(line) < 4 or not line[:3].isdigit() or line[3:4] not in b"- \r\n":
                self._bad_banner(side, "malformed greeting " + repr(line[:80].decode("latin-1")))
                return
            if line[3:4] != b"-":
                break
            start = end + 1
        if line[:3] == b"220":
            self._cancel_timer()
            self._splice()
        else:
            text = line.rstrip(b"\r\n").decode("utf-8", "replace")[:200]
            self._bad_banner(side, f"greeting {text!r}")

    def _bad_banner(self, side: _ServerSide, why: str) -> None:
        server = side.server
        self.server_side = None
        side.session = _Detached  # type: ignore[assignment]
        transport = side.transport
        assert transport is not None
        transport.write(b"QUIT\r\n")
        transport.loseConnection()
        self.state = CONNECTING
        self.attempt_failed(server, "S", why)

    def _banner_timeout(self) -> None:
        self.timer = None
        side = self.server_side
        if side is None:
            return
        server = side.server
        self.server_side = None
        side.session = _Detached  # type: ignore[assignment]
        side.transport.abortConnection()  # type: ignore[union-attr]
        self.state = CONNECTING
        self.attempt_failed(server, "s", "no greeting in time")

    # -- the splice

    def _splice(self) -> None:
        side = self.server_side
        assert side is not None and self.transport is not None and side.transport is not None
        self.state = DATA
        self.spliced_server = side.server
        self.backend.connected(side.server, self._key())
        side.spliced = True
        client = self.transport
        server = side.transport
        self.to_client = direct_writer(client)
        self.to_server = direct_writer(server)
        if side.banner:
            self.bytes_to_client += len(side.banner)
            client.write(side.banner)
            side.banner = b""
        if self.pending:
            self.bytes_from_client += len(self.pending)
            server.write(self.pending)
            self.pending = b""
        # Each side throttles the other: a slow reader pauses the fast writer's socket.
        server.registerProducer(client, True)  # type: ignore[attr-defined]
        client.registerProducer(server, True)  # type: ignore[attr-defined]
        client.resumeProducing()  # type: ignore[attr-defined]
        self.last_activity = self.seconds()
        self.client_turn = True
        self._arm_idle(self._shortest_timeout())

    def _give_up(self) -> None:
        """The client did not take the server's last bytes in time."""
        self.linger = None
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _shortest_timeout(self) -> float:
        return min(self.frontend.config.timeout_client, self.backend.config.timeout_server)

    def _arm_idle(self, delay: float) -> None:
        self.timer = self.reactor.callLater(delay, self._idle_check)

    def _idle_check(self) -> None:
        """Close a session nobody has moved bytes on for the waiting side's timeout.

        Whose turn it is decides which timeout applies: after the server spoke the
        client is expected (timeout_client), after the client spoke the server is
        (timeout_server). One timer per session, re-armed lazily, so the data path
        only records a timestamp.
        """
        self.timer = None
        if self.state != DATA:
            return
        limit = (
            self.frontend.config.timeout_client if self.client_turn else self.backend.config.timeout_server
        )
        idle = self.seconds() - self.last_activity
        if idle >= limit:
            self.detail = "idle timeout"
            self.termination = "cD" if self.client_turn else "sD"
            self.frontend.errors += 1
            # Nothing moved for the whole timeout: whatever is still queued is moot.
            side = self.server_side
            if side is not None and side.transport is not None:
                side.transport.abortConnection()  # type: ignore[attr-defined]
            self.transport.abortConnection()  # type: ignore[union-attr]
        else:
            # Whoever moves bytes next may start the shorter timeout; never sleep past it.
            self._arm_idle(min(limit - idle, self._shortest_timeout()))

    def server_lost(self, side: _ServerSide, reason: Failure) -> None:
        if side is not self.server_side:
            return
        if self.state == DATA:
            if self.termination == "--" and not reason.check(ConnectionDone):
                self.termination = "SD"
                self.detail = reason.getErrorMessage()
            self.server_side = None
            self._finish_server(side)
            transport = self.transport
            assert transport is not None
            # The dead server must not hold the client's close back: Twisted's transports resume
            # a paused producer instead of closing once drained.
            transport.unregisterProducer()  # type: ignore[attr-defined]
            transport.loseConnection()
            if self.linger is None:
                self.linger = self.reactor.callLater(self.frontend.config.timeout_client, self._give_up)
        elif self.state == BANNER:
            self.server_side = None
            self.state = CONNECTING
            self.attempt_failed(side.server, "S", "closed before greeting")

    def _finish_server(self, side: _ServerSide) -> None:
        server = side.server
        if self.server is server:
            self.server = None
            server.bytes_in += self.bytes_from_client
            server.bytes_out += self.bytes_to_client
            server.release()

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        if self.state == DATA and self.termination == "--" and self.server_side is not None:
            if not reason.check(ConnectionDone):
                self.termination = "CD"
                self.detail = reason.getErrorMessage()
        elif self.state in (PROXY_WAIT, QUEUED, CONNECTING, BANNER) and self.termination == "--":
            self.termination = "C" + self.state
        self.state = CLOSED
        self._cancel_timer()
        if self.linger is not None:
            self.linger.cancel()
            self.linger = None
        if self.cancel_wait is not None:
            self.cancel_wait()
            self.cancel_wait = None
        if self.connector is not None:
            with contextlib.suppress(Exception):  # it may have finished meanwhile
                self.connector.stopConnecting()
        side = self.server_side
        if side is not None:
            self.server_side = None
            side.session = _Detached  # type: ignore[assignment]
            if side.transport is not None:
                if self.spliced_server is not None:  # the client is its producer no more
                    side.transport.unregisterProducer()  # type: ignore[attr-defined]
                side.close_after_flush(self.reactor, self.backend.config.timeout_server)
            self._finish_server(side)
        self.frontend.session_ended(self)
        self._log()

    # -- endings

    def _no_server(self, why: str, termination: str = "SC") -> None:
        self.frontend.no_server += 1
        self.detail = why
        self._refuse(self.frontend.no_server_reply, termination)

    def _refuse(self, reply: bytes, termination: str) -> None:
        self.termination = termination
        self.frontend.errors += 1
        transport = self.transport
        assert transport is not None
        self.bytes_to_client += len(reply)
        transport.write(reply)
        transport.loseConnection()

    def _close(self, termination: str) -> None:
        self.termination = termination
        self.frontend.errors += 1
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _log(self) -> None:
        now = self.seconds()
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "unix"
        if self.spliced_server is not None:
            server, srvconn = self.spliced_server.name, self.spliced_server.load
        elif self.tried:
            server, srvconn = self.tried[-1].name, self.tried[-1].load
        else:
            server, srvconn = "<NOSRV>", 0
        tw = int(self.t_queue * 1000) if self.t_queue >= 0 else -1
        tc = int(self.t_connect * 1000) if self.t_connect >= 0 else -1
        tt = int((now - self.accepted) * 1000)
        fe = self.frontend
        retries = max(self.attempts - 1, 0)
        beconn = sum(s.load for s in self.backend.servers)
        detail = f' "{self.detail}"' if self.detail else ""
        # Formatted here with an f-string: twisted.logger's own formatting of a
        # many-field template costs more than the rest of a short session.
        line = (
            f"{client} [{_format_time(self.accepted)}] {fe.name} {self.backend.name}/{server} "
            f"{tw}/{tc}/{tt} {self.bytes_to_client} {self.bytes_from_client} "
            f"{self.termination} {fe.current}/{beconn}/{srvconn}/{retries}{detail}"
        )
        # The event Logger.info would build, handed to its observer directly: Logger.emit's
        # own checks cost as much again as the rest of this method.
        log.observer(
            {
                "line": line,
                "client": client,
                "frontend": fe.name,
                "backend": self.backend.name,
                "server": server,
                "time_queue_ms": tw,
                "time_connect_ms": tc,
                "time_total_ms": tt,
                "bytes_to_client": self.bytes_to_client,
                "bytes_from_client": self.bytes_from_client,
                "termination": self.termination,
                "retries": retries,
                "detail": self.detail,
                "log_logger": log,
                "log_level": LogLevel.info,
                "log_namespace": log.namespace,
                "log_source": None,
                "log_format": "{line}",
                "log_time": now_wall(),
            }
        )


def _discard(data: bytes) -> None:
    """The data path before a splice exists (never called in practice)."""


class _DetachedSession:
    """Stands in for a session an abandoned server connection no longer belongs to."""

    def server_connected(self, side: _ServerSide) -> None:
        side.transport.loseConnection()  # type: ignore[union-attr]

    def banner_data(self, side: _ServerSide) -> None:
        pass

    def server_lost(self, side: _ServerSide, reason: Failure) -> None:
        pass


_Detached = _DetachedSession()
