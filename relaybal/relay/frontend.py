"""A relay listener: builds :class:`~relaybal.smtp.server.ESMTPServer` sessions and counts them.

:func:`build_relay_frontend` turns a frontend's configuration into a
:class:`RelayFrontend`, loading its certificate and users file and building
its policy chain (a problem is a :class:`RelaySetupError` naming the key, and
the daemon does not start).

:func:`lookup_client_name` is the client name lookup of ``reverse_lookup =
true`` (what Postfix's smtpd does with ``smtpd_peername_lookup``): a PTR
lookup, then the forward confirmation of the name it found.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.protocol import Factory
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.internet.threads import deferToThreadPool
from twisted.names import dns
from twisted.names.error import DomainError
from twisted.python.failure import Failure
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
        reverse_lookup=config.reverse_lookup,
        reverse_lookup_timeout=config.reverse_lookup_timeout,
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


#: ``client_name`` of a client whose name was looked up but not confirmed (Postfix's word).
UNKNOWN: Final = "unknown"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


@attrs.frozen
class ClientName:
    """What a client name lookup found (Postfix's ``reverse_client_name`` and ``client_name``).

    ``reverse_name``: the PTR name, unverified (None: none found, or not in
    time). ``client_name``: ``reverse_name`` when its A/AAAA records include
    the client's address, else :data:`UNKNOWN`. ``problem``: why the name is
    unknown, worth a log line (None when all went well, or there simply is
    no PTR record).
    """

    reverse_name: str | None
    client_name: str
    problem: str | None = None


def usable_hostname(name: str) -> bool:
    """Whether a PTR answer is a host name that may be used (not malformed, not numeric).

    As Postfix: a numeric "name" (``192.0.2.7``, ``1234``) would let a PTR
    record's owner pass for an address in access checks.
    """
    if not name or len(name) > 253 or not name.isascii():
        return False
    labels = name.split(".")
    if not all(_LABEL.match(label) for label in labels):
        return False
    if all(label.isdigit() for label in labels):
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return True
    return False


def _client_ip(host: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _ptr_name(result: Any) -> str | None:
    """The first PTR name in a lookup's answers (without its final dot), if it is usable."""
    for rr in result[0]:
        if rr.type == dns.PTR:
            name = bytes(rr.payload.name.name).decode("ascii", "replace").rstrip(".")
            return name if usable_hostname(name) else None
    return None


def _addresses(result: Any, record_type: int) -> set[IPAddress]:
    found: set[IPAddress] = set()
    for rr in result[0]:
        if rr.type == record_type:
            try:
                found.add(ipaddress.ip_address(bytes(rr.payload.address)))
            except ValueError:
                continue
    return found


def _resolve(
    resolver: Any, ip: IPAddress, timeout: float, wanted: Callable[[], bool]
) -> Deferred[ClientName]:
    """PTR, then A (AAAA for IPv6) of the name found (while still ``wanted``); never fails."""
    each = (timeout,)  # the resolver gives up on its own too, so no query outlives the session's timer long

    def forward(name: str | None) -> ClientName | Deferred[ClientName]:
        if name is None:
            return ClientName(None, UNKNOWN)
        if not wanted():  # timed out, or the client left: no point in asking more
            return ClientName(name, UNKNOWN)
        if ip.version == 4:
            lookup, record_type = resolver.lookupAddress, dns.A
        else:
            lookup, record_type = resolver.lookupIPV6Address, dns.AAAA

        def confirm(result: Any) -> ClientName:
            if ip in _addresses(result, record_type):
                return ClientName(name, name)
            return ClientName(name, UNKNOWN, f"hostname {name} does not resolve to address {ip}")

        def unconfirmed(failure: Failure) -> ClientName:
            why = "no such name" if failure.check(DomainError) else _error_text(failure)
            return ClientName(name, UNKNOWN, f"hostname {name} does not resolve to address {ip}: {why}")

        d: Deferred[Any] = maybeDeferred(lookup, name, timeout=each)
        return d.addCallbacks(confirm, unconfirmed)

    def no_ptr(failure: Failure) -> ClientName:
        if failure.check(DomainError):  # NXDOMAIN: the address simply has no name
            return ClientName(None, UNKNOWN)
        return ClientName(None, UNKNOWN, f"name lookup failed: {_error_text(failure)}")

    d: Deferred[Any] = maybeDeferred(resolver.lookupPointer, ip.reverse_pointer, timeout=each)
    d.addCallback(_ptr_name)
    d.addCallback(forward)
    return d.addErrback(no_ptr)


def _error_text(failure: Failure) -> str:
    return failure.getErrorMessage() or type(failure.value).__name__


def lookup_client_name(resolver: Any, reactor: Any, host: str, timeout: float) -> Deferred[ClientName]:
    """Look up the name of client ``host`` as Postfix's smtpd does; fires within ``timeout`` seconds.

    The PTR record of the address gives ``reverse_name``; the name's A
    records (AAAA for an IPv6 client) must include the address for it to be
    ``client_name``. No PTR record, a malformed or numeric name, a failed
    lookup: both unknown. Past ``timeout`` (for both lookups together) the
    result is both unknown too, whatever arrives later. ``resolver`` is a
    ``twisted.names`` IResolver. The Deferred never fails; cancelling it
    stops its timer (the client went away).
    """
    ip = _client_ip(host)
    if ip is None:
        return succeed(ClientName(None, UNKNOWN))
    timer: list[IDelayedCall] = []

    def cancel(_: Deferred[ClientName]) -> None:
        if timer and timer[0].active():
            timer[0].cancel()

    result: Deferred[ClientName] = Deferred(cancel)

    def finish(found: ClientName) -> None:
        if result.called:
            return  # already timed out (or cancelled): a late answer changes nothing
        if timer and timer[0].active():
            timer[0].cancel()
        result.callback(found)

    late = ClientName(None, UNKNOWN, f"name lookup timed out after {timeout:g}s")
    timer.append(reactor.callLater(timeout, finish, late))
    _resolve(resolver, ip, timeout, lambda: not result.called).addCallback(finish)
    return result


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
        resolver: Any = None,
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
        self.resolver: Any = resolver
        """The ``twisted.names`` IResolver of ``reverse_lookup`` (None: the system's, made when needed)."""
        self._own_resolver = False

    def buildProtocol(self, addr: Any) -> ESMTPServer:
        return ESMTPServer(self)

    def lookup_client_name(self, host: str) -> Deferred[ClientName]:
        """The name of client ``host`` (``reverse_lookup``); fires within ``reverse_lookup_timeout``."""
        if self.resolver is None:
            from twisted.names import client

            self.resolver = client.Resolver(resolv="/etc/resolv.conf", reactor=self.reactor)
            self._own_resolver = True
        return lookup_client_name(self.resolver, self.reactor, host, self.settings.reverse_lookup_timeout)

    def startFactory(self) -> None:
        if self.auth_pool is not None and not self.auth_pool.started:
            self.auth_pool.start()

    def stopFactory(self) -> None:
        if self.auth_pool is not None and self.auth_pool.started:
            self.auth_pool.stop()
        close = getattr(self.policy, "close", None)
        if close is not None:
            close()  # idle policy-server connections and the like; sessions still open keep working
        if self._own_resolver:
            # twisted.names re-reads resolv.conf every minute for ever; a replaced frontend stops that.
            call = getattr(self.resolver, "_parseCall", None)
            if call is not None and call.active():
                call.cancel()
            self.resolver = None
            self._own_resolver = False

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
    resolver: Any = None,
) -> RelayFrontend:
    """A :class:`RelayFrontend` for ``config``: certificate and users file loaded, policy chain built.

    Without ``sink`` the messages go to an in-memory sink that counts them and
    keeps nothing. Without ``policy``, the frontend's ``policies`` are built
    from ``policies`` (the configuration's ``[policy.NAME]`` tables): a
    :class:`~relaybal.policy.chain.PolicyChain`, or loopback-only relaying
    when it lists none; ``bucket_store`` (an
    :class:`~relaybal.policy.builtin.ratelimit.IBucketStore` shared between
    processes) replaces ``ratelimit``'s in-memory buckets; ``resolver`` (a
    ``twisted.names`` IResolver) replaces the system's for ``reverse_lookup``
    and the policies. Raises :class:`RelaySetupError` with the dotted key of
    the problem.
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
                bucket_store=bucket_store, resolver=resolver,
            )  # fmt: skip
        except PolicySetupError as e:
            raise RelaySetupError(str(e)) from None
    return RelayFrontend(
        config, backend, reactor, sink=sink, policy=policy, tls_options=tls_options, portal=portal,
        auth_pool=pool, resolver=resolver,
    )  # fmt: skip
