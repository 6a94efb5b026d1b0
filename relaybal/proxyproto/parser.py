"""Recognising either PROXY protocol version at the start of a connection."""

from __future__ import annotations

from relaybal.proxyproto.header import DEFAULT_MAX_V2_LENGTH, INCOMPLETE, Invalid, ParseResult
from relaybal.proxyproto.v1 import parse_v1
from relaybal.proxyproto.v2 import parse_v2


def parse(buffer: bytes, max_v2_length: int = DEFAULT_MAX_V2_LENGTH) -> ParseResult:
    """Parse the PROXY protocol header (v1 or v2) at the start of ``buffer``.

    Returns ``Parsed(header, consumed)`` when a whole valid header is there
    (``buffer[consumed:]`` is the wrapped protocol's), ``Incomplete()`` when
    ``buffer`` is a prefix of some valid header, and ``Invalid(reason)``
    otherwise. The answer is consistent as the buffer grows: once Invalid or
    Parsed, appending bytes never changes it, so a caller may simply call
    ``parse`` on its accumulated buffer each time data arrives (the work done
    is bounded by the header's size, not the buffer's). Invalid is returned as
    soon as the bytes seen so far rule out every valid header (a v1 line of
    family TCP6 is only checked loosely until each address ends). v2 headers
    whose length field exceeds ``max_v2_length`` are Invalid. Never raises.
    """
    if not buffer:
        return INCOMPLETE
    first = buffer[0]
    if first == 0x50:  # "P"
        return parse_v1(buffer)
    if first == 0x0D:  # "\r"
        return parse_v2(buffer, max_v2_length)
    return Invalid("not a PROXY protocol header")
