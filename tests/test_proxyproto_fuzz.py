"""Fuzz tests for relaybal.proxyproto.parse: no exceptions, consistent answers as bytes arrive.

Each test fixes max_examples (and derandomizes) so the amount of fuzzing is
known and every run is the same: 2,000 examples each for the four fuzz tests
below, 8,000 in all.
"""

from __future__ import annotations

import ipaddress
import re
import struct

from hypothesis import event, given, settings
from hypothesis import strategies as st
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser

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

FUZZ_EXAMPLES = 2000


def examples(count: int) -> settings:
    """Run ``count`` examples derived from the test's name: every run sees the same inputs."""
    return settings(max_examples=count, derandomize=True, database=None, deadline=None)


def check_well_formed(buffer: bytes, result: ParseResult) -> None:
    assert isinstance(result, Incomplete | Invalid | Parsed)
    if isinstance(result, Parsed):
        assert 0 < result.consumed <= len(buffer)
        assert result.header.version in (1, 2)
        assert (result.header.source is None) == (result.header.destination is None)
    if isinstance(result, Invalid):
        assert result.reason


def check_every_prefix(buffer: bytes) -> ParseResult:
    """Parse each prefix of ``buffer``: Incomplete until decided, then never changing.

    This is what makes re-parsing a growing buffer safe: a verdict reached on
    some bytes is the verdict for any bytes that start with them.
    """
    decided: ParseResult | None = None
    for end in range(len(buffer) + 1):
        result = parse(buffer[:end])
        check_well_formed(buffer[:end], result)
        if decided is None:
            if not isinstance(result, Incomplete):
                decided = result
        elif isinstance(decided, Invalid):
            assert isinstance(result, Invalid), (buffer[:end], decided, result)
        else:
            assert result == decided, (buffer[:end], decided, result)
    result = parse(buffer)
    # Shown by --hypothesis-show-statistics: how often each verdict was exercised.
    event(type(result).__name__)
    return result


def check_against_twisted(buffer: bytes, result: ParseResult) -> None:
    """Whatever we accept, Twisted's laxer reader accepts with the same addresses."""
    if not isinstance(result, Parsed) or result.header.family not in ("TCP4", "TCP6"):
        return
    header = result.header
    wire = buffer[: result.consumed]
    info = V1Parser.parse(wire[:-2]) if header.version == 1 else V2Parser.parse(wire)
    assert header.source is not None and header.destination is not None
    for ours, theirs in ((header.source, info.source), (header.destination, info.destination)):
        host, port = ours
        assert ipaddress.ip_address(host) == ipaddress.ip_address(theirs.host)  # type: ignore[union-attr]
        assert port == theirs.port  # type: ignore[union-attr]


@examples(FUZZ_EXAMPLES)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(buffer: bytes) -> None:
    result = parse(buffer)
    event(type(result).__name__)
    check_well_formed(buffer, result)
    check_well_formed(buffer, parse(buffer, max_v2_length=0xFFFF))


@examples(FUZZ_EXAMPLES)
@given(
    st.sampled_from([b"", b"PROXY ", V2_SIGNATURE, V2_SIGNATURE + b"\x21", V2_SIGNATURE[:7]]),
    st.binary(max_size=120),
)
def test_random_bytes_after_a_signature_are_consistent(prefix: bytes, tail: bytes) -> None:
    buffer = prefix + tail
    check_against_twisted(buffer, check_every_prefix(buffer))


# --- mutations of valid headers -----------------------------------------------------

ports = st.integers(min_value=0, max_value=0xFFFF)
ip_text = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))
endpoints = st.tuples(ip_text, ports)
tlv_lists = st.lists(st.tuples(st.integers(min_value=0, max_value=0xFF), st.binary(max_size=12)), max_size=3)


def unix_header(source: bytes, destination: bytes, tlvs: bytes) -> bytes:
    block = source.ljust(108, b"\x00") + destination.ljust(108, b"\x00") + tlvs
    return V2_SIGNATURE + b"\x21\x31" + struct.pack("!H", len(block)) + block


valid_headers = st.one_of(
    st.builds(encode_v1, endpoints, endpoints),
    st.builds(lambda s, d, t: encode_v2(s, d, tlvs=t), endpoints, endpoints, tlv_lists),
    st.just(encode_v1(None, None)),
    st.just(encode_v2(None, None)),
    st.builds(
        lambda junk: b"PROXY UNKNOWN " + junk + b"\r\n",
        st.binary(max_size=95).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    ),
    st.builds(
        unix_header,
        st.binary(max_size=108),
        st.binary(max_size=108),
        st.sampled_from([b"", b"\x04\x00\x00", b"\x05\x00\x02id"]),
    ),
)


@st.composite
def mutated_headers(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(valid_headers) + draw(st.binary(max_size=8)))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        if not data:
            break
        index = draw(st.integers(min_value=0, max_value=len(data) - 1))
        operation = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        if operation == "replace":
            data[index] = draw(st.integers(min_value=0, max_value=0xFF))
        elif operation == "insert":
            data[index:index] = draw(st.binary(min_size=1, max_size=3))
        elif operation == "delete":
            del data[index]
        else:
            del data[index:]
    return bytes(data)


@examples(FUZZ_EXAMPLES)
@given(mutated_headers())
def test_mutated_headers_are_consistent_across_prefixes(buffer: bytes) -> None:
    check_against_twisted(buffer, check_every_prefix(buffer))


# --- v1 lines from a grammar of good and bad pieces, against a reference reader -----

good_ipv4 = st.ip_addresses(v=4).map(str)
good_ipv6 = st.ip_addresses(v=6).flatmap(
    lambda a: st.sampled_from([a.compressed, a.exploded, a.compressed.upper()])
)
bad_addresses = st.one_of(
    st.sampled_from(
        [
            "001.2.3.4",
            "1.2.3",
            "256.1.1.1",
            "1.2.3.4.5",
            "::ffff:1.2.3.4",
            "::ffff:01.2.3.4",
            "fe80::1%eth0",
            "1:2:3:4:5:6:7:8:9",
            "1::2::3",
            "",
        ]
    ),
    st.text(alphabet="0123456789abcdefABCDEF:.", max_size=12),
    good_ipv4,
    good_ipv6,
)
bad_ports = st.one_of(
    st.sampled_from(["099", "00", "65536", "99999", "+1", "-1", "", "1e3"]),
    st.text(alphabet="0123456789", max_size=6),
)
# Index into [PROXY, protocol, source, destination, source port, destination port].
bad_pieces = [
    st.sampled_from(["proxy", "PROXI", "PROXY ", ""]),
    st.sampled_from(["tcp4", "TCP5", "", "UNKNOWNX", "TCP4", "TCP6", "UNKNOWN"]),
    bad_addresses,
    bad_addresses,
    bad_ports,
    bad_ports,
]
bad_separators = st.sampled_from(["  ", "\t", "", "\r", "\n"])
bad_endings = st.sampled_from(["\n", "\r", "", "\r\r\n", " \r\n", "\n\r"])


@st.composite
def v1_lines(draw: st.DrawFn) -> bytes:
    """A valid TCP4/TCP6 line, then (most of the time) one or two of its parts spoiled."""
    if draw(st.booleans()):
        protocol, addresses = "TCP4", good_ipv4
    else:
        protocol, addresses = "TCP6", good_ipv6
    pieces = ["PROXY", protocol, draw(addresses), draw(addresses), str(draw(ports))]
    pieces.append(str(draw(ports)))
    separators = [" "] * (len(pieces) - 1)
    ending = "\r\n"
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        where = draw(st.sampled_from(["piece", "separator", "ending", "truncate"]))
        if where == "piece":
            index = draw(st.integers(min_value=0, max_value=len(pieces) - 1))
            pieces[index] = draw(bad_pieces[index])
        elif where == "separator":
            index = draw(st.integers(min_value=0, max_value=len(separators) - 1))
            separators[index] = draw(bad_separators)
        elif where == "ending":
            ending = draw(bad_endings)
        elif len(pieces) > 2:
            # A short line, as a truncated or UNKNOWN one would be.
            del pieces[draw(st.integers(min_value=2, max_value=len(pieces) - 1)) :]
            del separators[len(pieces) - 1 :]
    line = pieces[0] + "".join(sep + piece for sep, piece in zip(separators, pieces[1:], strict=True))
    return (line + ending).encode() + draw(st.binary(max_size=6))


_REFERENCE_TCP = re.compile(rb"PROXY (TCP4|TCP6) ([^ ]+) ([^ ]+) (0|[1-9][0-9]*) (0|[1-9][0-9]*)")


def reference_v1(buffer: bytes) -> ProxyHeader | None:
    """An independent reading of the v1 rules, for a buffer holding a whole line."""
    lf = buffer.find(b"\n")
    line = buffer[: lf + 1]
    if len(line) > 107 or not line.endswith(b"\r\n") or b"\r" in line[:-2]:
        return None
    body = line[:-2]
    if body == b"PROXY UNKNOWN" or body.startswith(b"PROXY UNKNOWN "):
        return ProxyHeader(1, "LOCAL", "UNSPEC", None, None)
    match = _REFERENCE_TCP.fullmatch(body)
    if match is None:
        return None
    protocol, src, dst, src_port, dst_port = match.groups()
    if int(src_port) > 65535 or int(dst_port) > 65535:
        return None
    try:
        text = (src.decode("ascii"), dst.decode("ascii"))
        if protocol == b"TCP4":
            ips = [ipaddress.IPv4Address(t) for t in text]
            if [str(ip) for ip in ips] != list(text):
                return None
        else:
            if any("%" in t for t in text):
                return None
            ips = [ipaddress.IPv6Address(t) for t in text]  # type: ignore[misc]
    except ValueError:
        return None
    return ProxyHeader(
        1,
        "PROXY",
        protocol.decode(),
        (str(ips[0]), int(src_port)),
        (str(ips[1]), int(dst_port)),
    )


@examples(FUZZ_EXAMPLES)
@given(v1_lines())
def test_v1_grammar_fuzz_matches_the_reference(buffer: bytes) -> None:
    result = check_every_prefix(buffer)
    check_against_twisted(buffer, result)
    lf = buffer.find(b"\n")
    if 0 <= lf < 107 or len(buffer) >= 107:
        expected = reference_v1(buffer) if lf >= 0 else None
        if expected is None:
            assert isinstance(result, Invalid), (buffer, result)
        else:
            assert result == Parsed(expected, lf + 1), buffer
    else:
        # No line end yet, and not too long to rule it out: only a valid prefix waits.
        assert isinstance(result, Incomplete | Invalid)
