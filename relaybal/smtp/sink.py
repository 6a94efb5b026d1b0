"""A small SMTP sink: accepts every message and counts it.

Used by ``relaybal demo`` (so the demo needs no system package) and by tests that
need a server without Postfix. It is not a mail store: bodies are discarded.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver


class SinkSession(LineOnlyReceiver):
    """One client session of a :class:`SinkFactory`."""

    MAX_LENGTH = 1024 * 1024
    factory: SinkFactory

    def __init__(self) -> None:
        self.in_data = False

    def _reply(self, line: bytes) -> None:
        self.transport.write(line + b"\r\n")  # type: ignore[union-attr]

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.factory.current += 1
        self._reply(f"220 {self.factory.hostname} ESMTP relaybal-sink".encode())

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.current -= 1

    def lineReceived(self, line: bytes) -> None:
        if self.in_data:
            if line == b".":
                self.in_data = False
                self.factory.messages += 1
                self._reply(b"250 2.0.0 Ok: queued")
            else:
                self.factory.bytes += len(line) + 2
            return
        verb = line[:4].upper()
        if verb == b"EHLO":
            self.transport.write(  # type: ignore[union-attr]
                f"250-{self.factory.hostname}\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                "250-ENHANCEDSTATUSCODES\r\n250 SIZE 0\r\n".encode()
            )
        elif verb == b"HELO":
            self._reply(f"250 {self.factory.hostname}".encode())
        elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
            self._reply(b"250 2.0.0 Ok")
        elif verb == b"DATA":
            self.in_data = True
            self._reply(b"354 End data with <CR><LF>.<CR><LF>")
        elif verb == b"QUIT":
            self._reply(b"221 2.0.0 Bye")
            self.transport.loseConnection()  # type: ignore[union-attr]
        else:
            self._reply(b"502 5.5.2 Error: command not recognized")

    def lineLengthExceeded(self, line: bytes) -> None:
        self._reply(b"500 5.5.0 Line too long")
        self.transport.loseConnection()  # type: ignore[union-attr]


class SinkFactory(Factory):
    """Counts connections and messages across its sessions."""

    noisy = False

    def buildProtocol(self, addr: Any) -> SinkSession:  # type: ignore[override]
        session = SinkSession()
        session.factory = self
        return session

    def __init__(self, hostname: str = "sink.invalid") -> None:
        self.hostname = hostname
        self.connections = 0
        self.current = 0
        self.messages = 0
        self.bytes = 0
