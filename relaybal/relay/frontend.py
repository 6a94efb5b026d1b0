"""A relay listener: builds :class:`~relaybal.smtp.server.ESMTPServer` sessions and counts them.

:func:`build_relay_frontend` turns a frontend's configuration into a
:class:`RelayFrontend`, loading its certificate and users file and building
its policy chain (a problem is a :class:`RelaySetupError` naming the key, and
the daemon does not start).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from relaybal.balance.backend import Backend
from relaybal.config import FrontendConfig, PolicyConfig, TLSServerConfig
from relaybal.netaddr import ClientCounts
from relaybal.relay.interfaces import IMessageSink, ISessionPolicy
from relaybal.relay.memory import MemoryMessageSink
from relaybal.relay.policy import LoopbackRelayPolicy
from relaybal.smtp import auth
from relaybal.smtp.server import ESMTPServer, ServerSettings
from relaybal.smtp.wire import Limits, reply


class RelaySetupError(Exception):
    """A relay frontend cannot be built (unreadable certificate, bad users file)."""


def settings_for(config: FrontendConfig, tls_available: bool, auth_available: bool) -> ServerSettings:
    """The per-session settings of a frontend configuration."""
    hostname = config.hostname or "localhost"
    banner = f"{hostname} {config.banner}".rstrip()
    return ServerSettings(
        frontend=config.name,
        hostname=hostname,
        banner=reply(220, "", banner),
        limits=Limits(
            command_line=config.max_command_line,
            text_line=config.max_line_length,
            path=config.max_path_length,
            local_part=config.max_local_part,
        ),
        max_message_size=config.max_message_size,
        max_recipients=config.max_recipients,
        normalize=config.bare_newline == "normalize",
        require_tls=config.require_tls,
        tls_available=tls_available,
        auth_mechanisms=tuple(config.auth.mechanisms) if auth_available and config.auth else (),
        allow_plaintext_auth=config.allow_plaintext_auth,
        accept_proxy=tuple(config.accept_proxy),
        proxy_timeout=config.proxy_timeout,
        timeout_client=config.timeout_client,
        timeout_data=config.timeout_data,
        timeout_session=config.timeout_session,
        maxconn_per_client=config.maxconn_per_client,
    )


def load_tls(config: TLSServerConfig) -> CertificateOptions:
    """Server TLS options from a PEM certificate (chain) file and a PEM key file."""
    try:
        with open(config.certificate, "rb") as f:
            chain_pem = f.read()
        with open(config.key, "rb") as f:
            key_pem = f.read()
    except OSError as e:
        raise RelaySetupError(f"cannot read {e.filename}: {e.strerror}") from None
    try:
        certificates = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise RelaySetupError(f"{config.certificate}: no PEM certificate in it") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise RelaySetupError(f"cannot load the certificate or key: {e}") from None
    minimum = TLSVersion.TLSv1_3 if config.min_version == "TLSv1.3" else TLSVersion.TLSv1_2
    try:
        # cryptography objects, which pyOpenSSL prefers to its own (deprecated) ones.
        options = CertificateOptions(
            privateKey=key,  # type: ignore[arg-type]
            certificate=certificates[0],  # type: ignore[arg-type]
            extraCertChain=certificates[1:],  # type: ignore[arg-type]
            raiseMinimumTo=minimum,
        )
        options.getContext()  # builds the OpenSSL context now: a key that does not fit fails here
        return options
    except Exception as e:
        raise RelaySetupError(f"the certificate and key do not fit together: {e}") from None


class RelayFrontend(Factory):
    """A relay listener and the state its sessions share: counters, sink, policy, TLS, AUTH."""

    noisy = False

    def __init__(
        self,
        config: FrontendConfig,
        backend: Backend,
        reactor: Any,
        *,
        sink: IMessageSink,
        policy: ISessionPolicy | None = None,
        tls_options: CertificateOptions | None = None,
        portal: Portal | None = None,
        auth_pool: ThreadPool | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.backend = backend
        self.reactor = reactor
        self.sink = sink
        self.policy: ISessionPolicy = policy if policy is not None else LoopbackRelayPolicy()
        self.tls_options = tls_options
        self.portal = portal
        self.auth_pool = auth_pool
        self.settings = settings_for(config, tls_options is not None, portal is not None)
        self.ports: list[IListeningPort] = []
        self.current = 0
        self.max_current = 0
        self.total = 0
        self.errors = 0
        self.messages = 0
        self.bytes_in = 0
        self.bytes_out = 0
        """Bytes of replies sent to clients."""
        self.per_client = ClientCounts()
        self.draining = False
        self.sessions: set[ESMTPServer] = set()

    def buildProtocol(self, addr: Any) -> ESMTPServer:
        return ESMTPServer(self)

    def startFactory(self) -> None:
        if self.auth_pool is not None and not self.auth_pool.started:
            self.auth_pool.start()

    def stopFactory(self) -> None:
        if self.auth_pool is not None and self.auth_pool.started:
            self.auth_pool.stop()
        close = getattr(self.policy, "close", None)
        if close is not None:
            close()  # idle policy-server connections and the like; sessions still open keep working

    # -- accounting

    def begin_drain(self) -> None:
        """SIGTERM: keep listening, answer new clients ``421 4.3.2``, end sessions between transactions.

        A session in the middle of a transaction finishes it (its message is
        committed and answered) and is closed at its next command.
        """
        self.draining = True
        for session in list(self.sessions):
            session.drain()

    def session_started(self, session: ESMTPServer) -> bool:
        """Count a new session; False when it is over ``maxconn`` (it is refused, still counted)."""
        self.sessions.add(session)
        self.current += 1
        self.total += 1
        self.max_current = max(self.max_current, self.current)
        if self.current > self.config.maxconn:
            self.errors += 1
            return False
        return True

    def count_client(self, host: str, limit: int) -> bool:
        """Count one more session from ``host``; False (and not counted) past ``limit``."""
        if self.per_client.take(host, limit):
            return True
        self.errors += 1
        return False

    def session_ended(self, session: ESMTPServer) -> None:
        self.sessions.discard(session)
        self.current -= 1
        host = session.counted_client
        if host is not None:
            self.per_client.release(host)

    def message_accepted(self, size: int) -> None:
        self.messages += 1
        self.bytes_in += size


def build_relay_frontend(
    config: FrontendConfig,
    backend: Backend,
    reactor: Any,
    sink: IMessageSink | None = None,
    policy: ISessionPolicy | None = None,
    *,
    policies: Mapping[str, PolicyConfig] | None = None,
    state_dir: str = ".",
    bucket_store: Any = None,
) -> RelayFrontend:
    """A :class:`RelayFrontend` for ``config``: certificate and users file loaded, policy chain built.

    Without ``sink`` the messages go to an in-memory sink that counts them and
    keeps nothing. Without ``policy``, the frontend's ``policies`` are built
    from ``policies`` (the configuration's ``[policy.NAME]`` tables): a
    :class:`~relaybal.policy.chain.PolicyChain`, or loopback-only relaying
    when it lists none; ``bucket_store`` (an
    :class:`~relaybal.policy.builtin.ratelimit.IBucketStore` shared between
    processes) replaces ``ratelimit``'s in-memory buckets. Raises
    :class:`RelaySetupError` with the dotted key of the problem.
    """
    tls_options = None
    if config.tls is not None:
        try:
            tls_options = load_tls(config.tls)
        except RelaySetupError as e:
            raise RelaySetupError(f"frontend.{config.name}.tls: {e}") from None
    portal = None
    pool = None
    if config.auth is not None:
        try:
            users = auth.UsersFile(config.auth.users)
        except auth.UsersFileError as e:
            raise RelaySetupError(f"frontend.{config.name}.auth.users: {e}") from None
        pool = ThreadPool(minthreads=0, maxthreads=2, name=f"relaybal-auth-{config.name}")

        def run(check: Any) -> Deferred[bool]:
            return deferToThreadPool(reactor, pool, check)

        portal = auth.make_portal(users, run)
    if sink is None:
        sink = MemoryMessageSink(reactor.seconds, keep=0)
    if policy is None and config.policies:
        from relaybal.policy.discovery import build_policy_chain
        from relaybal.policy.plugin import PolicySetupError

        try:
            policy = build_policy_chain(
                config, policies or {}, reactor, state_dir=state_dir, hostname=config.hostname or "localhost",
                bucket_store=bucket_store,
            )  # fmt: skip
        except PolicySetupError as e:
            raise RelaySetupError(str(e)) from None
    return RelayFrontend(
        config, backend, reactor, sink=sink, policy=policy, tls_options=tls_options, portal=portal,
        auth_pool=pool,
    )  # fmt: skip
