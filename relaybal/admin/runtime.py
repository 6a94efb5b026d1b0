"""The runtime API socket: HAProxy's line protocol on a UNIX socket (``[admin] socket``).

``echo "show servers state" | socat stdio /run/relaybal/admin.sock`` works
as it does against HAProxy's stats socket:

* non-interactive (the default): one line is read, its commands (separated
  by ``;``) run, their answers are written, each followed by an empty line,
  and the connection closes;
* ``prompt`` switches to interactive mode: after each line's answers a
  ``> `` prompt is written and the connection stays open until ``quit``
  (or ``prompt`` again, or ``idle_timeout`` seconds without a line).

A line longer than :attr:`RuntimeProtocol.MAX_LENGTH` gets one error line
and the connection closes. Nothing a client sends can stop the daemon: the
commands never raise (see :mod:`relaybal.admin.commands`) and this protocol
catches anything else.

The socket file is created with mode 0660 (owner and group may use it). A
file left at the path by a process that died is replaced; a socket another
live process listens on is not (start-up fails instead).
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from typing import Any

from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IListeningPort,
    IReactorTime,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from relaybal.admin.commands import CliSession, RuntimeCommands

log = Logger(namespace="relaybal.admin")

#: Permissions of the socket file.
SOCKET_MODE = 0o660

#: Seconds a connection may stay without sending a line (HAProxy's ``stats timeout``).
IDLE_TIMEOUT = 60.0

PROMPT = b"> "


@implementer(IHalfCloseableProtocol)
class RuntimeProtocol(LineOnlyReceiver):
    """One runtime-API connection.

    Half-closing is expected (``echo … | socat`` shuts its sending side down
    after the line): the answer is still written, then the connection closes.
    A last line without a newline before that counts as a line.
    """

    delimiter = b"\n"
    MAX_LENGTH = 16384

    def __init__(self, commands: RuntimeCommands, clock: IReactorTime, idle_timeout: float) -> None:
        self.commands = commands
        self.session = CliSession()
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.timer = self.clock.callLater(self.idle_timeout, self._idle)

    def _idle(self) -> None:
        self.timer = None
        self.session.closing = True
        if self.transport is not None:
            self.transport.loseConnection()

    def lineReceived(self, line: bytes) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.reset(self.idle_timeout)
        if self.session.closing:
            return
        try:
            text = line.rstrip(b"\r").decode("utf-8", "replace")
            output = self.commands.execute_line(text, self.session).encode("utf-8")
        except Exception:  # execute_line promises not to raise; this is the last fence
            log.failure("runtime API line {line!r} failed", line=line[:200])
            output = b"Internal error.\n\n"
        transport = self.transport
        assert transport is not None
        transport.write(output)
        if self.session.closing or not self.session.interactive:
            self.session.closing = True
            transport.loseConnection()
        else:
            transport.write(PROMPT)

    def readConnectionLost(self) -> None:
        # LineOnlyReceiver keeps an unterminated last line in _buffer.
        rest = self._buffer
        self._buffer = b""
        if rest and not self.session.closing:
            self.lineReceived(rest)
        self.session.closing = True
        if self.transport is not None:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        self.session.closing = True
        if self.transport is not None:
            self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        transport = self.transport
        assert transport is not None
        transport.write(f"Command line too long (limit {self.MAX_LENGTH} bytes).\n\n".encode())
        self.session.closing = True
        transport.loseConnection()

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


class RuntimeFactory(Factory):
    """Builds a :class:`RuntimeProtocol` per connection to the admin socket."""

    noisy = False

    def __init__(
        self, commands: RuntimeCommands, clock: IReactorTime, idle_timeout: float = IDLE_TIMEOUT
    ) -> None:
        self.commands = commands
        self.clock = clock
        self.idle_timeout = idle_timeout

    def buildProtocol(self, addr: Any) -> RuntimeProtocol:
        protocol = RuntimeProtocol(self.commands, self.clock, self.idle_timeout)
        protocol.factory = self
        return protocol


class AdminSocketError(Exception):
    """The admin socket could not be created."""


def remove_stale_socket(path: str) -> None:
    """Remove a socket file nobody listens on; refuse a live socket or a non-socket file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise AdminSocketError(f"cannot inspect {path}: {e.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise AdminSocketError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except OSError as e:
        raise AdminSocketError(f"cannot check {path}: {e.strerror}") from None
    finally:
        probe.close()
    raise AdminSocketError(f"another process is listening on {path}")


def listen_admin_socket(reactor: Any, path: str, factory: RuntimeFactory) -> IListeningPort:
    """Listen on the UNIX socket ``path`` (mode 0660), replacing a stale one.

    Raises :class:`AdminSocketError` with a readable reason on failure.
    """
    remove_stale_socket(path)
    try:
        port: IListeningPort = reactor.listenUNIX(path, factory, mode=SOCKET_MODE)
    except CannotListenError as e:
        reason = e.socketError
        words = getattr(reason, "strerror", None) or str(reason)
        raise AdminSocketError(f"cannot listen on {path}: {words}") from None
    return port
