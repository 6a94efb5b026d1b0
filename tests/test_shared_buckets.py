"""``ratelimit`` buckets shared through Redis: the Lua script on a real redis-server, the rest on fakes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from peers import PeerRegistry
from redis_peer import RedisServer
from shared_fakes import FakeRedis
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from relaybal.policy.builtin import ratelimit
from relaybal.policy.verdicts import CONTINUE, Kind
from relaybal.shared.buckets import BUCKET, RedisBuckets, SharedBucketStore
from relaybal.shared.redis import DOWN, UP, RedisLink
from relaybal.testing import make_context, make_environment, verdict_of

# --------------------------------------------------------------------------- the script, for real


@pytest.fixture
def redis(peer_dir: Path, peer_registry: PeerRegistry) -> RedisServer:
    server = RedisServer(peer_dir / "redis", registry=peer_registry)
    server.start()
    return server


def run_script(
    redis: RedisServer, key: str, rate: float, burst: int, *, cost: int = 1, check: bool = True
) -> int:
    mode = "1" if check else "0"
    return int(redis.cli("EVAL", BUCKET.source, "1", key, str(rate), str(burst), str(cost), mode))


def redis_now(redis: RedisServer) -> float:
    seconds, micros = redis.cli("TIME").split("\n")
    return int(seconds) + int(micros) / 1e6


@pytest.mark.peers
def test_the_script_takes_burst_tokens_then_refuses(redis: RedisServer) -> None:
    rate = 4 / 60  # "4/m"
    assert [run_script(redis, "b:k", rate, 4) for _ in range(6)] == [1, 1, 1, 1, 0, 0]
    assert float(redis.cli("HGET", "b:k", "tokens")) < 1
    # Expires once it would be full again: (4 - tokens) / rate seconds (plus one).
    ttl = int(redis.cli("PTTL", "b:k"))
    assert 55_000 < ttl <= 61_000
    assert run_script(redis, "b:other", rate, 4) == 1  # buckets are per key


@pytest.mark.peers
def test_the_script_refills_with_redis_time(redis: RedisServer) -> None:
    rate = 1.0
    assert [run_script(redis, "b:k", rate, 2) for _ in range(3)] == [1, 1, 0]
    # As if the last check had been 1.5 s ago (Redis's clock decides, not the nodes'): 1 token back.
    redis.cli("HSET", "b:k", "tokens", "0", "ts", f"{redis_now(redis) - 1.5:.6f}")
    assert [run_script(redis, "b:k", rate, 2) for _ in range(2)] == [1, 0]


@pytest.mark.peers
def test_charging_goes_below_zero_down_to_minus_burst(redis: RedisServer) -> None:
    rate = 1 / 60
    assert run_script(redis, "b:k", rate, 3, cost=5, check=False) == 1  # 3 - 5 = -2
    assert -2.01 < float(redis.cli("HGET", "b:k", "tokens")) <= -1.99
    assert run_script(redis, "b:k", rate, 3) == 0
    assert run_script(redis, "b:k", rate, 3, cost=50, check=False) == 1
    assert float(redis.cli("HGET", "b:k", "tokens")) >= -3.0


# --------------------------------------------------------------------------- the store, on fakes


class ScriptStandIn:
    """The bucket script's arithmetic in Python, on the fake clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.buckets: dict[str, tuple[float, float]] = {}
        self.charges: list[tuple[str, int]] = []

    def __call__(self, keys: list[str], args: list[str]) -> int:
        rate, burst, cost, check = float(args[0]), float(args[1]), int(float(args[2])), args[3] == "1"
        now = self.clock.seconds()
        tokens, ts = self.buckets.get(keys[0], (burst, now))
        tokens = min(burst, tokens + max(0.0, now - ts) * rate)
        taken = 0
        if check:
            if tokens >= cost:
                tokens -= cost
                taken = 1
        else:
            self.charges.append((keys[0], cost))
            tokens = max(-burst, tokens - cost)
            taken = 1
        self.buckets[keys[0]] = (tokens, now)
        return taken


def result_of(value: bool | Deferred[bool]) -> bool:
    if isinstance(value, bool):
        return value
    out: list[Any] = []
    value.addBoth(out.append)
    assert out and isinstance(out[0], bool), out
    return out[0]


def setup() -> tuple[Clock, FakeRedis, ScriptStandIn]:
    clock = Clock()
    clock.advance(1_000_000)
    redis = FakeRedis(clock)
    script = ScriptStandIn(clock)
    redis.scripts[BUCKET.sha1] = script
    return clock, redis, script


def node(clock: Clock, redis: FakeRedis) -> RedisBuckets:
    return RedisBuckets(RedisLink(redis, clock, timeout=0.2, where="fake"), "relaybal:")


def test_two_nodes_share_one_bucket() -> None:
    clock, redis, script = setup()
    one, two = node(clock, redis), node(clock, redis)
    per_second, burst = 5 / 60, 5
    key = "rate:client_address:192.0.2.7"
    nodes = [one, two] * 5
    taken = [result_of(n.take(key, clock.seconds(), per_second, burst)) for n in nodes]
    assert taken.count(True) == 5 and taken[:5] == [True] * 5
    assert list(script.buckets) == ["relaybal:bucket:rate:client_address:192.0.2.7"]


def test_an_outage_decides_locally_then_charges_what_was_given() -> None:
    clock, redis, script = setup()
    one = node(clock, redis)
    key, per_second, burst = "rate:client_address:192.0.2.7", 5 / 60, 5
    assert result_of(one.take(key, clock.seconds(), per_second, burst))  # 1 from Redis (mirrored locally)
    redis.set_mode("hang")
    d = one.take(key, clock.seconds(), per_second, burst)
    clock.advance(0.2)  # the timeout: this decision is local
    assert result_of(d) is True
    assert one.link.state == DOWN
    # During the outage: the local bucket (1 mirrored + 1 local spent) has 3 left, answered at once.
    local = [one.take(key, clock.seconds(), per_second, burst) for _ in range(5)]
    assert local == [True, True, True, False, False]
    assert one.unreconciled == 1
    redis.set_mode("up")
    clock.advance(1.0)  # the probe: back, and the 4 local tokens are charged
    assert one.link.state == UP
    assert script.charges == [("relaybal:bucket:" + key, 4)]
    assert one.unreconciled == 0
    assert one.link.status().reconciled == 1
    # 1 + 4 spent of 5 (a few seconds of refill aside): the shared bucket is empty.
    assert result_of(one.take(key, clock.seconds(), per_second, burst)) is False


def test_error_replies_fall_back_without_an_outage() -> None:
    clock, redis, script = setup()
    del redis.scripts[BUCKET.sha1]
    one = node(clock, redis)
    assert result_of(one.take("k", clock.seconds(), 1.0, 2)) is True
    assert one.link.state != DOWN


def test_the_policy_uses_the_shared_store_and_without_shared_state_memory() -> None:
    clock, redis, script = setup()
    buckets = node(clock, redis)
    current: list[Any] = [SimpleNamespace(buckets=buckets)]
    store = SharedBucketStore(lambda: current[0])
    settings = ratelimit.PLUGIN.parse_options({"rate": "2/m"})
    environment = make_environment(clock, policy="rate", bucket_store=store)
    policy = ratelimit.PLUGIN.make_policy(settings, environment)
    verdicts = [verdict_of(policy.mail(make_context("mail", client="192.0.2.9"))) for _ in range(3)]
    assert verdicts[:2] == [CONTINUE, CONTINUE] and verdicts[2].kind is Kind.DEFER
    assert list(script.buckets) == ["relaybal:bucket:rate:client_address:192.0.2.9"]
    current[0] = None  # shared_state removed by a reload: this process's memory
    assert verdict_of(policy.mail(make_context("mail", client="192.0.2.10"))) == CONTINUE
    assert list(script.buckets) == ["relaybal:bucket:rate:client_address:192.0.2.9"]
    assert list(store.memory._buckets) == ["rate:client_address:192.0.2.10"]
