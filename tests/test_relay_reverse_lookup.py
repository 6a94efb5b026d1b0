"""``reverse_lookup``: the client's PTR name and its forward confirmation, as Postfix's smtpd does.

Driven with a fake resolver (Deferreds the test fires) and the harness's
fake clock: what the session waits for, what policies, policyd and the
``Received:`` header see, the timeout, and that nothing is asked when the
lookup is off.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.names import client as names_client
from twisted.names import dns
from twisted.names.error import DNSServerError, DomainError
from zope.interface import implementer

from relaybal.config import ConfigError, parse_config
from relaybal.relay.frontend import RelayFrontend, build_relay_frontend, usable_hostname
from relaybal.relay.interfaces import Decision, Envelope, ISessionPolicy, SessionState
from relaybal.relay.testing import Client, RelayHarness, relay_config_dict
from relaybal.smtp import server as server_module
from relaybal.smtp.wire import Mailbox
from relaybal.testing import ChainRunner

PTR_V4 = "7.2.0.192.in-addr.arpa"
HELLO = b"EHLO client.test\r\n"
MESSAGE = (
    b"MAIL FROM:<app@client.test>\r\nRCPT TO:<user@example.test>\r\nDATA\r\n"
    b"Subject: hi\r\n\r\nHello.\r\n.\r\n"
)


@pytest.fixture(autouse=True)
def events(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    captured: list[dict[str, Any]] = []
    monkeypatch.setattr(server_module, "log", Logger(observer=captured.append, namespace="relaybal.relay"))
    return captured


def lines(events: list[dict[str, Any]]) -> list[str]:
    return [e["line"] for e in events if "line" in e]


class FakeResolver:
    """A ``twisted.names`` resolver whose answers the test gives, one Deferred per question."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, Any]] = []
        self.pending: dict[tuple[str, str], Deferred[Any]] = {}

    def _ask(self, kind: str, name: str, timeout: Any) -> Deferred[Any]:
        self.asked.append((kind, name, timeout))
        d: Deferred[Any] = Deferred()
        self.pending[(kind, name)] = d
        return d

    def lookupPointer(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return self._ask("PTR", name, timeout)

    def lookupAddress(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return self._ask("A", name, timeout)

    def lookupIPV6Address(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return self._ask("AAAA", name, timeout)

    @property
    def questions(self) -> list[tuple[str, str]]:
        return [(kind, name) for kind, name, _ in self.asked]

    def answer(self, kind: str, name: str, *values: str) -> None:
        """Answer the pending question with records of its type (PTR names, A/AAAA addresses)."""
        records = []
        for value in values:
            if kind == "PTR":
                payload: Any = dns.Record_PTR(value)
                rtype = dns.PTR
            elif kind == "A":
                payload, rtype = dns.Record_A(value), dns.A
            else:
                payload, rtype = dns.Record_AAAA(value), dns.AAAA
            records.append(dns.RRHeader(name, rtype, dns.IN, 300, payload))
        self.pending.pop((kind, name)).callback((records, [], []))

    def fail(self, kind: str, name: str, error: Exception) -> None:
        self.pending.pop((kind, name)).errback(error)


@implementer(ISessionPolicy)
class RecordingPolicy:
    """Accepts everything; remembers what the session knew at connect."""

    wants_headers = False

    def __init__(self) -> None:
        self.at_connect: list[tuple[str | None, str | None]] = []

    def connect(self, state: SessionState) -> Decision:
        self.at_connect.append((state.reverse_name, state.client_name))
        return None

    def helo(self, state: SessionState, name: str) -> Decision:
        return None

    def auth(self, state: SessionState) -> Decision:
        return None

    def mail(self, state: SessionState, sender: Mailbox, params: Mapping[str, str | None]) -> Decision:
        return None

    def rcpt(self, state: SessionState, recipient: Mailbox, params: Mapping[str, str | None]) -> Decision:
        return None

    def data(self, state: SessionState) -> Decision:
        return None

    def message(self, state: SessionState, envelope: Envelope, size: int) -> Decision:
        return None


def harness_with(
    resolver: FakeResolver, policy: ISessionPolicy | None = None, **frontend: Any
) -> RelayHarness:
    """A RelayHarness whose frontend uses ``resolver`` (``reverse_lookup`` on unless given)."""
    frontend.setdefault("reverse_lookup", True)
    harness = RelayHarness(policy, **frontend)
    harness.frontend = RelayFrontend(
        harness.config, harness.backend, harness.reactor, sink=harness.sink, policy=policy, resolver=resolver
    )
    return harness


def received_header(harness: RelayHarness) -> str:
    data = harness.sink.messages[-1].data
    return data.split(b"\r\n\tby ", 1)[0].decode()


def deliver(client: Client) -> None:
    client.send(HELLO + MESSAGE)
    assert client.codes() == [250, 250, 250, 354, 250]


# ----------------------------------------------------------------------------- the lookup and the session


def test_a_forward_confirmed_name_is_known_before_the_greeting() -> None:
    resolver = FakeResolver()
    policy = RecordingPolicy()
    harness = harness_with(resolver, policy)
    client = harness.connect("192.0.2.7")
    assert client.replies() == []  # no greeting while the name is looked up
    assert policy.at_connect == []  # nor the connect policies
    assert resolver.questions == [("PTR", PTR_V4)]
    resolver.answer("PTR", PTR_V4, "mail.example.test")
    assert resolver.questions[-1] == ("A", "mail.example.test")
    assert client.replies() == []
    resolver.answer("A", "mail.example.test", "192.0.2.9", "192.0.2.7")
    assert client.replies() == [b"220 relay.test ESMTP"]
    assert policy.at_connect == [("mail.example.test", "mail.example.test")]
    state = client.session.state
    assert (state.reverse_name, state.client_name) == ("mail.example.test", "mail.example.test")
    deliver(client)
    assert received_header(harness) == "Received: from client.test (mail.example.test [192.0.2.7])"


def test_an_ipv6_client_is_looked_up_by_nibbles_and_confirmed_with_aaaa() -> None:
    resolver = FakeResolver()
    harness = harness_with(resolver, RecordingPolicy())
    client = harness.connect("2001:db8::7")
    nibbles = "7.0.0.0." + "0.0.0.0." * 5 + "8.b.d.0.1.0.0.2.ip6.arpa"
    assert resolver.questions == [("PTR", nibbles)]
    resolver.answer("PTR", nibbles, "v6.example.test")
    assert resolver.questions[-1] == ("AAAA", "v6.example.test")
    resolver.answer("AAAA", "v6.example.test", "2001:db8:0:0:0:0:0:7")
    assert client.replies() == [b"220 relay.test ESMTP"]
    deliver(client)
    assert received_header(harness) == "Received: from client.test (v6.example.test [IPv6:2001:db8::7])"


def test_a_name_that_does_not_resolve_back_is_reverse_name_only(events: list[dict[str, Any]]) -> None:
    resolver = FakeResolver()
    policy = RecordingPolicy()
    harness = harness_with(resolver, policy)
    client = harness.connect("192.0.2.7")
    resolver.answer("PTR", PTR_V4, "forged.example.test")
    resolver.answer("A", "forged.example.test", "198.51.100.1")
    assert client.replies() == [b"220 relay.test ESMTP"]
    assert policy.at_connect == [("forged.example.test", "unknown")]
    assert "hostname forged.example.test does not resolve to address 192.0.2.7" in lines(events)[-1]
    deliver(client)
    assert received_header(harness) == "Received: from client.test (unknown [192.0.2.7])"
    client.send(b"QUIT\r\n")
    client.lose()
    assert "disconnect from unknown[192.0.2.7]:40000" in lines(events)[-1]


def test_a_forward_lookup_that_fails_leaves_the_name_unconfirmed() -> None:
    resolver = FakeResolver()
    policy = RecordingPolicy()
    harness = harness_with(resolver, policy)
    client = harness.connect("192.0.2.7")
    resolver.answer("PTR", PTR_V4, "gone.example.test")
    resolver.fail("A", "gone.example.test", DomainError("NXDOMAIN"))
    assert client.replies() == [b"220 relay.test ESMTP"]
    assert policy.at_connect == [("gone.example.test", "unknown")]


@pytest.mark.parametrize(
    "outcome",
    ["nxdomain", "no answer", "server failure", "numeric name", "malformed name"],
)
def test_without_a_usable_ptr_name_both_are_unknown(outcome: str) -> None:
    resolver = FakeResolver()
    policy = RecordingPolicy()
    harness = harness_with(resolver, policy)
    client = harness.connect("192.0.2.7")
    if outcome == "nxdomain":
        resolver.fail("PTR", PTR_V4, DomainError("NXDOMAIN"))
    elif outcome == "server failure":
        resolver.fail("PTR", PTR_V4, DNSServerError("SERVFAIL"))
    elif outcome == "no answer":
        resolver.answer("PTR", PTR_V4)
    elif outcome == "numeric name":
        resolver.answer("PTR", PTR_V4, "192.0.2.7")
    else:
        resolver.answer("PTR", PTR_V4, "bad name!.example.test")
    assert client.replies() == [b"220 relay.test ESMTP"]
    assert resolver.questions == [("PTR", PTR_V4)]  # no forward lookup of a name that is not used
    assert policy.at_connect == [(None, "unknown")]
    deliver(client)
    assert received_header(harness) == "Received: from client.test (unknown [192.0.2.7])"


def test_a_slow_lookup_times_out_and_the_greeting_is_sent_anyway(events: list[dict[str, Any]]) -> None:
    resolver = FakeResolver()
    policy = RecordingPolicy()
    harness = harness_with(resolver, policy, reverse_lookup_timeout="2s")
    client = harness.connect("192.0.2.7")
    assert resolver.asked[0][2] == (2.0,)  # the resolver is told the limit too
    resolver.answer("PTR", PTR_V4, "slow.example.test")
    harness.reactor.advance(1.5)
    assert client.replies() == []
    harness.reactor.advance(0.5)  # 2s after the connection, with the forward lookup unanswered
    assert client.replies() == [b"220 relay.test ESMTP"]
    assert policy.at_connect == [(None, "unknown")]
    assert "name lookup timed out after 2s" in lines(events)[-1]
    resolver.answer("A", "slow.example.test", "192.0.2.7")  # too late: nothing changes
    assert (client.session.state.reverse_name, client.session.state.client_name) == (None, "unknown")
    assert client.replies() == []
    deliver(client)
    assert received_header(harness) == "Received: from client.test (unknown [192.0.2.7])"


def test_when_off_nothing_is_looked_up_and_nothing_changes() -> None:
    resolver = FakeResolver()
    policy = RecordingPolicy()
    harness = harness_with(resolver, policy, reverse_lookup=False)
    client = harness.connect("192.0.2.7")
    assert client.replies() == [b"220 relay.test ESMTP"]
    assert resolver.asked == []
    assert policy.at_connect == [(None, None)]
    deliver(client)
    assert received_header(harness) == "Received: from client.test ([192.0.2.7])"


def test_the_real_client_behind_a_proxy_is_the_one_looked_up() -> None:
    resolver = FakeResolver()
    policy = RecordingPolicy()
    harness = harness_with(resolver, policy, accept_proxy=["127.0.0.1"])
    client = harness.connect("127.0.0.1")
    assert resolver.asked == []  # the proxy's address is never looked up
    client.send(b"PROXY TCP4 192.0.2.7 192.0.2.1 40001 25\r\n")
    assert resolver.questions == [("PTR", PTR_V4)]
    assert client.replies() == []
    resolver.answer("PTR", PTR_V4, "app.example.test")
    resolver.answer("A", "app.example.test", "192.0.2.7")
    assert client.replies() == [b"220 relay.test ESMTP"]
    assert policy.at_connect == [("app.example.test", "app.example.test")]
    deliver(client)
    assert received_header(harness) == "Received: from client.test (app.example.test [192.0.2.7])"


def test_commands_sent_early_wait_for_the_greeting() -> None:
    resolver = FakeResolver()
    harness = harness_with(resolver, RecordingPolicy())
    client = harness.connect("192.0.2.7")
    client.send(HELLO)
    assert client.replies() == []
    resolver.fail("PTR", PTR_V4, DomainError("NXDOMAIN"))
    assert client.codes() == [220, 250]


def test_other_sessions_go_on_while_one_waits_for_its_name() -> None:
    resolver = FakeResolver()
    harness = harness_with(resolver, RecordingPolicy())
    slow = harness.connect("192.0.2.7")
    fast = harness.connect("192.0.2.8", port=40001)
    resolver.answer("PTR", "8.2.0.192.in-addr.arpa", "b.example.test")
    resolver.answer("A", "b.example.test", "192.0.2.8")
    assert fast.replies() == [b"220 relay.test ESMTP"]
    assert slow.replies() == []
    resolver.answer("PTR", PTR_V4, "a.example.test")
    resolver.answer("A", "a.example.test", "192.0.2.7")
    assert slow.replies() == [b"220 relay.test ESMTP"]
    assert slow.session.state.client_name == "a.example.test"
    assert fast.session.state.client_name == "b.example.test"


def test_a_client_that_leaves_during_the_lookup_leaves_no_timer_behind() -> None:
    resolver = FakeResolver()
    harness = harness_with(resolver, RecordingPolicy())
    before = len(harness.reactor.getDelayedCalls())
    client = harness.connect("192.0.2.7")
    assert len(harness.reactor.getDelayedCalls()) == before + 2  # the session's timer and the lookup's
    client.lose()
    assert len(harness.reactor.getDelayedCalls()) == before
    resolver.answer("PTR", PTR_V4, "late.example.test")  # an answer after the client left is ignored:
    assert resolver.questions == [("PTR", PTR_V4)]  # not even its forward lookup is asked
    assert client.output() == b""


def test_a_name_is_shown_in_the_log_lines_once_known(events: list[dict[str, Any]]) -> None:
    resolver = FakeResolver()
    harness = harness_with(resolver, RecordingPolicy())
    client = harness.connect("192.0.2.7")
    resolver.answer("PTR", PTR_V4, "mail.example.test")
    resolver.answer("A", "mail.example.test", "192.0.2.7")
    assert client.codes() == [220]
    deliver(client)
    assert "client=mail.example.test[192.0.2.7]:40000" in lines(events)[-1]
    client.send(b"QUIT\r\n")
    client.lose()
    assert lines(events)[-1].startswith("relay: disconnect from mail.example.test[192.0.2.7]:40000 after")


@pytest.mark.parametrize(
    ("name", "usable"),
    [
        ("mail.example.test", True),
        ("host_1.example.test", True),
        ("localhost", True),
        ("192.0.2.7", False),
        ("1234", False),
        ("2001:db8::1", False),
        ("-bad.example.test", False),
        ("bad-.example.test", False),
        ("a..b", False),
        ("", False),
        ("caf\u00e9.example.test", False),
        ("x" * 64 + ".example.test", False),
    ],
)
def test_which_ptr_names_are_used(name: str, usable: bool) -> None:
    assert usable_hostname(name) is usable


# ----------------------------------------------------------------------------- policyd


class PolicyServer:
    """Accepts the policyd client's TCP attempts on the harness's MemoryReactorClock."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.accepted = 0

    def accept(self) -> tuple[Any, StringTransport]:
        host, port, factory, *_ = self.reactor.tcpClients[self.accepted]
        self.accepted += 1
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport


def policyd_harness(resolver: FakeResolver) -> RelayHarness:
    runner = ChainRunner.from_config(
        {"grey": {"plugin": "policyd", "server": "tcp:host=127.0.0.1:port=10023", "stages": ["connect"]}}
    )
    harness = runner.harness(reverse_lookup=True)
    harness.frontend.resolver = resolver
    return harness


def request_lines(transport: StringTransport) -> list[str]:
    data: bytes = transport.value()
    return data.decode().split("\n")


@pytest.mark.parametrize(
    ("forward", "client_name", "reverse_client_name"),
    [
        ("192.0.2.7", "mail.example.test", "mail.example.test"),
        ("198.51.100.1", "unknown", "mail.example.test"),
    ],
)
def test_policyd_is_sent_both_names(forward: str, client_name: str, reverse_client_name: str) -> None:
    resolver = FakeResolver()
    harness = policyd_harness(resolver)
    client = harness.connect("192.0.2.7")
    resolver.answer("PTR", PTR_V4, "mail.example.test")
    resolver.answer("A", "mail.example.test", forward)
    server = PolicyServer(harness.reactor)
    protocol, transport = server.accept()
    sent = request_lines(transport)
    assert "protocol_state=CONNECT" in sent
    assert f"client_name={client_name}" in sent
    assert f"reverse_client_name={reverse_client_name}" in sent
    protocol.dataReceived(b"action=DUNNO\n\n")
    assert client.replies() == [b"220 relay.test ESMTP"]


def test_policyd_is_sent_unknown_for_both_without_a_ptr_record() -> None:
    resolver = FakeResolver()
    harness = policyd_harness(resolver)
    harness.connect("192.0.2.7")
    resolver.fail("PTR", PTR_V4, DomainError("NXDOMAIN"))
    _, transport = PolicyServer(harness.reactor).accept()
    sent = request_lines(transport)
    assert "client_name=unknown" in sent and "reverse_client_name=unknown" in sent


# ----------------------------------------------------------------------------- the frontend's resolver


def test_build_relay_frontend_passes_the_resolver_on() -> None:
    resolver = FakeResolver()
    harness = RelayHarness(reverse_lookup=True)
    frontend = build_relay_frontend(harness.config, harness.backend, harness.reactor, resolver=resolver)
    assert frontend.resolver is resolver
    assert frontend.settings.reverse_lookup and frontend.settings.reverse_lookup_timeout == 5.0


def test_without_a_resolver_the_system_one_is_made_when_needed_and_stopped_with_the_frontend(
    events: list[dict[str, Any]],
) -> None:
    harness = RelayHarness(reverse_lookup=True)
    assert harness.frontend.resolver is None  # nothing made for a frontend that has not needed it
    client = harness.connect("192.0.2.7")
    resolver = harness.frontend.resolver
    assert isinstance(resolver, names_client.Resolver)
    rereads = [call for call in harness.reactor.getDelayedCalls() if call.func == resolver.maybeParseConfig]
    assert len(rereads) == 1
    # The memory reactor has no UDP, so the query fails at once: the session goes on, name unknown.
    assert client.codes() == [220]
    assert client.session.state.client_name == "unknown"
    assert "name lookup failed" in lines(events)[-1]
    harness.frontend.stopFactory()
    assert not rereads[0].active()
    assert harness.frontend.resolver is None


# ----------------------------------------------------------------------------- configuration


def relay_frontend(**keys: Any) -> Any:
    return parse_config(relay_config_dict(**keys), "f.toml").frontends["relay"]


def problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, "f.toml")
    return info.value.lines()


def test_config_defaults_and_values() -> None:
    fe = relay_frontend()
    assert fe.reverse_lookup is False and fe.reverse_lookup_timeout == 5.0
    fe = relay_frontend(reverse_lookup=True, reverse_lookup_timeout="1500ms")
    assert fe.reverse_lookup is True and fe.reverse_lookup_timeout == 1.5


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("reverse_lookup", "yes", '"yes" is not a boolean'),
        ("reverse_lookup", 1, "1 is not a boolean"),
        ("reverse_lookup_timeout", "soon", '"soon" is not a duration'),
        ("reverse_lookup_timeout", True, "True is not a duration"),
        ("reverse_lookup_timeout", "0s", "must be greater than zero"),
    ],
)
def test_config_bad_values_name_the_key(key: str, value: Any, expected: str) -> None:
    found = problems(relay_config_dict(**{key: value}))
    assert len(found) == 1 and found[0].startswith(f"f.toml: frontend.relay.{key}: {expected}"), found


@pytest.mark.parametrize("key", ["reverse_lookup", "reverse_lookup_timeout"])
def test_config_splice_frontends_refuse_the_keys(key: str) -> None:
    doc = relay_config_dict()
    value = True if key == "reverse_lookup" else "1s"
    doc["frontend"]["relay"] = {"mode": "splice", "listen": ["tcp:2525"], "backend": "gw", key: value}
    assert problems(doc) == [
        f'f.toml: frontend.relay.{key}: only applies to mode = "relay" (this frontend is mode = "splice")'
    ]
