"""Fuzz targets: one function per parser, taking bytes, raising on a broken property.

Each target takes any ``bytes`` (what atheris and hypothesis's ``st.binary``
produce, or a corpus file) and checks properties that must hold for every
input: only the documented exception types, round trips where they exist,
the same answer however the bytes are split into reads. Anything else it
raises is a finding. The targets are shared by ``tests/test_reliability_fuzz.py``
(hypothesis, bounded, in ``make test``), ``tests/fuzz/run.py`` (``make fuzz``:
hypothesis and atheris for a chosen time) and the seed corpus in
``tests/fuzz/corpus/<target>/``.

Inputs that need more than bytes (flags, limits, where to split) take them
from their first bytes or from a random generator seeded with the input, so
every input is reproducible from its bytes alone.
"""

from __future__ import annotations

import hashlib
import random
import re
import tomllib
from collections.abc import Callable, Iterator
from typing import Any

from twisted.logger import ILogObserver, globalLogPublisher
from zope.interface import provider

from relaybal import proxyproto
from relaybal.config import ConfigError, parse_config
from relaybal.delivery.client import ReplyError, ReplyParser, SMTPReply
from relaybal.smtp import wire
from relaybal.smtp.datascan import DataScanner

#: The targets by name (the corpus directory names).
TARGETS: dict[str, Callable[[bytes], None]] = {}


def target(f: Callable[[bytes], None]) -> Callable[[bytes], None]:
    TARGETS[f.__name__] = f
    return f


def rng_for(data: bytes) -> random.Random:
    """A random generator that depends only on *data*."""
    return random.Random(hashlib.blake2b(data, digest_size=8).digest())


def splits(data: bytes, rng: random.Random, max_single: int = 600) -> Iterator[list[bytes]]:
    """Ways of cutting *data* into reads: whole, one byte at a time (if short), and random cuts."""
    yield [data]
    if len(data) <= max_single:
        yield [data[i : i + 1] for i in range(len(data))]
    for _ in range(2):
        cuts = sorted({rng.randrange(len(data) + 1) for _ in range(rng.randrange(1, 8))}) if data else []
        pieces, start = [], 0
        for cut in [*cuts, len(data)]:
            pieces.append(data[start:cut])
            start = cut
        yield pieces


# --------------------------------------------------------------------------- SMTP commands (wire.py)

_LIMITS = (wire.RFC_LIMITS, wire.Limits(command_line=2048, path=512, local_part=128))


@target
def smtp_command(data: bytes) -> None:
    """A command line: split into verb and arguments, MAIL/RCPT paths and parameters, HELO names."""
    line = data.split(b"\n", 1)[0].removesuffix(b"\r")
    flags = data[-1] if data else 0
    verb, args = wire.split_command(line)
    assert verb == line.partition(b" ")[0].upper() and args == line.partition(b" ")[2]
    limits = _LIMITS[flags & 1]
    for keyword, sender in ((b"FROM", True), (b"TO", False)):
        options = {
            "limits": limits,
            "smtputf8_allowed": bool(flags & 2),
            "null_allowed": sender,
            "postmaster_allowed": not sender,
            "sender": sender,
        }
        try:
            parsed = wire.parse_path_and_params(args, keyword, **options)  # type: ignore[arg-type]
        except wire.CommandError as e:
            check_refusal(e.reply)
            # The fast path only takes what the full grammar takes.
            try:
                wire._parse_path_and_params(args, keyword, **options)  # type: ignore[arg-type]
            except wire.CommandError as full:
                assert full.reply == e.reply
            else:
                raise AssertionError(f"fast path refused what the grammar accepts: {args!r}") from None
            continue
        full_parse = wire._parse_path_and_params(args, keyword, **options)  # type: ignore[arg-type]
        assert full_parse == parsed, (args, parsed, full_parse)
        check_path(parsed, limits, options)
    try:
        name = wire.check_helo_name(args)
    except wire.CommandError as e:
        check_refusal(e.reply)
    else:
        assert name and " " not in name and name.isascii() and len(name) <= 255


def check_refusal(reply: wire.Reply) -> None:
    assert reply.code in (501, 553, 555), reply
    assert re.fullmatch(r"5\.\d\.\d{1,2}", reply.status), reply
    assert reply.text and "\n" not in reply.text, reply
    # The refused argument may be echoed; what goes on the wire has no control character but its CRLF.
    wire_form = reply.encode()
    assert wire_form.endswith(b"\r\n") and not re.search(rb"[\x00-\x1f\x7f]", wire_form[:-2]), wire_form


def check_path(parsed: wire.ParsedPath, limits: wire.Limits, options: dict[str, Any]) -> None:
    mailbox = parsed.mailbox
    if not options["smtputf8_allowed"]:
        assert not mailbox.utf8, mailbox
    if mailbox.domain:
        assert len(mailbox.local.encode()) <= limits.local_part
        assert len(mailbox.domain.encode()) <= limits.domain
    # Round trip: the mailbox and parameters written back in canonical form parse to the same.
    params = "".join(f" {k}={v}" if v is not None else f" {k}" for k, v in parsed.params.items())
    path = "<>" if mailbox == wire.NULL_SENDER else f"<{mailbox}>"
    keyword = b"FROM" if options["sender"] else b"TO"
    again = wire.parse_path_and_params(keyword + b":" + (path + params).encode(), keyword, **options)
    assert again == parsed, (parsed, again)
    if "AUTH" in parsed.params and parsed.params["AUTH"] is not None:
        try:
            wire.xtext_decode(parsed.params["AUTH"])
        except wire.CommandError as e:
            check_refusal(e.reply)


# --------------------------------------------------------------------------- the DATA scanner


def _scan(body: bytes, pieces: list[bytes], flags: int, max_line: int, max_size: int) -> tuple[Any, ...]:
    out: list[bytes] = []
    scanner = DataScanner(out.append, normalize=bool(flags & 1), max_line=max_line, max_size=max_size,
                          after_crlf=bool(flags & 2))  # fmt: skip
    rest: bytes | None = None
    if flags & 4:  # BDAT: raw pieces, then the end
        for piece in pieces:
            scanner.feed_raw(piece)
        scanner.finish_raw()
    else:
        for i, piece in enumerate(pieces):
            rest = scanner.feed(piece)
            if rest is not None:
                rest += b"".join(pieces[i + 1 :])
                break
    emitted = b"".join(out)
    assert scanner.error is not None or scanner.size == len(emitted)
    return emitted, scanner.error, scanner.done, rest


@target
def datascan(data: bytes) -> None:
    """A message body: the same result for any split into reads; what is passed on is clean."""
    if len(data) < 3:
        return
    flags, max_line, max_size = data[0], 3 + data[1] % 200, 1 + data[2] * 64
    body = data[3:]
    rng = rng_for(data)
    results = [_scan(body, pieces, flags, max_line, max_size) for pieces in splits(body, rng)]
    emitted, error, done, rest = results[0]
    for other in results[1:]:
        # Whether the body is refused, where it ends and what follows never depend on the split.
        # (What was passed on before a refusal does, and so may the reason when a body has two
        # problems, a long line and a bare LF say: the first one found is reported.)
        assert (other[1] is None, other[2], other[3]) == (error is None, done, rest), (results[0], other)
        if error is None:
            assert other[0] == emitted, (results[0], other)
    if error is None:
        # Clean CRLF lines without NUL, each within the limit.
        assert b"\x00" not in emitted
        assert emitted.count(b"\r") == emitted.count(b"\n") == emitted.count(b"\r\n")
        assert not emitted or emitted.endswith(b"\r\n") or not done
        assert len(emitted) <= max_size
        # (normalize makes a lone LF or CR two octets: such a line may come out one octet longer)
        longest = max_line + (flags & 1)
        assert all(len(line) + 2 <= longest for line in emitted.split(b"\r\n")[:-1])
    if not flags & 4:
        # DATA ends at the first CRLF.CRLF as sent (the CRLF before it may be the command's).
        work = (b"\r\n" if flags & 2 else b"") + body
        end = work.find(b"\r\n.\r\n")
        assert done == (end >= 0)
        assert rest == (work[end + 5 :] if end >= 0 else None), (rest, end)
        if error is None and done:
            # Stuffing what came out again and scanning it gives it back.
            again = _scan(wire.dot_stuff(emitted), [wire.dot_stuff(emitted)], 2, 1 << 30, 1 << 30)
            assert again == (emitted, None, True, b""), again


# --------------------------------------------------------------------------- the client's reply parser


def _parse_replies(pieces: list[bytes]) -> tuple[list[SMTPReply], bool, bool]:
    parser = ReplyParser()
    replies: list[SMTPReply] = []
    try:
        for piece in pieces:
            replies += parser.feed(piece)
    except ReplyError:
        return replies, True, True
    return replies, False, parser.pending


@target
def reply_parser(data: bytes) -> None:
    """A gateway's replies: same replies however split; encoded replies parse back."""
    rng = rng_for(data)
    outcomes = [_parse_replies(pieces) for pieces in splits(data, rng)]
    whole = outcomes[0]
    for other in outcomes[1:]:
        if whole[1]:
            # A refusal happens whatever the split; the replies before it are the same ones.
            assert other[1], (whole, other)
        else:
            assert other == whole, (whole, other)
    for reply in whole[0]:
        assert 200 <= reply.code <= 599
        assert not reply.status or reply.status[0] == str(reply.code)[0]
    # Round trip: a reply as relaybal would write it.
    if len(data) >= 2:
        code = 200 + data[0] % 400
        text = "".join(chr(32 + b % 95) for b in data[2:200])
        lines = "\n".join(part for part in text.split("~") if part) or "ok"
        # RFC 3463 classes are 2, 4 and 5: a 3xx reply has no enhanced status code.
        status = f"{code // 100}.{data[1] % 8}.{data[1] % 11}" if data[1] & 1 and code // 100 != 3 else ""
        if status or not re.match(r"[245]\.\d{1,3}\.\d{1,3}( |$)", lines):
            parsed = ReplyParser().feed(wire.reply(code, status, lines))
            assert parsed == [SMTPReply(code, status, lines)], (code, status, lines, parsed)


# --------------------------------------------------------------------------- the PROXY reader


@target
def proxy_header(data: bytes) -> None:
    """A PROXY v1/v2 header: well-formed answers, stable as bytes arrive, re-encoding round trips."""
    result = proxyproto.parse(data)
    check_proxy_result(data, result)
    decided: proxyproto.ParseResult | None = None
    for end in range(min(len(data), 300) + 1):
        partial = proxyproto.parse(data[:end])
        check_proxy_result(data[:end], partial)
        if decided is None:
            if not isinstance(partial, proxyproto.Incomplete):
                decided = partial
        elif isinstance(decided, proxyproto.Invalid):
            assert isinstance(partial, proxyproto.Invalid), (data[:end], decided, partial)
        else:
            assert partial == decided, (data[:end], decided, partial)
    if isinstance(result, proxyproto.Parsed) and result.header.family in ("TCP4", "TCP6"):
        header = result.header
        for encode in (proxyproto.encode_v1, proxyproto.encode_v2):
            again = proxyproto.parse(encode(header.source, header.destination))
            assert isinstance(again, proxyproto.Parsed), (header, again)
            assert (again.header.source, again.header.destination) == (header.source, header.destination)


def check_proxy_result(buffer: bytes, result: proxyproto.ParseResult) -> None:
    assert isinstance(result, proxyproto.Incomplete | proxyproto.Invalid | proxyproto.Parsed)
    if isinstance(result, proxyproto.Parsed):
        assert 0 < result.consumed <= len(buffer)
        assert result.header.version in (1, 2)
        assert (result.header.source is None) == (result.header.destination is None)
    if isinstance(result, proxyproto.Invalid):
        assert result.reason


# --------------------------------------------------------------------------- the config loader


@target
def config(data: bytes) -> None:
    """A configuration file: either a Config or a ConfigError listing problems, nothing else."""
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return  # load_config reports these as "not UTF-8" / "not valid TOML"
    check_config_document(document)


def check_config_document(document: dict[str, Any]) -> None:
    try:
        first = parse_config(document, "fuzz.toml")
    except ConfigError as e:
        assert e.problems
        for line in e.lines():
            assert line.startswith("fuzz.toml: ") and "\n" not in line
        return
    assert first.frontends
    for frontend in first.frontends.values():
        assert frontend.backend in first.backends
    assert repr(parse_config(document, "fuzz.toml")) == repr(first)  # deterministic


# --------------------------------------------------------------------------- a whole SMTP session


_ENHANCED = re.compile(rb"[2-5]\d\d[ -][245]\.\d{1,3}\.\d{1,3}( |$)")
# The replies RFC 2034 leaves without a status: greeting, EHLO/HELO, 334, 354.
_NO_STATUS = re.compile(rb"220 relay\.test |250[ -](relay\.test( |$)|[A-Z0-9][A-Z0-9-]*( |$))|334 |354 ")


class _Failures:
    """Log events carrying a failure (an exception a session did not expect)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.installed = False

    def install(self) -> None:
        if not self.installed:

            @provider(ILogObserver)
            def observe(event: dict[str, Any]) -> None:
                if "log_failure" in event and str(event.get("log_namespace", "")).startswith("relaybal"):
                    self.events.append(event)

            globalLogPublisher.addObserver(observe)
            self.installed = True


_failures = _Failures()
_harness: Any = None


def _session_harness() -> Any:
    global _harness
    if _harness is None:
        from relaybal.relay.testing import RelayHarness

        _failures.install()
        _harness = RelayHarness(
            tls=True, users={"alice": "wonderland"}, allow_plaintext_auth=True, max_recipients=5,
            max_message_size="64K", max_line_length=1000, accept_proxy=["192.0.2.9"], maxconn_per_client=5,
        )  # fmt: skip
    return _harness


@target
def smtp_session(data: bytes) -> None:
    """Bytes from a client, in reads, to a real session: well-formed replies, no internal error, no leak."""
    harness = _session_harness()
    rng = rng_for(data)
    source = "192.0.2.9" if data[:1] == b"P" else "127.0.0.1"  # "P...": a PROXY header is expected
    before = len(_failures.events)
    client = harness.connect(source)
    pieces = list(splits(data, rng, max_single=0))[data[-1] % 3 if data else 0]
    out = bytearray()
    for piece in pieces:
        if client.closed:
            break
        client.send(piece)
        out += client.output()
        if rng.random() < 0.1:
            harness.reactor.advance(rng.choice([1, 30, 200, 400]))
            out += client.output()
    if rng.random() < 0.5:
        harness.sink.release()
    out += client.output()
    client.lose()
    harness.reactor.advance(0)
    failures = _failures.events[before:]
    assert not failures, failures[0].get("log_failure")
    check_session_output(bytes(out))
    assert harness.frontend.current == 0, "a closed session is still counted"
    assert not harness.frontend.per_client, f"closed sessions still counted: {harness.frontend.per_client}"
    for message in harness.sink.messages:
        body = message.data
        assert body.startswith(b"Received: ") and b"\x00" not in body
        assert body.count(b"\r") == body.count(b"\n") == body.count(b"\r\n")
    harness.sink.messages.clear()
    harness.sink.writers.clear()
    harness.sink.pending.clear()


def check_session_output(out: bytes) -> None:
    lines = out.split(b"\r\n")
    assert lines[-1] == b"", f"a reply without its CRLF: {lines[-1][:80]!r}"
    for line in lines[:-1]:
        assert b"\n" not in line and b"\r" not in line
        assert _ENHANCED.match(line) or _NO_STATUS.match(line), line[:120]


__all__ = ["TARGETS", "check_config_document", "rng_for", "splits"]
