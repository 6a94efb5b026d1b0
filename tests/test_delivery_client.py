"""The outbound SMTP client against a scripted gateway: exact bytes, fake clock, no sockets."""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.internet import error as neterror
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from relaybal.delivery.client import (
    BODY_CHUNK,
    MAX_COMMAND_LINE,
    ClientIdentity,
    ClientSettings,
    DeliveryError,
    IdentityConflict,
    MissingExtension,
    ReplyError,
    ReplyParser,
    SMTPClientConnection,
    SMTPReply,
    Transaction,
    TransactionResult,
    connect,
    parse_ehlo,
    xclient_commands,
    xforward_commands,
    xtext_encode,
)
from relaybal.relay.testing import TLSStringTransport
from relaybal.smtp.datascan import DataScanner
from relaybal.smtp.wire import xtext_decode

T = TypeVar("T")

# --------------------------------------------------------------------------- helpers


class Outcome(Generic[T]):
    """What a Deferred fired with, for synchronous assertions."""

    def __init__(self, d: Deferred[T]) -> None:
        self.done = False
        self._value: Any = None
        self.failure: Failure | None = None
        d.addCallbacks(self._ok, self._err)

    def _ok(self, value: T) -> None:
        self.done = True
        self._value = value

    def _err(self, failure: Failure) -> None:
        self.done = True
        self.failure = failure

    def result(self) -> T:
        assert self.done, "not fired"
        assert self.failure is None, self.failure.getTraceback()
        value: T = self._value
        return value

    def error(self) -> DeliveryError:
        assert self.done, "not fired"
        assert self.failure is not None, f"succeeded with {self._value!r}"
        assert isinstance(self.failure.value, DeliveryError), self.failure.getTraceback()
        return self.failure.value


class RecordingTransport(TLSStringTransport):
    """Keeps each write separately (to tell one pipelined write from several)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)  # type: ignore[no-untyped-call]


BASE_EXTENSIONS = ("PIPELINING", "SIZE 10240000", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8")


def ehlo(*keywords: str, name: str = "gw.test") -> bytes:
    lines = [name, *keywords]
    last = len(lines) - 1
    return "".join(f"250{'-' if i < last else ' '}{line}\r\n" for i, line in enumerate(lines)).encode()


class Gateway:
    """A scripted gateway: the test says its replies and reads what the client wrote."""

    def __init__(
        self,
        *,
        extensions: Sequence[str] = BASE_EXTENSIONS,
        greet: bool = True,
        local: tuple[str, int] = ("127.0.0.1", 40000),
        **options: Any,
    ) -> None:
        options.setdefault("helo", "relay.test")
        self.clock = Clock()
        self.settings = ClientSettings(**options)
        self.transport = RecordingTransport(
            hostAddress=IPv4Address("TCP", *local), peerAddress=IPv4Address("TCP", "127.0.0.1", 25)
        )
        self.conn = SMTPClientConnection(self.clock, self.settings, "gw.test", 25)
        self.lost: list[SMTPClientConnection] = []
        self.conn.on_lost = self.lost.append
        self.ready = Outcome(self.conn.ready)
        self.conn.makeConnection(self.transport)  # type: ignore[no-untyped-call]
        if greet:
            self.say(b"220 gw.test ESMTP\r\n")
            assert self.take() == b"EHLO relay.test\r\n"
            self.say(ehlo(*extensions))
            assert self.ready.result() is self.conn
            self.transport.writes.clear()

    def say(self, *reads: bytes | str) -> None:
        """Each argument is one read (a reply before its command would be a desync)."""
        for data in reads:
            self.conn.dataReceived(data.encode() if isinstance(data, str) else data)

    def take(self) -> bytes:
        value = bytes(self.transport.value())  # type: ignore[no-untyped-call]
        self.transport.clear()  # type: ignore[no-untyped-call]
        return value

    def lose(self, reason: Exception | None = None) -> None:
        self.conn.connectionLost(Failure(reason or ConnectionDone()))

    @property
    def closing(self) -> bool:
        return bool(self.transport.disconnecting)

    @property
    def aborted(self) -> bool:
        return bool(self.transport.disconnected)

    def deliver(self, transaction: Transaction) -> Outcome[TransactionResult]:
        return Outcome(self.conn.deliver(transaction))


class PieceBody:
    """A body given in pieces of the given sizes (cycled), whatever size the client asks for."""

    def __init__(self, data: bytes, pieces: int | Sequence[int] = BODY_CHUNK) -> None:
        self.data = data
        self.pieces = [pieces] if isinstance(pieces, int) else list(pieces)
        self.position = 0
        self.reads = 0
        self.closed = 0

    def read(self, size: int = BODY_CHUNK) -> Deferred[bytes]:
        piece = self.pieces[self.reads % len(self.pieces)]
        self.reads += 1
        chunk = self.data[self.position : self.position + min(piece, size)]
        self.position += len(chunk)
        return succeed(chunk)

    def close(self) -> None:
        self.closed += 1


class ManualBody:
    """A body whose reads the test answers by hand."""

    def __init__(self) -> None:
        self.pending: list[Deferred[bytes]] = []
        self.closed = 0

    @property
    def reads(self) -> int:
        return len(self.pending)

    def read(self, size: int = BODY_CHUNK) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.pending.append(d)
        return d

    def give(self, chunk: bytes) -> None:
        self.pending[-1].callback(chunk)

    def close(self) -> None:
        self.closed += 1


BODY = b"Subject: test\r\n\r\nHello.\r\n"


def make_txn(
    body: bytes = BODY,
    *,
    recipients: Sequence[str] = ("b@y.test",),
    pieces: int | Sequence[int] = BODY_CHUNK,
    queue_id: str = "Q1",
    sender: str = "a@x.test",
    **options: Any,
) -> Transaction:
    options.setdefault("size", len(body))
    return Transaction(queue_id, sender, tuple(recipients), lambda: PieceBody(body, pieces), **options)


def destuff(wire: bytes) -> bytes:
    """The body the DATA bytes on the wire carry (RFC 5321 4.5.2); they must end at the terminator."""
    out: list[bytes] = []
    scanner = DataScanner(out.append, normalize=False, max_line=1 << 30, max_size=1 << 40)
    rest = scanner.feed(wire)
    assert rest == b"", f"bytes after the end of data, or no end: {rest!r}"
    assert scanner.error is None, scanner.error
    return b"".join(out)


def complete(
    gw: Gateway, transaction: Transaction, rcpt_replies: Sequence[str] | None = None
) -> TransactionResult:
    """Run a pipelined transaction to the end with everything accepted."""
    out = gw.deliver(transaction)
    replies = rcpt_replies or ["250 2.1.5 Ok"] * len(transaction.recipients)
    gw.say(
        "250 2.1.0 Ok\r\n"
        + "".join(f"{reply}\r\n" for reply in replies)
        + "354 End data with <CR><LF>.<CR><LF>\r\n"
    )
    gw.say(b"250 2.0.0 Ok: queued as X\r\n")
    gw.take()
    return out.result()


@contextmanager
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "relaybal.delivery":
            events.append(event)

    globalLogPublisher.addObserver(observer)  # type: ignore[arg-type]
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)  # type: ignore[arg-type]


CLIENT = ClientIdentity(
    addr="192.0.2.7", port=4711, name="client.example", helo="helo.example", proto="ESMTP", login="bob"
)

# --------------------------------------------------------------------------- replies


def test_reply_parser_multiline_and_enhanced_status() -> None:
    parser = ReplyParser()
    replies = parser.feed(b"250-2.0.0 first\r\n250-2.0.0 second\r\n250 2.0.0 third\r\n")
    assert replies == [SMTPReply(250, "2.0.0", "first\nsecond\nthird")]
    assert str(replies[0]) == "250 2.0.0 first second third"
    assert replies[0].kind == 2


def test_reply_parser_status_only_when_the_class_matches() -> None:
    parser = ReplyParser()
    # RFC 2034: the class digit must be the code's first digit.
    assert parser.feed(b"550 4.1.1 mismatch\r\n") == [SMTPReply(550, "", "4.1.1 mismatch")]
    assert parser.feed(b"250 2.1.0\r\n") == [SMTPReply(250, "2.1.0", "")]
    assert parser.feed(b"250 2.1.0.3 no\r\n") == [SMTPReply(250, "", "2.1.0.3 no")]
    assert parser.feed(b"250\r\n") == [SMTPReply(250, "", "")]
    assert str(SMTPReply(250, "", "")) == "250"


def test_reply_parser_bare_lf_and_split_reads() -> None:
    parser = ReplyParser()
    assert parser.feed(b"250-a\n25") == []
    assert parser.pending
    assert parser.feed(b"0 b\r") == []
    assert parser.feed(b"\n354 go\n") == [SMTPReply(250, "", "a\nb"), SMTPReply(354, "", "go")]
    assert not parser.pending


@pytest.mark.parametrize(
    "data",
    [
        b"hello\r\n",
        b"25 short\r\n",
        b"250x\r\n",
        b"650 code too high\r\n",
        b"150 preliminary\r\n",
        b"250-a\r\n251 b\r\n",
        b"250 " + b"x" * 4093 + b"\r\n",
        b"250-" + b"x" * 5000,
        b"".join(b"250-line\r\n" for _ in range(100)) + b"250 last\r\n",
    ],
    ids=[
        "text",
        "short",
        "no-separator",
        "code",
        "1xx",
        "code-change",
        "long-line",
        "long-partial",
        "101-lines",
    ],
)
def test_reply_parser_refuses_garbage(data: bytes) -> None:
    with pytest.raises(ReplyError):
        ReplyParser().feed(data)


def test_reply_parser_limits_are_inclusive() -> None:
    line = b"250 " + b"x" * 4092 + b"\r\n"  # 4096 octets without CRLF
    assert ReplyParser().feed(line)[0].text == "x" * 4092
    hundred = b"".join(b"250-line\r\n" for _ in range(99)) + b"250 last\r\n"
    assert len(ReplyParser().feed(hundred)[0].lines) == 100


_TEXT = st.from_regex(r"(?:[A-Za-z][ -~]{0,60})?", fullmatch=True)


@st.composite
def replies_strategy(draw: st.DrawFn) -> tuple[SMTPReply, bytes]:
    """A reply and one way of writing it (CRLF or bare LF per line, status on every line)."""
    code = draw(st.integers(200, 599))
    status = ""
    if code // 100 != 3:  # RFC 3463: classes 2, 4 and 5 only
        status = draw(
            st.one_of(
                st.just(""), st.from_regex(rf"{code // 100}\.[0-9]{{1,3}}\.[0-9]{{1,3}}", fullmatch=True)
            )
        )
    texts = draw(st.lists(_TEXT, min_size=1, max_size=6))
    wire = b""
    for index, text in enumerate(texts):
        separator = " " if index == len(texts) - 1 else "-"
        body = f"{status} {text}" if status else text
        line = f"{code}{separator}{body}" if body or separator == "-" else f"{code}"
        wire += line.encode() + draw(st.sampled_from([b"\r\n", b"\n"]))
    return SMTPReply(code, status, "\n".join(texts)), wire


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    pieces, start = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


@settings(max_examples=1500, deadline=None)
@given(st.lists(replies_strategy(), min_size=1, max_size=8), st.lists(st.integers(0, 10_000), max_size=12))
def test_fuzz_reply_parser_round_trip(replies: list[tuple[SMTPReply, bytes]], cuts: list[int]) -> None:
    wire = b"".join(data for _, data in replies)
    parser = ReplyParser()
    parsed = [reply for piece in _split(wire, cuts) for reply in parser.feed(piece)]
    assert parsed == [reply for reply, _ in replies]
    assert not parser.pending


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(st.binary(max_size=300), st.sampled_from([b"250-", b"250 ", b"\r\n", b"\n", b"\r"])),
        max_size=40,
    )
)
@example([b"250-x\r\n", b"\r", b"\n"])
@example([b"5" * 5000])
def test_fuzz_reply_parser_garbage(chunks: list[bytes]) -> None:
    parser = ReplyParser()
    try:
        for chunk in chunks:
            for reply in parser.feed(chunk):
                assert 200 <= reply.code <= 599
                assert len(reply.lines) <= 100
                assert all(len(line) <= 4096 for line in reply.lines)
            assert len(parser._buffer) <= 4097  # bounded: never a whole stream of garbage
    except ReplyError:
        pass


def test_parse_ehlo() -> None:
    reply = ReplyParser().feed(
        ehlo("PIPELINING", "size 1000", "XCLIENT NAME ADDR", "", name="gw.test says hi")
    )[0]
    assert parse_ehlo(reply) == {"PIPELINING": "", "SIZE": "1000", "XCLIENT": "NAME ADDR"}


# --------------------------------------------------------------------------- opening


def test_open_reads_the_greeting_and_the_extensions() -> None:
    gw = Gateway(extensions=("PIPELINING", "SIZE 1000", "8BITMIME"))
    assert gw.conn.usable
    assert gw.conn.esmtp
    assert dict(gw.conn.extensions) == {"PIPELINING": "", "SIZE": "1000", "8BITMIME": ""}
    assert gw.conn.greeting == SMTPReply(220, "", "gw.test ESMTP")
    assert not gw.conn.tls


def test_helo_after_ehlo_5xx() -> None:
    gw = Gateway(greet=False)
    gw.say(b"220 old.test SMTP\r\n")
    assert gw.take() == b"EHLO relay.test\r\n"
    gw.say(b"502 5.5.2 Error: command not recognized\r\n")
    assert gw.take() == b"HELO relay.test\r\n"
    assert not gw.ready.done
    gw.say(b"250 old.test\r\n")
    assert gw.ready.result() is gw.conn
    assert not gw.conn.esmtp and dict(gw.conn.extensions) == {}
    # Without PIPELINING, one command at a time.
    out = gw.deliver(make_txn(size=0))
    assert gw.take() == b"MAIL FROM:<a@x.test>\r\n"
    gw.say(b"250 Ok\r\n")
    assert gw.take() == b"RCPT TO:<b@y.test>\r\n"
    gw.say(b"250 Ok\r\n")
    assert gw.take() == b"DATA\r\n"
    gw.say(b"354 go\r\n")
    assert destuff(gw.take()) == BODY
    gw.say(b"250 Ok\r\n")
    assert out.result().data == SMTPReply(250, "", "Ok")


def test_ehlo_4xx_fails_the_connection() -> None:
    gw = Gateway(greet=False)
    gw.say(b"220 gw.test ESMTP\r\n")
    gw.take()
    gw.say(b"450 4.3.2 busy\r\n")
    error = gw.ready.error()
    assert error.retry_elsewhere and error.reply == SMTPReply(450, "4.3.2", "busy")
    assert gw.take() == b"QUIT\r\n" and gw.closing


def test_helo_refused_fails_the_connection() -> None:
    gw = Gateway(greet=False)
    gw.say(b"220 gw.test ESMTP\r\n")
    gw.say(b"500 5.5.1 no\r\n")
    gw.say(b"501 5.5.4 no either\r\n")
    error = gw.ready.error()
    assert error.retry_elsewhere and error.reply is not None and error.reply.code == 501


@pytest.mark.parametrize("banner", [b"554 5.3.2 go away\r\n", b"421 4.3.2 busy\r\n", b"450 try later\r\n"])
def test_bad_banner(banner: bytes) -> None:
    gw = Gateway(greet=False)
    gw.say(banner)
    error = gw.ready.error()
    assert error.retry_elsewhere
    assert error.reply is not None and error.reply.code == int(banner[:3])
    assert gw.closing and not gw.conn.usable
    # RFC 5321 3.1: QUIT after a 554 greeting; a 421 closes without more ado.
    assert gw.take() == (b"" if banner.startswith(b"421") else b"QUIT\r\n")


# --------------------------------------------------------------------------- transactions


def test_pipelining_sends_the_envelope_in_one_write() -> None:
    gw = Gateway()
    out = gw.deliver(make_txn(recipients=("b@y.test", "c@y.test")))
    assert gw.transport.writes == [
        b"MAIL FROM:<a@x.test> SIZE=25\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n"
    ]
    gw.take()
    gw.say(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n")
    assert gw.take() == b""  # nothing before every reply is in
    gw.say(b"250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n")
    assert destuff(gw.take()) == BODY
    assert not out.done
    gw.say(b"250 2.0.0 Ok: queued as 3F1\r\n")
    result = out.result()
    assert [str(reply) for reply in result.recipients] == ["250 2.1.5 Ok", "250 2.1.5 Ok"]
    assert str(result.data) == "250 2.0.0 Ok: queued as 3F1"
    assert gw.conn.usable and gw.conn.messages == 1


def test_without_pipelining_one_command_at_a_time() -> None:
    gw = Gateway(extensions=("SIZE 1000000", "8BITMIME"))
    out = gw.deliver(make_txn(recipients=("b@y.test", "c@y.test", "d@y.test")))
    assert gw.take() == b"MAIL FROM:<a@x.test> SIZE=25\r\n"
    gw.say(b"250 2.1.0 Ok\r\n")
    assert gw.take() == b"RCPT TO:<b@y.test>\r\n"
    gw.say(b"550 5.1.1 unknown\r\n")
    assert gw.take() == b"RCPT TO:<c@y.test>\r\n"
    gw.say(b"250 2.1.5 Ok\r\n")
    assert gw.take() == b"RCPT TO:<d@y.test>\r\n"
    gw.say(b"450 4.2.0 greylisted\r\n")
    assert gw.take() == b"DATA\r\n"
    gw.say(b"354 go\r\n")
    assert destuff(gw.take()) == BODY
    gw.say(b"250 2.0.0 Ok\r\n")
    result = out.result()
    assert [reply.code for reply in result.recipients] == [550, 250, 450]
    assert result.data is not None and result.data.code == 250


def test_without_pipelining_mail_refused_stops() -> None:
    gw = Gateway(extensions=())
    out = gw.deliver(make_txn(recipients=("b@y.test", "c@y.test")))
    assert gw.take() == b"MAIL FROM:<a@x.test>\r\n"
    gw.say(b"553 5.1.8 bad sender\r\n")
    result = out.result()
    assert result.recipients == (SMTPReply(553, "5.1.8", "bad sender"),) * 2
    assert result.data is None
    assert gw.take() == b""
    # The next transaction starts with RSET, alone.
    gw.deliver(make_txn())
    assert gw.take() == b"RSET\r\n"
    gw.say(b"250 2.0.0 Ok\r\n")
    assert gw.take() == b"MAIL FROM:<a@x.test>\r\n"


def test_without_pipelining_no_recipient_no_data() -> None:
    gw = Gateway(extensions=())
    out = gw.deliver(make_txn())
    gw.say(b"250 Ok\r\n")
    gw.say(b"550 5.1.1 no such user\r\n")
    result = out.result()
    assert result.recipients == (SMTPReply(550, "5.1.1", "no such user"),)
    assert result.data is None
    assert gw.take() == b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"


def test_per_recipient_outcomes() -> None:
    gw = Gateway()
    result = complete(
        gw,
        make_txn(recipients=("a@y.test", "b@y.test", "c@y.test")),
        ["250 2.1.5 Ok", "450 4.2.0 <b@y.test>: Recipient address rejected: greylisted", "550 5.1.1 no"],
    )
    assert [reply.code for reply in result.recipients] == [250, 450, 550]
    assert result.recipients[1].status == "4.2.0"
    assert result.data is not None and result.data.kind == 2


def test_mail_refused_pipelined_every_recipient_gets_its_reply() -> None:
    gw = Gateway()
    out = gw.deliver(make_txn(recipients=("b@y.test", "c@y.test")))
    gw.say(
        b"451 4.3.0 sender check failed\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n"
        b"554 5.5.1 no recipients\r\n"
    )
    result = out.result()
    assert result.recipients == (SMTPReply(451, "4.3.0", "sender check failed"),) * 2
    assert result.data is None
    assert gw.conn.usable


def test_data_refused_is_copied_to_the_accepted_recipients() -> None:
    gw = Gateway()
    out = gw.deliver(make_txn(recipients=("b@y.test", "c@y.test")))
    gw.take()
    gw.say(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 unknown\r\n451 4.3.0 try later\r\n")
    result = out.result()
    assert result.recipients == (SMTPReply(451, "4.3.0", "try later"), SMTPReply(550, "5.1.1", "unknown"))
    assert result.data is None
    assert gw.take() == b""
    assert gw.conn.usable


def test_no_recipient_accepted_but_pipelined_data_got_354() -> None:
    gw = Gateway()
    out = gw.deliver(make_txn(recipients=("b@y.test", "c@y.test")))
    gw.take()
    gw.say(b"250 2.1.0 Ok\r\n550 5.1.1 no\r\n550 5.1.1 no\r\n354 go ahead\r\n")
    # RFC 2920 3.1: end the DATA with nothing in it.
    assert gw.take() == b".\r\n"
    assert not out.done
    gw.say(b"554 5.5.1 Error: no valid recipients\r\n")
    result = out.result()
    assert [reply.code for reply in result.recipients] == [550, 550]
    assert result.data is None
    gw.deliver(make_txn())
    assert gw.take().startswith(b"RSET\r\nMAIL FROM:")


def test_reuse_rset_only_when_needed() -> None:
    gw = Gateway()
    complete(gw, make_txn())
    # After a DATA that ended with the final reply the session is reset already.
    gw.deliver(make_txn())
    assert gw.take() == b"MAIL FROM:<a@x.test> SIZE=25\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
    gw.say(b"250 Ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n")
    # A refused RCPT left a transaction open: RSET, pipelined with the next MAIL.
    out = gw.deliver(make_txn(queue_id="Q3"))
    assert (
        gw.transport.writes[-1] == b"RSET\r\nMAIL FROM:<a@x.test> SIZE=25\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
    )
    gw.take()
    gw.say(b"250 2.0.0 Ok\r\n250 Ok\r\n250 Ok\r\n354 go\r\n")
    destuff(gw.take())
    gw.say(b"550 5.7.1 content rejected\r\n")
    result = out.result()
    assert result.data == SMTPReply(550, "5.7.1", "content rejected")
    # A refused final dot still ends the transaction: no RSET.
    complete(gw, make_txn())
    assert gw.conn.messages == 4


def test_rset_refused_fails_the_connection() -> None:
    gw = Gateway()
    gw.deliver(make_txn())
    gw.say(b"250 Ok\r\n550 no\r\n554 no\r\n")
    out = gw.deliver(make_txn())
    gw.take()
    gw.say(b"500 5.5.1 what\r\n")
    error = out.error()
    assert error.retry_elsewhere and error.reply is not None and error.reply.code == 500
    assert not gw.conn.usable


def test_mail_parameters() -> None:
    gw = Gateway()
    gw.deliver(make_txn(body_type="8BITMIME", smtputf8=True, size=999, sender=""))
    assert gw.take().split(b"\r\n")[0] == b"MAIL FROM:<> SIZE=999 BODY=8BITMIME SMTPUTF8"
    # SIZE only when offered; none for an unknown size.
    gw2 = Gateway(extensions=("PIPELINING", "8BITMIME"))
    gw2.deliver(make_txn(body_type="8bitmime"))
    assert gw2.take().split(b"\r\n")[0] == b"MAIL FROM:<a@x.test> BODY=8BITMIME"
    gw3 = Gateway()
    gw3.deliver(make_txn(size=0))
    assert gw3.take().split(b"\r\n")[0] == b"MAIL FROM:<a@x.test>"


def test_utf8_addresses_go_out_as_utf8() -> None:
    gw = Gateway()
    gw.deliver(make_txn(sender="dörte@x.test", recipients=("用户@例子.test",), smtputf8=True))
    assert (
        gw.take()
        == "MAIL FROM:<dörte@x.test> SIZE=25 SMTPUTF8\r\nRCPT TO:<用户@例子.test>\r\nDATA\r\n".encode()
    )


@pytest.mark.parametrize(
    ("extensions", "options", "missing"),
    [
        (("PIPELINING", "8BITMIME"), {"smtputf8": True}, "SMTPUTF8"),
        (("PIPELINING", "SMTPUTF8"), {"body_type": "8BITMIME"}, "8BITMIME"),
        (("PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE 100"), {"size": 101}, "SIZE"),
    ],
)
def test_missing_extension(extensions: tuple[str, ...], options: dict[str, Any], missing: str) -> None:
    gw = Gateway(extensions=extensions)
    out = gw.deliver(make_txn(**options))
    error = out.error()
    assert isinstance(error, MissingExtension) and error.extension == missing
    assert not error.retry_elsewhere
    assert gw.take() == b""
    assert gw.conn.usable
    complete(gw, make_txn(size=100))


def test_size_without_a_limit_or_at_the_limit() -> None:
    gw = Gateway(extensions=("PIPELINING", "SIZE"))
    gw.deliver(make_txn(size=10**9))
    assert gw.take().startswith(b"MAIL FROM:<a@x.test> SIZE=1000000000\r\n")
    gw2 = Gateway(extensions=("SIZE 25",))
    gw2.deliver(make_txn())
    assert gw2.take() == b"MAIL FROM:<a@x.test> SIZE=25\r\n"


@pytest.mark.parametrize(
    "txn",
    [
        make_txn(recipients=()),
        make_txn(recipients=("b@y.test>\r\nRCPT TO:<evil@z.test",)),
        make_txn(sender="a\n@x.test"),
        make_txn(body_type="BINARYMIME"),
    ],
    ids=["no-recipients", "crlf-rcpt", "lf-sender", "body-type"],
)
def test_bad_transactions_send_nothing(txn: Transaction) -> None:
    gw = Gateway()
    error = gw.deliver(txn).error()
    assert not error.retry_elsewhere
    assert gw.take() == b""
    assert gw.conn.usable


def test_one_transaction_at_a_time() -> None:
    gw = Gateway()
    first = gw.deliver(make_txn())
    second = gw.deliver(make_txn())
    assert second.error().retry_elsewhere
    assert not first.done
    assert not gw.conn.usable


# --------------------------------------------------------------------------- failures


def test_421_mid_session() -> None:
    gw = Gateway()
    out = gw.deliver(make_txn(recipients=("b@y.test", "c@y.test")))
    gw.say(b"250 2.1.0 Ok\r\n421 4.4.2 gw.test Error: timeout exceeded\r\n")
    error = out.error()
    assert error.retry_elsewhere and not error.after_dot
    assert error.reply == SMTPReply(421, "4.4.2", "gw.test Error: timeout exceeded")
    assert gw.closing and not gw.aborted
    assert not gw.conn.usable
    gw.lose()
    assert gw.lost == [gw.conn]


def test_421_after_the_dot_is_a_reply() -> None:
    gw = Gateway()
    out = gw.deliver(make_txn())
    gw.say(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
    gw.say(b"421 4.3.0 shutting down\r\n")
    error = out.error()
    assert error.retry_elsewhere and not error.after_dot
    assert error.reply is not None and error.reply.code == 421


@pytest.mark.parametrize(
    ("replies", "after_dot"),
    [
        (b"", False),  # waiting for the MAIL reply
        (b"250 Ok\r\n250 Ok\r\n", False),  # waiting for the DATA reply
        (b"250 Ok\r\n250 Ok\r\n354 go\r\n", True),  # the dot was sent
    ],
    ids=["before-mail-reply", "before-data-reply", "after-dot"],
)
def test_connection_lost_mid_transaction(replies: bytes, after_dot: bool) -> None:
    gw = Gateway()
    out = gw.deliver(make_txn())
    gw.say(replies)
    gw.lose(ConnectionLost("reset by peer"))
    error = out.error()
    assert error.retry_elsewhere
    assert error.after_dot is after_dot
    assert gw.lost == [gw.conn]
    assert not gw.conn.usable
    gw.lose()  # a second report changes nothing
    assert gw.lost == [gw.conn]


def test_connection_lost_while_streaming_the_body() -> None:
    gw = Gateway()
    body = ManualBody()
    out = gw.deliver(Transaction("Q1", "a@x.test", ("b@y.test",), lambda: body))
    gw.say(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
    body.give(b"first line\r\n")
    gw.lose()
    body.give(b"second line\r\n")
    error = out.error()
    assert error.retry_elsewhere and not error.after_dot
    assert body.closed == 1


def test_connection_lost_while_idle() -> None:
    gw = Gateway()
    with captured_logs() as logs:
        gw.lose()
    assert gw.lost == [gw.conn]
    assert not gw.conn.usable
    assert any("closed by the gateway" in str(event.get("what")) for event in logs)
    assert gw.deliver(make_txn()).error().retry_elsewhere


def test_reply_while_idle_closes() -> None:
    gw = Gateway()
    gw.say(b"421 4.4.2 gw.test Error: timeout exceeded\r\n")
    assert gw.closing and not gw.conn.usable
    gw.lose()
    assert gw.lost == [gw.conn]


def test_extra_reply_after_a_transaction_closes() -> None:
    gw = Gateway()
    out = gw.deliver(make_txn())
    gw.say(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
    gw.say(b"250 2.0.0 Ok\r\n250 2.0.0 what is this\r\n")
    assert out.result().data is not None  # the transaction itself is fine
    assert gw.closing and not gw.conn.usable


@pytest.mark.parametrize(
    "garbage",
    [b"HTTP/1.1 400 Bad Request\r\n", b"250 " + b"x" * 5000, b"".join(b"250-x\r\n" for _ in range(101))],
    ids=["not-a-reply", "long-line", "many-lines"],
)
def test_protocol_error_mid_transaction(garbage: bytes) -> None:
    gw = Gateway()
    out = gw.deliver(make_txn())
    with captured_logs() as logs:
        gw.say(garbage)
    error = out.error()
    assert "protocol error" in str(error) and error.retry_elsewhere
    assert gw.aborted
    assert any("protocol error" in event["log_format"] for event in logs)


def test_body_source_failure_aborts_the_connection() -> None:
    gw = Gateway()
    body = ManualBody()
    out = gw.deliver(Transaction("Q1", "a@x.test", ("b@y.test",), lambda: body))
    gw.say(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
    body.give(b"half a message\r\n")
    with captured_logs():
        body.pending[-1].errback(Failure(OSError("disk on fire")))
    error = out.error()
    assert "disk on fire" in str(error)
    assert not error.retry_elsewhere  # the message's problem, not the gateway's
    # The connection is dropped: a "." would deliver half a message.
    assert gw.aborted and not gw.take().endswith(b".\r\n")
    assert body.closed == 1


def test_abort_fails_the_transaction() -> None:
    gw = Gateway()
    out = gw.deliver(make_txn())
    gw.conn.abort()
    assert out.error().retry_elsewhere
    assert gw.aborted


# --------------------------------------------------------------------------- timeouts


def _at_greeting(gw: Gateway) -> None:
    pass


def _at_ehlo(gw: Gateway) -> None:
    gw.say(b"220 gw.test ESMTP\r\n")


def _at_starttls(gw: Gateway) -> None:
    gw.say(b"220 gw.test ESMTP\r\n")
    gw.say(ehlo("STARTTLS"))


def _at_handshake(gw: Gateway) -> None:
    _at_starttls(gw)
    gw.say(b"220 2.0.0 Ready to start TLS\r\n")


@pytest.mark.parametrize(
    ("setup", "timeout"),
    [
        (_at_greeting, "timeout_banner"),
        (_at_ehlo, "timeout_command"),
        (_at_starttls, "timeout_command"),
        (_at_handshake, "timeout_command"),
    ],
    ids=["greeting", "ehlo", "starttls", "handshake"],
)
def test_timeouts_while_opening(setup: Any, timeout: str) -> None:
    gw = Gateway(
        greet=False,
        tls="opportunistic",
        tls_options=CertificateOptions(),
        timeout_banner=30.0,
        timeout_command=20.0,
    )
    setup(gw)
    gw.clock.advance(getattr(gw.settings, timeout) - 0.01)
    assert not gw.ready.done
    gw.clock.advance(0.02)
    error = gw.ready.error()
    assert error.retry_elsewhere and "timeout" in str(error)
    assert gw.aborted


def _at_mail(gw: Gateway, body: ManualBody) -> None:
    pass


def _at_data(gw: Gateway, body: ManualBody) -> None:
    gw.say(b"250 Ok\r\n250 Ok\r\n")


def _at_data_block(gw: Gateway, body: ManualBody) -> None:
    gw.say(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
    producer = gw.transport.producer
    assert producer is not None
    producer.pauseProducing()
    body.give(b"some body\r\n")


def _at_dot(gw: Gateway, body: ManualBody) -> None:
    gw.say(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
    body.give(b"some body\r\n")
    body.give(b"")


@pytest.mark.parametrize(
    ("setup", "timeout", "after_dot"),
    [
        (_at_mail, "timeout_command", False),
        (_at_data, "timeout_command", False),
        (_at_data_block, "timeout_data_block", False),
        (_at_dot, "timeout_dot", True),
    ],
    ids=["mail", "data", "data-block", "dot"],
)
def test_timeouts_in_a_transaction(setup: Any, timeout: str, after_dot: bool) -> None:
    gw = Gateway(timeout_command=20.0, timeout_data_block=30.0, timeout_dot=40.0)
    body = ManualBody()
    out = gw.deliver(Transaction("Q1", "a@x.test", ("b@y.test",), lambda: body))
    setup(gw, body)
    gw.clock.advance(getattr(gw.settings, timeout) - 0.01)
    assert not out.done
    gw.clock.advance(0.02)
    error = out.error()
    assert error.retry_elsewhere and "timeout" in str(error)
    assert error.after_dot is after_dot
    assert gw.aborted


def test_each_reply_gets_its_own_timeout() -> None:
    gw = Gateway(extensions=(), timeout_command=10.0)
    out = gw.deliver(make_txn())
    gw.clock.advance(9)
    gw.say(b"250 Ok\r\n")
    gw.clock.advance(9)
    gw.say(b"250 Ok\r\n")
    gw.clock.advance(9)
    assert not out.done
    gw.clock.advance(1.01)
    assert out.error().retry_elsewhere


def test_no_timer_left_after_a_transaction() -> None:
    gw = Gateway()
    complete(gw, make_txn())
    assert gw.clock.getDelayedCalls() == []


# --------------------------------------------------------------------------- quit


def test_quit() -> None:
    gw = Gateway()
    done = Outcome(gw.conn.quit())
    assert gw.take() == b"QUIT\r\n"
    assert not gw.conn.usable
    gw.say(b"221 2.0.0 Bye\r\n")
    assert gw.closing and not gw.aborted
    assert not done.done
    gw.lose()
    assert done.result() is None
    assert gw.lost == [gw.conn]
    assert gw.clock.getDelayedCalls() == []


def test_quit_without_an_answer() -> None:
    gw = Gateway(timeout_command=10.0)
    done = Outcome(gw.conn.quit())
    again = Outcome(gw.conn.quit())
    gw.clock.advance(10.01)
    assert gw.aborted
    gw.lose()
    assert done.result() is None and again.result() is None


def test_quit_when_the_gateway_does_not_close() -> None:
    gw = Gateway(timeout_command=10.0)
    done = Outcome(gw.conn.quit())
    gw.say(b"221 2.0.0 Bye\r\n")
    assert gw.closing and not gw.aborted
    gw.clock.advance(10.01)  # loseConnection stuck behind a gateway that reads nothing
    assert gw.aborted
    gw.lose()
    assert done.result() is None


def test_quit_during_a_transaction_aborts_it() -> None:
    gw = Gateway()
    out = gw.deliver(make_txn())
    done = Outcome(gw.conn.quit())
    assert out.error().retry_elsewhere
    assert gw.aborted
    gw.lose()
    assert done.result() is None


def test_quit_after_the_connection_is_gone() -> None:
    gw = Gateway()
    gw.lose()
    assert Outcome(gw.conn.quit()).result() is None


# --------------------------------------------------------------------------- dot-stuffing and streaming


def _body_with_dot_lines(size: int, dot_offsets: Sequence[int]) -> bytes:
    """CRLF lines of filler with a line starting with "." at each offset."""
    out = bytearray()
    for number, offset in enumerate(sorted(dot_offsets)):
        while offset - len(out) > 81:
            out += b"x" * 78 + b"\r\n"
        gap = offset - len(out)
        assert gap == 0 or gap >= 2
        if gap:
            out += b"x" * (gap - 2) + b"\r\n"
        out += b".\r\n" if number % 2 == 0 else b".dot line\r\n"
    while len(out) < size:
        out += b"y" * 60 + b"\r\n"
    return bytes(out)


@pytest.mark.parametrize("read_size", [1, 2, 3, 16383, 16384, 16385, BODY_CHUNK])
@pytest.mark.parametrize("dot_at", [16383, 16384, 16385])
def test_dot_lines_across_chunk_boundaries(read_size: int, dot_at: int) -> None:
    body = _body_with_dot_lines(40_000, [dot_at, dot_at + 16384])
    assert body[dot_at : dot_at + 1] == b"." and body[dot_at - 2 : dot_at] == b"\r\n"
    gw = Gateway()
    out = gw.deliver(make_txn(b".leading dot\r\n" + body, pieces=read_size))
    gw.take()
    gw.say(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
    wire = gw.take()
    assert destuff(wire) == b".leading dot\r\n" + body
    assert wire.startswith(b"..leading dot\r\n")
    gw.say(b"250 Ok\r\n")
    assert out.result().data is not None


def test_dot_line_straddling_every_boundary_of_reads() -> None:
    # The dot line's "\r", "\n" and "." each at a chunk edge of mixed read sizes.
    body = b"a\r\n.\r\n..\r\n.\r\nb\r\n.\r\n"
    for pieces in ([1], [2], [3], [1, 2, 3], [4, 1], [5, 2]):
        gw = Gateway()
        gw.deliver(make_txn(body, pieces=pieces))
        gw.take()
        gw.say(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
        wire = gw.take()
        assert wire == b"a\r\n..\r\n...\r\n..\r\nb\r\n..\r\n.\r\n", pieces


def test_body_without_final_crlf_gets_one() -> None:
    gw = Gateway()
    gw.deliver(make_txn(b"no newline at the end", pieces=5))
    gw.take()
    gw.say(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
    assert gw.take() == b"no newline at the end\r\n.\r\n"


_LINES = st.lists(st.sampled_from([b"", b".", b"..", b".a", b"a.", b"a", b"...", b"x" * 20]), max_size=60)


@settings(max_examples=500, deadline=None)
@given(_LINES, st.booleans(), st.lists(st.integers(1, 40), min_size=1, max_size=8))
def test_fuzz_dot_stuffing_any_split(lines: list[bytes], final_crlf: bool, pieces: list[int]) -> None:
    body = b"\r\n".join(lines) + (b"\r\n" if final_crlf and lines else b"")
    gw = Gateway()
    out = gw.deliver(make_txn(body, pieces=pieces))
    gw.take()
    gw.say(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
    expected = body if body == b"" or body.endswith(b"\r\n") else body + b"\r\n"
    assert destuff(gw.take()) == expected
    gw.say(b"250 Ok\r\n")
    assert out.result().data is not None


def test_back_pressure_stops_reading() -> None:
    gw = Gateway()
    body = ManualBody()
    out = gw.deliver(Transaction("Q1", "a@x.test", ("b@y.test",), lambda: body))
    gw.take()
    gw.say(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
    producer = gw.transport.producer
    assert producer is not None and gw.transport.streaming
    assert body.reads == 1
    producer.pauseProducing()  # the transport's buffer is full
    body.give(b"chunk one\r\n")
    assert body.reads == 1  # not read again while paused
    gw.clock.advance(gw.settings.timeout_data_block / 2)
    assert body.reads == 1
    producer.resumeProducing()
    assert body.reads == 2
    body.give(b"chunk two\r\n")
    assert body.reads == 3
    body.give(b"")
    assert gw.transport.producer is None  # unregistered at the end of the body
    assert destuff(gw.take()) == b"chunk one\r\nchunk two\r\n"
    gw.say(b"250 Ok\r\n")
    assert out.result().data is not None
    assert body.closed == 1


class StreamingTransport(RecordingTransport):
    """Keeps a hash of what was written, not the bytes; fills up after every write."""

    def __init__(self, clock: Clock, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock
        self.hash = hashlib.sha256()
        self.octets = 0
        self.pauses = 0

    def write(self, data: bytes) -> None:
        self.hash.update(data)
        self.octets += len(data)
        if self.producer is not None and len(data) > 1000:
            self.pauses += 1
            self.producer.pauseProducing()
            self.clock.callLater(0, self.producer.resumeProducing)


class RepeatingBody:
    """``count`` times the same block, never held whole."""

    def __init__(self, block: bytes, count: int) -> None:
        self.block = block
        self.left = count
        self.closed = 0

    def read(self, size: int = BODY_CHUNK) -> Deferred[bytes]:
        assert size >= len(self.block)
        if not self.left:
            return succeed(b"")
        self.left -= 1
        return succeed(self.block)

    def close(self) -> None:
        self.closed += 1


def test_a_100_mb_body_streams() -> None:
    block = (b".dotted line\r\n" + b"z" * 1000 + b"\r\n") * 256  # 260,096 octets: one read each
    count = (100 * 1024 * 1024) // len(block) + 1
    clock = Clock()
    transport = StreamingTransport(clock)
    conn = SMTPClientConnection(clock, ClientSettings(helo="relay.test"), "gw.test", 25)
    conn.makeConnection(transport)  # type: ignore[no-untyped-call]
    conn.dataReceived(b"220 gw\r\n")
    conn.dataReceived(ehlo("PIPELINING"))
    source = RepeatingBody(block, count)
    tracemalloc.start()
    try:
        out = Outcome(conn.deliver(Transaction("Q1", "a@x.test", ("b@y.test",), lambda: source)))
        conn.dataReceived(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
        envelope = transport.octets
        while not source.closed:
            clock.advance(0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    conn.dataReceived(b"250 2.0.0 Ok\r\n")
    assert out.result().data is not None
    assert transport.octets - envelope >= 100 * 1024 * 1024
    assert transport.pauses >= count - 1
    assert peak < 8 * 1024 * 1024, f"peak {peak} octets for a 100 MB body"
    expected = hashlib.sha256(b"EHLO relay.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
    stuffed = block.replace(b"\r\n.", b"\r\n..")
    stuffed = b"." + stuffed if stuffed.startswith(b".") else stuffed
    for _ in range(count):
        expected.update(stuffed)
    expected.update(b".\r\n")
    assert transport.hash.hexdigest() == expected.hexdigest()


# --------------------------------------------------------------------------- STARTTLS


def test_starttls_opportunistic() -> None:
    options = CertificateOptions()
    gw = Gateway(greet=False, tls="opportunistic", tls_options=options)
    gw.say(b"220 gw.test ESMTP\r\n")
    gw.take()
    gw.say(ehlo("PIPELINING", "STARTTLS"))
    assert gw.take() == b"STARTTLS\r\n"
    gw.say(b"220 2.0.0 Ready to start TLS\r\n")
    assert gw.transport.tls_options is options
    assert gw.take() == b""  # EHLO only once the handshake is done
    gw.conn.handshakeCompleted()
    assert gw.take() == b"EHLO relay.test\r\n"
    gw.say(ehlo("PIPELINING", "SIZE 100"))
    assert gw.ready.result() is gw.conn
    assert gw.conn.tls
    assert dict(gw.conn.extensions) == {"PIPELINING": "", "SIZE": "100"}


def test_starttls_opportunistic_not_offered_or_refused() -> None:
    gw = Gateway(tls="opportunistic", tls_options=CertificateOptions())
    assert gw.conn.usable and not gw.conn.tls and not gw.transport.TLS
    gw2 = Gateway(greet=False, tls="opportunistic", tls_options=CertificateOptions())
    gw2.say(b"220 gw.test ESMTP\r\n", ehlo("STARTTLS"))
    with captured_logs() as logs:
        gw2.say(b"454 4.7.0 TLS not available due to local problem\r\n")
    assert gw2.ready.result() is gw2.conn and not gw2.conn.tls
    assert any("STARTTLS refused" in event["log_format"] for event in logs)


def test_starttls_required_not_offered() -> None:
    gw = Gateway(greet=False, tls="required")
    gw.say(b"220 gw.test ESMTP\r\n")
    gw.take()
    gw.say(ehlo("PIPELINING"))
    error = gw.ready.error()
    assert error.retry_elsewhere and "STARTTLS" in str(error)
    assert gw.take() == b"QUIT\r\n"


def test_starttls_required_refused() -> None:
    gw = Gateway(greet=False, tls="required")
    gw.say(b"220 gw.test ESMTP\r\n", ehlo("STARTTLS"))
    gw.say(b"454 4.7.0 TLS not available\r\n")
    error = gw.ready.error()
    assert error.retry_elsewhere and error.reply is not None and error.reply.code == 454


@pytest.mark.parametrize(
    "injected",
    [b"250-PIPELINING\r\n250 AUTH PLAIN\r\n", b"250 partial", b"\r\n"],
    ids=["replies", "partial-line", "not-a-reply"],
)
def test_starttls_plaintext_injection_is_refused(injected: bytes) -> None:
    gw = Gateway(greet=False, tls="required", tls_options=CertificateOptions())
    gw.say(b"220 gw.test ESMTP\r\n", ehlo("STARTTLS"))
    gw.take()
    with captured_logs() as logs:
        gw.say(b"220 2.0.0 Ready to start TLS\r\n" + injected)
    error = gw.ready.error()
    assert error.retry_elsewhere
    assert not gw.transport.TLS  # the handshake never started
    assert gw.aborted
    if injected.startswith(b"250"):
        assert "after the reply to STARTTLS" in str(error)
        assert any("injection" in event["log_format"] for event in logs)
    else:
        assert "protocol error" in str(error)


def test_starttls_handshake_failure() -> None:
    gw = Gateway(greet=False, tls="opportunistic", tls_options=CertificateOptions())
    gw.say(b"220 gw.test ESMTP\r\n", ehlo("STARTTLS"))
    gw.say(b"220 2.0.0 Ready to start TLS\r\n")
    gw.lose(ConnectionLost("certificate verify failed"))
    error = gw.ready.error()
    assert error.retry_elsewhere and "TLS handshake failed" in str(error)
    assert gw.lost == [gw.conn]


def test_tls_options_from_the_settings() -> None:
    def creator(**options: Any) -> Any:
        gw = Gateway(greet=False, tls="required", **options)
        gw.say(b"220 gw.test ESMTP\r\n", ehlo("STARTTLS"))
        gw.say(b"220 2.0.0 Ready to start TLS\r\n")
        assert gw.transport.TLS
        return gw.transport.tls_options

    # Verification against the host connected to, or the configured name.
    assert creator()._hostnameASCII == "gw.test"
    assert creator(tls_hostname="mx.example")._hostnameASCII == "mx.example"
    assert isinstance(creator(tls_verify=False), CertificateOptions)


# --------------------------------------------------------------------------- XCLIENT


XCLIENT_EXTENSIONS = ("PIPELINING", "SIZE 10240000", "XCLIENT NAME ADDR PROTO HELO", "8BITMIME")


def test_xclient_attributes_limited_to_the_advertised_ones() -> None:
    gw = Gateway(extensions=XCLIENT_EXTENSIONS, xclient=True)
    out = gw.deliver(make_txn(client=CLIENT))
    assert gw.take() == b"XCLIENT NAME=client.example ADDR=192.0.2.7 PROTO=ESMTP HELO=helo.example\r\n"
    gw.say(b"220 gw.test ESMTP\r\n")  # XCLIENT restarts the session: EHLO again
    assert gw.take() == b"EHLO relay.test\r\n"
    gw.say(ehlo(*XCLIENT_EXTENSIONS))
    assert gw.take() == b"MAIL FROM:<a@x.test> SIZE=25\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
    gw.say(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
    assert destuff(gw.take()) == BODY
    gw.say(b"250 Ok\r\n")
    assert out.result().data is not None


def test_xclient_every_known_attribute() -> None:
    gw = Gateway(
        extensions=("PIPELINING", "XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT REVERSE_NAME"),
        xclient=True,
    )
    client = attrs_evolve(CLIENT, destaddr="198.51.100.1", destport=25)
    gw.deliver(make_txn(client=client))
    assert gw.take() == (
        b"XCLIENT NAME=client.example ADDR=192.0.2.7 PORT=4711 PROTO=ESMTP HELO=helo.example"
        b" LOGIN=bob DESTADDR=198.51.100.1 DESTPORT=25\r\n"
    )


def attrs_evolve(identity: ClientIdentity, **changes: Any) -> ClientIdentity:
    import attrs

    return attrs.evolve(identity, **changes)


def test_xclient_unknown_values_and_xtext_and_ipv6() -> None:
    client = ClientIdentity(
        addr="2001:DB8::7", port=None, name=None, helo="a+b=c d\u00e9", proto="ESMTPSA", login=None
    )
    lines = xclient_commands(client, ["NAME", "ADDR", "PORT", "PROTO", "HELO", "LOGIN"])
    assert lines == [
        "XCLIENT NAME=[UNAVAILABLE] ADDR=IPV6:2001:db8::7 PORT=[UNAVAILABLE] PROTO=ESMTP"
        " HELO=a+2Bb+3Dc+20d+C3+A9 LOGIN=[UNAVAILABLE]"
    ]
    mapped = attrs_evolve(client, addr="::ffff:192.0.2.9")
    assert "ADDR=192.0.2.9 " in xclient_commands(mapped, ["ADDR", "PORT"])[0]
    bogus = attrs_evolve(client, addr="not-an-address")
    assert xclient_commands(bogus, ["ADDR"]) == ["XCLIENT ADDR=[UNAVAILABLE]"]


def test_xtext_encode() -> None:
    assert xtext_encode("plain.host") == "plain.host"
    assert xtext_encode("a+b=c") == "a+2Bb+3Dc"
    assert xtext_encode("x y\x00\u00e9") == "x+20y+00+C3+A9"
    assert xtext_decode(xtext_encode("a+b=c d\u00e9")) == "a+b=c d\u00c3\u00a9"  # xtext is octets


def test_xclient_split_under_512_octets() -> None:
    name = ("n" * 62 + ".") * 4 + "nn"  # 254 octets
    helo = "h" * 255
    client = ClientIdentity(addr="192.0.2.7", port=4711, name=name, helo=helo, proto="ESMTP", login="bob")
    gw = Gateway(extensions=("PIPELINING", "XCLIENT NAME ADDR PORT PROTO HELO LOGIN"), xclient=True)
    gw.deliver(make_txn(client=client))
    first = gw.take()
    assert first.endswith(b"\r\n") and first.count(b"\r\n") == 1  # one XCLIENT per command group
    gw.say(b"220 gw.test ESMTP\r\n")
    second = gw.take()
    assert second.startswith(b"XCLIENT ") and second.count(b"\r\n") == 1
    gw.say(b"220 gw.test ESMTP\r\n")
    assert gw.take() == b"EHLO relay.test\r\n"  # only after the last XCLIENT
    commands = [first, second]
    assert all(len(line) <= MAX_COMMAND_LINE for line in commands)
    sent = {}
    for line in commands:
        for item in line.decode().strip().split(" ")[1:]:
            key, _, value = item.partition("=")
            sent[key] = xtext_decode(value)
    assert sent == {
        "NAME": name,
        "ADDR": "192.0.2.7",
        "PORT": "4711",
        "PROTO": "ESMTP",
        "HELO": helo,
        "LOGIN": "bob",
    }


def test_xclient_value_too_long_for_any_command() -> None:
    client = attrs_evolve(CLIENT, helo="\u00e9" * 200)  # 1,200 octets of xtext
    assert xclient_commands(client, ["HELO", "ADDR"]) == ["XCLIENT ADDR=192.0.2.7 HELO=[UNAVAILABLE]"]


_IDENTITIES = st.builds(
    ClientIdentity,
    addr=st.one_of(st.none(), st.ip_addresses().map(str)),
    port=st.one_of(st.none(), st.integers(0, 65535)),
    name=st.one_of(st.none(), st.text(max_size=300)),
    helo=st.one_of(st.none(), st.text(max_size=300)),
    proto=st.sampled_from(["SMTP", "ESMTP", "ESMTPS"]),
    login=st.one_of(st.none(), st.text(max_size=300)),
)


@settings(max_examples=500, deadline=None)
@given(_IDENTITIES, st.sets(st.sampled_from(["NAME", "ADDR", "PORT", "PROTO", "HELO", "LOGIN"])))
def test_fuzz_xclient_commands_fit_and_decode(identity: ClientIdentity, offered: set[str]) -> None:
    lines = xclient_commands(identity, offered)
    seen: dict[str, str] = {}
    for line in lines:
        assert len(line) + 2 <= MAX_COMMAND_LINE
        assert line.isascii() and "\r" not in line and "\n" not in line
        for item in line.split(" ")[1:]:
            key, _, value = item.partition("=")
            assert key not in seen
            seen[key] = xtext_decode(value)
    assert set(seen) == offered
    if "NAME" in offered and identity.name and len(xtext_encode(identity.name)) < 490:
        assert seen["NAME"] == identity.name.encode().decode("latin-1")


def test_xclient_per_transaction_and_reset_to_ourselves() -> None:
    gw = Gateway(extensions=XCLIENT_EXTENSIONS, xclient=True)

    def run(client: ClientIdentity | None) -> bytes:
        out = gw.deliver(make_txn(client=client))
        sent = gw.take()
        if sent.startswith(b"XCLIENT"):
            gw.say(b"220 gw.test ESMTP\r\n")
            assert gw.take() == b"EHLO relay.test\r\n"
            gw.say(ehlo(*XCLIENT_EXTENSIONS))
            gw.take()
        gw.say(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
        gw.take()
        gw.say(b"250 Ok\r\n")
        assert out.result().data is not None
        return sent

    assert run(CLIENT).startswith(b"XCLIENT NAME=client.example ADDR=192.0.2.7 ")
    assert gw.conn.identity == CLIENT
    # The same client again: the session carries exactly that identity already.
    assert run(CLIENT).startswith(b"MAIL FROM:")
    other = attrs_evolve(CLIENT, addr="198.51.100.9", name=None)
    assert run(other).startswith(b"XCLIENT NAME=[UNAVAILABLE] ADDR=198.51.100.9 ")
    # No identity: the session must not keep the last client's, so we become the client again.
    assert run(None) == b"XCLIENT NAME=[UNAVAILABLE] ADDR=127.0.0.1 PROTO=ESMTP HELO=relay.test\r\n"
    assert gw.conn.identity is None
    assert run(None).startswith(b"MAIL FROM:")
    assert gw.conn.messages == 5


def test_xclient_identity_locked_when_no_longer_offered() -> None:
    # Postfix stops offering XCLIENT once the session carries an address outside
    # smtpd_authorized_xclient_hosts.
    gw = Gateway(extensions=XCLIENT_EXTENSIONS, xclient=True)
    out = gw.deliver(make_txn(client=CLIENT))
    gw.take()
    gw.say(b"220 gw.test ESMTP\r\n")
    gw.take()
    gw.say(ehlo("PIPELINING", "SIZE 10240000", "8BITMIME"))
    gw.say(b"250 Ok\r\n250 Ok\r\n354 go\r\n", b"250 Ok\r\n")
    assert out.result().data is not None
    gw.take()
    other = attrs_evolve(CLIENT, addr="198.51.100.9")
    assert gw.conn.can_carry(CLIENT)
    assert not gw.conn.can_carry(other) and not gw.conn.can_carry(None)
    for client in (other, None):
        error = gw.deliver(make_txn(client=client)).error()
        assert isinstance(error, IdentityConflict) and error.retry_elsewhere
        assert gw.take() == b""  # nothing sent
        assert gw.conn.usable
    # Still good for the client it carries.
    assert complete(gw, make_txn(client=CLIENT)).data is not None


def test_xclient_switch_refused_keeps_the_connection_for_its_client() -> None:
    gw = Gateway(extensions=XCLIENT_EXTENSIONS, xclient=True)
    out = gw.deliver(make_txn(client=CLIENT))
    gw.say(b"220 gw.test ESMTP\r\n", ehlo(*XCLIENT_EXTENSIONS))
    gw.say(b"250 Ok\r\n250 Ok\r\n354 go\r\n", b"250 Ok\r\n")
    assert out.result().data is not None
    gw.take()
    with captured_logs():
        out = gw.deliver(make_txn(client=attrs_evolve(CLIENT, addr="198.51.100.9")))
        assert gw.take().startswith(b"XCLIENT ")
        gw.say(b"550 5.7.0 Error: insufficient authorization\r\n")
    error = out.error()
    assert isinstance(error, IdentityConflict) and error.reply is not None and error.reply.code == 550
    assert gw.conn.usable and gw.conn.identity == CLIENT
    assert not gw.conn.can_carry(None)
    assert complete(gw, make_txn(client=CLIENT)).data is not None


def test_xclient_refused_is_tolerated_and_logged_once() -> None:
    gw = Gateway(extensions=XCLIENT_EXTENSIONS, xclient=True, xforward=True)
    with captured_logs() as logs:
        out = gw.deliver(make_txn(client=CLIENT))
        assert gw.take().startswith(b"XCLIENT ")
        gw.say(b"550 5.7.0 Error: insufficient authorization\r\n")
        assert gw.take() == b"MAIL FROM:<a@x.test> SIZE=25\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
        gw.say(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
        gw.take()
        gw.say(b"250 Ok\r\n")
        assert out.result().data is not None
        # Not tried again on this connection.
        gw.deliver(make_txn(client=CLIENT))
        assert gw.take().startswith(b"MAIL FROM:")
    assert sum("XCLIENT refused" in event["log_format"] for event in logs) == 1


def test_xclient_rejection_of_the_client_fails_its_recipients() -> None:
    gw = Gateway(extensions=XCLIENT_EXTENSIONS, xclient=True)
    out = gw.deliver(make_txn(client=CLIENT, recipients=("b@y.test", "c@y.test")))
    gw.take()
    gw.say(b"554 5.7.1 <unknown[192.0.2.7]>: Client host rejected: Access denied\r\n")
    result = out.result()
    assert [reply.code for reply in result.recipients] == [554, 554]
    assert result.data is None
    assert gw.take() == b"QUIT\r\n" and gw.closing
    assert not gw.conn.usable


def test_xclient_refused_part_way_drops_the_connection() -> None:
    client = attrs_evolve(CLIENT, name="n" * 250, helo="h" * 250)
    gw = Gateway(extensions=XCLIENT_EXTENSIONS, xclient=True)
    out = gw.deliver(make_txn(client=client))
    gw.take()
    gw.say(b"220 gw.test ESMTP\r\n")
    gw.take()
    gw.say(b"501 5.5.4 Bad HELO syntax\r\n")
    error = out.error()
    assert error.retry_elsewhere and error.reply is not None and error.reply.code == 501
    assert not gw.conn.usable


def test_xclient_answered_250_needs_no_ehlo() -> None:
    # smtp-sink answers XCLIENT with 250 and keeps the session.
    gw = Gateway(extensions=("PIPELINING", "XCLIENT NAME HELO"), xclient=True)
    out = gw.deliver(make_txn(client=CLIENT))
    assert gw.take() == b"XCLIENT NAME=client.example HELO=helo.example\r\n"
    gw.say(b"250 2.0.0 Ok\r\n")
    assert gw.take().startswith(b"MAIL FROM:")
    gw.say(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
    gw.say(b"250 Ok\r\n")
    assert out.result().data is not None


def test_xclient_after_a_refused_transaction_sends_rset_first() -> None:
    gw = Gateway(extensions=("XCLIENT NAME ADDR",), xclient=True)  # no PIPELINING
    out = gw.deliver(make_txn())
    gw.say(b"250 Ok\r\n", b"550 no\r\n")
    assert out.result().data is None
    gw.take()
    gw.deliver(make_txn(client=CLIENT))
    assert gw.take() == b"RSET\r\n"
    gw.say(b"250 2.0.0 Ok\r\n")
    assert gw.take() == b"XCLIENT NAME=client.example ADDR=192.0.2.7\r\n"
    gw2 = Gateway(extensions=("PIPELINING", "XCLIENT NAME ADDR"), xclient=True)
    gw2.deliver(make_txn())
    gw2.say(b"250 Ok\r\n550 no\r\n554 no\r\n")
    gw2.take()
    gw2.deliver(make_txn(client=CLIENT))
    assert gw2.take() == b"RSET\r\nXCLIENT NAME=client.example ADDR=192.0.2.7\r\n"


def test_xclient_keeps_tls() -> None:
    gw = Gateway(greet=False, tls="required", tls_options=CertificateOptions(), xclient=True)
    gw.say(b"220 gw.test ESMTP\r\n", ehlo("STARTTLS"))
    gw.say(b"220 2.0.0 Ready to start TLS\r\n")
    gw.conn.handshakeCompleted()
    gw.say(ehlo("PIPELINING", "XCLIENT NAME ADDR"))
    assert gw.ready.result() is gw.conn
    gw.take()
    gw.deliver(make_txn(client=CLIENT))
    gw.take()
    gw.say(b"220 gw.test ESMTP\r\n")
    assert gw.take() == b"EHLO relay.test\r\n"
    gw.say(ehlo("PIPELINING", "STARTTLS", "XCLIENT NAME ADDR"))  # even if offered again
    assert gw.take().startswith(b"MAIL FROM:")
    assert gw.conn.tls


def test_xclient_without_a_known_attribute_is_not_used() -> None:
    gw = Gateway(extensions=("PIPELINING", "XCLIENT FUTURE_THING"), xclient=True)
    out = gw.deliver(make_txn())
    gw.say(b"250 Ok\r\n550 no\r\n554 no\r\n")
    assert out.result().data is None
    gw.take()
    gw.deliver(make_txn(client=CLIENT))
    assert gw.take().startswith(b"RSET\r\nMAIL FROM:")  # the RSET is not lost


def test_xclient_not_used_unless_configured_and_offered() -> None:
    gw = Gateway(extensions=XCLIENT_EXTENSIONS)
    gw.deliver(make_txn(client=CLIENT))
    assert gw.take().startswith(b"MAIL FROM:")
    gw2 = Gateway(xclient=True)
    gw2.deliver(make_txn(client=CLIENT))
    assert gw2.take().startswith(b"MAIL FROM:")


# --------------------------------------------------------------------------- XFORWARD


XFORWARD_EXTENSIONS = ("PIPELINING", "XFORWARD NAME ADDR PROTO HELO IDENT SOURCE")


def test_xforward_pipelined_before_mail() -> None:
    gw = Gateway(extensions=XFORWARD_EXTENSIONS, xforward=True)
    out = gw.deliver(make_txn(client=CLIENT, queue_id="4Xq9z"))
    assert gw.transport.writes == [
        b"XFORWARD NAME=client.example ADDR=192.0.2.7 PROTO=ESMTP HELO=helo.example"
        b" IDENT=4Xq9z SOURCE=REMOTE\r\n"
        b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
    ]
    gw.say(b"250 2.0.0 Ok\r\n250 Ok\r\n250 Ok\r\n354 go\r\n")
    gw.say(b"250 Ok\r\n")
    assert out.result().recipients == (SMTPReply(250, "", "Ok"),)


def test_xforward_source_and_missing_identity() -> None:
    local = attrs_evolve(CLIENT, addr="::1")
    assert xforward_commands(local, "Q", ["ADDR", "SOURCE"]) == ["XFORWARD ADDR=IPV6:::1 SOURCE=LOCAL"]
    assert xforward_commands(None, "Q7", ["NAME", "ADDR", "IDENT", "SOURCE"]) == ["XFORWARD IDENT=Q7"]
    unknown = attrs_evolve(CLIENT, addr=None)
    assert xforward_commands(unknown, "Q", ["ADDR", "SOURCE"]) == [
        "XFORWARD ADDR=[UNAVAILABLE] SOURCE=[UNAVAILABLE]"
    ]


def test_xforward_without_pipelining_and_refused() -> None:
    gw = Gateway(extensions=("XFORWARD NAME ADDR",), xforward=True)
    with captured_logs() as logs:
        out = gw.deliver(make_txn(client=CLIENT))
        assert gw.take() == b"XFORWARD NAME=client.example ADDR=192.0.2.7\r\n"
        gw.say(b"550 5.7.0 Error: insufficient authorization\r\n")
        assert gw.take() == b"MAIL FROM:<a@x.test>\r\n"
        gw.say(b"250 Ok\r\n", b"250 Ok\r\n", b"354 go\r\n", b"250 Ok\r\n")
    assert out.result().data is not None
    assert sum("XFORWARD refused" in event["log_format"] for event in logs) == 1


def test_xforward_split_under_512_octets() -> None:
    client = attrs_evolve(CLIENT, name="n" * 250, helo="h" * 250)
    lines = xforward_commands(client, "Q1", ["NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE"])
    assert len(lines) == 2 and all(len(line) + 2 <= MAX_COMMAND_LINE for line in lines)
    assert lines[0].startswith("XFORWARD NAME=nnn") and "HELO=hhh" in lines[1] and "IDENT=Q1" in lines[1]


def test_xforward_not_sent_when_xclient_was_used() -> None:
    gw = Gateway(
        extensions=("PIPELINING", "XCLIENT NAME ADDR", "XFORWARD NAME ADDR IDENT"),
        xclient=True,
        xforward=True,
    )
    gw.deliver(make_txn(client=CLIENT))
    assert gw.take() == b"XCLIENT NAME=client.example ADDR=192.0.2.7\r\n"
    gw.say(b"220 gw.test ESMTP\r\n")
    gw.take()
    gw.say(ehlo("PIPELINING", "XCLIENT NAME ADDR", "XFORWARD NAME ADDR IDENT"))
    assert gw.take().startswith(b"MAIL FROM:")


# --------------------------------------------------------------------------- connect()


def test_connect() -> None:
    reactor = MemoryReactorClock()
    settings = ClientSettings(helo="relay.test", timeout_connect=3.0)
    out = Outcome(connect(reactor, "192.0.2.25", 2525, settings))
    host, port, factory, timeout, _ = reactor.tcpClients[0]
    assert (host, port) == ("192.0.2.25", 2525) and timeout > 3.0  # our timer is the one that counts
    conn = factory.buildProtocol(IPv4Address("TCP", host, port))
    assert isinstance(conn, SMTPClientConnection)
    transport = StringTransport()
    conn.makeConnection(transport)  # type: ignore[no-untyped-call]
    reactor.advance(3.5)  # the connect timeout no longer applies
    conn.dataReceived(b"220 gw ESMTP\r\n")
    conn.dataReceived(ehlo("PIPELINING"))
    assert out.result() is conn
    assert conn.usable and conn.host == "192.0.2.25" and conn.port == 2525
    assert transport.value() == b"EHLO relay.test\r\n"


def test_connect_refused() -> None:
    reactor = MemoryReactorClock()
    out = Outcome(connect(reactor, "192.0.2.25", 25, ClientSettings(helo="relay.test")))
    factory = reactor.tcpClients[0][2]
    factory.clientConnectionFailed(reactor.connectors[0], Failure(neterror.ConnectionRefusedError()))
    error = out.error()
    assert error.retry_elsewhere and "192.0.2.25:25" in str(error)
    assert reactor.getDelayedCalls() == []


def test_connect_timeout() -> None:
    reactor = MemoryReactorClock()
    out = Outcome(connect(reactor, "192.0.2.25", 25, ClientSettings(helo="relay.test", timeout_connect=5.0)))
    reactor.advance(4.9)
    assert not out.done
    reactor.advance(0.2)
    error = out.error()
    assert error.retry_elsewhere and "timeout" in str(error)
    assert reactor.connectors[0].stoppedConnecting
    # The connector then reports the failure: no second result.
    reactor.tcpClients[0][2].clientConnectionFailed(
        reactor.connectors[0], Failure(neterror.ConnectionRefusedError())
    )


def test_connect_bad_banner() -> None:
    reactor = MemoryReactorClock()
    out = Outcome(connect(reactor, "192.0.2.25", 25, ClientSettings(helo="relay.test")))
    conn = reactor.tcpClients[0][2].buildProtocol(None)
    assert isinstance(conn, SMTPClientConnection)
    conn.makeConnection(StringTransport())  # type: ignore[no-untyped-call]
    conn.dataReceived(b"554 5.7.1 You are not welcome\r\n")
    error = out.error()
    assert error.retry_elsewhere and error.reply is not None and error.reply.code == 554


def test_settings_validation() -> None:
    with pytest.raises(ValueError):
        ClientSettings(helo="two words")
    with pytest.raises(ValueError):
        ClientSettings(helo="relay.test", tls="sometimes")
