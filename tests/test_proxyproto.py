"""Tests for relaybal.proxyproto: known vectors, encoders, strictness, fragmentation."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaybal.proxyproto import (
    V2_SIGNATURE,
    Incomplete,
    Invalid,
    Parsed,
    ParseResult,
    ProxyHeader,
    encode_v1,
    encode_v2,
    parse,
)


def examples(count: int) -> settings:
    """Run ``count`` examples derived from the test's name: every run sees the same inputs."""
    return settings(max_examples=count, derandomize=True, database=None, deadline=None)


def v2(version_command: int, family: int, block: bytes, length: int | None = None) -> bytes:
    """A v2 header built field by field, with the length taken from ``block`` by default."""
    size = len(block) if length is None else length
    return V2_SIGNATURE + bytes([version_command, family]) + struct.pack("!H", size) + block


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def unix_path(path: bytes) -> bytes:
    return path.ljust(108, b"\x00")


def parsed(result: ParseResult) -> Parsed:
    assert isinstance(result, Parsed), result
    return result


# A v2 TCP4 header written out byte by byte from the spec: 192.168.0.1:56324 -> 192.168.0.11:443.
V2_TCP4_BY_HAND = (
    b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"  # signature
    b"\x21"  # version 2, command PROXY
    b"\x11"  # AF_INET, STREAM
    b"\x00\x0c"  # 12 bytes of addresses follow
    b"\xc0\xa8\x00\x01"  # 192.168.0.1
    b"\xc0\xa8\x00\x0b"  # 192.168.0.11
    b"\xdc\x04"  # 56324
    b"\x01\xbb"  # 443
)

V2_TCP6_WITH_TLVS = v2(
    0x21,
    0x21,
    ipaddress.IPv6Address("2001:db8::1").packed
    + ipaddress.IPv6Address("2001:db8::2:1").packed
    + struct.pack("!HH", 1, 25)
    + tlv(0x01, b"smtp")  # PP2_TYPE_ALPN
    + tlv(0x04, b"")  # PP2_TYPE_NOOP
    + tlv(0x05, b"\x00\x01\x02"),  # PP2_TYPE_UNIQUE_ID
)

V2_UNIX_WITH_TLVS = v2(
    0x21,
    0x31,
    unix_path(b"/run/client.sock")
    + unix_path(b"/run/relaybal/smtp.sock")
    + tlv(0x02, b"mx.example.org")  # PP2_TYPE_AUTHORITY
    + tlv(0xE0, b"x" * 300),  # a custom type, longer than 255 bytes
)

# (wire bytes, the header they carry)
VALID_VECTORS: list[tuple[bytes, ProxyHeader]] = [
    (
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        ProxyHeader(1, "PROXY", "TCP4", ("192.168.0.1", 56324), ("192.168.0.11", 443)),
    ),
    (
        b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
        ProxyHeader(1, "PROXY", "TCP4", ("0.0.0.0", 0), ("255.255.255.255", 65535)),
    ),
    (
        # The longest TCP line the spec mentions (104 bytes).
        b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        b" ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
        ProxyHeader(
            1,
            "PROXY",
            "TCP6",
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
        ),
    ),
    (
        # Non-canonical IPv6 text is accepted and reported canonically.
        b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::1 1 2\r\n",
        ProxyHeader(1, "PROXY", "TCP6", ("2001:db8::1", 1), ("::1", 2)),
    ),
    (
        b"PROXY TCP6 ::ffff:10.0.0.1 2001:db8::25 40000 25\r\n",
        ProxyHeader(
            1,
            "PROXY",
            "TCP6",
            (str(ipaddress.IPv6Address("::ffff:10.0.0.1")), 40000),
            ("2001:db8::25", 25),
        ),
    ),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1, "LOCAL", "UNSPEC", None, None)),
    (
        b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n",
        ProxyHeader(1, "LOCAL", "UNSPEC", None, None),
    ),
    (
        # Exactly 107 bytes: the longest line allowed.
        b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n",
        ProxyHeader(1, "LOCAL", "UNSPEC", None, None),
    ),
    (
        V2_TCP4_BY_HAND,
        ProxyHeader(2, "PROXY", "TCP4", ("192.168.0.1", 56324), ("192.168.0.11", 443)),
    ),
    (
        V2_TCP6_WITH_TLVS,
        ProxyHeader(
            2,
            "PROXY",
            "TCP6",
            ("2001:db8::1", 1),
            ("2001:db8::2:1", 25),
            ((0x01, b"smtp"), (0x04, b""), (0x05, b"\x00\x01\x02")),
        ),
    ),
    (
        V2_UNIX_WITH_TLVS,
        ProxyHeader(
            2,
            "PROXY",
            "UNIX",
            ("/run/client.sock", 0),
            ("/run/relaybal/smtp.sock", 0),
            ((0x02, b"mx.example.org"), (0xE0, b"x" * 300)),
        ),
    ),
    (V2_SIGNATURE + b"\x20\x00\x00\x00", ProxyHeader(2, "LOCAL", "UNSPEC", None, None)),
    (
        # LOCAL: the block is skipped whatever its family says it holds.
        v2(0x20, 0x11, b"\xff" * 12 + tlv(1, b"x")),
        ProxyHeader(2, "LOCAL", "UNSPEC", None, None),
    ),
    (
        # LOCAL ignores the family, even a datagram one.
        v2(0x20, 0x12, b""),
        ProxyHeader(2, "LOCAL", "UNSPEC", None, None),
    ),
    (
        # PROXY over UNSPEC: accepted, addresses ignored.
        v2(0x21, 0x00, b"whatever"),
        ProxyHeader(2, "PROXY", "UNSPEC", None, None),
    ),
    (
        # Address block larger than the family's size with no TLV left over is fine.
        v2(0x21, 0x11, bytes([10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2]) + tlv(0x04, b"")),
        ProxyHeader(2, "PROXY", "TCP4", ("10.0.0.1", 1), ("10.0.0.2", 2), ((0x04, b""),)),
    ),
]


@pytest.mark.parametrize(("wire", "header"), VALID_VECTORS)
def test_known_vectors(wire: bytes, header: ProxyHeader) -> None:
    assert parse(wire) == Parsed(header, len(wire))


@pytest.mark.parametrize(("wire", "header"), VALID_VECTORS)
def test_trailing_bytes_are_left_for_the_wrapped_protocol(wire: bytes, header: ProxyHeader) -> None:
    buffer = wire + b"EHLO client.example\r\n\r\n\r\n\x00"
    result = parsed(parse(buffer))
    assert result.header == header
    assert buffer[result.consumed :] == b"EHLO client.example\r\n\r\n\r\n\x00"


@pytest.mark.parametrize(("wire", "header"), VALID_VECTORS)
def test_every_strict_prefix_is_incomplete(wire: bytes, header: ProxyHeader) -> None:
    for end in range(len(wire)):
        assert parse(wire[:end]) == Incomplete(), (end, wire[:end])
    assert parse(wire) == Parsed(header, len(wire))


def test_empty_buffer_is_incomplete() -> None:
    assert parse(b"") == Incomplete()


# --- encoders -------------------------------------------------------------------


def test_encode_v2_tcp4_is_the_hand_built_header() -> None:
    assert encode_v2(("192.168.0.1", 56324), ("192.168.0.11", 443)) == V2_TCP4_BY_HAND


def test_encode_v2_tcp6_with_tlvs_is_the_hand_built_header() -> None:
    encoded = encode_v2(
        ("2001:db8::1", 1),
        ("2001:db8::2:1", 25),
        tlvs=[(0x01, b"smtp"), (0x04, b""), (0x05, b"\x00\x01\x02")],
    )
    assert encoded == V2_TCP6_WITH_TLVS


def test_encode_v2_local() -> None:
    local = V2_SIGNATURE + b"\x20\x00\x00\x00"
    assert encode_v2(None, None) == local
    assert encode_v2(("1.2.3.4", 1), ("5.6.7.8", 2), local=True) == local


def test_encode_v2_mixed_families_map_ipv4_into_ipv6() -> None:
    mapped = ipaddress.IPv6Address("::ffff:1.2.3.4").packed
    other = ipaddress.IPv6Address("2001:db8::1").packed
    assert encode_v2(("1.2.3.4", 10), ("2001:db8::1", 20)) == v2(
        0x21, 0x21, mapped + other + struct.pack("!HH", 10, 20)
    )
    assert encode_v2(("2001:db8::1", 10), ("1.2.3.4", 20)) == v2(
        0x21, 0x21, other + mapped + struct.pack("!HH", 10, 20)
    )


def test_encode_v1_lines() -> None:
    assert encode_v1(("192.168.0.1", 56324), ("192.168.0.11", 443)) == (
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    )
    assert encode_v1(("2001:DB8:0:0:0:0:0:1", 0), ("::1", 65535)) == (
        b"PROXY TCP6 2001:db8::1 ::1 0 65535\r\n"
    )
    assert encode_v1(None, None) == b"PROXY UNKNOWN\r\n"


def test_encode_v1_mixed_families_map_ipv4_into_ipv6() -> None:
    assert encode_v1(("1.2.3.4", 10), ("2001:db8::1", 20)) == (
        b"PROXY TCP6 ::ffff:1.2.3.4 2001:db8::1 10 20\r\n"
    )
    assert encode_v1(("2001:db8::1", 10), ("1.2.3.4", 20)) == (
        b"PROXY TCP6 2001:db8::1 ::ffff:1.2.3.4 10 20\r\n"
    )


BAD_ADDRESSES = [
    (("1.2.3", 1), ("1.2.3.4", 2)),
    (("001.2.3.4", 1), ("1.2.3.4", 2)),
    (("256.1.1.1", 1), ("1.2.3.4", 2)),
    (("1.2.3.4", 1), ("fe80::1%eth0", 2)),
    (("1.2.3.4", 1), ("mx.example.org", 2)),
    (("1.2.3.4", 1), ("", 2)),
    (("1.2.3.4\x00", 1), ("1.2.3.4", 2)),
    (("1.2.3.4", -1), ("1.2.3.4", 2)),
    (("1.2.3.4", 1), ("1.2.3.4", 65536)),
    (("1.2.3.4", 1), None),
    (None, ("1.2.3.4", 2)),
]


@pytest.mark.parametrize(("source", "destination"), BAD_ADDRESSES)
def test_encoders_refuse_bad_addresses(
    source: tuple[str, int] | None, destination: tuple[str, int] | None
) -> None:
    with pytest.raises(ValueError):
        encode_v1(source, destination)
    with pytest.raises(ValueError):
        encode_v2(source, destination)


@pytest.mark.parametrize(
    "tlvs",
    [
        [(256, b"")],
        [(-1, b"")],
        [(1, b"x" * 65536)],
        # Each fits on its own, together they overflow the 16-bit length.
        [(1, b"x" * 40000), (2, b"y" * 40000)],
    ],
)
def test_encode_v2_refuses_tlvs_that_do_not_fit(tlvs: list[tuple[int, bytes]]) -> None:
    with pytest.raises(ValueError):
        encode_v2(("1.2.3.4", 1), ("5.6.7.8", 2), tlvs=tlvs)
    with pytest.raises(ValueError):
        encode_v2(("::1", 1), ("::2", 2), tlvs=tlvs)


def test_encode_v2_refuses_tlvs_on_local() -> None:
    with pytest.raises(ValueError):
        encode_v2(None, None, tlvs=[(4, b"")])


# --- strictness -------------------------------------------------------------------

MALFORMED: list[bytes] = [
    # not a header at all
    b"EHLO client.example\r\n",
    b"\x00",
    b"proxy TCP4 1.2.3.4 5.6.7.8 80 443\r\n",
    b"PROXY tcp4 1.2.3.4 5.6.7.8 80 443\r\n",
    b"PROXY TCP5 1.2.3.4 5.6.7.8 80 443\r\n",
    b"PROXY\r\n",
    b"PROXY \r\n",
    b"PROXY UNKNOWNX\r\n",
    # IPv4 text
    b"PROXY TCP4 001.2.3.4 5.6.7.8 80 443\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.08 80 443\r\n",
    b"PROXY TCP4 1.2.3 5.6.7.8 80 443\r\n",
    b"PROXY TCP4 1.2.3.4.5 5.6.7.8 80 443\r\n",
    b"PROXY TCP4 256.1.1.1 5.6.7.8 80 443\r\n",
    b"PROXY TCP4 1.2.3.4. 5.6.7.8 80 443\r\n",
    b"PROXY TCP4 1..3.4 5.6.7.8 80 443\r\n",
    "PROXY TCP4 \u0661.2.3.4 5.6.7.8 80 443\r\n".encode(),
    # family mismatch, bad IPv6 text
    b"PROXY TCP4 ::1 ::2 80 443\r\n",
    b"PROXY TCP6 1.2.3.4 5.6.7.8 80 443\r\n",
    b"PROXY TCP6 fe80::1%eth0 ::1 80 443\r\n",
    b"PROXY TCP6 ::1 ::ffff:01.2.3.4 80 443\r\n",
    b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 80 443\r\n",
    b"PROXY TCP6 1::2::3 ::1 80 443\r\n",
    b"PROXY TCP6 12345::1 ::1 80 443\r\n",
    # ports
    b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 443\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 80 65536\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 099 443\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 00 443\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 443\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 443\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 0x50 443\r\n",
    "PROXY TCP4 1.2.3.4 5.6.7.8 80 4\u0664\u0663\r\n".encode(),
    # spacing and fields
    b"PROXY  TCP4 1.2.3.4 5.6.7.8 80 443\r\n",
    b"PROXY TCP4  1.2.3.4 5.6.7.8 80 443\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8  80 443\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443 \r\n",
    b"PROXY TCP4 1.2.3.4\t5.6.7.8 80 443\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443 25\r\n",
    b" PROXY TCP4 1.2.3.4 5.6.7.8 80 443\r\n",
    # line endings and length
    b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\n",
    b"PROXY UNKNOWN\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\r\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\rX\r\n",
    b"PROXY UNKNOWN \r \r\n",
    b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n",  # 108 bytes
    b"PROXY UNKNOWN " + b"x" * 300,
    # v2 signature, version, command
    b"\r\n\r\n\x00\r\nQUIT\r" + b"\x21\x11\x00\x0c" + b"\x00" * 12,
    b"\r\n\r\n\x01\r\nQUIT\n" + b"\x21\x11\x00\x0c" + b"\x00" * 12,
    v2(0x11, 0x11, b"\x00" * 12),  # version 1
    v2(0x31, 0x11, b"\x00" * 12),  # version 3
    v2(0x01, 0x11, b"\x00" * 12),  # version 0
    v2(0x22, 0x11, b"\x00" * 12),  # command 2
    v2(0x2F, 0x11, b"\x00" * 12),  # command 15
    # v2 family/transport
    v2(0x21, 0x12, b"\x00" * 12),  # UDP over IPv4
    v2(0x21, 0x22, b"\x00" * 36),  # UDP over IPv6
    v2(0x21, 0x32, b"\x00" * 216),  # UNIX datagram
    v2(0x21, 0x41, b"\x00" * 12),  # undefined family
    v2(0x21, 0x13, b"\x00" * 12),  # undefined transport
    v2(0x20, 0x41, b""),  # undefined family, even for LOCAL
    # v2 address blocks shorter than their family
    v2(0x21, 0x11, b"\x00" * 11),
    v2(0x21, 0x21, b"\x00" * 35),
    v2(0x21, 0x31, b"\x00" * 215),
    v2(0x21, 0x11, b""),
    # v2 TLVs
    v2(0x21, 0x11, b"\x00" * 12 + b"\x01"),  # one stray byte: no room for a TLV head
    v2(0x21, 0x11, b"\x00" * 12 + b"\x01\x00"),
    v2(0x21, 0x11, b"\x00" * 12 + b"\x01\x00\x05abcd"),  # value overruns by one
    v2(0x21, 0x11, b"\x00" * 12 + tlv(4, b"") + b"\x01\xff\xff"),  # second one overruns
    v2(0x21, 0x31, b"\x00" * 216 + b"\x01\x00\x01"),
    # v2 length beyond the default bound (4096)
    v2(0x21, 0x11, b"\x00" * 4097),
    v2(0x20, 0x00, b"\x00" * 4097),
]


@pytest.mark.parametrize("buffer", MALFORMED)
def test_malformed_inputs_are_invalid(buffer: bytes) -> None:
    assert isinstance(parse(buffer), Invalid)
    # Whatever arrives next cannot repair it.
    assert isinstance(parse(buffer + b"\r\n" + b"\x00" * 300), Invalid)


def test_invalid_reasons_say_what_is_wrong() -> None:
    def reason(buffer: bytes) -> str:
        result = parse(buffer)
        assert isinstance(result, Invalid)
        return result.reason

    assert "107" in reason(b"PROXY UNKNOWN " + b"x" * 200)
    assert "bare LF" in reason(b"PROXY UNKNOWN\n")
    assert "port" in reason(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 443\r\n")
    assert "unsupported transport" in reason(v2(0x21, 0x12, b"\x00" * 12))
    assert "version" in reason(v2(0x11, 0x11, b"\x00" * 12))
    assert "command" in reason(v2(0x22, 0x11, b"\x00" * 12))
    assert "exceeds" in reason(v2(0x21, 0x11, b"\x00" * 4097))


def test_max_v2_length_is_configurable() -> None:
    header = v2(0x21, 0x11, b"\x00" * 12 + tlv(0xE0, b"x" * 100))
    assert isinstance(parse(header, max_v2_length=114), Invalid)
    assert parse(header, max_v2_length=115) == parse(header)
    assert isinstance(parse(header), Parsed)
    # The bound is enforced from the length field alone, before the block arrives.
    assert isinstance(parse(header[:16], max_v2_length=114), Invalid)
    assert isinstance(parse(v2(0x21, 0x11, b"", length=4097)), Invalid)


@pytest.mark.parametrize(
    "buffer",
    [
        b"X",
        b"PROXZ",
        b"PROXY\r",
        b"PROXY  ",
        b"PROXY tcp",
        b"PROXY TCP7",
        b"PROXY UNKNOWNX",
        b"PROXY UNKNOWN\rX",
        b"PROXY TCP4 01",
        b"PROXY TCP4 256",
        b"PROXY TCP4 1.2.3.4.",
        b"PROXY TCP4 1..",
        b"PROXY TCP4 .",
        b"PROXY TCP4 1.2.3.4  ",
        b"PROXY TCP4 ::",
        b"PROXY TCP4 1.2.3 ",
        b"PROXY TCP6 1.2.3.4 ",
        b"PROXY TCP6 :::",
        b"PROXY TCP6 12345",
        b"PROXY TCP6 ::1 ::2 1 2 ",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 08",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 80 65536",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\n",
        b"\n",
        b"\r\r",
        b"\r\n\r\n\x00\r\nQUIX",
        V2_SIGNATURE + b"\x11",
        V2_SIGNATURE + b"\x23",
        V2_SIGNATURE + b"\x21\x12",
        V2_SIGNATURE + b"\x21\x14",
        V2_SIGNATURE + b"\x21\x11\x00\x0b",
        V2_SIGNATURE + b"\x21\x11\x00\x0d",  # 1 byte after the addresses: never a TLV
        V2_SIGNATURE + b"\x21\x11\x10\x01",
        V2_SIGNATURE + b"\x21\x11\x00\x10" + b"\x00" * 12 + b"\x01\x00\x02",
    ],
)
def test_invalid_is_decided_as_soon_as_possible(buffer: bytes) -> None:
    assert isinstance(parse(buffer), Invalid)


@pytest.mark.parametrize(
    "buffer",
    [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 0",  # "0" is a whole port; a digit after it would not be
        b"PROXY TCP6 ::ffff:1.2.",
        b"PROXY TCP6 1:2:3:4:5:6:7::",
        b"PROXY UNKNOWN \x00\xff anything",
        b"PROXY UNKNOWN\r",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\r",
        V2_SIGNATURE + b"\x21\x11\xff\xff",  # length within a raised bound
    ],
)
def test_valid_prefixes_are_incomplete(buffer: bytes) -> None:
    assert parse(buffer, max_v2_length=0xFFFF) == Incomplete()


# --- properties -------------------------------------------------------------------

ipv4_text = st.ip_addresses(v=4).map(str)
ipv6_text = st.ip_addresses(v=6).map(str)
ports = st.integers(min_value=0, max_value=0xFFFF)
tlv_lists = st.lists(st.tuples(st.integers(min_value=0, max_value=0xFF), st.binary(max_size=40)), max_size=4)
trailing = st.binary(max_size=64)


def same_family_pairs() -> st.SearchStrategy[tuple[str, str, str]]:
    return st.one_of(
        st.tuples(st.just("TCP4"), ipv4_text, ipv4_text),
        st.tuples(st.just("TCP6"), ipv6_text, ipv6_text),
    )


@examples(300)
@given(same_family_pairs(), ports, ports, trailing)
def test_v1_round_trip(addresses: tuple[str, str, str], src_port: int, dst_port: int, rest: bytes) -> None:
    family, src, dst = addresses
    wire = encode_v1((src, src_port), (dst, dst_port))
    assert parse(wire) == Parsed(ProxyHeader(1, "PROXY", family, (src, src_port), (dst, dst_port)), len(wire))
    result = parsed(parse(wire + rest))
    assert result.consumed == len(wire)
    assert (wire + rest)[result.consumed :] == rest


@examples(300)
@given(same_family_pairs(), ports, ports, tlv_lists, trailing)
def test_v2_round_trip(
    addresses: tuple[str, str, str],
    src_port: int,
    dst_port: int,
    tlvs: list[tuple[int, bytes]],
    rest: bytes,
) -> None:
    family, src, dst = addresses
    wire = encode_v2((src, src_port), (dst, dst_port), tlvs=tlvs)
    header = ProxyHeader(2, "PROXY", family, (src, src_port), (dst, dst_port), tuple(tlvs))
    assert parse(wire) == Parsed(header, len(wire))
    result = parsed(parse(wire + rest))
    assert result.consumed == len(wire)
    assert (wire + rest)[result.consumed :] == rest


@examples(200)
@given(ipv4_text, ipv6_text, ports, ports, st.booleans())
def test_mixed_families_round_trip_as_ipv4_mapped(
    v4: str, v6: str, port_a: int, port_b: int, v4_first: bool
) -> None:
    mapped = str(ipaddress.IPv6Address("::ffff:" + v4))
    if v4_first:
        source, destination = (v4, port_a), (v6, port_b)
        expected = ((mapped, port_a), (v6, port_b))
    else:
        source, destination = (v6, port_a), (v4, port_b)
        expected = ((v6, port_a), (mapped, port_b))
    for wire in (encode_v1(source, destination), encode_v2(source, destination)):
        header = parsed(parse(wire)).header
        assert header.family == "TCP6"
        assert (header.source, header.destination) == expected


def ipv6_spellings(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> st.SearchStrategy[str]:
    assert isinstance(address, ipaddress.IPv6Address)
    spellings = {address.compressed, address.exploded, address.compressed.upper()}
    if address.ipv4_mapped is not None:
        spellings.add(f"::ffff:{address.ipv4_mapped}")
    return st.sampled_from(sorted(spellings))


@examples(200)
@given(
    st.ip_addresses(v=6).flatmap(lambda a: st.tuples(st.just(a), ipv6_spellings(a))),
    st.ip_addresses(v=6).flatmap(lambda a: st.tuples(st.just(a), ipv6_spellings(a))),
    ports,
    ports,
)
def test_v1_accepts_every_ipv6_spelling_and_every_prefix_is_incomplete(
    source: tuple[ipaddress.IPv6Address, str],
    destination: tuple[ipaddress.IPv6Address, str],
    src_port: int,
    dst_port: int,
) -> None:
    wire = f"PROXY TCP6 {source[1]} {destination[1]} {src_port} {dst_port}\r\n".encode()
    for end in range(len(wire)):
        assert parse(wire[:end]) == Incomplete(), wire[:end]
    header = parsed(parse(wire)).header
    assert header.source == (str(source[0]), src_port)
    assert header.destination == (str(destination[0]), dst_port)


@examples(300)
@given(
    st.one_of(
        st.builds(encode_v1, st.tuples(ipv4_text, ports), st.tuples(ipv6_text, ports)),
        st.builds(
            lambda s, d, t: encode_v2(s, d, tlvs=t),
            st.tuples(st.one_of(ipv4_text, ipv6_text), ports),
            st.tuples(st.one_of(ipv4_text, ipv6_text), ports),
            tlv_lists,
        ),
        st.just(V2_UNIX_WITH_TLVS),
    ),
    trailing,
    st.lists(st.integers(min_value=1, max_value=40), max_size=30),
)
def test_fragmented_delivery(wire: bytes, rest: bytes, chunk_sizes: list[int]) -> None:
    """Bytes arriving in arbitrary chunks give Incomplete until the header is whole."""
    stream = wire + rest
    buffer = b""
    position = 0
    sizes = iter(chunk_sizes)
    while True:
        size = next(sizes, len(stream))
        buffer += stream[position : position + size]
        position += size
        result = parse(buffer)
        if len(buffer) < len(wire):
            assert result == Incomplete()
            continue
        assert isinstance(result, Parsed)
        assert result.consumed == len(wire)
        # What arrived with the end of the header must reach the wrapped protocol.
        assert buffer[result.consumed :] + stream[position:] == rest
        break
