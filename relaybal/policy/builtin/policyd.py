"""``policyd``: ask a Postfix policy server (SMTPD_POLICY_README's delegation protocol).

For each configured stage (``stages``, default ``["rcpt"]``) relaybal sends
the attribute set Postfix sends (``request=smtpd_access_policy``,
``protocol_state``, ``client_address``, ``sender``, ``recipient``, ...), one
``name=value`` a line and an empty line, and reads ``action=...`` back.
Connections are reused (one request at a time each; at most ``connections``
kept idle, each for at most ``max_idle``); a reused connection that the
server closed meanwhile is retried once on a fresh one. The chain's
``timeout`` bounds the whole question; an unreachable server, a timeout or an
answer that is not an access(5) action yields the policy's
``default_action`` (by default ``451 4.3.0``).

The actions (Postfix access(5)) become verdicts:

=========================  ======================================================
``OK``, digits only        no opinion (``ok_permits = true``: PERMIT, which
                           allows relaying; only for servers that decide that)
``DUNNO``                  no opinion
``REJECT [text]``          REJECT ``554 5.7.1`` (the text may start with a 5.x.x code)
``DEFER [text]``           DEFER ``450 4.7.1``
``DEFER_IF_PERMIT [text]`` DEFER_IF_PERMIT ``450 4.7.1`` (greylisting)
``DEFER_IF_REJECT [text]`` DEFER_IF_REJECT ``450 4.7.1``
``4NN/5NN [x.y.z] text``   DEFER / REJECT with that reply (``421``: DISCONNECT)
``PREPEND``, ``WARN``,     no opinion, logged (relaybal does not edit messages)
``INFO``
``DISCARD [text]``         REJECT ``554 5.7.1``: nothing is delivered, and nothing is
                           lost silently
``HOLD``, ``FILTER``,      DEFER ``451 4.3.5`` and an error in the log: relaybal
``REDIRECT``, ``BCC``      cannot do what the server asked, so the mail waits
                           with the client until the configuration is fixed
``permit``, ``reject``,    as OK, REJECT, DEFER, DUNNO
``defer``, ``dunno``
anything else              the policy's ``default_action``
=========================  ======================================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

import relaybal
from relaybal.interfaces import VerdictResult
from relaybal.policy.context import PolicyContext, PolicyEnvironment, Stage
from relaybal.policy.options import (
    OptionReader,
    boolean,
    choice,
    client_endpoint,
    integer,
    positive_duration,
    text,
)
from relaybal.policy.plugin import PolicyBase, PolicyError, PolicyPlugin
from relaybal.policy.verdicts import (
    CONTINUE,
    PERMIT,
    Kind,
    Verdict,
    defer,
    defer_if_permit,
    defer_if_reject,
    parse_reply,
    reject,
)
from relaybal.smtp.wire import CommandError, xtext_decode

STAGES: Final = ("connect", "helo", "mail", "rcpt", "data", "end_of_data")
PROTOCOL_STATES: Final = {
    Stage.CONNECT: "CONNECT",
    Stage.HELO: "EHLO",
    Stage.MAIL: "MAIL",
    Stage.RCPT: "RCPT",
    Stage.DATA: "DATA",
    Stage.END_OF_DATA: "END-OF-MESSAGE",
}
CANNOT_DO: Final = defer("Error: server configuration problem", "4.3.5", 451)


class PolicydError(PolicyError):
    """The policy server's answer is not usable (no action, an unknown action, a broken connection)."""


# --------------------------------------------------------------------------- access(5) actions

_STATUS_PREFIX = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})\s+(.*)$")


def _text_and_status(rest: str, default_text: str, default_status: str) -> tuple[str, str]:
    m = _STATUS_PREFIX.match(rest)
    if m is not None and m.group(1)[0] == default_status[0]:
        return m.group(2).strip() or default_text, m.group(1)
    return rest.strip() or default_text, default_status


def action_verdict(action: str, *, ok_permits: bool = False, log: Logger | None = None) -> Verdict:
    """The verdict for one access(5) action; raises :class:`PolicydError` for one that is not."""
    action = action.strip()
    word, _, rest = action.partition(" ")
    rest = rest.strip()
    upper = word.upper()
    if re.fullmatch(r"[45]\d\d", word):
        reply = parse_reply(action, "Access denied" if word[0] == "5" else "Try again later")
        if reply is None:
            raise PolicydError(f"bad reply in action {action!r}")
        if reply.code == 421:
            return Verdict(Kind.DISCONNECT, reply)
        return Verdict(Kind.REJECT if reply.code >= 500 else Kind.DEFER, reply)
    if upper == "OK" or action.isdigit() or word == "permit":
        return PERMIT if ok_permits else CONTINUE
    if upper == "DUNNO" or word == "dunno":
        return CONTINUE
    if upper == "REJECT" or word == "reject":
        text, status = _text_and_status(rest, "Access denied", "5.7.1")
        return reject(text, status, 554)
    if upper in ("DEFER", "DEFER_IF_PERMIT", "DEFER_IF_REJECT") or word == "defer":
        text, status = _text_and_status(rest, "Try again later", "4.7.1")
        maker = {"DEFER_IF_PERMIT": defer_if_permit, "DEFER_IF_REJECT": defer_if_reject}.get(upper, defer)
        return maker(text, status, 450)
    if upper in ("PREPEND", "WARN", "INFO"):
        if log is not None:
            log.info("policy server said {action!r}: logged only (relaybal edits no messages)", action=action)
        return CONTINUE
    if upper == "DISCARD":
        text, status = _text_and_status(rest, "Message refused by policy", "5.7.1")
        return reject(text, status, 554)
    if upper in ("HOLD", "FILTER", "REDIRECT", "BCC"):
        if log is not None:
            log.error(
                "policy server said {action!r}, which relaybal cannot do: deferring with 451 4.3.5",
                action=action,
            )
        return CANNOT_DO
    raise PolicydError(f"unknown action {action!r}")


# --------------------------------------------------------------------------- the request


def _clean(value: object) -> str:
    return "" if value is None else str(value).replace("\r", " ").replace("\n", " ")


def request_attributes(context: PolicyContext, policy_context: str = "") -> dict[str, str]:
    """The Postfix policy request for ``context`` (SMTPD_POLICY_README, Postfix 3.x attribute set)."""
    stage = context.stage
    sender = context.sender
    recipient = context.recipient
    count = len(context.recipients) if stage in (Stage.RCPT, Stage.DATA, Stage.END_OF_DATA) else 0
    auth = context.mail_params.get("AUTH")
    try:
        sasl_sender = xtext_decode(auth) if auth and auth != "<>" else ""
    except CommandError:
        sasl_sender = ""
    size = context.size if stage is Stage.END_OF_DATA else context.declared_size
    attributes = {
        "request": "smtpd_access_policy",
        "protocol_state": "HELO" if stage is Stage.HELO and not context.esmtp else PROTOCOL_STATES[stage],
        "protocol_name": "ESMTP" if context.esmtp else "SMTP",
        "helo_name": context.helo_name or "",
        "queue_id": context.queue_id or "",
        "sender": str(sender) if sender is not None and not sender.is_null else "",
        "recipient": str(recipient) if recipient is not None else "",
        "recipient_count": str(count),
        "client_address": context.client_address or "",
        # Postfix's meanings: the forward-confirmed name, and the PTR name as found ("unknown": none).
        "client_name": context.client_name or "unknown",
        "reverse_client_name": context.reverse_name or "unknown",
        "instance": f"{context.session_id}.{context.transaction}",
        "sasl_method": context.sasl_method or "",
        "sasl_username": context.sasl_username or "",
        "sasl_sender": sasl_sender,
        "size": str(size) if size is not None else "0",
        "ccert_subject": context.tls_client_subject or "",
        "ccert_issuer": "",
        "ccert_fingerprint": "",
        "ccert_pubkey_fingerprint": "",
        "encryption_protocol": context.tls_version or "",
        "encryption_cipher": context.tls_cipher or "",
        "encryption_keysize": str(context.tls_cipher_bits) if context.tls_cipher_bits is not None else "",
        "etrn_domain": "",
        "stress": "",
        "client_port": str(context.client_port) if context.client_port is not None else "",
        "policy_context": policy_context,
        "server_address": context.server_address or "",
        "server_port": str(context.server_port) if context.server_port is not None else "",
        "compatibility_level": "3.6",
        "mail_version": f"relaybal-{relaybal.__version__}",
    }
    return {key: _clean(value) for key, value in attributes.items()}


def encode_request(attributes: Mapping[str, str]) -> bytes:
    return "".join(f"{key}={value}\n" for key, value in attributes.items()).encode("utf-8") + b"\n"


# --------------------------------------------------------------------------- the connection


class PolicyClientProtocol(LineOnlyReceiver):
    """One connection to a policy server: one request at a time, answers are ``name=value`` lines."""

    delimiter = b"\n"
    MAX_LENGTH = 64 * 1024

    def __init__(self, pool: PolicyServerClient) -> None:
        self.pool = pool
        self.pending: Deferred[dict[str, str]] | None = None
        self.answer: dict[str, str] = {}
        self.connected_now = False
        self.idle_timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.connected_now = True

    def ask(self, data: bytes) -> Deferred[dict[str, str]]:
        d: Deferred[dict[str, str]] = Deferred(lambda _: self.abort())
        self.pending = d
        self.answer = {}
        assert self.transport is not None
        self.transport.write(data)
        return d

    def abort(self) -> None:
        self.pending = None
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def lineReceived(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        d = self.pending
        if d is None:
            self.abort()  # an answer nobody asked for: the conversation is out of step
            return
        if line:
            name, eq, value = line.decode("utf-8", "replace").partition("=")
            if eq:
                self.answer[name.strip()] = value.strip()
            return
        self.pending = None
        answer, self.answer = self.answer, {}
        self.pool.release(self)
        d.callback(answer)

    def lineLengthExceeded(self, line: bytes) -> None:
        d = self.pending
        self.abort()
        if d is not None and not d.called:
            d.errback(PolicydError("answer line too long"))

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self.connected_now = False
        self.pool.forget(self)
        d = self.pending
        self.pending = None
        if d is not None and not d.called:
            d.errback(reason)


class _PolicyClientFactory(Factory):
    noisy = False  # no "Starting factory" line per connection

    def __init__(self, pool: PolicyServerClient) -> None:
        self.pool = pool

    def buildProtocol(self, addr: IAddress | None) -> PolicyClientProtocol:
        return PolicyClientProtocol(self.pool)


class PolicyServerClient:
    """Connections to one policy server, reused."""

    def __init__(self, reactor: Any, endpoint: str, *, connections: int = 4, max_idle: float = 300.0) -> None:
        self.reactor = reactor
        self.endpoint = clientFromString(reactor, endpoint)
        self.connections = connections
        self.max_idle = max_idle
        self.idle: list[PolicyClientProtocol] = []
        self.opened = 0

    def query(self, attributes: Mapping[str, str]) -> Deferred[dict[str, str]]:
        """Send one request; fires with the answer's attributes."""
        data = encode_request(attributes)
        while self.idle:
            protocol = self.idle.pop()
            self._stop_timer(protocol)
            if protocol.connected_now:
                d = protocol.ask(data)

                def retry(failure: Failure) -> Deferred[dict[str, str]] | Failure:
                    # The server closed an idle connection (as Postfix's servers do): once more, fresh.
                    if failure.check(ConnectionDone, ConnectionLost):
                        return self._fresh(data)
                    return failure

                d.addErrback(retry)
                return d
        return self._fresh(data)

    def _fresh(self, data: bytes) -> Deferred[dict[str, str]]:
        self.opened += 1
        connecting: Deferred[PolicyClientProtocol] = self.endpoint.connect(_PolicyClientFactory(self))
        return connecting.addCallback(lambda connected: connected.ask(data))

    def release(self, protocol: PolicyClientProtocol) -> None:
        """``protocol`` answered: keep it for the next request, or close it."""
        if not protocol.connected_now:
            return
        if len(self.idle) >= self.connections:
            protocol.abort()
            return
        protocol.idle_timer = self.reactor.callLater(self.max_idle, self._expire, protocol)
        self.idle.append(protocol)

    def _expire(self, protocol: PolicyClientProtocol) -> None:
        protocol.idle_timer = None
        if protocol in self.idle:
            self.idle.remove(protocol)
        if protocol.transport is not None:
            protocol.transport.loseConnection()

    def _stop_timer(self, protocol: PolicyClientProtocol) -> None:
        if protocol.idle_timer is not None and protocol.idle_timer.active():
            protocol.idle_timer.cancel()
        protocol.idle_timer = None

    def forget(self, protocol: PolicyClientProtocol) -> None:
        """``protocol`` lost its connection."""
        self._stop_timer(protocol)
        if protocol in self.idle:
            self.idle.remove(protocol)

    def close(self) -> None:
        for protocol in list(self.idle):
            self._stop_timer(protocol)
            if protocol.transport is not None:
                protocol.transport.loseConnection()
        self.idle = []


# --------------------------------------------------------------------------- the policy


@attrs.frozen
class PolicydSettings:
    server: str
    stages: tuple[str, ...] = ("rcpt",)
    ok_permits: bool = False
    connections: int = 4
    max_idle: float = 300.0
    policy_context: str = ""


def read_options(r: OptionReader) -> PolicydSettings:
    stages = r.get_list("stages", choice(STAGES))
    if stages is not None and not stages and not any(p.key.startswith("stages") for p in r.problems):
        r.error("stages", f"is empty (expected some of: {', '.join(STAGES)})")
    return PolicydSettings(
        server=r.require("server", client_endpoint, ""),
        stages=tuple(dict.fromkeys(stages)) if stages else ("rcpt",),
        ok_permits=r.get("ok_permits", boolean, False),
        connections=r.get("connections", integer(1, 1000), 4),
        max_idle=r.get("max_idle", positive_duration, 300.0),
        policy_context=r.get("policy_context", text, ""),
    )


class PolicydPolicy(PolicyBase):
    """Asks a policy server at the configured stages."""

    def __init__(self, settings: PolicydSettings, client: PolicyServerClient, log: Logger) -> None:
        self.settings = settings
        self.client = client
        self.log = log
        self.hooks = frozenset(settings.stages)

    def ask(self, context: PolicyContext) -> VerdictResult:
        attributes = request_attributes(context, self.settings.policy_context)
        return self.client.query(attributes).addCallback(self._verdict)

    def _verdict(self, answer: Mapping[str, str]) -> Verdict:
        action = answer.get("action")
        if action is None:
            raise PolicydError(f"the answer has no action: {dict(answer)!r}")
        return action_verdict(action, ok_permits=self.settings.ok_permits, log=self.log)

    def connect(self, context: PolicyContext) -> VerdictResult:
        return self.ask(context)

    def helo(self, context: PolicyContext) -> VerdictResult:
        return self.ask(context)

    def mail(self, context: PolicyContext) -> VerdictResult:
        return self.ask(context)

    def rcpt(self, context: PolicyContext) -> VerdictResult:
        return self.ask(context)

    def data(self, context: PolicyContext) -> VerdictResult:
        return self.ask(context)

    def end_of_data(self, context: PolicyContext) -> VerdictResult:
        return self.ask(context)

    def close(self) -> None:
        self.client.close()


def make_policy(settings: PolicydSettings, environment: PolicyEnvironment) -> PolicydPolicy:
    client = PolicyServerClient(
        environment.reactor, settings.server, connections=settings.connections, max_idle=settings.max_idle
    )
    return PolicydPolicy(settings, client, environment.log)


PLUGIN = PolicyPlugin(
    name="policyd",
    read_options=read_options,
    factory=make_policy,
    description="asks a Postfix policy delegation server (postgrey, policyd-spf, ...)",
)
