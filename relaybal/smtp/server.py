"""The ESMTP server of relay frontends (RFC 5321 with PIPELINING, SIZE, 8BITMIME,
SMTPUTF8, ENHANCEDSTATUSCODES, STARTTLS, AUTH and CHUNKING).

One :class:`ESMTPServer` per client connection. It parses bytes, asks the
frontend's policy (:class:`~relaybal.relay.interfaces.ISessionPolicy`) at each
stage, streams accepted bodies to the frontend's sink
(:class:`~relaybal.relay.interfaces.IMessageSink`) and writes replies; it makes
no decisions of its own beyond the protocol's.

How it stays correct under hostile input:

- Commands are taken one at a time from a buffer. While an answer is pending
  (a policy, AUTH, a commit), nothing more is read or parsed, so pipelined
  replies keep their order; the buffer holds at most one socket read plus one
  partial command line (longer than ``max_command_line``: ``500 5.5.2`` and
  the connection is closed).
- DATA bodies go through :class:`~relaybal.smtp.datascan.DataScanner` chunk by
  chunk; a body that breaks a rule is read to its real end and refused
  there, so the session never mistakes body text for commands.
- After ``220`` to STARTTLS the rest of the plaintext buffer is thrown away
  and the session starts over (RFC 3207).
- Any exception answers ``451 4.3.0`` for the transaction and is logged with
  its traceback; the daemon never sees it.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import attrs
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relaybal import proxyproto
from relaybal.netaddr import in_networks, peer_ip
from relaybal.relay.interfaces import (
    Decision,
    Envelope,
    IMessageWriter,
    SessionState,
    SinkError,
    TLSInfo,
)
from relaybal.smtp import auth
from relaybal.smtp.datascan import BodyError, DataScanner
from relaybal.smtp.wire import (
    CommandError,
    Limits,
    Reply,
    check_helo_name,
    parse_path_and_params,
    reply,
    split_command,
    xtext_decode,
)
from relaybal.splice.frontend import direct_writer

if TYPE_CHECKING:
    from relaybal.relay.frontend import ClientName, RelayFrontend

log = Logger(namespace="relaybal.relay")

# Session modes.
PROXY: Final = "proxy"
COMMAND: Final = "command"
DATA: Final = "data"
BDAT: Final = "bdat"
AUTH: Final = "auth"
CLOSED: Final = "closed"

#: Protocol errors (500, 501, 502, 503, 555) after which a session is closed.
MAX_PROTOCOL_ERRORS: Final = 20
#: Failed AUTH attempts after which a session is closed.
MAX_AUTH_FAILURES: Final = 3
#: Longest AUTH response line (RFC 4954 section 4: 12288 octets).
MAX_AUTH_LINE: Final = 12288
#: Most of a message's header block kept for policies that look at headers.
MAX_HEADER_BLOCK: Final = 64 * 1024
#: Verbs of other protocols: a browser or proxy talking to the SMTP port is cut off.
FOREIGN_VERBS: Final = frozenset({b"GET", b"POST", b"HEAD", b"PUT", b"CONNECT", b"OPTIONS"})

OK: Final = reply(250, "2.0.0", "Ok")
MAIL_OK: Final = reply(250, "2.1.0", "Ok")
RCPT_OK: Final = reply(250, "2.1.5", "Ok")
DATA_GO: Final = reply(354, "", "End data with <CR><LF>.<CR><LF>")
BYE: Final = reply(221, "2.0.0", "Bye")
INTERNAL_ERROR: Final = Reply(451, "4.3.0", "Error: internal error, try again later")

BODY_ERRORS: Final = {
    BodyError.BARE_NEWLINE: Reply(554, "5.6.11", "Error: bare CR or LF in message (use CRLF line endings)"),
    BodyError.NUL: Reply(554, "5.6.0", "Error: NUL byte in message"),
    BodyError.LINE_TOO_LONG: Reply(554, "5.6.0", "Error: message has a line that is too long"),
    BodyError.TOO_BIG: Reply(552, "5.3.4", "Error: message too big"),
}

HELP_TEXT: Final = reply(
    214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH"
)


@attrs.frozen
class ServerSettings:
    """What every session of one frontend shares, computed once."""

    frontend: str
    hostname: str
    banner: bytes
    limits: Limits
    max_message_size: int
    max_recipients: int
    normalize: bool
    require_tls: bool
    tls_available: bool
    auth_mechanisms: tuple[str, ...]
    allow_plaintext_auth: bool
    accept_proxy: tuple[Any, ...]
    proxy_timeout: float
    timeout_client: float
    timeout_data: float
    timeout_session: float
    maxconn_per_client: int
    reverse_lookup: bool = False
    reverse_lookup_timeout: float = 5.0

    def ehlo_reply(self, starttls: bool, auth_offered: bool) -> bytes:
        """The EHLO reply (no enhanced status codes on it, RFC 2034)."""
        lines = [
            self.hostname, "PIPELINING", f"SIZE {self.max_message_size}", "8BITMIME", "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
        ]  # fmt: skip
        if starttls:
            lines.append("STARTTLS")
        if auth_offered:
            lines.append("AUTH " + " ".join(self.auth_mechanisms))
        lines += ["CHUNKING", "HELP"]
        return reply(250, "", "\n".join(lines))


_date_cache: list[Any] = [-1, ""]


def _rfc5322_date(t: float) -> str:
    second = int(t)
    if second != _date_cache[0]:
        _date_cache[0] = second
        _date_cache[1] = email.utils.formatdate(second, localtime=True)
    return str(_date_cache[1])


def _address_literal(host: str) -> str:
    return f"[IPv6:{host}]" if ":" in host else f"[{host}]"


def _show_client(client: tuple[str, int] | None, name: str | None = None) -> str:
    """``[192.0.2.7]:40000``, or ``name[192.0.2.7]:40000`` once the client's name was looked up."""
    if client is None:
        return "local"
    host, port = client
    return f"{name or ''}[{host}]:{port}"


@implementer(IPushProducer)
class ESMTPServer(Protocol):
    """One client session of a relay frontend."""

    def __init__(self, frontend: RelayFrontend) -> None:
        self.frontend = frontend
        self.settings: ServerSettings = frontend.settings
        self.policy = frontend.policy
        self.reactor = frontend.reactor
        self._seconds: Callable[[], float] = frontend.reactor.seconds
        self.state = SessionState(frontend=self.settings.frontend)
        self.mode = PROXY
        self.accepted = 0.0
        self.last_activity = 0.0
        self.counted_client: str | None = None
        self.termination = ""
        self.messages = 0
        self.commands = 0
        self.errors = 0
        self.auth_failures = 0
        self._buf = b""
        self._pos = 0
        self._running = False
        self._closing = False
        self._greeting_due = False
        self._tls_fresh = False
        self._waiting = False
        self._pauses: set[str] = set()
        self._out: list[bytes] = []
        self._write: Callable[[bytes], None] = _discard
        self._timer: IDelayedCall | None = None
        self._last_crlf = True
        self._lookup: Deferred[ClientName] | None = None
        # the message being received
        self._writer: IMessageWriter | None = None
        self._scanner: DataScanner | None = None
        self._envelope: Envelope | None = None
        self._data_failed = False
        self._bdat_active = False
        self._bdat_left = 0
        self._bdat_last = False
        self._bdat_reply: Reply | None = None
        self._bdat_size = 0
        # AUTH in progress
        self._auth_mechanism = ""
        self._auth_username = b""
        # The header block, collected for policies that look at it (end of data).
        self._want_headers = bool(getattr(self.policy, "wants_headers", False))
        self._header_buf: bytearray | None = None
        self._header_block = b""

    # ------------------------------------------------------------------ connection

    def connectionMade(self) -> None:
        try:
            self._connected()
        except Exception:
            self._internal_error(Failure())
        self._flush()

    def _connected(self) -> None:
        transport = self.transport
        assert transport is not None
        self.accepted = self.last_activity = self._seconds()
        self.state.client = peer_ip(transport.getPeer())
        self.state.local = peer_ip(transport.getHost())
        self._write = direct_writer(transport)
        transport.registerProducer(self, True)  # type: ignore[attr-defined]
        if not self.frontend.session_started(self):
            self._refuse(
                reply(421, "4.7.0", f"{self.settings.hostname} Error: too many connections"), "maxconn"
            )
            return
        if self.frontend.draining:
            self._refuse(self._shutting_down(), "draining")
            return
        self._arm_timer()
        s = self.settings
        if (
            self.state.client is not None
            and s.accept_proxy
            and in_networks(self.state.client[0], s.accept_proxy)
        ):
            return  # mode PROXY: the header comes first, then the greeting
        self._client_known()

    def _client_known(self) -> None:
        s = self.settings
        client = self.state.client
        if client is not None and s.maxconn_per_client:
            if not self.frontend.count_client(client[0], s.maxconn_per_client):
                self._refuse(
                    reply(421, "4.7.0", f"{s.hostname} Error: too many connections from your address"),
                    "maxconn_per_client",
                )
                return
            self.counted_client = client[0]
        self.mode = COMMAND
        self._greeting_due = True
        if s.reverse_lookup and client is not None:
            # As Postfix: the name is known before the connect policies and the greeting. Reading
            # waits meanwhile; the lookup gives up after reverse_lookup_timeout on its own.
            self._lookup = maybeDeferred(self.frontend.lookup_client_name, client[0])
            self._wait(self._lookup, self._name_known, self._name_failed)
            return
        self._ask(self.policy.connect(self.state), self._greet)

    def _name_known(self, found: ClientName) -> None:
        self._lookup = None
        self.state.reverse_name = found.reverse_name
        self.state.client_name = found.client_name
        if found.problem is not None:
            log.info(
                "{line}",
                line=f"{self.settings.frontend}: {self._client_text()}: {found.problem}",
                client=self.state.client_host,
                frontend=self.settings.frontend,
            )
        self._ask(self.policy.connect(self.state), self._greet)

    def _name_failed(self, failure: Failure) -> None:
        """Not expected (the lookup never fails): the name stays unknown and the session goes on."""
        log.failure("{frontend}: client name lookup failed", failure, frontend=self.settings.frontend)
        self._lookup = None
        self.state.reverse_name = None
        self.state.client_name = "unknown"
        self._ask(self.policy.connect(self.state), self._greet)

    def _client_text(self) -> str:
        return _show_client(self.state.client, self.state.client_name)

    def _greet(self, answer: Reply | None) -> None:
        self._greeting_due = False
        if answer is not None and not answer.positive:
            self._refuse(answer.encode(), "refused at connect")
            return
        self._send(self.settings.banner)

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        was = self.mode
        self.mode = CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lookup is not None:
            lookup, self._lookup = self._lookup, None
            lookup.cancel()  # its answer no longer matters (the session ignores it once closed)
        self._abort_message()
        if not self.termination:
            if was in (DATA, BDAT):
                self.termination = "client left during DATA"
            elif was == PROXY:
                self.termination = "client left before the PROXY header"
            elif reason.check(ConnectionDone):
                self.termination = "client closed"
            else:
                self.termination = f"connection lost: {reason.getErrorMessage()}"
        self.frontend.session_ended(self)
        log.info(
            "{line}",
            line=(
                f"{self.settings.frontend}: disconnect from {self._client_text()} "
                f"after {int((self._seconds() - self.accepted) * 1000)}ms: {self.commands} commands, "
                f"{self.messages} messages: {self.termination}"
            ),
            client=self.state.client_host,
            frontend=self.settings.frontend,
            messages=self.messages,
            termination=self.termination,
        )

    # -- IPushProducer: the transport pauses us when replies pile up unread

    def pauseProducing(self) -> None:
        self._pause("write")

    def resumeProducing(self) -> None:
        self._resume("write")

    def stopProducing(self) -> None:
        pass

    def _pause(self, why: str) -> None:
        if not self._pauses and self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        self._pauses.add(why)

    def _resume(self, why: str) -> None:
        if why not in self._pauses:
            return
        self._pauses.discard(why)
        if not self._pauses and self.transport is not None and self.mode != CLOSED:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ output

    def _send(self, data: bytes) -> None:
        self._out.append(data)

    def _flush(self) -> None:
        if self._out:
            data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
            self._out = []
            self.frontend.bytes_out += len(data)
            self._write(data)

    def _close(self, termination: str) -> None:
        """Send what is queued and close (after a 221 or 421)."""
        if not self.termination:
            self.termination = termination
        self.mode = CLOSED
        self._flush()
        transport = self.transport
        if transport is not None and not self._closing:
            self._closing = True
            transport.unregisterProducer()  # type: ignore[attr-defined]
            transport.loseConnection()
            # A client that reads nothing (or stalls a TLS handshake) would hold the connection
            # for ever: it gets timeout_client to take our last words, then it is cut off.
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.reactor.callLater(self.settings.timeout_client, self._cut_off)

    def _cut_off(self) -> None:
        self._timer = None
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _refuse(self, data: bytes, termination: str) -> None:
        self._send(data)
        self._close(termination)

    # ------------------------------------------------------------------ timers

    def _arm_timer(self) -> None:
        s = self.settings
        delay = s.proxy_timeout if self.mode == PROXY else s.timeout_client
        if s.timeout_session:
            delay = min(delay, s.timeout_session)
        self._timer = self.reactor.callLater(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.mode == CLOSED:
            return
        s = self.settings
        now = self._seconds()
        if s.timeout_session and now - self.accepted >= s.timeout_session:
            self._timeout("session time limit exceeded")
            return
        if self.mode == PROXY:
            limit = s.proxy_timeout
        elif self.mode in (DATA, BDAT):
            limit = s.timeout_data
        else:
            limit = s.timeout_client
        if self._waiting:
            # Waiting for ourselves (a policy, a commit): the client is not late.
            next_check = limit
        else:
            # A PROXY header gets proxy_timeout from the connection, however slowly it trickles in.
            idle = now - (self.accepted if self.mode == PROXY else self.last_activity)
            if idle >= limit:
                self._timeout("no PROXY header in time" if self.mode == PROXY else "timeout")
                return
            next_check = limit - idle
        if s.timeout_session:
            next_check = min(next_check, self.accepted + s.timeout_session - now)
        self._timer = self.reactor.callLater(next_check, self._on_timer)

    def _timeout(self, why: str) -> None:
        self._abort_message()
        if self.mode == PROXY:
            self.termination = why
            self._close(why)
            return
        self._refuse(reply(421, "4.4.2", f"{self.settings.hostname} Error: {why}"), why)

    # ------------------------------------------------------------------ input

    def dataReceived(self, data: bytes) -> None:
        self.last_activity = self._seconds()
        try:
            if self.mode == DATA and not self._waiting and self._pos >= len(self._buf):
                self._data_chunk(data)
                if self.mode == DATA:
                    self._flush()
                    return
            else:
                self._buf = self._buf[self._pos :] + data if self._pos else self._buf + data
                self._pos = 0
            self._run()
        except Exception:
            self._internal_error(Failure())
        self._flush()

    def _run(self) -> None:
        """Handle buffered input until it runs out, the session waits, or closes."""
        if self._running:
            return  # an answer arrived synchronously: the running loop goes on
        self._running = True
        try:
            while not self._waiting:
                try:
                    if not self._step():
                        break
                except Exception:
                    # Every step consumes its input first, so going on cannot loop.
                    self._internal_error(Failure())
        finally:
            self._running = False
        if self._pos and self._pos >= len(self._buf):
            self._buf = b""
            self._pos = 0

    def _step(self) -> bool:
        """Handle one command (or one piece of a body); False when more input is needed."""
        mode = self.mode
        if mode in (COMMAND, AUTH):
            taken = self._next_line(MAX_AUTH_LINE if mode == AUTH else self.settings.limits.command_line)
            if taken is None:
                return False
            line, valid = taken
            if not valid:
                if self.mode == AUTH:
                    self.mode = COMMAND
            elif mode == COMMAND:
                self._command(line)
            else:
                self._auth_response(line)
            return True
        if mode == DATA:
            rest = self._take_all()
            if not rest:
                return False
            self._data_chunk(rest)
            return True
        if mode == BDAT:
            return self._bdat_input()
        if mode == PROXY:
            self._proxy_input()
            return self.mode != PROXY
        self._buf = b""  # CLOSED: whatever else came is ignored
        self._pos = 0
        return False

    def _take_all(self) -> bytes:
        rest = self._buf[self._pos :] if self._pos else self._buf
        self._buf = b""
        self._pos = 0
        return rest

    def _next_line(self, limit: int) -> tuple[bytes, bool] | None:
        """The next whole line (without its line end) and whether it is usable; None if none yet.

        An unusable line (too long; a bare LF under ``bare_newline = "reject"``)
        has been answered already.
        """
        buf = self._buf
        pos = self._pos
        end = buf.find(b"\n", pos)
        if end < 0:
            if len(buf) - pos > limit:
                self._buf = b""
                self._pos = 0
                self._refuse(reply(500, "5.5.2", "Error: line too long"), "line too long")
            return None
        self.commands += 1
        self._pos = end + 1
        crlf = end > pos and buf[end - 1] == 0x0D
        line = buf[pos : end - 1] if crlf else buf[pos:end]
        self._last_crlf = crlf
        if end + 1 - pos > limit:
            self._error(reply(500, "5.5.2", "Error: line too long"))
            return line, False
        if not crlf and not self.settings.normalize:
            self._error(reply(500, "5.5.2", "Error: bare <LF> received (use CRLF line endings)"))
            return line, False
        return line, True

    # ------------------------------------------------------------------ waiting for answers

    def _ask(
        self,
        decision: Decision,
        then: Callable[[Reply | None], None],
        failed: Callable[[Failure], None] | None = None,
    ) -> None:
        """Run ``then`` with a policy's (or any) answer, now or once it arrives.

        While it is pending, the session reads and parses nothing, so the
        replies to pipelined commands leave in order.
        """
        if not isinstance(decision, Deferred):
            self._answered(decision, then)
            return
        self._wait(decision, lambda answer: self._answered(answer, then), failed)

    def _answered(self, answer: Reply | None, then: Callable[[Reply | None], None]) -> None:
        """A policy's ``421`` closes the session at any stage; any other answer goes to ``then``."""
        if isinstance(answer, Reply) and answer.code == 421:
            self._abort_message()
            self._log_reject(answer)
            self._refuse(answer.encode(), "disconnected by policy")
            return
        then(answer)

    def _wait(
        self, d: Deferred[Any], then: Callable[[Any], None], failed: Callable[[Failure], None] | None = None
    ) -> None:
        """Run ``then`` (or ``failed``) with the result of ``d``, pausing input until it arrives."""
        arrived_now: list[Any] = []
        pending = [False]

        def arrived(result: Any) -> None:
            if not pending[0]:
                arrived_now.append(result)
                return
            self._waiting = False
            if self.mode == CLOSED:
                return
            self.last_activity = self._seconds()
            self._settle(result, then, failed)
            if self.mode != CLOSED and not self._waiting:  # ``then`` may have started another wait
                self._resume("wait")
            if not self._running:
                try:
                    self._run()
                except Exception:
                    self._internal_error(Failure())
            self._flush()

        d.addBoth(arrived)
        if arrived_now:
            # Already there (a synchronous sink or checker): no need to pause reading.
            self._settle(arrived_now[0], then, failed)
            return
        pending[0] = True
        self._waiting = True
        self._pause("wait")

    def _settle(
        self, result: Any, then: Callable[[Any], None], failed: Callable[[Failure], None] | None
    ) -> None:
        try:
            if isinstance(result, Failure):
                if failed is not None:
                    failed(result)
                else:
                    self._internal_error(result)
            else:
                then(result)
        except Exception:
            self._internal_error(Failure())

    def _internal_error(self, failure: Failure) -> None:
        """An exception inside the session: 451 for the transaction, traceback to the log."""
        log.failure(
            "{frontend}: internal error in session with {client}",
            failure,
            frontend=self.settings.frontend,
            client=self._client_text(),
        )
        if self.mode == CLOSED:
            return
        if self.mode == PROXY or (self.mode == COMMAND and self._greeting_due):
            self._refuse(
                reply(421, "4.3.0", f"{self.settings.hostname} Error: internal error"), "internal error"
            )
            return
        if self.mode == BDAT:
            # The chunk's length is known: read its octets, then answer.
            self._abort_message()
            self.state.reset_transaction()
            self._bdat_reply = INTERNAL_ERROR
            return
        if self.mode == DATA and self._scanner is not None and not self._scanner.done:
            # The body cannot be followed reliably any more: answer and close.
            self._abort_message()
            self._send(INTERNAL_ERROR.encode())
            self._close("internal error during DATA")
            return
        self._abort_message()
        self.state.reset_transaction()
        if self.mode in (AUTH, DATA):
            self.mode = COMMAND
        self._send(INTERNAL_ERROR.encode())

    def _error(self, data: bytes) -> None:
        """A protocol error reply; too many of them close the session."""
        self.errors += 1
        self._send(data)
        if self.errors >= MAX_PROTOCOL_ERRORS:
            self._refuse(
                reply(421, "4.7.0", f"{self.settings.hostname} Error: too many errors"), "too many errors"
            )

    # ------------------------------------------------------------------ PROXY header

    def _proxy_input(self) -> None:
        buf = self._take_all()
        result = proxyproto.parse(buf)
        if isinstance(result, proxyproto.Incomplete):
            self._buf = buf
            return
        if isinstance(result, proxyproto.Invalid):
            self.termination = f"bad PROXY header: {result.reason}"
            self._close(self.termination)
            return
        header = result.header
        self._buf = buf[result.consumed :]
        if header.command == "PROXY" and header.source is not None and header.family in ("TCP4", "TCP6"):
            self.state.proxy = self.state.client
            self.state.client = header.source
            self.state.local = header.destination
        self.last_activity = self._seconds()
        self._client_known()

    # ------------------------------------------------------------------ commands

    def _shutting_down(self) -> bytes:
        return reply(421, "4.3.2", f"{self.settings.hostname} Service shutting down, try again later")

    @property
    def idle(self) -> bool:
        """Between transactions, not waiting for an answer: a draining frontend may close it now."""
        return (
            self.mode == COMMAND
            and self.state.sender is None
            and not self._waiting
            and self._writer is None
            and not self._greeting_due
            and not self._closing
        )

    def drain(self) -> None:
        """The frontend drains: close now if idle, otherwise after the transaction in progress."""
        if self.idle:
            self._refuse(self._shutting_down(), "draining")

    def _command(self, line: bytes) -> None:
        verb, args = split_command(line)
        if self.frontend.draining and self.state.sender is None and verb != b"QUIT":
            # No transaction in progress: the session ends here (one in progress completes first).
            self._refuse(self._shutting_down(), "draining")
            return
        handler = _HANDLERS.get(verb)
        if handler is None:
            if verb in FOREIGN_VERBS or verb.endswith(b":"):
                self._refuse(
                    reply(421, "4.7.0", f"{self.settings.hostname} Error: not an SMTP client"),
                    "non-SMTP command",
                )
            elif verb in (b"EXPN", b"ETRN", b"TURN", b"SEND", b"SOML", b"SAML"):
                self._error(reply(502, "5.5.1", "Error: command not implemented"))
            else:
                self._error(reply(500, "5.5.2", "Error: command not recognized"))
            return
        try:
            handler(self, args)
        except CommandError as e:
            self._reject(e.reply)

    def _reject(self, answer: Reply) -> None:
        if answer.code in (500, 501, 502, 503, 555):
            self._error(answer.encode())
        else:
            self._send(answer.encode())

    def _answer(self, answer: Reply | None, default: bytes) -> bool:
        """Send a policy's answer (or ``default``); True if the command may proceed."""
        if answer is None:
            self._send(default)
            return True
        if answer.positive:
            self._send(answer.encode())
            return True
        self._log_reject(answer)
        self._send(answer.encode())
        return False

    def _log_reject(self, answer: Reply, detail: str = "") -> None:
        state = self.state
        sender = f" from=<{state.sender}>" if state.sender is not None else ""
        log.info(
            "{line}",
            line=(
                f"{self.settings.frontend}: reject {self._client_text()}: "
                f"{answer.code} {answer.status} {answer.text};{sender}{detail}"
            ),
            client=state.client_host,
            frontend=self.settings.frontend,
            code=answer.code,
        )

    def do_EHLO(self, args: bytes) -> None:
        self._hello(args, esmtp=True)

    def do_HELO(self, args: bytes) -> None:
        self._hello(args, esmtp=False)

    def _hello(self, args: bytes, esmtp: bool) -> None:
        name = check_helo_name(args)
        if self._tls_fresh:
            # The client spoke through TLS, so the handshake is done: record what it got
            # (before the policy is asked, so that it sees it too).
            self._tls_fresh = False
            self.state.tls = _tls_info(self.transport)
            self.state.tls_client_subject = _tls_client_subject(self.transport)
        previous_esmtp = self.state.esmtp
        self.state.esmtp = esmtp  # the policy sees which greeting this is; undone if it is refused

        def then(answer: Reply | None) -> None:
            s = self.settings
            state = self.state
            if answer is not None and not answer.positive:
                state.esmtp = previous_esmtp
                self._log_reject(answer, f" helo={name}")
                self._send(answer.encode())
                return
            self._abort_message()
            state.reset_transaction()
            state.helo = name
            state.esmtp = esmtp
            if esmtp:
                self._send(s.ehlo_reply(s.tls_available and state.tls is None, self._auth_offered()))
            else:
                self._send(reply(250, "", s.hostname))

        self._ask(self.policy.helo(self.state, name), then)

    def _auth_offered(self) -> bool:
        s = self.settings
        return bool(s.auth_mechanisms) and (self.state.tls is not None or s.allow_plaintext_auth)

    def do_MAIL(self, args: bytes) -> None:
        s = self.settings
        state = self.state
        if state.helo is None:
            raise CommandError(503, "5.5.1", "Error: send HELO/EHLO first")
        if state.sender is not None:
            raise CommandError(503, "5.5.1", "Error: nested MAIL command")
        if s.require_tls and state.tls is None:
            raise CommandError(530, "5.7.0", "Must issue a STARTTLS command first")
        parsed = parse_path_and_params(args, b"FROM", limits=s.limits, null_allowed=True, sender=True)
        params = parsed.params
        if params and not state.esmtp:
            raise CommandError(555, "5.5.4", "Error: parameters need EHLO")
        body_type = "7BIT"
        for key, value in params.items():
            if key == "SIZE":
                if value is None or not value.isdigit() or len(value) > 20:
                    raise CommandError(501, "5.5.4", "Bad SIZE parameter")
                if int(value) > s.max_message_size:
                    raise CommandError(552, "5.3.4", "Message size exceeds fixed maximum message size")
            elif key == "BODY":
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    raise CommandError(555, "5.5.4", "Unsupported BODY type")
                body_type = value.upper()
            elif key == "SMTPUTF8":
                if value is not None:
                    raise CommandError(501, "5.5.4", "SMTPUTF8 takes no value")
            elif key == "AUTH":
                if value is None:
                    raise CommandError(501, "5.5.4", "Bad AUTH parameter")
                xtext_decode(value)
            else:
                raise CommandError(555, "5.5.4", f"Unsupported parameter {key}")
        smtputf8 = "SMTPUTF8" in params
        if parsed.mailbox.utf8 and not smtputf8:
            raise CommandError(553, "5.6.7", "Non-ASCII sender address needs SMTPUTF8")
        sender = parsed.mailbox

        def then(answer: Reply | None) -> None:
            if self._answer(answer, MAIL_OK):
                state.sender = sender
                state.mail_params = params
                state.smtputf8 = smtputf8
                state.body_type = body_type
                state.recipients = []

        self._ask(self.policy.mail(state, sender, params), then)

    def do_RCPT(self, args: bytes) -> None:
        s = self.settings
        state = self.state
        if state.sender is None:
            raise CommandError(503, "5.5.1", "Error: need MAIL command")
        if self._bdat_active:
            raise CommandError(503, "5.5.1", "Error: RCPT after BDAT")
        parsed = parse_path_and_params(
            args, b"TO", limits=s.limits, smtputf8_allowed=state.smtputf8, null_allowed=False,
            postmaster_allowed=True, sender=False,
        )  # fmt: skip
        if parsed.params:
            raise CommandError(555, "5.5.4", f"Unsupported parameter {next(iter(parsed.params))}")
        if len(state.recipients) >= s.max_recipients:
            raise CommandError(452, "4.5.3", "Error: too many recipients")
        recipient = parsed.mailbox

        def then(answer: Reply | None) -> None:
            if state.sender is None:
                return
            if answer is not None and not answer.positive:
                self._log_reject(answer, f" to=<{recipient}>")
                self._send(answer.encode())
                return
            state.recipients.append(recipient)
            self._send(answer.encode() if answer is not None else RCPT_OK)

        self._ask(self.policy.rcpt(state, recipient, parsed.params), then)

    def _check_transaction(self) -> None:
        state = self.state
        if state.sender is None:
            raise CommandError(503, "5.5.1", "Error: need MAIL command")
        if not state.recipients:
            raise CommandError(554, "5.5.1", "Error: no valid recipients")

    def do_DATA(self, args: bytes) -> None:
        if args.strip(b" "):
            raise CommandError(501, "5.5.4", "Syntax: DATA")
        if self._bdat_active:
            raise CommandError(503, "5.5.1", "Error: DATA after BDAT")
        self._check_transaction()
        after_crlf = self._last_crlf

        def then(answer: Reply | None) -> None:
            if answer is not None and not answer.positive:
                self._log_reject(answer)
                self._send(answer.encode())
                return
            refusal = self._begin_message()
            if refusal is not None:
                self._send(refusal.encode())
                return
            self._scanner = self._new_scanner(after_crlf)
            self.mode = DATA
            self._send(DATA_GO)

        self._ask(self.policy.data(self.state), then)

    def _new_scanner(self, after_crlf: bool = True) -> DataScanner:
        s = self.settings
        return DataScanner(
            self._body_chunk,
            normalize=s.normalize,
            max_line=s.limits.text_line,
            max_size=s.max_message_size,
            after_crlf=after_crlf,
        )

    def _begin_message(self) -> Reply | None:
        """Ask the sink for a writer and give it the Received: header; the sink's refusal, if any."""
        envelope = Envelope.of(self.state, self._seconds())
        try:
            writer = self.frontend.sink.begin(envelope)
        except SinkError as e:
            self._log_reject(e.reply)
            self.state.reset_transaction()
            return e.reply
        self._writer = writer
        self._envelope = envelope
        self._data_failed = False
        self.state.queue_id = writer.queue_id
        if self._want_headers:
            self._header_buf = bytearray()
            self._header_block = b""
        self._body_chunk(self._received_header(writer.queue_id, envelope))
        return None

    def _received_header(self, queue_id: str, envelope: Envelope) -> bytes:
        state = self.state
        s = self.settings
        client = state.client
        if client is None:
            tcp_info = "(local)"
        elif state.client_name is not None:  # looked up (reverse_lookup): the confirmed name or "unknown"
            tcp_info = f"({state.client_name} {_address_literal(client[0])})"
        else:
            tcp_info = f"({_address_literal(client[0])})"
        proto = ("UTF8SMTP" if envelope.smtputf8 else "ESMTP") if state.esmtp else "SMTP"
        if state.tls is not None:
            proto += "S"
        if state.user is not None:
            proto += "A"
        lines = [
            f"Received: from {state.helo} {tcp_info}",
            f"\tby {s.hostname} (relaybal) with {proto} id {queue_id}",
        ]
        if state.tls is not None:
            tls = state.tls
            lines.append(f"\t(using {tls.version} with cipher {tls.cipher} ({tls.bits} bits))")
        if state.user is not None:
            lines.append(f"\t(authenticated sender: {state.user})")
        date = _rfc5322_date(envelope.received_at)
        if len(envelope.recipients) == 1:
            lines.append(f"\tfor <{envelope.recipients[0]}>; {date}")
        else:
            lines[-1] += ";"
            lines.append(f"\t{date}")
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")

    def _body_chunk(self, data: bytes) -> None:
        writer = self._writer
        if writer is None:
            return
        if self._header_buf is not None:
            self._collect_headers(data)
        try:
            writer.write(data)
        except Exception:
            log.failure("{frontend}: message writer failed", Failure(), frontend=self.settings.frontend)
            self._data_failed = True
            self._abort_message(keep_scanner=True)

    def _collect_headers(self, data: bytes) -> None:
        """Keep the header block (up to the first empty line, at most MAX_HEADER_BLOCK octets)."""
        buf = self._header_buf
        assert buf is not None
        start = max(0, len(buf) - 3)
        buf += data[: MAX_HEADER_BLOCK + 4 - len(buf)]
        end = buf.find(b"\r\n\r\n", start)
        if end >= 0:
            self._header_block = bytes(buf[: end + 2])
            self._header_buf = None
        elif len(buf) > MAX_HEADER_BLOCK:
            self._header_block = bytes(buf[:MAX_HEADER_BLOCK])
            self._header_buf = None

    def _abort_message(self, keep_scanner: bool = False) -> None:
        writer = self._writer
        self._writer = None
        if not keep_scanner:
            self._scanner = None
            self._bdat_active = False
        if writer is not None:
            try:
                writer.abort()
            except Exception:
                log.failure("{frontend}: message writer abort failed", frontend=self.settings.frontend)

    def _data_chunk(self, data: bytes) -> None:
        scanner = self._scanner
        assert scanner is not None
        rest = scanner.feed(data)
        if rest is None:
            return
        self.mode = COMMAND
        self._buf = rest
        self._pos = 0
        self._end_of_message(scanner)

    def _end_of_message(self, scanner: DataScanner) -> None:
        """The body is complete (DATA's final dot, or BDAT LAST): refuse, or ask and commit."""
        self._scanner = None
        self._bdat_active = False
        writer = self._writer
        envelope = self._envelope
        state = self.state
        if self._data_failed or writer is None or envelope is None:
            self._abort_message()
            state.reset_transaction()
            self._send(INTERNAL_ERROR.encode())
            return
        if scanner.error is not None:
            self._abort_message()
            answer = BODY_ERRORS[scanner.error]
            self._log_reject(answer, f" nrcpt={len(state.recipients)}")
            state.reset_transaction()
            self._send(answer.encode())
            return
        size = scanner.size
        if self._want_headers:
            if self._header_buf is not None:  # no empty line: the whole message is its header
                self._header_block = bytes(self._header_buf)
                self._header_buf = None
            state.headers = parse_header_block(self._header_block)
            self._header_block = b""

        def then(answer: Reply | None) -> None:
            if answer is not None and not answer.positive:
                self._abort_message()
                self._log_reject(answer, f" size={size}")
                state.reset_transaction()
                self._send(answer.encode())
                return
            self._writer = None
            self._wait(
                writer.commit(), lambda queue_id: self._queued(queue_id, envelope, size), self._commit_failed
            )

        self._ask(self.policy.message(state, envelope, size), then)

    def _queued(self, queue_id: str, envelope: Envelope, size: int) -> None:
        self.messages += 1
        self.frontend.message_accepted(size)
        self.state.reset_transaction()
        self._send(reply(250, "2.0.0", f"Ok: queued as {queue_id}"))
        tls = envelope.tls.version if envelope.tls is not None else "none"
        log.info(
            "{line}",
            line=(
                f"{queue_id}: {self.settings.frontend}: accepted from=<{envelope.sender}> size={size} "
                f"nrcpt={len(envelope.recipients)} "
                f"client={_show_client(envelope.client, self.state.client_name)} "
                f"helo={envelope.helo} tls={tls} user={envelope.user or '-'}"
            ),
            queue_id=queue_id,
            frontend=self.settings.frontend,
            client=envelope.client[0] if envelope.client else None,
            sender=str(envelope.sender),
            size=size,
            nrcpt=len(envelope.recipients),
        )

    def _commit_failed(self, failure: Failure) -> None:
        self.state.reset_transaction()
        if failure.check(SinkError):
            answer = failure.value.reply  # type: ignore[union-attr]
            self._log_reject(answer)
            self._send(answer.encode())
        else:
            self._internal_error(failure)

    def do_BDAT(self, args: bytes) -> None:
        parts = args.split()
        if (
            not 1 <= len(parts) <= 2
            or not parts[0].isdigit()
            or len(parts[0]) > 20
            or (len(parts) == 2 and parts[1].upper() != b"LAST")
        ):
            # The chunk's length is unknown, so what follows cannot be told apart from commands.
            self._refuse(reply(501, "5.5.4", "Syntax: BDAT size [LAST]"), "bad BDAT")
            return
        size = int(parts[0])
        self._bdat_size = size
        self._bdat_left = size
        self._bdat_last = len(parts) == 2
        self._bdat_reply = None
        self.mode = BDAT
        state = self.state
        if not state.esmtp:
            self._bdat_reply = Reply(503, "5.5.1", "Error: BDAT needs EHLO")
            return
        if self._bdat_active:
            return
        if state.sender is None:
            self._bdat_reply = Reply(503, "5.5.1", "Error: need MAIL command")
            return
        if not state.recipients:
            self._bdat_reply = Reply(554, "5.5.1", "Error: no valid recipients")
            return

        def then(answer: Reply | None) -> None:
            if answer is not None and not answer.positive:
                self._log_reject(answer)
                self._bdat_reply = answer
                state.reset_transaction()
                return
            refusal = self._begin_message()
            if refusal is not None:
                self._bdat_reply = refusal  # sent once the chunk is read
                return
            self._scanner = self._new_scanner()
            self._bdat_active = True

        self._ask(self.policy.data(state), then)

    def _bdat_input(self) -> bool:
        """Consume BDAT chunk bytes from the buffer; False when more are needed."""
        left = self._bdat_left
        if left:
            buf = self._buf
            pos = self._pos
            available = len(buf) - pos
            if not available:
                return False
            take = min(left, available)
            piece = buf[pos : pos + take]
            self._pos = pos + take
            self._bdat_left = left - take
            if self._bdat_reply is None and self._scanner is not None:
                self._scanner.feed_raw(piece)
            if self._bdat_left:
                return False
        # The whole chunk is in.
        self.mode = COMMAND
        if self._bdat_reply is not None:
            answer, self._bdat_reply = self._bdat_reply, None
            self._reject(answer)
            return True
        scanner = self._scanner
        if scanner is None:
            self._reject(Reply(503, "5.5.1", "Error: no transaction"))
            return True
        if self._bdat_last:
            scanner.finish_raw()
            self._end_of_message(scanner)
        elif scanner.error is not None:
            self._end_of_message(scanner)
        else:
            self._send(reply(250, "2.0.0", f"{self._bdat_size} octets received"))
        return True

    def do_RSET(self, args: bytes) -> None:
        if args.strip(b" "):
            raise CommandError(501, "5.5.4", "Syntax: RSET")
        self._abort_message()
        self.state.reset_transaction()
        self._send(OK)

    def do_NOOP(self, args: bytes) -> None:
        self._send(OK)

    def do_QUIT(self, args: bytes) -> None:
        self._abort_message()
        self._send(BYE)
        self._close("quit")

    def do_VRFY(self, args: bytes) -> None:
        if not args.strip(b" "):
            raise CommandError(501, "5.5.4", "Syntax: VRFY address")
        self._send(reply(252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery"))

    def do_HELP(self, args: bytes) -> None:
        self._send(HELP_TEXT)

    def do_STARTTLS(self, args: bytes) -> None:
        s = self.settings
        state = self.state
        tls_options = self.frontend.tls_options
        if tls_options is None or not s.tls_available:
            raise CommandError(502, "5.5.1", "Error: command not implemented")
        if args.strip(b" "):
            raise CommandError(501, "5.5.4", "Syntax: STARTTLS")
        if state.tls is not None:
            raise CommandError(503, "5.5.1", "Error: TLS already active")
        if state.helo is None or not state.esmtp:
            raise CommandError(503, "5.5.1", "Error: send EHLO first")
        if state.sender is not None:
            raise CommandError(503, "5.5.1", "Error: MAIL transaction in progress")
        self._send(reply(220, "2.0.0", "Ready to start TLS"))
        self._flush()
        # RFC 3207 section 4.2: whatever came in plaintext after the command is
        # discarded, and the session starts over as if just connected.
        self._buf = b""
        self._pos = 0
        transport = self.transport
        assert transport is not None
        transport.startTLS(tls_options)  # type: ignore[attr-defined]
        self._write = transport.write
        state.restart_after_tls()
        state.tls = TLSInfo("TLS", "unknown", 0)  # details once the handshake is done
        self._tls_fresh = True

    def do_AUTH(self, args: bytes) -> None:
        s = self.settings
        state = self.state
        portal = self.frontend.portal
        if portal is None or not s.auth_mechanisms:
            raise CommandError(502, "5.5.1", "Error: authentication not enabled")
        if state.helo is None or not state.esmtp:
            raise CommandError(503, "5.5.1", "Error: send EHLO first")
        if not self._auth_offered():
            raise CommandError(538, "5.7.11", "Encryption required for requested authentication mechanism")
        if state.user is not None:
            raise CommandError(503, "5.5.1", "Error: already authenticated")
        if state.sender is not None:
            raise CommandError(503, "5.5.1", "Error: MAIL transaction in progress")
        mechanism, _, initial = args.strip(b" ").partition(b" ")
        name = mechanism.upper().decode("ascii", "replace")
        if name not in s.auth_mechanisms:
            raise CommandError(504, "5.5.4", "Error: unsupported authentication mechanism")
        self._auth_mechanism = name
        self._auth_username = b""
        self.mode = AUTH
        if initial:
            self._auth_response(initial)
        elif name == "PLAIN":
            self._send(b"334 \r\n")
        else:
            self._send(b"334 VXNlcm5hbWU6\r\n")  # "Username:"

    def _auth_response(self, line: bytes) -> None:
        if line.strip() == b"*":
            self.mode = COMMAND
            self._error(reply(501, "5.7.0", "Authentication aborted"))
            return
        try:
            data = auth.decode_response(line)
            if self._auth_mechanism == "PLAIN":
                authzid, username, password = auth.parse_plain(data)
                if authzid and authzid != username:
                    self.mode = COMMAND
                    self._auth_failed("authorization identity differs")
                    return
            elif not self._auth_username:
                if not data:
                    raise auth.SASLError("empty user name")
                self._auth_username = data
                self._send(b"334 UGFzc3dvcmQ6\r\n")  # "Password:"
                return
            else:
                username, password = self._auth_username, data
        except auth.SASLError as e:
            self.mode = COMMAND
            self._error(reply(501, "5.5.2", f"Error: {e}"))
            return
        self.mode = COMMAND
        portal = self.frontend.portal
        assert portal is not None

        mechanism = self._auth_mechanism

        def succeeded(name: str) -> None:
            state = self.state
            state.user = name
            state.auth_mechanism = mechanism

            def then(answer: Reply | None) -> None:
                if answer is not None and not answer.positive:
                    state.user = None
                    state.auth_mechanism = None
                    self._log_reject(answer, f" sasl_username={name}")
                    self._send(answer.encode())
                    return
                self._send(reply(235, "2.7.0", "Authentication successful"))

            self._ask(self.policy.auth(state), then)

        def failed(failure: Failure) -> None:
            if not failure.check(UnauthorizedLogin):
                log.failure("{frontend}: authentication error", failure, frontend=self.settings.frontend)
            self._auth_failed(auth.failure_reason(failure), username)

        self._wait(auth.login(portal, username, password), succeeded, failed)

    def _auth_failed(self, why: str, username: bytes = b"") -> None:
        self.auth_failures += 1
        name = username.decode("utf-8", "replace")
        log.info(
            "{line}",
            line=(
                f"{self.settings.frontend}: authentication failed for {name!r} from "
                f"{self._client_text()}: {why}"
            ),
            client=self.state.client_host,
            frontend=self.settings.frontend,
        )
        self._send(reply(535, "5.7.8", "Error: authentication credentials invalid"))
        if self.auth_failures >= MAX_AUTH_FAILURES:
            self._refuse(
                reply(421, "4.7.0", f"{self.settings.hostname} Error: too many failed authentications"),
                "too many failed authentications",
            )


_HANDLERS: dict[bytes, Callable[[ESMTPServer, bytes], None]] = {
    name[3:].encode(): getattr(ESMTPServer, name) for name in dir(ESMTPServer) if name.startswith("do_")
}


def _tls_info(transport: Any) -> TLSInfo:
    """Protocol version and cipher of a TLS transport (after its handshake)."""
    try:
        connection = transport.getHandle()
        return TLSInfo(
            str(connection.get_protocol_version_name()),
            str(connection.get_cipher_name()),
            int(connection.get_cipher_bits()),
        )
    except Exception:
        return TLSInfo("TLS", "unknown", 0)


def _tls_client_subject(transport: Any) -> str | None:
    """The subject of the client's TLS certificate (RFC 4514 form), if it sent one."""
    try:
        certificate = transport.getHandle().get_peer_certificate()
        if certificate is None:
            return None
        return str(certificate.to_cryptography().subject.rfc4514_string())
    except Exception:
        return None


def parse_header_block(block: bytes) -> tuple[tuple[str, str], ...]:
    """``(name, value)`` pairs of a header block (CRLF lines); folded lines are unfolded.

    Reading stops at the first line that is neither a header field nor a
    continuation. Values are decoded as UTF-8 (undecodable octets replaced).
    """
    fields: list[list[str]] = []
    for raw in block.split(b"\r\n"):
        if not raw:
            break
        line = raw.decode("utf-8", "replace")
        if line[0] in " \t":
            if not fields:
                break
            fields[-1][1] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or not name.isprintable():
            break
        fields.append([name, value.strip()])
    return tuple((name, value) for name, value in fields)


def _discard(data: bytes) -> None:
    """The writer before a connection exists."""
