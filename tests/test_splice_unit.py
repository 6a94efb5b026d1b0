"""Splice sessions driven by Twisted's deterministic fakes (no sockets, fake clock)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaybal import proxyproto
from relaybal.balance.backend import Backend
from relaybal.config import parse_config
from relaybal.splice import frontend as splice_module
from relaybal.splice.frontend import SpliceFrontend, SpliceSession

NOT_AVAILABLE = b"421 4.3.2 lb.test Service not available\r\n"


class Harness:
    """One frontend over a fake reactor, with helpers to play clients and servers."""

    def __init__(self, backend: dict[str, Any] | None = None, frontend: dict[str, Any] | None = None) -> None:
        be = {
            "server": [
                {"name": "a", "address": "10.0.0.1:25"},
                {"name": "b", "address": "10.0.0.2:25"},
            ],
            **(backend or {}),
        }
        fe = {"mode": "splice", "listen": ["tcp:2525"], "backend": "mx", **(frontend or {})}
        config = parse_config(
            {"global": {"hostname": "lb.test"}, "frontend": {"smtp": fe}, "backend": {"mx": be}}
        )
        self.reactor = MemoryReactorClock()
        self.backend = Backend(config.backends["mx"], self.reactor, random.Random(1))
        self.frontend = SpliceFrontend(config.frontends["smtp"], self.backend, self.reactor, "lb.test")
        self.events: list[dict[str, Any]] = []
        self.connects_seen = 0

    def client(self, host: str = "192.0.2.7", port: int = 40000) -> tuple[SpliceSession, StringTransport]:
        session = self.frontend.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport(
            peerAddress=IPv4Address("TCP", host, port), hostAddress=IPv4Address("TCP", "192.0.2.1", 25)
        )
        session.makeConnection(transport)
        return session, transport

    def pending_connect(self) -> tuple[str, int, Any]:
        """The next connection attempt the session made: (host, port, factory)."""
        host, port, factory, timeout, _ = self.reactor.tcpClients[self.connects_seen]
        assert timeout == self.backend.config.timeout_connect
        self.connects_seen += 1
        return host, port, factory

    def accept(self, factory: Any) -> tuple[Any, StringTransport]:
        """Let a pending server connection succeed."""
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def refuse(self, factory: Any) -> None:
        factory.clientConnectionFailed(None, Failure(error.ConnectionRefusedError()))

    def log_lines(self) -> list[str]:
        return [e["line"] for e in self.events if "line" in e]


@pytest.fixture
def capture_log(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(splice_module, "log", Logger(observer=events.append))
    return events


def make(capture: list[dict[str, Any]], **kw: Any) -> Harness:
    h = Harness(**kw)
    h.events = capture
    return h


def test_splice_moves_bytes_both_ways_and_logs(capture_log: list[dict[str, Any]]) -> None:
    h = make(capture_log)
    session, client = h.client()
    assert client.producerState == "paused"  # nothing is read before a server is there
    host, port, factory = h.pending_connect()
    assert (host, port) == ("10.0.0.1", 25)
    server_proto, server = h.accept(factory)
    assert client.producerState == "producing"
    # Back-pressure: each transport is the other's registered streaming producer.
    assert server.producer is client and client.producer is server
    assert server.streaming and client.streaming
    server_proto.dataReceived(b"220 mx ESMTP\r\n")
    assert client.value() == b"220 mx ESMTP\r\n"
    session.dataReceived(b"EHLO me\r\n")
    assert server.value() == b"EHLO me\r\n"
    assert h.backend.servers[0].load == 1
    server_proto.connectionLost(Failure(error.ConnectionDone()))
    assert client.disconnecting
    session.connectionLost(Failure(error.ConnectionDone()))
    assert h.backend.servers[0].load == 0
    assert h.backend.servers[0].bytes_in == 9 and h.backend.servers[0].bytes_out == 14
    [line] = h.log_lines()
    assert line.startswith("192.0.2.7:40000 [") and " smtp mx/a " in line
    assert line.endswith(" 14 9 -- 0/0/0/0")
    assert h.frontend.current == 0 and h.frontend.total == 1


def test_roundrobin_alternates_servers(capture_log: list[dict[str, Any]]) -> None:
    h = make(capture_log)
    hosts = []
    for i in range(4):
        h.client(port=40000 + i)
        hosts.append(h.pending_connect()[0])
    assert hosts == ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.2"]


def test_no_usable_server_answers_421(capture_log: list[dict[str, Any]]) -> None:
    h = make(capture_log, backend={"server": [{"name": "a", "address": "10.0.0.1:25", "state": "maint"}]})
    _, client = h.client()
    assert client.value() == NOT_AVAILABLE
    assert client.disconnecting
    assert h.reactor.tcpClients == []


def test_refused_connection_redispatches_then_421(capture_log: list[dict[str, Any]]) -> None:
    h = make(capture_log, backend={"retries": 1})
    session, client = h.client()
    _, _, first = h.pending_connect()
    h.refuse(first)
    host, _, second = h.pending_connect()
    assert host == "10.0.0.2"  # redispatched to the other server
    h.refuse(second)
    assert client.value() == NOT_AVAILABLE and client.disconnecting
    session.connectionLost(Failure(error.ConnectionDone()))
    [line] = h.log_lines()
    assert " mx/b " in line and " SC " in line and "/1 " in line
    assert h.frontend.redispatches == 1
    assert all(s.load == 0 for s in h.backend.servers)


def test_without_redispatch_retries_the_same_server(capture_log: list[dict[str, Any]]) -> None:
    h = make(capture_log, backend={"redispatch": False, "retries": 3})
    _, client = h.client()
    hosts = []
    for _ in range(3):
        host, _, factory = h.pending_connect()
        hosts.append(host)
        h.refuse(factory)
    assert hosts == ["10.0.0.1"] * 3
    assert client.value() == NOT_AVAILABLE


def test_verify_banner_redispatches_before_client_sees_a_byte(capture_log: list[dict[str, Any]]) -> None:
    h = make(capture_log, backend={"verify_banner": True})
    session, client = h.client()
    _, _, fa = h.pending_connect()
    pa, ta = h.accept(fa)
    pa.dataReceived(b"421 4.3.2 busy\r")
    pa.dataReceived(b"\n")
    assert client.value() == b""
    assert ta.value() == b"QUIT\r\n" and ta.disconnecting
    host, _, fb = h.pending_connect()
    assert host == "10.0.0.2"
    pb, tb = h.accept(fb)
    pb.dataReceived(b"220-mx2 ESMTP\r\n220 ")
    assert client.value() == b""
    pb.dataReceived(b"ready\r\n")
    assert client.value() == b"220-mx2 ESMTP\r\n220 ready\r\n"
    session.dataReceived(b"QUIT\r\n")
    assert tb.value() == b"QUIT\r\n"
    assert h.backend.servers[0].load == 0 and h.backend.servers[1].load == 1


def test_banner_timeout_and_close_redispatch(capture_log: list[dict[str, Any]]) -> None:
    h = make(capture_log, backend={"verify_banner": True, "timeout_banner": "3s", "retries": 3})
    _, client = h.client()
    _, _, fa = h.pending_connect()
    pa, ta = h.accept(fa)
    h.reactor.advance(3)
    assert ta.disconnecting
    _, _, fb = h.pending_connect()
    pb, _ = h.accept(fb)
    pb.connectionLost(Failure(error.ConnectionLost()))
    _, _, fc = h.pending_connect()  # every server tried once; round again
    assert len(h.reactor.tcpClients) == 3
    pc, _ = h.accept(fc)
    pc.dataReceived(b"554 no\r\n")
    assert client.value() == NOT_AVAILABLE  # three attempts used up


def test_send_proxy_v1_and_v2(capture_log: list[dict[str, Any]]) -> None:
    for version, encode in (("v1", proxyproto.encode_v1), ("v2", proxyproto.encode_v2)):
        h = make(capture_log, backend={"send_proxy": version})
        h.client(host="192.0.2.7", port=40001)
        _, _, factory = h.pending_connect()
        _, server = h.accept(factory)
        assert server.value() == encode(("192.0.2.7", 40001), ("192.0.2.1", 25))


def test_accept_proxy_from_trusted_network(capture_log: list[dict[str, Any]]) -> None:
    h = make(
        capture_log,
        frontend={"accept_proxy": ["192.0.2.0/24"]},
        backend={"send_proxy": "v1", "balance": "source"},
    )
    session, client = h.client(host="192.0.2.7")
    header = proxyproto.encode_v2(("198.51.100.9", 5555), ("203.0.113.1", 25))
    for i in range(len(header)):  # one byte at a time
        session.dataReceived(header[i : i + 1])
    assert h.reactor.tcpClients[0:0] == []
    session.dataReceived(b"EHLO early\r\n")
    _, _, factory = h.pending_connect()
    _, server = h.accept(factory)
    assert server.value() == (b"PROXY TCP4 198.51.100.9 203.0.113.1 5555 25\r\nEHLO early\r\n")
    session.connectionLost(Failure(error.ConnectionDone()))
    assert h.log_lines()[0].startswith("198.51.100.9:5555 [")


def test_accept_proxy_header_required_and_strict(capture_log: list[dict[str, Any]]) -> None:
    h = make(capture_log, frontend={"accept_proxy": ["192.0.2.0/24"], "proxy_timeout": "2s"})
    session, client = h.client()
    session.dataReceived(b"EHLO x\r\n")  # not a PROXY header: closed, nothing forwarded
    assert client.disconnecting and client.value() == b""
    assert h.reactor.tcpClients == []
    session.connectionLost(Failure(error.ConnectionDone()))
    assert " PP " in h.log_lines()[0]
    session2, client2 = h.client(port=40002)
    session2.dataReceived(b"PROXY TCP4 1.2.3.4 ")
    h.reactor.advance(2)
    assert client2.disconnecting and h.reactor.tcpClients == []


def test_untrusted_client_proxy_header_is_just_data(capture_log: list[dict[str, Any]]) -> None:
    h = make(capture_log, frontend={"accept_proxy": ["10.9.0.0/16"]})
    session, _ = h.client(host="192.0.2.7")
    _, _, factory = h.pending_connect()  # no header expected: connecting at once
    proto, server = h.accept(factory)
    session.dataReceived(b"PROXY TCP4 1.1.1.1 2.2.2.2 1 2\r\n")
    assert server.value() == b"PROXY TCP4 1.1.1.1 2.2.2.2 1 2\r\n"


def test_backup_only_when_no_active_server(capture_log: list[dict[str, Any]]) -> None:
    h = make(
        capture_log,
        backend={
            "server": [
                {"name": "main", "address": "10.0.0.1:25"},
                {"name": "standby", "address": "10.0.0.9:25", "backup": True},
            ]
        },
    )
    h.client()
    host, _, factory = h.pending_connect()
    assert host == "10.0.0.1"
    h.refuse(factory)
    host, _, factory = h.pending_connect()
    assert host == "10.0.0.9"  # the only active server failed: the backup takes it
    h.accept(factory)
    h.client(port=40010)
    assert h.pending_connect()[0] == "10.0.0.1"  # the active server is still preferred


def test_maxconn_queue_and_queue_timeout(capture_log: list[dict[str, Any]]) -> None:
    h = make(
        capture_log,
        backend={"timeout_queue": "4s", "server": [{"name": "a", "address": "10.0.0.1:25", "maxconn": 1}]},
    )
    s1, _ = h.client(port=1)
    _, _, f1 = h.pending_connect()
    p1, _ = h.accept(f1)
    s2, c2 = h.client(port=2)
    assert len(h.reactor.tcpClients) == 1 and h.backend.queue_length == 1
    p1.connectionLost(Failure(error.ConnectionDone()))  # the first session ends: a slot frees
    s1.connectionLost(Failure(error.ConnectionDone()))
    assert len(h.reactor.tcpClients) == 2 and h.backend.queue_length == 0
    _, _, f2 = h.pending_connect()
    h.accept(f2)
    s3, c3 = h.client(port=3)
    assert h.backend.queue_length == 1
    h.reactor.advance(4)
    assert c3.value() == NOT_AVAILABLE and h.backend.queue_length == 0
    s3.connectionLost(Failure(error.ConnectionDone()))
    assert " sQ " in h.log_lines()[-1]


def test_idle_timeouts_follow_whose_turn_it_is(capture_log: list[dict[str, Any]]) -> None:
    h = make(capture_log, frontend={"timeout_client": "10s"}, backend={"timeout_server": "30s"})
    session, client = h.client()
    _, _, factory = h.pending_connect()
    proto, _ = h.accept(factory)
    proto.dataReceived(b"220 hi\r\n")
    h.reactor.advance(9)
    session.dataReceived(b"DATA\r\n")  # now the server is expected: 30 s apply
    h.reactor.advance(20)
    assert not client.disconnecting
    h.reactor.advance(10)
    assert client.disconnecting
    session.connectionLost(Failure(error.ConnectionDone()))
    assert " sD " in h.log_lines()[-1]
    session2, client2 = h.client(port=40001)
    _, _, factory = h.pending_connect()
    proto2, _ = h.accept(factory)
    proto2.dataReceived(b"220 hi\r\n")
    h.reactor.advance(10)
    assert client2.disconnecting
    session2.connectionLost(Failure(error.ConnectionDone()))
    assert " cD " in h.log_lines()[-1]


def test_maxconn_per_client(capture_log: list[dict[str, Any]]) -> None:
    h = make(capture_log, frontend={"maxconn_per_client": 2})
    sessions = [h.client(port=p) for p in (1, 2, 3)]
    assert sessions[2][1].value() == b"421 4.7.0 Too many connections from your address\r\n"
    assert len(h.reactor.tcpClients) == 2
    sessions[0][0].connectionLost(Failure(error.ConnectionDone()))
    _, c4 = h.client(port=4)
    assert c4.value() == b"" and len(h.reactor.tcpClients) == 3


def test_frontend_maxconn_pauses_accepting(capture_log: list[dict[str, Any]]) -> None:
    class FakePort:
        reading = True

        def stopReading(self) -> None:
            self.reading = False

        def startReading(self) -> None:
            self.reading = True

    h = make(capture_log, frontend={"maxconn": 2})
    port = FakePort()
    h.frontend.ports.append(port)  # type: ignore[arg-type]
    s1, _ = h.client(port=1)
    assert port.reading
    h.client(port=2)
    assert not port.reading
    s1.connectionLost(Failure(error.ConnectionDone()))
    assert port.reading


def test_client_leaving_while_connecting_releases_the_server(capture_log: list[dict[str, Any]]) -> None:
    h = make(capture_log, backend={"verify_banner": True})
    session, _ = h.client()
    _, _, factory = h.pending_connect()
    proto, server = h.accept(factory)
    session.connectionLost(Failure(error.ConnectionLost()))
    assert server.disconnecting
    assert h.backend.servers[0].load == 0
    assert " CB " in h.log_lines()[0]


class RecordingTransport(StringTransport):
    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


def test_server_that_will_not_drain_is_aborted_after_the_client_leaves(
    capture_log: list[dict[str, Any]],
) -> None:
    h = make(capture_log, backend={"timeout_server": "30s"})
    session, _ = h.client()
    _, _, factory = h.pending_connect()
    proto = factory.buildProtocol(None)
    server = RecordingTransport()
    proto.makeConnection(server)
    session.dataReceived(b"QUIT\r\n")
    session.connectionLost(Failure(error.ConnectionDone()))
    assert server.disconnecting and not server.aborted  # first: flush, then close
    h.reactor.advance(29)
    assert not server.aborted
    h.reactor.advance(1)
    assert server.aborted  # the server never took the bytes: give up on it
    proto.connectionLost(Failure(error.ConnectionLost()))
    assert h.reactor.getDelayedCalls() == []


def test_linger_is_cancelled_when_the_server_closes_in_time(capture_log: list[dict[str, Any]]) -> None:
    h = make(capture_log)
    session, _ = h.client()
    _, _, factory = h.pending_connect()
    proto, server = h.accept(factory)
    session.connectionLost(Failure(error.ConnectionDone()))
    proto.connectionLost(Failure(error.ConnectionDone()))
    assert h.reactor.getDelayedCalls() == []  # no timer left behind per closed session


def test_client_counts_take_and_release() -> None:
    from relaybal.netaddr import ClientCounts

    counts = ClientCounts()
    assert counts.take("192.0.2.1", 2) and counts.take("192.0.2.1", 2)
    assert not counts.take("192.0.2.1", 2)
    assert counts == {"192.0.2.1": 2}
    counts.release("192.0.2.1")
    counts.release("192.0.2.1")
    assert counts == {}  # no zero entries left behind


def test_the_side_left_open_has_no_producer_from_the_side_that_ended(
    capture_log: list[dict[str, Any]],
) -> None:
    # Twisted's transports resume a paused producer instead of closing once drained: a dead
    # partner left registered would hold the close back until the linger timer.
    h = make(capture_log)
    session, client = h.client()
    _, _, factory = h.pending_connect()
    server_proto, server = h.accept(factory)
    server_proto.dataReceived(b"220 mx ESMTP\r\n")
    server_proto.connectionLost(Failure(error.ConnectionDone()))
    assert client.producer is None and client.disconnecting

    session2, client2 = h.client(port=40001)
    _, _, factory2 = h.pending_connect()
    server_proto2, server2 = h.accept(factory2)
    server_proto2.dataReceived(b"220 mx ESMTP\r\n")
    session2.connectionLost(Failure(error.ConnectionDone()))
    assert server2.producer is None and server2.disconnecting
