"""SMTP on the wire, without a reactor: replies, command and path parsing, dot-stuffing.

Everything here is a pure function of its input. The grammar is RFC 5321
(section 4.1.2 for paths, 4.5.3.1 for limits), extended by RFC 6531 (SMTPUTF8:
UTF-8 in local parts and domains, only when the transaction asked for it),
RFC 1870 (``SIZE``), RFC 6152 (``8BITMIME``) and RFC 4954 (``AUTH=`` on MAIL,
xtext-encoded).

Parsing problems raise :class:`CommandError` carrying the exact reply the
server sends, so the protocol layer never invents wording of its own.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Final

import attrs

# --------------------------------------------------------------------------- replies


# Control characters (C0 but the newline that separates reply lines, DEL, C1) and the Unicode
# line separators: never sent in a reply, whoever wrote its text.
_REPLY_CONTROLS: Final = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def reply(code: int, status: str, text: str) -> bytes:
    """One SMTP reply, ready to send.

    ``status`` is the RFC 3463 enhanced status code (``"2.0.0"``), or ``""``
    for the replies that carry none (greeting, EHLO/HELO, ``334``, ``354``).
    A ``text`` with newlines becomes a multi-line reply, each line prefixed
    with ``code-`` except the last (``code SP``); each line gets the status.
    Any other control character in ``text`` (a CR from an echoed client
    argument, say) is sent as ``?``.
    """
    lines = _REPLY_CONTROLS.sub("?", text).split("\n")
    prefix = f"{status} " if status else ""
    out = [f"{code}-{prefix}{line}\r\n" for line in lines[:-1]]
    out.append(f"{code} {prefix}{lines[-1]}\r\n")
    return "".join(out).encode("utf-8")


@attrs.frozen
class Reply:
    """A reply as a value: what a policy decision or a sink error answers with."""

    code: int
    status: str
    text: str

    def encode(self) -> bytes:
        """The wire form (see :func:`reply`)."""
        return reply(self.code, self.status, self.text)

    @property
    def positive(self) -> bool:
        """2xx (and 3xx) replies let the command proceed."""
        return self.code < 400


class CommandError(Exception):
    """A command could not be accepted; ``reply`` is what the server answers."""

    def __init__(self, code: int, status: str, text: str) -> None:
        super().__init__(f"{code} {status} {text}")
        self.reply = Reply(code, status, text)


# --------------------------------------------------------------------------- limits


@attrs.frozen
class Limits:
    """Sizes a server accepts; the defaults are RFC 5321 section 4.5.3.1's minimums.

    ``command_line`` and ``text_line`` count octets including the CRLF;
    ``path`` includes the angle brackets. A server may raise every one of
    them (the RFC says to avoid limits where possible) but never lower them.
    """

    command_line: int = 512
    text_line: int = 1000
    path: int = 256
    local_part: int = 64
    domain: int = 255


RFC_LIMITS: Final = Limits()

# --------------------------------------------------------------------------- commands


def split_command(line: bytes) -> tuple[bytes, bytes]:
    """``(VERB, arguments)`` of a command line without its line ending.

    The verb is upper-cased; arguments are what follows the first space (none
    for ``b"QUIT"``). ``MAIL FROM:`` and ``RCPT TO:`` keep their ``FROM:``/``TO:``
    in the arguments.
    """
    verb, _, args = line.partition(b" ")
    return verb.upper(), args


# --------------------------------------------------------------------------- paths

# RFC 5321 atext plus, for SMTPUTF8 (RFC 6531), every non-ASCII character.
_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~"
_UTF8 = "\u0080-\U0010ffff"
_QTEXT = r"\x20\x21\x23-\x5b\x5d-\x7e"  # qtextSMTP: printable ASCII but " and \


def _local_part(extra: str) -> str:
    atom = f"[{_ATEXT}{extra}]+"
    quoted = rf'"(?:[{_QTEXT}{extra}]|\\[\x20-\x7e])*"'
    return rf"(?:{atom}(?:\.{atom})*|{quoted})"


def _domain(extra: str) -> str:
    letdig = f"[A-Za-z0-9{extra}]"
    label = rf"{letdig}(?:[A-Za-z0-9\-{extra}]*{letdig})?"
    return rf"{label}(?:\.{label})*"


_LITERAL = r"\[[^\[\]\\\s]+\]"


def _mailbox_re(extra: str) -> re.Pattern[str]:
    return re.compile(rf"({_local_part(extra)})@({_domain(extra)}|{_LITERAL})")


_MAILBOX_ASCII = _mailbox_re("")
# The common case, ``<local@domain>`` in ASCII with nothing after it, in one C-level match.
_FAST_PATH = re.compile(f"<({_local_part('')})@({_domain('')})>".encode())
_MAILBOX_UTF8 = _mailbox_re(_UTF8)
_ROUTE = re.compile(rf"@(?:{_domain('')}|{_LITERAL})(?:,@(?:{_domain('')}|{_LITERAL}))*:")
_GENERAL_LITERAL = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+")
_PARAM_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_PARAM_VALUE = re.compile(rf"[\x21-\x3c\x3e-\x7e{_UTF8}]+")
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")


@attrs.frozen
class Mailbox:
    """``local@domain`` as the client wrote it (quoting kept), decoded from UTF-8.

    ``domain`` keeps address literals with their brackets (``[192.0.2.1]``).
    ``utf8`` tells that either part has non-ASCII characters, which is only
    accepted in a transaction that gave ``SMTPUTF8``.
    """

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}" if self.domain else self.local

    @property
    def utf8(self) -> bool:
        return not (self.local.isascii() and self.domain.isascii())


#: The null reverse-path ``<>`` (bounces).
NULL_SENDER: Final = Mailbox("", "")

POSTMASTER: Final = "postmaster"


def _check_literal(literal: str) -> bool:
    inner = literal[1:-1]
    if inner[:5].upper() == "IPV6:":
        try:
            ipaddress.IPv6Address(inner[5:])
        except ValueError:
            return False
        return True
    if _GENERAL_LITERAL.fullmatch(inner) and not inner[:1].isdigit():
        return True
    try:
        ipaddress.IPv4Address(inner)
    except ValueError:
        return False
    return True


@attrs.frozen
class ParsedPath:
    """The result of parsing ``MAIL FROM:``/``RCPT TO:`` arguments."""

    mailbox: Mailbox
    params: Mapping[str, str | None]


def parse_path_and_params(
    args: bytes,
    keyword: bytes,
    *,
    limits: Limits = RFC_LIMITS,
    smtputf8_allowed: bool = True,
    null_allowed: bool,
    postmaster_allowed: bool = False,
    sender: bool,
) -> ParsedPath:
    """Parse ``FROM:<path> params`` (``keyword=b"FROM"``) or ``TO:<path> params``.

    Accepted leniencies, as Postfix does by default: spaces after the colon,
    a path without angle brackets (when it contains no space), and an RFC 5321
    source route (``<@a,@b:user@c>``, which is ignored). ``null_allowed`` lets
    ``<>`` through (MAIL); ``postmaster_allowed`` lets a bare ``<Postmaster>``
    through (RCPT). Non-ASCII is accepted when ``smtputf8_allowed`` and must be
    valid UTF-8 (whether the transaction gave ``SMTPUTF8`` is the caller's
    check, see :attr:`Mailbox.utf8`). Parameters are returned with upper-cased
    keywords; a duplicate is an error.
    """
    head = args[: len(keyword) + 1]
    if head.upper() == keyword + b":":
        raw = args[len(keyword) + 1 :].lstrip(b" ")
        fast = _FAST_PATH.fullmatch(raw)
        if (
            fast is not None
            and len(raw) <= limits.path
            and len(fast.group(1)) <= limits.local_part
            and len(fast.group(2)) <= limits.domain
        ):
            return ParsedPath(Mailbox(fast.group(1).decode("ascii"), fast.group(2).decode("ascii")), {})
    return _parse_path_and_params(
        args,
        keyword,
        limits=limits,
        smtputf8_allowed=smtputf8_allowed,
        null_allowed=null_allowed,
        postmaster_allowed=postmaster_allowed,
        sender=sender,
    )


def _parse_path_and_params(
    args: bytes,
    keyword: bytes,
    *,
    limits: Limits,
    smtputf8_allowed: bool,
    null_allowed: bool,
    postmaster_allowed: bool,
    sender: bool,
) -> ParsedPath:
    """The whole grammar (:func:`parse_path_and_params` tries a fast path first)."""
    bad_syntax = "5.1.7" if sender else "5.1.3"
    what = "sender" if sender else "recipient"
    head = args[: len(keyword) + 1]
    if head.upper() != keyword + b":":
        verb = "MAIL FROM:<address>" if sender else "RCPT TO:<address>"
        raise CommandError(501, "5.5.4", f"Syntax: {verb}")
    raw = args[len(keyword) + 1 :].lstrip(b" ")
    try:
        text = raw.decode("utf-8") if not raw.isascii() else raw.decode("ascii")
    except UnicodeDecodeError:
        raise CommandError(501, bad_syntax, f"Bad {what} address syntax (invalid UTF-8)") from None
    if not text.isascii() and not smtputf8_allowed:
        raise CommandError(553, "5.6.7", f"Non-ASCII {what} address not permitted without SMTPUTF8")

    if text.startswith("<"):
        close = _path_end(text)
        if close < 0:
            raise CommandError(501, bad_syntax, f"Bad {what} address syntax")
        inner = text[1:close]
        rest = text[close + 1 :]
        path_octets = len(text[: close + 1].encode("utf-8"))
    else:
        inner, _, rest = text.partition(" ")
        rest = " " + rest if rest else ""
        path_octets = len(inner.encode("utf-8")) + 2
    if rest and not rest.startswith(" "):
        raise CommandError(501, bad_syntax, f"Bad {what} address syntax")
    if path_octets > limits.path:
        raise CommandError(501, bad_syntax, f"{what.capitalize()} address too long")

    if inner == "":
        if not null_allowed:
            raise CommandError(501, bad_syntax, f"Bad {what} address syntax")
        mailbox = NULL_SENDER
    elif postmaster_allowed and inner.lower() == POSTMASTER:
        mailbox = Mailbox(inner, "")
    else:
        if inner.startswith("@"):
            route = _ROUTE.match(inner)
            if route is None:
                raise CommandError(501, bad_syntax, f"Bad {what} address syntax")
            inner = inner[route.end() :]
        pattern = _MAILBOX_ASCII if inner.isascii() else _MAILBOX_UTF8
        m = pattern.fullmatch(inner)
        if m is None:
            raise CommandError(501, bad_syntax, f"Bad {what} address syntax")
        local, domain = m.group(1), m.group(2)
        if domain.startswith("[") and not _check_literal(domain):
            raise CommandError(501, bad_syntax, f"Bad {what} address syntax (address literal)")
        if len(local.encode("utf-8")) > limits.local_part:
            raise CommandError(501, bad_syntax, f"{what.capitalize()} local part too long")
        if len(domain.encode("utf-8")) > limits.domain:
            raise CommandError(501, bad_syntax, f"{what.capitalize()} domain too long")
        mailbox = Mailbox(local, domain)
    return ParsedPath(mailbox, parse_params(rest))


def _path_end(text: str) -> int:
    """Index of the ``>`` closing the path at ``text[0]``, skipping quoted strings."""
    i = 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == ">":
            return i
        if c == '"':
            # A quoted local part may contain ">" and escaped quotes.
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        i += 1
    return -1


def parse_params(text: str) -> dict[str, str | None]:
    """ESMTP parameters (``" SIZE=123 BODY=8BITMIME"``) as ``{keyword: value}``.

    Keywords are upper-cased; a keyword without ``=`` maps to None.
    """
    params: dict[str, str | None] = {}
    for item in text.split(" "):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not _PARAM_KEYWORD.fullmatch(key) or (eq and not _PARAM_VALUE.fullmatch(value)):
            raise CommandError(501, "5.5.4", f"Bad parameter syntax: {item[:40]}")
        key = key.upper()
        if key in params:
            raise CommandError(501, "5.5.4", f"Parameter given twice: {key}")
        params[key] = value if eq else None
    return params


def xtext_decode(value: str) -> str:
    """Decode RFC 3461 xtext (``+2B`` for ``+``); raises CommandError when malformed."""
    if not _XTEXT.fullmatch(value):
        raise CommandError(501, "5.5.4", "Bad xtext in parameter value")
    if "+" not in value:
        return value
    return re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), value)


def check_helo_name(args: bytes) -> str:
    """The name given in HELO/EHLO, or CommandError ``501``.

    Anything printable is accepted (clients send NetBIOS names, bare addresses
    and worse); words after the first are ignored. The name is only recorded,
    in ``Received:``.
    """
    name = args.strip(b" ").split(b" ", 1)[0]
    if not name or len(name) > 255 or not all(0x21 <= b <= 0x7E for b in name):
        raise CommandError(501, "5.5.4", "Syntax: EHLO hostname")
    return name.decode("ascii")


# --------------------------------------------------------------------------- dot-stuffing


def dot_stuff(body: bytes) -> bytes:
    """The DATA form of a whole body of CRLF lines, final ``.`` line included.

    Every line starting with ``.`` gets one more; a body not ending in CRLF
    gets one. The inverse of what :class:`relaybal.smtp.datascan.DataScanner`
    does (for bodies without bare CR/LF).
    """
    return DotStuffer().stuff(body) + DotStuffer.end(body)


class DotStuffer:
    """Dot-stuffs a body given in chunks of any size (a ``.`` may follow a chunk edge).

    The body must be CRLF lines (what relaybal stores): a line starts after
    ``\\r\\n`` or at the start. Call :meth:`stuff` per chunk, then send
    :meth:`end` of the last chunk seen (or ``terminator()``).
    """

    def __init__(self) -> None:
        self._line_start = True
        self._last = b"\n"

    def stuff(self, chunk: bytes) -> bytes:
        """``chunk`` with each line-initial ``.`` doubled."""
        if not chunk:
            return chunk
        out = chunk.replace(b"\r\n.", b"\r\n..")
        if chunk[:1] == b"." and self._line_start:
            out = b"." + out
        elif chunk[:1] == b"\n" and self._last == b"\r" and chunk[1:2] == b".":
            # "\r" ended the previous chunk: this "\n." was not seen by replace().
            out = b"\n." + out[1:]
        self._line_start = chunk.endswith(b"\r\n") or (chunk == b"\n" and self._last == b"\r")
        self._last = chunk[-1:]
        return out

    def terminator(self) -> bytes:
        """The end of DATA: ``.\\r\\n``, preceded by CRLF when the body did not end with one."""
        return b".\r\n" if self._line_start else b"\r\n.\r\n"

    @staticmethod
    def end(body: bytes) -> bytes:
        """The end-of-data for a whole ``body`` (see :meth:`terminator`)."""
        return b".\r\n" if not body or body.endswith(b"\r\n") else b"\r\n.\r\n"
