"""The policy chain: a frontend's ``policies``, asked in order at every stage of every session.

Semantics (Postfix's restriction lists and Haraka's hooks are the models;
``docs/plugins.rst`` says the same for operators):

- At each stage the policies are asked in ``policies`` order; the first
  *decisive* verdict (PERMIT, REJECT, DEFER, DISCONNECT) ends the asking.
  CONTINUE asks the next one. DEFER_IF_PERMIT / DEFER_IF_REJECT are noted
  and asking goes on; they apply to how the stage ends.
- A PERMIT before RCPT allows relaying for a scope: at ``connect`` for the
  whole session, at ``helo`` until the next HELO/EHLO or STARTTLS, at
  ``auth`` until STARTTLS resets the session, at ``mail`` for that
  transaction. It does not skip anything at later stages: every RCPT still
  asks every policy, so a later REJECT/DEFER still refuses.
- At ``rcpt`` a PERMIT accepts that recipient; if no policy decides, the
  recipient is accepted only when an earlier PERMIT allows relaying, and is
  otherwise refused with ``554 5.7.1 Relay access denied``. So an empty
  chain of opinions is never an open relay.
- Before any policy is asked at ``rcpt``, recipients with sender-specified
  routing in the local part (``%``, ``!``, a quoted ``@``) or an address
  literal domain are refused (``553 5.7.1``); policies only ever decide on
  real destination domains.
- A stage ending in acceptance with a DEFER_IF_PERMIT noted is deferred with
  its reply; one ending in a REJECT (or the implicit relay denial) with a
  DEFER_IF_REJECT noted is deferred instead.
- A policy that raises, answers something that is not a Verdict, or has not
  answered within its ``timeout`` yields its ``default_action`` (a refusal
  or CONTINUE; never PERMIT), logged with the policy's name.
- At ``connect`` a refusal closes the connection (a DEFER is sent as
  ``421``); DISCONNECT sends ``421`` and closes at any stage.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import attrs
from twisted.internet import defer, error
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relaybal.interfaces import IRelayPolicy
from relaybal.policy.address import MailAddress, mail_address
from relaybal.policy.context import PolicyContext, Stage, context_of
from relaybal.policy.plugin import PolicyError, overrides
from relaybal.policy.verdicts import CONTINUE, DEFAULT_ACTION, Kind, Verdict
from relaybal.relay.interfaces import (
    AUTH_SCOPE,
    HELO_SCOPE,
    SESSION_SCOPE,
    TRANSACTION_SCOPE,
    Decision,
    Envelope,
    ISessionPolicy,
    SessionState,
)
from relaybal.relay.policy import RELAY_DENIED
from relaybal.smtp.wire import Mailbox, Reply

__all__ = ["RELAY_DENIED", "ChainLink", "Outcome", "PolicyChain"]

log = Logger(namespace="relaybal.policy")

#: The scope a PERMIT at each stage grants relaying for.
PERMIT_SCOPES: Final = {
    Stage.CONNECT: SESSION_SCOPE,
    Stage.HELO: HELO_SCOPE,
    Stage.AUTH: AUTH_SCOPE,
    Stage.MAIL: TRANSACTION_SCOPE,
}

ROUTING_REFUSED: Final = "Sender-specified routing is not accepted ({what}); write user@domain"
LITERAL_REFUSED: Final = Reply(553, "5.7.1", "Address literals are not accepted as recipients")


def _check_default(link: ChainLink, attribute: attrs.Attribute[Verdict], value: Verdict) -> None:
    if value.kind is Kind.PERMIT or value.kind in (Kind.DEFER_IF_PERMIT, Kind.DEFER_IF_REJECT):
        raise ValueError(f"default_action may not be {value.kind.value}")


@attrs.frozen
class ChainLink:
    """One ``[policy.NAME]`` in a chain: its name, plugin, built policy and failure handling."""

    name: str
    policy: IRelayPolicy
    plugin: str = ""
    timeout: float = 10.0
    default_action: Verdict = attrs.field(default=DEFAULT_ACTION, validator=_check_default)


@attrs.frozen
class Outcome:
    """How asking the policies at one stage went: the deciding verdict (CONTINUE if none) and by whom."""

    verdict: Verdict
    by: str | None = None
    conditions: tuple[tuple[str, Verdict], ...] = ()


@implementer(ISessionPolicy)
class PolicyChain:
    """The :class:`~relaybal.relay.interfaces.ISessionPolicy` of a frontend with ``policies``.

    Answers the server with None (go on), a Reply (refuse; ``421`` closes),
    or a Deferred of either; never raises.
    """

    def __init__(self, links: Sequence[ChainLink], reactor: Any, *, frontend: str = "relay") -> None:
        self.links = tuple(links)
        self.reactor = reactor
        self.frontend = frontend
        self._stages: dict[Stage, tuple[ChainLink, ...]] = {
            stage: tuple(link for link in self.links if overrides(link.policy, stage.value))
            for stage in Stage
        }
        self.wants_headers = bool(self._stages[Stage.END_OF_DATA])
        #: Decisions taken, by (policy name, verdict kind): what ``relaybal_policy_verdicts_total``
        #: counts. A recipient refused because no policy permits relaying counts as
        #: ("(none)", "reject"); a refusal counts as reject (5xx), defer (4xx) or disconnect (421).
        self.verdicts: Counter[tuple[str, str]] = Counter()

    def __repr__(self) -> str:
        return f"<PolicyChain {self.frontend}: {', '.join(link.name for link in self.links)}>"

    # ------------------------------------------------------------------ ISessionPolicy

    def connect(self, state: SessionState) -> Decision:
        return self._decide(state, Stage.CONNECT, lambda: context_of(state, Stage.CONNECT))

    def helo(self, state: SessionState, name: str) -> Decision:
        state.relay_permits.pop(HELO_SCOPE, None)
        return self._decide(state, Stage.HELO, lambda: context_of(state, Stage.HELO, helo=name))

    def auth(self, state: SessionState) -> Decision:
        state.relay_permits.pop(AUTH_SCOPE, None)
        return self._decide(state, Stage.AUTH, lambda: context_of(state, Stage.AUTH))

    def mail(self, state: SessionState, sender: Mailbox, params: Mapping[str, str | None]) -> Decision:
        state.relay_permits.pop(TRANSACTION_SCOPE, None)
        address = mail_address(sender)
        return self._decide(
            state, Stage.MAIL, lambda: context_of(state, Stage.MAIL, sender=address, params=params)
        )

    def rcpt(self, state: SessionState, recipient: Mailbox, params: Mapping[str, str | None]) -> Decision:
        address = mail_address(recipient)
        refusal = self._pre_acl(address)
        if refusal is not None:
            self._log_refusal(state, Stage.RCPT, None, refusal, address, "the address check refuses")
            return refusal
        return self._decide(
            state, Stage.RCPT, lambda: context_of(state, Stage.RCPT, recipient=address), address
        )

    def data(self, state: SessionState) -> Decision:
        return self._decide(state, Stage.DATA, lambda: context_of(state, Stage.DATA))

    def message(self, state: SessionState, envelope: Envelope, size: int) -> Decision:
        return self._decide(state, Stage.END_OF_DATA, lambda: context_of(state, Stage.END_OF_DATA, size=size))

    def close(self) -> Deferred[None]:
        """Close every policy (when the frontend stops)."""
        waits: list[Deferred[Any]] = []
        for link in self.links:
            try:
                d = link.policy.close()
            except Exception:
                log.failure("policy {policy}: close failed", policy=link.name)
                continue
            if isinstance(d, Deferred):
                waits.append(d)
        return DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)

    # ------------------------------------------------------------------ asking

    @staticmethod
    def _pre_acl(address: MailAddress) -> Reply | None:
        """The refusal of a recipient whose real destination cannot be told, or None."""
        if address.routing is not None:
            return Reply(553, "5.7.1", ROUTING_REFUSED.format(what=address.routing))
        if address.literal:
            return LITERAL_REFUSED
        return None

    def _decide(
        self,
        state: SessionState,
        stage: Stage,
        make_context: Callable[[], PolicyContext],
        recipient: MailAddress | None = None,
    ) -> Decision:
        links = self._stages[stage]
        if not links:
            return self._finish(state, stage, Outcome(CONTINUE), None, recipient)
        context = make_context()
        outcome = self.ask(stage, context, links)
        if isinstance(outcome, Deferred):
            return outcome.addCallback(lambda o: self._finish(state, stage, o, context, recipient))
        return self._finish(state, stage, outcome, context, recipient)

    def ask(
        self,
        stage: Stage,
        context: PolicyContext,
        links: Sequence[ChainLink] | None = None,
        start: int = 0,
        conditions: tuple[tuple[str, Verdict], ...] = (),
    ) -> Outcome | Deferred[Outcome]:
        """Ask ``links`` (default: those with a hook for ``stage``) until one decides.

        Synchronous answers give an :class:`Outcome` now; the first
        Deferred makes the rest asynchronous.
        """
        if links is None:
            links = self._stages[stage]
        for i in range(start, len(links)):
            link = links[i]
            try:
                result = getattr(link.policy, stage.value)(context)
            except Exception:
                verdict = self._failed(Failure(), link, stage, context)
            else:
                if isinstance(result, Deferred):
                    return self._later(result, stage, context, links, i, conditions)
                verdict = self._checked(result, link, stage, context)
            if verdict.decisive:
                return Outcome(verdict, link.name, conditions)
            if verdict.kind is not Kind.CONTINUE:
                conditions = (*conditions, (link.name, verdict))
        return Outcome(CONTINUE, None, conditions)

    def _later(  # noqa: PLR0917
        self,
        d: Deferred[Any],
        stage: Stage,
        context: PolicyContext,
        links: Sequence[ChainLink],
        i: int,
        conditions: tuple[tuple[str, Verdict], ...],
    ) -> Deferred[Outcome]:
        link = links[i]
        d.addTimeout(link.timeout, self.reactor)

        def answered(result: Any) -> Verdict:
            return self._checked(result, link, stage, context)

        def failed(failure: Failure) -> Verdict:
            return self._failed(failure, link, stage, context)

        def next_one(verdict: Verdict) -> Outcome | Deferred[Outcome]:
            if verdict.decisive:
                return Outcome(verdict, link.name, conditions)
            more = conditions if verdict.kind is Kind.CONTINUE else (*conditions, (link.name, verdict))
            return self.ask(stage, context, links, i + 1, more)

        verdicts: Deferred[Verdict] = d.addCallbacks(answered, failed)
        return verdicts.addCallback(next_one)

    def _checked(self, result: object, link: ChainLink, stage: Stage, context: PolicyContext) -> Verdict:
        if isinstance(result, Verdict):
            return result
        log.error(
            "policy {policy} ({plugin}) answered {result!r} at {stage}, not a Verdict: "
            "using its default_action {action}",
            policy=link.name, plugin=link.plugin, result=result, stage=stage.value,
            action=str(link.default_action), client=context.client_address, frontend=self.frontend,
        )  # fmt: skip
        return link.default_action

    def _failed(self, failure: Failure, link: ChainLink, stage: Stage, context: PolicyContext) -> Verdict:
        if failure.check(defer.TimeoutError, CancelledError):
            log.error(
                "policy {policy} ({plugin}) did not answer within {timeout}s at {stage}: "
                "using its default_action {action}",
                policy=link.name, plugin=link.plugin, timeout=link.timeout, stage=stage.value,
                action=str(link.default_action), client=context.client_address, frontend=self.frontend,
            )  # fmt: skip
        elif failure.check(PolicyError, error.ConnectError, error.ConnectionLost, error.ConnectionDone):
            log.error(
                "policy {policy} ({plugin}) failed at {stage}: {error}: using its default_action {action}",
                policy=link.name, plugin=link.plugin, stage=stage.value, error=_error_text(failure),
                action=str(link.default_action), client=context.client_address, frontend=self.frontend,
            )  # fmt: skip
        else:
            log.failure(
                "policy {policy} ({plugin}) failed at {stage}: using its default_action {action}",
                failure,
                policy=link.name, plugin=link.plugin, stage=stage.value,
                action=str(link.default_action), client=context.client_address, frontend=self.frontend,
            )  # fmt: skip
        return link.default_action

    # ------------------------------------------------------------------ deciding

    def _finish(
        self,
        state: SessionState,
        stage: Stage,
        outcome: Outcome,
        context: PolicyContext | None,
        recipient: MailAddress | None,
    ) -> Reply | None:
        verdict = outcome.verdict
        by = outcome.by
        kind = verdict.kind
        refusal: Reply | None = None
        if kind is Kind.CONTINUE:
            if stage is Stage.RCPT and not state.relay_permits:
                kind = Kind.REJECT
                refusal = RELAY_DENIED
                by = None
        elif kind is not Kind.PERMIT:
            refusal = verdict.reply
        if kind is Kind.REJECT:
            for name, condition in outcome.conditions:
                if condition.kind is Kind.DEFER_IF_REJECT:
                    refusal, by = condition.reply, name
                    break
        elif kind in (Kind.PERMIT, Kind.CONTINUE):
            for name, condition in outcome.conditions:
                if condition.kind is Kind.DEFER_IF_PERMIT:
                    refusal, by = condition.reply, name
                    break
        if refusal is None:
            scope = PERMIT_SCOPES.get(stage)
            if kind is Kind.PERMIT and by is not None:
                self.verdicts[(by, "permit")] += 1
                if scope is not None:
                    state.relay_permits[scope] = by
            return None
        counted = "disconnect" if refusal.code == 421 else "reject" if refusal.code >= 500 else "defer"
        self.verdicts[(by or "(none)", counted)] += 1
        if stage is Stage.CONNECT and refusal.code < 500 and refusal.code != 421:
            refusal = Reply(421, refusal.status, refusal.text)  # a greeting is 220, 421 or 554
        who = f"policy {by} refuses" if by is not None else "no policy permits relaying: refused"
        self._log_refusal(state, stage, by, refusal, recipient, who)
        return refusal

    def _log_refusal(  # noqa: PLR0917
        self,
        state: SessionState,
        stage: Stage,
        by: str | None,
        refusal: Reply,
        recipient: MailAddress | None,
        who: str,
    ) -> None:
        to = f" to=<{recipient}>" if recipient is not None else ""
        log.info(
            "{frontend}: {who} {stage} from {client}: {code} {status} {text}{to}",
            frontend=self.frontend, who=who, policy=by, stage=stage.value,
            client=state.client_host or "local", code=refusal.code, status=refusal.status, text=refusal.text,
            to=to,
        )  # fmt: skip


def _error_text(failure: Failure) -> str:
    name = type(failure.value).__name__
    message = failure.getErrorMessage()
    return f"{name}: {message}" if message else name
