"""Lean TCP transports for spliced connections.

A splice session moves a few small chunks each way and then closes, so what it
costs is mostly per-connection machinery: Twisted's ``tcp.Server`` and
``tcp.Client`` build several objects per socket, resolve even an IP literal
through a ``Deferred`` and a ``callLater(0)``, shut a socket down before
closing it, and register and unregister it with epoll more often than needed.
A splice needs none of that, so relaybal's splice frontends use these instead
on the real epoll reactor (``bench/splice_floor.py`` measures the difference):

- :class:`LeanTransport`: a connected socket registered directly with the
  reactor as its own read/write descriptor; ``write`` sends at once when
  nothing is queued, a streaming producer is paused above
  :attr:`LeanTransport.bufferSize` queued bytes and resumed once they are sent.
- :func:`accepted_transport`: what a listening ``tcp.Port`` builds per accepted
  socket (set as the port's ``transport``); it does not read until its
  protocol calls ``resumeProducing``.
- :func:`connect_tcp`: a non-blocking connect to an IP literal, with the same
  ``ClientFactory`` calls and failure types as ``reactor.connectTCP``.

They keep Twisted's semantics where a splice session can see them: the
protocol's ``connectionLost`` is called once, from the reactor, after
``loseConnection`` (once the queue is sent) or ``abortConnection`` (at once); a
peer's end of stream is ``ConnectionDone``; an error is ``ConnectionLost``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from typing import Any

from twisted.internet import error, interfaces, tcp
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ClientFactory
from twisted.python.failure import Failure
from zope.interface import implementer

READ_SIZE = 65536
_LINGER_RESET = struct.pack("ii", 1, 0)
# Shared, as the reactor's own: a Failure is costly to build and these carry no traceback.
_DONE = Failure(error.ConnectionDone())
_LOST = Failure(error.ConnectionLost())
_IN_PROGRESS = (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY)


def supported(reactor: Any) -> bool:
    """Whether lean transports can run on *reactor* (an epoll reactor, not a fake)."""
    return isinstance(reactor, EPollReactor)


def is_ip_literal(host: str) -> bool:
    """Whether *host* needs no name resolution (``connect_tcp`` takes only these)."""
    return isIPAddress(host) or isIPv6Address(host)


def _address(sockaddr: Any) -> IPv4Address | IPv6Address:
    # An IPv6 socket address has four parts, an IPv4 one two (socket.family is a slow property).
    if len(sockaddr) == 4:
        return IPv6Address("TCP", sockaddr[0], sockaddr[1])
    return IPv4Address("TCP", sockaddr[0], sockaddr[1])


@implementer(
    interfaces.IReadWriteDescriptor,
    interfaces.ITCPTransport,
    interfaces.IPushProducer,
    interfaces.IConsumer,
)
class LeanTransport:
    """A connected TCP socket as a transport, with the least Python per event."""

    bufferSize = 65536
    # Twisted's ``direct_writer`` and other code test these attributes.
    TLS = False

    def __init__(
        self,
        sock: socket.socket,
        protocol: interfaces.IProtocol | None,
        reactor: Any,
        peer: Any = None,
        connector: LeanConnector | None = None,
    ) -> None:
        self.socket = sock
        self.protocol = protocol
        self.reactor = reactor
        self._fileno = sock.fileno()
        self._recv = sock.recv
        self._send = sock.send
        self._peer = peer
        self._connector = connector
        self._buffer = bytearray()
        self._reading = False
        self._writing = False
        self._producer: interfaces.IPushProducer | None = None
        self._producer_paused = False
        self._abort_call: IDelayedCall | None = None
        self.connected = connector is None
        self.disconnecting = False
        self.disconnected = False

    # -- the reactor's side

    def fileno(self) -> int:
        return self._fileno

    def logPrefix(self) -> str:
        return "LeanTransport"

    def doRead(self) -> Any:  # None, or the exception that ends the connection
        try:
            data = self._recv(READ_SIZE)
        except BlockingIOError:  # a stale event, or a descriptor number reused in this poll
            return None
        except OSError:
            self.connectionLost(_LOST)
            return None
        if not data:
            # Ended here rather than through the reactor's _disconnectSelectable: the same
            # outcome (no half-close for splices), for less Python per connection.
            self.connectionLost(_DONE)
            return None
        self.protocol.dataReceived(data)  # type: ignore[union-attr]
        return None

    def doWrite(self) -> Any:
        if self._connector is not None:
            return self._connector.writable(self)
        if self.disconnected:  # ended by the read half of this same event
            return None
        buffer = self._buffer
        if buffer:
            try:
                sent = self._send(buffer)
            except BlockingIOError:
                return None
            except OSError:
                self.connectionLost(_LOST)
                return None
            del buffer[:sent]
            if buffer:
                return None
        if self._abort_call is not None:  # aborted by the read half of this same event
            return None
        self._writing = False
        self.reactor.removeWriter(self)
        if self._producer_paused and self._producer is not None:
            self._producer_paused = False
            self._producer.resumeProducing()
        if self.disconnecting:
            self.connectionLost(_DONE)
        return None

    def connectionLost(self, reason: Failure) -> None:
        if self.disconnected:
            return
        connector = self._connector
        if connector is not None:  # epoll reported an error or hang-up while connecting
            err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            connector.failed(error.getConnectError((err, os.strerror(err))) if err else error.ConnectError())
            return
        self.disconnected = True
        self.connected = False
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        if self._reading:
            self._reading = False
            self.reactor.removeReader(self)
        if self._writing:
            self._writing = False
            self.reactor.removeWriter(self)
        self._fileno = -1
        self.socket.close()
        self._buffer = bytearray()
        self._producer = None
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            protocol.connectionLost(reason)

    # -- the protocol's side

    def write(self, data: bytes) -> None:
        if self.disconnected or self._abort_call is not None or not data:
            return
        buffer = self._buffer
        if not buffer and self.connected:
            try:
                sent = self._send(data)
            except OSError:  # full, or broken: doWrite sends the rest or reports the error
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        buffer += data
        if not self._writing:
            self._writing = True
            self.reactor.addWriter(self)
        if self._producer is not None and not self._producer_paused and len(buffer) > self.bufferSize:
            self._producer_paused = True
            self._producer.pauseProducing()

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Close once everything queued is sent (``connectionLost`` with ``ConnectionDone``)."""
        if self.disconnecting or self.disconnected:
            return
        self.disconnecting = True
        self.stopReading()
        if not self._writing:  # doWrite then finds nothing queued and ends the connection
            self._writing = True
            self.reactor.addWriter(self)

    def abortConnection(self) -> None:
        """Close now, dropping what is queued (``connectionLost`` with ``ConnectionAborted``)."""
        if self.disconnected or self._abort_call is not None:
            return
        self.disconnecting = True
        self.stopReading()
        if self._writing:
            self._writing = False
            self.reactor.removeWriter(self)
        self._buffer = bytearray()
        # As Twisted does: the peer gets a reset, not what looks like a clean end of stream.
        with contextlib.suppress(OSError):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self._abort_call = self.reactor.callLater(0, self.connectionLost, Failure(error.ConnectionAborted()))

    def startReading(self) -> None:
        if not self._reading and not self.disconnected:
            self._reading = True
            self.reactor.addReader(self)

    def stopReading(self) -> None:
        if self._reading:
            self._reading = False
            self.reactor.removeReader(self)

    def pauseProducing(self) -> None:
        self.stopReading()

    def resumeProducing(self) -> None:
        if not self.disconnecting and self.connected:
            self.startReading()

    def stopProducing(self) -> None:
        self.loseConnection()

    def registerProducer(self, producer: interfaces.IProducer, streaming: bool) -> None:
        if not streaming:
            raise ValueError("LeanTransport takes streaming (push) producers only")
        push = producer if isinstance(producer, LeanTransport) else interfaces.IPushProducer(producer)
        self._producer = push
        self._producer_paused = False
        if len(self._buffer) > self.bufferSize:
            self._producer_paused = True
            push.pauseProducing()

    def unregisterProducer(self) -> None:
        self._producer = None
        self._producer_paused = False

    def getPeer(self) -> IPv4Address | IPv6Address:
        if self._peer is None:
            self._peer = self.socket.getpeername()
        return _address(self._peer)

    def getHost(self) -> IPv4Address | IPv6Address:
        return _address(self.socket.getsockname())

    def getTcpNoDelay(self) -> bool:
        return bool(self.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, enabled)

    def getTcpKeepAlive(self) -> bool:
        return bool(self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, enabled)

    def loseWriteConnection(self) -> None:
        self.loseConnection()


def accepted_transport(  # noqa: PLR0917  (the signature tcp.Port calls)
    skt: socket.socket, protocol: Any, addr: Any, server: Any, sessionno: int, reactor: Any
) -> Any:
    """Build the transport of an accepted socket; see :func:`use_for_accepted`.

    A protocol with a true ``lean_transport`` attribute (a splice session) gets
    a :class:`LeanTransport`, which does not read until the protocol calls
    ``resumeProducing``: a splice session first finds a server (or asks for a
    PROXY header, and resumes). Any other protocol gets Twisted's own
    ``tcp.Server``, so a listener whose frontend changes mode in a reload
    keeps working.
    """
    if getattr(protocol, "lean_transport", False):
        skt.setblocking(False)
        return LeanTransport(skt, protocol, reactor, peer=addr)
    return tcp.Server(skt, protocol, addr, server, sessionno, reactor)


def use_for_accepted(port: object, reactor: Any) -> None:
    """Make a listening TCP *port* build lean transports for splice sessions (epoll, IP only)."""
    family = getattr(port, "addressFamily", None)
    if supported(reactor) and isinstance(port, tcp.Port) and family in (socket.AF_INET, socket.AF_INET6):
        port.transport = accepted_transport  # type: ignore[assignment]


class LeanConnector:
    """One non-blocking connection attempt, as :func:`connect_tcp` returns it.

    Calls the factory like ``reactor.connectTCP`` does: ``buildProtocol`` and the
    protocol's ``makeConnection`` on success, ``clientConnectionFailed`` (with
    ``ConnectionRefusedError``, ``TimeoutError``, ``UserError`` after
    :meth:`stopConnecting`, …) otherwise.
    """

    def __init__(self, reactor: Any, host: str, port: int, factory: ClientFactory, timeout: float) -> None:
        self.reactor = reactor
        self.factory = factory
        self.address: tuple[Any, ...] = (host, port)
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.transport: LeanTransport | None = None
        self.timer: IDelayedCall | None = None
        self.done = False
        try:
            if "%" in host:  # a scope id reaches the socket address only through getaddrinfo
                self.address = socket.getaddrinfo(
                    host, port, socket.AF_INET6, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST
                )[0][4]
            sock = socket.socket(self.family, socket.SOCK_STREAM)
        except OSError as e:  # EMFILE, ENFILE, ENOBUFS, an unknown scope: reported as connectTCP does
            self.timer = reactor.callLater(0, self.failed, error.ConnectBindError(e.errno, e.strerror))
            return
        sock.setblocking(False)
        err = sock.connect_ex(self.address)
        if err not in _IN_PROGRESS:
            sock.close()
            self.timer = reactor.callLater(0, self.failed, error.getConnectError((err, os.strerror(err))))
            return
        self.transport = LeanTransport(
            sock,
            None,
            reactor,
            peer=self.address if self.family == socket.AF_INET else (host, port, 0, 0),
            connector=self,
        )
        self.transport._writing = True
        reactor.addWriter(self.transport)
        self.timer = reactor.callLater(timeout, self.failed, error.TimeoutError())

    def writable(self, transport: LeanTransport) -> Any:
        """The socket became writable: the connection is made, or it failed."""
        sock = transport.socket
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.failed(error.getConnectError((err, os.strerror(err))))
            return None
        # A stale event (a descriptor number closed and reused within one poll) is not a
        # connection: ask again, as Twisted's connector does.
        err = sock.connect_ex(self.address)
        if err in _IN_PROGRESS[1:]:
            return None
        if err not in (0, errno.EISCONN):
            self.failed(error.getConnectError((err, os.strerror(err))))
            return None
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        transport._connector = None
        transport.connected = True
        protocol = self.factory.buildProtocol(transport.getPeer())
        if protocol is None:
            transport.connectionLost(_DONE)
            return None
        transport.protocol = protocol
        transport.startReading()
        protocol.makeConnection(transport)
        # Whatever the protocol wrote on connecting is in the queue (or was sent at once).
        return transport.doWrite() if transport._writing else None

    def failed(self, reason: Exception) -> None:
        """The attempt failed (or was given up): close the socket and tell the factory."""
        if self.done:
            return
        self.done = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        transport = self.transport
        if transport is not None:
            transport._connector = None
            transport.connectionLost(Failure(reason))  # unregisters and closes; no protocol yet
        self.factory.clientConnectionFailed(self, Failure(reason))  # type: ignore[arg-type]

    def stopConnecting(self) -> None:
        """Give up the attempt (the factory hears ``UserError``, as with Twisted's connector)."""
        if self.done:
            raise error.NotConnectingError()
        self.failed(error.UserError())


def connect_tcp(
    reactor: Any, host: str, port: int, factory: ClientFactory, timeout: float = 30
) -> LeanConnector:
    """Connect to the IP literal *host*; the drop-in for ``reactor.connectTCP`` in splice sessions."""
    return LeanConnector(reactor, host, port, factory, timeout)
