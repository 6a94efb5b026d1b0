"""The outbound SMTP client against real gateways: Postfix's smtp-sink and a private Postfix.

Each test turns the global reactor by hand (``iterate``, never ``run``, so it
can be done again in the next test) until the Deferred it waits for has
fired, with a deadline: the peers are real processes on loopback. It has to
be the global reactor: Twisted's TLS layer schedules its buffered writes on
it whatever reactor the connection belongs to.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from peers import PrivatePostfix, SmtpSink
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS

from relaybal.delivery.client import (
    BODY_CHUNK,
    ClientIdentity,
    ClientSettings,
    DeliveryError,
    IdentityConflict,
    SMTPClientConnection,
    Transaction,
    TransactionResult,
    connect,
)

pytestmark = pytest.mark.peers

T = TypeVar("T")

SETTINGS = ClientSettings(
    helo="relay.test",
    timeout_connect=10.0,
    timeout_banner=30.0,
    timeout_command=30.0,
    timeout_data_block=30.0,
    timeout_dot=60.0,
)


class Loop:
    """A private reactor, iterated until what a test waits for has happened."""

    def __init__(self) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor

    def run(self, d: Deferred[T], timeout: float = 60.0) -> T:
        """The result of ``d`` (its exception raised), turning the reactor until it fires."""
        box: list[Any] = []
        d.addBoth(box.append)
        deadline = time.monotonic() + timeout
        while not box:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing after {timeout:g}s")
            self.reactor.iterate(0.01)
        result = box[0]
        if hasattr(result, "raiseException"):
            result.raiseException()
        value: T = result
        return value

    def fails(self, d: Deferred[Any], timeout: float = 60.0) -> DeliveryError:
        with pytest.raises(DeliveryError) as info:
            self.run(d, timeout)
        return info.value

    def close(self) -> None:
        """Drop whatever the test left open, so the next test starts from an idle reactor."""
        self.reactor.disconnectAll()
        for _ in range(5):
            self.reactor.iterate(0)
        for call in self.reactor.getDelayedCalls():
            call.cancel()


@pytest.fixture
def loop() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.close()


class BytesBody:
    """A body from memory, read in pieces of at most ``piece`` octets."""

    def __init__(self, data: bytes, piece: int = BODY_CHUNK) -> None:
        self.data = data
        self.piece = piece
        self.position = 0
        self.closed = False

    def read(self, size: int = BODY_CHUNK) -> Deferred[bytes]:
        chunk = self.data[self.position : self.position + min(size, self.piece)]
        self.position += len(chunk)
        return succeed(chunk)

    def close(self) -> None:
        self.closed = True


def message(
    body: bytes,
    recipients: Sequence[str],
    *,
    queue_id: str = "Q1",
    piece: int = BODY_CHUNK,
    client: ClientIdentity | None = None,
    sender: str = "sender@relay.test",
) -> Transaction:
    return Transaction(
        queue_id, sender, tuple(recipients), lambda: BytesBody(body, piece), size=len(body), client=client
    )


def dumped_body(text: str) -> str:
    """The message smtp-sink dumped: after its three-line Received: header, less the final empty line."""
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("Received:")) + 3
    assert text.endswith("\n\n")
    return "\n".join(lines[start:-2]) + "\n"


def body_with_dot_lines(size: int, offsets: Sequence[int]) -> bytes:
    """CRLF lines of filler with a "." line (alone or with text) starting at each offset."""
    out = bytearray()
    for number, offset in enumerate(sorted(offsets)):
        while offset - len(out) > 81:
            out += b"x" * 78 + b"\r\n"
        gap = offset - len(out)
        assert gap == 0 or gap >= 2
        if gap:
            out += b"x" * (gap - 2) + b"\r\n"
        out += b".\r\n" if number % 2 == 0 else b"..two dots\r\n"
    while len(out) < size:
        out += b"y" * 70 + b"\r\n"
    return bytes(out)


# --------------------------------------------------------------------------- smtp-sink


@pytest.mark.parametrize(
    ("options", "count"), [((), 200), (("-p",), 50)], ids=["pipelining", "no-pipelining"]
)
def test_many_messages_over_one_connection(
    loop: Loop, sink_factory: Callable[..., SmtpSink], options: tuple[str, ...], count: int
) -> None:
    sink = sink_factory(options=options)
    conn = loop.run(connect(loop.reactor, *sink.address, SETTINGS))
    lost: list[SMTPClientConnection] = []
    conn.on_lost = lost.append
    assert ("PIPELINING" in conn.extensions) is (not options)
    for number in range(count):
        body = f"Subject: message {number}\r\n\r\nThis is message {number}.\r\n.\r\n".encode()
        rcpts = (f"{number}a@example.test", f"{number}b@example.test")
        result = loop.run(conn.deliver(message(body, rcpts, queue_id=f"Q{number}")))
        assert [reply.code for reply in result.recipients] == [250, 250]
        assert result.data is not None and result.data.code == 250, result
    assert conn.messages == count and conn.usable and lost == []
    loop.run(conn.quit())
    assert lost == [conn]
    sink.wait_for_count(count)
    seen = set()
    for dumped in sink.messages():
        number = int(dumped.rcpt_args[0][1:].split("a@", 1)[0])
        assert dumped.rcpt_args == [f"<{number}a@example.test>", f"<{number}b@example.test>"]
        assert dumped.mail_args == "<sender@relay.test>"
        assert dumped_body(dumped.text) == f"Subject: message {number}\n\nThis is message {number}.\n.\n"
        seen.add(number)
    assert seen == set(range(count))


def test_per_recipient_refusals_and_reuse(loop: Loop, sink_factory: Callable[..., SmtpSink]) -> None:
    # smtp-sink refuses every RCPT but still answers the pipelined DATA with 354 (it keeps no
    # recipient count): the client must end that DATA with a lone "." (RFC 2920 3.1), no body.
    sink = sink_factory(options=["-f", "RCPT"])
    conn = loop.run(connect(loop.reactor, *sink.address, SETTINGS))
    for number in range(3):
        result = loop.run(
            conn.deliver(
                message(
                    b"Subject: x\r\n\r\nx\r\n", ["a@example.test", "b@example.test"], queue_id=f"Q{number}"
                )
            )
        )
        assert [reply.kind for reply in result.recipients] == [5, 5]
        assert result.data is None
        assert conn.usable
    assert all("Subject" not in dumped.text for dumped in sink.messages())


def test_dot_lines_at_chunk_boundaries_arrive_intact(
    loop: Loop, sink_factory: Callable[..., SmtpSink]
) -> None:
    offsets = [16383, 2 * 16384, 3 * 16384 + 1, BODY_CHUNK - 1, 2 * BODY_CHUNK, 3 * BODY_CHUNK + 1]
    body = b".first line\r\n" + body_with_dot_lines(1024 * 1024, offsets)
    for offset in offsets:
        assert body[offset + 13 : offset + 14] == b"."
    sink = sink_factory()
    conn = loop.run(connect(loop.reactor, *sink.address, SETTINGS))
    for number, piece in enumerate([16384, BODY_CHUNK, 16385]):
        result = loop.run(conn.deliver(message(body, [f"{number}@example.test"], piece=piece)))
        assert result.data is not None and result.data.code == 250
    sink.wait_for_count(3)
    expected = body.decode().replace("\r\n", "\n")
    for dumped in sink.messages():
        assert dumped_body(dumped.text) == expected


def test_lost_final_reply_and_421(loop: Loop, sink_factory: Callable[..., SmtpSink]) -> None:
    silent = sink_factory(options=["-q", "."])  # disconnects after the dot without a reply
    conn = loop.run(connect(loop.reactor, *silent.address, SETTINGS))
    error = loop.fails(conn.deliver(message(b"Subject: x\r\n\r\nx\r\n", ["a@example.test"])))
    assert error.after_dot and error.retry_elsewhere and error.reply is None
    silent.wait_for_count(1)  # the message may well have been delivered: a retry duplicates it
    assert not conn.usable

    closing = sink_factory(options=["-Q", "."])  # 421 after the dot
    conn = loop.run(connect(loop.reactor, *closing.address, SETTINGS))
    error = loop.fails(conn.deliver(message(b"Subject: x\r\n\r\nx\r\n", ["a@example.test"])))
    assert not error.after_dot and error.retry_elsewhere
    assert error.reply is not None and error.reply.code == 421

    refusing = sink_factory(options=["-Q", "CONNECT"])
    error = loop.fails(connect(loop.reactor, *refusing.address, SETTINGS))
    assert error.retry_elsewhere and error.reply is not None and error.reply.code == 421


def test_xclient_to_smtp_sink(loop: Loop, sink_factory: Callable[..., SmtpSink]) -> None:
    # smtp-sink offers "XCLIENT NAME HELO" (no ADDR), answers 250 and ignores the values;
    # its -v log shows what was sent.
    sink = sink_factory(options=["-v"])
    settings = ClientSettings(helo="relay.test", xclient=True, timeout_command=30.0)
    conn = loop.run(connect(loop.reactor, *sink.address, settings))
    assert conn.extensions["XCLIENT"].split() == ["NAME", "HELO"]
    client = ClientIdentity(
        addr="192.0.2.7", port=4711, name="client.example", helo="helo+example", proto="ESMTP", login=None
    )
    result = loop.run(conn.deliver(message(b"Subject: x\r\n\r\nx\r\n", ["a@example.test"], client=client)))
    assert result.data is not None and result.data.code == 250
    sink.wait_for_count(1)
    sink.wait_for_log("XCLIENT NAME=client.example HELO=helo+2Bexample")
    assert "ADDR=" not in sink.log()  # limited to what the server lists


def test_a_100_mb_body_streams_to_smtp_sink(loop: Loop, sink_factory: Callable[..., SmtpSink]) -> None:
    sink = sink_factory(dump=False)
    block = b"".join(b".%07d dotted line that smtp-sink will have to unstuff\r\n" % n for n in range(4000))
    count = 100 * 1024 * 1024 // len(block) + 1

    class Repeat:
        left = count

        def read(self, size: int = BODY_CHUNK) -> Deferred[bytes]:
            if not self.left:
                return succeed(b"")
            self.left -= 1
            return succeed(block)

        def close(self) -> None:
            pass

    conn = loop.run(connect(loop.reactor, *sink.address, SETTINGS))
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = loop.run(conn.deliver(Transaction("Q1", "s@relay.test", ("a@example.test",), Repeat)))
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.data is not None and result.data.code == 250
    assert peak < 16 * 1024 * 1024, f"peak {peak} octets"
    print(
        f"100 MB body: {count * len(block) / elapsed / 1e6:.0f} MB/s, peak traced memory {peak / 1e6:.1f} MB"
    )


# --------------------------------------------------------------------------- TLS


def make_ca_and_server(hostname: str) -> tuple[bytes, bytes, bytes]:
    """A throw-away CA and a server certificate for ``hostname``: PEM of the CA, the certificate, its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relaybal test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(pem), server.public_bytes(pem), key_pem


@pytest.fixture
def tls_files(peer_dir: Path) -> tuple[Certificate, Path, Path, PrivateCertificate]:
    ca_pem, cert_pem, key_pem = make_ca_and_server("gw.test")
    cert_path = peer_dir / "gw-cert.pem"
    key_path = peer_dir / "gw-key.pem"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key_pem)
    os.chmod(key_path, 0o600)
    server = PrivateCertificate.loadPEM(key_pem + cert_pem)
    return Certificate.loadPEM(ca_pem), cert_path, key_path, server


POSTFIX_BASE = {
    "default_transport": "discard:",
    "mynetworks": "127.0.0.0/8 192.0.2.0/24",
    "smtpd_tls_loglevel": "1",
}


def test_starttls_to_postfix_verifies_the_certificate(
    loop: Loop, postfix_factory: Callable[..., PrivatePostfix], tls_files: tuple[Any, Path, Path, Any]
) -> None:
    ca, cert_path, key_path, _ = tls_files
    postfix = postfix_factory(
        {
            **POSTFIX_BASE,
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": str(cert_path),
            "smtpd_tls_key_file": str(key_path),
        }
    )
    base = ClientSettings(helo="relay.test", tls="required", tls_trust_root=ca, timeout_command=30.0)

    # The certificate checks out for the name we expect (not the address we connect to).
    conn = loop.run(connect(loop.reactor, *postfix.address, attrs_evolve(base, tls_hostname="gw.test")))
    assert conn.tls and "STARTTLS" not in conn.extensions
    assert conn.transport is not None
    peer_certificate = conn.transport.getPeerCertificate().to_cryptography()  # type: ignore[attr-defined]
    assert peer_certificate.subject.rfc4514_string() == "CN=gw.test"
    result = loop.run(conn.deliver(message(b"Subject: tls\r\n\r\nover TLS\r\n", ["a@example.test"])))
    assert result.data is not None and result.data.code == 250
    # A body of several chunks through the TLS layer's producer, then another message.
    big = b"Subject: big\r\n\r\n" + body_with_dot_lines(3 * 1024 * 1024, [BODY_CHUNK, 2 * BODY_CHUNK + 1])
    result = loop.run(conn.deliver(message(big, ["b@example.test"])))
    assert result.data is not None and result.data.code == 250
    assert conn.messages == 2
    loop.run(conn.quit())
    postfix.wait_for_log("TLS connection established from localhost[127.0.0.1]")
    postfix.wait_for_log("to=<b@example.test>, relay=none")
    sizes = [int(size) for size in re.findall(r"from=<sender@relay.test>, size=(\d+)", postfix.log())]
    assert max(sizes) >= len(big)  # the whole body (plus Postfix's own headers) was queued

    # A pre-built creator from the caller works the same way.
    options = optionsForClientTLS("gw.test", trustRoot=ca)
    conn = loop.run(connect(loop.reactor, *postfix.address, attrs_evolve(base, tls_options=options)))
    assert conn.tls
    loop.run(conn.quit())

    # A name the certificate does not carry: the handshake fails, nothing goes in plain text.
    for settings in (
        attrs_evolve(base, tls_hostname="wrong.test"),
        attrs_evolve(base, tls="opportunistic", tls_hostname="wrong.test"),
    ):
        error = loop.fails(connect(loop.reactor, *postfix.address, settings))
        assert error.retry_elsewhere and "TLS handshake failed" in str(error)
    # The address itself is not in the certificate either (tls_hostname unset: the host connected to).
    error = loop.fails(connect(loop.reactor, *postfix.address, base))
    assert "TLS handshake failed" in str(error)
    # Not trusting the test CA fails too.
    untrusting = ClientSettings(helo="relay.test", tls="required", tls_hostname="gw.test")
    assert "TLS handshake failed" in str(loop.fails(connect(loop.reactor, *postfix.address, untrusting)))

    # Without verification the same certificate is accepted.
    conn = loop.run(
        connect(
            loop.reactor, *postfix.address, attrs_evolve(base, tls_verify=False, tls_hostname="wrong.test")
        )
    )
    assert conn.tls
    loop.run(conn.quit())


def attrs_evolve(settings: ClientSettings, **changes: Any) -> ClientSettings:
    import attrs

    return attrs.evolve(settings, **changes)


class InjectingServer(Protocol):
    """Answers STARTTLS with its 220 and a forged reply in the same write, then starts TLS."""

    def __init__(self, server_certificate: PrivateCertificate) -> None:
        self.certificate = server_certificate
        self.buffer = b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"220 evil.test ESMTP\r\n")

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while b"\r\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            if line.startswith(b"EHLO"):
                self.transport.write(b"250-evil.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
            elif line == b"STARTTLS":
                self.transport.write(b"220 2.0.0 Ready to start TLS\r\n250-evil.test\r\n250 AUTH PLAIN\r\n")
                self.transport.startTLS(self.certificate.options())  # type: ignore[attr-defined]


def test_starttls_reply_injection_over_real_tcp(loop: Loop, tls_files: tuple[Any, Path, Path, Any]) -> None:
    ca, _, _, server_certificate = tls_files
    factory = Factory.forProtocol(lambda: InjectingServer(server_certificate))
    port = loop.reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        settings = ClientSettings(
            helo="relay.test", tls="required", tls_hostname="gw.test", tls_trust_root=ca
        )
        error = loop.fails(connect(loop.reactor, "127.0.0.1", port.getHost().port, settings))
        assert error.retry_elsewhere
        # Either the forged reply came in the same read (refused as such), or it reached the TLS layer
        # as garbage: never is it read as the server's reply.
        assert "after the reply to STARTTLS" in str(error) or "TLS handshake failed" in str(error)
    finally:
        loop.run(Deferred.fromCoroutine(_stop(port)))


async def _stop(port: Any) -> None:
    await port.stopListening()


# --------------------------------------------------------------------------- XCLIENT / XFORWARD with Postfix


FIRST = ClientIdentity(
    addr="192.0.2.7", port=4711, name="client.example", helo="helo.example", proto="ESMTP", login=None
)
SECOND = ClientIdentity(
    addr="192.0.2.8", port=4712, name=None, helo="other.example", proto="SMTP", login=None
)


def _clients_seen(postfix: PrivatePostfix) -> list[str]:
    """``client=`` of each message Postfix's smtpd logged, in order."""
    return [
        line.split(": client=", 1)[1].strip() for line in postfix.log().splitlines() if ": client=" in line
    ]


def _send(
    loop: Loop, conn: SMTPClientConnection, number: int, client: ClientIdentity | None
) -> TransactionResult:
    body = b"Subject: x\r\n\r\nx\r\n"
    return loop.run(
        conn.deliver(message(body, [f"{number}@example.test"], client=client, queue_id=f"Q{number}"))
    )


def test_xclient_to_postfix_switching_clients(
    loop: Loop, postfix_factory: Callable[..., PrivatePostfix]
) -> None:
    # With the client addresses authorized too, XCLIENT stays available and one connection
    # carries each message under its own client, our own address included.
    postfix = postfix_factory(
        {
            **POSTFIX_BASE,
            "inet_protocols": "all",  # to take an IPv6 client address; it still listens on 127.0.0.1
            "mynetworks": "127.0.0.0/8 192.0.2.0/24 [2001:db8::]/32",
            "smtpd_authorized_xclient_hosts": "127.0.0.0/8 192.0.2.0/24 [2001:db8::]/32",
        }
    )
    settings = ClientSettings(helo="relay.test", xclient=True, timeout_command=30.0)
    conn = loop.run(connect(loop.reactor, *postfix.address, settings))
    assert {"NAME", "ADDR", "PORT", "PROTO", "HELO", "LOGIN"} <= set(conn.extensions["XCLIENT"].split())
    ipv6 = ClientIdentity(
        addr="2001:db8::7", port=4713, name="v6.example", helo="v6.example", proto="ESMTP", login="carol"
    )
    for number, client in enumerate([FIRST, FIRST, SECOND, None, ipv6, FIRST]):
        result = _send(loop, conn, number, client)
        assert result.data is not None and result.data.code == 250, result
    loop.run(conn.quit())
    postfix.wait_for_log("disconnect from")
    assert postfix.log().count("connect from localhost[127.0.0.1]") == 1  # one connection
    assert _clients_seen(postfix) == [
        "client.example[192.0.2.7]",
        "client.example[192.0.2.7]",
        "unknown[192.0.2.8]",
        "unknown[127.0.0.1]",  # ourselves again (our name is not known to us: NAME=[UNAVAILABLE])
        "v6.example[2001:db8::7], sasl_method=XCLIENT, sasl_username=carol",
        # LOGIN=[UNAVAILABLE] took carol's login away again:
        "client.example[192.0.2.7]",
    ]


def test_xclient_to_postfix_one_client_per_connection(
    loop: Loop, postfix_factory: Callable[..., PrivatePostfix]
) -> None:
    # Only relaybal's address is authorized (the usual set-up): once the session carries
    # 192.0.2.7, Postfix offers XCLIENT no more, so the connection serves that client only.
    postfix = postfix_factory({**POSTFIX_BASE, "smtpd_authorized_xclient_hosts": "127.0.0.0/8"})
    settings = ClientSettings(helo="relay.test", xclient=True, timeout_command=30.0)
    conn = loop.run(connect(loop.reactor, *postfix.address, settings))
    assert _send(loop, conn, 0, FIRST).data is not None
    assert conn.identity == FIRST and "XCLIENT" not in conn.extensions
    assert not conn.can_carry(SECOND) and not conn.can_carry(None)
    for client in (SECOND, None):
        with pytest.raises(IdentityConflict):
            _send(loop, conn, 9, client)
    assert conn.usable
    assert _send(loop, conn, 1, FIRST).data is not None
    other = loop.run(connect(loop.reactor, *postfix.address, settings))
    assert _send(loop, other, 2, SECOND).data is not None
    assert _send(loop, other, 3, SECOND).data is not None
    loop.run(conn.quit())
    loop.run(other.quit())
    postfix.wait_for_log("disconnect from unknown[192.0.2.8]")
    assert _clients_seen(postfix) == [
        "client.example[192.0.2.7]",
        "client.example[192.0.2.7]",
        "unknown[192.0.2.8]",
        "unknown[192.0.2.8]",
    ]
    assert "9@example.test" not in postfix.log()  # the refused ones never reached MAIL


def test_xclient_not_authorized_falls_back(
    loop: Loop, postfix_factory: Callable[..., PrivatePostfix]
) -> None:
    postfix = postfix_factory({**POSTFIX_BASE, "smtpd_authorized_xclient_hosts": "192.0.2.99"})
    settings = ClientSettings(helo="relay.test", xclient=True, timeout_command=30.0)
    conn = loop.run(connect(loop.reactor, *postfix.address, settings))
    client = ClientIdentity(
        addr="192.0.2.7", port=4711, name="client.example", helo="helo.example", proto="ESMTP", login=None
    )
    for number in range(2):
        result = loop.run(
            conn.deliver(message(b"Subject: x\r\n\r\nx\r\n", [f"{number}@example.test"], client=client))
        )
        assert result.data is not None and result.data.code == 250
    loop.run(conn.quit())
    postfix.wait_for_log("disconnect from")
    log = postfix.log()
    assert "client=localhost[127.0.0.1]" in log and "192.0.2.7" not in log


def test_xforward_to_postfix(loop: Loop, postfix_factory: Callable[..., PrivatePostfix]) -> None:
    postfix = postfix_factory({**POSTFIX_BASE, "smtpd_authorized_xforward_hosts": "127.0.0.0/8"})
    settings = ClientSettings(helo="relay.test", xforward=True, timeout_command=30.0)
    conn = loop.run(connect(loop.reactor, *postfix.address, settings))
    client = ClientIdentity(
        addr=str(ipaddress.ip_address("192.0.2.9")),
        port=4713,
        name="fwd.example",
        helo="fwd-helo.example",
        proto="ESMTP",
        login=None,
    )
    result = loop.run(
        conn.deliver(
            message(b"Subject: x\r\n\r\nx\r\n", ["a@example.test"], client=client, queue_id="RB42QUEUE")
        )
    )
    assert result.data is not None and result.data.code == 250
    loop.run(conn.quit())
    postfix.wait_for_log("orig_client=fwd.example[192.0.2.9]")
    assert "orig_queue_id=RB42QUEUE" in postfix.log()
