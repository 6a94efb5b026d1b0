"""Lean TCP transports for splice sessions (:mod:`relaybal.splice.lean`).

Most tests drive a transport by hand over real sockets (``socket.socketpair()``
or loopback TCP) with :class:`FakeReactor`, a ``Clock`` that records reader and
writer registrations. Each event is handled the way
``RelaybalEPollReactor.doPoll`` handles it: ``doRead``, then ``doWrite`` unless
that ended the connection, and a returned ``CONNECTION_DONE`` or
``CONNECTION_LOST`` removes reader and writer and calls ``connectionLost``
(Twisted's ``_disconnectSelectable``). Waiting is only ever for a socket
condition, with ``select`` and a bound.

The last section runs a real ``RelaybalEPollReactor`` (created per test, never
installed) end to end: accepting through a lean ``tcp.Port``, ``connect_tcp``,
flushing on ``loseConnection``, dropping on ``abortConnection``, back-pressure.
"""

from __future__ import annotations

import errno
import ipaddress
import select
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import error, interfaces, tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.main import CONNECTION_LOST
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from relaybal.reactor import RelaybalEPollReactor
from relaybal.splice import lean
from relaybal.splice.lean import (
    LeanConnector,
    LeanTransport,
    accepted_transport,
    connect_tcp,
    is_ip_literal,
    supported,
    use_for_accepted,
)

# A recognisable 1 MiB payload: far more than a socket with small buffers takes at once.
BIG = bytes(range(256)) * 4096
WAIT = 5.0  # seconds: the bound on waiting for a socket condition (never reached when all is well)


# -- fakes and helpers


class FakeReactor(Clock):
    """A ``Clock`` that records reader/writer registrations; events are dispatched by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.readers: set[Any] = set()
        self.writers: set[Any] = set()
        self.log: list[tuple[str, Any]] = []

    def addReader(self, reader: Any) -> None:
        self.log.append(("addReader", reader))
        self.readers.add(reader)

    def removeReader(self, reader: Any) -> None:
        self.log.append(("removeReader", reader))
        self.readers.discard(reader)

    def addWriter(self, writer: Any) -> None:
        self.log.append(("addWriter", writer))
        self.writers.add(writer)

    def removeWriter(self, writer: Any) -> None:
        self.log.append(("removeWriter", writer))
        self.writers.discard(writer)

    def disconnect(self, selectable: Any, why: Exception) -> None:
        """What the reactor's ``_disconnectSelectable`` does for a descriptor that does not half-close."""
        self.removeReader(selectable)
        self.removeWriter(selectable)
        selectable.connectionLost(Failure(why))

    def dispatch(self, selectable: Any, *, read: bool = False, write: bool = False) -> Any:
        """One epoll event for *selectable*, handled as ``RelaybalEPollReactor.doPoll`` does."""
        why = None
        if read:
            why = selectable.doRead()
        if not why and write:
            why = selectable.doWrite()
        if why:
            self.disconnect(selectable, why)
        return why


class Recorder(Protocol):
    """Records what happens to it; optional hooks act on connect and on data."""

    def __init__(
        self,
        on_made: Callable[[Recorder], None] | None = None,
        on_data: Callable[[Recorder, bytes], None] | None = None,
    ) -> None:
        self.made = 0
        self.data = bytearray()
        self.lost: list[Failure] = []
        self.on_made = on_made
        self.on_data = on_data

    def connectionMade(self) -> None:
        self.made += 1
        if self.on_made is not None:
            self.on_made(self)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.on_data is not None:
            self.on_data(self, data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.append(reason)


class LeanRecorder(Recorder):
    """A protocol that asks for a lean transport, as ``SpliceSession`` does."""

    lean_transport = True


class RecordingFactory(ClientFactory):
    """A client factory that records what ``connect_tcp`` tells it."""

    def __init__(self, make: Callable[[], Protocol] = Recorder, build: bool = True) -> None:
        self.make = make
        self.build = build
        self.addresses: list[Any] = []
        self.protocols: list[Any] = []
        self.failures: list[Failure] = []
        self.connectors: list[Any] = []

    def buildProtocol(self, addr: Any) -> Protocol | None:
        self.addresses.append(addr)
        if not self.build:
            return None
        protocol = self.make()
        self.protocols.append(protocol)
        return protocol

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.connectors.append(connector)
        self.failures.append(reason)


@implementer(interfaces.IPushProducer)
class RecordingProducer:
    """A push producer that records the calls it gets."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


@implementer(interfaces.IPullProducer)
class PullProducer:
    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def lean_of(protocol: Protocol) -> LeanTransport:
    """The protocol's transport, which must be lean."""
    assert isinstance(protocol.transport, LeanTransport)
    return protocol.transport


def small_buffers(*socks: socket.socket) -> None:
    """Shrink the kernel's buffers so a write of ``BIG`` is only partly taken."""
    for sock in socks:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)


def wait_writable(sock: socket.socket) -> None:
    _, writable, _ = select.select([], [sock], [], WAIT)
    assert writable, "socket did not become writable"


def wait_readable(sock: socket.socket) -> None:
    readable, _, _ = select.select([sock], [], [], WAIT)
    assert readable, "socket did not become readable"


def drain(sock: socket.socket) -> bytes:
    """Everything a non-blocking *sock* has to read now (stopping at end of stream)."""
    data = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


def at_eof(sock: socket.socket) -> bool:
    """Whether a non-blocking *sock* has nothing left but the end of stream."""
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    sock.settimeout(WAIT)
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"end of stream after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


def fill(sock: socket.socket) -> bytes:
    """Send on a non-blocking *sock* until the kernel takes no more; return what was sent."""
    sent = bytearray()
    chunk = b"f" * 4096
    while True:
        try:
            count = sock.send(chunk)
        except BlockingIOError:
            return bytes(sent)
        sent += chunk[:count]


def pump(reactor: FakeReactor, transport: LeanTransport, peer: socket.socket) -> bytes:
    """Let *peer* read while the fake reactor reports the transport writable, until it stops writing."""
    received = bytearray(drain(peer))
    for _ in range(100_000):
        if transport not in reactor.writers:
            break
        if not transport.disconnected:
            wait_writable(transport.socket)
        reactor.dispatch(transport, write=True)
        received += drain(peer)
    else:
        raise AssertionError("the transport never stopped writing")
    return bytes(received)


def connecting(connector: LeanConnector, sockets: list[socket.socket]) -> LeanTransport:
    """The transport of a connection attempt in progress; its socket is closed at teardown."""
    transport = connector.transport
    assert transport is not None
    sockets.append(transport.socket)
    return transport


def refused_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on: just bound, then closed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback (::1) here")


@pytest.fixture
def fake() -> FakeReactor:
    return FakeReactor()


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Sockets to close at teardown (closing one lean already closed is harmless)."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def make_listener(sockets: list[socket.socket], host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    sockets.append(listener)
    listener.bind((host, 0))
    listener.listen(16)
    listener.settimeout(WAIT)
    return listener


@pytest.fixture
def listener(sockets: list[socket.socket]) -> socket.socket:
    return make_listener(sockets)


def lean_pair(
    reactor: Any, sockets: list[socket.socket], protocol: Recorder | None = None
) -> tuple[LeanTransport, Recorder, socket.socket]:
    """A lean transport on one end of a socketpair with small buffers; the other end is the peer."""
    ours, peer = socket.socketpair()
    sockets += [ours, peer]
    small_buffers(ours, peer)
    ours.setblocking(False)
    peer.setblocking(False)
    proto = protocol if protocol is not None else Recorder()
    transport = LeanTransport(ours, proto, reactor)
    proto.makeConnection(transport)
    return transport, proto, peer


def tcp_pair(
    sockets: list[socket.socket], host: str = "127.0.0.1"
) -> tuple[socket.socket, Any, socket.socket, socket.socket]:
    """A connected loopback pair: (accepted socket, its peer address, client socket, listener)."""
    listener = make_listener(sockets, host)
    client = socket.socket(listener.family, socket.SOCK_STREAM)
    sockets.append(client)
    client.settimeout(WAIT)
    client.connect(listener.getsockname()[:2])
    accepted, addr = listener.accept()
    sockets.append(accepted)
    return accepted, addr, client, listener


# -- module helpers


def test_supported_only_on_a_real_epoll_reactor() -> None:
    assert not supported(MemoryReactorClock())
    assert not supported(Clock())
    assert not supported(FakeReactor())


@pytest.mark.parametrize(
    ("host", "literal"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("::1", True),
        ("2001:db8::25", True),
        ("::ffff:192.0.2.1", True),
        ("fe80::1%eth0", True),
        ("localhost", False),
        ("mx1.example.com", False),
        ("1.2.3", False),
        ("256.1.1.1", False),
        ("[::1]", False),
        ("", False),
    ],
)
def test_is_ip_literal(host: str, literal: bool) -> None:
    assert is_ip_literal(host) is literal


def test_use_for_accepted_leaves_ports_of_a_fake_reactor_alone() -> None:
    memory = MemoryReactorClock()
    port = tcp.Port(0, Factory(), reactor=memory)
    before = port.transport
    use_for_accepted(port, memory)
    assert port.transport is before is tcp.Server
    use_for_accepted(object(), memory)  # not a port at all: nothing to do, no error


def test_transport_provides_its_interfaces(fake: FakeReactor, sockets: list[socket.socket]) -> None:
    transport, _, _ = lean_pair(fake, sockets)
    for iface in (
        interfaces.IReadWriteDescriptor,
        interfaces.ITCPTransport,
        interfaces.IPushProducer,
        interfaces.IConsumer,
    ):
        assert verifyObject(iface, transport)
    assert transport.TLS is False
    assert transport.fileno() == transport.socket.fileno()


# -- LeanTransport: writing


def test_write_sends_at_once_when_nothing_is_queued(fake: FakeReactor, sockets: list[socket.socket]) -> None:
    transport, proto, peer = lean_pair(fake, sockets)
    transport.write(b"EHLO client\r\n")
    transport.writeSequence([b"MAIL ", b"FROM:<a@b>\r\n"])
    assert drain(peer) == b"EHLO client\r\nMAIL FROM:<a@b>\r\n"
    assert fake.log == []  # no writer was ever registered
    transport.write(b"")
    assert fake.log == []
    assert not proto.lost


def test_partial_send_queues_the_rest_and_registers_a_writer_once(
    fake: FakeReactor, sockets: list[socket.socket]
) -> None:
    transport, proto, peer = lean_pair(fake, sockets)
    transport.write(BIG)
    first = drain(peer)
    assert 0 < len(first) < len(BIG)
    assert fake.writers == {transport}
    # The socket has room again, but a later write still goes behind what is queued.
    transport.write(b"tail")
    assert drain(peer) == b""
    assert fake.log == [("addWriter", transport)]
    rest = pump(fake, transport, peer)
    assert first + rest == BIG + b"tail"
    assert fake.writers == set()
    assert fake.log == [("addWriter", transport), ("removeWriter", transport)]
    assert not proto.lost
    assert not transport.disconnecting


def test_doWrite_on_a_full_socket_keeps_the_writer(fake: FakeReactor, sockets: list[socket.socket]) -> None:
    transport, _, peer = lean_pair(fake, sockets)
    transport.write(BIG)
    assert fake.dispatch(transport, write=True) is None  # EAGAIN: a stale event
    assert fake.writers == {transport}
    assert len(pump(fake, transport, peer)) == len(BIG)


def test_doWrite_drains_and_unregisters(fake: FakeReactor, sockets: list[socket.socket]) -> None:
    transport, _, peer = lean_pair(fake, sockets)
    transport.write(BIG)
    before = drain(peer)
    wait_writable(transport.socket)
    fake.dispatch(transport, write=True)
    # One doWrite sends what fits; the writer stays until the queue is empty.
    assert fake.writers == {transport}
    rest = pump(fake, transport, peer)
    assert before + rest == BIG
    assert fake.log[-1] == ("removeWriter", transport)


# -- LeanTransport: closing


def test_loseConnection_with_nothing_queued_closes_on_the_next_write_event(
    fake: FakeReactor, sockets: list[socket.socket]
) -> None:
    transport, proto, peer = lean_pair(fake, sockets)
    transport.startReading()
    transport.loseConnection()
    assert transport.disconnecting and not transport.disconnected
    assert fake.readers == set() and fake.writers == {transport}
    assert proto.lost == []  # not before the reactor says so
    assert fake.dispatch(transport, write=True) is None  # it ends itself
    assert len(proto.lost) == 1 and proto.lost[0].check(error.ConnectionDone)
    assert type(proto.lost[0].value) is error.ConnectionDone
    assert at_eof(peer)
    assert transport.disconnected and not transport.connected
    assert transport.fileno() == -1 and transport.socket.fileno() == -1
    assert transport.protocol is None
    assert fake.readers == set() and fake.writers == set()


def test_loseConnection_sends_everything_queued_before_closing(
    fake: FakeReactor, sockets: list[socket.socket]
) -> None:
    transport, proto, peer = lean_pair(fake, sockets)
    transport.write(BIG)
    transport.loseConnection()
    transport.loseConnection()  # a second call changes nothing
    transport.write(b"!")  # like Twisted: still queued while disconnecting
    assert fake.log.count(("addWriter", transport)) == 1
    assert proto.lost == []
    assert pump(fake, transport, peer) == BIG + b"!"
    assert at_eof(peer)
    assert len(proto.lost) == 1 and proto.lost[0].check(error.ConnectionDone)


def test_abortConnection_drops_what_is_queued(fake: FakeReactor, sockets: list[socket.socket]) -> None:
    transport, proto, peer = lean_pair(fake, sockets)
    transport.startReading()
    transport.write(BIG)
    sent = drain(peer)
    transport.abortConnection()
    transport.abortConnection()  # once only
    assert fake.readers == set() and fake.writers == set()
    assert len(fake.getDelayedCalls()) == 1
    assert proto.lost == []  # later, from the reactor, as with Twisted
    assert transport.disconnecting and not transport.disconnected
    fake.advance(0)
    assert len(proto.lost) == 1 and proto.lost[0].check(error.ConnectionAborted)
    assert drain(peer) == b"" and at_eof(peer)
    assert len(sent) < len(BIG)
    assert transport.disconnected and transport.socket.fileno() == -1
    assert fake.getDelayedCalls() == []


def test_abortConnection_after_loseConnection_still_drops_the_queue(
    fake: FakeReactor, sockets: list[socket.socket]
) -> None:
    transport, proto, peer = lean_pair(fake, sockets)
    transport.write(BIG)
    transport.loseConnection()
    transport.abortConnection()
    assert fake.writers == set()
    fake.advance(0)
    assert len(drain(peer)) < len(BIG)
    assert at_eof(peer)
    assert len(proto.lost) == 1 and proto.lost[0].check(error.ConnectionAborted)


def test_connectionLost_from_the_reactor_before_an_abort_runs_wins_and_cancels_it(
    fake: FakeReactor, sockets: list[socket.socket]
) -> None:
    transport, proto, _ = lean_pair(fake, sockets)
    transport.abortConnection()
    fake.disconnect(transport, CONNECTION_LOST)
    assert fake.getDelayedCalls() == []
    fake.advance(1)
    assert len(proto.lost) == 1 and proto.lost[0].check(error.ConnectionLost)


def test_peer_eof_is_connection_done_exactly_once(fake: FakeReactor, sockets: list[socket.socket]) -> None:
    transport, proto, peer = lean_pair(fake, sockets)
    transport.startReading()
    assert fake.readers == {transport}
    peer.sendall(b"QUIT\r\n")
    peer.close()
    assert fake.dispatch(transport, read=True) is None
    assert proto.data == b"QUIT\r\n"
    assert fake.dispatch(transport, read=True) is None  # it ends itself
    assert len(proto.lost) == 1 and type(proto.lost[0].value) is error.ConnectionDone
    # Whatever else reports the end (a late abort, the reactor again) is ignored.
    transport.connectionLost(Failure(error.ConnectionLost()))
    transport.abortConnection()
    fake.advance(1)
    assert len(proto.lost) == 1


def test_doRead_with_nothing_to_read_is_a_stale_event(
    fake: FakeReactor, sockets: list[socket.socket]
) -> None:
    transport, proto, _ = lean_pair(fake, sockets)
    transport.startReading()
    assert fake.dispatch(transport, read=True) is None
    assert proto.data == b"" and proto.lost == []


def test_loseConnection_from_dataReceived_closes_in_the_same_event(
    fake: FakeReactor, sockets: list[socket.socket]
) -> None:
    def quit_reply(proto: Recorder, data: bytes) -> None:
        lean_of(proto).write(b"221 2.0.0 bye\r\n")
        lean_of(proto).loseConnection()

    transport, proto, peer = lean_pair(fake, sockets, Recorder(on_data=quit_reply))
    transport.startReading()
    peer.sendall(b"QUIT\r\n")
    # The reply went out at once, so the write half of the same event finds nothing queued.
    assert fake.dispatch(transport, read=True, write=True) is None  # it ends itself
    assert len(proto.lost) == 1 and type(proto.lost[0].value) is error.ConnectionDone
    assert drain(peer) == b"221 2.0.0 bye\r\n" and at_eof(peer)


def test_read_error_is_connection_lost(fake: FakeReactor, sockets: list[socket.socket]) -> None:
    accepted, addr, client, _ = tcp_pair(sockets)
    proto = LeanRecorder()
    transport = accepted_transport(accepted, proto, addr, None, 0, fake)
    proto.makeConnection(transport)
    transport.resumeProducing()
    # The client resets the connection (SO_LINGER 0): recv fails with ECONNRESET.
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    wait_readable(accepted)
    assert fake.dispatch(transport, read=True) is None  # it ends itself
    assert len(proto.lost) == 1 and type(proto.lost[0].value) is error.ConnectionLost


def test_send_error_in_doWrite_is_connection_lost(fake: FakeReactor, sockets: list[socket.socket]) -> None:
    transport, proto, peer = lean_pair(fake, sockets)
    transport.write(BIG)
    peer.close()
    assert fake.dispatch(transport, write=True) is None  # it ends itself
    assert len(proto.lost) == 1 and type(proto.lost[0].value) is error.ConnectionLost
    assert fake.writers == set()


def test_write_to_a_broken_socket_is_reported_by_doWrite(
    fake: FakeReactor, sockets: list[socket.socket]
) -> None:
    transport, proto, peer = lean_pair(fake, sockets)
    peer.close()
    transport.write(b"data")  # send fails: no exception here, the error is the reactor's to report
    assert fake.writers == {transport}
    assert proto.lost == []
    assert fake.dispatch(transport, write=True) is None  # it ends itself
    assert len(proto.lost) == 1 and proto.lost[0].check(error.ConnectionLost)


def test_writes_and_calls_after_disconnect_are_ignored(
    fake: FakeReactor, sockets: list[socket.socket]
) -> None:
    transport, proto, peer = lean_pair(fake, sockets)
    transport.loseConnection()
    fake.dispatch(transport, write=True)
    assert len(proto.lost) == 1
    fake.log.clear()
    transport.write(b"late")
    transport.writeSequence([b"late", b"r"])
    transport.loseConnection()
    transport.abortConnection()
    transport.startReading()
    transport.resumeProducing()
    assert fake.log == []
    assert fake.getDelayedCalls() == []
    assert at_eof(peer)
    assert len(proto.lost) == 1


# -- LeanTransport: reading and producers


def test_pause_and_resume_reading(fake: FakeReactor, sockets: list[socket.socket]) -> None:
    transport, proto, peer = lean_pair(fake, sockets)
    assert fake.readers == set()  # a transport made directly does not read until asked
    transport.resumeProducing()
    transport.resumeProducing()
    assert fake.log == [("addReader", transport)]
    peer.sendall(b"abc")
    fake.dispatch(transport, read=True)
    assert proto.data == b"abc"
    transport.pauseProducing()
    transport.pauseProducing()
    assert fake.log == [("addReader", transport), ("removeReader", transport)]
    transport.resumeProducing()
    assert fake.readers == {transport}
    transport.loseConnection()  # stops reading, and resuming no longer starts it
    assert fake.readers == set()
    transport.resumeProducing()
    assert fake.readers == set()


def test_stopProducing_and_loseWriteConnection_close_after_the_queue(
    fake: FakeReactor, sockets: list[socket.socket]
) -> None:
    for close in ("stopProducing", "loseWriteConnection"):
        transport, proto, peer = lean_pair(fake, sockets)
        transport.write(BIG)
        getattr(transport, close)()
        assert transport.disconnecting
        assert pump(fake, transport, peer) == BIG
        assert len(proto.lost) == 1 and proto.lost[0].check(error.ConnectionDone)


def test_register_a_non_streaming_producer_raises(fake: FakeReactor, sockets: list[socket.socket]) -> None:
    transport, _, _ = lean_pair(fake, sockets)
    with pytest.raises(ValueError, match="streaming"):
        transport.registerProducer(PullProducer(), False)


def test_producer_is_paused_above_bufferSize_and_resumed_once_drained(
    fake: FakeReactor, sockets: list[socket.socket]
) -> None:
    transport, _, peer = lean_pair(fake, sockets)
    producer = RecordingProducer()
    transport.registerProducer(producer, True)
    transport.write(b"x" * 100)
    assert producer.events == []
    transport.write(BIG)
    assert producer.events == ["pause"]
    transport.write(b"more")
    assert producer.events == ["pause"]  # paused once, not per write
    received = pump(fake, transport, peer)
    assert received == b"x" * 100 + BIG + b"more"
    assert producer.events == ["pause", "resume"]


def test_producer_threshold_is_strictly_above_bufferSize(
    fake: FakeReactor, sockets: list[socket.socket]
) -> None:
    transport, _, peer = lean_pair(fake, sockets)
    filler = fill(transport.socket)  # the kernel takes nothing more: every write is queued
    transport.bufferSize = 100
    producer = RecordingProducer()
    transport.registerProducer(producer, True)
    transport.write(b"a" * 100)
    assert producer.events == []
    transport.write(b"b")
    assert producer.events == ["pause"]
    assert pump(fake, transport, peer) == filler + b"a" * 100 + b"b"
    assert producer.events == ["pause", "resume"]


def test_registering_a_producer_with_a_full_queue_pauses_it_at_once(
    fake: FakeReactor, sockets: list[socket.socket]
) -> None:
    transport, _, peer = lean_pair(fake, sockets)
    transport.write(BIG)
    producer = RecordingProducer()
    transport.registerProducer(producer, True)
    assert producer.events == ["pause"]
    pump(fake, transport, peer)
    assert producer.events == ["pause", "resume"]


def test_unregistered_producer_is_not_resumed(fake: FakeReactor, sockets: list[socket.socket]) -> None:
    transport, _, peer = lean_pair(fake, sockets)
    producer = RecordingProducer()
    transport.registerProducer(producer, True)
    transport.write(BIG)
    transport.unregisterProducer()
    assert pump(fake, transport, peer) == BIG
    assert producer.events == ["pause"]


def test_producer_is_resumed_before_a_flushed_close(fake: FakeReactor, sockets: list[socket.socket]) -> None:
    transport, proto, peer = lean_pair(fake, sockets)
    producer = RecordingProducer()
    transport.registerProducer(producer, True)
    transport.write(BIG)
    transport.loseConnection()
    assert pump(fake, transport, peer) == BIG
    assert producer.events == ["pause", "resume"]
    assert len(proto.lost) == 1 and proto.lost[0].check(error.ConnectionDone)


# -- LeanTransport: addresses and options


def test_accepted_transport_for_a_splice_protocol_is_lean_and_paused(
    fake: FakeReactor, sockets: list[socket.socket]
) -> None:
    accepted, addr, client, listener = tcp_pair(sockets)
    proto = LeanRecorder()
    transport = accepted_transport(accepted, proto, addr, None, 0, fake)
    assert isinstance(transport, LeanTransport)
    assert transport.connected and not transport.disconnecting
    assert accepted.getblocking() is False
    proto.makeConnection(transport)
    assert fake.log == []  # it reads only when its protocol resumes it
    client.sendall(b"EHLO x\r\n")
    transport.resumeProducing()
    wait_readable(accepted)
    fake.dispatch(transport, read=True)
    assert proto.data == b"EHLO x\r\n"
    host, port = client.getsockname()
    assert transport.getPeer() == IPv4Address("TCP", host, port)
    assert transport.getHost() == IPv4Address("TCP", "127.0.0.1", listener.getsockname()[1])


def test_getPeer_and_getHost_without_a_known_peer_ask_the_socket(
    fake: FakeReactor, sockets: list[socket.socket]
) -> None:
    accepted, addr, client, listener = tcp_pair(sockets)
    client.setblocking(False)
    transport = LeanTransport(client, Recorder(), fake)
    assert transport.getPeer() == IPv4Address("TCP", "127.0.0.1", listener.getsockname()[1])
    assert transport.getHost() == IPv4Address("TCP", *addr)


@needs_ipv6
def test_getPeer_and_getHost_ipv6(fake: FakeReactor, sockets: list[socket.socket]) -> None:
    accepted, addr, client, listener = tcp_pair(sockets, "::1")
    proto = LeanRecorder()
    transport = accepted_transport(accepted, proto, addr, None, 0, fake)
    client_port = client.getsockname()[1]
    assert transport.getPeer() == IPv6Address("TCP", "::1", client_port)
    assert transport.getHost() == IPv6Address("TCP", "::1", listener.getsockname()[1])
    other = LeanTransport(client, Recorder(), fake)
    assert other.getPeer() == IPv6Address("TCP", "::1", listener.getsockname()[1])
    assert other.getHost() == IPv6Address("TCP", "::1", client_port)


def test_tcp_options(fake: FakeReactor, sockets: list[socket.socket]) -> None:
    accepted, addr, _, _ = tcp_pair(sockets)
    transport = accepted_transport(accepted, LeanRecorder(), addr, None, 0, fake)
    for enabled in (True, False, True):
        transport.setTcpNoDelay(enabled)
        assert transport.getTcpNoDelay() is enabled
        transport.setTcpKeepAlive(enabled)
        assert transport.getTcpKeepAlive() is enabled


# -- LeanTransport: aborting, as Twisted's transports do


def test_write_after_abortConnection_is_dropped(fake: FakeReactor, sockets: list[socket.socket]) -> None:
    transport, proto, peer = lean_pair(fake, sockets)
    transport.abortConnection()
    transport.write(b"late")
    fake.advance(0)
    assert len(proto.lost) == 1 and proto.lost[0].check(error.ConnectionAborted)
    assert drain(peer) == b""


def test_abortConnection_resets_the_peer(fake: FakeReactor, sockets: list[socket.socket]) -> None:
    accepted, addr, client, _ = tcp_pair(sockets)
    proto = LeanRecorder()
    transport = accepted_transport(accepted, proto, addr, None, 0, fake)
    proto.makeConnection(transport)
    transport.write(b"partial reply")
    transport.abortConnection()
    fake.advance(0)
    assert len(proto.lost) == 1
    client.settimeout(WAIT)
    with pytest.raises(ConnectionResetError):
        while client.recv(65536):
            pass


# -- LeanConnector / connect_tcp (fake reactor, real sockets)


def test_connect_success(fake: FakeReactor, sockets: list[socket.socket], listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    factory = RecordingFactory()
    connector = connect_tcp(fake, "127.0.0.1", port, factory, timeout=7)
    assert isinstance(connector, LeanConnector)
    transport = connecting(connector, sockets)
    assert fake.writers == {transport} and fake.readers == set()
    assert not transport.connected
    assert [call.getTime() for call in fake.getDelayedCalls()] == [7]
    assert factory.addresses == []  # nothing before the socket is writable
    server, _ = listener.accept()
    sockets.append(server)
    wait_writable(transport.socket)
    assert fake.dispatch(transport, write=True) is None
    peer = IPv4Address("TCP", "127.0.0.1", port)
    assert factory.addresses == [peer]
    [proto] = factory.protocols
    assert proto.made == 1 and proto.transport is transport
    assert transport.getPeer() == peer
    assert transport.getHost() == IPv4Address("TCP", *server.getpeername())
    assert transport.connected and not transport.disconnecting
    assert fake.readers == {transport} and fake.writers == set()
    assert fake.getDelayedCalls() == []  # the timeout is cancelled
    assert factory.failures == []
    with pytest.raises(error.NotConnectingError):
        connector.stopConnecting()
    fake.advance(100)
    assert factory.failures == []
    # Bytes both ways.
    server.sendall(b"220 mx ESMTP\r\n")
    wait_readable(transport.socket)
    fake.dispatch(transport, read=True)
    assert proto.data == b"220 mx ESMTP\r\n"
    transport.write(b"QUIT\r\n")
    assert recv_exactly(server, 6) == b"QUIT\r\n"
    server.close()
    wait_readable(transport.socket)
    assert fake.dispatch(transport, read=True) is None  # it ends itself
    assert len(proto.lost) == 1 and type(proto.lost[0].value) is error.ConnectionDone


@needs_ipv6
def test_connect_ipv6(fake: FakeReactor, sockets: list[socket.socket]) -> None:
    listener = make_listener(sockets, "::1")
    port = listener.getsockname()[1]
    factory = RecordingFactory()
    connector = connect_tcp(fake, "::1", port, factory, timeout=5)
    transport = connecting(connector, sockets)
    assert transport.socket.family == socket.AF_INET6
    server, _ = listener.accept()
    sockets.append(server)
    wait_writable(transport.socket)
    fake.dispatch(transport, write=True)
    assert factory.addresses == [IPv6Address("TCP", "::1", port)]
    assert transport.getPeer() == IPv6Address("TCP", "::1", port)
    assert transport.getHost() == IPv6Address("TCP", "::1", server.getpeername()[1])


def test_protocol_writing_in_connectionMade_reaches_the_server(
    fake: FakeReactor, sockets: list[socket.socket], listener: socket.socket
) -> None:
    header = b"PROXY TCP4 192.0.2.7 192.0.2.1 40000 25\r\n"
    factory = RecordingFactory(lambda: Recorder(on_made=lambda p: lean_of(p).write(header)))
    connector = connect_tcp(fake, "127.0.0.1", listener.getsockname()[1], factory, timeout=5)
    transport = connecting(connector, sockets)
    server, _ = listener.accept()
    sockets.append(server)
    wait_writable(transport.socket)
    assert fake.dispatch(transport, write=True) is None
    assert recv_exactly(server, len(header)) == header
    assert fake.writers == set() and fake.readers == {transport}


def test_large_write_in_connectionMade_is_queued_and_sent_in_order(
    fake: FakeReactor, sockets: list[socket.socket], listener: socket.socket
) -> None:
    factory = RecordingFactory(lambda: Recorder(on_made=lambda p: lean_of(p).write(BIG)))
    connector = connect_tcp(fake, "127.0.0.1", listener.getsockname()[1], factory, timeout=5)
    transport = connecting(connector, sockets)
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    server, _ = listener.accept()
    sockets.append(server)
    server.setblocking(False)
    wait_writable(transport.socket)
    fake.dispatch(transport, write=True)
    assert fake.writers == {transport}  # what the kernel did not take is queued
    assert pump(fake, transport, server) == BIG
    assert factory.protocols[0].lost == []


def test_write_and_loseConnection_in_connectionMade(
    fake: FakeReactor, sockets: list[socket.socket], listener: socket.socket
) -> None:
    def made(proto: Recorder) -> None:
        lean_of(proto).write(b"QUIT\r\n")
        lean_of(proto).loseConnection()

    factory = RecordingFactory(lambda: Recorder(on_made=made))
    connector = connect_tcp(fake, "127.0.0.1", listener.getsockname()[1], factory, timeout=5)
    transport = connecting(connector, sockets)
    server, _ = listener.accept()
    sockets.append(server)
    wait_writable(transport.socket)
    assert fake.dispatch(transport, write=True) is None  # it ends itself
    [proto] = factory.protocols
    assert len(proto.lost) == 1 and proto.lost[0].check(error.ConnectionDone)
    assert recv_exactly(server, 6) == b"QUIT\r\n"
    assert server.recv(1) == b""
    assert factory.failures == []


def test_abortConnection_in_connectionMade(
    fake: FakeReactor, sockets: list[socket.socket], listener: socket.socket
) -> None:
    factory = RecordingFactory(lambda: Recorder(on_made=lambda p: lean_of(p).abortConnection()))
    connector = connect_tcp(fake, "127.0.0.1", listener.getsockname()[1], factory, timeout=5)
    transport = connecting(connector, sockets)
    server, _ = listener.accept()
    sockets.append(server)
    wait_writable(transport.socket)
    assert fake.dispatch(transport, write=True) is None
    assert fake.readers == set() and fake.writers == set()
    fake.advance(0)
    [proto] = factory.protocols
    assert len(proto.lost) == 1 and proto.lost[0].check(error.ConnectionAborted)
    assert factory.failures == []


def test_buildProtocol_returning_None_closes_the_connection(
    fake: FakeReactor, sockets: list[socket.socket], listener: socket.socket
) -> None:
    factory = RecordingFactory(build=False)
    connector = connect_tcp(fake, "127.0.0.1", listener.getsockname()[1], factory, timeout=5)
    transport = connecting(connector, sockets)
    server, _ = listener.accept()
    sockets.append(server)
    wait_writable(transport.socket)
    assert fake.dispatch(transport, write=True) is None  # it ends itself
    assert len(factory.addresses) == 1
    assert transport.disconnected
    server.settimeout(WAIT)
    assert server.recv(1) == b""
    assert factory.failures == []
    assert fake.getDelayedCalls() == []


def test_connect_refused(fake: FakeReactor, sockets: list[socket.socket]) -> None:
    factory = RecordingFactory()
    connector = connect_tcp(fake, "127.0.0.1", refused_port(), factory, timeout=5)
    transport = connecting(connector, sockets)
    wait_writable(transport.socket)
    assert fake.dispatch(transport, write=True) is None
    assert len(factory.failures) == 1
    assert factory.failures[0].check(error.ConnectionRefusedError)
    assert factory.connectors == [connector]
    assert factory.addresses == []
    assert transport.disconnected and transport.socket.fileno() == -1
    assert fake.readers == set() and fake.writers == set()
    assert fake.getDelayedCalls() == []
    with pytest.raises(error.NotConnectingError):
        connector.stopConnecting()
    fake.advance(100)
    assert len(factory.failures) == 1


def test_hang_up_while_connecting_is_a_connect_failure(
    fake: FakeReactor, sockets: list[socket.socket]
) -> None:
    # epoll reports a refused connect as an error/hang-up: the reactor calls connectionLost.
    factory = RecordingFactory()
    connector = connect_tcp(fake, "127.0.0.1", refused_port(), factory, timeout=5)
    transport = connecting(connector, sockets)
    wait_writable(transport.socket)
    fake.disconnect(transport, CONNECTION_LOST)
    assert len(factory.failures) == 1
    assert factory.failures[0].check(error.ConnectionRefusedError)
    assert factory.addresses == []
    assert transport.disconnected and transport.socket.fileno() == -1
    assert fake.getDelayedCalls() == []
    fake.advance(100)
    assert len(factory.failures) == 1


def test_hang_up_while_connecting_without_a_socket_error(
    fake: FakeReactor, sockets: list[socket.socket], listener: socket.socket
) -> None:
    factory = RecordingFactory()
    connector = connect_tcp(fake, "127.0.0.1", listener.getsockname()[1], factory, timeout=5)
    transport = connecting(connector, sockets)
    wait_writable(transport.socket)  # connected, so SO_ERROR is 0
    fake.disconnect(transport, CONNECTION_LOST)
    assert len(factory.failures) == 1
    assert type(factory.failures[0].value) is error.ConnectError
    assert factory.addresses == []
    assert transport.disconnected


def test_connect_timeout(fake: FakeReactor, sockets: list[socket.socket], listener: socket.socket) -> None:
    factory = RecordingFactory()
    connector = connect_tcp(fake, "127.0.0.1", listener.getsockname()[1], factory, timeout=5)
    transport = connecting(connector, sockets)
    fake.advance(4.9)
    assert factory.failures == []
    fake.advance(0.1)
    assert len(factory.failures) == 1 and factory.failures[0].check(error.TimeoutError)
    assert factory.connectors == [connector]
    assert factory.addresses == []
    assert transport.disconnected and transport.socket.fileno() == -1
    assert fake.writers == set()
    with pytest.raises(error.NotConnectingError):
        connector.stopConnecting()
    assert len(factory.failures) == 1


def test_stopConnecting(fake: FakeReactor, sockets: list[socket.socket], listener: socket.socket) -> None:
    factory = RecordingFactory()
    connector = connect_tcp(fake, "127.0.0.1", listener.getsockname()[1], factory, timeout=5)
    transport = connecting(connector, sockets)
    connector.stopConnecting()
    assert len(factory.failures) == 1 and factory.failures[0].check(error.UserError)
    assert transport.disconnected and transport.socket.fileno() == -1
    assert fake.writers == set() and fake.getDelayedCalls() == []
    with pytest.raises(error.NotConnectingError):
        connector.stopConnecting()
    fake.advance(100)
    assert len(factory.failures) == 1
    assert factory.addresses == []


def _immediate_connect_error() -> int:
    """The error a non-blocking connect to the broadcast address gets at once (0 if none here)."""
    with socket.socket() as sock:
        sock.setblocking(False)
        return sock.connect_ex(("255.255.255.255", 25))


@pytest.mark.skipif(
    _immediate_connect_error() in lean._IN_PROGRESS, reason="no immediate connect error on this host"
)
def test_connect_error_at_once_is_reported_from_the_reactor(fake: FakeReactor) -> None:
    factory = RecordingFactory()
    connector = connect_tcp(fake, "255.255.255.255", 25, factory, timeout=5)
    assert connector.transport is None
    assert fake.writers == set()
    assert factory.failures == []  # never synchronously from connect_tcp
    fake.advance(0)
    assert len(factory.failures) == 1 and factory.failures[0].check(error.ConnectError)
    assert not factory.failures[0].check(error.UserError, error.TimeoutError)
    with pytest.raises(error.NotConnectingError):
        connector.stopConnecting()


@pytest.mark.skipif(
    _immediate_connect_error() in lean._IN_PROGRESS, reason="no immediate connect error on this host"
)
def test_stopConnecting_before_an_immediate_error_is_reported(fake: FakeReactor) -> None:
    factory = RecordingFactory()
    connector = connect_tcp(fake, "255.255.255.255", 25, factory, timeout=5)
    connector.stopConnecting()
    fake.advance(1)
    assert len(factory.failures) == 1 and factory.failures[0].check(error.UserError)


# -- the real epoll reactor, end to end


@pytest.fixture
def reactor() -> Iterator[RelaybalEPollReactor]:
    """A fresh epoll reactor (not installed), torn down with everything it still holds."""
    real = RelaybalEPollReactor()  # type: ignore[no-untyped-call]
    yield real
    for reader in list(real._internalReaders):
        real.removeReader(reader)
        reader.connectionLost(None)
    real._internalReaders.clear()
    real.disconnectAll()
    for call in real.getDelayedCalls():
        call.cancel()
    real._poller.close()


def run_until(reactor: Any, condition: Callable[[], bool], limit: int = 2000) -> None:
    """Iterate *reactor* until *condition* holds (bounded)."""
    for _ in range(limit):
        if condition():
            return
        reactor.iterate(0.01)
    assert condition(), "the reactor never got there"


class LeanServerFactory(Factory):
    """Builds lean-transport protocols for a listening port and keeps them."""

    def __init__(self, make: Callable[[], Recorder] = LeanRecorder) -> None:
        self.make = make
        self.protocols: list[Recorder] = []

    def buildProtocol(self, addr: Any) -> Recorder:
        protocol = self.make()
        self.protocols.append(protocol)
        return protocol


def test_supported_and_use_for_accepted_on_the_real_reactor(
    reactor: RelaybalEPollReactor, tmp_path: Any
) -> None:
    assert supported(reactor)
    port = reactor.listenTCP(0, LeanServerFactory(), interface="127.0.0.1")
    assert port.transport is tcp.Server
    use_for_accepted(port, reactor)
    assert port.transport is accepted_transport
    # A UNIX socket port is a tcp.Port too, but has no TCP peer: left alone.
    unix_port = reactor.listenUNIX(str(tmp_path / "s"), LeanServerFactory())
    before = unix_port.transport
    use_for_accepted(unix_port, reactor)
    assert unix_port.transport is before


def test_end_to_end_accept_connect_and_bytes_both_ways(reactor: RelaybalEPollReactor) -> None:
    def server_made(proto: Recorder) -> None:
        lean_of(proto).write(b"220 lean ESMTP\r\n")
        lean_of(proto).resumeProducing()  # a lean transport starts paused

    def server_data(proto: Recorder, data: bytes) -> None:
        if proto.data.endswith(b"QUIT\r\n"):
            lean_of(proto).write(b"221 bye\r\n")
            lean_of(proto).loseConnection()

    server_factory = LeanServerFactory(lambda: LeanRecorder(on_made=server_made, on_data=server_data))
    port = reactor.listenTCP(0, server_factory, interface="127.0.0.1")
    use_for_accepted(port, reactor)
    number = port.getHost().port

    header = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n"
    client_factory = RecordingFactory(lambda: Recorder(on_made=lambda p: lean_of(p).write(header)))
    connect_tcp(reactor, "127.0.0.1", number, client_factory, timeout=5)
    run_until(reactor, lambda: bool(client_factory.protocols) and b"\r\n" in client_factory.protocols[0].data)
    [client] = client_factory.protocols
    [server] = server_factory.protocols
    assert isinstance(server.transport, LeanTransport)
    assert isinstance(client.transport, LeanTransport)
    assert client.data == b"220 lean ESMTP\r\n"
    assert client.transport.getPeer() == IPv4Address("TCP", "127.0.0.1", number)
    assert server.transport.getPeer() == client.transport.getHost()
    run_until(reactor, lambda: bytes(server.data) == header)
    client.transport.write(b"QUIT\r\n")
    run_until(reactor, lambda: bool(client.lost) and bool(server.lost))
    assert client.data == b"220 lean ESMTP\r\n221 bye\r\n"
    assert server.data == header + b"QUIT\r\n"
    assert len(client.lost) == 1 and type(client.lost[0].value) is error.ConnectionDone
    assert len(server.lost) == 1 and type(server.lost[0].value) is error.ConnectionDone
    assert client_factory.failures == []
    assert client.transport.disconnected and server.transport.disconnected


def _queueing_server(
    reactor: RelaybalEPollReactor, then: Callable[[LeanTransport], None]
) -> tuple[LeanServerFactory, int]:
    """A lean port whose protocol shrinks its send buffer, writes ``BIG`` (mostly queued), then *then*."""

    def made(proto: Recorder) -> None:
        transport = proto.transport
        assert isinstance(transport, LeanTransport)
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport.write(BIG)
        assert transport._buffer  # the kernel did not take it all
        then(transport)

    factory = LeanServerFactory(lambda: LeanRecorder(on_made=made))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    use_for_accepted(port, reactor)
    return factory, port.getHost().port


def test_end_to_end_loseConnection_flushes_what_is_queued(reactor: RelaybalEPollReactor) -> None:
    server_factory, number = _queueing_server(reactor, lambda transport: transport.loseConnection())
    client_factory = RecordingFactory()
    connect_tcp(reactor, "127.0.0.1", number, client_factory, timeout=5)
    run_until(reactor, lambda: bool(client_factory.protocols) and bool(client_factory.protocols[0].lost))
    [client] = client_factory.protocols
    assert client.data == BIG
    assert type(client.lost[0].value) is error.ConnectionDone
    run_until(reactor, lambda: bool(server_factory.protocols[0].lost))
    assert server_factory.protocols[0].lost[0].check(error.ConnectionDone)


def test_end_to_end_abortConnection_drops_what_is_queued(reactor: RelaybalEPollReactor) -> None:
    server_factory, number = _queueing_server(reactor, lambda transport: transport.abortConnection())
    client_factory = RecordingFactory()
    connect_tcp(reactor, "127.0.0.1", number, client_factory, timeout=5)
    run_until(reactor, lambda: bool(client_factory.protocols) and bool(client_factory.protocols[0].lost))
    [client] = client_factory.protocols
    assert len(client.data) < len(BIG)
    assert bytes(client.data) == BIG[: len(client.data)]
    [server] = server_factory.protocols
    assert len(server.lost) == 1 and server.lost[0].check(error.ConnectionAborted)


def test_end_to_end_back_pressure(reactor: RelaybalEPollReactor, sockets: list[socket.socket]) -> None:
    ours, peer = socket.socketpair()
    sockets += [ours, peer]
    small_buffers(ours, peer)
    ours.setblocking(False)
    peer.setblocking(False)
    proto = Recorder()
    transport = LeanTransport(ours, proto, reactor)
    proto.makeConnection(transport)
    producer = RecordingProducer()
    transport.registerProducer(producer, True)
    payload = BIG * 2
    transport.write(payload)
    assert producer.events == ["pause"]
    # The peer does not read: however long the reactor runs, nothing drains and nobody resumes.
    for _ in range(5):
        reactor.iterate(0)
    assert producer.events == ["pause"]
    assert transport in reactor.getWriters()
    received = bytearray()

    def drained() -> bool:
        received.extend(drain(peer))
        return producer.events == ["pause", "resume"]

    run_until(reactor, drained)
    received.extend(drain(peer))
    assert bytes(received) == payload
    assert transport not in reactor.getWriters()
    assert proto.lost == []


def test_end_to_end_connect_refused(reactor: RelaybalEPollReactor) -> None:
    factory = RecordingFactory()
    connector = connect_tcp(reactor, "127.0.0.1", refused_port(), factory, timeout=5)
    run_until(reactor, lambda: bool(factory.failures))
    for _ in range(5):
        reactor.iterate(0)
    assert len(factory.failures) == 1
    assert factory.failures[0].check(error.ConnectionRefusedError)
    assert factory.addresses == []
    assert connector.transport is not None and connector.transport.disconnected
    assert connector.transport not in reactor.getWriters()
    assert reactor.getDelayedCalls() == []


def test_non_splice_protocol_on_a_lean_port_gets_twisteds_server(
    reactor: RelaybalEPollReactor, sockets: list[socket.socket]
) -> None:
    def made(proto: Recorder) -> None:
        assert proto.transport is not None
        proto.transport.write(b"hello\r\n")

    factory = LeanServerFactory(lambda: Recorder(on_made=made))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    use_for_accepted(port, reactor)
    client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=WAIT)
    sockets.append(client)
    client.sendall(b"ping\r\n")
    run_until(reactor, lambda: bool(factory.protocols) and factory.protocols[0].data == b"ping\r\n")
    [server] = factory.protocols
    assert type(server.transport) is tcp.Server
    assert recv_exactly(client, 7) == b"hello\r\n"


def test_lean_accepted_transport_does_not_read_until_resumed(
    reactor: RelaybalEPollReactor, sockets: list[socket.socket]
) -> None:
    factory = LeanServerFactory()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    use_for_accepted(port, reactor)
    client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=WAIT)
    sockets.append(client)
    client.sendall(b"early bytes")
    run_until(reactor, lambda: bool(factory.protocols))
    [server] = factory.protocols
    transport = server.transport
    assert isinstance(transport, LeanTransport)
    for _ in range(5):
        reactor.iterate(0)
    assert server.data == b""
    assert transport not in reactor.getReaders()
    transport.resumeProducing()
    run_until(reactor, lambda: server.data == b"early bytes")


def test_abort_from_dataReceived_with_a_write_pending_is_connection_aborted(
    reactor: RelaybalEPollReactor, sockets: list[socket.socket]
) -> None:
    ours, peer = socket.socketpair()
    sockets += [ours, peer]
    small_buffers(ours, peer)
    ours.setblocking(False)
    peer.setblocking(False)
    proto = Recorder(on_data=lambda p, data: lean_of(p).abortConnection())
    transport = LeanTransport(ours, proto, reactor)
    proto.makeConnection(transport)
    transport.write(BIG)  # mostly queued: the writer is registered
    transport.startReading()
    # The peer takes what was sent (the socket turns writable) and says something (readable):
    # the next poll reports both in one event.
    assert drain(peer)
    peer.sendall(b"QUIT\r\n")
    run_until(reactor, lambda: bool(proto.lost))
    assert len(proto.lost) == 1
    assert proto.lost[0].check(error.ConnectionAborted)


# -- connecting when no socket can be had, and to scoped link-local addresses


def test_no_socket_for_the_server_is_a_connect_bind_error(
    fake: FakeReactor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Out of descriptors (accept took the last one): the session must hear of it, as from connectTCP.
    def no_socket(*args: Any, **kwargs: Any) -> socket.socket:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(lean.socket, "socket", no_socket)
    factory = RecordingFactory()
    connector = connect_tcp(fake, "127.0.0.1", 25, factory, timeout=5)
    monkeypatch.undo()
    assert factory.failures == []  # never synchronously from connect_tcp
    fake.advance(0)
    assert len(factory.failures) == 1 and factory.failures[0].check(error.ConnectBindError)
    assert "Too many open files" in factory.failures[0].getErrorMessage()
    assert fake.getDelayedCalls() == [] and fake.writers == set()
    with pytest.raises(error.NotConnectingError):
        connector.stopConnecting()


def test_unknown_scope_is_a_connect_bind_error(fake: FakeReactor) -> None:
    factory = RecordingFactory()
    connect_tcp(fake, "fe80::1%nosuchif0", 25, factory, timeout=5)
    fake.advance(0)
    assert len(factory.failures) == 1 and factory.failures[0].check(error.ConnectBindError)


def _link_local_address() -> tuple[str, str] | None:
    """A link-local IPv6 address of this host and its interface, from /proc/net/if_inet6."""
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) == 6 and fields[0].startswith("fe80"):
            text = ":".join(fields[0][i : i + 4] for i in range(0, 32, 4))
            return str(ipaddress.IPv6Address(text)), fields[5]
    return None


@pytest.mark.skipif(_link_local_address() is None, reason="this host has no link-local IPv6 address")
def test_connect_to_a_scoped_link_local_address(fake: FakeReactor, sockets: list[socket.socket]) -> None:
    found = _link_local_address()
    assert found is not None
    address, interface = found
    scoped = f"{address}%{interface}"
    server = socket.socket(socket.AF_INET6)
    sockets.append(server)
    server.bind(
        socket.getaddrinfo(scoped, 0, socket.AF_INET6, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)[0][4]
    )
    server.listen(1)
    factory = RecordingFactory()
    connector = connect_tcp(fake, scoped, server.getsockname()[1], factory, timeout=5)
    transport = connecting(connector, sockets)
    wait_writable(transport.socket)
    assert fake.dispatch(transport, write=True) is None
    assert factory.failures == [] and len(factory.protocols) == 1
    assert transport.connected


def test_reactor_leaves_a_selectable_that_already_closed_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # A handler that raises after its transport closed: removing a closed descriptor again would
    # make Twisted scan every selectable.
    reactor = RelaybalEPollReactor()  # type: ignore[no-untyped-call]
    left, right = socket.socketpair()
    try:

        class ClosesThenRaises:
            disconnected = False

            def fileno(self) -> int:
                return left.fileno()

            def logPrefix(self) -> str:
                return "test"

            def doRead(self) -> None:
                reactor.removeReader(self)
                self.disconnected = True
                raise RuntimeError("after the close")

        cleanups: list[object] = []
        monkeypatch.setattr(reactor, "_disconnectSelectable", lambda *args: cleanups.append(args))
        selectable = ClosesThenRaises()
        reactor.addReader(selectable)
        right.send(b"x")
        reactor.doPoll(0)
        assert selectable.disconnected and cleanups == []
    finally:
        left.close()
        right.close()
        reactor._poller.close()  # type: ignore[attr-defined]
