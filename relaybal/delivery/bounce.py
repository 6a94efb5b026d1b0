"""Bounces: the delivery status notifications owed to a sender whose message failed.

:func:`build_bounce` writes a complete RFC 5322 message to be sent from the
null sender ``<>`` to the original sender: a ``multipart/report`` (RFC 6522)
of three parts, as Postfix sends them:

1. ``text/plain``: an explanation for people, one paragraph per recipient;
2. ``message/delivery-status`` (RFC 3464): the same for programs, one block
   of fields for the message and one per recipient;
3. ``text/rfc822-headers``: the header section of the returned message.

For a message that came with SMTPUTF8 the second and third parts are
``message/global-delivery-status`` and ``message/global-headers``
(RFC 6533), the report type ``global-delivery-status``, and UTF-8 appears as
it is; otherwise the message is 7-bit: a non-ASCII address is written in
RFC 6533's ``utf-8-addr-xtext`` form (``\\x{HEX}``), other non-ASCII text in
the delivery-status part likewise, and the text parts are quoted-printable.

Every value put in comes from outside (addresses, the gateways' replies,
the original headers) and is made safe first: control characters, CR and LF
among them, become spaces, so that nothing can start a header field or a
MIME part of its own; long fields are folded and no line is longer than 998
octets; the MIME boundary is checked against everything it encloses.
:func:`needs_bounce` says whether a bounce is owed at all and
:func:`original_headers` takes the header section to return from the start
of a stored body.
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import itertools
import re
import textwrap
from collections.abc import Iterable, Sequence

import attrs

__all__ = [
    "HEADERS_LIMIT",
    "FailedRecipient",
    "build_bounce",
    "derive_status",
    "needs_bounce",
    "original_headers",
]

#: How much of the original header section is returned by default (octets).
HEADERS_LIMIT = 65536

#: The longest line RFC 5322 allows, CRLF excluded (section 2.1.1).
MAX_LINE = 998
#: The width header fields are folded to when they can be (RFC 5322 section 2.1.1).
FOLD_WIDTH = 78
#: The width the explanation is wrapped to.
TEXT_WIDTH = 72

_ACTIONS = ("failed", "delayed")
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_REPLY = re.compile(r"([245])\d\d(?:[ -]|$)")
_REPLY_STATUS = re.compile(r"[245]\d\d[ -]([245]\.\d{1,3}\.\d{1,3})(?:\s|$)")
# Characters never let into a header or a text line: C0 and C1 controls (CR, LF,
# TAB, NUL, NEL...) and the Unicode line and paragraph separators.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SURROGATES = re.compile("[\ud800-\udfff]")
_SPACES = re.compile(" {2,}")
_LINE_END = re.compile(rb"\r\n|\r|\n")
# A header field's first line: a name of printable ASCII but ":", then ":"
# (spaces before the colon are obsolete syntax, still met).
_FIELD_START = re.compile(rb"[!-9;-~]+[ \t]*:")
_NOT_ATEXT = re.compile(r"[^A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]")
_NOT_BCHARS = re.compile(r"[^A-Za-z0-9._-]")
# RFC 6533 QCHAR: printable ASCII except "\", "+" and "=".
_QCHAR = frozenset(chr(c) for c in range(0x21, 0x7F)) - {"\\", "+", "="}


@attrs.frozen
class FailedRecipient:
    """One recipient a bounce (or a delay warning) reports on.

    ``address`` is the recipient as given in ``RCPT TO``, without the angle
    brackets. ``status`` is its RFC 3463 enhanced status code (``5.1.1``); one
    that is empty or malformed is replaced by :func:`derive_status`.
    ``diagnostic`` is the reply of the gateway that refused it (``550 5.1.1
    <bob@example.com>: Recipient address rejected``) or another explanation,
    None when there is none; ``remote_mta`` names that gateway. ``action``
    is ``failed`` (given up) or ``delayed`` (still being retried).
    """

    address: str
    status: str
    diagnostic: str | None
    remote_mta: str | None
    action: str = attrs.field(default="failed", validator=attrs.validators.in_(_ACTIONS))


def needs_bounce(sender: str) -> bool:
    """Whether a failure is reported to ``sender``: never to the null sender ``""``.

    A message from the null sender is itself a notification and is never
    answered with another (RFC 5321 section 6.1, RFC 3464 section 2.1).
    Only the empty string is the null sender; any other address, however
    robotic its name, gets its bounce.
    """
    return sender != ""


def derive_status(diagnostic: str | None, action: str = "failed") -> str:
    """An RFC 3463 status for a recipient whose status is not known.

    The enhanced code of ``diagnostic`` when it is an SMTP reply carrying one
    (``550 5.1.1 ...`` gives ``5.1.1``); otherwise the class of its reply code
    (``450 ...`` gives ``4.0.0``); with no reply at all, ``5.0.0`` for a
    failed recipient and ``4.0.0`` for a delayed one.
    """
    if diagnostic:
        text = diagnostic.strip()
        found = _REPLY_STATUS.match(text)
        if found:
            return found.group(1)
        reply = _REPLY.match(text)
        if reply and reply.group(1) in "45":
            return f"{reply.group(1)}.0.0"
    return "4.0.0" if action == "delayed" else "5.0.0"


def original_headers(body_prefix: bytes, limit: int = HEADERS_LIMIT) -> bytes:
    """The header section at the start of a stored message body, to return in a bounce.

    ``body_prefix`` is the start of the body (CRLF lines, as the spool keeps
    it). The section ends before the blank line that ends it, or before the
    first line that is neither a header field nor the continuation of one (a
    message without headers returns nothing). A last line with no line end is
    taken to be cut off and is left out. The result is at most ``limit``
    octets: it stops at the end of the last whole line that fits. Lines end
    with CRLF (bare CR or LF ends are made CRLF).
    """
    out = bytearray()
    for line in _header_section(body_prefix, keep_unterminated=False):
        if len(out) + len(line) + 2 > limit:
            break
        out += line + b"\r\n"
    return bytes(out)


def build_bounce(
    *,
    queue_id: str,
    sender: str,
    recipients: Sequence[FailedRecipient],
    reporting_mta: str,
    arrival_date: float,
    now: float,
    original_headers: bytes,
    original_envelope_id: str | None = None,
    smtputf8: bool = False,
) -> bytes:
    """A delivery status notification to ``sender`` about ``recipients`` of message ``queue_id``.

    The result is a whole message (CRLF line ends, lines of at most 998
    octets) to be sent from the null sender to ``sender``. Its subject is
    ``Undelivered Mail Returned to Sender``, or ``Delayed Mail (still being
    retried)`` when every recipient is ``delayed``. ``reporting_mta`` is this
    host's name; ``arrival_date`` and ``now`` are seconds since the epoch (the
    message's arrival, and the last attempt and the report's date);
    ``original_headers`` is the header section to return (see
    :func:`original_headers`); ``original_envelope_id`` is the ENVID the
    client gave. ``smtputf8`` says the message came with SMTPUTF8, so the
    report may (and does) use the RFC 6533 types and raw UTF-8; the result is
    then 8-bit when anything in it is. Without it the result is pure ASCII,
    unless ``sender`` itself is not: an address cannot be encoded, so it goes
    into ``To:`` as it is (such a sender only comes with SMTPUTF8 anyway).

    Raises ValueError when ``recipients`` is empty.
    """
    if not recipients:
        raise ValueError("a bounce reports on at least one recipient")
    host = _host(reporting_mta, smtputf8)
    failed = [r for r in recipients if r.action == "failed"]
    delayed = [r for r in recipients if r.action == "delayed"]

    notification = _text_part(host, failed, delayed, smtputf8)
    report = _report_part(
        host,
        queue_id,
        recipients,
        arrival_date=arrival_date,
        now=now,
        envelope_id=original_envelope_id,
        smtputf8=smtputf8,
    )
    returned = _headers_part(original_headers, smtputf8, undelivered=bool(failed))
    preamble = b"This is a MIME-encapsulated message.\r\n"
    parts = [notification, report, returned]
    boundary = _boundary(queue_id, now, host, [preamble, *parts])

    # The parts not in 8bit are ASCII (7bit or quoted-printable).
    eight_bit = not all(part.isascii() for part in parts)
    subject = "Delayed Mail (still being retried)" if not failed else "Undelivered Mail Returned to Sender"
    report_type = "global-delivery-status" if smtputf8 else "delivery-status"
    message_id = f"<{_atext(queue_id, 'bounce')[:64]}.{_stamp(now)}@{_atext(host, 'localhost')[:255]}>"
    header_lines = [
        *_fold("Date", _date(now)),
        *_fold("From", f"MAILER-DAEMON@{host} (Mail Delivery System)"),
        *_fold("Subject", subject),
        *_fold("To", f"<{_clean(sender)}>"),
        "Auto-Submitted: auto-replied",
        *_fold("Message-ID", message_id),
        "MIME-Version: 1.0",
        f"Content-Type: multipart/report; report-type={report_type};",
        f'\tboundary="{boundary}"',
        f"Content-Transfer-Encoding: {'8bit' if eight_bit else '7bit'}",
    ]
    out = bytearray(_crlf(header_lines))
    out += b"\r\n" + preamble
    delimiter = b"\r\n--" + boundary.encode("ascii")
    for part in parts:
        # Each part ends with CRLF; the CRLF before the delimiter belongs to it (RFC 2046).
        out += delimiter + b"\r\n" + part
    out += delimiter + b"--\r\n"
    return bytes(out)


# -- the three parts ----------------------------------------------------------


def _text_part(
    host: str, failed: list[FailedRecipient], delayed: list[FailedRecipient], smtputf8: bool
) -> bytes:
    """The explanation for people."""
    paragraphs = [f"This is the mail system at host {host}."]
    if failed:
        paragraphs += [
            "I'm sorry to have to inform you that your message could not be delivered to one or more "
            "recipients. The header section of your message is attached below.",
        ]
    else:
        paragraphs += [
            "This is only a warning: you do not need to send your message again.",
            "Your message could not be delivered yet to one or more recipients. The mail system keeps "
            "trying to deliver it. The header section of your message is attached below.",
        ]
    paragraphs += [
        "For further assistance, please send mail to postmaster. If you do so, please include this "
        "problem report.",
    ]
    lines: list[str] = []
    for paragraph in paragraphs:
        lines += [*textwrap.wrap(paragraph, TEXT_WIDTH), ""]
    lines += [" " * 19 + "The mail system", ""]
    if failed:
        lines += _recipient_paragraphs(failed)
    if delayed:
        if failed:
            lines += [
                *textwrap.wrap(
                    "Delivery to the following recipients is delayed; the mail system keeps trying, so you "
                    "do not need to send your message to them again:",
                    TEXT_WIDTH,
                ),
                "",
            ]
        lines += _recipient_paragraphs(delayed)
    while lines and not lines[-1]:
        lines.pop()
    body = [piece for line in lines for piece in _cut_octets(line, MAX_LINE)]
    text = "\r\n".join(body) + "\r\n"
    charset = "us-ascii" if text.isascii() else "utf-8"
    encoding, payload = _encode(text.encode("utf-8"), smtputf8)
    headers = ["Content-Description: Notification", f"Content-Type: text/plain; charset={charset}"]
    return _part(headers, encoding, payload)


def _recipient_paragraphs(recipients: Iterable[FailedRecipient]) -> list[str]:
    wrapper = textwrap.TextWrapper(
        width=TEXT_WIDTH, subsequent_indent="    ", break_long_words=False, break_on_hyphens=False
    )
    lines: list[str] = []
    for r in recipients:
        address = f"<{_clean(r.address)}>"
        diagnostic = _clean(r.diagnostic or "")
        mta = _clean(r.remote_mta or "")
        if diagnostic and mta:
            text = f"{address}: host {mta} said: {diagnostic}"
        elif diagnostic:
            text = f"{address}: {diagnostic}"
        else:
            verb = "failed" if r.action == "failed" else "delayed"
            text = f"{address}: delivery {verb} (status {_status(r)})"
        lines += [*wrapper.wrap(text), ""]
    return lines


def _report_part(
    host: str,
    queue_id: str,
    recipients: Sequence[FailedRecipient],
    *,
    arrival_date: float,
    now: float,
    envelope_id: str | None,
    smtputf8: bool,
) -> bytes:
    """The delivery-status part (RFC 3464, RFC 6533): per-message fields, then a block per recipient."""

    def field(name: str, value: str) -> list[str]:
        value = _clean(value)
        return _fold(name, value if smtputf8 else _escape(value))

    lines = [*field("Reporting-MTA", f"dns; {host}"), *field("X-Relaybal-Queue-ID", queue_id)]
    if envelope_id is not None and _clean(envelope_id):
        lines += field("Original-Envelope-Id", envelope_id)
    lines += field("Arrival-Date", _date(arrival_date))
    for r in recipients:
        lines.append("")
        lines += _fold("Final-Recipient", _typed_address(r.address, smtputf8))
        lines += field("Action", r.action)
        lines += field("Status", _status(r))
        mta = _clean(r.remote_mta or "")
        if mta:
            lines += field("Remote-MTA", f"dns; {mta}")
        diagnostic = _clean(r.diagnostic or "")
        if diagnostic:
            kind = "smtp" if _REPLY.match(diagnostic) else "X-Relaybal"
            lines += field("Diagnostic-Code", f"{kind}; {diagnostic}")
        lines += field("Last-Attempt-Date", _date(now))
    payload = _crlf(lines)
    encoding = "7bit" if payload.isascii() else "8bit"
    kind = "message/global-delivery-status" if smtputf8 else "message/delivery-status"
    return _part(["Content-Description: Delivery report", f"Content-Type: {kind}"], encoding, payload)


def _headers_part(data: bytes, smtputf8: bool, *, undelivered: bool) -> bytes:
    """The returned header section: whole lines, none longer than 998 octets."""
    section = _header_section(data, keep_unterminated=True)
    lines = [piece for line in section for piece in _split_header_line(line)]
    payload = b"".join(line + b"\r\n" for line in lines)
    encoding, payload = _encode(payload, smtputf8)
    kind = "message/global-headers" if smtputf8 else "text/rfc822-headers"
    description = "Undelivered Message Headers" if undelivered else "Message Headers"
    return _part([f"Content-Description: {description}", f"Content-Type: {kind}"], encoding, payload)


def _part(headers: list[str], encoding: str, payload: bytes) -> bytes:
    """A MIME body part: its header fields, a blank line, its content; ending with CRLF."""
    if encoding != "7bit":
        headers = [*headers, f"Content-Transfer-Encoding: {encoding}"]
    if payload and not payload.endswith(b"\r\n"):
        payload += b"\r\n"
    return _crlf(headers) + b"\r\n" + payload


# -- header sections ------------------------------------------------------------


def _header_section(data: bytes, *, keep_unterminated: bool) -> list[bytes]:
    """The lines (without their ends) of the header section at the start of ``data``."""
    lines: list[bytes] = []
    start = 0
    for end in _LINE_END.finditer(data):
        line = data[start : end.start()]
        if not _is_header_line(line, first=not lines):
            return lines
        lines.append(line)
        start = end.end()
    rest = data[start:]
    if rest and keep_unterminated and _is_header_line(rest, first=not lines):
        lines.append(rest)
    return lines


def _is_header_line(line: bytes, *, first: bool) -> bool:
    if not line:
        return False
    if line[:1] in (b" ", b"\t"):
        return not first
    return _FIELD_START.match(line) is not None


def _split_header_line(line: bytes) -> list[bytes]:
    """``line`` as lines of at most 998 octets: the pieces after the first become continuation lines."""
    pieces: list[bytes] = []
    while len(line) > (MAX_LINE if not pieces else MAX_LINE - 1):
        room = MAX_LINE if not pieces else MAX_LINE - 1
        cut = room
        # Cut before a UTF-8 sequence rather than inside one, when the line is UTF-8.
        while cut > room - 3 and 0x80 <= line[cut] < 0xC0:
            cut -= 1
        if 0x80 <= line[cut] < 0xC0:
            cut = room
        pieces.append(line[:cut] if not pieces else b" " + line[:cut])
        line = line[cut:]
    pieces.append(line if not pieces else b" " + line)
    return pieces


# -- values ---------------------------------------------------------------------


def _clean(value: str) -> str:
    """``value`` on one line: control characters made spaces, runs of spaces made one, ends trimmed."""
    value = _SURROGATES.sub("\ufffd", value)
    return _SPACES.sub(" ", _CONTROLS.sub(" ", value)).strip(" ")


def _escape(value: str) -> str:
    """``value`` in ASCII: each other character as ``\\x{HEX}`` (the RFC 6533 notation)."""
    if value.isascii():
        return value
    return "".join(c if c.isascii() else f"\\x{{{ord(c):02X}}}" for c in value)


def _typed_address(address: str, smtputf8: bool) -> str:
    """A Final-Recipient value: ``rfc822; addr``, or RFC 6533's ``utf-8; addr`` for a non-ASCII one.

    Without SMTPUTF8 the non-ASCII address takes the 7-bit ``utf-8-addr-xtext`` form.
    """
    address = _clean(address)
    if address.isascii():
        return f"rfc822; {address}"
    if smtputf8:
        return f"utf-8; {address}"
    return "utf-8; " + "".join(c if c in _QCHAR else f"\\x{{{ord(c):02X}}}" for c in address)


def _status(recipient: FailedRecipient) -> str:
    status = recipient.status.strip()
    if _STATUS.fullmatch(status):
        return status
    return derive_status(recipient.diagnostic, recipient.action)


def _host(name: str, smtputf8: bool) -> str:
    """The reporting host's name as one word, in ASCII unless SMTPUTF8 allows more."""
    host = _clean(name).replace(" ", "")
    if not host.isascii() and not smtputf8:
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            host = host.encode("ascii", "replace").decode("ascii")
    return host or "localhost"


def _atext(value: str, default: str) -> str:
    """``value`` as a dot-atom (for a Message-ID): other characters dropped."""
    value = re.sub(r"\.{2,}", ".", _NOT_ATEXT.sub("", value)).strip(".")
    return value or default


def _date(when: float) -> str:
    return email.utils.format_datetime(datetime.datetime.fromtimestamp(when, datetime.UTC))


def _stamp(when: float) -> str:
    moment = datetime.datetime.fromtimestamp(when, datetime.UTC)
    return moment.strftime("%Y%m%d%H%M%S.%f")


def _boundary(queue_id: str, now: float, host: str, contents: Sequence[bytes]) -> str:
    """A MIME boundary found in none of ``contents`` (compared without regard to case).

    Postfix's shape, queue ID, time and host, with a digest of the contents
    after it: text cannot hold the digest of itself, and it is checked anyway.
    """
    prefix = f"{_NOT_BCHARS.sub('_', queue_id)[:20]}.{str(int(now))[:11]}/{_NOT_BCHARS.sub('_', host)[:20]}"
    lowered = b"".join(c.lower() for c in contents)
    for attempt in itertools.count():
        digest = hashlib.sha256(lowered + attempt.to_bytes(8, "big")).hexdigest()[:16]
        candidate = f"{prefix}={digest}"
        if candidate.lower().encode("ascii") not in lowered:
            return candidate
    raise AssertionError("unreachable")  # pragma: no cover


# -- lines and encodings -----------------------------------------------------------


def _octets(text: str) -> int:
    return len(text.encode("utf-8"))


def _cut_octets(text: str, limit: int) -> list[str]:
    """``text`` in pieces of at most ``limit`` octets (UTF-8), cut between characters."""
    if _octets(text) <= limit:
        return [text]
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for c in text:
        n = _octets(c)
        if size + n > limit:
            pieces.append("".join(current))
            current, size = [], 0
        current.append(c)
        size += n
    pieces.append("".join(current))
    return pieces


def _fold(name: str, value: str) -> list[str]:
    """The field ``name: value`` as lines: folded at spaces to 78 octets where a word allows,
    and never longer than 998 octets (a longer word is cut, a space put in its cut)."""
    lines: list[str] = []
    current = f"{name}:"
    first = True
    for word in value.split(" ") if value else ():
        piece = " " + word
        if not first and _octets(current + piece) > FOLD_WIDTH:
            lines.append(current)
            current = ""
        while _octets(current + piece) > MAX_LINE:
            head, rest = _split_at(piece, MAX_LINE - _octets(current))
            lines.append(current + head)
            current, piece = "", " " + rest
        current += piece
        first = False
    lines.append(current)
    return lines


def _split_at(text: str, room: int) -> tuple[str, str]:
    """The longest start of ``text`` of at most ``room`` octets, and the rest."""
    size = 0
    for index, c in enumerate(text):
        size += _octets(c)
        if size > room:
            return text[:index], text[index:]
    return text, ""


def _crlf(lines: Iterable[str]) -> bytes:
    return "".join(line + "\r\n" for line in lines).encode("utf-8")


def _encode(data: bytes, smtputf8: bool) -> tuple[str, bytes]:
    """A transfer encoding for text ``data`` (CRLF lines of at most 998 octets) and the data in it.

    7bit for ASCII; 8bit for UTF-8 when SMTPUTF8 (so 8BITMIME) can carry it;
    otherwise quoted-printable, which keeps the message 7-bit. NUL is never
    sent as it is.
    """
    if b"\x00" not in data:
        if data.isascii():
            return "7bit", data
        if smtputf8:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                pass
            else:
                return "8bit", data
    return "quoted-printable", _quoted_printable(data)


def _quoted_printable(data: bytes) -> bytes:
    """RFC 2045 quoted-printable of CRLF lines: encoded lines of at most 76 octets."""
    out = bytearray()
    lines = data.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for line in lines:
        current = bytearray()
        last = len(line) - 1
        for index, byte in enumerate(line):
            plain = (0x21 <= byte <= 0x7E and byte != 0x3D) or (byte in (0x09, 0x20) and index != last)
            token = bytes((byte,)) if plain else b"=%02X" % byte
            if len(current) + len(token) > 75:
                out += current + b"=\r\n"
                current = bytearray()
            current += token
        out += current + b"\r\n"
    return bytes(out)
