"""The outbound SMTP client: one connection to one gateway MTA, reused for many messages.

:func:`connect` opens a connection (TCP, greeting, ``EHLO`` or ``HELO``,
``STARTTLS`` as :class:`ClientSettings` asks, ``EHLO`` again) and fires with an
:class:`SMTPClientConnection` ready for ``MAIL``. Its :meth:`~SMTPClientConnection.deliver`
runs one :class:`Transaction` at a time and reports every recipient's reply
(:class:`TransactionResult`); a transaction that could not be completed on
the connection fails with :class:`DeliveryError` (and the connection is gone)
or, before anything was sent, with :class:`MissingExtension` (and the
connection stays usable). Pooling and scheduling are the caller's business.

Why not ``twisted.mail.smtp``'s client: it dot-stuffs each 16 KiB chunk on its
own (a ``.`` starting a line right at a chunk edge goes out unstuffed and ends
DATA early) and cannot run a second transaction on a connection.

What happens on the wire:

- ``PIPELINING`` advertised (RFC 2920): ``[RSET] [XFORWARD…] MAIL RCPT… DATA``
  go out in one write and the replies are read in order; without it every
  command waits for its reply, and the transaction stops at a refused ``MAIL``
  or when no ``RCPT`` was accepted. When no recipient was accepted but the
  pipelined ``DATA`` got ``354`` anyway, a lone ``.`` ends it (RFC 2920 3.1).
- The body comes from a :class:`BodySource`, is dot-stuffed with
  :class:`~relaybal.smtp.wire.DotStuffer` (correct across any chunk edge) and
  written with back-pressure: the connection registers a push producer with
  the transport and reads no further chunk while the transport is paused. One
  chunk (:data:`BODY_CHUNK`) is the most the client holds of a body.
- ``RSET`` precedes ``MAIL`` only when the previous transaction did not end
  with the reply to the final dot (after that the server has reset itself).
- ``XCLIENT`` (Postfix) puts each transaction's :class:`ClientIdentity` in
  effect before ``MAIL`` unless the session already carries exactly that
  identity: every attribute the server lists that we know is sent (unknown
  values as ``[UNAVAILABLE]``, so nothing of a previous client survives), in
  commands of at most 512 octets; a ``220`` answer is a new greeting, so
  ``EHLO`` is sent again (``STARTTLS`` is not: TLS stays). A transaction
  without an identity on a session that carries another client's resets it
  to our own (our address, our EHLO name). Postfix checks
  ``smtpd_authorized_xclient_hosts`` against the address XCLIENT gave: unless
  the client addresses are authorized too, a session can carry one outside
  client only, and a transaction for another one fails with
  :class:`IdentityConflict` before anything is sent
  (:meth:`SMTPClientConnection.can_carry` tells beforehand). ``XCLIENT``
  refused on a fresh session for a reason that concerns the command
  (``500``, ``501``, ``502``, ``503``, ``550``: not implemented, syntax, not
  authorized) is logged once and the connection goes on without it; any
  other refusal is the gateway refusing that client (a connection-level
  access decision): every recipient gets that reply and the connection is
  closed.
- ``XFORWARD`` is pipelined before ``MAIL`` when ``XCLIENT`` was not used; a
  refusal is logged once and the transaction goes on.
- ``STARTTLS``: ``opportunistic`` uses it when offered and goes on in plain
  text otherwise (also when the command is refused); a failed handshake drops
  the connection (:class:`DeliveryError`, ``retry_elsewhere``): the caller
  connects again or elsewhere, this client never falls back to plain text on
  the same connection. ``required``: not offered, refused or a failed
  handshake are all :class:`DeliveryError` with ``retry_elsewhere``. Anything
  the server sent after its ``220`` to ``STARTTLS`` in the same read
  (plaintext that a man in the middle could have injected, CVE-2011-0411
  style) is a protocol error: nothing of it is taken as a reply.
- Timeouts (RFC 5321 4.5.3.2) per stage on the given ``IReactorTime``: a
  timeout aborts the connection with :class:`DeliveryError`
  (``retry_elsewhere``; ``after_dot`` when it came waiting for the reply to
  the final dot).
- ``421`` at any point, a connection lost in the middle, a reply that cannot
  be parsed: :class:`DeliveryError` with ``retry_elsewhere`` and the
  connection closed. A reply arriving while the connection is idle (a
  gateway's ``421`` before it closes an idle connection) closes it too.

Nothing is logged for a successful message; protocol anomalies are logged
(namespace ``relaybal.delivery``).
"""

from __future__ import annotations

import ipaddress
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from typing import Any, Final, Protocol

import attrs
from twisted.internet import error as neterror
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import ClientFactory
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relaybal.smtp.wire import DotStuffer
from relaybal.splice.frontend import direct_writer

log = Logger(namespace="relaybal.delivery")

#: Longest reply line accepted (octets, without the line ending).
MAX_REPLY_LINE: Final = 4096
#: Most lines one (multi-line) reply may have.
MAX_REPLY_LINES: Final = 100
#: RFC 5321 4.5.3.1.4: a command line is at most 512 octets, CRLF included.
MAX_COMMAND_LINE: Final = 512
#: How much of a body is asked from the :class:`BodySource` at a time.
BODY_CHUNK: Final = 262144

UNAVAILABLE: Final = "[UNAVAILABLE]"

# --------------------------------------------------------------------------- replies


@attrs.frozen
class SMTPReply:
    """A reply received from the gateway.

    ``status`` is the RFC 3463 enhanced status code (``"2.0.0"``) when the
    server gave one (with the same class as the reply code, RFC 2034), else
    ``""``; ``text`` is every line's text joined with ``"\\n"``, without the
    code and the status.
    """

    code: int
    status: str
    text: str

    @property
    def kind(self) -> int:
        """The first digit: 2 success, 3 intermediate, 4 transient, 5 permanent."""
        return self.code // 100

    @property
    def lines(self) -> list[str]:
        """The text of each line."""
        return self.text.split("\n")

    def __str__(self) -> str:
        """One line: ``"250 2.0.0 Ok: queued as X"`` (the lines of a multi-line reply joined with spaces)."""
        parts = [str(self.code)]
        if self.status:
            parts.append(self.status)
        text = " ".join(line for line in self.lines if line)
        if text:
            parts.append(text)
        return " ".join(parts)


class ReplyError(Exception):
    """Bytes from the server that are not SMTP replies."""


_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -]?)(.*)", re.DOTALL)
_STATUS = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: |$)")


class ReplyParser:
    """Turns the bytes a server sends into :class:`SMTPReply` values.

    Lines end with CRLF or a bare LF. A line that is not ``NNN``, ``NNN text``
    or ``NNN-text`` (code 200-599), a continuation with another code, a line
    over :data:`MAX_REPLY_LINE` octets or a reply over :data:`MAX_REPLY_LINES`
    lines raises :class:`ReplyError`; the parser is useless afterwards.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._code = b""
        self._lines: list[bytes] = []

    @property
    def pending(self) -> bool:
        """Whether part of a reply was received and not returned yet."""
        return bool(self._buffer or self._lines)

    def feed(self, data: bytes) -> list[SMTPReply]:
        """The replies completed by ``data``, in order."""
        buffer = self._buffer + data if self._buffer else data
        replies: list[SMTPReply] = []
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = buffer[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            reply = self._line(line)
            if reply is not None:
                replies.append(reply)
        rest = buffer[start:]
        if len(rest) > MAX_REPLY_LINE + 1:  # + 1: the CR of a CRLF still on its way
            raise ReplyError(f"reply line longer than {MAX_REPLY_LINE} octets")
        self._buffer = rest
        return replies

    def _line(self, line: bytes) -> SMTPReply | None:
        if len(line) > MAX_REPLY_LINE:
            raise ReplyError(f"reply line longer than {MAX_REPLY_LINE} octets")
        m = _REPLY_LINE.fullmatch(line)
        if m is None or (not m.group(2) and m.group(3)):
            raise ReplyError(f"not an SMTP reply: {line[:60]!r}")
        code = m.group(1)
        if self._lines and code != self._code:
            raise ReplyError(f"reply code changed within a multi-line reply: {line[:60]!r}")
        if len(self._lines) >= MAX_REPLY_LINES:
            raise ReplyError(f"reply longer than {MAX_REPLY_LINES} lines")
        self._code = code
        self._lines.append(m.group(3))
        if m.group(2) == b"-":
            return None
        lines, self._lines = self._lines, []
        return _make_reply(int(code), [raw.decode("utf-8", "replace") for raw in lines])


def _make_reply(code: int, texts: list[str]) -> SMTPReply:
    klass = str(code // 100)
    first = _STATUS.match(texts[0])
    if first is None or first.group(1) != klass:
        return SMTPReply(code, "", "\n".join(texts))
    status = first.group(0).rstrip(" ")
    stripped = []
    for text in texts:
        m = _STATUS.match(text)
        stripped.append(text[m.end() :] if m is not None and m.group(1) == klass else text)
    return SMTPReply(code, status, "\n".join(stripped))


def parse_ehlo(reply: SMTPReply) -> dict[str, str]:
    """The extensions of an EHLO reply: upper-case keyword -> parameters (``""`` if none)."""
    extensions: dict[str, str] = {}
    for line in reply.lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            extensions[keyword.upper()] = params.strip()
    return extensions


# --------------------------------------------------------------------------- the caller's side


@attrs.frozen
class ClientIdentity:
    """The original client of a message, for ``XCLIENT``/``XFORWARD``.

    ``addr`` is the IP address as text (IPv6 without an ``IPV6:`` prefix; the
    client adds it); ``name`` the client's verified (forward-confirmed)
    name, or None when there is none: not looked up, or looked up without a
    confirmed name (sent as ``NAME=[UNAVAILABLE]``, which XCLIENT_README
    gives for a name unknown for good; relaybal keeps no record of a lookup
    that failed only for now, so ``[TEMPUNAVAIL]`` is never sent). It is
    part of the identity: a session carrying a client under one name does
    not carry it under another (or none) without a new XCLIENT.
    ``proto`` is ``"SMTP"`` or ``"ESMTP"``; ``login`` the SASL user when the
    client authenticated.
    """

    addr: str | None
    port: int | None
    name: str | None
    helo: str | None
    proto: str
    login: str | None
    destaddr: str | None = None
    destport: int | None = None


class BodySource(Protocol):
    """Where a body comes from: CRLF lines, not dot-stuffed."""

    def read(self, size: int = BODY_CHUNK) -> Deferred[bytes]:
        """Up to ``size`` octets of the body; ``b""`` at the end."""

    def close(self) -> None:
        """Release the source (called once, whatever happened)."""


@attrs.frozen
class Transaction:
    """One message to deliver: envelope, body and the facts the extensions need.

    ``sender`` is the address without brackets (``""`` for the null sender);
    ``body`` is called once per attempt for a fresh :class:`BodySource`;
    ``size`` (octets) is announced with ``SIZE=`` when the server has ``SIZE``
    and it is not 0; ``body_type`` is ``"7BIT"`` or ``"8BITMIME"``.
    """

    queue_id: str
    sender: str
    recipients: tuple[str, ...]
    body: Callable[[], BodySource]
    size: int = 0
    body_type: str = "7BIT"
    smtputf8: bool = False
    client: ClientIdentity | None = None


@attrs.frozen
class TransactionResult:
    """What the gateway said about one transaction.

    ``recipients`` has one reply per recipient, in order: the reply to its
    ``RCPT`` (every recipient gets the ``MAIL`` reply when ``MAIL`` was
    refused, and the accepted ones get the ``DATA`` reply when ``DATA`` was
    refused). ``data`` is the reply to the final dot, or None when the body
    was not sent (no recipient accepted, or ``DATA`` refused). A recipient was
    delivered when its reply and ``data`` are both 2xx.
    """

    recipients: tuple[SMTPReply, ...]
    data: SMTPReply | None


class DeliveryError(Exception):
    """The transaction could not be completed on this connection.

    ``reply`` is the reply that ended it, if any. ``after_dot``: the final dot
    was sent and no reply came, so the message may have been delivered (a
    retry may duplicate it). ``retry_elsewhere``: a problem of the connection
    or the gateway (connection failure, timeout, ``421``, bad greeting, TLS)
    rather than of the message.
    """

    def __init__(
        self,
        message: str,
        *,
        reply: SMTPReply | None = None,
        after_dot: bool = False,
        retry_elsewhere: bool = False,
    ) -> None:
        super().__init__(message)
        self.reply = reply
        self.after_dot = after_dot
        self.retry_elsewhere = retry_elsewhere


class MissingExtension(DeliveryError):
    """The gateway lacks an extension the message needs (``SMTPUTF8``,
    ``8BITMIME``) or announced a ``SIZE`` limit the message exceeds.

    Nothing of the transaction was sent and the connection is still usable.
    ``retry_elsewhere`` is False: this gateway will never take the message, a
    differently configured one may.
    """

    def __init__(self, extension: str, message: str | None = None) -> None:
        super().__init__(message or f"the gateway does not offer {extension}")
        self.extension = extension


class IdentityConflict(DeliveryError):
    """The session carries another client's XCLIENT identity and cannot be switched to this one.

    Nothing of the transaction was sent and the connection stays usable for
    messages of the client whose identity it carries
    (:attr:`SMTPClientConnection.identity`, see
    :meth:`~SMTPClientConnection.can_carry`). ``retry_elsewhere`` is True: on
    another connection (a new one to the same gateway will do).
    """

    def __init__(self, message: str, *, reply: SMTPReply | None = None) -> None:
        super().__init__(message, reply=reply, retry_elsewhere=True)


# --------------------------------------------------------------------------- settings

_TLS_MODES: Final = ("none", "opportunistic", "required")


def _check_helo(instance: object, attribute: object, value: str) -> None:
    if not value or not all(0x21 <= ord(c) <= 0x7E for c in value):
        raise ValueError(f"EHLO name must be printable ASCII without spaces: {value!r}")


@attrs.frozen
class ClientSettings:
    """How to talk to one gateway.

    ``tls``: ``"none"``, ``"opportunistic"`` or ``"required"``. The server's
    certificate is verified against ``tls_hostname`` (the host connected to
    when None) with ``service_identity``, trusting ``tls_trust_root`` (an
    ``IOpenSSLTrustRoot``; the platform's CAs when None), unless
    ``tls_verify`` is False. ``tls_options`` (an
    ``IOpenSSLClientConnectionCreator``) replaces all of that when given.
    ``xclient``/``xforward`` allow those commands when the server offers
    them. Timeouts are in seconds: connect, greeting, each command reply,
    each wait for the transport to take more of the body, and the reply to
    the final dot.
    """

    helo: str = attrs.field(validator=_check_helo)
    tls: str = attrs.field(default="none", validator=attrs.validators.in_(_TLS_MODES))
    tls_verify: bool = True
    tls_hostname: str | None = None
    tls_options: Any = None
    xclient: bool = False
    xforward: bool = False
    timeout_connect: float = 5.0
    timeout_banner: float = 300.0
    timeout_command: float = 300.0
    timeout_data_block: float = 180.0
    timeout_dot: float = 600.0
    tls_trust_root: Any = None


# --------------------------------------------------------------------------- XCLIENT / XFORWARD


def xtext_encode(value: str) -> str:
    """RFC 3461 xtext: ``+`` and ``=`` and octets outside ``!``..``~`` as ``+XX`` (UTF-8)."""
    if value.isascii() and value.isprintable() and " " not in value and "+" not in value and "=" not in value:
        return value
    out = []
    for octet in value.encode("utf-8"):
        if 0x21 <= octet <= 0x7E and octet not in (0x2B, 0x3D):
            out.append(chr(octet))
        else:
            out.append(f"+{octet:02X}")
    return "".join(out)


def _address_attr(addr: str | None) -> str | None:
    """An address as XCLIENT/XFORWARD want it: IPv4 text or ``IPV6:`` text; None if not an IP."""
    if addr is None:
        return None
    text = addr.strip("[]")
    if text[:5].upper() == "IPV6:":
        text = text[5:]
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return f"IPV6:{ip}"
    return str(ip)


def _port_attr(port: int | None) -> str | None:
    return str(port) if port is not None and 0 <= port <= 65535 else None


def _proto_attr(proto: str) -> str | None:
    upper = proto.upper()
    if upper in ("SMTP", "ESMTP"):
        return upper
    if upper.startswith("ESMTP"):  # ESMTPS, ESMTPA, ESMTPSA (RFC 3848)
        return "ESMTP"
    return None


def pack_commands(verb: str, items: Iterable[tuple[str, str | None]]) -> list[str]:
    """``VERB NAME=value …`` command lines of at most 512 octets (CRLF included).

    Values are xtext-encoded; None becomes ``[UNAVAILABLE]``, and so does a
    value too long to fit in a command on its own.
    """
    room = MAX_COMMAND_LINE - 2
    lines: list[str] = []
    current = verb
    for name, value in items:
        item = f"{name}={UNAVAILABLE if value is None else xtext_encode(value)}"
        if len(verb) + 1 + len(item) > room:
            log.warn("{verb} {name} value too long, sent as [UNAVAILABLE]", verb=verb, name=name)
            item = f"{name}={UNAVAILABLE}"
        if current != verb and len(current) + 1 + len(item) > room:
            lines.append(current)
            current = verb
        current += " " + item
    if current != verb:
        lines.append(current)
    return lines


#: XCLIENT attributes we know, in the order they are sent.
XCLIENT_ATTRIBUTES: Final = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "LOGIN", "DESTADDR", "DESTPORT")
#: XFORWARD attributes we know, in the order they are sent.
XFORWARD_ATTRIBUTES: Final = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")


def xclient_commands(identity: ClientIdentity, supported: Iterable[str]) -> list[str]:
    """The ``XCLIENT`` command lines for ``identity``, limited to the ``supported`` attributes."""
    offered = {name.upper() for name in supported}
    values: dict[str, str | None] = {
        "NAME": identity.name or None,
        "ADDR": _address_attr(identity.addr),
        "PORT": _port_attr(identity.port),
        "PROTO": _proto_attr(identity.proto),
        "HELO": identity.helo or None,
        "LOGIN": identity.login or None,
        "DESTADDR": _address_attr(identity.destaddr),
        "DESTPORT": _port_attr(identity.destport),
    }
    return pack_commands("XCLIENT", [(name, values[name]) for name in XCLIENT_ATTRIBUTES if name in offered])


def xforward_commands(identity: ClientIdentity | None, queue_id: str, supported: Iterable[str]) -> list[str]:
    """The ``XFORWARD`` command lines, limited to the ``supported`` attributes.

    Without an identity only ``IDENT`` (the queue ID) is sent. ``SOURCE`` is
    ``LOCAL`` for a loopback client address, else ``REMOTE``.
    """
    offered = {name.upper() for name in supported}
    values: dict[str, str | None] = {"IDENT": queue_id or None}
    if identity is not None:
        addr = _address_attr(identity.addr)
        source = None
        if addr is not None:
            ip = ipaddress.ip_address(addr[5:] if addr.startswith("IPV6:") else addr)
            source = "LOCAL" if ip.is_loopback else "REMOTE"
        values |= {
            "NAME": identity.name or None,
            "ADDR": addr,
            "PORT": _port_attr(identity.port),
            "PROTO": identity.proto or None,
            "HELO": identity.helo or None,
            "SOURCE": source,
        }
    return pack_commands(
        "XFORWARD",
        [(name, values[name]) for name in XFORWARD_ATTRIBUTES if name in offered and name in values],
    )


#: XCLIENT refusals that concern the command, not the client: go on without XCLIENT.
_XCLIENT_NOT_FOR_US: Final = frozenset({500, 501, 502, 503, 550})

# --------------------------------------------------------------------------- the connection

# How the transport is closed when a connection fails.
_ABORT = "abort"
_CLOSE = "close"
_QUIT = "quit"

# What the conversation is waiting for.
_WAIT_REPLY = "reply"
_WAIT_HANDSHAKE = "handshake"
_WAIT_DRAIN = "drain"


@implementer(IPushProducer)
class _BodyProducer:
    """Tells the connection when the transport wants the body to wait."""

    def __init__(self, connection: SMTPClientConnection) -> None:
        self.connection = connection

    def pauseProducing(self) -> None:
        self.connection._paused = True

    def resumeProducing(self) -> None:
        self.connection._resume_body()

    def stopProducing(self) -> None:
        # The transport is going away; connectionLost ends the transaction.
        self.connection._paused = True


def source_is_whole(source: BodySource, chunk: bytes) -> bool:
    """Whether ``chunk`` was the last of ``source`` (when the source tells its size and position)."""
    size = getattr(source, "size", None)
    position = getattr(source, "position", None)
    return isinstance(size, int) and isinstance(position, int) and position >= size


@implementer(IHandshakeListener)
class SMTPClientConnection(TwistedProtocol):
    """One connection to one gateway, reused for many transactions (one at a time).

    Made by :func:`connect`; tests may build one and call ``makeConnection``
    themselves, then wait for :attr:`ready`. ``extensions`` are the keywords
    of the last EHLO reply (upper-case -> parameters), ``tls`` tells that
    STARTTLS was done, ``messages`` counts the transactions that ended with a
    :class:`TransactionResult`. ``on_lost`` (if set) is called once, with the
    connection, when the connection goes away for any reason.
    """

    def __init__(
        self, reactor: IReactorTime, settings: ClientSettings, host: str = "", port: int = 0
    ) -> None:
        self.reactor = reactor
        self.settings = settings
        self.host = host
        self.port = port
        self.extensions: Mapping[str, str] = {}
        self.esmtp = False
        self.tls = False
        self.messages = 0
        self.greeting: SMTPReply | None = None
        self.on_lost: Callable[[SMTPClientConnection], None] | None = None
        #: Fires with the connection once it is ready for MAIL (or fails with DeliveryError).
        self.ready: Deferred[SMTPClientConnection] = Deferred()

        self._parser = ReplyParser()
        self._replies: deque[SMTPReply] = deque()
        self._pending: Deferred[Any] | None = None
        self._pending_kind = ""
        self._stage = "greeting"
        self._timer: IDelayedCall | None = None
        self._close_guard: IDelayedCall | None = None
        self._connected = False
        self._opened = False
        self._busy = True  # until ready
        self._quitting = False
        self._lost_waiters: list[Deferred[None]] = []
        self._lost_reported = False
        self._error: DeliveryError | None = None
        self._dot_sent = False
        self._paused = False
        self._needs_rset = False
        self._direct: Callable[[bytes], None] | None = None
        self._direct_tls = False
        #: The client identity XCLIENT put in effect on the session (None: our own).
        self._identity: ClientIdentity | None = None
        self._xclient_off = False
        self._xforward_refusal_logged = False

    def __repr__(self) -> str:
        return f"<SMTPClientConnection {self._where} messages={self.messages} usable={self.usable}>"

    @property
    def _where(self) -> str:
        return f"{self.host}:{self.port}" if self.host else "gateway"

    @property
    def usable(self) -> bool:
        """Connected, ready, idle and not closing: :meth:`deliver` may be called."""
        return (
            self._connected and self._opened and not self._busy and not self._quitting and self._error is None
        )

    @property
    def identity(self) -> ClientIdentity | None:
        """The client identity XCLIENT put in effect on the session; None while it is our own."""
        return self._identity

    def can_carry(self, client: ClientIdentity | None) -> bool:
        """Whether a transaction for ``client`` may run here without another client's identity.

        False when the session carries another client's XCLIENT identity and
        XCLIENT is no longer offered or was refused: Postfix checks
        ``smtpd_authorized_xclient_hosts`` against the address XCLIENT gave, so
        after one XCLIENT for an outside client the session keeps that
        identity unless the client addresses are authorized too. Such a
        connection stays good for further messages of the same client.
        """
        if not self.settings.xclient or client == self._identity or self._identity is None:
            return True
        return "XCLIENT" in self.extensions and not self._xclient_off

    # ------------------------------------------------------------------ transport events

    def connectionMade(self) -> None:
        self._connected = True
        d = Deferred.fromCoroutine(self._open())
        d.addCallbacks(self._open_done, self._open_failed)

    def dataReceived(self, data: bytes) -> None:
        if self._error is not None:
            return  # closing: nothing more is read
        try:
            replies = self._parser.feed(data)
        except ReplyError as e:
            log.warn("{where}: protocol error: {error}", where=self._where, error=str(e))
            self._fail(DeliveryError(f"{self._where}: protocol error: {e}", retry_elsewhere=True), _ABORT)
            return
        if not replies:
            return
        self._replies.extend(replies)
        if not self._busy:
            self._unsolicited()
            return
        while self._pending is not None and self._pending_kind == _WAIT_REPLY and self._replies:
            d = self._disarm()
            d.callback(self._replies.popleft())

    def handshakeCompleted(self) -> None:
        if self._pending is not None and self._pending_kind == _WAIT_HANDSHAKE:
            self._disarm().callback(None)

    def connectionLost(self, reason: Failure = neterror.ConnectionDone) -> None:  # type: ignore[assignment]
        self._connected = False
        if self._close_guard is not None:
            if self._close_guard.active():
                self._close_guard.cancel()
            self._close_guard = None
        if self._error is None:
            if self._pending_kind == _WAIT_HANDSHAKE and self._pending is not None:
                what = "TLS handshake failed"
            elif self._opened and not self._busy:
                what = "connection closed by the gateway"
                log.info("{where}: {what}", where=self._where, what=what)
            else:
                what = f"connection lost ({self._stage})"
            self._error = DeliveryError(
                f"{self._where}: {what}: {reason.getErrorMessage()}",
                retry_elsewhere=True,
                after_dot=self._dot_sent,
            )
        if self._pending is not None:
            self._disarm().errback(Failure(self._error))
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        if not self._lost_reported:
            self._lost_reported = True
            if self.on_lost is not None:
                try:
                    self.on_lost(self)
                except Exception:
                    log.failure("{where}: on_lost callback failed", where=self._where)

    # ------------------------------------------------------------------ public operations

    def deliver(self, txn: Transaction) -> Deferred[TransactionResult]:
        """Run one transaction.

        Fails with :class:`DeliveryError` (the connection is then gone), or,
        with nothing sent and the connection still usable, with
        :class:`MissingExtension`, :class:`IdentityConflict`, or a
        :class:`DeliveryError` for a transaction that cannot be sent at all (no
        recipients, control characters in an address, unknown body type).
        """
        if not self.usable:
            return fail(DeliveryError(f"{self._where}: connection not usable", retry_elsewhere=True))
        try:
            mail = self._mail_command(txn)
            if not self.can_carry(txn.client):
                raise IdentityConflict(
                    f"{self._where}: the session carries another client's XCLIENT identity"
                    " and the gateway no longer accepts XCLIENT"
                )
        except DeliveryError as e:
            return fail(e)
        self._busy = True
        d = Deferred.fromCoroutine(self._transaction(txn, mail))
        return d.addCallbacks(self._transaction_done, self._transaction_failed)

    def quit(self) -> Deferred[None]:
        """Say ``QUIT``, wait (``timeout_command`` at most) for the reply, close; never fails.

        Fires when the connection is gone. A transaction in progress is
        aborted (it fails with :class:`DeliveryError`).
        """
        d: Deferred[None] = Deferred()
        if not self._connected:
            d.callback(None)
            return d
        self._lost_waiters.append(d)
        if self._quitting:
            return d
        self._quitting = True
        if self._error is not None:
            return d  # already closing
        if self._busy:
            self.abort()
            return d
        self._busy = True
        self._send(["QUIT"])
        self._expect("reply to QUIT", self.settings.timeout_command).addBoth(self._after_quit)
        return d

    def abort(self) -> None:
        """Drop the connection now; a transaction in progress fails with :class:`DeliveryError`."""
        if self._connected:
            self._fail(
                DeliveryError(
                    f"{self._where}: connection aborted", retry_elsewhere=True, after_dot=self._dot_sent
                ),
                _ABORT,
            )

    # ------------------------------------------------------------------ opening

    async def _open(self) -> None:
        settings = self.settings
        self.greeting = banner = await self._read("greeting", settings.timeout_banner)
        if banner.code != 220:
            raise self._fail(
                DeliveryError(
                    f"{self._where}: greeting refused: {banner}", reply=banner, retry_elsewhere=True
                ),
                _QUIT,
            )
        await self._hello()
        if settings.tls != "none":
            await self._starttls()

    def _open_done(self, _: None) -> None:
        self._opened = True
        self._busy = False
        self.ready.callback(self)

    def _open_failed(self, failure: Failure) -> None:
        error = self._as_delivery_error(failure, "opening the connection")
        self.ready.errback(Failure(error))

    async def _hello(self) -> None:
        settings = self.settings
        self._send([f"EHLO {settings.helo}"])
        reply = await self._read("reply to EHLO", settings.timeout_command)
        if reply.kind == 2:
            self.extensions = parse_ehlo(reply)
            self.esmtp = True
            return
        if reply.kind == 5:
            self._send([f"HELO {settings.helo}"])
            reply = await self._read("reply to HELO", settings.timeout_command)
            if reply.kind == 2:
                self.extensions = {}
                self.esmtp = False
                return
        raise self._fail(
            DeliveryError(f"{self._where}: EHLO/HELO refused: {reply}", reply=reply, retry_elsewhere=True),
            _QUIT,
        )

    async def _starttls(self) -> None:
        settings = self.settings
        required = settings.tls == "required"
        if "STARTTLS" not in self.extensions:
            if required:
                raise self._fail(
                    DeliveryError(f"{self._where}: STARTTLS required but not offered", retry_elsewhere=True),
                    _QUIT,
                )
            return
        self._send(["STARTTLS"])
        reply = await self._read("reply to STARTTLS", settings.timeout_command)
        if reply.code != 220:
            if required:
                raise self._fail(
                    DeliveryError(
                        f"{self._where}: STARTTLS refused: {reply}", reply=reply, retry_elsewhere=True
                    ),
                    _QUIT,
                )
            log.warn(
                "{where}: STARTTLS refused, going on without TLS: {reply}",
                where=self._where,
                reply=str(reply),
            )
            return
        if self._replies or self._parser.pending:
            # Plaintext that arrived with the 220 would otherwise be read as if it came over TLS.
            log.warn("{where}: data after the reply to STARTTLS (injection attempt?)", where=self._where)
            raise self._fail(
                DeliveryError(
                    f"{self._where}: data received after the reply to STARTTLS", retry_elsewhere=True
                ),
                _ABORT,
            )
        await self._handshake()
        self.tls = True
        await self._hello()

    def _tls_creator(self) -> Any:
        settings = self.settings
        if settings.tls_options is not None:
            return settings.tls_options
        from twisted.internet import ssl

        if not settings.tls_verify:
            return ssl.CertificateOptions()
        hostname = settings.tls_hostname or self.host
        return ssl.optionsForClientTLS(hostname, trustRoot=settings.tls_trust_root)

    def _handshake(self) -> Deferred[None]:
        try:
            creator = self._tls_creator()
        except Exception as e:
            return fail(
                self._fail(
                    DeliveryError(f"{self._where}: TLS set-up failed: {e}", retry_elsewhere=True), _QUIT
                )
            )
        d: Deferred[None] = Deferred()
        self._arm(d, _WAIT_HANDSHAKE, "TLS handshake", self.settings.timeout_command)
        self._parser = ReplyParser()
        self._t().startTLS(creator)
        return d

    # ------------------------------------------------------------------ a transaction

    def _mail_command(self, txn: Transaction) -> str:
        """``MAIL FROM:<…> params``; MissingExtension/DeliveryError before anything is sent."""
        extensions = self.extensions
        if not txn.recipients:
            raise DeliveryError(f"{txn.queue_id}: no recipients")
        for address in (txn.sender, *txn.recipients):
            if any(ord(c) < 0x20 or ord(c) == 0x7F for c in address):
                raise DeliveryError(f"{txn.queue_id}: address with control characters: {address!r}")
        body_type = txn.body_type.upper()
        if body_type not in ("7BIT", "8BITMIME"):
            raise DeliveryError(f"{txn.queue_id}: unknown body type {txn.body_type!r}")
        if txn.smtputf8 and "SMTPUTF8" not in extensions:
            raise MissingExtension("SMTPUTF8")
        if body_type == "8BITMIME" and "8BITMIME" not in extensions:
            raise MissingExtension("8BITMIME")
        params = []
        if "SIZE" in extensions:
            limit_text = extensions["SIZE"].split(" ", 1)[0]
            limit = int(limit_text) if limit_text.isdigit() else 0
            if limit > 0 and txn.size > limit:
                raise MissingExtension(
                    "SIZE", f"message of {txn.size} octets over the gateway's limit of {limit}"
                )
            if txn.size > 0:
                params.append(f"SIZE={txn.size}")
        if body_type == "8BITMIME":
            params.append("BODY=8BITMIME")
        if txn.smtputf8:
            params.append("SMTPUTF8")
        return "".join([f"MAIL FROM:<{txn.sender}>", *(f" {p}" for p in params)])

    async def _transaction(self, txn: Transaction, mail: str) -> TransactionResult:
        settings = self.settings
        rset = self._needs_rset
        self._needs_rset = True  # until the reply to the final dot
        if self._wants_xclient(txn):
            rejection, rset_done = await self._xclient(txn, rset)
            rset = rset and not rset_done
            if rejection is not None:
                self._fail(
                    DeliveryError(
                        f"{self._where}: client rejected after XCLIENT: {rejection}", reply=rejection
                    ),
                    _QUIT,
                )
                return TransactionResult((rejection,) * len(txn.recipients), None)
        xforward: list[str] = []
        used_xclient = txn.client is not None and txn.client == self._identity
        if settings.xforward and not used_xclient and "XFORWARD" in self.extensions:
            xforward = xforward_commands(txn.client, txn.queue_id, self.extensions["XFORWARD"].split())
        timeout = settings.timeout_command
        rcpts = [f"RCPT TO:<{rcpt}>" for rcpt in txn.recipients]
        rcpt_replies: list[SMTPReply] = []
        data_reply: SMTPReply | None = None
        if "PIPELINING" in self.extensions:
            self._send([*(["RSET"] if rset else []), *xforward, mail, *rcpts, "DATA"])
            if rset:
                await self._rset_reply()
            for _ in xforward:
                self._xforward_reply(await self._read("reply to XFORWARD", timeout))
            mail_reply = await self._read("reply to MAIL FROM", timeout)
            for _ in rcpts:
                rcpt_replies.append(await self._read("reply to RCPT TO", timeout))
            data_reply = await self._read("reply to DATA", timeout)
        else:
            if rset:
                self._send(["RSET"])
                await self._rset_reply()
            for command in xforward:
                self._send([command])
                self._xforward_reply(await self._read("reply to XFORWARD", timeout))
            self._send([mail])
            mail_reply = await self._read("reply to MAIL FROM", timeout)
            if mail_reply.kind == 2:
                for command in rcpts:
                    self._send([command])
                    rcpt_replies.append(await self._read("reply to RCPT TO", timeout))
                if any(reply.kind == 2 for reply in rcpt_replies):
                    self._send(["DATA"])
                    data_reply = await self._read("reply to DATA", timeout)

        if mail_reply.kind != 2:
            recipients = (mail_reply,) * len(txn.recipients)
            accepted = False
        else:
            recipients = tuple(rcpt_replies)
            accepted = any(reply.kind == 2 for reply in rcpt_replies)
        if data_reply is None:
            return TransactionResult(recipients, None)
        if data_reply.code != 354:
            if accepted:
                recipients = tuple(data_reply if reply.kind == 2 else reply for reply in recipients)
            return TransactionResult(recipients, None)
        if not accepted:
            # RFC 2920 3.1: DATA accepted without a valid recipient; end it with no content.
            log.info("{where}: DATA accepted without recipients, sent an empty message", where=self._where)
            self._write(b".\r\n")
            await self._read("reply to the dot ending an empty DATA", settings.timeout_dot)
            return TransactionResult(recipients, None)
        await self._send_body(txn)
        final = await self._read("reply to the final dot", settings.timeout_dot)
        self._dot_sent = False
        self._needs_rset = False
        return TransactionResult(recipients, final)

    def _transaction_done(self, result: TransactionResult) -> TransactionResult:
        self.messages += 1
        if self._error is None:
            if self._replies or self._parser.pending:
                log.warn("{where}: more replies than commands; closing", where=self._where)
                self._fail(DeliveryError(f"{self._where}: unexpected reply", retry_elsewhere=True), _CLOSE)
            else:
                self._busy = False
        return result

    def _transaction_failed(self, failure: Failure) -> Failure:
        return Failure(self._as_delivery_error(failure, "delivering"))

    def _as_delivery_error(self, failure: Failure, doing: str) -> DeliveryError:
        """The DeliveryError for a failed operation; the connection is closed if not yet."""
        error = failure.value
        if not isinstance(error, DeliveryError):
            log.failure("{where}: internal error while {doing}", failure, where=self._where, doing=doing)
            error = DeliveryError(
                f"{self._where}: internal error: {error!r}", retry_elsewhere=True, after_dot=self._dot_sent
            )
        if self._error is None:
            if isinstance(error, IdentityConflict):
                # Nothing but RSET and a refused XCLIENT were sent: the session is as it was, reset.
                self._busy = False
                self._needs_rset = False
            else:
                self._fail(error, _ABORT)
        return error

    async def _rset_reply(self) -> None:
        reply = await self._read("reply to RSET", self.settings.timeout_command)
        if reply.kind != 2:
            raise self._fail(
                DeliveryError(f"{self._where}: RSET refused: {reply}", reply=reply, retry_elsewhere=True),
                _QUIT,
            )

    def _xforward_reply(self, reply: SMTPReply) -> None:
        if reply.kind != 2 and not self._xforward_refusal_logged:
            self._xforward_refusal_logged = True
            log.warn("{where}: XFORWARD refused: {reply}", where=self._where, reply=str(reply))

    def _wants_xclient(self, txn: Transaction) -> bool:
        if not self.settings.xclient or self._xclient_off or "XCLIENT" not in self.extensions:
            return False
        return txn.client != self._identity

    def _own_identity(self) -> ClientIdentity:
        """Ourselves as the client: what a transaction without an identity resets XCLIENT to."""
        transport = self._t()
        local: IAddress | None = transport.getHost()
        peer: IAddress | None = transport.getPeer()
        return ClientIdentity(
            addr=getattr(local, "host", None),
            port=getattr(local, "port", None),
            name=None,
            helo=self.settings.helo,
            proto="ESMTP",
            login=None,
            destaddr=getattr(peer, "host", None),
            destport=getattr(peer, "port", None),
        )

    async def _xclient(self, txn: Transaction, rset: bool) -> tuple[SMTPReply | None, bool]:
        """Put ``txn.client`` (or ourselves) in effect.

        Returns the gateway's rejection of that client (None if it took it, or
        if the transaction goes on without XCLIENT) and whether the pending
        RSET was sent.
        """
        identity = txn.client or self._own_identity()
        commands = xclient_commands(identity, self.extensions["XCLIENT"].split())
        if not commands:
            self._xclient_off = True  # it lists no attribute we know
            return None, False
        timeout = self.settings.timeout_command
        switching = self._identity is not None
        # Each XCLIENT restarts the session, so each one ends its command group (XCLIENT_README);
        # a pending RSET goes in the first group.
        replies: list[SMTPReply] = []
        for index, command in enumerate(commands):
            if index == 0 and rset:
                if "PIPELINING" in self.extensions:
                    self._send(["RSET", command])
                    await self._rset_reply()
                else:
                    self._send(["RSET"])
                    await self._rset_reply()
                    self._send([command])
            else:
                self._send([command])
            reply = await self._read("reply to XCLIENT", timeout)
            replies.append(reply)
            if reply.kind != 2:
                break
        refused = replies[-1] if replies[-1].kind != 2 else None
        if refused is None:
            self._identity = txn.client
            if any(reply.code == 220 for reply in replies):
                await self._hello()  # a new greeting: the session starts over (TLS stays)
            return None, rset
        if len(replies) > 1:
            # The session now carries a mix of two clients' attributes: it must not carry a message.
            raise self._fail(
                DeliveryError(
                    f"{self._where}: XCLIENT refused part way: {refused}", reply=refused, retry_elsewhere=True
                ),
                _QUIT,
            )
        if refused.code not in _XCLIENT_NOT_FOR_US:
            return refused, rset  # the gateway refuses that client
        self._xclient_off = True
        if switching:
            # The previous client's identity is still in effect: not for this message.
            log.warn("{where}: XCLIENT refused, connection kept for its current client: {reply}",
                     where=self._where, reply=str(refused))  # fmt: skip
            raise IdentityConflict(f"{self._where}: XCLIENT refused: {refused}", reply=refused)
        log.warn(
            "{where}: XCLIENT refused, delivering without it on this connection: {reply}",
            where=self._where,
            reply=str(refused),
        )
        return None, rset

    async def _send_body(self, txn: Transaction) -> None:
        transport = self._t()
        try:
            source = txn.body()
        except Exception as e:
            log.failure(
                "{where}: cannot open the body of {queue_id}", where=self._where, queue_id=txn.queue_id
            )
            raise self._fail(
                DeliveryError(f"{txn.queue_id}: cannot open the message body: {e}"), _ABORT
            ) from e
        stuffer = DotStuffer()
        self._paused = False
        self._stage = "sending the message body"
        transport.registerProducer(_BodyProducer(self), True)
        try:
            while True:
                if self._paused:
                    await self._drained()
                try:
                    chunk = await source.read(BODY_CHUNK)
                except Exception as e:
                    if self._error is not None:
                        raise self._error from e
                    log.failure(
                        "{where}: reading the body of {queue_id} failed",
                        where=self._where,
                        queue_id=txn.queue_id,
                    )
                    raise self._fail(
                        DeliveryError(f"{txn.queue_id}: reading the message body failed: {e}"), _ABORT
                    ) from e
                if self._error is not None:
                    raise self._error
                if not chunk:
                    break
                stuffed = stuffer.stuff(chunk)
                if len(chunk) < BODY_CHUNK and source_is_whole(source, chunk):
                    # The whole (rest of the) body: send it and the final dot in one write.
                    self._write(stuffed + stuffer.terminator())
                    self._dot_sent = True
                    break
                self._write(stuffed)
            if not self._dot_sent:
                self._write(stuffer.terminator())
                self._dot_sent = True
        finally:
            with suppress(Exception):
                source.close()
            if self._connected:
                transport.unregisterProducer()

    def _drained(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._arm(d, _WAIT_DRAIN, "sending the message body", self.settings.timeout_data_block)
        return d

    def _resume_body(self) -> None:
        self._paused = False
        if self._pending is not None and self._pending_kind == _WAIT_DRAIN:
            self._disarm().callback(None)

    # ------------------------------------------------------------------ machinery

    def _t(self) -> Any:
        transport = self.transport
        assert transport is not None, "not connected"
        return transport

    def _write(self, data: bytes) -> None:
        """Write ``data``: straight to the socket when nothing is queued (plain TCP), else queued."""
        transport = self._t()
        tls = bool(getattr(transport, "TLS", False))
        if self._direct is None or self._direct_tls != tls:
            self._direct, self._direct_tls = direct_writer(transport), tls
        self._direct(data)

    def _send(self, commands: Sequence[str]) -> None:
        """Write command lines in one write (a pipelined group when there are several)."""
        if self._replies:
            # Each command group is sent when every earlier reply was read: an extra one means desync.
            extra = self._replies[0]
            log.warn("{where}: unexpected reply: {reply}", where=self._where, reply=str(extra))
            raise self._fail(
                DeliveryError(f"{self._where}: unexpected reply: {extra}", reply=extra, retry_elsewhere=True),
                _CLOSE,
            )
        self._write("".join(f"{command}\r\n" for command in commands).encode("utf-8"))

    def _expect(self, stage: str, timeout: float) -> Deferred[SMTPReply]:
        if self._error is not None:
            return fail(self._error)
        if self._replies:
            return succeed(self._replies.popleft())
        d: Deferred[SMTPReply] = Deferred()
        self._arm(d, _WAIT_REPLY, stage, timeout)
        return d

    async def _read(self, stage: str, timeout: float) -> SMTPReply:
        """The next reply; a 421 ends the connection with DeliveryError."""
        reply = await self._expect(stage, timeout)
        if reply.code == 421:
            raise self._fail(
                DeliveryError(f"{self._where}: {stage}: {reply}", reply=reply, retry_elsewhere=True), _CLOSE
            )
        return reply

    def _arm(self, d: Deferred[Any], kind: str, stage: str, timeout: float) -> None:
        assert self._pending is None, f"already waiting for {self._stage}"
        self._pending = d
        self._pending_kind = kind
        self._stage = stage
        self._timer = self.reactor.callLater(timeout, self._timed_out)

    def _disarm(self) -> Deferred[Any]:
        d = self._pending
        assert d is not None
        self._pending = None
        self._pending_kind = ""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        return d

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(
            DeliveryError(
                f"{self._where}: timeout: {self._stage}", retry_elsewhere=True, after_dot=self._dot_sent
            ),
            _ABORT,
        )

    def _unsolicited(self) -> None:
        reply = self._replies[0]
        if reply.code == 421:
            log.info(
                "{where}: gateway closes the idle connection: {reply}", where=self._where, reply=str(reply)
            )
        else:
            log.warn(
                "{where}: unexpected reply on an idle connection: {reply}",
                where=self._where,
                reply=str(reply),
            )
        self._fail(
            DeliveryError(f"{self._where}: reply while idle: {reply}", reply=reply, retry_elsewhere=True),
            _CLOSE,
        )

    def _after_quit(self, result: object) -> None:
        if self._error is None:
            self._fail(DeliveryError(f"{self._where}: closed after QUIT", retry_elsewhere=True), _CLOSE)
        if isinstance(result, Failure):
            result.trap(DeliveryError)

    def _fail(self, error: DeliveryError, how: str) -> DeliveryError:
        """End the connection (``how``: abort, close, or QUIT and close) and fail what waits.

        Returns the connection's error (the first one, if it had already failed).
        """
        if self._error is None:
            self._error = error
            transport = self.transport
            if transport is not None and self._connected:
                if how == _ABORT:
                    transport.abortConnection()  # type: ignore[attr-defined]
                else:
                    if how == _QUIT:
                        transport.write(b"QUIT\r\n")
                    transport.loseConnection()
                    # A gateway that stops reading would keep loseConnection waiting for ever.
                    self._close_guard = self.reactor.callLater(
                        self.settings.timeout_command, self._force_close
                    )
        if self._pending is not None:
            self._disarm().errback(Failure(self._error))
        return self._error

    def _force_close(self) -> None:
        self._close_guard = None
        if self._connected and self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- connecting


class _Connecting(ClientFactory):
    """Builds the connection for :func:`connect` and bounds the TCP connect."""

    noisy = False

    def __init__(self, reactor: Any, host: str, port: int, settings: ClientSettings) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.settings = settings
        self.deferred: Deferred[SMTPClientConnection] = Deferred()
        self.connector: Any = None
        self.timer: IDelayedCall | None = None
        self.done = False

    def start(self) -> Deferred[SMTPClientConnection]:
        timeout = self.settings.timeout_connect
        self.timer = self.reactor.callLater(timeout, self._timed_out)
        # connectTCP's own timeout is a backstop; ours fires first (and runs on a test's Clock).
        self.connector = self.reactor.connectTCP(self.host, self.port, self, timeout=timeout + 1)
        return self.deferred

    def buildProtocol(self, addr: IAddress | None) -> SMTPClientConnection:
        self._cancel_timer()
        connection = SMTPClientConnection(self.reactor, self.settings, self.host, self.port)
        connection.ready.addCallbacks(self._ready, self._failed)
        return connection

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self._cancel_timer()
        self._fail(f"cannot connect: {reason.getErrorMessage()}")

    def _timed_out(self) -> None:
        self.timer = None
        self._fail(f"connect timeout after {self.settings.timeout_connect:g}s")
        if self.connector is not None:
            self.connector.stopConnecting()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None

    def _fail(self, why: str) -> None:
        if not self.done:
            self.done = True
            self.deferred.errback(DeliveryError(f"{self.host}:{self.port}: {why}", retry_elsewhere=True))

    def _ready(self, connection: SMTPClientConnection) -> None:
        if not self.done:
            self.done = True
            self.deferred.callback(connection)
        else:
            connection.abort()

    def _failed(self, failure: Failure) -> None:
        if not self.done:
            self.done = True
            self.deferred.errback(failure)


def connect(reactor: Any, host: str, port: int, settings: ClientSettings) -> Deferred[SMTPClientConnection]:
    """Connect to a gateway and get it ready for ``MAIL``.

    ``reactor`` provides ``IReactorTCP`` and ``IReactorTime``. TCP connect
    (``timeout_connect``), greeting (must be ``220``), ``EHLO`` (``HELO`` after
    a 5xx), ``STARTTLS`` per ``settings.tls`` and ``EHLO`` again. Fails with
    :class:`DeliveryError` (``retry_elsewhere=True``) on any problem.
    """
    return _Connecting(reactor, host, port, settings).start()


__all__ = [
    "BODY_CHUNK",
    "BodySource",
    "ClientIdentity",
    "ClientSettings",
    "DeliveryError",
    "IdentityConflict",
    "MissingExtension",
    "ReplyError",
    "ReplyParser",
    "SMTPClientConnection",
    "SMTPReply",
    "Transaction",
    "TransactionResult",
    "connect",
    "pack_commands",
    "parse_ehlo",
    "xclient_commands",
    "xforward_commands",
    "xtext_encode",
]
