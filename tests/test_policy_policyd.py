"""The policyd client: access(5) actions, the attribute set, connection reuse, failures."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaybal.policy import CONTINUE, PERMIT, Kind
from relaybal.policy.builtin import policyd
from relaybal.policy.builtin.policyd import PolicydError, action_verdict, request_attributes
from relaybal.testing import ChainRunner, make_context, verdict_of

#: SMTPD_POLICY_README's attribute set (Postfix 3.x), in its order.
POSTFIX_ATTRIBUTES = [
    "request", "protocol_state", "protocol_name", "helo_name", "queue_id", "sender", "recipient",
    "recipient_count", "client_address", "client_name", "reverse_client_name", "instance", "sasl_method",
    "sasl_username", "sasl_sender", "size", "ccert_subject", "ccert_issuer", "ccert_fingerprint",
    "ccert_pubkey_fingerprint", "encryption_protocol", "encryption_cipher", "encryption_keysize",
    "etrn_domain", "stress", "client_port", "policy_context", "server_address", "server_port",
    "compatibility_level", "mail_version",
]  # fmt: skip


@pytest.mark.parametrize(
    ("action", "kind", "reply"),
    [
        ("OK", Kind.CONTINUE, None),
        ("ok", Kind.CONTINUE, None),
        ("1234", Kind.CONTINUE, None),
        ("DUNNO", Kind.CONTINUE, None),
        ("REJECT", Kind.REJECT, (554, "5.7.1", "Access denied")),
        ("REJECT Go away", Kind.REJECT, (554, "5.7.1", "Go away")),
        ("REJECT 5.7.9 Go away", Kind.REJECT, (554, "5.7.9", "Go away")),
        ("DEFER", Kind.DEFER, (450, "4.7.1", "Try again later")),
        ("DEFER 4.2.0 Busy", Kind.DEFER, (450, "4.2.0", "Busy")),
        (
            "DEFER_IF_PERMIT Greylisted, see http://x",
            Kind.DEFER_IF_PERMIT,
            (450, "4.7.1", "Greylisted, see http://x"),
        ),
        ("DEFER_IF_REJECT Maybe", Kind.DEFER_IF_REJECT, (450, "4.7.1", "Maybe")),
        ("550 No such user", Kind.REJECT, (550, "5.7.1", "No such user")),
        ("550", Kind.REJECT, (550, "5.7.1", "Access denied")),
        ("550 5.1.1 No such user", Kind.REJECT, (550, "5.1.1", "No such user")),
        ("451 4.3.0 Later", Kind.DEFER, (451, "4.3.0", "Later")),
        ("421 4.7.0 Bye", Kind.DISCONNECT, (421, "4.7.0", "Bye")),
        ("PREPEND X-Greylist: delayed 3 seconds", Kind.CONTINUE, None),
        ("WARN careful", Kind.CONTINUE, None),
        ("INFO noted", Kind.CONTINUE, None),
        ("DISCARD spam", Kind.REJECT, (554, "5.7.1", "spam")),
        ("HOLD review", Kind.DEFER, (451, "4.3.5", "Error: server configuration problem")),
        ("FILTER smtp:[127.0.0.1]:10025", Kind.DEFER, (451, "4.3.5", "Error: server configuration problem")),
        ("REDIRECT a@b.test", Kind.DEFER, (451, "4.3.5", "Error: server configuration problem")),
        ("BCC archive@b.test", Kind.DEFER, (451, "4.3.5", "Error: server configuration problem")),
        ("reject", Kind.REJECT, (554, "5.7.1", "Access denied")),
        ("defer", Kind.DEFER, (450, "4.7.1", "Try again later")),
        ("dunno", Kind.CONTINUE, None),
    ],
)
def test_access_actions(action: str, kind: Kind, reply: tuple[int, str, str] | None) -> None:
    verdict = action_verdict(action, log=Logger(observer=lambda e: None))
    assert verdict.kind is kind
    got = (
        (verdict.reply.code, verdict.reply.status, verdict.reply.text) if verdict.reply is not None else None
    )
    assert got == reply


def test_ok_permits_only_when_configured() -> None:
    assert action_verdict("OK", ok_permits=True) == PERMIT
    assert action_verdict("OK") == CONTINUE


@pytest.mark.parametrize("action", ["", "NONSENSE", "permit_mynetworks", "999 x", "450 5.7.1 mismatched"])
def test_unknown_actions_are_errors(action: str) -> None:
    with pytest.raises(PolicydError):
        action_verdict(action)


def test_the_attribute_set() -> None:
    context = make_context(
        "rcpt",
        client="192.0.2.7",
        client_port=40001,
        helo="client.test",
        user="alice",
        sender="app@client.test",
        recipient="x@example.net",
        recipients=["a@example.net"],
        tls="TLSv1.3",
        tls_client_subject="CN=app1",
        mail_params={"SIZE": "1234", "AUTH": "app+2Bx@client.test"},
        declared_size=1234,
        session_id="1f",
        transaction=3,
    )
    attributes = request_attributes(context, "relay-ctx")
    assert list(attributes) == POSTFIX_ATTRIBUTES
    expected = {
        "request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
        "helo_name": "client.test", "sender": "app@client.test", "recipient": "x@example.net",
        "recipient_count": "1", "client_address": "192.0.2.7", "client_port": "40001",
        "client_name": "unknown", "reverse_client_name": "unknown", "instance": "1f.3",
        "sasl_method": "PLAIN", "sasl_username": "alice", "sasl_sender": "app+x@client.test", "size": "1234",
        "ccert_subject": "CN=app1", "encryption_protocol": "TLSv1.3", "encryption_keysize": "256",
        "policy_context": "relay-ctx", "server_address": "192.0.2.1", "server_port": "25",
    }  # fmt: skip
    assert {k: attributes[k] for k in expected} == expected
    null = request_attributes(make_context("mail", sender="", helo="evil\r\nrecipient=x@y"))
    assert null["sender"] == "" and null["protocol_state"] == "MAIL" and null["recipient"] == ""
    assert "\n" not in null["helo_name"]
    assert request_attributes(make_context("helo", esmtp=False))["protocol_state"] == "HELO"
    assert request_attributes(make_context("helo"))["protocol_state"] == "EHLO"
    end = request_attributes(make_context("end_of_data", recipients=["a@b.test", "c@d.test"], size=99))
    assert (end["protocol_state"], end["recipient_count"], end["size"]) == ("END-OF-MESSAGE", "2", "99")


# ----------------------------------------------------------------------------- the connection


class FakeServer:
    """Connects the client's TCP attempts (on a MemoryReactorClock) to StringTransports."""

    def __init__(self, reactor: MemoryReactorClock) -> None:
        self.reactor = reactor
        self.connected = 0
        self.transports: list[StringTransport] = []
        self.protocols: list[Any] = []

    def accept(self) -> tuple[Any, StringTransport]:
        host, port, factory, *_ = self.reactor.tcpClients[self.connected]
        self.connected += 1
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.transports.append(transport)
        self.protocols.append(protocol)
        return protocol, transport

    def refuse(self) -> None:
        _, _, factory, *_ = self.reactor.tcpClients[self.connected]
        self.connected += 1
        factory.clientConnectionFailed(None, Failure(error.ConnectionRefusedError()))


def make_client(**kw: Any) -> tuple[policyd.PolicyServerClient, MemoryReactorClock, FakeServer]:
    reactor = MemoryReactorClock()
    client = policyd.PolicyServerClient(reactor, "tcp:host=127.0.0.1:port=10023", **kw)
    return client, reactor, FakeServer(reactor)


def test_one_connection_serves_request_after_request() -> None:
    client, reactor, server = make_client()
    first = client.query({"request": "smtpd_access_policy", "recipient": "a@b.test"})
    protocol, transport = server.accept()
    assert transport.value() == b"request=smtpd_access_policy\nrecipient=a@b.test\n\n"
    protocol.dataReceived(b"action=DUNNO\nextra=1\n\n")
    assert verdict_of(first) == {"action": "DUNNO", "extra": "1"}
    transport.clear()
    second = client.query({"request": "smtpd_access_policy"})
    assert len(reactor.tcpClients) == 1  # reused
    protocol.dataReceived(b"action=OK\r\n\r\n")
    assert verdict_of(second) == {"action": "OK"}


def test_a_reused_connection_the_server_closed_is_retried_once_on_a_fresh_one() -> None:
    client, reactor, server = make_client()
    first = client.query({"n": "1"})
    protocol, _ = server.accept()
    protocol.dataReceived(b"action=DUNNO\n\n")
    verdict_of(first)
    second = client.query({"n": "2"})
    protocol.connectionLost(Failure(error.ConnectionDone()))  # the server had closed it
    fresh, transport = server.accept()
    assert transport.value() == b"n=2\n\n"
    fresh.dataReceived(b"action=REJECT\n\n")
    assert verdict_of(second) == {"action": "REJECT"}


def test_idle_connections_are_bounded_in_number_and_time() -> None:
    client, reactor, server = make_client(connections=1, max_idle=30.0)
    a, b = client.query({"n": "1"}), client.query({"n": "2"})
    (pa, ta), (pb, tb) = server.accept(), server.accept()
    pa.dataReceived(b"action=DUNNO\n\n")
    pb.dataReceived(b"action=DUNNO\n\n")
    verdict_of(a), verdict_of(b)
    assert not ta.disconnecting and tb.disconnecting  # only one is kept
    reactor.advance(30)
    assert ta.disconnecting


def test_an_unrequested_answer_drops_the_connection() -> None:
    client, reactor, server = make_client()
    d = client.query({"n": "1"})
    protocol, transport = server.accept()
    protocol.dataReceived(b"action=DUNNO\n\naction=OK\n\n")
    assert verdict_of(d) == {"action": "DUNNO"}
    assert transport.disconnecting


def test_close_closes_idle_connections() -> None:
    client, reactor, server = make_client()
    d = client.query({"n": "1"})
    protocol, transport = server.accept()
    protocol.dataReceived(b"action=DUNNO\n\n")
    verdict_of(d)
    client.close()
    assert transport.disconnecting and client.idle == []


# ----------------------------------------------------------------------------- in a chain


def policyd_chain(**options: Any) -> tuple[ChainRunner, FakeServer]:
    reactor = MemoryReactorClock()
    runner = ChainRunner.from_config(
        {
            "local": {"plugin": "networks", "allow": ["192.0.2.0/24"]},
            "grey": {"plugin": "policyd", "server": "tcp:host=127.0.0.1:port=10023", **options},
        },
        reactor=reactor,
    )
    return runner, FakeServer(reactor)


def at_rcpt(runner: ChainRunner, client: str = "192.0.2.7") -> Any:
    session = runner.session(client)
    session.connect()
    session.helo()
    session.mail("a@client.test")
    return session


def test_greylisting_through_the_chain() -> None:
    runner, server = policyd_chain()
    answer = at_rcpt(runner).rcpt("x@example.net")
    protocol, transport = server.accept()
    assert b"protocol_state=RCPT\n" in transport.value() and b"recipient=x@example.net\n" in transport.value()
    protocol.dataReceived(b"action=DEFER_IF_PERMIT Greylisted\n\n")
    assert str(answer) == "450 4.7.1 Greylisted"
    outsider = at_rcpt(runner, "203.0.113.5").rcpt("x@example.net")
    protocol.dataReceived(b"action=DEFER_IF_PERMIT Greylisted\n\n")
    assert outsider.code == 554  # not permitted anyway
    again = at_rcpt(runner).rcpt("x@example.net")
    protocol.dataReceived(b"action=PREPEND X-Greylist: delayed\n\n")
    assert again.accepted


def test_policyd_failures_yield_the_default_action() -> None:
    runner, server = policyd_chain(timeout="2s", default_action="450 4.3.2 Policy server busy")
    slow = at_rcpt(runner).rcpt("x@example.net")
    _, transport = server.accept()
    runner.clock.advance(2)
    assert str(slow) == "450 4.3.2 Policy server busy"
    assert transport.disconnecting  # a late answer can never be taken for the next question's
    refused = at_rcpt(runner).rcpt("x@example.net")
    server.refuse()
    assert refused.code == 450
    garbage = at_rcpt(runner).rcpt("x@example.net")
    protocol, _ = server.accept()
    protocol.dataReceived(b"nothing=here\n\n")
    assert garbage.code == 450


def test_policyd_stages_are_configurable() -> None:
    runner, server = policyd_chain(stages=["connect", "end_of_data"])
    chain = runner.chain
    assert [link.name for link in chain._stages[policyd_stage("connect")]] == ["local", "grey"]
    assert [link.name for link in chain._stages[policyd_stage("rcpt")]] == []
    assert chain.wants_headers
    session = runner.session("203.0.113.5")
    answer = session.connect()
    protocol, transport = server.accept()
    assert b"protocol_state=CONNECT\n" in transport.value()
    protocol.dataReceived(b"action=REJECT Not you\n\n")
    assert str(answer) == "554 5.7.1 Not you"


def policyd_stage(name: str) -> Any:
    from relaybal.policy import Stage

    return Stage(name)
