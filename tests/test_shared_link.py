"""The Redis link: every call bounded by the timeout, node-local fallback, outages logged once, recovery."""

from __future__ import annotations

from typing import Any

import pytest
from shared_fakes import FakeRedis
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger

from relaybal.config import SharedStateConfig, parse_config
from relaybal.shared import redis as redis_module
from relaybal.shared.redis import DOWN, FALLBACK, UP, RedisLink, parse_redis_address
from relaybal.shared.state import SharedState, SharedStateError, read_password


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    captured: list[dict[str, Any]] = []
    monkeypatch.setattr(redis_module, "log", Logger(observer=captured.append))
    return captured


def texts(events: list[dict[str, Any]], word: str) -> list[dict[str, Any]]:
    return [e for e in events if word in e.get("log_format", "")]


def result_of(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]


def make(timeout: float = 0.2) -> tuple[Clock, FakeRedis, RedisLink]:
    clock = Clock()
    fake = FakeRedis(clock)
    return clock, fake, RedisLink(fake, clock, timeout=timeout, where="tcp:127.0.0.1:6379")


def test_answered_calls_pass_the_reply_and_count() -> None:
    clock, fake, link = make()
    assert result_of(link.call("SET", "k", "v")) == "OK"
    assert result_of(link.call("GET", "k")) == "v"
    assert link.state == UP  # the first reply ends "connecting"
    status = link.status()
    assert (status.calls, status.answered, status.fallbacks, status.outages) == (2, 2, 0, 0)


def test_a_slow_redis_falls_back_within_the_timeout_and_logs_the_outage_once(
    events: list[dict[str, Any]],
) -> None:
    clock, fake, link = make(timeout=0.2)
    link.call("PING")
    fake.set_mode("hang")
    d = link.call("GET", "k")
    clock.advance(0.199)
    assert not d.called
    clock.advance(0.001)
    assert result_of(d) is FALLBACK
    assert link.state == DOWN
    sent = len(fake.sent)
    # During the outage decisions do not wait and nothing is sent but the probe.
    for _ in range(50):
        assert result_of(link.call("GET", "k")) is FALLBACK
    assert len(fake.sent) == sent
    clock.advance(5.0)  # probes: only one PING outstanding while Redis hangs
    assert [a for a in fake.sent[sent:]] == [("PING",)]
    assert len(texts(events, "unreachable")) == 1
    status = link.status()
    assert status.state == DOWN and status.timeouts == 1 and status.fallbacks == 51 and status.outages == 1
    assert status.outage_seconds == pytest.approx(5.0)


def test_recovery_is_found_by_the_probe_and_runs_the_reconcilers(events: list[dict[str, Any]]) -> None:
    clock, fake, link = make()
    reconciled: list[int] = []
    link.on_recovered.append(lambda: reconciled.append(1) or 3)
    fake.set_mode("down")
    assert result_of(link.call("GET", "k")) is FALLBACK
    assert link.state == DOWN
    clock.advance(1.0)
    clock.advance(1.0)
    assert link.state == DOWN and reconciled == []
    fake.set_mode("up")
    clock.advance(1.0)
    assert link.state == UP
    assert reconciled == [1]
    assert link.status().reconciled == 3
    back = texts(events, "is back after")
    assert len(back) == 1 and back[0]["local"] == 1
    assert result_of(link.call("GET", "k")) is None  # calls go to Redis again
    # A second outage is logged again, once.
    fake.set_mode("down")
    link.call("GET", "k")
    link.call("GET", "k")
    assert len(texts(events, "unreachable")) == 2
    assert link.status().outages == 2


def test_hung_redis_recovers_when_the_client_drops_the_connection() -> None:
    clock, fake, link = make()
    fake.set_mode("hang")
    link.call("GET", "k")
    clock.advance(0.2)
    assert link.state == DOWN
    clock.advance(3.0)
    fake.set_mode("up")  # the stuck PING fails (connection dropped), the next one answers
    clock.advance(2.0)
    assert link.state == UP


def test_error_replies_fall_back_without_an_outage_and_are_logged_once(events: list[dict[str, Any]]) -> None:
    clock, fake, link = make()
    assert result_of(link.call("NOPE")) is FALLBACK
    assert result_of(link.call("NOPE")) is FALLBACK
    assert link.state != DOWN
    assert len(texts(events, "refused")) == 1
    assert link.status().errors == 2
    assert "unknown command" in link.status().last_error


def test_start_without_an_answer_starts_an_outage(events: list[dict[str, Any]]) -> None:
    clock, fake, link = make()
    fake.set_mode("hang")
    link.start()
    clock.advance(1.9)
    assert link.state == "connecting"
    clock.advance(0.1)
    assert link.state == DOWN
    assert len(texts(events, "unreachable")) == 1


def test_start_with_an_answer_logs_the_link(events: list[dict[str, Any]]) -> None:
    clock, fake, link = make()
    link.start()
    assert link.state == UP
    assert len(texts(events, "using Redis")) == 1
    clock.advance(10)
    assert link.state == UP


def test_stop_closes_and_later_calls_fall_back() -> None:
    clock, fake, link = make()
    link.stop()
    assert fake.closed
    assert result_of(link.call("GET", "k")) is FALLBACK


def test_a_command_still_waiting_when_the_timeout_fires_is_cancelled() -> None:
    """Decided locally: it must not run when Redis is back (a token would be taken twice)."""
    clock, fake, link = make()
    fake.set_mode("hang")
    d = link.call("GET", "k")
    waiting = fake.hung[0]
    clock.advance(0.2)
    assert result_of(d) is FALLBACK
    assert waiting.called  # cancelled
    fake.set_mode("up")  # the client's own late errback is ignored


def test_late_reply_after_the_timeout_is_ignored() -> None:
    clock, fake, link = make()
    fake.set_mode("hang")
    d = link.call("GET", "k")
    clock.advance(0.2)
    hung = fake.hung[0]
    fake.hung.clear()
    hung.callback("late")  # must not fire d twice
    assert result_of(d) is FALLBACK


def test_redis_address_forms() -> None:
    assert parse_redis_address("tcp:127.0.0.1:6379") == ("tcp", "127.0.0.1", 6379)
    assert parse_redis_address("tcp:[::1]:6380") == ("tcp", "::1", 6380)
    assert parse_redis_address("unix:/run/redis/redis.sock") == ("unix", "/run/redis/redis.sock", 0)


def test_config_keys_and_defaults() -> None:
    base: dict[str, Any] = {
        "frontend": {"a": {"mode": "splice", "listen": ["tcp:0"], "backend": "b"}},
        "backend": {"b": {"server": [{"name": "s", "address": "127.0.0.1:25"}]}},
    }
    assert parse_config(base).global_.shared_state is None
    base["global"] = {"shared_state": {"redis": "tcp:10.0.0.9:6379", "timeout": "50ms", "key_prefix": "eu:"}}
    shared = parse_config(base).global_.shared_state
    assert shared == SharedStateConfig(redis="tcp:10.0.0.9:6379", key_prefix="eu:", timeout=0.05)


def test_password_file(tmp_path: Any) -> None:
    path = tmp_path / "redis.pass"
    path.write_text("s3cret\n")
    assert read_password(str(path)) == "s3cret"
    with pytest.raises(SharedStateError, match="cannot read"):
        read_password(str(tmp_path / "missing"))
    with pytest.raises(SharedStateError, match="cannot read"):
        SharedState(
            SharedStateConfig(redis="tcp:127.0.0.1:1", password_file=str(tmp_path / "missing")), Clock()
        )
