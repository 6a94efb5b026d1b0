"""In-memory fakes for driving relay sessions without sockets or a real clock.

For relaybal's own tests and for policy plugin authors::

    harness = RelayHarness()                      # a frontend on a fake clock
    client = harness.connect("192.0.2.7")         # one session on a StringTransport
    client.send(b"EHLO me\\r\\n")
    assert client.replies()[-1].startswith(b"250 ")

Accepted messages end up in ``harness.sink`` (a
:class:`~relaybal.relay.memory.MemoryMessageSink`).
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import MemoryReactorClock, StringTransport

from relaybal.balance.backend import Backend
from relaybal.config import parse_config
from relaybal.relay.frontend import RelayFrontend
from relaybal.relay.interfaces import ISessionPolicy
from relaybal.relay.memory import MemoryMessageSink
from relaybal.smtp import auth
from relaybal.smtp.server import ESMTPServer


def relay_config_dict(**frontend: Any) -> dict[str, Any]:
    """A configuration document with one relay frontend ``relay`` (keys overridable)."""
    fe = {"mode": "relay", "listen": ["tcp:2525"], "backend": "gw", "hostname": "relay.test", **frontend}
    return {
        "global": {"hostname": "relay.test"},
        "frontend": {"relay": fe},
        "backend": {"gw": {"server": [{"name": "gw1", "address": "127.0.0.1:10025"}]}},
    }


class FakeTLSConnection:
    """Stands in for ``OpenSSL.SSL.Connection`` in :class:`TLSStringTransport`."""

    def get_protocol_version_name(self) -> str:
        return "TLSv1.3"

    def get_cipher_name(self) -> str:
        return "TLS_AES_256_GCM_SHA384"

    def get_cipher_bits(self) -> int:
        return 256


class TLSStringTransport(StringTransport):
    """A StringTransport whose ``startTLS`` is recorded (no real handshake)."""

    TLS = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.tls_options: Any = None
        self.written_before_tls = b""

    def startTLS(self, options: Any, normal: bool = True) -> None:
        self.tls_options = options
        self.written_before_tls = bytes(self.io.getvalue())
        self.TLS = True

    def getHandle(self) -> Any:
        if not self.TLS:
            raise AttributeError("no TLS")
        return FakeTLSConnection()


class Client:
    """One fake client connection to a :class:`RelayHarness` frontend."""

    def __init__(self, session: ESMTPServer, transport: TLSStringTransport) -> None:
        self.session = session
        self.transport = transport
        self._seen = 0

    def send(self, data: bytes) -> None:
        """Deliver ``data`` to the session as one read."""
        self.session.dataReceived(data)

    def output(self) -> bytes:
        """Everything written since the last call."""
        value = bytes(self.transport.io.getvalue())
        out = value[self._seen :]
        self._seen = len(value)
        return out

    def replies(self) -> list[bytes]:
        """The reply lines written since the last call (without CRLF)."""
        out = self.output()
        return out.split(b"\r\n")[:-1] if out else []

    def codes(self) -> list[int]:
        """The code of each complete reply written since the last call (multi-line counted once)."""
        return [int(line[:3]) for line in self.replies() if line[3:4] != b"-"]

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    def lose(self) -> None:
        """The client goes away."""
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.session.connectionLost(Failure(ConnectionDone()))


class RelayHarness:
    """A :class:`RelayFrontend` over a ``MemoryReactorClock``, with a memory sink.

    ``frontend`` keys override the relay frontend's configuration (as in the
    TOML file); ``tls=True`` gives STARTTLS (with :class:`TLSStringTransport`
    recording the switch); ``users`` is ``{name: password}`` for AUTH (checked
    synchronously, with a cheap scrypt cost).
    """

    def __init__(
        self,
        policy: ISessionPolicy | None = None,
        *,
        tls: bool = False,
        users: dict[str, str] | None = None,
        **frontend: Any,
    ) -> None:
        if users is not None:
            frontend.setdefault("auth", {"users": "/dev/null"})
        if tls:
            frontend.setdefault("tls", {"certificate": "cert.pem", "key": "key.pem"})
        config = parse_config(relay_config_dict(**frontend))
        self.config = config.frontends["relay"]
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_700_000_000)
        self.backend = Backend(config.backends["gw"], self.reactor, random.Random(1))
        self.sink = MemoryMessageSink(self.reactor.seconds)
        portal = None
        if users is not None:
            self.users = _StaticUsers(
                {name: auth.PasswordHash.parse(auth.hash_password(pw, ln=4)) for name, pw in users.items()}
            )
            portal = auth.make_portal(self.users, _run_now)
        self.frontend = RelayFrontend(
            self.config,
            self.backend,
            self.reactor,
            sink=self.sink,
            policy=policy,
            tls_options=CertificateOptions() if tls else None,
            portal=portal,
        )

    def connect(self, host: str = "127.0.0.1", port: int = 40000, local_port: int = 25) -> Client:
        """A new session from ``host``:``port``; the greeting is left to read."""
        address_type = IPv6Address if ":" in host else IPv4Address
        peer = address_type("TCP", host, port)
        local = address_type("TCP", "::1" if ":" in host else "127.0.0.1", local_port)
        session = self.frontend.buildProtocol(peer)
        transport = TLSStringTransport(peerAddress=peer, hostAddress=local)
        session.makeConnection(transport)  # type: ignore[no-untyped-call]
        return Client(session, transport)


class _StaticUsers:
    """A users table without a file (what :class:`~relaybal.smtp.auth.UsersFile` looks like)."""

    def __init__(self, users: dict[str, auth.PasswordHash]) -> None:
        self.users = users

    def lookup(self, name: str) -> tuple[str, auth.PasswordHash] | None:
        entry = self.users.get(name)
        return None if entry is None else (repr(entry), entry)


def _run_now(check: Any) -> Deferred[Any]:
    try:
        return succeed(check())
    except Exception as e:
        return fail(e)


def write_self_signed(directory: str, hostname: str = "relay.test") -> tuple[str, str]:
    """Write a fresh self-signed certificate and its key (PEM) into ``directory``.

    Returns ``(certificate path, key path)``; for tests, never for production.
    """
    import datetime
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


__all__ = [
    "Client",
    "FakeTLSConnection",
    "RelayHarness",
    "TLSStringTransport",
    "relay_config_dict",
    "write_self_signed",
]
