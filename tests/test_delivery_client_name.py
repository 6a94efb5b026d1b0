"""The client's looked-up name travels with its message to the gateway: XCLIENT/XFORWARD ``NAME``.

A relay frontend with ``reverse_lookup = true`` knows the client's name
(:attr:`SessionState.client_name`); :meth:`Envelope.of` keeps it, the spool
(and ``relaybal queue export``) keeps it across restarts, and delivery sends
it as ``NAME=`` (XCLIENT_README, XFORWARD_README): the forward-confirmed name,
else ``[UNAVAILABLE]``. Sessions are driven with a fake resolver, gateways
are scripted (exact command lines) and, at the end, a private Postfix shows
what it logs.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
from peers import PrivatePostfix
from test_delivery_client import BODY, Gateway, Outcome, ehlo, make_txn
from test_delivery_client_peers import POSTFIX_BASE, Loop, message
from test_delivery_scheduler import World
from test_relay_reverse_lookup import RecordingPolicy
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSServerError

from relaybal.balance.backend import Backend
from relaybal.config import Address, BackendConfig, ServerConfig
from relaybal.delivery.client import (
    ClientIdentity,
    ClientSettings,
    IdentityConflict,
    SMTPClientConnection,
    TransactionResult,
    connect,
    xclient_commands,
    xforward_commands,
)
from relaybal.delivery.cutthrough import CutThroughSink
from relaybal.delivery.pool import GatewayPool
from relaybal.delivery.scheduler import identity
from relaybal.relay.frontend import RelayFrontend
from relaybal.relay.interfaces import Envelope, IMessageSink
from relaybal.relay.memory import MemoryMessageSink
from relaybal.relay.testing import RelayHarness
from relaybal.spool import format as fmt
from relaybal.spool.disk import LOG_DIR, segment_name
from relaybal.spool.export import export_queue, import_queue
from relaybal.spool.message import QueuedMessage, RecipientState
from relaybal.spool.store import SpoolStore
from relaybal.spool.testing import ManualOffloader, sample_envelope

# --------------------------------------------------------------------------- sessions with a name lookup

NAME = "mail.example.test"
SESSION = (
    b"EHLO client.test\r\nMAIL FROM:<app@client.test>\r\nRCPT TO:<user@example.test>\r\nDATA\r\n"
    b"Subject: hi\r\n\r\nHello.\r\n.\r\n"
)


class Names:
    """A ``twisted.names`` resolver that answers at once: PTR names and A records, or errors."""

    def __init__(
        self, ptr: dict[str, str | Exception] | None = None, a: dict[str, Sequence[str]] | None = None
    ) -> None:
        self.ptr = ptr or {}
        self.a = a or {}
        self.asked: list[str] = []

    def lookupPointer(self, name: str, timeout: Any = None) -> Deferred[Any]:
        self.asked.append(name)
        answer = self.ptr.get(name, DNSNameError(name))
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(([dns.RRHeader(name, dns.PTR, dns.IN, 300, dns.Record_PTR(answer))], [], []))

    def lookupAddress(self, name: str, timeout: Any = None) -> Deferred[Any]:
        self.asked.append(name)
        records = [dns.RRHeader(name, dns.A, dns.IN, 300, dns.Record_A(ip)) for ip in self.a.get(name, ())]
        return succeed((records, [], [])) if records else fail(DNSNameError(name))

    def lookupIPV6Address(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return fail(DNSNameError(name))


def ptr(host: str) -> str:
    return ".".join(reversed(host.split("."))) + ".in-addr.arpa"


def lookup_answers(
    lookup: str, host: str
) -> tuple[bool, dict[str, str | Exception], dict[str, Sequence[str]]]:
    """How the name lookup of ``host`` goes: the frontend's reverse_lookup, and the resolver's answers."""
    answers: dict[str, tuple[bool, dict[str, str | Exception], dict[str, Sequence[str]]]] = {
        "confirmed": (True, {ptr(host): NAME}, {NAME: ["192.0.2.9", host]}),
        "not-confirmed": (True, {ptr(host): NAME}, {NAME: ["192.0.2.99"]}),
        "no-ptr": (True, {}, {}),
        "dns-failure": (True, {ptr(host): DNSServerError("SERVFAIL")}, {}),
        "off": (False, {}, {}),
    }
    return answers[lookup]


LOOKUPS = ("confirmed", "not-confirmed", "no-ptr", "dns-failure", "off")
CLIENT_NAMES = {
    "confirmed": NAME,
    "not-confirmed": "unknown",
    "no-ptr": "unknown",
    "dns-failure": "unknown",
    "off": None,
}


def receive(
    lookup: str,
    sink: IMessageSink | None = None,
    settle: Callable[[], object] = lambda: None,
    host: str = "192.0.2.7",
) -> RelayHarness:
    """One message from ``host`` through a relay frontend whose name lookup went as ``lookup`` says."""
    enabled, ptr_answers, a_answers = lookup_answers(lookup, host)
    resolver = Names(ptr_answers, a_answers)
    policy = RecordingPolicy()  # relays for anyone
    harness = RelayHarness(policy, reverse_lookup=enabled)
    harness.frontend = RelayFrontend(
        harness.config,
        harness.backend,
        harness.reactor,
        sink=sink if sink is not None else harness.sink,
        policy=policy,
        resolver=resolver,
    )
    client = harness.connect(host, 40000)
    client.send(SESSION)
    settle()
    assert client.codes() == [220, 250, 250, 250, 354, 250]
    assert bool(resolver.asked) == enabled
    return harness


def envelope_after(lookup: str) -> Envelope:
    sink = MemoryMessageSink(lambda: 0.0)
    receive(lookup, sink)
    return sink.messages[-1].envelope


@pytest.mark.parametrize("lookup", LOOKUPS)
def test_the_envelope_keeps_the_sessions_client_name(lookup: str) -> None:
    envelope = envelope_after(lookup)
    assert envelope.client_name == CLIENT_NAMES[lookup]
    assert envelope.confirmed_client_name == (NAME if lookup == "confirmed" else None)
    assert identity(envelope) == ClientIdentity(
        addr="192.0.2.7",
        port=40000,
        name=NAME if lookup == "confirmed" else None,
        helo="client.test",
        proto="ESMTP",
        login=None,
    )


# --------------------------------------------------------------------------- the command lines

XCLIENT_ALL = "XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT"
XFORWARD_ALL = "XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE"
REST_XCLIENT = (
    " ADDR=192.0.2.7 PORT=40000 PROTO=ESMTP HELO=client.test LOGIN=[UNAVAILABLE]"
    " DESTADDR=[UNAVAILABLE] DESTPORT=[UNAVAILABLE]\r\n"
)
REST_XFORWARD = " ADDR=192.0.2.7 PORT=40000 PROTO=ESMTP HELO=client.test IDENT=Q1 SOURCE=REMOTE\r\n"
# XCLIENT_README: [UNAVAILABLE] when the name is unknown for good, [TEMPUNAVAIL] when the lookup failed
# for now. relaybal does not tell a failed lookup apart from an unconfirmed name (both "unknown"), so a
# DNS server failure is [UNAVAILABLE] too; lookup off is no lookup failure at all.
SENT_NAME = {
    "confirmed": NAME,
    "not-confirmed": "[UNAVAILABLE]",
    "no-ptr": "[UNAVAILABLE]",
    "dns-failure": "[UNAVAILABLE]",
    "off": "[UNAVAILABLE]",
}


@pytest.mark.parametrize("lookup", LOOKUPS)
def test_xclient_sends_the_confirmed_name_or_unavailable(lookup: str) -> None:
    client = identity(envelope_after(lookup))
    gw = Gateway(extensions=("PIPELINING", XCLIENT_ALL), xclient=True)
    gw.deliver(make_txn(client=client))
    assert gw.take() == f"XCLIENT NAME={SENT_NAME[lookup]}{REST_XCLIENT}".encode()
    assert xclient_commands(client, ["NAME"]) == [f"XCLIENT NAME={SENT_NAME[lookup]}"]


@pytest.mark.parametrize("lookup", LOOKUPS)
def test_xforward_sends_the_confirmed_name_or_unavailable(lookup: str) -> None:
    client = identity(envelope_after(lookup))
    gw = Gateway(extensions=("PIPELINING", XFORWARD_ALL), xforward=True)
    gw.deliver(make_txn(client=client))
    assert (
        gw.take()
        == (
            f"XFORWARD NAME={SENT_NAME[lookup]}{REST_XFORWARD}"
            "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
        ).encode()
    )
    assert xforward_commands(client, "Q1", ["NAME"]) == [f"XFORWARD NAME={SENT_NAME[lookup]}"]


def test_a_name_is_xtext_safe_and_never_the_word_unknown() -> None:
    # A confirmed name is a usable host name (letters, digits, "-", "_", dots): nothing to encode.
    named = attrs.evolve(sample_envelope(), client_name="mx_1.mail-out.example.test")
    assert xclient_commands(identity(named), ["NAME"]) == ["XCLIENT NAME=mx_1.mail-out.example.test"]
    # "unknown" is what the session knows of a name it could not confirm, not a name to pass on:
    # a gateway would take NAME=unknown for a name (XCLIENT_README: [UNAVAILABLE] says there is none).
    unknown = attrs.evolve(sample_envelope(), client_name="unknown")
    assert identity(unknown).name is None
    assert xforward_commands(identity(unknown), "Q", ["NAME"]) == ["XFORWARD NAME=[UNAVAILABLE]"]


# --------------------------------------------------------------------------- one session, several names

NAMED = ClientIdentity(addr="192.0.2.7", port=40000, name=NAME, helo="client.test", proto="ESMTP", login=None)
UNNAMED = attrs.evolve(NAMED, name=None)


def run_xclient(gw: Gateway, client: ClientIdentity, extensions_after: Sequence[str]) -> TransactionResult:
    """A transaction starting with XCLIENT for ``client``; the new EHLO reply lists ``extensions_after``."""
    out = gw.deliver(make_txn(client=client))
    assert gw.take().startswith(f"XCLIENT NAME={client.name or '[UNAVAILABLE]'} ADDR=192.0.2.7 ".encode())
    gw.say(b"220 gw.test ESMTP\r\n")
    assert gw.take() == b"EHLO relay.test\r\n"
    gw.say(ehlo(*extensions_after))
    return finish(gw, out)


def finish(gw: Gateway, out: Outcome[TransactionResult]) -> TransactionResult:
    assert gw.take() == f"MAIL FROM:<a@x.test> SIZE={len(BODY)}\r\nRCPT TO:<b@y.test>\r\nDATA\r\n".encode()
    gw.say(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n")
    gw.take()
    gw.say(b"250 2.0.0 Ok: queued as X\r\n")
    result = out.result()
    assert result.data is not None and result.data.code == 250
    return result


XCLIENT_OFFERED = ("PIPELINING", "SIZE 10240000", XCLIENT_ALL)
XCLIENT_GONE = ("PIPELINING", "SIZE 10240000")


def test_another_name_for_the_same_address_is_another_identity() -> None:
    # The client addresses are authorized too: XCLIENT stays offered, so each change of name is sent.
    gw = Gateway(extensions=XCLIENT_OFFERED, xclient=True)
    run_xclient(gw, NAMED, XCLIENT_OFFERED)
    assert gw.conn.identity == NAMED
    out = gw.deliver(make_txn(client=NAMED))  # the same identity: no XCLIENT
    finish(gw, out)
    assert NAMED != UNNAMED and gw.conn.can_carry(UNNAMED)
    run_xclient(gw, UNNAMED, XCLIENT_OFFERED)  # same address, no name: XCLIENT NAME=[UNAVAILABLE] again
    assert gw.conn.identity == UNNAMED
    run_xclient(gw, NAMED, XCLIENT_OFFERED)
    assert gw.conn.identity == NAMED


def test_a_session_bound_to_a_named_client_does_not_carry_it_unnamed() -> None:
    # Only relaybal's address is authorized (Postfix's usual set-up): after XCLIENT the session keeps
    # that client, name included, and a message of the same address under another name must not use it.
    gw = Gateway(extensions=XCLIENT_OFFERED, xclient=True)
    run_xclient(gw, NAMED, XCLIENT_GONE)
    assert gw.conn.can_carry(NAMED)
    assert not gw.conn.can_carry(UNNAMED)
    assert not gw.conn.can_carry(attrs.evolve(NAMED, name="other.example.test"))
    out = gw.deliver(make_txn(client=UNNAMED))
    assert isinstance(out.error(), IdentityConflict)
    assert gw.take() == b""  # nothing was sent
    assert gw.conn.usable and gw.conn.identity == NAMED
    finish(gw, gw.deliver(make_txn(client=NAMED)))


def test_the_pool_opens_another_connection_for_the_same_address_under_another_name() -> None:
    clock = Clock()
    server = Backend(
        BackendConfig(name="gw", servers=(ServerConfig(name="gw1", address=Address("127.0.0.1", 2525)),)),
        clock,
    ).servers[0]
    settings = ClientSettings(helo="relay.test", xclient=True)
    gateways: list[Gateway] = []

    def connector(host: str, port: int, settings: ClientSettings) -> Deferred[SMTPClientConnection]:
        gateways.append(Gateway(extensions=XCLIENT_OFFERED, xclient=True))
        return succeed(gateways[-1].conn)

    pool = GatewayPool(server, settings, connector, clock, size=4)

    def submit(client: ClientIdentity) -> Outcome[TransactionResult]:
        return Outcome(pool.submit(make_txn(client=client)))

    first = submit(NAMED)
    gw1 = gateways[0]
    assert gw1.take().startswith(b"XCLIENT NAME=mail.example.test ")
    gw1.say(b"220 gw.test ESMTP\r\n")
    gw1.take()
    gw1.say(ehlo(*XCLIENT_GONE))
    finish_pooled(gw1)
    first.result()
    # The only idle connection carries the named client: the unnamed one gets a connection of its own.
    second = submit(UNNAMED)
    assert len(gateways) == 2 and pool.opened == 2
    gw2 = gateways[1]
    assert gw1.take() == b""
    assert gw2.take() == f"XCLIENT NAME=[UNAVAILABLE]{REST_XCLIENT}".encode()
    gw2.say(b"220 gw.test ESMTP\r\n")
    gw2.take()
    gw2.say(ehlo(*XCLIENT_GONE))
    finish_pooled(gw2)
    second.result()
    # The named client again: the first connection takes it, without a new XCLIENT.
    third = submit(NAMED)
    assert len(gateways) == 2
    finish_pooled(gw1)
    third.result()
    assert gw1.conn.messages == 2 and gw2.conn.messages == 1


def finish_pooled(gw: Gateway) -> None:
    assert gw.take().startswith(b"MAIL FROM:<a@x.test>")
    gw.say(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n")
    gw.take()
    gw.say(b"250 2.0.0 Ok: queued as X\r\n")


# --------------------------------------------------------------------------- the spool


class Spool:
    """A spool run by hand (ManualOffloader), to be killed and reopened as after a crash."""

    def __init__(self, directory: Path, **options: Any) -> None:
        self.directory = str(directory)
        self.options = options
        self.open()

    def open(self) -> SpoolStore:
        self.pool = ManualOffloader()
        self.store = SpoolStore.open(self.directory, offloader=self.pool, **self.options)
        return self.store

    def add(self, envelope: Envelope, body: bytes = b"Subject: x\r\n\r\nx\r\n") -> str:
        writer = self.store.begin(envelope)
        writer.write(body)
        ids: list[str] = []
        writer.commit().addCallback(ids.append)
        self.pool.run_all()
        assert len(ids) == 1
        return ids[0]

    def restart(self) -> SpoolStore:
        self.store.kill()
        return self.open()


@pytest.mark.parametrize("name", [NAME, "unknown", None])
def test_the_name_survives_a_restart_of_the_spool(tmp_path: Path, name: str | None) -> None:
    spool = Spool(tmp_path / "spool")
    envelope = attrs.evolve(sample_envelope(), client_name=name)
    small = spool.add(envelope)
    large = spool.add(envelope, b"Subject: big\r\n\r\n" + b"x" * 78 + b"\r\n" * 3000)  # body in its own file
    assert spool.store.get(small).envelope == envelope
    store = spool.restart()
    for queue_id in (small, large):
        assert store.get(queue_id).envelope == envelope
        assert store.get(queue_id).envelope.client_name == name


def test_a_session_name_goes_through_the_spool_to_the_gateway(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    receive("confirmed", spool.store, spool.pool.run_all)
    receive("not-confirmed", spool.store, spool.pool.run_all)
    store = spool.restart()
    names = sorted((m.envelope.client_name or "", identity(m.envelope).name) for m in store.messages())
    assert names == [(NAME, NAME), ("unknown", None)]


def test_compaction_keeps_the_name(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", segment_size=400, keep_sealed=1)
    kept = spool.add(attrs.evolve(sample_envelope(), client_name=NAME), b"Subject: stays\r\n\r\nx\r\n" * 4)
    for _ in range(30):
        spool.store.remove(spool.add(sample_envelope()))
        spool.pool.run_all()
    assert spool.store.stats.moved >= 1  # the kept message was copied forward
    assert spool.restart().get(kept).envelope.client_name == NAME


def test_a_nameless_envelope_is_written_as_before() -> None:
    # No key at all: the records of a frontend without reverse_lookup do not change, and a
    # relaybal from before the field reads the spool of a newer one.
    assert "client_name" not in fmt.envelope_to_json(sample_envelope())
    named = fmt.envelope_to_json(attrs.evolve(sample_envelope(), client_name=NAME))
    assert named["client_name"] == NAME
    assert fmt.envelope_from_json(json.loads(json.dumps(named))).client_name == NAME


#: An M record's JSON as relaybal wrote it before envelopes had a client name.
OLD_META = (
    '{"id":"4ZQ7KXB2M1","env":{"sender":["app","example.test"],"rcpt":[["user","example.org"]],'
    '"params":{"BODY":"8BITMIME"},"smtputf8":false,"body_type":"8BITMIME","frontend":"relay",'
    '"client":["192.0.2.10",40000],"helo":"app.example.test","tls":null,"user":null,'
    '"received_at":1700000000.0},"state":[["queued",0,0.0,null]],"size":17,"body":"log"}'
)


def test_a_record_written_before_the_name_existed_still_loads(tmp_path: Path) -> None:
    body = b"Subject: old\r\n\r\nx"
    assert len(body) == 17
    log_dir = tmp_path / "spool" / LOG_DIR
    log_dir.mkdir(parents=True)
    record, _ = fmt.encode_message_record(OLD_META.encode("ascii"), body)
    (log_dir / segment_name(1)).write_bytes(fmt.encode_segment_header(1) + record)
    spool = Spool(tmp_path / "spool")
    message = spool.store.get("4ZQ7KXB2M1")
    assert message.envelope == sample_envelope()  # every field as written, and no name
    assert message.envelope.client_name is None
    assert identity(message.envelope).name is None
    out: list[bytes] = []
    spool.store.read_body("4ZQ7KXB2M1").addCallback(out.append)
    spool.pool.run_all()
    assert out == [body]
    # Once rewritten (a recipient state changes nothing of it; compaction re-encodes it), still none.
    assert fmt.decode_message(fmt.encode_message(message, body)[0][fmt.RECORD_HEADER_SIZE :])[0] == message


def test_a_name_that_is_not_a_string_is_a_bad_record() -> None:
    message = QueuedMessage("4ZQ7KXB2M1", sample_envelope(), (RecipientState(),), 0, "4ZQ7KXB2M1")
    meta = json.loads(fmt.encode_message_meta(message))
    meta["env"]["client_name"] = 42
    record, _ = fmt.encode_message_record(json.dumps(meta).encode())
    with pytest.raises(fmt.FormatError, match="client_name"):
        fmt.decode_message(record[fmt.RECORD_HEADER_SIZE :])


def test_queue_export_and_import_keep_the_name(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "node1")
    named = spool.add(attrs.evolve(sample_envelope(received_at=1.0), client_name=NAME))
    spool.add(attrs.evolve(sample_envelope(received_at=2.0), client_name=None))
    spool.store.kill()
    archive = tmp_path / "queue.tar"
    export_queue(str(tmp_path / "node1"), str(archive))
    with tarfile.open(archive) as tar:
        member = tar.extractfile(f"relaybal-queue/{named}.json")
        assert member is not None
        assert json.load(member)["envelope"]["client_name"] == NAME
    import_queue(str(archive), str(tmp_path / "node2"))
    target = Spool(tmp_path / "node2")
    names = {m.envelope.received_at: m.envelope.client_name for m in target.store.messages()}
    assert names == {1.0: NAME, 2.0: None}


# --------------------------------------------------------------------------- scheduler and cut-through


@pytest.mark.parametrize(("name", "sent"), [(NAME, NAME), ("unknown", None), (None, None)])
def test_the_scheduler_gives_the_gateway_the_spooled_name(
    tmp_path: Path, name: str | None, sent: str | None
) -> None:
    world = World(tmp_path)
    world.queue(envelope=attrs.evolve(sample_envelope(received_at=world.clock.seconds()), client_name=name))
    world.scheduler.start()
    world.settle()
    ((_, txn),) = world.seen
    assert txn.client is not None and txn.client.name == sent and txn.client.addr == "192.0.2.10"


@pytest.mark.parametrize(("name", "sent"), [(NAME, NAME), ("unknown", None), (None, None)])
def test_cut_through_gives_the_gateway_the_sessions_name(
    tmp_path: Path, name: str | None, sent: str | None
) -> None:
    world = World(tmp_path)
    sink = CutThroughSink(world.pools, lambda frontend: world.backend, world.clock.seconds, "relay.test")
    writer = sink.begin(attrs.evolve(sample_envelope(received_at=world.clock.seconds()), client_name=name))
    writer.write(b"Subject: cut\r\n\r\nHello\r\n")
    answered: list[str] = []
    writer.commit().addCallback(answered.append)
    world.settle()
    assert len(answered) == 1
    ((_, txn),) = world.seen
    assert txn.client is not None and txn.client.name == sent


# --------------------------------------------------------------------------- a real Postfix


@pytest.fixture
def loop() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.close()


@pytest.mark.peers
def test_postfix_logs_the_client_name_relaybal_looked_up(
    loop: Loop, postfix_factory: Callable[..., PrivatePostfix], tmp_path: Path
) -> None:
    # Sessions with a name lookup -> spool -> restart -> XCLIENT / XFORWARD -> Postfix's log.
    spool = Spool(tmp_path / "spool")
    receive("confirmed", spool.store, spool.pool.run_all, host="192.0.2.7")
    receive("not-confirmed", spool.store, spool.pool.run_all, host="192.0.2.8")
    store = spool.restart()
    envelopes = {m.envelope.client[0]: m.envelope for m in store.messages() if m.envelope.client}
    assert {a: e.client_name for a, e in envelopes.items()} == {"192.0.2.7": NAME, "192.0.2.8": "unknown"}

    postfix = postfix_factory(
        {
            **POSTFIX_BASE,
            "smtpd_authorized_xclient_hosts": "127.0.0.0/8",
            "smtpd_authorized_xforward_hosts": "127.0.0.0/8",
        }
    )
    body = b"Subject: x\r\n\r\nx\r\n"
    xclient = ClientSettings(helo="relay.test", xclient=True, timeout_command=30.0)
    for number, addr in enumerate(("192.0.2.7", "192.0.2.8")):
        # Only our address is authorized: one connection per client.
        conn = loop.run(connect(loop.reactor, *postfix.address, xclient))
        client = identity(envelopes[addr])
        txn = message(body, [f"x{number}@example.test"], client=client, queue_id=f"XC{number}")
        result = loop.run(conn.deliver(txn))
        assert result.data is not None and result.data.code == 250, result
        loop.run(conn.quit())
    xforward = ClientSettings(helo="relay.test", xforward=True, timeout_command=30.0)
    conn = loop.run(connect(loop.reactor, *postfix.address, xforward))
    for number, addr in enumerate(("192.0.2.7", "192.0.2.8")):
        client = identity(envelopes[addr])
        txn = message(body, [f"f{number}@example.test"], client=client, queue_id=f"XF{number}")
        result = loop.run(conn.deliver(txn))
        assert result.data is not None and result.data.code == 250, result
    loop.run(conn.quit())
    postfix.wait_for_log("orig_queue_id=XF1")
    log = postfix.log()
    clients = [line.split(": client=", 1)[1].strip() for line in log.splitlines() if ": client=" in line]
    assert f"{NAME}[192.0.2.7]" in clients
    assert "unknown[192.0.2.8]" in clients
    assert f"orig_client={NAME}[192.0.2.7]" in log
    assert "orig_client=unknown[192.0.2.8]" in log
    assert f"{NAME}[192.0.2.8]" not in log  # never under the name it could not confirm
