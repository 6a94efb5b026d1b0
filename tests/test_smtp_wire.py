"""SMTP wire helpers: replies, command and path parsing (examples and hypothesis), dot-stuffing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaybal.smtp.wire import (
    NULL_SENDER,
    CommandError,
    DotStuffer,
    Limits,
    Mailbox,
    Reply,
    check_helo_name,
    dot_stuff,
    parse_params,
    parse_path_and_params,
    reply,
    split_command,
    xtext_decode,
)


def mail(args: bytes, **kw: object) -> tuple[Mailbox, dict[str, str | None]]:
    parsed = parse_path_and_params(args, b"FROM", null_allowed=True, sender=True, **kw)  # type: ignore[arg-type]
    return parsed.mailbox, dict(parsed.params)


def rcpt(args: bytes, **kw: object) -> Mailbox:
    parsed = parse_path_and_params(
        args,
        b"TO",
        null_allowed=False,
        postmaster_allowed=True,
        sender=False,
        **kw,  # type: ignore[arg-type]
    )
    return parsed.mailbox


def refusal(call: object, *args: object, **kw: object) -> tuple[int, str]:
    with pytest.raises(CommandError) as info:
        call(*args, **kw)  # type: ignore[operator]
    return info.value.reply.code, info.value.reply.status


# ----------------------------------------------------------------------------- replies


def test_single_line_reply() -> None:
    assert reply(250, "2.1.0", "Ok") == b"250 2.1.0 Ok\r\n"


def test_multi_line_reply_repeats_the_status() -> None:
    assert reply(550, "5.7.1", "no\nreally") == b"550-5.7.1 no\r\n550 5.7.1 really\r\n"


def test_reply_without_status() -> None:
    assert reply(250, "", "a\nb") == b"250-a\r\n250 b\r\n"


def test_reply_value() -> None:
    r = Reply(451, "4.3.0", "later")
    assert r.encode() == b"451 4.3.0 later\r\n"
    assert not r.positive and Reply(250, "2.0.0", "x").positive


# ----------------------------------------------------------------------------- commands


def test_split_command_uppercases_the_verb_only() -> None:
    assert split_command(b"mail FROM:<a@b>") == (b"MAIL", b"FROM:<a@b>")
    assert split_command(b"quit") == (b"QUIT", b"")


def test_helo_names() -> None:
    assert check_helo_name(b"client.example") == "client.example"
    assert check_helo_name(b"[192.0.2.1]") == "[192.0.2.1]"
    assert check_helo_name(b" DESKTOP_1 ") == "DESKTOP_1"
    for bad in (b"", b"   ", b"a\x00b", b"caf\xc3\xa9", b"x" * 256, b"a\rb"):
        assert refusal(check_helo_name, bad) == (501, "5.5.4")


# ----------------------------------------------------------------------------- paths


def test_plain_paths() -> None:
    assert mail(b"FROM:<user@example.com>") == (Mailbox("user", "example.com"), {})
    assert mail(b"from:<user@example.com> SIZE=100 BODY=8BITMIME") == (
        Mailbox("user", "example.com"),
        {"SIZE": "100", "BODY": "8BITMIME"},
    )
    assert rcpt(b"TO:<a.b+c@sub.example.org>") == Mailbox("a.b+c", "sub.example.org")


def test_null_sender_only_at_mail() -> None:
    assert mail(b"FROM:<>")[0] == NULL_SENDER
    assert str(NULL_SENDER) == ""
    assert refusal(rcpt, b"TO:<>") == (501, "5.1.3")


def test_postmaster_without_domain_only_at_rcpt() -> None:
    assert rcpt(b"TO:<Postmaster>") == Mailbox("Postmaster", "")
    assert refusal(mail, b"FROM:<postmaster>") == (501, "5.1.7")


def test_leniencies() -> None:
    assert mail(b"FROM: <a@b.c>")[0] == Mailbox("a", "b.c")
    assert mail(b"FROM:a@b.c SIZE=5") == (Mailbox("a", "b.c"), {"SIZE": "5"})
    assert rcpt(b"TO:<@relay1.example,@relay2.example:user@c.example>") == Mailbox("user", "c.example")


def test_quoted_local_parts() -> None:
    assert rcpt(b'TO:<"john smith"@example.com>') == Mailbox('"john smith"', "example.com")
    assert rcpt(b'TO:<"a>b\\"c"@example.com>') == Mailbox('"a>b\\"c"', "example.com")


def test_address_literals() -> None:
    assert rcpt(b"TO:<u@[192.0.2.1]>").domain == "[192.0.2.1]"
    assert rcpt(b"TO:<u@[IPv6:2001:db8::1]>").domain == "[IPv6:2001:db8::1]"
    assert rcpt(b"TO:<u@[x-tag:stuff]>").domain == "[x-tag:stuff]"
    for bad in (b"TO:<u@[300.1.1.1]>", b"TO:<u@[IPv6:nope]>", b"TO:<u@[1.2.3]>"):
        assert refusal(rcpt, bad) == (501, "5.1.3")


@pytest.mark.parametrize(
    "args",
    [
        b"TO:<>",
        b"TO:<user>",
        b"TO:<user@>",
        b"TO:<@example.com>",
        b"TO:<us er@example.com>",
        b"TO:<user@exa mple.com>",
        b"TO:<user@-example.com>",
        b"TO:<user@example-.com>",
        b"TO:<user@example..com>",
        b"TO:<.user@example.com>",
        b"TO:<user.@example.com>",
        b"TO:<us..er@example.com>",
        b"TO:<user@example.com",
        b"TO:<user@example.com>junk",
        b"TO:<a\x00b@example.com>",
        b"TO:<a\rb@example.com>",
        b'TO:<"unterminated@example.com>',
    ],
)
def test_bad_recipient_syntax(args: bytes) -> None:
    assert refusal(rcpt, args) == (501, "5.1.3")


def test_keyword_is_checked() -> None:
    assert refusal(rcpt, b"FROM:<a@b.c>") == (501, "5.5.4")
    assert refusal(mail, b"<a@b.c>") == (501, "5.5.4")


def test_rfc_length_limits() -> None:
    local64 = b"l" * 64
    assert rcpt(b"TO:<" + local64 + b"@example.com>").local == "l" * 64
    assert refusal(rcpt, b"TO:<" + local64 + b"l@example.com>") == (501, "5.1.3")
    label = b"d" * 60
    domain = b".".join([label] * 4)  # 243 octets
    assert len(rcpt(b"TO:<u@" + domain + b">").domain) == 243
    path = b"<" + b"u" * 64 + b"@" + b".".join([b"d" * 63] * 3) + b".example>"  # > 256
    assert len(path) > 256
    assert refusal(rcpt, b"TO:" + path) == (501, "5.1.3")
    assert rcpt(b"TO:" + path, limits=Limits(path=400)).local == "u" * 64


def test_raised_local_part_limit() -> None:
    long_local = b"s" * 100
    assert refusal(rcpt, b"TO:<" + long_local + b"@example.com>") == (501, "5.1.3")
    assert rcpt(b"TO:<" + long_local + b"@example.com>", limits=Limits(local_part=128)).local == "s" * 100


def test_utf8_addresses() -> None:
    box = rcpt("TO:<jöran@bücher.example>".encode())
    assert box == Mailbox("jöran", "bücher.example") and box.utf8
    assert not Mailbox("a", "b.c").utf8
    assert refusal(rcpt, "TO:<jöran@example.com>".encode(), smtputf8_allowed=False) == (553, "5.6.7")
    assert refusal(rcpt, b"TO:<j\xff@example.com>") == (501, "5.1.3")


def test_parameters() -> None:
    assert parse_params(" SIZE=1 SMTPUTF8  body=8BITMIME") == {
        "SIZE": "1",
        "SMTPUTF8": None,
        "BODY": "8BITMIME",
    }
    for bad in (" SIZE=1 size=2", " =x", " -A=1", " A=", " A=b=c"):
        with pytest.raises(CommandError):
            parse_params(bad)


def test_xtext() -> None:
    assert xtext_decode("user+2Bx+3Dy") == "user+x=y"
    assert xtext_decode("<>") == "<>"
    for bad in ("a+2", "a+zz", "a=b", "a b"):
        with pytest.raises(CommandError):
            xtext_decode(bad)


# ----------------------------------------------------------------------------- hypothesis: path grammar

ATEXT = "abcXYZ019!#$%&'*+-/=?^_`{|}~"
atoms = st.text(alphabet=ATEXT, min_size=1, max_size=8)
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)
domains = st.lists(labels, min_size=1, max_size=4).map(".".join)
dot_strings = st.lists(atoms, min_size=1, max_size=4).map(".".join)
quoted = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=10).map(
    lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
)


@settings(max_examples=400)
@given(local=st.one_of(dot_strings, quoted), domain=domains, size=st.integers(0, 10**12))
def test_valid_paths_parse_back_to_their_parts(local: str, domain: str, size: int) -> None:
    args = f"FROM:<{local}@{domain}> SIZE={size}".encode()
    limits = Limits(path=10_000, local_part=10_000)
    box, params = mail(args, limits=limits)
    assert (box.local, box.domain) == (local, domain)
    assert params == {"SIZE": str(size)}


@settings(max_examples=500)
@given(raw=st.binary(max_size=80))
def test_arbitrary_bytes_never_crash_the_parser(raw: bytes) -> None:
    for keyword in (b"FROM", b"TO"):
        try:
            parsed = parse_path_and_params(keyword + b":" + raw, keyword, null_allowed=True, sender=True)
        except CommandError as e:
            assert e.reply.code in (501, 553)
        else:
            text = str(parsed.mailbox)
            assert "\r" not in text and "\n" not in text and "\x00" not in text


@settings(max_examples=300)
@given(raw=st.binary(max_size=40))
def test_arbitrary_helo_names(raw: bytes) -> None:
    try:
        name = check_helo_name(raw)
    except CommandError:
        return
    assert name and name.isascii() and name.isprintable() and " " not in name


# ----------------------------------------------------------------------------- dot-stuffing


def test_dot_stuff_whole_bodies() -> None:
    assert dot_stuff(b"") == b".\r\n"
    assert dot_stuff(b".a\r\nb\r\n..\r\n") == b"..a\r\nb\r\n...\r\n.\r\n"
    assert dot_stuff(b"no newline") == b"no newline\r\n.\r\n"


@settings(max_examples=400)
@given(
    lines=st.lists(st.sampled_from([b"", b".", b"..", b"a", b".a", b"a.b"]), max_size=12),
    cuts=st.lists(st.integers(0, 200), max_size=6),
)
def test_dot_stuffer_is_independent_of_chunking(lines: list[bytes], cuts: list[int]) -> None:
    body = b"".join(line + b"\r\n" for line in lines)
    points = sorted({c % (len(body) + 1) for c in cuts})
    stuffer = DotStuffer()
    out = []
    start = 0
    for p in [*points, len(body)]:
        out.append(stuffer.stuff(body[start:p]))
        start = p
    assert b"".join(out) + stuffer.terminator() == dot_stuff(body)
    expected = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    assert b"".join(out) == expected


@settings(max_examples=500)
@given(
    local=st.one_of(dot_strings, atoms, st.text(alphabet="ab.", max_size=6)),
    domain=st.one_of(domains, st.text(alphabet="a-.", max_size=6)),
    keyword=st.sampled_from([b"FROM", b"TO", b"from"]),
    space=st.sampled_from([b"", b" "]),
    small=st.booleans(),
)
def test_fast_path_agrees_with_the_full_grammar(
    local: str, domain: str, keyword: bytes, space: bytes, small: bool
) -> None:
    from relaybal.smtp import wire

    args = keyword + b":" + space + f"<{local}@{domain}>".encode()
    limits = Limits(path=256, local_part=8, domain=12) if small else Limits()
    outcomes = []
    for parse in (
        lambda: wire.parse_path_and_params(
            args, keyword.upper(), limits=limits, null_allowed=True, sender=True
        ),
        lambda: wire._parse_path_and_params(
            args,
            keyword.upper(),
            limits=limits,
            smtputf8_allowed=True,
            null_allowed=True,
            postmaster_allowed=False,
            sender=True,
        ),
    ):
        try:
            outcomes.append(parse())
        except CommandError as e:
            outcomes.append(e.reply)
    assert outcomes[0] == outcomes[1]
