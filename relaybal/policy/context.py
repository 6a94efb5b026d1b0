"""What a policy is told: the immutable :class:`PolicyContext` of one question, and its environment."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs
from twisted.logger import Logger

from relaybal.policy.address import MailAddress, mail_address
from relaybal.relay.interfaces import SessionState

__all__ = ["PolicyContext", "PolicyEnvironment", "Stage", "context_of"]


class Stage(enum.Enum):
    """The SMTP stage a policy is asked at (also the name of its hook)."""

    CONNECT = "connect"
    HELO = "helo"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    END_OF_DATA = "end_of_data"


@attrs.frozen
class PolicyContext:
    """Everything a policy may look at when it is asked; never changes once made.

    Connection:
      ``frontend`` (its name), ``session_id`` (unique in the process),
      ``client_address``/``client_port`` (the real client, after a PROXY
      header; None on a UNIX socket), ``server_address``/``server_port``,
      ``proxy_address`` (the proxy's, when a PROXY header was read),
      ``reverse_name`` (the client's PTR name, unverified; None unless the
      frontend has ``reverse_lookup = true`` and the lookup found one in
      time), ``client_name`` (Postfix's ``client_name``: the PTR name when
      its A/AAAA records include the client's address, else ``"unknown"``;
      None when no lookup was made).
    Greeting and TLS:
      ``helo_name`` and ``esmtp`` (EHLO rather than HELO; at the ``helo``
      stage: the greeting being given), ``tls_version``/``tls_cipher``/``tls_cipher_bits`` (None
      without TLS), ``tls_client_subject`` (the client certificate's subject,
      RFC 4514, if one was sent).
    Authentication:
      ``sasl_username``/``sasl_method`` (None unless AUTH succeeded).
    Transaction:
      ``transaction`` (a number that changes with every MAIL transaction),
      ``sender`` (:class:`~relaybal.policy.address.MailAddress`; from the
      ``mail`` stage on), ``mail_params`` (ESMTP MAIL parameters, upper-case
      keys), ``declared_size`` (``SIZE=``), ``recipient`` (at ``rcpt``: the one
      being asked about), ``recipients`` (those accepted so far), ``queue_id``
      (at ``end_of_data``), ``size`` (at ``end_of_data``: octets received),
      ``headers`` (at ``end_of_data``: ``(name, value)`` pairs in order,
      relaybal's own ``Received:`` first).
    Chain:
      ``stage`` (a :class:`Stage`), ``relay_permitted_by`` (the name of the
      policy whose PERMIT at an earlier stage allows relaying now, or None).
    """

    stage: Stage
    frontend: str = "relay"
    session_id: str = ""
    client_address: str | None = None
    client_port: int | None = None
    server_address: str | None = None
    server_port: int | None = None
    proxy_address: str | None = None
    reverse_name: str | None = None
    client_name: str | None = None
    helo_name: str | None = None
    esmtp: bool = False
    tls_version: str | None = None
    tls_cipher: str | None = None
    tls_cipher_bits: int | None = None
    tls_client_subject: str | None = None
    sasl_username: str | None = None
    sasl_method: str | None = None
    transaction: int = 0
    sender: MailAddress | None = None
    mail_params: Mapping[str, str | None] = attrs.field(factory=dict)
    declared_size: int | None = None
    recipient: MailAddress | None = None
    recipients: tuple[MailAddress, ...] = ()
    queue_id: str | None = None
    size: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    relay_permitted_by: str | None = None

    @property
    def relay_permitted(self) -> bool:
        """Whether a PERMIT at an earlier stage already allows relaying."""
        return self.relay_permitted_by is not None

    def header(self, name: str) -> list[str]:
        """The values of every header field called ``name`` (any case), in order."""
        lower = name.lower()
        return [value for field, value in self.headers if field.lower() == lower]


def context_of(
    state: SessionState,
    stage: Stage,
    *,
    helo: str | None = None,
    sender: MailAddress | None = None,
    params: Mapping[str, str | None] | None = None,
    recipient: MailAddress | None = None,
    size: int | None = None,
) -> PolicyContext:
    """The context of ``state`` at ``stage``; the keywords give what the stage's command brings."""
    client = state.client
    local = state.local
    tls = state.tls
    if sender is None and state.sender is not None:
        sender = mail_address(state.sender)
    if params is None:
        params = state.mail_params
    declared = params.get("SIZE")
    permits = state.relay_permits
    return PolicyContext(
        stage=stage,
        frontend=state.frontend,
        session_id=state.session_id,
        client_address=client[0] if client is not None else None,
        client_port=client[1] if client is not None else None,
        server_address=local[0] if local is not None else None,
        server_port=local[1] if local is not None else None,
        proxy_address=state.proxy[0] if state.proxy is not None else None,
        reverse_name=state.reverse_name,
        client_name=state.client_name,
        helo_name=helo if helo is not None else state.helo,
        esmtp=state.esmtp,
        tls_version=tls.version if tls is not None else None,
        tls_cipher=tls.cipher if tls is not None else None,
        tls_cipher_bits=tls.bits if tls is not None else None,
        tls_client_subject=state.tls_client_subject,
        sasl_username=state.user,
        sasl_method=state.auth_mechanism,
        transaction=state.transaction,
        sender=sender,
        mail_params=params,
        declared_size=int(declared) if declared is not None and declared.isdigit() else None,
        recipient=recipient,
        recipients=tuple(mail_address(r) for r in state.recipients),
        queue_id=state.queue_id,
        size=size,
        headers=state.headers,
        relay_permitted_by=next(iter(permits.values())) if permits else None,
    )


@attrs.frozen
class PolicyEnvironment:
    """What a plugin gets to build a policy: where it runs and with what.

    ``reactor`` provides time and networking (a fake clock in tests);
    ``policy`` is the ``[policy.NAME]`` table's name, ``frontend`` the relay
    frontend's; ``state_dir`` is ``global.state_dir`` (for files a policy
    keeps); ``log`` is a Logger in the namespace ``relaybal.policy.NAME``;
    ``resolver`` is a ``twisted.names`` IResolver to use instead of the
    system's (None: make one); ``bucket_store`` is a token-bucket store
    shared by several processes
    (:class:`~relaybal.policy.builtin.ratelimit.IBucketStore`; None: each
    ``ratelimit`` policy keeps its buckets in memory).
    """

    reactor: Any
    policy: str = "policy"
    frontend: str = "relay"
    state_dir: str = "."
    hostname: str = "localhost"
    log: Logger = attrs.field(
        default=attrs.Factory(lambda self: _policy_logger(self.policy), takes_self=True)
    )
    resolver: Any = None
    bucket_store: Any = None


def _policy_logger(name: str) -> Logger:
    return Logger(namespace=f"relaybal.policy.{name}")
