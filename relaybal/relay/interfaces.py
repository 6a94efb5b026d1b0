"""The seams of the relay receiving side: where accepted mail goes, who decides.

- :class:`IMessageSink` / :class:`IMessageWriter`: an accepted message is
  streamed to a writer and committed; the server answers ``250`` only when
  :meth:`IMessageWriter.commit` succeeds. The spool (store-and-forward) and
  cut-through delivery implement these; :mod:`relaybal.relay.memory` is an
  in-memory one.
- :class:`ISessionPolicy`: asked at each stage of a session (connect, HELO,
  AUTH, MAIL, RCPT, DATA, end of data). An answer may be a :class:`~relaybal.smtp.wire.Reply`,
  None ("no opinion": go on) or a Deferred of either; the server reads no
  further command while an answer is pending, so pipelined replies stay in
  order. The policy chain (:class:`relaybal.policy.chain.PolicyChain`) is the
  implementation configured frontends use; plugin authors write
  :class:`relaybal.interfaces.IRelayPolicy` instead.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import TypeAlias

import attrs
from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from relaybal.smtp.wire import Mailbox, Reply

#: What a policy hook returns.
Decision: TypeAlias = "Reply | Deferred[Reply | None] | None"


class SinkError(Exception):
    """A sink cannot take (or keep) a message; ``reply`` is what the client is told.

    The default, ``451 4.3.0``, asks the client to retry later; a spool that is
    full says ``452 4.3.1``; a message refused for good, ``554 5.x.x``.
    """

    def __init__(self, reply: Reply | None = None) -> None:
        self.reply = reply if reply is not None else Reply(451, "4.3.0", "Temporary failure, try again later")
        super().__init__(f"{self.reply.code} {self.reply.status} {self.reply.text}")


@attrs.frozen
class TLSInfo:
    """The TLS session of a client connection, as the ``Received:`` header tells it."""

    version: str
    cipher: str
    bits: int


_session_ids = itertools.count(1)


def _next_session_id() -> str:
    return f"{next(_session_ids):x}"


#: Scopes of a relay permission a policy granted before RCPT (see :attr:`SessionState.relay_permits`).
SESSION_SCOPE = "session"
HELO_SCOPE = "helo"
AUTH_SCOPE = "auth"
TRANSACTION_SCOPE = "transaction"


@attrs.define
class SessionState:
    """What a session knows about its client and its current transaction.

    Policies read it (they must not change it). ``client`` is the real client
    (from the PROXY header when one was read), None for a non-IP client such
    as a UNIX socket; ``proxy`` is the address the connection came from when a
    PROXY header was read.

    ``reverse_name`` and ``client_name`` are known before the greeting when
    the frontend has ``reverse_lookup = true`` (Postfix's
    ``reverse_client_name`` and ``client_name``): ``reverse_name`` is the
    client's PTR name (None: no lookup, or no usable PTR record in time);
    ``client_name`` is that name when its A/AAAA records include the client's
    address (forward-confirmed), ``"unknown"`` when not, and None when no
    lookup was made (``reverse_lookup = false``, or a non-IP client).

    ``relay_permits`` belongs to the policy chain: which policy allowed
    relaying, by scope (``session`` from connect, ``helo``, ``auth``,
    ``transaction`` from MAIL); each scope is forgotten when what it was
    granted for ends (:meth:`reset_transaction`, :meth:`restart_after_tls`).
    """

    frontend: str
    client: tuple[str, int] | None = None
    local: tuple[str, int] | None = None
    proxy: tuple[str, int] | None = None
    helo: str | None = None
    esmtp: bool = False
    tls: TLSInfo | None = None
    user: str | None = None
    session_id: str = attrs.field(factory=_next_session_id)
    reverse_name: str | None = None
    client_name: str | None = None
    tls_client_subject: str | None = None
    auth_mechanism: str | None = None
    relay_permits: dict[str, str] = attrs.field(factory=dict)
    # the transaction
    transaction: int = 0
    sender: Mailbox | None = None
    mail_params: Mapping[str, str | None] = attrs.field(factory=dict)
    recipients: list[Mailbox] = attrs.field(factory=list)
    smtputf8: bool = False
    body_type: str = "7BIT"
    queue_id: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def client_host(self) -> str | None:
        return self.client[0] if self.client is not None else None

    def reset_transaction(self) -> None:
        """Forget the sender and recipients (RSET, end of a message, EHLO)."""
        self.transaction += 1
        self.sender = None
        self.mail_params = {}
        self.recipients = []
        self.smtputf8 = False
        self.body_type = "7BIT"
        self.queue_id = None
        self.headers = ()
        self.relay_permits.pop(TRANSACTION_SCOPE, None)

    def restart_after_tls(self) -> None:
        """STARTTLS: the session starts over (RFC 3207), keeping only the client's address."""
        self.helo = None
        self.esmtp = False
        self.user = None
        self.auth_mechanism = None
        self.relay_permits.pop(HELO_SCOPE, None)
        self.relay_permits.pop(AUTH_SCOPE, None)
        self.reset_transaction()


@attrs.frozen
class Envelope:
    """One message's envelope, as the sink receives it.

    ``sender`` is :data:`~relaybal.smtp.wire.NULL_SENDER` for ``<>``.
    ``client``, ``helo``, ``tls``, ``user`` and ``client_name`` describe the
    session it came from; ``received_at`` is the reactor time of the DATA
    command. ``client_name`` is the session's
    :attr:`SessionState.client_name`: the client's forward-confirmed name,
    ``"unknown"`` when it was looked up without a confirmed name, None when
    no lookup was made (``reverse_lookup = false``, a non-IP client, a
    message relaybal made itself); :attr:`confirmed_client_name` is the name
    only.
    """

    sender: Mailbox
    recipients: tuple[Mailbox, ...]
    mail_params: Mapping[str, str | None]
    smtputf8: bool
    body_type: str
    frontend: str
    client: tuple[str, int] | None
    helo: str | None
    tls: TLSInfo | None
    user: str | None
    received_at: float
    client_name: str | None = None

    @property
    def confirmed_client_name(self) -> str | None:
        """The client's forward-confirmed name; None when there is none (no lookup, or ``"unknown"``)."""
        name = self.client_name
        return name if name and name != "unknown" else None  # relaybal.relay.frontend.UNKNOWN

    @classmethod
    def of(cls, state: SessionState, received_at: float) -> Envelope:
        assert state.sender is not None
        return cls(
            sender=state.sender,
            recipients=tuple(state.recipients),
            mail_params=dict(state.mail_params),
            smtputf8=state.smtputf8,
            body_type=state.body_type,
            frontend=state.frontend,
            client=state.client,
            helo=state.helo,
            tls=state.tls,
            user=state.user,
            received_at=received_at,
            client_name=state.client_name,
        )


class IMessageWriter(Interface):
    """One message being received.

    The body arrives through :meth:`write` in order: CRLF-terminated lines, no
    bare CR or LF, no NUL, dot-stuffing already removed (lines starting with
    ``.`` must be dot-stuffed again when sent on), the session's
    ``Received:`` header first. Exactly one of :meth:`commit` or
    :meth:`abort` is called at the end.
    """

    queue_id = Attribute("str: the message's queue ID, known from the start (it is in Received:)")

    def write(data: bytes) -> None:
        """Take the next piece of the body; must not block."""

    def commit() -> Deferred[str]:
        """Make the message safe; fire with the queue ID once it is.

        Fail with :class:`SinkError` to give the client a chosen reply; any
        other failure becomes ``451 4.3.0`` (and is logged with its traceback).
        """

    def abort() -> None:
        """Forget the message (refused, client gone, RSET); no reply depends on it."""


class IMessageSink(Interface):
    """Where a relay frontend puts the messages it accepts."""

    def begin(envelope: Envelope) -> IMessageWriter:
        """Start a message (at DATA, before ``354``); raise :class:`SinkError` to refuse it."""


class ISessionPolicy(Interface):
    """Decisions at each stage of a session (the policy chain plugs in here).

    Every method returns a :data:`Decision`: None to let the default answer
    stand, a :class:`~relaybal.smtp.wire.Reply` to answer with it (a 4xx/5xx
    refuses the command; a 2xx replaces the default wording; a ``421`` is
    sent and the connection closed), or a Deferred of either. A failed
    Deferred or an exception answers ``451 4.3.0``.
    """

    wants_headers = Attribute(
        "bool (optional, default False): the server collects the message's header block "
        "into SessionState.headers before calling message()"
    )

    def connect(state: SessionState) -> Decision:
        """A client connected (its real address is known); a refusal is sent instead of the greeting."""

    def helo(state: SessionState, name: str) -> Decision:
        """HELO or EHLO ``name``."""

    def auth(state: SessionState) -> Decision:
        """AUTH succeeded (``state.user`` is set); a refusal is sent instead of ``235`` and undoes it."""

    def mail(state: SessionState, sender: Mailbox, params: Mapping[str, str | None]) -> Decision:
        """MAIL FROM, after syntax and size checks."""

    def rcpt(state: SessionState, recipient: Mailbox, params: Mapping[str, str | None]) -> Decision:
        """RCPT TO, after syntax and count checks; ``state.recipients``: those accepted so far."""

    def data(state: SessionState) -> Decision:
        """DATA or the first BDAT, before the sink is asked."""

    def message(state: SessionState, envelope: Envelope, size: int) -> Decision:
        """The whole body was received cleanly (``size`` octets), before it is committed.

        ``state.queue_id`` is the message's queue ID; ``state.headers`` its
        header block when :attr:`wants_headers`.
        """
