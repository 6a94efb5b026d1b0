"""The policy chain's semantics: order, permits and their scopes, conditional defers, failures."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger, formatEvent

from relaybal.interfaces import VerdictResult
from relaybal.policy import (
    CONTINUE,
    PERMIT,
    PolicyBase,
    PolicyContext,
    PolicyError,
    Stage,
    Verdict,
    defer,
    defer_if_permit,
    defer_if_reject,
    disconnect,
    reject,
)
from relaybal.policy import chain as chain_module
from relaybal.policy.chain import ChainLink, PolicyChain
from relaybal.policy.verdicts import parse_action
from relaybal.testing import ChainRunner, ScriptedPolicy, verdict_of

NO = reject("No", "5.7.1", 550)
LATER = defer("Later", "4.7.1", 450)


@pytest.fixture(autouse=True)
def events(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    captured: list[dict[str, Any]] = []
    monkeypatch.setattr(chain_module, "log", Logger(observer=captured.append, namespace="relaybal.policy"))
    return captured


def messages(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events]


Scripted = ScriptedPolicy


def through_mail(runner: ChainRunner, client: str = "192.0.2.7", sender: str = "a@client.test") -> Any:
    session = runner.session(client)
    assert session.connect().accepted
    assert session.helo().accepted
    assert session.mail(sender).accepted
    return session


# ----------------------------------------------------------------------------- order and relay permission


def test_no_opinion_anywhere_is_not_an_open_relay() -> None:
    first, second = Scripted(), Scripted()
    session = through_mail(ChainRunner(first, second))
    answer = session.rcpt("user@example.net")
    assert (answer.code, answer.reply.status, answer.reply.text) == (554, "5.7.1", "Relay access denied")
    assert first.stages() == second.stages() == ["connect", "helo", "mail", "rcpt"]


def test_the_first_decisive_verdict_wins_and_later_policies_are_not_asked() -> None:
    first, second, third = Scripted(rcpt=CONTINUE), Scripted(rcpt=NO), Scripted(rcpt=PERMIT)
    session = through_mail(ChainRunner(first, second, third))
    assert session.rcpt("user@example.net").reply == NO.reply
    assert [s for s, _ in third.asked] == ["connect", "helo", "mail"]  # not asked at rcpt
    first.answers["rcpt"] = PERMIT
    assert session.rcpt("user@example.net").accepted
    assert second.stages().count("rcpt") == 1


def test_a_connect_permit_allows_relaying_for_the_whole_session_but_rcpt_policies_are_still_asked() -> None:
    trusted, limiter = Scripted(connect=PERMIT), Scripted()
    runner = ChainRunner(("trusted", trusted), ("limiter", limiter))
    session = through_mail(runner)
    assert limiter.stages() == ["helo", "mail"]  # a decisive PERMIT ends the connect stage
    assert session.state.relay_permits == {"session": "trusted"}
    assert session.rcpt("a@example.net").accepted
    limiter.answers["rcpt"] = LATER
    assert session.rcpt("b@example.net").reply == LATER.reply  # a later refusal still refuses
    del limiter.answers["rcpt"]
    assert session.end_of_data().accepted
    assert session.mail("a@client.test").accepted and session.rcpt("c@example.net").accepted
    assert [c.relay_permitted_by for s, c in limiter.asked if s == "rcpt"] == ["trusted"] * 3


def test_a_mail_permit_lasts_for_its_transaction_only() -> None:
    policy = Scripted(mail=lambda c: PERMIT if c.sender.local == "vip" else CONTINUE)
    session = through_mail(ChainRunner(policy), sender="vip@client.test")
    assert session.rcpt("a@example.net").accepted
    assert session.end_of_data().accepted
    assert session.mail("nobody@client.test").accepted
    assert session.rcpt("a@example.net").code == 554
    session.rset()
    assert session.mail("vip@client.test").accepted and session.rcpt("a@example.net").accepted
    session.rset()
    assert session.state.relay_permits == {}


def test_a_helo_permit_lasts_until_the_next_helo_or_starttls() -> None:
    policy = Scripted(helo=lambda c: PERMIT if c.helo_name == "trusted.test" else CONTINUE)
    runner = ChainRunner(policy)
    session = runner.session()
    session.connect()
    assert session.helo("trusted.test").accepted
    assert session.mail("a@b.test").accepted and session.rcpt("x@example.net").accepted
    assert session.helo("other.test").accepted
    assert session.mail("a@b.test").accepted and session.rcpt("x@example.net").code == 554
    session.helo("trusted.test")
    session.starttls()
    session.helo("again.test")
    assert session.mail("a@b.test").accepted and session.rcpt("x@example.net").code == 554


def test_an_auth_permit_lasts_until_starttls_resets_the_session() -> None:
    policy = Scripted(auth=lambda c: PERMIT if c.sasl_username == "alice" else CONTINUE)
    session = ChainRunner(policy).session()
    session.connect()
    session.helo()
    assert session.auth("bob").accepted
    assert session.mail("a@b.test").accepted and session.rcpt("x@example.net").code == 554
    session.rset()
    session.state.user = None
    assert session.auth("alice").accepted
    assert session.mail("a@b.test").accepted and session.rcpt("x@example.net").accepted
    ctx = policy.asked[-1][1]
    assert (ctx.sasl_username, ctx.sasl_method, ctx.relay_permitted_by) == ("alice", "PLAIN", "policy1")
    session.starttls()
    session.helo()
    assert session.mail("a@b.test").accepted and session.rcpt("x@example.net").code == 554


def test_a_connect_permit_survives_starttls() -> None:
    session = ChainRunner(Scripted(connect=PERMIT)).session()
    session.connect()
    session.starttls()
    session.helo()
    assert session.mail("a@b.test").accepted and session.rcpt("x@example.net").accepted


def test_a_rcpt_permit_accepts_that_recipient_only() -> None:
    policy = Scripted(rcpt=lambda c: PERMIT if c.recipient.destination == "example.com" else CONTINUE)
    session = through_mail(ChainRunner(policy))
    assert session.rcpt("a@example.com").accepted
    assert session.rcpt("a@example.net").code == 554
    assert [str(r) for r in policy.asked[-1][1].recipients] == ["a@example.com"]
    assert session.state.relay_permits == {}


def test_refusals_at_non_rcpt_stages_and_their_replies() -> None:
    for stage in ("helo", "auth", "mail", "data", "end_of_data"):
        session = ChainRunner(Scripted(**{stage: NO}, connect=PERMIT)).session()
        assert session.connect().accepted
        steps: dict[str, Any] = {
            "helo": (session.helo,), "auth": (session.auth, "alice"), "mail": (session.mail, "a@b.test"),
            "rcpt": (session.rcpt, "x@example.net"), "data": (session.data,),
            "end_of_data": (session.end_of_data,),
        }  # fmt: skip
        for name, (step, *args) in steps.items():
            answer = step(*args)
            if name == stage:
                assert answer.reply == NO.reply, stage
                break
            assert answer.accepted, (stage, name)


def test_connect_refusals_fit_a_greeting() -> None:
    assert ChainRunner(Scripted(connect=NO)).session().connect().code == 550
    deferred = ChainRunner(Scripted(connect=LATER)).session().connect().reply
    assert deferred is not None and (deferred.code, deferred.status, deferred.text) == (421, "4.7.1", "Later")
    assert ChainRunner(Scripted(connect=disconnect("Bye"))).session().connect().code == 421


# ----------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("recipient", "what"),
    [
        ("user%outside.test@example.com", "percent hack"),
        ("outside.test!user@example.com", "bang path"),
        ('"user@outside.test"@example.com', "quoted local part with @"),
        ('"user%outside.test"@example.com', "percent hack"),
    ],
)
def test_sender_specified_routing_is_refused_before_any_policy(recipient: str, what: str) -> None:
    policy = Scripted(connect=PERMIT, rcpt=PERMIT)
    session = through_mail(ChainRunner(policy))
    answer = session.rcpt(recipient)
    assert answer.reply is not None
    assert (answer.code, answer.reply.status) == (553, "5.7.1") and what in answer.reply.text
    assert "rcpt" not in policy.stages()


def test_address_literals_are_refused_before_any_policy() -> None:
    policy = Scripted(connect=PERMIT, rcpt=PERMIT)
    session = through_mail(ChainRunner(policy))
    assert session.rcpt("user@[192.0.2.1]").code == 553
    assert session.rcpt("user@[IPv6:2001:db8::1]").code == 553
    assert "rcpt" not in policy.stages()
    assert session.rcpt("user@example.com").accepted  # the same policies, a real domain


def test_policies_see_the_normalised_destination() -> None:
    policy = Scripted(rcpt=PERMIT)
    session = through_mail(ChainRunner(policy))
    session.rcpt("User@EXAMPLE.Com")
    session.rcpt("user@bücher.example")
    [first, second] = [c.recipient for s, c in policy.asked if s == "rcpt"]
    assert (first.local, first.domain, first.destination) == ("User", "EXAMPLE.Com", "example.com")
    assert second.destination == "xn--bcher-kva.example"


# ----------------------------------------------------------------------------- conditional defers


def test_defer_if_permit_defers_what_would_be_accepted_only() -> None:
    grey = defer_if_permit("Greylisted", "4.7.1")
    permitted = through_mail(ChainRunner(Scripted(connect=PERMIT), Scripted(rcpt=grey)))
    answer = permitted.rcpt("x@example.net")
    assert answer.reply == grey.reply  # the stage would have ended in acceptance
    explicit = through_mail(ChainRunner(Scripted(rcpt=grey), Scripted(rcpt=PERMIT)))
    assert explicit.rcpt("x@example.net").reply == grey.reply
    unpermitted = through_mail(ChainRunner(Scripted(rcpt=grey)))
    assert unpermitted.rcpt("x@example.net").code == 554  # refused anyway: no point greylisting
    rejected = through_mail(ChainRunner(Scripted(connect=PERMIT, rcpt=grey), Scripted(rcpt=NO)))
    assert rejected.rcpt("x@example.net").reply == NO.reply


def test_defer_if_reject_turns_a_rejection_into_a_defer() -> None:
    soft = defer_if_reject("Maybe later", "4.7.1")
    explicit = through_mail(ChainRunner(Scripted(rcpt=soft), Scripted(rcpt=NO)))
    assert explicit.rcpt("x@example.net").reply == soft.reply
    implicit = through_mail(ChainRunner(Scripted(rcpt=soft)))
    assert implicit.rcpt("x@example.net").reply == soft.reply  # instead of 554 Relay access denied
    permitted = through_mail(ChainRunner(Scripted(rcpt=soft), Scripted(rcpt=PERMIT)))
    assert permitted.rcpt("x@example.net").accepted
    deferred = through_mail(ChainRunner(Scripted(rcpt=soft), Scripted(rcpt=LATER)))
    assert deferred.rcpt("x@example.net").reply == LATER.reply


def test_a_conditional_mail_permit_is_not_recorded() -> None:
    session = ChainRunner(Scripted(mail=defer_if_permit()), Scripted(mail=PERMIT)).session()
    session.connect()
    session.helo()
    assert session.mail("a@b.test").code == 450
    assert session.state.relay_permits == {}


# ----------------------------------------------------------------------------- failures


class Boom(Exception):
    pass


@pytest.mark.parametrize(
    "answer",
    [
        lambda c: (_ for _ in ()).throw(Boom("bug")),
        lambda c: None,
        lambda c: "OK",
        lambda c: fail(Boom("failed deferred")),
        lambda c: succeed("garbage"),
    ],
    ids=["raises", "none", "a-string", "failed-deferred", "garbage-deferred"],
)
def test_a_failing_policy_yields_its_default_action_and_never_permits(
    answer: Any, events: list[dict[str, Any]]
) -> None:
    runner = ChainRunner(("flaky", Scripted(connect=PERMIT, rcpt=answer)), ("never", Scripted(rcpt=PERMIT)))
    session = through_mail(runner)
    result = session.rcpt("x@example.net")
    assert result.reply is not None
    assert (result.code, result.reply.status) == (451, "4.3.0")
    assert any("policy flaky" in m and "default_action" in m and "at rcpt" in m for m in messages(events))


def test_an_expected_failure_is_logged_in_one_line(events: list[dict[str, Any]]) -> None:
    session = through_mail(ChainRunner(("server", Scripted(rcpt=lambda c: fail(PolicyError("down"))))))
    assert session.rcpt("x@example.net").code == 451
    [line] = [m for m in messages(events) if "policy server" in m and "failed" in m]
    assert "failed at rcpt: PolicyError: down" in line
    assert not any("log_failure" in e for e in events)


def test_timeouts_use_the_policy_timeout_and_late_answers_are_ignored(events: list[dict[str, Any]]) -> None:
    slow: list[Deferred[Verdict]] = []

    def hang(context: PolicyContext) -> Deferred[Verdict]:
        d: Deferred[Verdict] = Deferred()
        slow.append(d)
        return d

    link = ChainLink("slow", Scripted(rcpt=hang), timeout=3.0, default_action=parse_action("450 4.4.3 Slow"))
    runner = ChainRunner(ChainLink("ok", Scripted(connect=PERMIT)), link)
    session = through_mail(runner)
    answer = session.rcpt("x@example.net")
    assert answer.pending
    runner.clock.advance(2.9)
    assert answer.pending
    runner.clock.advance(0.2)
    assert answer.reply is not None and (answer.code, answer.reply.text) == (450, "Slow")
    assert slow[0].called  # cancelled
    assert any("slow" in m and "did not answer within 3.0s at rcpt" in m for m in messages(events))


def test_default_action_continue_asks_the_next_policy() -> None:
    broken = ChainLink("broken", Scripted(rcpt=lambda c: None), default_action=CONTINUE)
    session = through_mail(ChainRunner(broken, ChainLink("domains", Scripted(rcpt=PERMIT))))
    assert session.rcpt("x@example.net").accepted
    lone = through_mail(ChainRunner(broken))
    assert lone.rcpt("x@example.net").code == 554  # and alone it permits nothing


def test_a_default_action_can_never_permit() -> None:
    for verdict in (PERMIT, defer_if_permit(), defer_if_reject()):
        with pytest.raises(ValueError, match="default_action may not be"):
            ChainLink("x", Scripted(), default_action=verdict)


# ----------------------------------------------------------------------------- asynchronous answers


def test_synchronous_policies_give_synchronous_answers() -> None:
    runner = ChainRunner(Scripted(connect=PERMIT), Scripted())
    session = through_mail(runner)
    result = runner.chain.rcpt(session.state, session.state.sender, {})  # type: ignore[arg-type]
    assert result is None


def test_deferred_answers_are_asked_in_order() -> None:
    pending: list[tuple[str, Deferred[Verdict]]] = []

    def later(name: str) -> Any:
        def answer(context: PolicyContext) -> Deferred[Verdict]:
            d: Deferred[Verdict] = Deferred()
            pending.append((name, d))
            return d

        return answer

    runner = ChainRunner(("a", Scripted(rcpt=later("a"))), ("b", Scripted(rcpt=later("b"))))
    session = runner.session()
    session.state.relay_permits["session"] = "test"
    answer = session.rcpt("x@example.net")
    assert [name for name, _ in pending] == ["a"]  # b waits for a
    pending[0][1].callback(CONTINUE)
    assert [name for name, _ in pending] == ["a", "b"] and answer.pending
    pending[1][1].callback(LATER)
    assert answer.reply == LATER.reply


# ----------------------------------------------------------------------------- plumbing


class OnlyRcpt(PolicyBase):
    def __init__(self) -> None:
        self.calls = 0

    def rcpt(self, context: PolicyContext) -> VerdictResult:
        self.calls += 1
        return PERMIT


class Declared(PolicyBase):
    hooks = frozenset({"mail"})

    def rcpt(self, context: PolicyContext) -> VerdictResult:
        raise AssertionError("not declared, never asked")

    def end_of_data(self, context: PolicyContext) -> VerdictResult:
        raise AssertionError("not declared, never asked")


def test_only_the_hooks_a_policy_has_are_asked() -> None:
    only = OnlyRcpt()
    chain = PolicyChain([ChainLink("only", only), ChainLink("declared", Declared())], reactor=None)
    assert [stage for stage in Stage if chain._stages[stage]] == [Stage.MAIL, Stage.RCPT]
    assert not chain.wants_headers
    assert PolicyChain([ChainLink("s", Scripted())], reactor=None).wants_headers
    session = through_mail(ChainRunner(chain=chain))
    assert session.rcpt("x@example.net").accepted and only.calls == 1


def test_close_reaches_every_policy(events: list[dict[str, Any]]) -> None:
    closed: list[str] = []

    class Closing(PolicyBase):
        def __init__(self, name: str, fails: bool = False) -> None:
            self.name = name
            self.fails = fails

        def close(self) -> Deferred[None] | None:
            if self.fails:
                raise Boom("close")
            closed.append(self.name)
            return succeed(None)

    links = [ChainLink("a", Closing("a")), ChainLink("b", Closing("b", fails=True))]
    chain = PolicyChain([*links, ChainLink("c", Closing("c"))], reactor=None)
    assert verdict_of(chain.close()) is None
    assert closed == ["a", "c"]
    assert any("policy b: close failed" in m for m in messages(events))


def test_refusals_are_logged_with_the_policy_name(events: list[dict[str, Any]]) -> None:
    session = through_mail(ChainRunner(("blocker", Scripted(rcpt=NO))))
    session.rcpt("x@example.net")
    line = "relay: policy blocker refuses rcpt from 192.0.2.7: 550 5.7.1 No to=<x@example.net>"
    assert line in messages(events)


def test_decisions_are_counted_by_policy_and_verdict() -> None:
    trusted, limiter = Scripted(connect=PERMIT), Scripted()
    runner = ChainRunner(("trusted", trusted), ("limiter", limiter))
    session = through_mail(runner)
    assert session.rcpt("a@example.net").accepted
    limiter.answers["rcpt"] = LATER
    assert not session.rcpt("b@example.net").accepted
    limiter.answers["rcpt"] = NO
    assert not session.rcpt("c@example.net").accepted
    expected = {("trusted", "permit"): 1, ("limiter", "defer"): 1, ("limiter", "reject"): 1}
    assert runner.chain.verdicts == expected
    untrusted = through_mail(ChainRunner(Scripted()))
    assert not untrusted.rcpt("d@example.net").accepted
    assert untrusted.chain.verdicts == {("(none)", "reject"): 1}
