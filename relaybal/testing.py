"""Helpers for testing relay policies without sockets (for plugin authors and relaybal's own tests).

Ask one policy one question::

    from relaybal.testing import make_context, verdict_of
    context = make_context("rcpt", client="192.0.2.7", sender="app@example.com", recipient="x@example.net")
    assert verdict_of(MyPolicy(...).rcpt(context)) == PERMIT

Run a whole chain the way a frontend does (permissions, scopes, timeouts,
default actions, the final ``554 5.7.1 Relay access denied``)::

    runner = ChainRunner.from_config({"mine": {"plugin": "my-plugin", "file": path}})
    session = runner.session(client="192.0.2.7")
    assert session.connect().accepted
    session.helo("client.test")
    session.mail("app@example.com")
    assert session.rcpt("someone@example.net").code == 554

or with the real SMTP server over a fake transport: ``runner.harness()`` is a
:class:`~relaybal.relay.testing.RelayHarness` whose frontend uses the chain.
Deferred answers are driven with ``runner.clock`` (a ``MemoryReactorClock``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from relaybal.config import parse_config
from relaybal.interfaces import IRelayPolicy, VerdictResult
from relaybal.policy.address import MailAddress, mail_address
from relaybal.policy.chain import ChainLink, PolicyChain
from relaybal.policy.context import PolicyContext, PolicyEnvironment, Stage
from relaybal.policy.discovery import build_policy_chain
from relaybal.policy.plugin import PolicyBase
from relaybal.policy.verdicts import CONTINUE, DEFAULT_ACTION, Verdict
from relaybal.relay.interfaces import Envelope, SessionState, TLSInfo
from relaybal.relay.testing import RelayHarness, relay_config_dict
from relaybal.smtp.wire import Mailbox, Reply

__all__ = [
    "Answer",
    "ChainRunner",
    "ChainSession",
    "ScriptedPolicy",
    "address",
    "mailbox",
    "make_context",
    "make_environment",
    "verdict_of",
]


class ScriptedPolicy(PolicyBase):
    """A policy for tests: answers each stage from ``answers`` and records what it was asked.

    ``ScriptedPolicy(rcpt=PERMIT, mail=lambda context: ...)``: a stage's
    answer is a verdict, a callable taking the context (it may return a
    Deferred), or absent (CONTINUE). ``asked`` lists ``(stage, context)`` in
    order; :meth:`stages` the stage names; ``seen`` the contexts by stage.
    """

    def __init__(self, **answers: Any) -> None:
        self.answers = answers
        self.asked: list[tuple[str, PolicyContext]] = []

    def _answer(self, stage: str, context: PolicyContext) -> VerdictResult:
        self.asked.append((stage, context))
        answer = self.answers.get(stage, CONTINUE)
        if callable(answer) and not isinstance(answer, Verdict):
            return answer(context)  # type: ignore[no-any-return]
        return answer  # type: ignore[no-any-return]

    def stages(self) -> list[str]:
        return [stage for stage, _ in self.asked]

    @property
    def seen(self) -> dict[str, list[PolicyContext]]:
        by_stage: dict[str, list[PolicyContext]] = {}
        for stage, context in self.asked:
            by_stage.setdefault(stage, []).append(context)
        return by_stage

    def connect(self, context: PolicyContext) -> VerdictResult:
        return self._answer("connect", context)

    def helo(self, context: PolicyContext) -> VerdictResult:
        return self._answer("helo", context)

    def auth(self, context: PolicyContext) -> VerdictResult:
        return self._answer("auth", context)

    def mail(self, context: PolicyContext) -> VerdictResult:
        return self._answer("mail", context)

    def rcpt(self, context: PolicyContext) -> VerdictResult:
        return self._answer("rcpt", context)

    def data(self, context: PolicyContext) -> VerdictResult:
        return self._answer("data", context)

    def end_of_data(self, context: PolicyContext) -> VerdictResult:
        return self._answer("end_of_data", context)


def mailbox(text: str) -> Mailbox:
    """``"user@example.com"`` as a Mailbox (``""`` is the null sender; quotes are kept as written)."""
    if not text:
        return Mailbox("", "")
    local, at, domain = text.rpartition("@")
    if not at:
        return Mailbox(text, "")
    return Mailbox(local, domain)


def address(text: str) -> MailAddress:
    """``"user@example.com"`` as policies see it (:class:`~relaybal.policy.address.MailAddress`)."""
    return mail_address(mailbox(text))


def make_context(
    stage: Stage | str = Stage.RCPT,
    *,
    client: str | None = "192.0.2.7",
    client_port: int | None = 40000,
    helo: str | None = "client.test",
    user: str | None = None,
    sender: str | None = None,
    recipient: str | None = None,
    recipients: Iterable[str] = (),
    tls: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    **fields: Any,
) -> PolicyContext:
    """A :class:`~relaybal.policy.context.PolicyContext` with plausible values; any field can be given.

    Addresses are plain strings (``sender=""`` is ``<>``); ``tls`` is a
    protocol version (``"TLSv1.3"``) or None; ``user`` is the SASL user name.
    Other :class:`PolicyContext` fields go through ``fields``.
    """
    stage = Stage(stage)
    tls_fields: dict[str, Any] = {}
    if tls is not None:
        tls_fields = {"tls_version": tls, "tls_cipher": "TLS_AES_256_GCM_SHA384", "tls_cipher_bits": 256}
    values: dict[str, Any] = {
        "stage": stage,
        "session_id": "1",
        "client_address": client,
        "client_port": client_port,
        "server_address": "192.0.2.1",
        "server_port": 25,
        "helo_name": helo,
        "esmtp": True,
        "sasl_username": user,
        "sasl_method": "PLAIN" if user is not None else None,
        "sender": address(sender) if sender is not None else None,
        "recipient": address(recipient) if recipient is not None else None,
        "recipients": tuple(address(r) for r in recipients),
        "headers": tuple(headers),
        **tls_fields,
    }
    values.update(fields)
    return PolicyContext(**values)


def make_environment(reactor: Any = None, policy: str = "test", **fields: Any) -> PolicyEnvironment:
    """A :class:`~relaybal.policy.context.PolicyEnvironment` on a fake clock (``MemoryReactorClock``)."""
    clock = reactor if reactor is not None else MemoryReactorClock()
    return PolicyEnvironment(reactor=clock, policy=policy, **fields)


def verdict_of(result: VerdictResult | Reply | None) -> Any:
    """The value of a hook's (or chain's) answer: itself, or what its Deferred fired with.

    Raises AssertionError if the Deferred has not fired yet, and re-raises
    its failure if it failed.
    """
    if not isinstance(result, Deferred):
        return result
    fired, value = _peek(result)
    if not fired:
        raise AssertionError("the answer is still pending (advance the clock, or fire what it waits for)")
    if isinstance(value, Failure):
        value.raiseException()
    return value


def _peek(d: Deferred[Any]) -> tuple[bool, Any]:
    """Whether ``d`` has its final result, and that result (left in place, a failure included)."""
    out: list[Any] = []

    def grab(value: Any) -> Any:
        out.append(value)
        return value

    d.addBoth(grab)
    if out and isinstance(out[0], Failure):
        d.addErrback(lambda _: None)  # seen: not an unhandled error
        d.addBoth(lambda _: out[0])  # ...but still the result for the next look
    return bool(out), out[0] if out else None


@attrs.define
class Answer:
    """The chain's answer to one command: accepted (``reply`` None) or a refusal reply."""

    result: Any

    @property
    def pending(self) -> bool:
        """Still waiting for a policy."""
        if not isinstance(self.result, Deferred):
            return False
        return not _peek(self.result)[0]

    @property
    def reply(self) -> Reply | None:
        value = verdict_of(self.result)
        assert value is None or isinstance(value, Reply)
        return value

    @property
    def accepted(self) -> bool:
        reply = self.reply
        return reply is None or reply.positive

    @property
    def code(self) -> int:
        """The reply code a client would see (250 when accepted)."""
        reply = self.reply
        return 250 if reply is None else reply.code

    def __str__(self) -> str:
        reply = self.reply
        return "250 accepted" if reply is None else f"{reply.code} {reply.status} {reply.text}"


class ChainSession:
    """One client's session against a chain; each method answers as the SMTP server would ask.

    The session's state changes as the server's would when a command is
    accepted (HELO name, authenticated user, sender, recipients, end of the
    transaction).
    """

    def __init__(self, chain: PolicyChain, state: SessionState) -> None:
        self.chain = chain
        self.state = state

    def _answer(self, result: Any, accepted: Any = None) -> Answer:
        def apply(value: Any) -> Any:
            if accepted is not None and (value is None or (isinstance(value, Reply) and value.positive)):
                accepted()
            return value

        if isinstance(result, Deferred):
            result.addCallback(apply)
        else:
            apply(result)
        return Answer(result)

    def connect(self) -> Answer:
        return self._answer(self.chain.connect(self.state))

    def helo(self, name: str = "client.test", esmtp: bool = True) -> Answer:
        state = self.state

        def accepted() -> None:
            state.reset_transaction()
            state.helo = name

        previous = state.esmtp
        state.esmtp = esmtp  # as the server does: the policies see which greeting this is
        answer = self._answer(self.chain.helo(state, name), accepted)

        def undo(value: Any) -> Any:
            if isinstance(value, Reply) and not value.positive:
                state.esmtp = previous
            return value

        if isinstance(answer.result, Deferred):
            answer.result.addCallback(undo)
        else:
            undo(answer.result)
        return answer

    def starttls(self, version: str = "TLSv1.3") -> None:
        """STARTTLS succeeded: the session starts over (HELO and AUTH forgotten)."""
        self.state.restart_after_tls()
        self.state.tls = TLSInfo(version, "TLS_AES_256_GCM_SHA384", 256)

    def auth(self, user: str, mechanism: str = "PLAIN") -> Answer:
        state = self.state
        state.user = user
        state.auth_mechanism = mechanism

        def answered(value: Any) -> Any:
            if isinstance(value, Reply) and not value.positive:
                state.user = None
                state.auth_mechanism = None
            return value

        result = self.chain.auth(state)
        if isinstance(result, Deferred):
            result.addCallback(answered)
        else:
            answered(result)
        return Answer(result)

    def mail(self, sender: str, **params: str | None) -> Answer:
        state = self.state
        box = mailbox(sender)
        upper = {key.upper(): value for key, value in params.items()}

        def accepted() -> None:
            state.sender = box
            state.mail_params = upper
            state.recipients = []

        return self._answer(self.chain.mail(state, box, upper), accepted)

    def rcpt(self, recipient: str) -> Answer:
        state = self.state
        box = mailbox(recipient)
        return self._answer(self.chain.rcpt(state, box, {}), lambda: state.recipients.append(box))

    def data(self) -> Answer:
        return self._answer(self.chain.data(self.state))

    def end_of_data(
        self, headers: Iterable[tuple[str, str]] = (), size: int = 1000, queue_id: str = "5F6A1B2C3D4E5"
    ) -> Answer:
        state = self.state
        state.queue_id = queue_id
        state.headers = tuple(headers)
        assert state.sender is not None, "end_of_data needs an accepted MAIL first"
        envelope = Envelope.of(state, 0.0)
        return self._answer(self.chain.message(state, envelope, size), state.reset_transaction)

    def rset(self) -> None:
        self.state.reset_transaction()


class ChainRunner:
    """A policy chain on a fake clock, built from policies or from configuration tables.

    ``links`` are :class:`~relaybal.policy.chain.ChainLink` objects,
    ``(name, policy)`` pairs, or bare policies (named ``policy1``, ...).
    """

    def __init__(
        self,
        *links: ChainLink | tuple[str, IRelayPolicy] | IRelayPolicy,
        reactor: MemoryReactorClock | None = None,
        timeout: float = 10.0,
        default_action: Verdict = DEFAULT_ACTION,
        chain: PolicyChain | None = None,
        rebuild: Callable[[Any], PolicyChain] | None = None,
    ) -> None:
        self.clock = reactor if reactor is not None else MemoryReactorClock()
        self._rebuild = rebuild
        if chain is None:
            built: list[ChainLink] = []
            for i, link in enumerate(links, 1):
                if isinstance(link, ChainLink):
                    built.append(link)
                    continue
                name, policy = link if isinstance(link, tuple) else (f"policy{i}", link)
                built.append(ChainLink(name, policy, timeout=timeout, default_action=default_action))
            chain = PolicyChain(built, self.clock)
        self.chain = chain

    @classmethod
    def from_config(
        cls,
        policies: Mapping[str, Mapping[str, Any]],
        order: Iterable[str] | None = None,
        *,
        reactor: MemoryReactorClock | None = None,
        resolver: Any = None,
        state_dir: str = ".",
    ) -> ChainRunner:
        """The chain of ``[policy.NAME]`` tables (``{name: {"plugin": ..., options...}}``) in ``order``.

        The tables go through the same validation as a configuration file
        (a problem raises :class:`relaybal.config.ConfigError`) and plugins
        are found by name the way the daemon finds them.
        """
        names = list(order) if order is not None else list(policies)
        doc = relay_config_dict(policies=names)
        doc["policy"] = {name: dict(table) for name, table in policies.items()}
        config = parse_config(doc)
        clock = reactor if reactor is not None else MemoryReactorClock()

        def build(reactor: Any) -> PolicyChain:
            chain = build_policy_chain(
                config.frontends["relay"], config.policies, reactor, state_dir=state_dir, resolver=resolver
            )
            assert isinstance(chain, PolicyChain)
            return chain

        return cls(reactor=clock, chain=build(clock), rebuild=build)

    def session(
        self, client: str | None = "192.0.2.7", port: int = 40000, *, frontend: str = "relay"
    ) -> ChainSession:
        """A new session from ``client`` (None: a UNIX-socket client)."""
        state = SessionState(
            frontend=frontend,
            client=(client, port) if client is not None else None,
            local=("192.0.2.1", 25),
        )
        return ChainSession(self.chain, state)

    def harness(self, **frontend: Any) -> RelayHarness:
        """A :class:`~relaybal.relay.testing.RelayHarness` (the real ESMTP server) using this chain.

        The chain moves to the harness's clock (``runner.clock`` becomes
        ``harness.reactor``); a chain built by :meth:`from_config` is rebuilt
        on it, so its policies' timers use that clock too.
        """
        harness = RelayHarness(**frontend)
        self.clock = harness.reactor
        if self._rebuild is not None:
            self.chain = self._rebuild(harness.reactor)
        else:
            self.chain.reactor = harness.reactor
        harness.frontend.policy = self.chain
        return harness
