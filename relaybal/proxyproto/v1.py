"""PROXY protocol version 1: the human-readable line.

The reader is stricter than ``twisted.protocols.haproxy``, as HAProxy is:
single spaces, dotted quads and ports without leading zeros, the address
family matching the protocol word, CRLF only, 107 bytes at most.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Final

from relaybal.proxyproto.header import (
    INCOMPLETE,
    V1_MAX_LENGTH,
    Invalid,
    Parsed,
    ParseResult,
    ProxyHeader,
    pack_ip,
)

V1_SIGNATURE: Final = b"PROXY "

_UNKNOWN_LINE: Final = b"PROXY UNKNOWN\r\n"
_UNKNOWN: Final = b"UNKNOWN"
_UNKNOWN_HEADER: Final = ProxyHeader(
    version=1, command="LOCAL", family="UNSPEC", source=None, destination=None
)
_MAPPED_PREFIX: Final = "::ffff:"
_FIELD_COUNT: Final = 5  # protocol, source, destination, source port, destination port
# "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
_IPV6_MAX_TEXT: Final = 45
_IPV6_TEXT: Final = re.compile(rb"[0-9A-Fa-f:.]*")


def encode_v1(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """Return the v1 line announcing a TCP connection from ``source`` to ``destination``.

    Both None gives ``PROXY UNKNOWN\\r\\n``. Otherwise each is ``(ip, port)``:
    the IPs are normalised (IPv6 to its compressed lower-case form), and when
    one is IPv4 and the other IPv6 the IPv4 one is written as IPv4-mapped IPv6
    (``::ffff:a.b.c.d``) under TCP6, as HAProxy does. Raises ValueError for
    only one address given, an IP ``pack_ip`` refuses, or a port outside
    0-65535.
    """
    if source is None or destination is None:
        if source is None and destination is None:
            return _UNKNOWN_LINE
        raise ValueError("give both source and destination, or neither")
    src_host, src_port = source
    dst_host, dst_port = destination
    if not (0 <= src_port <= 0xFFFF and 0 <= dst_port <= 0xFFFF):
        raise ValueError(f"port out of range: {src_port!r}, {dst_port!r}")
    src_packed = pack_ip(src_host)
    dst_packed = pack_ip(dst_host)
    src_v6 = len(src_packed) == 16
    dst_v6 = len(dst_packed) == 16
    if src_v6 or dst_v6:
        # A validated dotted quad is already canonical text; IPv6 is rewritten.
        src_text = socket.inet_ntop(socket.AF_INET6, src_packed) if src_v6 else _MAPPED_PREFIX + src_host
        dst_text = socket.inet_ntop(socket.AF_INET6, dst_packed) if dst_v6 else _MAPPED_PREFIX + dst_host
        line = f"PROXY TCP6 {src_text} {dst_text} {src_port:d} {dst_port:d}\r\n"
    else:
        line = f"PROXY TCP4 {src_host} {dst_host} {src_port:d} {dst_port:d}\r\n"
    return line.encode("ascii")


def parse_v1(buffer: bytes) -> ParseResult:
    """Parse a v1 line at the start of ``buffer`` (see ``relaybal.proxyproto.parse``)."""
    head = buffer[: len(V1_SIGNATURE)]
    if head != V1_SIGNATURE[: len(head)]:
        return Invalid("not a PROXY protocol header")
    if len(head) < len(V1_SIGNATURE):
        return INCOMPLETE
    # The LF must be at index V1_MAX_LENGTH - 1 at the latest.
    lf = buffer.find(b"\n", len(V1_SIGNATURE), V1_MAX_LENGTH)
    if lf < 0:
        if len(buffer) >= V1_MAX_LENGTH:
            return Invalid("v1 line longer than 107 bytes")
        reason = _prefix_problem(buffer[len(V1_SIGNATURE) :])
        return INCOMPLETE if reason is None else Invalid(reason)
    if buffer[lf - 1] != 0x0D:
        return Invalid("v1 line ends with a bare LF")
    result = _parse_body(buffer[len(V1_SIGNATURE) : lf - 1])
    if isinstance(result, str):
        return Invalid(result)
    return Parsed(result, lf + 1)


def _parse_body(body: bytes) -> ProxyHeader | str:
    """Decode what lies between ``PROXY `` and CRLF, or say why it is invalid."""
    if body[: len(_UNKNOWN)] == _UNKNOWN:
        return _check_unknown_rest(body[len(_UNKNOWN) :]) or _UNKNOWN_HEADER
    fields = body.split(b" ")
    if len(fields) != _FIELD_COUNT:
        return "v1 line has the wrong number of fields or spaces"
    protocol, src, dst, src_port, dst_port = fields
    if protocol == b"TCP4":
        if not (_ipv4_ok(src, complete=True) and _ipv4_ok(dst, complete=True)):
            return "v1 TCP4 address is not a strict dotted quad"
        family = "TCP4"
        src_text = src.decode("ascii")
        dst_text = dst.decode("ascii")
    elif protocol == b"TCP6":
        src_ip = _ipv6(src)
        dst_ip = _ipv6(dst)
        if src_ip is None or dst_ip is None:
            return "v1 TCP6 address is not an IPv6 address"
        family = "TCP6"
        src_text = str(src_ip)
        dst_text = str(dst_ip)
    else:
        return "v1 protocol is not TCP4, TCP6 or UNKNOWN"
    if not (_port_ok(src_port) and _port_ok(dst_port)):
        return "v1 port is not a decimal 0-65535 without leading zeros"
    return ProxyHeader(
        version=1,
        command="PROXY",
        family=family,
        source=(src_text, int(src_port)),
        destination=(dst_text, int(dst_port)),
    )


def _check_unknown_rest(rest: bytes) -> str | None:
    # The spec lets UNKNOWN carry anything up to CRLF; the word itself must still end.
    if rest and rest[0] != 0x20:
        return "v1 protocol is not TCP4, TCP6 or UNKNOWN"
    if b"\r" in rest:
        return "v1 line has a CR not followed by LF"
    return None


def _prefix_problem(partial: bytes) -> str | None:
    """Say why no line can start with ``PROXY `` + ``partial`` (no LF yet), or None."""
    cr = partial.find(b"\r")
    if cr >= 0:
        if cr != len(partial) - 1:
            return "v1 line has a CR not followed by LF"
        # Only the LF is missing: the body must already be complete and valid.
        result = _parse_body(partial[:-1])
        return result if isinstance(result, str) else None
    if partial[: len(_UNKNOWN)] == _UNKNOWN:
        return _check_unknown_rest(partial[len(_UNKNOWN) :])
    if _UNKNOWN.startswith(partial):
        return None
    fields = partial.split(b" ")
    if len(fields) > _FIELD_COUNT:
        return "v1 line has the wrong number of fields or spaces"
    last = len(fields) - 1
    protocol = fields[0]
    if last == 0:
        if b"TCP4".startswith(protocol) or b"TCP6".startswith(protocol):
            return None
        return "v1 protocol is not TCP4, TCP6 or UNKNOWN"
    if protocol not in (b"TCP4", b"TCP6"):
        return "v1 protocol is not TCP4, TCP6 or UNKNOWN"
    for index in range(1, last + 1):
        field = fields[index]
        complete = index < last
        if not field and complete:
            return "v1 line has the wrong number of fields or spaces"
        if index <= 2:
            if protocol == b"TCP4":
                if not _ipv4_ok(field, complete=complete):
                    return "v1 TCP4 address is not a strict dotted quad"
            elif complete:
                if _ipv6(field) is None:
                    return "v1 TCP6 address is not an IPv6 address"
            elif not _ipv6_prefix_ok(field):
                return "v1 TCP6 address is not an IPv6 address"
        elif field and not _port_ok(field):
            return "v1 port is not a decimal 0-65535 without leading zeros"
    return None


def _ipv4_ok(text: bytes, *, complete: bool) -> bool:
    """Whether ``text`` is a strict dotted quad (or, if not complete, can start one)."""
    octets = text.split(b".")
    if len(octets) > 4 or (complete and len(octets) != 4):
        return False
    last = len(octets) - 1
    for index, octet in enumerate(octets):
        if not octet:
            if complete or index != last:
                return False
            continue
        # bytes.isdigit() is ASCII-only, unlike str.isdigit().
        if not octet.isdigit() or len(octet) > 3 or int(octet) > 255:
            return False
        if octet[0] == 0x30 and len(octet) > 1:
            return False
    return True


def _ipv6(text: bytes) -> ipaddress.IPv6Address | None:
    # The character check keeps out zone ids ("%eth0"), which ipaddress accepts.
    if len(text) > _IPV6_MAX_TEXT or not _IPV6_TEXT.fullmatch(text):
        return None
    try:
        return ipaddress.IPv6Address(text.decode("ascii"))
    except ValueError:
        return None


def _ipv6_prefix_ok(text: bytes) -> bool:
    """A cheap necessary condition for ``text`` to start an IPv6 address.

    Looser than the complete check, which runs as soon as the field ends.
    """
    if len(text) > _IPV6_MAX_TEXT or not _IPV6_TEXT.fullmatch(text):
        return False
    if b":::" in text or text.count(b"::") > 1:
        return False
    groups = text.split(b":")
    for group in groups[:-1]:
        if len(group) > 4 or b"." in group:
            return False
    tail = groups[-1]
    if b"." in tail:
        return _ipv4_ok(tail, complete=False)
    return len(tail) <= 4


def _port_ok(text: bytes) -> bool:
    return text.isdigit() and len(text) <= 5 and (text[0] != 0x30 or len(text) == 1) and int(text) <= 0xFFFF
