"""Verdicts, addresses, option converters and contexts: the values policies are made of."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaybal.policy import CONTINUE, PERMIT, Kind, Stage, Verdict, defer, disconnect, reject
from relaybal.policy.address import mail_address, normalise_domain
from relaybal.policy.context import context_of
from relaybal.policy.options import OptionReader, OptionValueError, Rate, domain, rate
from relaybal.policy.verdicts import DEFAULT_ACTION, parse_action, parse_reply
from relaybal.relay.interfaces import SessionState, TLSInfo
from relaybal.smtp.wire import Mailbox, Reply, parse_path_and_params

# ----------------------------------------------------------------------------- verdicts


def test_verdicts_always_carry_a_matching_enhanced_status_code() -> None:
    assert reject().reply == Reply(554, "5.7.1", "Access denied")
    assert defer().reply == Reply(450, "4.7.1", "Try again later")
    assert disconnect().reply == Reply(421, "4.7.0", "Closing connection")
    for make in [
        lambda: reject("x", "4.7.1"),
        lambda: reject("x", "5.7.1", 450),
        lambda: reject("x", "5.7", 550),
        lambda: reject("x", "", 550),
        lambda: defer("x", "4.7.1", 421),
        lambda: defer("x", "4.7.1", 550),
        lambda: disconnect("x", "5.7.0"),
        lambda: reject("two\nlines"),
        lambda: Verdict(Kind.PERMIT, Reply(250, "2.0.0", "x")),
        lambda: Verdict(Kind.REJECT, None),
    ]:
        with pytest.raises(ValueError):
            make()


def test_which_verdicts_decide() -> None:
    assert [v.decisive for v in (CONTINUE, PERMIT, reject(), defer(), disconnect())] == [
        False,
        True,
        True,
        True,
        True,
    ]
    assert not Verdict(Kind.DEFER_IF_PERMIT, Reply(450, "4.7.1", "x")).decisive
    assert str(reject("No", "5.7.1", 550)) == "REJECT 550 5.7.1 No" and str(PERMIT) == "PERMIT"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("defer", DEFAULT_ACTION),
        ("DEFER", DEFAULT_ACTION),
        ("reject", reject("Error: policy refused", "5.7.1")),
        ("continue", CONTINUE),
        ("dunno", CONTINUE),
        ("disconnect", disconnect("Error: policy unavailable", "4.3.0")),
        ("450 4.7.1 Slow down", defer("Slow down", "4.7.1", 450)),
        ("550 Nope", reject("Nope", "5.7.1", 550)),
        ("421 4.3.2 Bye", disconnect("Bye", "4.3.2")),
    ],
)
def test_default_actions(text: str, expected: Verdict) -> None:
    assert parse_action(text) == expected


@pytest.mark.parametrize("text", ["permit", "OK", "250 2.0.0 fine", "450 5.7.1 mixed", "later", 451, "699 x"])
def test_bad_default_actions(text: object) -> None:
    with pytest.raises(ValueError, match="expected"):
        parse_action(text)


def test_parse_reply() -> None:
    assert parse_reply("550 5.1.1 No such user", "x") == Reply(550, "5.1.1", "No such user")
    assert parse_reply("450", "Later") == Reply(450, "4.7.1", "Later")
    assert parse_reply("450 5.1.1 x", "x") is None
    assert parse_reply("hello", "x") is None


# ----------------------------------------------------------------------------- addresses


def parsed(path: str) -> Mailbox:
    return parse_path_and_params(f"TO:<{path}>".encode(), b"TO", null_allowed=False, sender=False).mailbox


@pytest.mark.parametrize(
    ("path", "destination", "routing", "literal"),
    [
        ("user@Example.COM", "example.com", None, False),
        ("user@bücher.example", "xn--bcher-kva.example", None, False),
        ("user%other.test@example.com", "example.com", "percent hack", False),
        ("other.test!user@example.com", "example.com", "bang path", False),
        ('"user@other.test"@example.com', "example.com", "quoted local part with @", False),
        ('"user\\@other.test"@example.com', "example.com", "quoted local part with @", False),
        ('"user%other"@example.com', "example.com", "percent hack", False),
        ('"john smith"@example.com', "example.com", None, False),
        ("@relay.test:user@other.test", "other.test", None, False),  # the route is dropped by the parser
        ("@a.test,@b.test:user@other.test", "other.test", None, False),
        ("user@[192.0.2.1]", "[192.0.2.1]", None, True),
        ("user@[IPv6:2001:DB8::1]", "[ipv6:2001:db8::1]", None, True),
    ],
)
def test_mail_addresses(path: str, destination: str, routing: str | None, literal: bool) -> None:
    address = mail_address(parsed(path))
    assert (address.destination, address.routing, address.literal) == (destination, routing, literal)


def test_normalised_addresses() -> None:
    assert mail_address(Mailbox('"John.Smith"', "Example.com")).normalised == "john.smith@example.com"
    assert mail_address(Mailbox("", "")).is_null
    assert mail_address(Mailbox("Postmaster", "")).normalised == "postmaster"
    assert normalise_domain("Example.COM.") == "example.com"


ATEXT = "abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-/=?^_`{|}~"


@given(st.lists(st.text(ATEXT, min_size=1, max_size=8), min_size=1, max_size=4))
def test_routing_characters_are_always_seen(atoms: list[str]) -> None:
    local = ".".join(atoms)
    address = mail_address(parsed(f"{local}@example.com"))
    assert (address.routing is not None) == any(c in local for c in "%!")
    quoted = mail_address(parsed(f'"{local}@x.test"@example.com'))
    assert quoted.routing == "quoted local part with @"


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100/m", Rate(100, 60.0)),
        ("10/s", Rate(10, 1.0)),
        ("3/2s", Rate(3, 2.0)),
        (" 5 / 10m ", Rate(5, 600.0)),
    ],
)
def test_rates(text: str, expected: Rate) -> None:
    assert rate(text) == expected


@pytest.mark.parametrize("text", ["100 per minute", "0/m", "10/0s", "10/d", "/m", 100, "10/ms"])
def test_bad_rates(text: object) -> None:
    with pytest.raises(OptionValueError, match=r"is not a rate \(expected N/s\|m\|h\)"):
        rate(text)


def test_domains() -> None:
    assert domain("Example.COM") == "example.com"
    assert domain(".Example.com") == ".example.com"
    assert domain("bücher.example") == "xn--bcher-kva.example"
    for bad in ["", "a b", "..x", 5, "@example.com"]:
        with pytest.raises(OptionValueError):
            domain(bad)


def test_option_reader_collects_problems_with_their_paths() -> None:
    r = OptionReader({"n": "x", "l": [1, "a.test"], "t": {"k": "bad"}, "odd": 1})
    r.get("n", rate, None)
    r.get_list("l", domain)
    sub = r.sub("t", r.raw("t"))
    assert sub is not None
    sub.get("k", rate, None)
    sub.finish()
    r.require("missing", rate, None)
    r.finish()
    assert [(p.key, p.message.split(" (")[0]) for p in r.problems] == [
        ("n", '"x" is not a rate'),
        ("l[0]", "1 is not a domain"),
        ("t.k", '"bad" is not a rate'),
        ("missing", "is required"),
        ("odd", "unknown key"),
    ]


# ----------------------------------------------------------------------------- contexts


def test_context_of_a_session() -> None:
    state = SessionState(
        frontend="apps",
        client=("203.0.113.9", 41000),
        local=("192.0.2.1", 25),
        proxy=("127.0.0.1", 50000),
        helo="client.test",
        esmtp=True,
        tls=TLSInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", 128),
        user="alice",
        auth_mechanism="LOGIN",
        sender=Mailbox("a", "b.test"),
        mail_params={"SIZE": "2048"},
    )
    state.recipients.append(Mailbox("x", "example.net"))
    state.relay_permits["auth"] = "users"
    ctx = context_of(state, Stage.RCPT, recipient=mail_address(Mailbox("y", "example.net")))
    assert (ctx.frontend, ctx.client_address, ctx.client_port, ctx.proxy_address) == (
        "apps",
        "203.0.113.9",
        41000,
        "127.0.0.1",
    )
    assert (ctx.tls_version, ctx.tls_cipher_bits, ctx.sasl_username, ctx.sasl_method) == (
        "TLSv1.3",
        128,
        "alice",
        "LOGIN",
    )
    assert ctx.declared_size == 2048 and [str(r) for r in ctx.recipients] == ["x@example.net"]
    assert str(ctx.recipient) == "y@example.net" and str(ctx.sender) == "a@b.test"
    assert ctx.relay_permitted and ctx.relay_permitted_by == "users"
    with pytest.raises(AttributeError):
        ctx.client_address = "1.2.3.4"  # type: ignore[misc]
    unix = context_of(SessionState(frontend="apps"), Stage.CONNECT)
    assert unix.client_address is None and unix.sender is None and not unix.relay_permitted
