"""Whole conversations between a client and the relay server over Twisted's iosim loopback."""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Protocol
from twisted.test import iosim

from relaybal.relay.testing import RelayHarness
from relaybal.smtp.server import ESMTPServer


class FakeTLSOptions:
    """What iosim's pretend TLS handshake asks of the context factories on both ends."""

    def iosimVerify(self, other: Any) -> bool:
        return True


class ScriptedClient(Protocol):
    """Writes what the test says and keeps every reply line."""

    def __init__(self) -> None:
        self.received = b""
        self.start_tls_after_220 = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.start_tls_after_220 and b"220 2.0.0 Ready to start TLS\r\n" in self.received:
            self.start_tls_after_220 = False
            self.transport.startTLS(FakeTLSOptions())  # type: ignore[union-attr]

    def lines(self) -> list[bytes]:
        return self.received.split(b"\r\n")[:-1]

    def codes(self) -> list[int]:
        return [int(line[:3]) for line in self.lines() if line[3:4] != b"-"]


def pair(harness: RelayHarness) -> tuple[ESMTPServer, ScriptedClient, iosim.IOPump]:
    server = harness.frontend.buildProtocol(None)
    client = ScriptedClient()
    server_transport = iosim.FakeTransport(server, isServer=True)
    client_transport = iosim.FakeTransport(client, isServer=False)
    pump = iosim.connect(server, server_transport, client, client_transport, greet=False)
    return server, client, pump


def test_a_whole_session() -> None:
    harness = RelayHarness()
    server, client, pump = pair(harness)
    pump.flush()
    client.transport.write(  # type: ignore[union-attr]
        b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<b@d.test>\r\nDATA\r\n"
    )
    pump.flush()
    client.transport.write(b"Subject: hi\r\n\r\n..dotted\r\n.\r\nQUIT\r\n")  # type: ignore[union-attr]
    pump.flush()
    assert client.codes() == [220, 250, 250, 250, 354, 250, 221]
    assert harness.sink.messages[0].data.endswith(b"Subject: hi\r\n\r\n.dotted\r\n")
    assert server.mode == "closed"


def test_starttls_with_pipelined_plaintext() -> None:
    harness = RelayHarness(tls=True)
    harness.frontend.tls_options = FakeTLSOptions()  # type: ignore[assignment]
    server, client, pump = pair(harness)
    pump.flush()
    client.transport.write(b"EHLO c.test\r\n")  # type: ignore[union-attr]
    pump.flush()
    client.start_tls_after_220 = True
    client.transport.write(b"STARTTLS\r\nRSET\r\n")  # type: ignore[union-attr]
    pump.flush()
    assert client.codes() == [220, 250, 220]  # the RSET was never answered
    assert server.state.tls is not None and server.state.helo is None
    client.transport.write(b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<b@d.test>\r\nDATA\r\n")  # type: ignore[union-attr]
    pump.flush()
    client.transport.write(b"x\r\n.\r\n")  # type: ignore[union-attr]
    pump.flush()
    assert client.codes()[3:] == [250, 250, 250, 354, 250]
    assert b"250-STARTTLS" not in client.received.split(b"220 2.0.0 Ready to start TLS")[1]
    assert b"with ESMTPS id" in harness.sink.messages[0].data
