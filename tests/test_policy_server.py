"""The ESMTP server with a policy chain: the auth hook, 421, headers and queue ID, TLS, PROXY, pipelining."""

from __future__ import annotations

import base64
import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import crypto
from twisted.internet.defer import Deferred

from relaybal.interfaces import VerdictResult
from relaybal.policy import CONTINUE, PERMIT, PolicyBase, PolicyContext, Verdict, defer, disconnect, reject
from relaybal.proxyproto import v2
from relaybal.relay.testing import Client
from relaybal.smtp import server as server_module
from relaybal.smtp.server import MAX_HEADER_BLOCK, parse_header_block
from relaybal.testing import ChainRunner, ScriptedPolicy

HELLO = b"EHLO client.test\r\n"


def plain(user: str, password: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


Recorder = ScriptedPolicy


def greeted(runner: ChainRunner, host: str = "192.0.2.7", **frontend: Any) -> tuple[Client, Any]:
    harness = runner.harness(**frontend)
    client = harness.connect(host)
    assert client.codes() == [220]
    client.send(HELLO)
    assert client.codes() == [250]
    return client, harness


# ----------------------------------------------------------------------------- AUTH


def test_a_successful_auth_asks_the_chain_and_its_permit_allows_relaying() -> None:
    recorder = Recorder()
    runner = ChainRunner.from_config({"users": {"plugin": "auth", "users": ["alice"]}})
    runner = ChainRunner(("recorder", recorder), ("users", runner.chain.links[0].policy))
    client, _ = greeted(runner, users={"alice": "pw", "bob": "pw"}, allow_plaintext_auth=True)
    client.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.net>\r\nRSET\r\n")
    assert client.codes() == [250, 554, 250]
    client.send(b"AUTH PLAIN " + plain("alice", "pw") + b"\r\n")
    assert client.replies() == [b"235 2.7.0 Authentication successful"]
    [ctx] = recorder.seen["auth"]
    assert (ctx.sasl_username, ctx.sasl_method) == ("alice", "PLAIN")
    client.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.net>\r\n")
    assert client.codes() == [250, 250]
    assert recorder.seen["rcpt"][-1].relay_permitted_by == "users"


def test_an_auth_refusal_is_sent_instead_of_235_and_undoes_the_login() -> None:
    no = reject("Not from here", "5.7.1", 535)
    recorder = Recorder(auth=lambda c: no if c.sasl_username == "bob" else PERMIT)
    users = {"alice": "pw", "bob": "pw"}
    client, _ = greeted(ChainRunner(recorder), users=users, allow_plaintext_auth=True)
    client.send(b"AUTH PLAIN " + plain("bob", "pw") + b"\r\n")
    assert client.replies() == [b"535 5.7.1 Not from here"]
    assert client.session.state.user is None and client.session.state.auth_mechanism is None
    client.send(b"AUTH PLAIN " + plain("alice", "pw") + b"\r\n")
    assert client.codes() == [235]
    assert client.session.state.user == "alice"


def test_reading_stays_paused_while_an_asynchronous_auth_hook_decides() -> None:
    pending: list[Deferred[Verdict]] = []

    def later(context: PolicyContext) -> Deferred[Verdict]:
        d: Deferred[Verdict] = Deferred()
        pending.append(d)
        return d

    client, _ = greeted(ChainRunner(Recorder(auth=later)), users={"alice": "pw"}, allow_plaintext_auth=True)
    client.send(b"AUTH PLAIN " + plain("alice", "pw") + b"\r\nNOOP\r\n")
    assert pending and client.replies() == []
    assert client.transport.producerState == "paused"
    pending[0].callback(PERMIT)
    assert client.codes() == [235, 250]
    assert client.transport.producerState == "producing"


# ----------------------------------------------------------------------------- 421


def test_disconnect_closes_the_session_at_any_stage() -> None:
    for stage, script, codes in [
        ("helo", b"", []),
        ("mail", b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.net>\r\n", []),
        ("rcpt", b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.net>\r\nDATA\r\n", [250]),
        ("end_of_data", b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.net>\r\nDATA\r\nx\r\n.\r\nNOOP\r\n",
         [250, 250, 354]),
    ]:  # fmt: skip
        runner = ChainRunner(Recorder(connect=PERMIT, **{stage: disconnect("Go away", "4.7.0")}))
        harness = runner.harness()
        client = harness.connect("192.0.2.7")
        client.output()
        client.send(HELLO + script)
        replies = client.replies()
        assert replies[-1] == b"421 4.7.0 Go away", stage
        before = [int(r[:3]) for r in replies if r[3:4] != b"-"][:-1]
        assert before == ([] if stage == "helo" else [250, *codes])
        assert client.closed, stage
        assert harness.sink.committed == 0


def test_connect_refusals_close_the_connection() -> None:
    for verdict, expected in [
        (reject("Access denied", "5.7.1"), b"554 5.7.1 Access denied"),
        (defer("Busy", "4.7.1"), b"421 4.7.1 Busy"),
    ]:
        client = ChainRunner(Recorder(connect=verdict)).harness().connect("192.0.2.7")
        assert client.replies() == [expected]
        assert client.closed


# ----------------------------------------------------------------------------- end of data


def test_end_of_data_sees_headers_size_and_queue_id() -> None:
    recorder = Recorder(connect=PERMIT)
    client, harness = greeted(ChainRunner(recorder))
    body = (
        b"Subject: a folded\r\n\tsubject line\r\nFrom: App <app@client.test>\r\nX-Empty:\r\n"
        b"\r\nBody: not a header\r\n"
    )
    envelope = b"MAIL FROM:<app@client.test> SIZE=100\r\nRCPT TO:<x@example.net>\r\n"
    client.send(envelope + b"DATA\r\n" + body + b".\r\n")
    assert client.codes() == [250, 250, 354, 250]
    [ctx] = recorder.seen["end_of_data"]
    [stored] = harness.sink.messages
    assert ctx.queue_id == stored.queue_id
    assert ctx.size == len(body)
    assert ctx.declared_size == 100 and recorder.seen["mail"][0].declared_size == 100
    names = [name for name, _ in ctx.headers]
    assert names == ["Received", "Subject", "From", "X-Empty"]
    assert ctx.header("subject") == ["a folded subject line"]
    assert ctx.header("x-empty") == [""]
    assert ctx.header("Body") == []
    assert recorder.seen["data"][0].queue_id is None  # not known before the body
    client.send(b"MAIL FROM:<app@client.test>\r\n")
    assert recorder.seen["mail"][-1].queue_id is None and client.session.state.headers == ()


def test_a_message_without_a_body_is_all_header_and_huge_headers_are_cut() -> None:
    recorder = Recorder(connect=PERMIT)
    client, _ = greeted(ChainRunner(recorder))
    client.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.net>\r\nDATA\r\nSubject: only\r\n.\r\n")
    assert client.codes() == [250, 250, 354, 250]
    assert recorder.seen["end_of_data"][-1].header("Subject") == ["only"]
    big = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"x" * 900) for i in range(100))
    client.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.net>\r\nDATA\r\n" + big + b"\r\nbody\r\n.\r\n")
    assert client.codes() == [250, 250, 354, 250]
    headers = recorder.seen["end_of_data"][-1].headers
    assert 60 < len(headers) < 100
    assert sum(len(n) + len(v) + 4 for n, v in headers) <= MAX_HEADER_BLOCK


def test_without_end_of_data_hooks_no_headers_are_collected() -> None:
    class OnlyRcpt(PolicyBase):
        def rcpt(self, context: PolicyContext) -> VerdictResult:
            return PERMIT

    client, _ = greeted(ChainRunner(OnlyRcpt()))
    assert not client.session._want_headers
    client.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.net>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
    assert client.codes() == [250, 250, 354, 250]


def test_parse_header_block() -> None:
    block = b"A: 1\r\nB:2\r\n  more\r\n\tand more\r\nbad line\r\nC: 3\r\n"
    assert parse_header_block(block) == (("A", "1"), ("B", "2 more and more"))
    assert parse_header_block(b" starts folded\r\nA: 1\r\n") == ()
    assert parse_header_block(b"Caf\xc3\xa9: cr\xe8me\r\n") == (("Caf\u00e9", "cr\ufffdme"),)


# ----------------------------------------------------------------------------- TLS, PROXY, context


def test_starttls_forgets_helo_and_auth_permits_and_the_context_shows_tls() -> None:
    recorder = Recorder(helo=lambda c: PERMIT if c.helo_name == "trusted.test" else CONTINUE)
    client, _ = greeted(ChainRunner(recorder), tls=True)
    client.send(b"EHLO trusted.test\r\nSTARTTLS\r\n")
    client.output()
    client.send(b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.net>\r\n")
    assert client.codes() == [250, 250, 554]
    ctx = recorder.seen["rcpt"][-1]
    tls = ("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256)
    assert (ctx.tls_version, ctx.tls_cipher, ctx.tls_cipher_bits) == tls
    assert ctx.tls_client_subject is None
    assert recorder.seen["helo"][0].tls_version is None
    assert recorder.seen["helo"][-1].tls_version == "TLSv1.3"  # the handshake is done when EHLO arrives


def test_the_client_certificate_subject_is_read() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "app1"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip

    class Handle:
        def get_peer_certificate(self) -> Any:
            return crypto.X509.from_cryptography(certificate)

    class Transport:
        def getHandle(self) -> Handle:
            return Handle()

    assert server_module._tls_client_subject(Transport()) == "O=Example,CN=app1"
    assert server_module._tls_client_subject(object()) is None


def test_policies_see_the_real_client_behind_a_proxy() -> None:
    recorder = Recorder(connect=PERMIT)
    harness = ChainRunner(recorder).harness(accept_proxy=["127.0.0.1"])
    client = harness.connect("127.0.0.1", 50000)
    client.send(v2.encode_v2(("203.0.113.9", 41000), ("192.0.2.1", 25)) + HELLO)
    assert client.codes() == [220, 250]
    [ctx] = recorder.seen["connect"]
    assert (ctx.client_address, ctx.client_port, ctx.proxy_address) == ("203.0.113.9", 41000, "127.0.0.1")
    assert (ctx.server_address, ctx.server_port) == ("192.0.2.1", 25)
    helo = recorder.seen["helo"][0]
    assert helo.helo_name == "client.test" and helo.session_id == ctx.session_id


def test_the_transaction_number_changes_with_every_transaction() -> None:
    recorder = Recorder(connect=PERMIT)
    client, _ = greeted(ChainRunner(recorder))
    client.send(b"MAIL FROM:<a@b.test>\r\nRSET\r\nMAIL FROM:<a@b.test>\r\n")
    first, second = recorder.seen["mail"]
    assert first.transaction != second.transaction
    assert first.sender is not None and str(first.sender) == "a@b.test"


def test_the_helo_stage_sees_which_greeting_it_is() -> None:
    no_helo = reject("No HELO", "5.5.1", 550)
    recorder = Recorder(helo=lambda c: no_helo if not c.esmtp else CONTINUE)
    client, _ = greeted(ChainRunner(recorder))
    client.send(b"HELO old.test\r\n")
    assert client.replies() == [b"550 5.5.1 No HELO"]
    assert client.session.state.esmtp and client.session.state.helo == "client.test"  # the EHLO still stands
    assert [c.esmtp for c in recorder.seen["helo"]] == [True, False]
