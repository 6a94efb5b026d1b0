"""Active health checks: the probes (one short conversation each) and their scheduling.

A probe connects to a server, optionally sends a PROXY header (v2 ``LOCAL``
or v1 ``UNKNOWN``, so a server that requires one does not see a protocol
error), talks as much SMTP as the check ``kind`` asks for, and turns what
happened into a :class:`~relaybal.health.state.CheckResult` with HAProxy's
status codes:

=============  ==========================================================
kind           conversation; the check passes when
=============  ==========================================================
``tcp``        connect, close: the connection is accepted (``L4OK``)
``banner``     greeting, ``QUIT``: the greeting is ``220`` (``L7OK``)
``smtp``       greeting, ``EHLO`` (``HELO`` after a 5xx), ``QUIT``: every
               reply is 2xx, the greeting 220
``starttls``   greeting, ``EHLO``, ``STARTTLS``, TLS handshake, ``EHLO``,
               ``QUIT``: as ``smtp``, STARTTLS offered and the handshake
               completes; the certificate's days to expiry are recorded
=============  ==========================================================

Failures: ``L4CON`` (refused, unreachable), ``L4TOUT`` (no connection in
``timeout``), ``L7TOUT`` (no complete conversation in ``timeout``), ``L7STS``
(a reply with the wrong code; the result carries the code and text),
``L7RSP`` (malformed reply, connection closed early, STARTTLS not offered),
``L6RSP``/``L6TOUT`` (TLS handshake failed / timed out).

Every conversation that got past the greeting ends with ``QUIT`` (and waits
for its reply), including failed ones, so servers do not log aborted
sessions.

:class:`HealthChecker` runs one server's checks on the reactor's clock at
``interval``/``fastinter``/``downinter`` and feeds the results to the server;
:class:`HealthMonitor` owns the checkers of every backend that has a check.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.internet import error as neterror
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IReactorTime
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relaybal import proxyproto
from relaybal.balance.backend import MAINT, Backend, Server, ServerEvent
from relaybal.config import BackendConfig, CheckConfig
from relaybal.health.state import CheckResult

log = Logger(namespace="relaybal.health")

#: Longest reply (all lines) a probe accepts before calling it malformed.
MAX_REPLY = 64 * 1024


# --------------------------------------------------------------------------- SMTP replies


class BadReply(Exception):
    """Bytes that are not an SMTP reply."""


@attrs.frozen
class Reply:
    """One complete SMTP reply: its code and the text of each line (after ``NNN-``/``NNN ``)."""

    code: int
    lines: tuple[str, ...]

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 300

    @property
    def text(self) -> str:
        """The first line's text (for multi-line EHLO replies, the greeting line)."""
        return self.lines[0] if self.lines else ""

    def has_extension(self, keyword: str) -> bool:
        """Whether an EHLO reply advertises ``keyword`` (lines after the first)."""
        wanted = keyword.upper()
        return any(line.split()[:1] == [wanted] for line in (x.upper() for x in self.lines[1:]))


class ReplyReader:
    """Splits a byte stream into SMTP replies; multi-line replies are joined.

    Lines end with LF (a CR before it is dropped). Each line is three digits,
    then ``-`` (more lines follow), a space or nothing (last line), then text;
    the lines of one reply must share their code. Raises :class:`BadReply`
    otherwise, or when a reply grows beyond :data:`MAX_REPLY` bytes.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._code: int | None = None
        self._lines: list[str] = []
        self._size = 0

    def feed(self, data: bytes) -> list[Reply]:
        """Add bytes; return the replies they completed, in order."""
        self._buffer += data
        replies: list[Reply] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if self._size + len(self._buffer) > MAX_REPLY:
                    raise BadReply("reply too long")
                return replies
            raw = self._buffer[:end]
            self._buffer = self._buffer[end + 1 :]
            self._size += len(raw) + 1
            if self._size > MAX_REPLY:
                raise BadReply("reply too long")
            reply = self._line(raw[:-1] if raw.endswith(b"\r") else raw)
            if reply is not None:
                replies.append(reply)

    def _line(self, line: bytes) -> Reply | None:
        digits, separator = line[:3], line[3:4]
        if len(digits) < 3 or not digits.isdigit() or separator not in (b"-", b" ", b""):
            raise BadReply(f"malformed reply line {_quote(line)}")
        code = int(digits)
        if self._code is not None and code != self._code:
            raise BadReply(f"reply code changed from {self._code} to {code} within one reply")
        self._code = code
        self._lines.append(line[4:].decode("utf-8", "replace").strip())
        if separator == b"-":
            return None
        reply = Reply(code, tuple(self._lines))
        self._code = None
        self._lines = []
        self._size = 0
        return reply


def _quote(raw: bytes, limit: int = 80) -> str:
    return repr(raw[:limit].decode("latin-1"))


# --------------------------------------------------------------------------- probes


@attrs.frozen
class ProbeSpec:
    """What one probe does: which server, which conversation, how long it may take."""

    kind: str
    host: str
    port: int
    helo: str
    timeout: float
    send_proxy: str = "none"

    @classmethod
    def for_server(cls, backend: BackendConfig, check: CheckConfig, server: Server) -> ProbeSpec:
        address = server.config.address
        return cls(
            kind=check.kind,
            host=address.host,
            port=address.port,
            helo=check.helo,
            timeout=check.timeout,
            send_proxy=backend.send_proxy,
        )


Prober = Callable[[ProbeSpec], Deferred[CheckResult]]


def probe(reactor: Any, spec: ProbeSpec) -> Deferred[CheckResult]:
    """Run one check against ``spec``'s server; the Deferred always fires with a result.

    ``reactor`` provides ``IReactorTCP`` and ``IReactorTime``. The whole check
    (connect included) is bounded by ``spec.timeout``.
    """
    return _Attempt(reactor, spec).start()


def client_tls_options() -> Any:
    """TLS client options for ``starttls`` checks: no certificate verification.

    A check judges whether TLS works and how long the certificate has left,
    not whether the server's name matches it (checks connect to addresses).
    """
    from twisted.internet.ssl import CertificateOptions

    return CertificateOptions()


class _Attempt(ClientFactory):
    """One probe run: connects, bounds the time, delivers exactly one result."""

    noisy = False

    def __init__(self, reactor: Any, spec: ProbeSpec) -> None:
        self.reactor = reactor
        self.spec = spec
        self.deferred: Deferred[CheckResult] = Deferred()
        self.started = 0.0
        self.done = False
        self.session: _SmtpProbe | None = None
        self.connector: Any = None
        self.timer: IDelayedCall | None = None

    def start(self) -> Deferred[CheckResult]:
        self.started = self.reactor.seconds()
        spec = self.spec
        self.timer = self.reactor.callLater(spec.timeout, self._timed_out)
        # connectTCP's own timeout is a backstop: ours fires first and says which phase.
        self.connector = self.reactor.connectTCP(spec.host, spec.port, self, timeout=spec.timeout + 1)
        return self.deferred

    def buildProtocol(self, addr: Any) -> _SmtpProbe:
        self.session = _SmtpProbe(self)
        return self.session

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if reason.check(neterror.ConnectionRefusedError):
            self.finish("L4CON", "Connection refused")
        elif reason.check(neterror.TimeoutError):
            self.finish("L4TOUT", "Connection timed out")
        else:
            self.finish("L4CON", reason.getErrorMessage())

    def _timed_out(self) -> None:
        self.timer = None
        if self.session is None:
            self.finish("L4TOUT", "Connection timed out")
            connector = self.connector
            if connector is not None:
                connector.stopConnecting()
        else:
            self.session.timed_out()

    def finish(
        self, status: str, info: str = "", code: int | None = None, cert_days: int | None = None
    ) -> None:
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        result = CheckResult(
            status,
            info=info[:200],
            code=code,
            duration=max(0.0, self.reactor.seconds() - self.started),
            cert_days=cert_days,
        )
        self.deferred.callback(result)


# Conversation stages.
_BANNER = "greeting"
_EHLO = "EHLO"
_HELO = "HELO"
_STARTTLS = "STARTTLS"
_TLS = "TLS handshake"
_TLS_EHLO = "EHLO after STARTTLS"
_QUIT = "QUIT"


@implementer(IHandshakeListener)
class _SmtpProbe(Protocol):
    """The conversation of one check, one command at a time (no pipelining)."""

    def __init__(self, attempt: _Attempt) -> None:
        self.attempt = attempt
        self.spec = attempt.spec
        self.reader = ReplyReader()
        self.stage = _BANNER
        # The verdict, known before QUIT is sent: (status, info, code).
        self.verdict: tuple[str, str, int | None] | None = None
        self.cert_days: int | None = None

    # -- transport events

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        if self.attempt.done:  # timed out while connecting
            transport.loseConnection()
            return
        if self.spec.send_proxy == "v2":
            transport.write(proxyproto.encode_v2(None, None, local=True))
        elif self.spec.send_proxy == "v1":
            transport.write(proxyproto.encode_v1(None, None))
        if self.spec.kind == "tcp":
            self.attempt.finish("L4OK")
            transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.attempt.done:
            return
        try:
            replies = self.reader.feed(data)
        except BadReply as e:
            self.attempt.finish("L7RSP", str(e))
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        for reply in replies:
            self._reply(reply)
            if self.attempt.done:
                return

    def handshakeCompleted(self) -> None:
        if self.attempt.done:
            return
        self.cert_days = self._certificate_days()
        self._send(f"EHLO {self.spec.helo}", _TLS_EHLO)

    def connectionLost(self, reason: Failure = neterror.ConnectionDone) -> None:  # type: ignore[assignment]
        attempt = self.attempt
        if attempt.done:
            return
        if self.verdict is not None:
            status, info, code = self.verdict
            if status != "L7OK":
                attempt.finish(status, info, code, self.cert_days)
            else:
                attempt.finish("L7RSP", "connection closed before the reply to QUIT")
        elif self.stage == _TLS:
            attempt.finish("L6RSP", f"TLS handshake failed: {reason.getErrorMessage()}")
        elif self.stage == _BANNER:
            attempt.finish("L7RSP", "connection closed before the greeting")
        else:
            attempt.finish("L7RSP", f"connection closed before the reply to {self.stage}")

    def timed_out(self) -> None:
        """The check's time is up."""
        if self.verdict is not None and self.verdict[0] != "L7OK":
            status, info, code = self.verdict
            self.attempt.finish(status, info, code, self.cert_days)
        elif self.stage == _TLS:
            self.attempt.finish("L6TOUT", "TLS handshake timed out")
        else:
            self.attempt.finish("L7TOUT", f"no reply to {self.stage} in time")
        self.transport.abortConnection()  # type: ignore[union-attr]

    # -- the conversation

    def _reply(self, reply: Reply) -> None:
        stage = self.stage
        kind = self.spec.kind
        if stage == _QUIT:
            self._end(reply)
        elif stage == _BANNER:
            if reply.code != 220:
                self._quit("L7STS", reply)
            elif kind == "banner":
                self._quit("L7OK", reply)
            else:
                self._send(f"EHLO {self.spec.helo}", _EHLO)
        elif stage == _EHLO:
            if reply.positive:
                if kind != "starttls":
                    self._quit("L7OK", reply)
                elif reply.has_extension("STARTTLS"):
                    self._send("STARTTLS", _STARTTLS)
                else:
                    self._quit("L7RSP", reply, info="STARTTLS not offered")
            elif 500 <= reply.code < 600 and kind != "starttls":
                self._send(f"HELO {self.spec.helo}", _HELO)
            else:
                self._quit("L7STS", reply)
        elif stage == _HELO:
            self._quit("L7OK" if reply.positive else "L7STS", reply)
        elif stage == _STARTTLS:
            if reply.code == 220:
                self.stage = _TLS
                self.transport.startTLS(client_tls_options())  # type: ignore[union-attr]
            else:
                self._quit("L7STS", reply)
        elif stage == _TLS_EHLO:
            if reply.positive:
                self._quit("L7OK", reply, info=f"{reply.text}; {self._tls_words()}")
            else:
                self._quit("L7STS", reply)

    def _send(self, command: str, stage: str) -> None:
        self.stage = stage
        self.transport.write(command.encode("utf-8") + b"\r\n")  # type: ignore[union-attr]

    def _quit(self, status: str, reply: Reply, info: str | None = None) -> None:
        """Record the verdict, then say QUIT; the result is delivered on its reply."""
        self.verdict = (status, reply.text if info is None else info, reply.code)
        self._send("QUIT", _QUIT)

    def _end(self, quit_reply: Reply) -> None:
        assert self.verdict is not None
        status, info, code = self.verdict
        if status == "L7OK" and not quit_reply.positive:
            status, info, code = "L7STS", f"QUIT: {quit_reply.text}", quit_reply.code
        self.attempt.finish(status, info, code, self.cert_days)
        self.transport.loseConnection()  # type: ignore[union-attr]

    # -- TLS details

    def _certificate_days(self) -> int | None:
        get = getattr(self.transport, "getPeerCertificate", None)
        certificate = get() if get is not None else None
        if certificate is None:
            return None
        not_after = certificate.get_notAfter()
        if not not_after:
            return None
        expires = datetime.datetime.strptime(not_after.decode("ascii"), "%Y%m%d%H%M%SZ")
        expires = expires.replace(tzinfo=datetime.UTC)
        now: float = self.attempt.reactor.seconds()
        return math.floor((expires.timestamp() - now) / 86400)

    def _tls_words(self) -> str:
        days = self.cert_days
        if days is None:
            return "TLS established; no certificate"
        if days < 0:
            return f"TLS established; certificate expired {-days} days ago"
        return f"TLS established; certificate expires in {days} days"


# --------------------------------------------------------------------------- scheduling


class HealthChecker:
    """Runs one server's active checks and feeds their results to the server.

    Promises:

    * one check at a time; the next starts ``interval`` after the previous
      one ended while the server is fully up, ``downinter`` while fully down,
      ``fastinter`` while its state is changing (HAProxy's rule); when a
      change (e.g. a passive failure) makes the next check due sooner, it is
      brought forward;
    * no checks in maintenance or while checks are disabled; a result that
      arrives after the server entered maintenance is dropped; leaving
      maintenance (or enabling checks) checks at once.
    """

    def __init__(
        self, server: Server, spec: ProbeSpec, check: CheckConfig, clock: IReactorTime, prober: Prober
    ) -> None:
        self.server = server
        self.spec = spec
        self.check = check
        self.clock = clock
        self.prober = prober
        self.timer: IDelayedCall | None = None
        self.due = 0.0
        self.in_flight = False
        self.running = False
        self.checks_run = 0

    def start(self, delay: float = 0.0) -> None:
        self.running = True
        self._schedule(delay)

    def stop(self) -> None:
        self.running = False
        self._cancel()

    def _wanted(self) -> bool:
        server = self.server
        return self.running and server.admin_state != MAINT and server.checks_enabled

    def _interval(self) -> float:
        health = self.server.health
        check = self.check
        if health is None:
            return check.interval
        return health.interval(check.interval, check.fastinter, check.downinter)

    def _schedule(self, delay: float) -> None:
        self._cancel()
        self.due = self.clock.seconds() + delay
        self.timer = self.clock.callLater(delay, self._run)

    def _cancel(self) -> None:
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None

    def _run(self) -> None:
        self.timer = None
        if not self._wanted():
            return
        self.in_flight = True
        self.server.checking = True
        self.checks_run += 1
        d = self.prober(self.spec)
        d.addErrback(self._internal_error)
        d.addCallback(self._done)

    def _internal_error(self, failure: Failure) -> CheckResult:
        log.failure("health check of {server} failed unexpectedly", failure, server=self.server.name)
        return CheckResult("SOCKERR", info=failure.getErrorMessage())

    def _done(self, result: CheckResult) -> None:
        self.server.checking = False
        if self._wanted():
            # Still in flight while the result is applied: the changes it causes
            # must not schedule a check of their own.
            self.server.check_done(result)
        self.in_flight = False
        if self._wanted() and self.timer is None:
            self._schedule(self._interval())

    def server_event(self, event: ServerEvent) -> None:
        """React to a change of the server: pause, resume, or bring the next check forward."""
        if not self.running or self.in_flight:
            return
        if not self._wanted():
            self._cancel()
            return
        if self.timer is None:
            # Checks were paused (maintenance, disabled): resume at once.
            self._schedule(0.0)
            return
        delay = self._interval()
        if self.clock.seconds() + delay < self.due:
            self._schedule(delay)


class HealthMonitor:
    """The health checkers of every backend that has a ``check`` table."""

    def __init__(self, backends: Iterable[Backend], reactor: Any, prober: Prober | None = None) -> None:
        self.reactor = reactor
        self.prober: Prober = prober if prober is not None else (lambda spec: probe(reactor, spec))
        self.backends = list(backends)
        self.checkers: dict[Server, HealthChecker] = {}
        self._by_backend: dict[str, list[HealthChecker]] = {}
        for backend in self.backends:
            check = backend.config.check
            if check is None:
                continue
            checkers = [
                HealthChecker(
                    server, ProbeSpec.for_server(backend.config, check, server), check, reactor, self.prober
                )
                for server in backend.servers
            ]
            self._by_backend[backend.name] = checkers
            self.checkers.update((checker.server, checker) for checker in checkers)

    def _event(self, server: Server, event: ServerEvent) -> None:
        checker = self.checkers.get(server)
        if checker is not None:
            checker.server_event(event)

    def start(self) -> None:
        """Start checking; each backend's first checks are spread over its interval."""
        for backend in self.backends:
            checkers = self._by_backend.get(backend.name)
            if not checkers:
                continue
            backend.subscribe(self._event)
            interval = checkers[0].check.interval
            for index, checker in enumerate(checkers):
                checker.start(interval * index / len(checkers))

    def stop(self) -> None:
        for backend in self.backends:
            backend.unsubscribe(self._event)
            backend.stop()
        for checker in self.checkers.values():
            checker.stop()

