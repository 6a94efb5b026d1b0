"""The decoded PROXY protocol header and the three outcomes of parsing one."""

from __future__ import annotations

import socket
from typing import Final

import attrs

#: Largest v1 line, CRLF included (HAProxy's doc/proxy-protocol.txt, section 2.1).
V1_MAX_LENGTH: Final = 107

#: The 12 bytes every v2 header starts with.
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"

#: Signature, version/command, family/transport and the 16-bit length.
V2_FIXED_LENGTH: Final = 16

#: Default bound on the v2 length field (address block plus TLVs).
DEFAULT_MAX_V2_LENGTH: Final = 4096


@attrs.frozen
class ProxyHeader:
    """One PROXY protocol header, version 1 or 2.

    ``source`` and ``destination`` are either both None (use the real
    connection's endpoints) or both set. They are None for a v2 ``LOCAL``
    header and a v1 ``UNKNOWN`` line (both decode as ``command="LOCAL"``,
    ``family="UNSPEC"``) and for a v2 ``PROXY`` header of family UNSPEC
    (``command="PROXY"``, ``family="UNSPEC"``). For TCP4 and TCP6 they are
    ``(ip, port)`` with the IP in ``ipaddress`` canonical text; for UNIX they
    are ``(path, 0)``, the path being the bytes before the first NUL decoded as
    UTF-8 with ``surrogateescape``. ``tlvs`` holds the v2 type-length-value
    records in wire order, undecoded (always empty for v1, LOCAL and UNSPEC).
    """

    version: int
    command: str
    family: str
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    tlvs: tuple[tuple[int, bytes], ...] = ()


@attrs.frozen
class Incomplete:
    """The buffer is a valid prefix of a header so far: wait for more bytes."""


@attrs.frozen
class Invalid:
    """The buffer does not start with a valid header, whatever follows."""

    reason: str


@attrs.frozen
class Parsed:
    """A complete header: ``buffer[consumed:]`` belongs to the wrapped protocol."""

    header: ProxyHeader
    consumed: int


ParseResult = Incomplete | Invalid | Parsed


def pack_ip(host: str) -> bytes:
    """Return the 4 (IPv4) or 16 (IPv6) network-order bytes of textual IP ``host``.

    IPv4 must be a dotted quad without leading zeros; IPv6 any form
    ``inet_pton`` accepts, without a zone. Raises ValueError otherwise.
    """
    # inet_pton is C and strict (glibc rejects 01.2.3.4, 1.2.3, 256.0.0.1);
    # choosing the family by ":" avoids paying for a failed IPv4 attempt.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.inet_pton(family, host)
    except (OSError, UnicodeError) as e:
        raise ValueError(f"not a textual IP address: {host!r}") from e


#: Shared instance: parse() is called on every arrival of bytes, so avoid allocating.
INCOMPLETE: Final = Incomplete()
