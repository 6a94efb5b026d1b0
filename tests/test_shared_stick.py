"""Stick tables shared through Redis, with a fake Redis and fake clocks (two "nodes" in one test)."""

from __future__ import annotations

import random

from shared_fakes import FakeRedis
from test_splice_unit import Harness
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from relaybal.balance.backend import Backend
from relaybal.config import BackendConfig, parse_config
from relaybal.shared.redis import DOWN, UP, RedisLink
from relaybal.shared.stick import SharedStick, glob_escape

KEY = b"192.0.2.7"


def backend_config(expire: str = "30m", size: int = 100) -> BackendConfig:
    config = parse_config(
        {
            "frontend": {"f": {"mode": "splice", "listen": ["tcp:0"], "backend": "mx"}},
            "backend": {
                "mx": {
                    "stick": {"size": size, "expire": expire},
                    "server": [
                        {"name": "a", "address": "10.0.0.1:25"},
                        {"name": "b", "address": "10.0.0.2:25"},
                        {"name": "c", "address": "10.0.0.3:25"},
                    ],
                }
            },
        }
    )
    return config.backends["mx"]


class Node:
    """One relaybal process: its backend, its link to the shared fake Redis, its shared table."""

    def __init__(self, clock: Clock, redis: FakeRedis, seed: int, expire: str = "30m") -> None:
        self.backend = Backend(backend_config(expire), clock, random.Random(seed))
        self.link = RedisLink(redis, clock, timeout=0.2, where="fake")
        self.share = SharedStick(self.link, "relaybal:", self.backend)
        self.backend.stick_share = self.share

    def choose(self, key: bytes = KEY) -> str:
        """What a splice session does: prefetch, pick, connect."""
        d = self.backend.prefetch(key)
        assert d is not None
        fired: list[object] = []
        d.addBoth(fired.append)
        assert fired == [None]
        server = self.backend.pick(key)
        assert server is not None
        self.backend.connected(server, key)
        return server.name


def two_nodes(expire: str = "30m") -> tuple[Clock, FakeRedis, Node, Node]:
    clock = Clock()
    clock.advance(1000)
    redis = FakeRedis(clock)
    return clock, redis, Node(clock, redis, 1, expire), Node(clock, redis, 2, expire)


def test_a_client_sticks_to_one_server_through_either_node() -> None:
    clock, redis, one, two = two_nodes()
    clients = [f"192.0.2.{n}".encode() for n in range(1, 7)]
    first = {key: one.choose(key) for key in clients}
    assert sorted(first.values()) == ["a", "a", "b", "b", "c", "c"]  # round robin on node one
    # Node two has never seen these clients; in reverse order its own round robin would differ.
    second = {key: two.choose(key) for key in reversed(clients)}
    assert second == first
    assert redis.data["relaybal:stick:mx:192.0.2.1"][0] == first[clients[0]]


def test_without_sharing_the_nodes_disagree() -> None:
    """The same scenario with the shares removed: the test above would fail without Redis."""
    clock, redis, one, two = two_nodes()
    one.backend.stick_share = two.backend.stick_share = None
    clients = [f"192.0.2.{n}".encode() for n in range(1, 7)]
    first = {}
    for key in clients:
        server = one.backend.pick(key)
        assert server is not None
        one.backend.connected(server, key)
        first[key] = server.name
    second = {}
    for key in reversed(clients):
        server = two.backend.pick(key)
        assert server is not None
        second[key] = server.name
    assert second != first


def test_entries_expire_in_redis_as_in_the_table() -> None:
    clock, redis, one, two = two_nodes(expire="1m")
    server = one.choose()
    assert redis.ttl_ms("relaybal:stick:mx:192.0.2.7") == 60_000
    clock.advance(30)
    assert two.choose() == server  # GETEX restarts the TTL, as a use restarts the local expiry
    assert redis.ttl_ms("relaybal:stick:mx:192.0.2.7") == 60_000
    clock.advance(61)
    assert redis._live("relaybal:stick:mx:192.0.2.7") is None


def test_the_shared_entry_wins_over_a_stale_local_one() -> None:
    clock, redis, one, two = two_nodes()
    assert one.choose() == "a"
    redis.data["relaybal:stick:mx:192.0.2.7"] = ("c", None)  # another node moved the client since
    assert one.choose() == "c"
    assert one.backend.stick is not None and one.backend.stick.lookup(KEY, clock.seconds()) == "c"


def test_no_shared_entry_removes_the_local_one() -> None:
    clock, redis, one, two = two_nodes()
    one.choose()
    redis.data.clear()  # "clear table" on another node, or expired there
    fired: list[object] = []
    d = one.backend.prefetch(KEY)
    assert d is not None
    d.addBoth(fired.append)
    assert one.backend.stick is not None and one.backend.stick.lookup(KEY, clock.seconds()) is None


def test_a_matching_fetch_saves_the_set() -> None:
    clock, redis, one, two = two_nodes()
    one.choose()
    sent = len(redis.sent)
    two.choose()
    assert [args[0] for args in redis.sent[sent:]] == ["GETEX"]  # one round trip per connection


def test_outage_decides_locally_and_reconciles_with_nx() -> None:
    clock, redis, one, two = two_nodes()
    redis.set_mode("down")
    c1, c2 = b"192.0.2.1", b"192.0.2.2"
    s1 = one.choose(c1)
    s2 = one.choose(c2)
    assert one.link.state == DOWN
    assert one.share.unreconciled == 2
    assert redis.data == {}
    redis.set_mode("up")
    # While node one has not noticed yet, node two writes its own entry for c2 (newer).
    two.link.call("PING")
    other = next(name for name in "abc" if name != s2)
    redis.data["relaybal:stick:mx:192.0.2.2"] = (other, None)
    clock.advance(1.0)  # node one's probe: back, reconcile
    assert one.link.state == UP
    assert redis.data["relaybal:stick:mx:192.0.2.1"][0] == s1
    assert redis.data["relaybal:stick:mx:192.0.2.2"][0] == other  # NX kept the newer entry
    assert one.link.status().reconciled == 1
    assert one.share.unreconciled == 0
    assert two.choose(c1) == s1


def test_an_unreconciled_entry_is_not_dropped_by_an_empty_fetch() -> None:
    clock, redis, one, two = two_nodes()
    redis.set_mode("down")
    server = one.choose()
    redis.set_mode("up")
    one.link.state = UP  # as if a reply had arrived before the probe
    assert one.choose() == server


def test_forget_deletes_the_shared_entry() -> None:
    clock, redis, one, two = two_nodes()
    one.choose()
    one.share.forget(KEY)
    assert redis.data == {}
    one.share.forget(None)
    assert redis.sent[-1][0] == "EVAL"
    assert glob_escape("relay*bal:") == "relay\\*bal:"


def test_splice_session_waits_for_the_shared_entry_then_connects() -> None:
    harness = Harness(backend={"stick": {"size": 10, "expire": "1m"}})
    redis = FakeRedis(harness.reactor)  # type: ignore[arg-type]
    link = RedisLink(redis, harness.reactor, timeout=0.2, where="fake")
    harness.backend.stick_share = SharedStick(link, "relaybal:", harness.backend)
    redis.data["relaybal:stick:mx:192.0.2.7"] = ("b", None)
    harness.client()
    host, port, factory = harness.pending_connect()
    assert host == "10.0.0.2"  # b, from the shared table (round robin alone starts with a)


def test_splice_session_goes_on_locally_after_the_timeout() -> None:
    harness = Harness(backend={"stick": {"size": 10, "expire": "1m"}})
    redis = FakeRedis(harness.reactor)  # type: ignore[arg-type]
    redis.set_mode("hang")
    link = RedisLink(redis, harness.reactor, timeout=0.2, where="fake")
    harness.backend.stick_share = SharedStick(link, "relaybal:", harness.backend)
    harness.client()
    assert harness.reactor.tcpClients == []  # waiting for Redis
    harness.reactor.advance(0.2)
    host, port, factory = harness.pending_connect()
    assert host == "10.0.0.1"
    harness.client(port=40001)
    assert len(harness.reactor.tcpClients) == 2  # during the outage: no wait at all


def test_client_leaving_during_the_lookup_connects_nowhere() -> None:
    harness = Harness(backend={"stick": {"size": 10, "expire": "1m"}})
    redis = FakeRedis(harness.reactor)  # type: ignore[arg-type]
    redis.set_mode("hang")
    link = RedisLink(redis, harness.reactor, timeout=0.2, where="fake")
    harness.backend.stick_share = SharedStick(link, "relaybal:", harness.backend)
    session, transport = harness.client()
    transport.loseConnection()
    session.connectionLost(Failure(ConnectionDone()))
    harness.reactor.advance(0.2)
    assert harness.reactor.tcpClients == []
    assert harness.frontend.current == 0
