"""The relay ESMTP server driven through StringTransport and a fake clock: every command and error path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from zope.interface import implementer

from relaybal.relay.interfaces import Decision, Envelope, ISessionPolicy, SessionState, SinkError
from relaybal.relay.policy import LoopbackRelayPolicy
from relaybal.relay.testing import Client, RelayHarness
from relaybal.smtp import server as server_module
from relaybal.smtp.wire import Mailbox, Reply

HELLO = b"EHLO client.test\r\n"
ENVELOPE = b"MAIL FROM:<sender@client.test>\r\nRCPT TO:<rcpt@example.test>\r\n"
BODY = b"Subject: test\r\n\r\nHello.\r\n"


@pytest.fixture(autouse=True)
def events(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    captured: list[dict[str, Any]] = []
    monkeypatch.setattr(server_module, "log", Logger(observer=captured.append, namespace="relaybal.relay"))
    return captured


def lines(events: list[dict[str, Any]]) -> list[str]:
    return [e["line"] for e in events if "line" in e]


def failures(events: list[dict[str, Any]]) -> list[Any]:
    return [e["log_failure"] for e in events if "log_failure" in e]


def greeted(harness: RelayHarness | None = None, host: str = "127.0.0.1", ehlo: bool = True) -> Client:
    harness = harness if harness is not None else RelayHarness()
    client = harness.connect(host)
    assert client.replies() == [b"220 relay.test ESMTP"]
    if ehlo:
        client.send(HELLO)
        assert client.codes() == [250]
    return client


def send_message(client: Client, body: bytes = BODY) -> list[bytes]:
    client.send(ENVELOPE + b"DATA\r\n")
    assert client.codes() == [250, 250, 354]
    client.send(body + b".\r\n")
    return client.replies()


# ------------------------------------------------------------ greeting, EHLO, HELO


def test_greeting_and_ehlo_capabilities() -> None:
    client = RelayHarness().connect()
    assert client.replies() == [b"220 relay.test ESMTP"]
    client.send(b"EHLO client.test\r\n")
    assert client.replies() == [
        b"250-relay.test",
        b"250-PIPELINING",
        b"250-SIZE 52428800",
        b"250-8BITMIME",
        b"250-SMTPUTF8",
        b"250-ENHANCEDSTATUSCODES",
        b"250-CHUNKING",
        b"250 HELP",
    ]


def test_banner_and_size_follow_the_configuration() -> None:
    harness = RelayHarness(banner="ESMTP ready", max_message_size="1M", hostname="mx.example.test")
    client = harness.connect()
    assert client.replies() == [b"220 mx.example.test ESMTP ready"]
    client.send(HELLO)
    assert b"250-SIZE 1048576" in client.replies()


def test_starttls_and_auth_are_advertised_as_configured() -> None:
    client = greeted(RelayHarness(tls=True, users={"u": "p"}), ehlo=False)
    client.send(HELLO)
    replies = client.replies()
    assert b"250-STARTTLS" in replies
    assert not any(b"AUTH" in r for r in replies)  # only after TLS
    client = greeted(RelayHarness(users={"u": "p"}, allow_plaintext_auth=True), ehlo=False)
    client.send(HELLO)
    assert b"250-AUTH PLAIN LOGIN" in client.replies()


def test_helo_is_plain_smtp() -> None:
    client = greeted(ehlo=False)
    client.send(b"HELO client.test\r\n")
    assert client.replies() == [b"250 relay.test"]
    client.send(b"MAIL FROM:<a@b.test> SIZE=10\r\n")
    assert client.replies() == [b"555 5.5.4 Error: parameters need EHLO"]
    client.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\nx\r\n.\r\n")
    assert client.codes() == [250, 250, 354, 250]


def test_ehlo_syntax() -> None:
    client = greeted(ehlo=False)
    client.send(b"EHLO\r\nHELO \r\nEHLO a b\r\n")
    codes = client.codes()
    assert codes[:2] == [501, 501] and codes[2] == 250


def test_ehlo_resets_the_transaction() -> None:
    client = greeted()
    client.send(ENVELOPE + HELLO + b"DATA\r\n")
    assert client.codes() == [250, 250, 250, 503]


# ------------------------------------------------------------ a transaction


def test_message_is_accepted_with_received_header_and_queue_id(events: list[dict[str, Any]]) -> None:
    harness = RelayHarness()
    client = greeted(harness)
    replies = send_message(client)
    stored = harness.sink.messages[0]
    assert replies == [f"250 2.0.0 Ok: queued as {stored.queue_id}".encode()]
    received, _, rest = stored.data.partition(b"Subject:")
    assert received.startswith(b"Received: from client.test ([127.0.0.1])\r\n")
    assert f"by relay.test (relaybal) with ESMTP id {stored.queue_id}".encode() in received
    assert b"for <rcpt@example.test>; " in received
    assert b"Subject:" + rest == BODY
    assert stored.envelope.sender == Mailbox("sender", "client.test")
    assert stored.envelope.recipients == (Mailbox("rcpt", "example.test"),)
    assert any(
        stored.queue_id in line and "accepted from=<sender@client.test>" in line for line in lines(events)
    )


def test_two_messages_on_one_connection_and_quit(events: list[dict[str, Any]]) -> None:
    harness = RelayHarness()
    client = greeted(harness)
    send_message(client)
    send_message(client, b"second\r\n")
    client.send(b"QUIT\r\n")
    assert client.replies() == [b"221 2.0.0 Bye"]
    assert client.closed
    assert [m.data.split(b"\r\n")[-2] for m in harness.sink.messages] == [b"Hello.", b"second"]
    client.lose()
    assert "2 messages: quit" in lines(events)[-1]


def test_multiple_recipients_and_null_sender() -> None:
    harness = RelayHarness()
    client = greeted(harness)
    client.send(
        b"MAIL FROM:<>\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<Postmaster>\r\nDATA\r\n"
    )
    assert client.codes() == [250, 250, 250, 250, 354]
    client.send(b"x\r\n.\r\n")
    envelope = harness.sink.messages[0].envelope
    assert envelope.sender == Mailbox("", "")
    assert [str(r) for r in envelope.recipients] == ["a@x.test", "b@y.test", "Postmaster"]
    assert b"for <" not in harness.sink.messages[0].data  # only for a single recipient


def test_pipelined_transaction_in_one_write() -> None:
    harness = RelayHarness()
    client = harness.connect()
    client.output()
    client.send(HELLO + ENVELOPE + b"RCPT TO:<two@example.test>\r\nDATA\r\n" + BODY + b".\r\nQUIT\r\n")
    assert client.codes() == [250, 250, 250, 250, 354, 250, 221]
    assert harness.sink.committed == 1


# ------------------------------------------------------------ sequence errors


def test_bad_sequences() -> None:
    client = greeted(ehlo=False)
    client.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<a@b.test>\r\nDATA\r\n")
    assert client.replies() == [
        b"503 5.5.1 Error: send HELO/EHLO first",
        b"503 5.5.1 Error: need MAIL command",
        b"503 5.5.1 Error: need MAIL command",
    ]
    client.send(HELLO + b"MAIL FROM:<a@b.test>\r\nMAIL FROM:<a@b.test>\r\nDATA\r\n")
    assert client.replies()[-2:] == [
        b"503 5.5.1 Error: nested MAIL command",
        b"554 5.5.1 Error: no valid recipients",
    ]


def test_data_with_arguments() -> None:
    client = greeted()
    client.send(ENVELOPE + b"DATA now\r\n")
    assert client.replies()[-1] == b"501 5.5.4 Syntax: DATA"


def test_rset_noop_vrfy_help_and_unknown_commands() -> None:
    client = greeted()
    client.send(ENVELOPE + b"RSET\r\nDATA\r\n")
    assert client.codes() == [250, 250, 250, 503]
    client.send(b"RSET x\r\nNOOP anything\r\nVRFY someone\r\nVRFY\r\nHELP\r\nEXPN list\r\nFROB\r\n")
    assert client.replies() == [
        b"501 5.5.4 Syntax: RSET",
        b"250 2.0.0 Ok",
        b"252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery",
        b"501 5.5.4 Syntax: VRFY address",
        b"214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
        b"502 5.5.1 Error: command not implemented",
        b"500 5.5.2 Error: command not recognized",
    ]


def test_lowercase_commands() -> None:
    client = greeted()
    client.send(b"mail from:<a@b.test>\r\nrcpt to:<c@d.test>\r\nquit\r\n")
    assert client.codes() == [250, 250, 221]


# ------------------------------------------------------------ MAIL and RCPT parameters


def test_mail_parameters() -> None:
    client = greeted(RelayHarness(max_message_size="1K"))
    for args, expected in [
        (b"SIZE=1024", b"250 2.1.0 Ok"),
        (b"SIZE=1025", b"552 5.3.4 Message size exceeds fixed maximum message size"),
        (b"SIZE=abc", b"501 5.5.4 Bad SIZE parameter"),
        (b"SIZE", b"501 5.5.4 Bad SIZE parameter"),
        (b"BODY=8BITMIME", b"250 2.1.0 Ok"),
        (b"BODY=BINARYMIME", b"555 5.5.4 Unsupported BODY type"),
        (b"SMTPUTF8=yes", b"501 5.5.4 SMTPUTF8 takes no value"),
        (b"AUTH=<>", b"250 2.1.0 Ok"),
        (b"AUTH=user+2Bx", b"250 2.1.0 Ok"),
        (b"AUTH=bad+zz", b"501 5.5.4 Bad xtext in parameter value"),
        (b"RET=FULL", b"555 5.5.4 Unsupported parameter RET"),
        (b"SIZE=1 SIZE=2", b"501 5.5.4 Parameter given twice: SIZE"),
    ]:
        client.send(b"MAIL FROM:<a@b.test> " + args + b"\r\n")
        assert client.replies() == [expected], args
        client.send(b"RSET\r\n")
        client.output()


def test_body_type_is_recorded() -> None:
    harness = RelayHarness()
    client = greeted(harness)
    client.send(b"MAIL FROM:<a@b.test> BODY=8bitmime\r\nRCPT TO:<c@d.test>\r\nDATA\r\n\xc3\xa9\r\n.\r\n")
    assert client.codes() == [250, 250, 354, 250]
    assert harness.sink.messages[0].envelope.body_type == "8BITMIME"


def test_bad_addresses() -> None:
    client = greeted()
    client.send(
        b"MAIL FROM:<no at sign>\r\nMAIL FROM:<a@b.test>\r\n"
        b"RCPT TO:<bad@>\r\nRCPT TO:<c@d.test> NOTIFY=NEVER\r\n"
    )
    assert client.replies() == [
        b"501 5.1.7 Bad sender address syntax",
        b"250 2.1.0 Ok",
        b"501 5.1.3 Bad recipient address syntax",
        b"555 5.5.4 Unsupported parameter NOTIFY",
    ]


def test_address_length_limits_follow_the_configuration() -> None:
    local = b"x" * 80
    client = greeted()
    client.send(b"MAIL FROM:<" + local + b"@b.test>\r\n")
    assert client.replies() == [b"501 5.1.7 Sender local part too long"]
    client = greeted(RelayHarness(max_local_part=100))
    client.send(b"MAIL FROM:<" + local + b"@b.test>\r\n")
    assert client.codes() == [250]


def test_smtputf8() -> None:
    harness = RelayHarness()
    client = greeted(harness)
    client.send("MAIL FROM:<jöran@bücher.test>\r\n".encode())
    assert client.replies() == [b"553 5.6.7 Non-ASCII sender address needs SMTPUTF8"]
    client.send(b"MAIL FROM:<a@b.test>\r\n" + "RCPT TO:<jöran@bücher.test>\r\n".encode() + b"RSET\r\n")
    assert client.replies()[1] == b"553 5.6.7 Non-ASCII recipient address not permitted without SMTPUTF8"
    client.send(
        "MAIL FROM:<jöran@bücher.test> SMTPUTF8\r\nRCPT TO:<ñ@example.test>\r\nDATA\r\nx\r\n.\r\n".encode()
    )
    assert client.codes() == [250, 250, 354, 250]
    stored = harness.sink.messages[0]
    assert stored.envelope.smtputf8
    assert b"with UTF8SMTP id" in stored.data
    assert "for <ñ@example.test>".encode() in stored.data


def test_too_many_recipients() -> None:
    harness = RelayHarness(max_recipients=2)
    client = greeted(harness)
    client.send(b"MAIL FROM:<a@b.test>\r\n" + b"".join(b"RCPT TO:<r%d@d.test>\r\n" % i for i in range(3)))
    assert client.replies()[-1] == b"452 4.5.3 Error: too many recipients"
    client.send(b"DATA\r\nx\r\n.\r\n")
    assert client.codes() == [354, 250]
    assert len(harness.sink.messages[0].envelope.recipients) == 2


# ------------------------------------------------------------ the default relay policy


@pytest.mark.parametrize("host", ["192.0.2.7", "10.0.0.1", "2001:db8::1"])
def test_non_loopback_clients_may_not_relay(host: str, events: list[dict[str, Any]]) -> None:
    client = greeted(host=host)
    client.send(ENVELOPE)
    assert client.replies() == [b"250 2.1.0 Ok", b"554 5.7.1 Relay access denied"]
    assert any(
        "554 5.7.1 Relay access denied" in line and "to=<rcpt@example.test>" in line for line in lines(events)
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.42", "::1"])
def test_loopback_clients_may_relay(host: str) -> None:
    client = greeted(host=host)
    client.send(ENVELOPE)
    assert client.codes() == [250, 250]


# ------------------------------------------------------------ asynchronous policy answers


@implementer(ISessionPolicy)
class RecordingPolicy(LoopbackRelayPolicy):
    """Answers with Deferreds the test fires, or fixed answers per stage."""

    def __init__(self, answers: Mapping[str, Any] | None = None, deferred: bool = False) -> None:
        self.answers = dict(answers or {})
        self.deferred = deferred
        self.pending: list[tuple[str, Deferred[Reply | None]]] = []
        self.calls: list[str] = []

    def _answer(self, stage: str) -> Decision:
        self.calls.append(stage)
        answer = self.answers.get(stage)
        if isinstance(answer, Exception):
            raise answer
        if self.deferred:
            d: Deferred[Reply | None] = Deferred()
            self.pending.append((stage, d))
            return d
        return answer  # type: ignore[no-any-return]

    def fire(self) -> str:
        stage, d = self.pending.pop(0)
        answer = self.answers.get(stage)
        if isinstance(answer, Deferred):
            answer.chainDeferred(d)
        else:
            d.callback(answer)
        return stage

    def connect(self, state: SessionState) -> Decision:
        return self._answer("connect")

    def helo(self, state: SessionState, name: str) -> Decision:
        return self._answer("helo")

    def mail(self, state: SessionState, sender: Mailbox, params: Mapping[str, str | None]) -> Decision:
        return self._answer("mail")

    def rcpt(self, state: SessionState, recipient: Mailbox, params: Mapping[str, str | None]) -> Decision:
        return self._answer("rcpt")

    def data(self, state: SessionState) -> Decision:
        return self._answer("data")

    def message(self, state: SessionState, envelope: Envelope, size: int) -> Decision:
        return self._answer("message")


def test_pipelined_replies_stay_in_order_while_a_check_is_pending() -> None:
    policy = RecordingPolicy(deferred=True)
    harness = RelayHarness(policy)
    client = harness.connect()
    assert client.replies() == []  # the connect check is pending: no greeting yet
    assert policy.fire() == "connect"
    assert client.replies() == [b"220 relay.test ESMTP"]
    client.send(HELLO + ENVELOPE + b"RCPT TO:<second@example.test>\r\nDATA\r\n")
    assert client.transport.producerState == "paused"  # nothing more is read while waiting
    assert policy.calls == ["connect", "helo"]
    for expected_stage, expected_codes in [
        ("helo", [250]),
        ("mail", [250]),
        ("rcpt", [250]),
        ("rcpt", [250]),
        ("data", [354]),
    ]:
        assert client.codes() == []
        assert policy.fire() == expected_stage
        assert client.codes() == expected_codes
    assert client.transport.producerState == "producing"
    client.send(BODY + b".\r\nNOOP\r\n")
    assert client.codes() == []  # the message check is pending; NOOP waits behind it
    assert policy.fire() == "message"
    assert client.codes() == [250, 250]


def test_policy_refusals_at_each_stage() -> None:
    no = Reply(550, "5.7.1", "No")
    for stage, script, expected in [
        ("helo", HELLO, [550]),
        ("mail", HELLO + b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n", [250, 550, 503]),
        ("rcpt", HELLO + ENVELOPE + b"DATA\r\n", [250, 250, 550, 554]),
        ("data", HELLO + ENVELOPE + b"DATA\r\nNOOP\r\n", [250, 250, 250, 550, 250]),
        ("message", HELLO + ENVELOPE + b"DATA\r\nx\r\n.\r\n", [250, 250, 250, 354, 550]),
    ]:
        harness = RelayHarness(RecordingPolicy({stage: no}))
        client = harness.connect()
        client.output()
        client.send(script)
        assert client.codes() == expected, stage
        assert harness.sink.committed == 0


def test_policy_refusal_at_connect_closes() -> None:
    client = RelayHarness(RecordingPolicy({"connect": Reply(554, "5.7.1", "Go away")})).connect()
    assert client.replies() == [b"554 5.7.1 Go away"]
    assert client.closed


def test_policy_may_reword_a_positive_answer() -> None:
    client = greeted(RelayHarness(RecordingPolicy({"rcpt": Reply(250, "2.1.5", "Welcome")})))
    client.send(ENVELOPE)
    assert client.replies()[-1] == b"250 2.1.5 Welcome"


def test_policy_exception_and_failed_deferred_answer_451(events: list[dict[str, Any]]) -> None:
    harness = RelayHarness(RecordingPolicy({"rcpt": RuntimeError("boom")}))
    client = greeted(harness)
    client.send(ENVELOPE + b"NOOP\r\n")
    assert client.replies() == [
        b"250 2.1.0 Ok",
        b"451 4.3.0 Error: internal error, try again later",
        b"250 2.0.0 Ok",
    ]
    assert len(failures(events)) == 1
    policy = RecordingPolicy({"mail": fail(ValueError("bad"))}, deferred=True)
    client = RelayHarness(policy).connect()
    policy.fire()
    client.send(b"EHLO x\r\nMAIL FROM:<a@b.test>\r\nNOOP\r\n")
    policy.fire()
    policy.fire()
    assert client.codes() == [220, 250, 451, 250]
    assert len(failures(events)) == 2


# ------------------------------------------------------------ DATA: smuggling, long lines, limits

SMUGGLE_PAYLOADS = [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r.\r\n", b"\r\n\x00.\r\n"]
SECOND = b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\nsmuggled\r\n"


@pytest.mark.parametrize("payload", SMUGGLE_PAYLOADS)
def test_smuggling_payloads_give_exactly_one_message(payload: bytes) -> None:
    harness = RelayHarness(bare_newline="normalize")
    client = greeted(harness)
    client.send(ENVELOPE + b"DATA\r\nSubject: a\r\n\r\nfirst" + payload + SECOND + b".\r\nQUIT\r\n")
    assert client.codes() == [250, 250, 354, 250, 221]
    assert harness.sink.committed == 1
    (stored,) = harness.sink.messages
    assert [str(r) for r in stored.envelope.recipients] == ["rcpt@example.test"]
    assert b"MAIL FROM:<evil@x.test>" in stored.data  # it was body text, never a command


@pytest.mark.parametrize("payload", SMUGGLE_PAYLOADS)
def test_smuggling_payloads_are_refused_whole_under_reject(payload: bytes) -> None:
    harness = RelayHarness()
    client = greeted(harness)
    client.send(ENVELOPE + b"DATA\r\nSubject: a\r\n\r\nfirst" + payload + SECOND + b".\r\nQUIT\r\n")
    replies = client.replies()
    assert [int(r[:3]) for r in replies] == [250, 250, 354, 554, 221]
    assert replies[3] in (
        b"554 5.6.11 Error: bare CR or LF in message (use CRLF line endings)",
        b"554 5.6.0 Error: NUL byte in message",
    )
    assert harness.sink.committed == 0 and harness.sink.aborted == 1


def test_a_20k_line_then_command_looking_text_is_one_refusal() -> None:
    harness = RelayHarness()
    client = greeted(harness)
    body = b"x" * 20_000 + b"\r\nRSET\r\nQUIT\r\nMAIL FROM:<a@b.test>\r\n"
    client.send(ENVELOPE + b"DATA\r\n" + body + b".\r\nNOOP\r\n")
    assert client.replies() == [
        b"250 2.1.0 Ok",
        b"250 2.1.5 Ok",
        b"354 End data with <CR><LF>.<CR><LF>",
        b"554 5.6.0 Error: message has a line that is too long",
        b"250 2.0.0 Ok",
    ]
    assert not client.closed and harness.sink.committed == 0


def test_raised_line_limit_accepts_long_lines() -> None:
    harness = RelayHarness(max_line_length=30_000)
    client = greeted(harness)
    assert send_message(client, b"x" * 20_000 + b"\r\n")[0].startswith(b"250 ")


def test_oversize_message_is_read_to_the_end_and_refused() -> None:
    harness = RelayHarness(max_message_size="2K")
    client = greeted(harness)
    client.send(ENVELOPE + b"DATA\r\n")
    client.output()
    for _ in range(10):
        client.send(b"y" * 500 + b"\r\n")
    client.send(b".\r\nNOOP\r\n")
    assert client.replies() == [b"552 5.3.4 Error: message too big", b"250 2.0.0 Ok"]


def test_bare_lf_commands_under_reject_and_normalize() -> None:
    client = greeted()
    client.send(b"NOOP\nNOOP\r\n")
    assert client.replies() == [
        b"500 5.5.2 Error: bare <LF> received (use CRLF line endings)",
        b"250 2.0.0 Ok",
    ]
    harness = RelayHarness(bare_newline="normalize")
    client = greeted(harness)
    client.send(b"MAIL FROM:<a@b.test>\nRCPT TO:<c@d.test>\nDATA\n.\nx\r\n.\r\n")
    assert client.codes() == [250, 250, 354, 250]
    assert harness.sink.messages[0].data.endswith(b"\r\n.\r\nx\r\n")  # ".\n" after a bare-LF DATA is body


def test_data_split_into_many_reads() -> None:
    harness = RelayHarness()
    client = greeted(harness)
    client.send(ENVELOPE + b"DATA\r\n")
    client.output()
    wire = b"a\r\n..b\r\n" * 100 + b".\r\nNOOP\r\n"
    for i in range(0, len(wire), 7):
        client.send(wire[i : i + 7])
    assert client.codes() == [250, 250]
    assert harness.sink.messages[0].data.endswith(b"a\r\n.b\r\n" * 100)


# ------------------------------------------------------------ line limits, errors, foreign protocols


def test_long_command_line_is_refused_and_the_session_goes_on() -> None:
    client = greeted()
    client.send(b"NOOP " + b"x" * 3000 + b"\r\nNOOP\r\n")
    assert client.replies() == [b"500 5.5.2 Error: line too long", b"250 2.0.0 Ok"]
    assert not client.closed


def test_megabytes_without_crlf_are_cut_off() -> None:
    client = greeted()
    for _ in range(2):
        client.send(b"A" * 1024)
    assert client.replies() == []
    client.send(b"A" * 1024)
    assert client.replies() == [b"500 5.5.2 Error: line too long"]
    assert client.closed
    client.send(b"A" * 1024 * 1024)  # a closing session ignores the rest
    assert client.replies() == []
    assert len(client.session._buf) == 0


def test_command_line_limit_follows_the_configuration() -> None:
    client = greeted(RelayHarness(max_command_line=512))
    client.send(b"NOOP " + b"x" * 600 + b"\r\n")
    assert client.codes() == [500]


def test_too_many_errors_close_the_session() -> None:
    client = greeted()
    client.send(b"BOGUS\r\n" * 25)
    replies = client.replies()
    assert replies[:19] == [b"500 5.5.2 Error: command not recognized"] * 19
    assert replies[19:] == [
        b"500 5.5.2 Error: command not recognized",
        b"421 4.7.0 relay.test Error: too many errors",
    ]
    assert client.closed


@pytest.mark.parametrize("line", [b"GET / HTTP/1.1", b"POST /x HTTP/1.0", b"Host: relay.test"])
def test_other_protocols_are_cut_off(line: bytes) -> None:
    client = greeted(ehlo=False)
    client.send(line + b"\r\n")
    assert client.replies() == [b"421 4.7.0 relay.test Error: not an SMTP client"]
    assert client.closed


# ------------------------------------------------------------ timeouts


def test_idle_timeout() -> None:
    harness = RelayHarness(timeout_client="30s")
    client = greeted(harness)
    harness.reactor.advance(29)
    client.send(b"NOOP\r\n")
    harness.reactor.advance(29)
    assert client.codes() == [250]
    harness.reactor.advance(1.5)
    assert client.replies() == [b"421 4.4.2 relay.test Error: timeout"]
    assert client.closed


def test_data_timeout_aborts_the_message() -> None:
    harness = RelayHarness(timeout_client="5m", timeout_data="10s")
    client = greeted(harness)
    client.send(ENVELOPE + b"DATA\r\npart\r\n")
    client.output()
    harness.reactor.advance(11)
    assert client.replies() == [b"421 4.4.2 relay.test Error: timeout"]
    assert harness.sink.aborted == 1 and harness.sink.committed == 0


def test_session_time_limit() -> None:
    harness = RelayHarness(timeout_client="1m", timeout_session="5m")
    client = greeted(harness)
    for _ in range(9):
        harness.reactor.advance(30)
        client.send(b"NOOP\r\n")
    assert not client.closed
    harness.reactor.advance(31)
    assert client.replies()[-1] == b"421 4.4.2 relay.test Error: session time limit exceeded"
    assert client.closed


def test_no_idle_timeout_while_the_server_is_waiting() -> None:
    policy = RecordingPolicy(deferred=True)
    harness = RelayHarness(policy, timeout_client="10s")
    client = harness.connect()
    harness.reactor.advance(60)
    assert not client.closed
    policy.fire()
    assert client.codes() == [220]
    harness.reactor.advance(11)
    assert client.closed


# ------------------------------------------------------------ sink failures and internal errors


def test_sink_refuses_at_data() -> None:
    harness = RelayHarness()
    harness.sink.fail_begin = SinkError(Reply(452, "4.3.1", "Insufficient system storage"))
    client = greeted(harness)
    client.send(ENVELOPE + b"DATA\r\nRCPT TO:<x@y.test>\r\n")
    assert client.replies()[-2:] == [
        b"452 4.3.1 Insufficient system storage",
        b"503 5.5.1 Error: need MAIL command",
    ]


def test_commit_failures(events: list[dict[str, Any]]) -> None:
    harness = RelayHarness()
    client = greeted(harness)
    harness.sink.fail_commit = SinkError(Reply(452, "4.3.1", "Spool full"))
    assert send_message(client) == [b"452 4.3.1 Spool full"]
    harness.sink.fail_commit = OSError("disk on fire")
    assert send_message(client) == [b"451 4.3.0 Error: internal error, try again later"]
    assert failures(events)[0].check(OSError)
    harness.sink.fail_commit = None
    assert send_message(client)[0].startswith(b"250 2.0.0 Ok: queued as ")


def test_writer_failure_reads_to_the_end_then_451(events: list[dict[str, Any]]) -> None:
    harness = RelayHarness()
    harness.sink.fail_write = OSError("write failed")
    client = greeted(harness)
    client.send(ENVELOPE + b"DATA\r\n")
    client.output()
    client.send(b"line\r\nMAIL FROM:<x@y.test>\r\n.\r\nNOOP\r\n")
    assert client.replies() == [b"451 4.3.0 Error: internal error, try again later", b"250 2.0.0 Ok"]
    assert harness.sink.aborted == 1 and failures(events)


def test_slow_commit_keeps_later_commands_waiting() -> None:
    harness = RelayHarness()
    harness.sink.hold = True
    client = greeted(harness)
    client.send(ENVELOPE + b"DATA\r\n")
    client.output()
    client.send(b"x\r\n.\r\nMAIL FROM:<a@b.test>\r\n")
    assert client.codes() == []
    harness.sink.release()
    replies = client.replies()
    assert replies[0].startswith(b"250 2.0.0 Ok: queued as ") and replies[1] == b"250 2.1.0 Ok"


def test_exception_in_a_command_handler_answers_451(
    monkeypatch: pytest.MonkeyPatch, events: list[dict[str, Any]]
) -> None:
    def broken(self: Any, args: bytes) -> None:
        raise KeyError("bug")

    monkeypatch.setitem(server_module._HANDLERS, b"VRFY", broken)
    client = greeted()
    client.send(ENVELOPE + b"VRFY x\r\nDATA\r\nNOOP\r\n")
    assert client.replies()[-3:] == [
        b"451 4.3.0 Error: internal error, try again later",
        b"503 5.5.1 Error: need MAIL command",  # the transaction was reset
        b"250 2.0.0 Ok",
    ]
    assert failures(events)[0].check(KeyError)


def test_exception_in_the_scanner_answers_and_closes(
    monkeypatch: pytest.MonkeyPatch, events: list[dict[str, Any]]
) -> None:
    client = greeted()
    client.send(ENVELOPE + b"DATA\r\n")
    client.output()
    scanner = client.session._scanner
    assert scanner is not None

    def broken(data: bytes) -> bytes | None:
        raise MemoryError("no")

    monkeypatch.setattr(scanner, "feed", broken)
    client.send(b"x\r\n")
    assert client.replies() == [b"451 4.3.0 Error: internal error, try again later"]
    assert client.closed and failures(events)


def test_client_leaving_during_data_aborts_the_message(events: list[dict[str, Any]]) -> None:
    harness = RelayHarness()
    client = greeted(harness)
    client.send(ENVELOPE + b"DATA\r\nhalf a mess")
    client.lose()
    assert harness.sink.aborted == 1
    assert lines(events)[-1].endswith("client left during DATA")
    assert harness.frontend.current == 0


# ------------------------------------------------------------ STARTTLS


def test_starttls_discards_pipelined_plaintext_and_resets() -> None:
    harness = RelayHarness(tls=True)
    client = greeted(harness)
    client.send(b"STARTTLS\r\nRSET\r\n")
    assert client.replies() == [b"220 2.0.0 Ready to start TLS"]
    assert client.transport.tls_options is harness.frontend.tls_options
    assert client.transport.written_before_tls.endswith(b"220 2.0.0 Ready to start TLS\r\n")
    assert client.replies() == []  # the RSET sent in plaintext was never answered
    client.send(b"MAIL FROM:<a@b.test>\r\n")
    assert client.replies() == [b"503 5.5.1 Error: send HELO/EHLO first"]
    client.send(HELLO)
    capabilities = client.replies()
    assert b"250-STARTTLS" not in capabilities
    client.send(b"STARTTLS\r\n")
    assert client.replies() == [b"503 5.5.1 Error: TLS already active"]
    send_message(client)
    received = harness.sink.messages[0].data
    assert b"with ESMTPS id" in received
    assert b"(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256 bits))" in received


def test_starttls_errors() -> None:
    client = greeted()
    client.send(b"STARTTLS\r\n")
    assert client.replies() == [b"502 5.5.1 Error: command not implemented"]
    client = greeted(RelayHarness(tls=True), ehlo=False)
    client.send(b"STARTTLS\r\nHELO x\r\nSTARTTLS\r\n")
    assert client.replies() == [
        b"503 5.5.1 Error: send EHLO first",
        b"250 relay.test",
        b"503 5.5.1 Error: send EHLO first",
    ]


def test_starttls_sequence_errors() -> None:
    client = greeted(RelayHarness(tls=True))
    client.send(b"STARTTLS now\r\nMAIL FROM:<a@b.test>\r\nSTARTTLS\r\n")
    assert client.replies() == [
        b"501 5.5.4 Syntax: STARTTLS",
        b"250 2.1.0 Ok",
        b"503 5.5.1 Error: MAIL transaction in progress",
    ]


def test_require_tls() -> None:
    client = greeted(RelayHarness(tls=True, require_tls=True))
    client.send(b"MAIL FROM:<a@b.test>\r\n")
    assert client.replies() == [b"530 5.7.0 Must issue a STARTTLS command first"]
    client.send(b"STARTTLS\r\n")
    client.output()
    client.send(HELLO + b"MAIL FROM:<a@b.test>\r\n")
    assert client.codes() == [250, 250]


# ------------------------------------------------------------ AUTH

PLAIN_OK = b"AHVzZXIAc2VjcmV0"  # \0user\0secret
PLAIN_BAD = b"AHVzZXIAd3Jvbmc="  # \0user\0wrong


def tls_client(**kw: Any) -> tuple[RelayHarness, Client]:
    harness = RelayHarness(tls=True, users={"user": "secret"}, **kw)
    client = greeted(harness)
    client.send(b"STARTTLS\r\n")
    client.output()
    client.send(HELLO)
    replies = client.replies()
    assert b"250-AUTH PLAIN LOGIN" in replies
    return harness, client


def test_auth_plain_with_initial_response() -> None:
    harness, client = tls_client()
    client.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n")
    assert client.replies() == [b"235 2.7.0 Authentication successful"]
    assert client.session.state.user == "user"
    send_message(client)
    data = harness.sink.messages[0].data
    assert b"with ESMTPSA id" in data and b"(authenticated sender: user)" in data
    assert harness.sink.messages[0].envelope.user == "user"
    client.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n")
    assert client.replies() == [b"503 5.5.1 Error: already authenticated"]


def test_auth_plain_with_a_challenge_and_login() -> None:
    _, client = tls_client()
    client.send(b"AUTH PLAIN\r\n")
    assert client.replies() == [b"334 "]
    client.send(PLAIN_OK + b"\r\n")
    assert client.codes() == [235]
    _, client = tls_client()
    client.send(b"AUTH LOGIN\r\n")
    assert client.replies() == [b"334 VXNlcm5hbWU6"]
    client.send(b"dXNlcg==\r\n")
    assert client.replies() == [b"334 UGFzc3dvcmQ6"]
    client.send(b"c2VjcmV0\r\n")
    assert client.codes() == [235]
    _, client = tls_client()
    client.send(b"AUTH LOGIN dXNlcg==\r\nc2VjcmV0\r\n")
    assert client.codes() == [334, 235]


def test_auth_failures(events: list[dict[str, Any]]) -> None:
    _, client = tls_client()
    client.send(b"AUTH PLAIN " + PLAIN_BAD + b"\r\n")
    assert client.replies() == [b"535 5.7.8 Error: authentication credentials invalid"]
    client.send(b"AUTH PLAIN\r\n*\r\n")
    assert client.replies() == [b"334 ", b"501 5.7.0 Authentication aborted"]
    client.send(b"AUTH PLAIN !!!notbase64\r\n")
    assert client.replies() == [b"501 5.5.2 Error: invalid base64"]
    client.send(b"AUTH CRAM-MD5\r\n")
    assert client.replies() == [b"504 5.5.4 Error: unsupported authentication mechanism"]
    client.send(b"AUTH PLAIN " + b"YWRtaW4AdXNlcgBzZWNyZXQ=" + b"\r\n")  # admin\0user\0secret
    assert client.codes() == [535]
    client.send(b"AUTH PLAIN AG5vYm9keQBzZWNyZXQ=\r\n")  # unknown user
    assert client.replies() == [
        b"535 5.7.8 Error: authentication credentials invalid",
        b"421 4.7.0 relay.test Error: too many failed authentications",
    ]
    assert client.closed
    assert sum("authentication failed" in line for line in lines(events)) == 3


def test_auth_not_offered_without_tls() -> None:
    harness = RelayHarness(tls=True, users={"user": "secret"})
    client = greeted(harness)
    client.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n")
    assert client.replies() == [b"538 5.7.11 Encryption required for requested authentication mechanism"]
    client = greeted()
    client.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n")
    assert client.replies() == [b"502 5.5.1 Error: authentication not enabled"]


def test_auth_sequence_errors() -> None:
    harness = RelayHarness(users={"user": "secret"}, allow_plaintext_auth=True)
    client = greeted(harness, ehlo=False)
    client.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n")
    assert client.replies() == [b"503 5.5.1 Error: send EHLO first"]
    client.send(HELLO + b"MAIL FROM:<a@b.test>\r\nAUTH PLAIN " + PLAIN_OK + b"\r\n")
    assert client.replies()[-1] == b"503 5.5.1 Error: MAIL transaction in progress"
    client.send(b"RSET\r\nAUTH PLAIN " + PLAIN_OK + b"\r\n")
    assert client.codes() == [250, 235]


def test_starttls_forgets_authentication() -> None:
    harness = RelayHarness(tls=True, users={"user": "secret"}, allow_plaintext_auth=True)
    client = greeted(harness)
    client.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\nSTARTTLS\r\n")
    assert client.codes() == [235, 220]
    assert client.session.state.user is None


# ------------------------------------------------------------ BDAT (CHUNKING)


def test_bdat_single_and_multiple_chunks() -> None:
    harness = RelayHarness()
    client = greeted(harness)
    client.send(ENVELOPE + b"BDAT 8 LAST\r\n.a\r\n.\r\nb")
    replies = client.replies()
    assert replies[-1].startswith(b"250 2.0.0 Ok: queued as ")
    assert harness.sink.messages[0].data.endswith(b"\r\n.a\r\n.\r\nb\r\n")  # no dot transparency
    client.send(ENVELOPE + b"BDAT 4\r\nab\r\nBDAT 4\r\ncd\r\nBDAT 0 LAST\r\n")
    replies = client.replies()
    assert replies[2:4] == [b"250 2.0.0 4 octets received"] * 2
    assert replies[4].startswith(b"250 2.0.0 Ok: queued as ")
    assert harness.sink.messages[1].data.endswith(b"\r\nab\r\ncd\r\n")


def test_bdat_chunks_split_across_reads() -> None:
    harness = RelayHarness()
    client = greeted(harness)
    client.send(ENVELOPE + b"BDAT 10 LAST\r\n0123")
    client.send(b"456789NOOP\r\n")
    assert client.codes() == [250, 250, 250, 250]
    assert harness.sink.messages[0].data.endswith(b"0123456789\r\n")


def test_bdat_refusals_consume_the_chunk() -> None:
    client = greeted()
    client.send(b"BDAT 6\r\nNOOP\r\nNOOP\r\n")
    assert client.replies() == [b"503 5.5.1 Error: need MAIL command", b"250 2.0.0 Ok"]
    client.send(b"MAIL FROM:<a@b.test>\r\nBDAT 6 LAST\r\nRSET\r\n")
    assert client.replies() == [b"250 2.1.0 Ok", b"554 5.5.1 Error: no valid recipients"]
    client.send(b"RSET\r\n" + ENVELOPE + b"BDAT 2\r\nabDATA\r\n")
    assert client.replies()[-1] == b"503 5.5.1 Error: DATA after BDAT"
    client = greeted(ehlo=False)
    client.send(b"HELO x\r\nBDAT 4 LAST\r\nNOOPNOOP\r\n")
    assert client.codes() == [250, 503, 250]


def test_bdat_syntax_error_closes() -> None:
    client = greeted()
    client.send(ENVELOPE + b"BDAT lots\r\n")
    assert client.replies()[-1] == b"501 5.5.4 Syntax: BDAT size [LAST]"
    assert client.closed


def test_bdat_body_rules() -> None:
    harness = RelayHarness()
    client = greeted(harness)
    client.send(ENVELOPE + b"BDAT 5 LAST\r\na\nb\r\nNOOP\r\n")
    assert client.replies()[-2:] == [
        b"554 5.6.11 Error: bare CR or LF in message (use CRLF line endings)",
        b"250 2.0.0 Ok",
    ]
    client.send(ENVELOPE + b"BDAT 1001\r\n" + b"z" * 1001 + b"BDAT 2 LAST\r\n\r\n")
    assert client.replies()[-2:] == [
        b"554 5.6.0 Error: message has a line that is too long",
        b"503 5.5.1 Error: need MAIL command",
    ]
    assert harness.sink.committed == 0


def test_bdat_with_a_pending_policy_check() -> None:
    policy = RecordingPolicy({"data": Reply(550, "5.7.1", "Not now")}, deferred=True)
    harness = RelayHarness(policy)
    client = harness.connect()
    policy.fire()
    client.send(HELLO + ENVELOPE + b"BDAT 4 LAST\r\nabcdNOOP\r\n")
    for _ in range(4):
        policy.fire()
    assert client.codes() == [220, 250, 250, 250, 550, 250]


# ------------------------------------------------------------ connection limits, PROXY, back-pressure


def test_maxconn_and_maxconn_per_client() -> None:
    harness = RelayHarness(maxconn=2, maxconn_per_client=1)
    first = harness.connect("192.0.2.1")
    assert first.codes() == [220]
    again = harness.connect("192.0.2.1")
    assert again.replies() == [b"421 4.7.0 relay.test Error: too many connections from your address"]
    assert again.closed
    again.lose()
    second = harness.connect("192.0.2.2")
    assert second.codes() == [220]
    third = harness.connect("192.0.2.3")
    assert third.replies() == [b"421 4.7.0 relay.test Error: too many connections"]
    third.lose()
    first.lose()
    assert harness.frontend.current == 1 and harness.frontend.per_client == {"192.0.2.2": 1}
    assert harness.connect("192.0.2.1").codes() == [220]


def test_proxy_header_from_a_trusted_network() -> None:
    harness = RelayHarness(accept_proxy=["127.0.0.0/8"], maxconn_per_client=1)
    client = harness.connect("127.0.0.1")
    assert client.replies() == []  # no greeting before the header
    client.send(b"PROXY TCP4 192.0.2.7 ")
    assert client.replies() == []
    client.send(b"192.0.2.1 40001 25\r\nEHLO x\r\n")
    assert client.codes() == [220, 250]
    state = client.session.state
    assert state.client == ("192.0.2.7", 40001) and state.proxy == ("127.0.0.1", 40000)
    client.send(ENVELOPE)
    assert client.replies()[-1] == b"554 5.7.1 Relay access denied"  # the real client is remote
    other = harness.connect("127.0.0.1", 40002)
    other.send(b"PROXY TCP4 192.0.2.7 192.0.2.1 40003 25\r\n")
    assert other.replies() == [b"421 4.7.0 relay.test Error: too many connections from your address"]


def test_proxy_header_gives_the_received_client() -> None:
    harness = RelayHarness(accept_proxy=["127.0.0.1"])
    client = harness.connect("127.0.0.1")
    client.send(b"PROXY TCP4 127.0.0.9 127.0.0.1 40001 25\r\n" + HELLO)
    client.output()
    send_message(client)
    assert b"Received: from client.test ([127.0.0.9])" in harness.sink.messages[0].data


def test_bad_or_missing_proxy_header(events: list[dict[str, Any]]) -> None:
    harness = RelayHarness(accept_proxy=["127.0.0.1"], proxy_timeout="3s")
    client = harness.connect("127.0.0.1")
    client.send(b"EHLO x\r\n")
    assert client.replies() == [] and client.closed
    client.lose()
    assert "bad PROXY header" in lines(events)[-1]
    slow = harness.connect("127.0.0.1")
    harness.reactor.advance(3.5)
    assert slow.closed and slow.replies() == []


def test_proxy_header_is_not_read_from_others() -> None:
    client = greeted(RelayHarness(accept_proxy=["10.0.0.0/8"]), ehlo=False)
    client.send(b"PROXY TCP4 192.0.2.7 192.0.2.1 40001 25\r\n")
    assert client.codes() == [500]


def test_write_back_pressure_pauses_reading() -> None:
    client = greeted()
    client.session.pauseProducing()
    assert client.transport.producerState == "paused"
    client.session.resumeProducing()
    assert client.transport.producerState == "producing"


def test_session_log_line(events: list[dict[str, Any]]) -> None:
    client = greeted(host="192.0.2.9")
    client.send(b"QUIT\r\n")
    client.lose()
    assert lines(events)[-1].startswith(
        "relay: disconnect from [192.0.2.9]:40000 after 0ms: 2 commands, 0 messages: quit"
    )


def test_exception_in_the_connect_check_answers_421(events: list[dict[str, Any]]) -> None:
    client = RelayHarness(RecordingPolicy({"connect": RuntimeError("boom")})).connect()
    assert client.replies() == [b"421 4.3.0 relay.test Error: internal error"]
    assert client.closed and failures(events)[0].check(RuntimeError)
    policy = RecordingPolicy({"connect": fail(ValueError("bad"))}, deferred=True)
    client = RelayHarness(policy).connect()
    policy.fire()
    assert client.replies() == [b"421 4.3.0 relay.test Error: internal error"]


def test_exception_at_bdat_start_reads_the_chunk_then_451(events: list[dict[str, Any]]) -> None:
    harness = RelayHarness()
    harness.sink.fail_begin = OSError("no spool")
    client = greeted(harness)
    client.send(ENVELOPE + b"BDAT 6 LAST\r\nRSET\r\nNOOP\r\n")
    assert client.replies()[-2:] == [b"451 4.3.0 Error: internal error, try again later", b"250 2.0.0 Ok"]
    assert failures(events)[0].check(OSError)
