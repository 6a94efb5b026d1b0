"""The built-in policies: networks, auth, the domain lists, max-recipients, ratelimit, dnsbl."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.names import dns
from twisted.names.error import DNSQueryTimeoutError, DomainError

from relaybal.policy import CONTINUE, PERMIT, Kind
from relaybal.policy.builtin import dnsbl, ratelimit
from relaybal.policy.options import Rate
from relaybal.testing import ChainRunner, make_context, make_environment, verdict_of


def runner(*tables: dict[str, Any], **kw: Any) -> ChainRunner:
    return ChainRunner.from_config({f"p{i}": table for i, table in enumerate(tables)}, **kw)


# ----------------------------------------------------------------------------- networks


def test_networks_permits_allowed_clients_for_the_session_and_refuses_denied_ones() -> None:
    chain = runner({"plugin": "networks", "allow": ["10.0.0.0/8", "2001:db8::/32"], "deny": ["10.9.0.0/16"]})
    for client, expected in [
        ("10.1.2.3", 250),
        ("2001:db8::5", 250),
        ("192.0.2.7", 554),
        ("::ffff:10.1.2.3", 250),
    ]:
        session = chain.session(client)
        assert session.connect().accepted and session.helo().accepted and session.mail("a@b.test").accepted
        assert session.rcpt("x@example.net").code == expected, client
    denied = chain.session("10.9.8.7").connect()
    assert denied.reply is not None and (denied.code, denied.reply.text) == (554, "Access denied")


def test_networks_has_no_opinion_about_unix_socket_clients() -> None:
    session = runner({"plugin": "networks", "allow": ["0.0.0.0/0"]}).session(client=None)
    assert session.connect().accepted
    session.helo()
    session.mail("a@b.test")
    assert session.rcpt("x@example.net").code == 554


# ----------------------------------------------------------------------------- auth


def test_auth_permits_authenticated_users_optionally_only_listed_ones() -> None:
    anyone = runner({"plugin": "auth"}).session()
    anyone.connect()
    anyone.helo()
    anyone.auth("whoever")
    anyone.mail("a@b.test")
    assert anyone.rcpt("x@example.net").accepted
    listed = runner({"plugin": "auth", "users": ["alice"]})
    for user, expected in [("alice", 250), ("bob", 554)]:
        session = listed.session()
        session.connect()
        session.helo()
        assert session.auth(user).accepted  # never refuses the login itself
        session.mail("a@b.test")
        assert session.rcpt("x@example.net").code == expected


# ----------------------------------------------------------------------------- domains


def test_recipient_domains_permit_relaying_to_listed_domains_only() -> None:
    chain = runner(
        {"plugin": "recipient-domains", "domains": ["example.com", ".example.org", "BÜCHER.example"]}
    )
    session = chain.session()
    session.connect()
    session.helo()
    session.mail("a@b.test")
    for rcpt, expected in [
        ("x@example.com", 250),
        ("x@EXAMPLE.COM", 250),
        ("x@sub.example.com", 554),
        ("x@example.org", 554),
        ("x@mx.example.org", 250),
        ("x@bücher.example", 250),
        ("x@example.com.evil.test", 554),
        ("x%evil.test@example.com", 553),
    ]:
        assert session.rcpt(rcpt).code == expected, rcpt


def test_sender_domains_refuse_other_senders_and_never_permit() -> None:
    chain = runner(
        {"plugin": "sender-domains", "domains": ["example.com"]},
        {"plugin": "networks", "allow": ["192.0.2.0/24"]},
    )
    session = chain.session()
    session.connect()
    session.helo()
    refused = session.mail("app@evil.test")
    assert refused.reply is not None and (refused.code, refused.reply.status) == (553, "5.7.1")
    assert session.mail("").accepted  # bounces
    session.rset()
    assert session.mail("App@Example.com").accepted and session.rcpt("x@example.net").accepted
    outsider = chain.session("203.0.113.1")
    outsider.connect()
    outsider.helo()
    assert outsider.mail("app@example.com").accepted
    assert outsider.rcpt("x@example.net").code == 554  # a matching sender does not allow relaying
    strict = runner({"plugin": "sender-domains", "domains": ["example.com"], "allow_null_sender": False})
    s = strict.session()
    s.connect()
    s.helo()
    assert s.mail("").code == 553


# ----------------------------------------------------------------------------- max-recipients


def test_max_recipients_defers_past_the_limit() -> None:
    chain = runner({"plugin": "max-recipients", "max": 2}, {"plugin": "networks", "allow": ["0.0.0.0/0"]})
    session = chain.session()
    session.connect()
    session.helo()
    session.mail("a@b.test")
    answers = [session.rcpt(f"x{i}@example.net") for i in range(3)]
    assert [a.code for a in answers] == [250, 250, 452]
    last = answers[-1].reply
    assert last is not None and last.status == "4.5.3"
    session.end_of_data()
    session.mail("a@b.test")
    assert session.rcpt("y@example.net").accepted  # a new transaction starts again


# ----------------------------------------------------------------------------- ratelimit


def test_memory_bucket_refills_and_caps_at_burst() -> None:
    store = ratelimit.MemoryBucketStore()
    assert [store.take("k", 0.0, 1.0, 2) for _ in range(3)] == [True, True, False]
    assert store.take("k", 0.5, 1.0, 2) is False
    assert store.take("k", 1.0, 1.0, 2) is True
    assert [store.take("k", 1000.0, 1.0, 2) for _ in range(3)] == [True, True, False]  # never above burst


def test_memory_bucket_store_is_bounded_least_recently_used_first() -> None:
    store = ratelimit.MemoryBucketStore(max_keys=2)
    store.take("a", 0.0, 0.0, 1)
    store.take("b", 0.0, 0.0, 1)
    assert store.take("a", 0.0, 0.0, 1) is False  # a is now the most recently used
    store.take("c", 0.0, 0.0, 1)  # forgets b
    assert len(store) == 2
    assert store.take("a", 0.0, 0.0, 1) is False  # a was kept
    assert store.take("b", 0.0, 0.0, 1) is True  # b starts again, full


@pytest.mark.parametrize(
    ("key", "first", "second", "same_bucket"),
    [
        ("client_address", {"client": "192.0.2.7"}, {"client": "192.0.2.8"}, False),
        ("client_address", {"client": "192.0.2.7", "sender": "a@x.test"}, {"client": "192.0.2.7"}, True),
        ("sasl_username", {"user": "alice"}, {"user": "alice", "client": "192.0.2.99"}, True),
        ("sasl_username", {"user": "alice"}, {"user": "bob"}, False),
        ("sender", {"sender": "App@Example.com"}, {"sender": "app@example.com", "client": "192.0.2.9"}, True),
        ("sender", {"sender": "a@example.com"}, {"sender": "b@example.com"}, False),
    ],
)
def test_ratelimit_keys(key: str, first: dict[str, Any], second: dict[str, Any], same_bucket: bool) -> None:
    clock = MemoryReactorClock()
    settings = ratelimit.RateLimitSettings(key=key, rate=Rate(1, 60.0), burst=1)
    policy = ratelimit.RateLimitPolicy(settings, clock, ratelimit.MemoryBucketStore())
    defaults = {"sender": "s@client.test"}
    assert verdict_of(policy.mail(make_context("mail", **{**defaults, **first}))) == CONTINUE
    verdict = verdict_of(policy.mail(make_context("mail", **{**defaults, **second})))
    assert (verdict.kind is Kind.DEFER) is same_bucket


def test_ratelimit_without_its_key_has_no_opinion() -> None:
    policy = ratelimit.make_policy(
        ratelimit.RateLimitSettings("sasl_username", Rate(1, 60.0), 1), make_environment()
    )
    for _ in range(3):
        assert verdict_of(policy.mail(make_context("mail", user=None, sender="a@b.test"))) == CONTINUE


def test_ratelimit_in_a_chain_defers_mail_and_recovers_with_time() -> None:
    chain = runner({"plugin": "networks", "allow": ["0.0.0.0/0"]}, {"plugin": "ratelimit", "rate": "2/10s"})
    session = chain.session()
    session.connect()
    session.helo()
    codes = []
    for _ in range(3):
        answer = session.mail("a@b.test")
        codes.append(answer.code)
        session.rset()
    assert codes == [250, 250, 450]
    reply = session.mail("a@b.test").reply
    assert reply is not None and (reply.status, reply.text) == (
        "4.7.1",
        "Error: rate limit exceeded, try again later",
    )
    chain.clock.advance(4.9)
    assert session.mail("a@b.test").code == 450
    chain.clock.advance(0.2)
    assert session.mail("a@b.test").accepted


def test_ratelimit_with_a_deferred_store() -> None:
    class SlowStore:
        def __init__(self) -> None:
            self.pending: list[Deferred[bool]] = []

        def take(self, key: str, now: float, per_second: float, burst: float) -> Deferred[bool]:
            d: Deferred[bool] = Deferred()
            self.pending.append(d)
            return d

    store = SlowStore()
    policy = ratelimit.RateLimitPolicy(
        ratelimit.RateLimitSettings("client_address", Rate(1, 1.0), 1),
        MemoryReactorClock(),
        store,
        prefix="p:",
    )
    result = policy.mail(make_context("mail"))
    store.pending[0].callback(False)
    assert verdict_of(result).kind is Kind.DEFER


# ----------------------------------------------------------------------------- dnsbl


def a_answer(name: str, *addresses: str, ttl: int = 300) -> Any:
    records = [dns.RRHeader(name, dns.A, ttl=ttl, payload=dns.Record_A(a, ttl)) for a in addresses]
    return (records, [], [])


class FakeResolver:
    """Answers lookupAddress from a table: a list of addresses, an exception, or "hang"."""

    def __init__(self, table: dict[str, Any]) -> None:
        self.table = table
        self.queries: list[tuple[str, Any]] = []

    def lookupAddress(self, name: str, timeout: Any = None) -> Deferred[Any]:
        self.queries.append((name, timeout))
        answer = self.table.get(name, DomainError(name))
        if answer == "hang":
            return Deferred()
        if isinstance(answer, Exception):
            return fail(answer)
        addresses, ttl = answer
        return succeed(a_answer(name, *addresses, ttl=ttl))


def dnsbl_policy(resolver: FakeResolver, clock: MemoryReactorClock | None = None, **options: Any) -> Any:
    settings = dnsbl.PLUGIN.parse_options(
        {"zones": ["bl.test", {"zone": "other.test", "timeout": "1s"}], **options}
    )
    env = make_environment(
        clock or MemoryReactorClock(), resolver=resolver, log=Logger(observer=lambda e: None)
    )
    return dnsbl.PLUGIN.make_policy(settings, env)


def test_dnsbl_query_names() -> None:
    assert dnsbl.query_name("192.0.2.7", "bl.test") == "7.2.0.192.bl.test"
    assert dnsbl.query_name("::ffff:192.0.2.7", "bl.test") == "7.2.0.192.bl.test"
    assert dnsbl.query_name("2001:db8::1", "bl.test") == ("1." + "0." * 23 + "8.b.d.0.1.0.0.2.bl.test")
    assert dnsbl.query_name("not an ip", "bl.test") is None


def test_dnsbl_rejects_a_listed_client_and_caches_answers_for_their_ttl() -> None:
    clock = MemoryReactorClock()
    resolver = FakeResolver({"7.2.0.192.other.test": (["127.0.0.2"], 60)})
    policy = dnsbl_policy(resolver, clock)
    verdict = verdict_of(policy.mail(make_context("mail", client="192.0.2.7")))
    assert verdict.kind is Kind.REJECT
    assert verdict.reply.text == "Service unavailable; client [192.0.2.7] blocked using other.test"
    assert sorted(q for q, _ in resolver.queries) == ["7.2.0.192.bl.test", "7.2.0.192.other.test"]
    assert dict(resolver.queries)["7.2.0.192.other.test"] == (1.0,)  # the zone's own timeout
    verdict_of(policy.mail(make_context("mail", client="192.0.2.7")))
    assert len(resolver.queries) == 2  # both answers (the miss too) came from the cache
    clock.advance(61)
    verdict_of(policy.mail(make_context("mail", client="192.0.2.7")))
    assert len(resolver.queries) == 3  # the hit expired, the miss (5 minutes) did not
    clock.advance(300)
    verdict_of(policy.mail(make_context("mail", client="192.0.2.7")))
    assert len(resolver.queries) == 5


def test_dnsbl_ignores_error_codes_and_honours_match() -> None:
    resolver = FakeResolver(
        {"7.2.0.192.bl.test": (["127.255.255.254"], 60), "7.2.0.192.other.test": (["10.0.0.1"], 60)}
    )
    assert verdict_of(dnsbl_policy(resolver).mail(make_context("mail", client="192.0.2.7"))) == CONTINUE
    options = {"zones": [{"zone": "bl.test", "match": ["127.0.0.4"]}]}
    strict = FakeResolver(
        {"7.2.0.192.bl.test": (["127.0.0.2"], 60), "8.2.0.192.bl.test": (["127.0.0.4"], 60)}
    )
    settings = dnsbl.PLUGIN.parse_options(options)
    policy = dnsbl.PLUGIN.make_policy(settings, make_environment(resolver=strict))
    assert verdict_of(policy.mail(make_context("mail", client="192.0.2.7"))) == CONTINUE
    assert verdict_of(policy.mail(make_context("mail", client="192.0.2.8"))).kind is Kind.REJECT


def test_dnsbl_failures_and_timeouts_do_not_list() -> None:
    clock = MemoryReactorClock()
    resolver = FakeResolver({"7.2.0.192.bl.test": DNSQueryTimeoutError(1), "7.2.0.192.other.test": "hang"})
    result = dnsbl_policy(resolver, clock).mail(make_context("mail", client="192.0.2.7"))
    assert isinstance(result, Deferred) and not result.called
    clock.advance(1.0)  # other.test's own timeout
    assert verdict_of(result) == CONTINUE


def test_dnsbl_skips_clients_already_permitted_unless_told_otherwise() -> None:
    resolver = FakeResolver({"7.2.0.192.bl.test": (["127.0.0.2"], 60)})
    permitted = make_context("mail", client="192.0.2.7", relay_permitted_by="users")
    assert verdict_of(dnsbl_policy(resolver).mail(permitted)) == CONTINUE
    assert resolver.queries == []
    assert verdict_of(dnsbl_policy(resolver, check_permitted=True).mail(permitted)).kind is Kind.REJECT


def test_dnsbl_stage_is_configurable() -> None:
    policy = dnsbl_policy(FakeResolver({}), stage="connect")
    assert policy.hooks == frozenset({"connect"})
    chain = ChainRunner.from_config(
        {"bl": {"plugin": "dnsbl", "zones": ["bl.test"], "stage": "connect"}},
        resolver=FakeResolver({"7.2.0.192.bl.test": (["127.0.0.2"], 60)}),
    )
    refused = chain.session("192.0.2.7").connect()
    assert refused.code == 554
    assert chain.session("192.0.2.8").connect().accepted


def test_builtins_permit_only_where_documented() -> None:
    """Every built-in's PERMITs, as a table: a misconfigured chain never opens the relay by accident."""
    session_permits = runner({"plugin": "networks", "allow": ["192.0.2.0/24"]}).session()
    session_permits.connect()
    assert session_permits.state.relay_permits == {"session": "p0"}
    for table in [
        {"plugin": "sender-domains", "domains": ["b.test"]},
        {"plugin": "max-recipients", "max": 5},
        {"plugin": "ratelimit", "rate": "10/s"},
        {"plugin": "auth"},  # no AUTH in this session
    ]:
        session = runner(table).session()
        session.connect()
        session.helo()
        session.mail("a@b.test")
        assert session.rcpt("x@example.net").code == 554, table
    assert PERMIT.decisive


def test_ratelimit_uses_a_shared_bucket_store_when_given_one() -> None:
    store = ratelimit.MemoryBucketStore()
    settings = ratelimit.PLUGIN.parse_options({"rate": "1/m", "key": "sasl_username"})
    policy = ratelimit.PLUGIN.make_policy(settings, make_environment(policy="rate", bucket_store=store))
    assert verdict_of(policy.mail(make_context("mail", user="alice"))) == CONTINUE
    assert verdict_of(policy.mail(make_context("mail", user="alice"))).kind is Kind.DEFER
    assert list(store._buckets) == ["rate:sasl_username:alice"]
