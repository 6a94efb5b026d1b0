"""Regression tests for the bugs the reliability suites found (one test per bug, smallest reproduction).

Each test names the suite that found the bug; ``docs/reliability.rst`` lists them.
"""

from __future__ import annotations

import random
import tomllib
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from relaybal.balance.backend import Backend
from relaybal.config import Address, BackendConfig, ConfigError, ServerConfig, parse_config
from relaybal.delivery.client import ClientSettings, SMTPReply, Transaction, TransactionResult
from relaybal.delivery.pool import Gateways
from relaybal.delivery.scheduler import Scheduler
from relaybal.relay.interfaces import SinkError
from relaybal.relay.testing import RelayHarness
from relaybal.smtp import wire
from relaybal.splice.frontend import SpliceFrontend
from relaybal.spool.message import RecipientStatus
from relaybal.spool.store import DEFAULT_MIN_FREE, SpoolStore
from relaybal.spool.testing import FaultyDisk, ManualOffloader, sample_envelope

# --------------------------------------------------------------------------- gateway faults suite


class _RefusingConnection:
    """A gateway connection that answers every recipient ``451``."""

    usable = True
    on_lost: Any = None

    def can_carry(self, client: Any) -> bool:
        return True

    def deliver(self, txn: Transaction) -> Deferred[TransactionResult]:
        reply = SMTPReply(451, "4.3.0", "Try again later")
        return succeed(TransactionResult(recipients=tuple(reply for _ in txn.recipients), data=None))

    def quit(self) -> Deferred[None]:
        return succeed(None)

    def abort(self) -> None:
        pass


def test_the_backends_retry_schedule_is_followed(tmp_path: Path) -> None:
    # Found by the gateway-faults suite: with retry_schedule = ["1s"] a deferred message
    # still waited the built-in first step (60 s): the scheduler ignored the backend's schedule.
    clock = Clock()
    clock.advance(1_700_000_000)
    offloader = ManualOffloader()
    store = SpoolStore.open(str(tmp_path / "spool"), offloader=offloader, clock=clock.seconds)
    server = ServerConfig(name="gw1", address=Address("127.0.0.1", 2500))
    backend = Backend(BackendConfig(name="gw", servers=(server,), retry_schedule=(7.0, 30.0)), clock)

    def connector(host: str, port: int, settings: ClientSettings) -> Deferred[Any]:
        return succeed(_RefusingConnection())

    gateways = Gateways(clock, hostname="relay.test", backends=lambda: {"gw": backend}, connector=connector)
    scheduler = Scheduler(
        store, clock, hostname="relay.test", backend_for=lambda _: backend, backends=lambda: {"gw": backend},
        gateways=gateways,
    )  # fmt: skip
    scheduler.start()
    ids: list[str] = []
    writer = store.begin(sample_envelope(received_at=clock.seconds()))
    writer.write(b"Subject: retry\r\n\r\nHello\r\n")
    writer.commit().addCallback(ids.append)

    def settle() -> None:
        for _ in range(1000):
            ran = offloader.run_all()
            clock.advance(0)
            if not ran and not offloader.jobs:
                return

    settle()
    (queue_id,) = ids
    first = store.get(queue_id).recipients[0]
    assert first.status is RecipientStatus.DEFERRED
    assert first.next_attempt == clock.seconds() + 7
    clock.advance(7)
    settle()
    second = store.get(queue_id).recipients[0]
    assert second.attempts == 2
    assert second.next_attempt == clock.seconds() + 30
    store.kill()


# --------------------------------------------------------------------------- disk suite


class _ShrinkingDisk(FaultyDisk):
    """A real disk whose free space is whatever the test says."""

    def __init__(self) -> None:
        super().__init__()
        self.free = 1 << 30

    def free_space(self, path: str) -> int:
        return self.free


def _commit(store: SpoolStore, body: bytes, results: list[Any]) -> None:
    writer = store.begin(sample_envelope())
    writer.write(body)
    writer.commit().addBoth(results.append)


def test_new_messages_leave_the_reserve_to_removals(tmp_path: Path) -> None:
    # Found by the disk suite (a tmpfs filled by the spool's own messages while no gateway was
    # reachable): once the file system was full, the removal records of delivered messages could
    # not be written either, so no space ever came back and every later message got 452 forever.
    # New messages now stop short of a reserve (min_free) that removals and states may still use.
    disk = _ShrinkingDisk()
    pool = ManualOffloader()
    path = str(tmp_path / "spool")
    store = SpoolStore.open(path, offloader=pool, disk=disk, min_free=64 * 1024)
    first: list[Any] = []
    _commit(store, b"Subject: 1\r\n\r\nfirst\r\n", first)
    pool.run_all()
    (queue_id,) = first
    # Less than the reserve is left: a new message is refused (452), and its refusal costs no write...
    disk.free = 60 * 1024
    writes = disk.calls["write"]
    refused: list[Any] = []
    _commit(store, b"Subject: 2\r\n\r\nsecond\r\n", refused)
    pool.run_all()
    assert isinstance(refused[0], Failure) and refused[0].check(SinkError)
    assert refused[0].value.reply.code == 452
    assert disk.calls["write"] == writes
    # ...while the removal of a delivered message, in the same flush as another refused message, is stored.
    removed: list[Any] = []
    also_refused: list[Any] = []
    store.remove(queue_id).addBoth(removed.append)
    _commit(store, b"Subject: 3\r\n\r\nthird\r\n", also_refused)
    pool.run_all()
    assert removed == [None]
    assert also_refused[0].value.reply.code == 452
    # Space is back: messages are accepted again.
    disk.free = 1 << 30
    accepted: list[Any] = []
    _commit(store, b"Subject: 4\r\n\r\nfourth\r\n", accepted)
    pool.run_all()
    assert isinstance(accepted[0], str)
    store.kill()
    reopened = SpoolStore.open(path, offloader=ManualOffloader())
    assert [m.queue_id for m in reopened.messages()] == accepted
    reopened.kill()


def test_the_default_reserve_is_a_mebibyte(tmp_path: Path) -> None:
    store = SpoolStore.open(str(tmp_path / "spool"), offloader=ManualOffloader())
    assert store.min_free == DEFAULT_MIN_FREE == 1024 * 1024
    store.kill()


def test_a_full_spool_seals_a_segment_of_garbage_so_it_can_be_deleted(tmp_path: Path) -> None:
    # Found by the same run: with the reserve in place the delivered messages' removals were
    # stored, yet no space came back, because space is freed a segment at a time and the
    # current segment (64 MiB by default) is only sealed when it is full. A refusal for lack of
    # space now seals a current segment that is mostly garbage; it is then deleted.
    disk = _ShrinkingDisk()
    pool = ManualOffloader()
    path = tmp_path / "spool"
    store = SpoolStore.open(str(path), offloader=pool, disk=disk, min_free=64 * 1024)
    ids: list[Any] = []
    for n in range(4):
        _commit(store, b"Subject: %d\r\n\r\n" % n + b"x" * 30_000 + b"\r\n", ids)
    pool.run_all()
    assert len(ids) == 4
    segments = sorted((path / "log").iterdir())
    for queue_id in ids:
        store.remove(queue_id)
    pool.run_all()
    assert sorted((path / "log").iterdir()) == segments  # the garbage is still on disk
    disk.free = 10 * 1024
    refused: list[Any] = []
    _commit(store, b"Subject: late\r\n\r\nlate\r\n", refused)
    pool.run_all()
    assert refused[0].value.reply.code == 452
    assert store.stats.segments_removed == len(segments)
    assert not set(segments) & set((path / "log").iterdir())
    # A segment with little garbage is not sealed again (sealing would free next to nothing).
    disk.free = 1 << 30
    _commit(store, b"Subject: live\r\n\r\n" + b"y" * 100_000 + b"\r\n", [])
    pool.run_all()
    before = sorted((path / "log").iterdir())
    disk.free = 10 * 1024
    _commit(store, b"Subject: later\r\n\r\nlater\r\n", [])
    pool.run_all()
    assert sorted((path / "log").iterdir()) == before
    store.kill()


# --------------------------------------------------------------------------- hostile-clients suite


class _ReadingTransport(StringTransport):
    """A StringTransport that records whether reading was switched back on (as a TCP transport can)."""

    reading = False

    def startReading(self) -> None:
        self.reading = True

    def stopReading(self) -> None:
        self.reading = False


def test_a_server_is_drained_after_its_client_left() -> None:
    # Found by the hostile-clients suite: a client flooded the splice with pipelined commands
    # without reading the replies, then left. relaybal went on sending the flood to the server
    # but no longer read the server's replies, so a server that blocks on writing them (smtp-sink,
    # or any server whose socket buffer is full) stopped reading too: both sides waited until
    # timeout_server (5 minutes by default), and smtp-sink was stuck for every other client.
    # Now what the server sends after the client left is read and dropped.
    config = parse_config({
        "global": {"hostname": "lb.test"},
        "frontend": {"smtp": {"mode": "splice", "listen": ["tcp:2525"], "backend": "mx"}},
        "backend": {"mx": {"server": [{"name": "a", "address": "10.0.0.1:25"}]}},
    })  # fmt: skip
    reactor = MemoryReactorClock()
    backend = Backend(config.backends["mx"], reactor, random.Random(1))
    frontend = SpliceFrontend(config.frontends["smtp"], backend, reactor, "lb.test")
    peer = IPv4Address("TCP", "192.0.2.7", 40000)
    session = frontend.buildProtocol(peer)
    client = StringTransport(peerAddress=peer, hostAddress=IPv4Address("TCP", "192.0.2.1", 25))
    session.makeConnection(client)
    _, _, factory, _, _ = reactor.tcpClients[0]
    server_side = factory.buildProtocol(None)
    server = _ReadingTransport()
    server_side.makeConnection(server)
    session.dataReceived(b"NOOP\r\n" * 1000)
    server.stopReading()  # the client stopped reading: relaybal paused the server side
    session.connectionLost(Failure(ConnectionDone()))
    assert server.disconnecting  # what the client sent still goes out first...
    assert server.reading  # ...while the server's replies are read...
    server_side.dataReceived(b"250 2.0.0 Ok\r\n" * 1000)  # ...and dropped
    assert client.value().count(b"250 2.0.0 Ok") == 0


def test_a_client_that_never_takes_our_last_reply_is_cut_off() -> None:
    # Found by the hostile-clients suite, twice: a client that flooded the relay with pipelined
    # commands without reading the replies, and one that stalled in the middle of the TLS
    # handshake after STARTTLS. Both hit timeout_client; relaybal answered 421 and called
    # loseConnection, which waits until the 421 (and every reply before it) is sent, that is
    # for ever: the connection stayed open until the client went away. Now it gets another
    # timeout_client to take our last words, then the connection is aborted.
    harness = RelayHarness(timeout_client="2s")
    client = harness.connect("127.0.0.1")
    client.send(b"EHLO flood.test\r\n")
    replies: list[bytes] = []
    while not client.transport.disconnecting:
        replies += client.replies()
        harness.reactor.advance(0.5)
    assert (replies + client.replies())[-1] == b"421 4.4.2 relay.test Error: timeout"
    assert client.transport.disconnecting and not client.transport.disconnected  # closing, politely
    harness.reactor.advance(1.9)
    assert not client.transport.disconnected
    harness.reactor.advance(0.1)
    assert client.transport.disconnected  # aborted
    client.lose()
    assert harness.reactor.getDelayedCalls() == []


def test_a_session_that_closes_normally_leaves_no_timer_behind() -> None:
    harness = RelayHarness(timeout_client="2s")
    client = harness.connect("127.0.0.1")
    client.send(b"QUIT\r\n")
    assert client.replies()[-1].startswith(b"221 2.0.0")
    client.lose()
    assert harness.reactor.getDelayedCalls() == []
    assert not client.transport.disconnected


def test_a_trickled_proxy_header_must_be_complete_within_proxy_timeout() -> None:
    # Found by the hostile-clients suite (slowloris): the splice frontend gives a PROXY header
    # proxy_timeout from the connection, the relay frontend gave it proxy_timeout from the last
    # byte, so a header trickled in a byte at a time held a relay connection (without a greeting)
    # for up to ~107 times proxy_timeout (a v1 header) or timeout_session (a v2 one, 1 h).
    harness = RelayHarness(accept_proxy=["127.0.0.9"], proxy_timeout="1s")
    client = harness.connect("127.0.0.9")
    header = b"PROXY TCP4 192.0.2.1 192.0.2.2 40000 25\r\n"
    for byte in header[:10]:
        client.send(bytes([byte]))
        harness.reactor.advance(0.5)
    assert client.transport.disconnecting
    assert client.output() == b""  # not a word before the header


# --------------------------------------------------------------------------- fuzzing suite


def test_a_client_cannot_put_control_characters_into_our_replies() -> None:
    # Found by the smtp_session fuzz target: "MAIL FROM:<a@b.test> \r" made relaybal answer
    # "501 5.5.4 Bad parameter syntax: \r\r\n": the refused parameter is echoed, CR included, so
    # a client (or a policy server's reply text) could put a line break into relaybal's reply.
    harness = RelayHarness()
    client = harness.connect("127.0.0.1")
    client.send(b"EHLO c.test\r\nMAIL FROM:<a@b.test> \rX\x00\x1b[2J\x7f\r\n")
    out = client.output()
    for line in out.split(b"\r\n")[:-1]:
        assert not set(line) & (set(range(32)) | {127}), line
    assert b"501 5.5.4 Bad parameter syntax: ?X??[2J?\r\n" in out


def test_replies_never_carry_control_characters() -> None:
    assert wire.reply(550, "5.7.1", "policy says\r\nno\x00") == b"550-5.7.1 policy says?\r\n550 5.7.1 no?\r\n"
    assert wire.reply(250, "2.0.0", "caf\u00e9 \u2028ok\x85") == "250 2.0.0 caf\u00e9 ?ok?\r\n".encode()


def test_config_problems_stay_one_a_line() -> None:
    # Found by the config fuzz target: a key or value with a line break (legal in TOML, quoted)
    # was printed as it is, so `relaybal check-config` gave a problem over two lines, breaking
    # its "one problem a line" contract.
    document = tomllib.loads(
        '[global]\nhostname = "bad\\nname"\n'
        '[frontend.apps]\n"\\n" = 1\nmode = "relay"\nlisten = ["tcp:2525"]\nbackend = "gw"\n'
        '[backend.gw]\nserver = [{ name = "gw1", address = "127.0.0.1:25" }]\n'
    )
    try:
        parse_config(document, "relaybal.toml")
    except ConfigError as e:
        lines = e.lines()
    else:
        raise AssertionError("not refused")
    assert len(lines) == 2 and all("\n" not in line for line in lines), lines
    assert any('"bad\\nname"' in line for line in lines), lines
    assert any(line.startswith("relaybal.toml: frontend.apps.\\n: unknown key") for line in lines), lines


def test_an_empty_backend_name_is_a_config_error_not_a_crash() -> None:
    # Found by the config fuzz target (soak): `backend = ""` passed `relaybal check-config`, and
    # the daemon then died at start-up with a KeyError traceback.
    document = {
        "frontend": {"smtp": {"mode": "splice", "listen": ["tcp:2525"], "backend": ""}},
        "backend": {"mx": {"server": [{"name": "mx1", "address": "127.0.0.1:10025"}]}},
    }
    try:
        parse_config(document, "relaybal.toml")
    except ConfigError as e:
        assert e.lines() == ['relaybal.toml: frontend.smtp.backend: no backend named "" (known: mx)']
    else:
        raise AssertionError("accepted")
    # A missing backend is reported once, as missing.
    del document["frontend"]["smtp"]["backend"]  # type: ignore[attr-defined]
    try:
        parse_config(document, "relaybal.toml")
    except ConfigError as e:
        assert e.lines() == ["relaybal.toml: frontend.smtp.backend: is required"]
