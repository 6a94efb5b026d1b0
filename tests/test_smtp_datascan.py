"""The DATA/BDAT body scanner: examples, smuggling payloads, and properties over random chunkings."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relaybal.smtp.datascan import BodyError, DataScanner
from relaybal.smtp.wire import dot_stuff

BIG = 10**9


def scan(
    chunks: list[bytes],
    *,
    normalize: bool = False,
    max_line: int = 1000,
    max_size: int = BIG,
    after_crlf: bool = True,
) -> tuple[bytes, bytes | None, BodyError | None]:
    """(emitted body, bytes after the end or None, error) for ``chunks`` fed in order."""
    out: list[bytes] = []
    scanner = DataScanner(
        out.append, normalize=normalize, max_line=max_line, max_size=max_size, after_crlf=after_crlf
    )
    rest: bytes | None = None
    for i, chunk in enumerate(chunks):
        rest = scanner.feed(chunk)
        if rest is not None:
            rest += b"".join(chunks[i + 1 :])
            break
    if scanner.error is None:
        assert scanner.size == len(b"".join(out))
    return b"".join(out), rest, scanner.error


def scan_raw(
    chunks: list[bytes], *, normalize: bool = False, max_line: int = 1000
) -> tuple[bytes, BodyError | None]:
    out: list[bytes] = []
    scanner = DataScanner(out.append, normalize=normalize, max_line=max_line, max_size=BIG)
    for chunk in chunks:
        scanner.feed_raw(chunk)
    scanner.finish_raw()
    return b"".join(out), scanner.error


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces = []
    start = 0
    for p in points:
        pieces.append(data[start:p])
        start = p
    pieces.append(data[start:])
    return pieces


# ----------------------------------------------------------------------------- examples


def test_simple_body_ends_at_crlf_dot_crlf() -> None:
    body, rest, error = scan([b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n"])
    assert (body, rest, error) == (b"Subject: x\r\n\r\nhello\r\n", b"QUIT\r\n", None)


def test_empty_body() -> None:
    assert scan([b".\r\n"]) == (b"", b"", None)


def test_incomplete_body_returns_none() -> None:
    body, rest, error = scan([b"hello\r\n", b"world\r\n.\r"])
    assert rest is None and error is None and body == b"hello\r\nworld\r\n"


def test_dot_unstuffing_removes_one_leading_dot() -> None:
    body, _, _ = scan([b"..\r\n...x\r\n.y\r\nz.\r\n.\r\n"])
    assert body == b".\r\n..x\r\ny\r\nz.\r\n"


def test_leading_dot_at_the_very_start_is_unstuffed() -> None:
    assert scan([b"..hidden\r\n.\r\n"])[0] == b".hidden\r\n"


def test_end_split_over_every_boundary() -> None:
    data = b"a\r\nb\r\n.\r\nNOOP\r\n"
    for i in range(1, len(data)):
        assert scan([data[:i], data[i:]]) == (b"a\r\nb\r\n", b"NOOP\r\n", None), i


def test_end_one_byte_at_a_time() -> None:
    data = b"x\r\n..y\r\n.\r\nRSET\r\n"
    assert scan([bytes([b]) for b in data]) == (b"x\r\n.y\r\n", b"RSET\r\n", None)


@pytest.mark.parametrize(
    "payload",
    [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r.\r\n", b"\r\n\x00.\r\n", b"\r\n.\n", b"\n.\r", b"\r\n .\r\n"],
)
@pytest.mark.parametrize("normalize", [False, True])
def test_smuggling_payloads_do_not_end_data(payload: bytes, normalize: bool) -> None:
    second = b"MAIL FROM:<evil@example.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n"
    data = b"Subject: a\r\n\r\nfirst" + payload + second + b"smuggled\r\n.\r\nQUIT\r\n"
    body, rest, error = scan([data], normalize=normalize)
    # The real end is the last one: the second MAIL FROM is body, never a command.
    assert rest == b"QUIT\r\n"
    if normalize:
        assert error is None
        assert b"MAIL FROM:<evil" in body
        assert not re.search(rb"\r(?!\n)|(?<!\r)\n|\x00", body)
    else:
        assert error in (BodyError.BARE_NEWLINE, BodyError.NUL) or payload == b"\r\n .\r\n"


def test_bare_lf_rejected_but_read_to_the_end() -> None:
    body, rest, error = scan([b"a\nb\r\n", b"more\r\n.\r\nNOOP\r\n"])
    assert error is BodyError.BARE_NEWLINE
    assert rest == b"NOOP\r\n"


def test_bare_cr_rejected() -> None:
    assert scan([b"a\rb\r\n.\r\n"])[2] is BodyError.BARE_NEWLINE


def test_cr_at_chunk_end_followed_by_lf_is_not_bare() -> None:
    assert scan([b"a\r", b"\nb\r\n.\r\n"]) == (b"a\r\nb\r\n", b"", None)


def test_normalize_turns_lone_cr_and_lf_into_crlf() -> None:
    body, _, error = scan([b"a\nb\rc\r\r\nd\r\n.\r\n"], normalize=True)
    assert error is None
    assert body == b"a\r\nb\r\nc\r\n\r\nd\r\n"


def test_nul_rejected_or_removed() -> None:
    assert scan([b"a\x00b\r\n.\r\n"])[2] is BodyError.NUL
    assert scan([b"a\x00b\r\n.\r\n"], normalize=True) == (b"ab\r\n", b"", None)


def test_nul_between_cr_and_lf_is_two_line_ends_under_normalize() -> None:
    assert scan([b"a\r\x00\nb\r\n.\r\n"], normalize=True)[0] == b"a\r\n\r\nb\r\n"


def test_line_length_limit_counts_crlf() -> None:
    ok = b"x" * 998 + b"\r\n"
    assert scan([ok + b".\r\n"], max_line=1000) == (ok, b"", None)
    long = b"x" * 999 + b"\r\n"
    assert scan([long + b".\r\n"], max_line=1000)[2] is BodyError.LINE_TOO_LONG


def test_long_line_then_command_looking_text_is_one_refusal() -> None:
    data = b"x" * 20000 + b"\r\nRSET\r\nMAIL FROM:<a@b.test>\r\nQUIT\r\n.\r\nNOOP\r\n"
    for chunks in ([data], [data[i : i + 1460] for i in range(0, len(data), 1460)]):
        body, rest, error = scan(chunks)
        assert error is BodyError.LINE_TOO_LONG
        assert rest == b"NOOP\r\n"


def test_partial_line_is_bounded() -> None:
    out: list[bytes] = []
    scanner = DataScanner(out.append, normalize=False, max_line=1000, max_size=BIG)
    for _ in range(1000):
        assert scanner.feed(b"y" * 4096) is None
    assert scanner.error is BodyError.LINE_TOO_LONG
    assert len(scanner._carry) + len(scanner._tail) <= 1004
    assert scanner.feed(b"\r\n.\r\n") == b""


def test_size_limit() -> None:
    assert scan([b"12345678\r\n.\r\n"], max_size=10) == (b"12345678\r\n", b"", None)
    assert scan([b"123456789\r\n.\r\n"], max_size=10)[2] is BodyError.TOO_BIG


def test_after_crlf_false_makes_an_initial_dot_line_body() -> None:
    body, rest, error = scan([b".\r\nx\r\n.\r\n"], after_crlf=False, normalize=True)
    assert (body, rest, error) == (b".\r\nx\r\n", b"", None)


def test_raw_mode_keeps_dots_and_ends_the_last_line() -> None:
    assert scan_raw([b".\r\n..a\r\nb"]) == (b".\r\n..a\r\nb\r\n", None)
    assert scan_raw([b"a\r", b"\nb\r\n"]) == (b"a\r\nb\r\n", None)
    assert scan_raw([b"a\r"]) == (b"", BodyError.BARE_NEWLINE)
    assert scan_raw([b"a\r"], normalize=True) == (b"a\r\n", None)
    assert scan_raw([b"a\nb"])[1] is BodyError.BARE_NEWLINE


# ----------------------------------------------------------------------------- properties

PIECES = st.sampled_from(
    [b"a", b"b", b".", b"..", b"\r", b"\n", b"\r\n", b"\x00", b"\r\n.", b"\r\n.\r\n", b"\r\n..", b"xyz"]
)
BYTESOUP = st.lists(PIECES, max_size=60).map(b"".join)
CUTS = st.lists(st.integers(min_value=0, max_value=10_000), max_size=8)


@settings(max_examples=500)
@given(
    data=BYTESOUP,
    cuts=CUTS,
    normalize=st.booleans(),
    max_line=st.integers(3, 40),
    max_size=st.integers(0, 200),
)
@example(data=b"a\r\n.\r\n", cuts=[2], normalize=False, max_line=3, max_size=100)
def test_any_chunking_gives_the_same_result(
    data: bytes, cuts: list[int], normalize: bool, max_line: int, max_size: int
) -> None:
    whole = scan([data], normalize=normalize, max_line=max_line, max_size=max_size)
    chunked = scan(split_at(data, cuts), normalize=normalize, max_line=max_line, max_size=max_size)
    assert chunked[1] == whole[1]  # the same end (or none)
    assert (chunked[2] is None) == (whole[2] is None)
    if whole[2] is None:
        assert chunked[0] == whole[0]


@settings(max_examples=500)
@given(data=BYTESOUP, cuts=CUTS, normalize=st.booleans())
def test_output_is_always_clean_crlf_lines(data: bytes, cuts: list[int], normalize: bool) -> None:
    body, rest, error = scan(split_at(data + b"\r\n.\r\n", cuts), normalize=normalize, max_line=10**6)
    assert rest is not None
    if error is None:
        assert not re.search(rb"\r(?!\n)|(?<!\r)\n|\x00", body)
        assert body == b"" or body.endswith(b"\r\n")


@settings(max_examples=300)
@given(data=BYTESOUP, cuts=CUTS)
def test_end_is_the_first_crlf_dot_crlf(data: bytes, cuts: list[int]) -> None:
    _, rest, _ = scan(split_at(data, cuts), normalize=True, max_line=10**6)
    end = (b"\r\n" + data).find(b"\r\n.\r\n")
    assert rest == (None if end < 0 else (b"\r\n" + data)[end + 5 :])


LINE = st.lists(st.sampled_from([b"a", b".", b" ", b"\xc3\xa9", b"\t", b"b"]), max_size=12).map(b"".join)


@settings(max_examples=500)
@given(lines=st.lists(LINE, max_size=15), cuts=CUTS, trailing=st.booleans())
def test_dot_stuffing_round_trips(lines: list[bytes], cuts: list[int], trailing: bool) -> None:
    body = b"\r\n".join(lines) + (b"\r\n" if lines and trailing else b"")
    wire = dot_stuff(body) + b"NEXT\r\n"
    expected = body if body == b"" or body.endswith(b"\r\n") else body + b"\r\n"
    assert scan(split_at(wire, cuts)) == (expected, b"NEXT\r\n", None)


@settings(max_examples=300)
@given(data=BYTESOUP, cuts=CUTS, normalize=st.booleans(), max_line=st.integers(3, 40))
def test_raw_mode_any_chunking_gives_the_same_result(
    data: bytes, cuts: list[int], normalize: bool, max_line: int
) -> None:
    whole = scan_raw([data], normalize=normalize, max_line=max_line)
    chunked = scan_raw(split_at(data, cuts), normalize=normalize, max_line=max_line)
    assert (chunked[1] is None) == (whole[1] is None)
    if whole[1] is None:
        assert chunked[0] == whole[0]
        assert not re.search(rb"\r(?!\n)|(?<!\r)\n|\x00", chunked[0])
