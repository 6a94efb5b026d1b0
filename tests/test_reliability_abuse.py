"""Relay abuse: nobody unauthorised gets mail through, AUTH is never plaintext by default, no spoofing.

The real daemon, with a policy chain (so that loopback is not special; every
test client is on 127.0.0.0/8)::

    policies = ["internal", "users", "senders"]
    [policy.internal]  plugin = "networks", allow = ["127.0.0.2/32"]
    [policy.users]     plugin = "auth"
    [policy.senders]   plugin = "sender-domains", domains = ["client.test"]

An unauthorised client (127.0.0.70) tries the classic open-relay address
forms; the authorised network (127.0.0.2) and an authenticated user try them
too; nothing an unauthorised client sends may reach the gateway. AUTH is
offered and accepted only after STARTTLS, and an authenticated user cannot
send as a sender ``sender-domains`` does not allow.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import smtplib
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import PeerRegistry, RelaybalDaemon, SmtpSink, free_port, make_peer_dir, wait_until
from soak.common import crash_lines, record

from relaybal.config import ConfigError, parse_config
from relaybal.relay.testing import relay_config_dict, write_self_signed
from relaybal.smtp.auth import hash_password

pytestmark = pytest.mark.peers

UNAUTHORISED = "127.0.0.70"
INTERNAL = "127.0.0.2"
PASSWORD = "wonderland"

# RCPT forms an open relay would take: (name, path, whether a permitted client may use it).
# Sender-specified routing and address literals are refused from everyone (553 5.7.1); a
# source route is reduced to its final address, so it is decided on that address's domain.
RELAY_FORMS = [
    ("plain", "<victim@elsewhere.test>", True),
    ("percent hack", "<victim%elsewhere.test@relay.test>", False),
    ("percent hack, two hops", "<victim%elsewhere.test%third.test@relay.test>", False),
    ("bang path", "<elsewhere.test!victim@relay.test>", False),
    ("bang path, two hops", "<third.test!elsewhere.test!victim@relay.test>", False),
    ("quoted local part with @", '<"victim@elsewhere.test"@relay.test>', False),
    ("quoted local part with %", '<"victim%elsewhere.test"@relay.test>', False),
    ("source route", "<@relay.test:victim@elsewhere.test>", True),
    ("source route, two hops", "<@relay.test,@other.test:victim@elsewhere.test>", True),
    ("address literal", "<victim@[192.0.2.1]>", False),
    ("IPv6 address literal", "<victim@[IPv6:2001:db8::1]>", False),
    ("general address literal", "<victim@[tag:whatever]>", False),
    ("postmaster", "<postmaster@elsewhere.test>", True),
    ("bare postmaster", "<Postmaster>", True),
    ("upper-case domain", "<victim@ELSEWHERE.TEST>", True),
]
SENDERS = ["<app@client.test>", "<>", "<postmaster@elsewhere.test>"]


class Relay:
    def __init__(self, directory: Path, registry: PeerRegistry) -> None:
        self.gateway = SmtpSink(directory / "gateway", name="gateway", registry=registry)
        cert, key = write_self_signed(str(directory))
        users = directory / "users"
        users.write_text(f"alice:{hash_password(PASSWORD, ln=4)}\n")
        self.port = free_port()
        config = f"""
[global]
state_dir = "{directory}/state"
hostname = "relay.test"

[frontend.relay]
mode = "relay"
listen = ["tcp:{self.port}:interface=127.0.0.1"]
backend = "gw"
policies = ["internal", "users", "senders"]
tls = {{ certificate = "{cert}", key = "{key}" }}
auth = {{ users = "{users}" }}

[policy.internal]
plugin = "networks"
allow = ["{INTERNAL}/32"]

[policy.users]
plugin = "auth"

[policy.senders]
plugin = "sender-domains"
domains = ["client.test"]

[backend.gw]
[[backend.gw.server]]
name = "gw1"
address = "127.0.0.1:{self.gateway.port}"
"""
        self.process = RelaybalDaemon(directory / "relaybal", config, registry=registry)
        self.process.start([self.port])

    def client(self, source: str) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.port, timeout=20, source_address=(source, 0))
        client.ehlo("abuse.test")
        return client

    def authenticated(self, source: str = UNAUTHORISED) -> smtplib.SMTP:
        client = self.client(source)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        client.starttls(context=context)
        client.ehlo("abuse.test")
        code, _ = client.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode())
        assert code == 235
        return client

    def dumped(self) -> str:
        return "".join(path.read_text(errors="replace") for path in self.gateway.message_files())


@pytest.fixture(scope="module")
def relay() -> Iterator[Relay]:
    registry = PeerRegistry()
    directory = make_peer_dir(prefix="relaybal-abuse-")
    ok = False
    try:
        yield Relay(directory, registry)
        ok = True
    finally:
        registry.stop_all()
        if ok and os.environ.get("RELAYBAL_KEEP_PEER_DIRS") != "1":
            shutil.rmtree(directory, ignore_errors=True)
        else:
            print(f"relay-abuse peer directory kept: {directory}")


def attempt(client: smtplib.SMTP, sender: str, rcpt: str, tag: str) -> tuple[int, int, int]:
    """MAIL, RCPT and (if the recipient was taken) DATA: the three reply codes (0: not reached)."""
    code_mail, _ = client.docmd("MAIL", f"FROM:{sender}")
    if code_mail != 250:
        client.rset()
        return code_mail, 0, 0
    code_rcpt, _ = client.docmd("RCPT", f"TO:{rcpt}")
    if code_rcpt not in (250, 251):
        client.rset()
        return code_mail, code_rcpt, 0
    code_data, _ = client.docmd("DATA")
    if code_data != 354:
        return code_mail, code_rcpt, code_data
    client.send(f"Subject: {tag}\r\nX-Abuse-Tag: {tag}\r\n\r\nx\r\n.\r\n".encode())
    code_data, _ = client.getreply()
    return code_mail, code_rcpt, code_data


def test_an_unauthorised_client_cannot_relay_in_any_form(relay: Relay) -> None:
    outcomes = {}
    with contextlib.closing(relay.client(UNAUTHORISED)) as client:
        for sender in SENDERS:
            for name, rcpt, _ in RELAY_FORMS:
                tag = f"unauthorised {sender} {name}"
                outcomes[tag] = attempt(client, sender, rcpt, tag)
    accepted = {tag: codes for tag, codes in outcomes.items() if codes[2] == 250 or codes[1] in (250, 251)}
    assert not accepted, accepted
    # The refusals carry their reason: relay denied, routing or literal refused, sender not allowed.
    assert {codes[1] or codes[0] for codes in outcomes.values()} <= {553, 554}
    record("relay-abuse-unauthorised", attempts=len(outcomes), accepted=len(accepted),
           refused=len(outcomes) - len(accepted))  # fmt: skip


@pytest.mark.parametrize("who", ["internal network", "authenticated user"])
def test_a_permitted_client_may_relay_but_not_route(relay: Relay, who: str) -> None:
    client = relay.client(INTERNAL) if who == "internal network" else relay.authenticated()
    outcomes = {}
    with contextlib.closing(client):
        for name, rcpt, allowed in RELAY_FORMS:
            tag = f"{who} {name}"
            codes = attempt(client, "<app@client.test>", rcpt, tag)
            outcomes[name] = codes
            if allowed:
                assert codes == (250, 250, 250), (name, codes)
            else:
                assert codes[1] == 553, (name, codes)
    # What was accepted arrives as the plain final address (a source route dropped).
    wait_until(lambda: f"X-Abuse-Tag: {who} source route, two hops" in relay.dumped(), 30, "the relayed mail")
    assert "<victim@elsewhere.test>" in relay.dumped()
    record(f"relay-abuse-{who.replace(' ', '-')}", forms=len(outcomes),
           accepted=sum(1 for c in outcomes.values() if c[2] == 250),
           refused=sum(1 for c in outcomes.values() if c[2] != 250))  # fmt: skip


def test_nothing_from_the_unauthorised_client_reached_the_gateway(relay: Relay) -> None:
    # (Runs after the tests above; their accepted mail has arrived, so the gateway's dump is complete.)
    with contextlib.closing(relay.client(INTERNAL)) as client:
        assert attempt(client, "<app@client.test>", "<marker@elsewhere.test>", "marker")[2] == 250
    wait_until(lambda: "X-Abuse-Tag: marker" in relay.dumped(), 30, "the marker message")
    assert "unauthorised" not in relay.dumped()


def test_auth_is_neither_offered_nor_accepted_before_starttls(relay: Relay) -> None:
    with contextlib.closing(relay.client(UNAUTHORISED)) as client:
        assert not client.has_extn("auth")
        credentials = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
        code, text = client.docmd("AUTH", f"PLAIN {credentials}")
        assert (code, text[:6]) == (538, b"5.7.11")
        code, _ = client.docmd("AUTH", "LOGIN")
        assert code == 538
    # After STARTTLS it is offered, and works.
    with contextlib.closing(relay.authenticated()) as client:
        assert client.has_extn("auth")
    # And a configuration cannot switch it to plaintext by accident: AUTH needs TLS or an explicit yes.
    with pytest.raises(ConfigError, match="auth"):
        parse_config(relay_config_dict(auth={"users": "/dev/null"}))


def test_an_authenticated_user_cannot_send_as_someone_else(relay: Relay) -> None:
    with contextlib.closing(relay.authenticated()) as client:
        for sender in ("<ceo@bank.test>", "<alice@evil.test>", "<app@client.test.evil.test>",
                       "<app@sub.client.test>", "<\"app@client.test\"@evil.test>"):  # fmt: skip
            code, text = client.docmd("MAIL", f"FROM:{sender}")
            assert code == 553, (sender, code, text)
            client.rset()
        assert attempt(client, "<app@client.test>", "<friend@elsewhere.test>", "alice as herself")[2] == 250
        # An AUTH= parameter on MAIL is only recorded: it changes nothing of the above.
        assert attempt(client, "<app@client.test> AUTH=<>", "<friend@elsewhere.test>", "again")[2] == 250
        code, _ = client.docmd("MAIL", "FROM:<ceo@bank.test> AUTH=ceo@bank.test")
        assert code == 553


def test_the_daemon_is_unharmed(relay: Relay) -> None:
    assert relay.process.running
    assert not crash_lines(relay.process.log())
