"""PROXY protocol version 2: the binary header."""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Sequence
from typing import Final

from relaybal.proxyproto.header import (
    INCOMPLETE,
    V2_FIXED_LENGTH,
    V2_SIGNATURE,
    Invalid,
    Parsed,
    ParseResult,
    ProxyHeader,
    pack_ip,
)

_VERSION_2: Final = 0x2
_COMMAND_LOCAL: Final = 0x0
_COMMAND_PROXY: Final = 0x1

# family/transport byte -> (name, size of the address block)
_FAMILIES: Final = {
    0x00: ("UNSPEC", 0),
    0x11: ("TCP4", 12),
    0x21: ("TCP6", 36),
    0x31: ("UNIX", 216),
}
# Defined by the spec (datagram transports) but not something a TCP relay can proxy.
_DATAGRAM_FAMILIES: Final = frozenset({0x12, 0x22, 0x32})
_UNIX_PATH_SIZE: Final = 108
_TLV_HEAD_SIZE: Final = 3

_LOCAL_HEADER_BYTES: Final = V2_SIGNATURE + b"\x20\x00\x00\x00"
_PROXY_TCP4: Final = V2_SIGNATURE + b"\x21\x11"
_PROXY_TCP6: Final = V2_SIGNATURE + b"\x21\x21"
_TCP4_BLOCK: Final = struct.Struct("!H4s4sHH")
_TCP6_BLOCK: Final = struct.Struct("!H16s16sHH")
_TCP4_ADDRESSES: Final = struct.Struct("!4s4sHH")
_TCP6_ADDRESSES: Final = struct.Struct("!16s16sHH")
_TLV_HEAD: Final = struct.Struct("!BH")
_MAPPED_PREFIX: Final = b"\x00" * 10 + b"\xff\xff"

_LOCAL: Final = ProxyHeader(version=2, command="LOCAL", family="UNSPEC", source=None, destination=None)
_PROXY_UNSPEC: Final = ProxyHeader(version=2, command="PROXY", family="UNSPEC", source=None, destination=None)


def encode_v2(
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
    *,
    local: bool = False,
    tlvs: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    """Return the v2 header announcing a TCP connection from ``source`` to ``destination``.

    ``local=True`` (whatever the addresses) or both addresses None gives the
    16-byte LOCAL header with family UNSPEC and length 0; ``tlvs`` must then be
    empty. Otherwise the family is TCP4 when both IPs are IPv4 and TCP6 when
    either is IPv6, an IPv4 one then being sent IPv4-mapped (``::ffff:a.b.c.d``)
    as HAProxy does; ``tlvs`` (type 0-255, value up to 65535 bytes) follow the
    addresses in the given order. Raises ValueError for only one address given,
    an IP ``pack_ip`` refuses, a port outside 0-65535, or TLVs that do not fit.
    """
    if local or (source is None and destination is None):
        if tlvs:
            raise ValueError("TLVs need a PROXY header with addresses")
        return _LOCAL_HEADER_BYTES
    if source is None or destination is None:
        raise ValueError("give both source and destination, or neither")
    src_host, src_port = source
    dst_host, dst_port = destination
    if not (0 <= src_port <= 0xFFFF and 0 <= dst_port <= 0xFFFF):
        raise ValueError(f"port out of range: {src_port!r}, {dst_port!r}")
    src = pack_ip(src_host)
    dst = pack_ip(dst_host)
    extra = _encode_tlvs(tlvs) if tlvs else b""
    if len(src) == len(dst) == 4:
        if 12 + len(extra) > 0xFFFF:
            raise ValueError("TLVs too long for one header")
        return _PROXY_TCP4 + _TCP4_BLOCK.pack(12 + len(extra), src, dst, src_port, dst_port) + extra
    if len(src) == 4:
        src = _MAPPED_PREFIX + src
    elif len(dst) == 4:
        dst = _MAPPED_PREFIX + dst
    if 36 + len(extra) > 0xFFFF:
        raise ValueError("TLVs too long for one header")
    return _PROXY_TCP6 + _TCP6_BLOCK.pack(36 + len(extra), src, dst, src_port, dst_port) + extra


def _encode_tlvs(tlvs: Sequence[tuple[int, bytes]]) -> bytes:
    parts: list[bytes] = []
    for kind, value in tlvs:
        if not 0 <= kind <= 0xFF or len(value) > 0xFFFF:
            raise ValueError(f"TLV type or length out of range: {kind!r}, {len(value)}")
        parts.append(_TLV_HEAD.pack(kind, len(value)))
        parts.append(bytes(value))
    return b"".join(parts)


def parse_v2(buffer: bytes, max_length: int) -> ParseResult:
    """Parse a v2 header at the start of ``buffer`` (see ``relaybal.proxyproto.parse``).

    Every check runs as soon as the bytes it needs are present, so a bad
    version, command, family, length or TLV length is reported before the
    whole header has arrived.
    """
    available = len(buffer)
    signature = buffer[: len(V2_SIGNATURE)]
    if signature != V2_SIGNATURE[: len(signature)]:
        return Invalid("not a PROXY protocol header")
    if available <= 12:
        return INCOMPLETE
    version_command = buffer[12]
    if version_command >> 4 != _VERSION_2:
        return Invalid("v2 version nibble is not 2")
    command = version_command & 0x0F
    if command not in (_COMMAND_LOCAL, _COMMAND_PROXY):
        return Invalid("v2 command is neither LOCAL nor PROXY")
    if available == 13:
        return INCOMPLETE
    family_byte = buffer[13]
    family = _FAMILIES.get(family_byte)
    if family is None:
        # LOCAL ignores the family, but undefined values are invalid everywhere.
        if family_byte not in _DATAGRAM_FAMILIES:
            return Invalid("v2 address family/transport is undefined")
        if command == _COMMAND_PROXY:
            return Invalid("v2 unsupported transport (datagram)")
    if available < V2_FIXED_LENGTH:
        return INCOMPLETE
    length = buffer[14] << 8 | buffer[15]
    if length > max_length:
        return Invalid(f"v2 length {length} exceeds {max_length}")
    end = V2_FIXED_LENGTH + length
    if command == _COMMAND_LOCAL:
        # The spec says to skip the block whatever it holds.
        return INCOMPLETE if available < end else Parsed(_LOCAL, end)
    assert family is not None  # PROXY with an unknown family returned above
    name, address_size = family
    if length < address_size:
        return Invalid(f"v2 address block shorter than {address_size} bytes for {name}")
    if name == "UNSPEC":
        # "The receiver should ignore address information": no addresses, no TLVs.
        return INCOMPLETE if available < end else Parsed(_PROXY_UNSPEC, end)
    tlvs: list[tuple[int, bytes]] = []
    position = V2_FIXED_LENGTH + address_size
    while position < end:
        if position + _TLV_HEAD_SIZE > end:
            return Invalid("v2 TLV header overruns the address block")
        if position + _TLV_HEAD_SIZE > available:
            return INCOMPLETE
        kind = buffer[position]
        value_end = position + _TLV_HEAD_SIZE + (buffer[position + 1] << 8 | buffer[position + 2])
        if value_end > end:
            return Invalid("v2 TLV value overruns the address block")
        if value_end > available:
            return INCOMPLETE
        tlvs.append((kind, bytes(buffer[position + _TLV_HEAD_SIZE : value_end])))
        position = value_end
    if available < end:
        return INCOMPLETE
    source: tuple[str, int]
    destination: tuple[str, int]
    if name == "TCP4":
        src, dst, src_port, dst_port = _TCP4_ADDRESSES.unpack_from(buffer, V2_FIXED_LENGTH)
        source = (socket.inet_ntop(socket.AF_INET, src), src_port)
        destination = (socket.inet_ntop(socket.AF_INET, dst), dst_port)
    elif name == "TCP6":
        src, dst, src_port, dst_port = _TCP6_ADDRESSES.unpack_from(buffer, V2_FIXED_LENGTH)
        source = (str(ipaddress.IPv6Address(src)), src_port)
        destination = (str(ipaddress.IPv6Address(dst)), dst_port)
    else:
        start = V2_FIXED_LENGTH
        source = (_unix_path(buffer[start : start + _UNIX_PATH_SIZE]), 0)
        start += _UNIX_PATH_SIZE
        destination = (_unix_path(buffer[start : start + _UNIX_PATH_SIZE]), 0)
    return Parsed(
        ProxyHeader(
            version=2,
            command="PROXY",
            family=name,
            source=source,
            destination=destination,
            tlvs=tuple(tlvs),
        ),
        end,
    )


def _unix_path(raw: bytes) -> str:
    nul = raw.find(b"\x00")
    return (raw if nul < 0 else raw[:nul]).decode("utf-8", "surrogateescape")
