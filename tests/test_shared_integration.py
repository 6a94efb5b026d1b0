"""Two real relaybal daemons sharing one real ``redis-server`` (``[global] shared_state``).

- a sticky client address reaches the same server through either node;
- with Redis stopped mid-run both nodes keep relaying on node-local state, log
  the outage once, show it in ``/metrics`` and ``/stats.json``, and reconcile
  after Redis returns (entries recorded meanwhile are written to Redis);
- the ``ratelimit`` policy (rate N per minute) lets exactly N messages through
  across both nodes.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from peers import PeerRegistry, RelaybalDaemon, SmtpSink, free_port, send_one_message, wait_until
from redis_peer import RedisServer

pytestmark = pytest.mark.peers

Factory = Callable[..., Any]


@pytest.fixture
def redis(peer_dir: Path, peer_registry: PeerRegistry) -> RedisServer:
    server = RedisServer(peer_dir / "redis", registry=peer_registry)
    server.start()
    return server


def node_config(
    name: str,
    *,
    port: int,
    http: int,
    state_dir: Path,
    redis: RedisServer,
    sinks: Sequence[SmtpSink],
) -> str:
    lines = [
        "[global]",
        f'hostname = "{name}.test"',
        f'state_dir = "{state_dir}"',
        f'shared_state = {{ redis = "{redis.address}", key_prefix = "relaybal:", timeout = "200ms" }}',
        "[admin]",
        f'http = "tcp:{http}:interface=127.0.0.1"',
        "[frontend.smtp]",
        'mode = "splice"',
        f'listen = ["tcp:{port}:interface=127.0.0.1"]',
        'backend = "mx"',
        "[backend.mx]",
        'stick = { on = "src", size = 1000, expire = "10m" }',
    ]
    for i, sink in enumerate(sinks, start=1):
        lines += ["[[backend.mx.server]]", f'name = "mx{i}"', f'address = "127.0.0.1:{sink.port}"']
    return "\n".join(lines) + "\n"


class Pair:
    """Two nodes over the same three sinks and the same Redis."""

    def __init__(
        self, peer_dir: Path, sink_factory: Factory, relaybal_factory: Factory, redis: RedisServer
    ) -> None:
        self.sinks: list[SmtpSink] = [sink_factory() for _ in range(3)]
        self.ports = [free_port(), free_port()]
        self.http = [free_port(), free_port()]
        self.nodes: list[RelaybalDaemon] = []
        for i in range(2):
            state = peer_dir / f"state{i}"
            state.mkdir()
            config = node_config(
                f"node{i}", port=self.ports[i], http=self.http[i], state_dir=state, redis=redis,
                sinks=self.sinks,
            )  # fmt: skip
            self.nodes.append(relaybal_factory(config, wait_ports=[self.ports[i], self.http[i]]))
        self.sent = 0

    def send(self, node: int, client: int) -> str:
        """One message from 127.0.0.CLIENT through node NODE; returns the server (mx1…) that got it."""
        self.sent += 1
        rcpt = f"m{self.sent}-c{client}@example.test"
        done = send_one_message(self.ports[node], source_address=(f"127.0.0.{client}", 0), rcpts=[rcpt])
        assert done.accepted, done
        wait_until(lambda: self.where(rcpt) is not None, 10, f"{rcpt} at a sink")
        found = self.where(rcpt)
        assert found is not None
        return found

    def where(self, rcpt: str) -> str | None:
        for i, sink in enumerate(self.sinks, start=1):
            if any(rcpt in arg for arg in sink.rcpt_args()):
                return f"mx{i}"
        return None

    def metrics(self, node: int) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http[node]}/metrics", timeout=10) as reply:
            return reply.read().decode()  # type: ignore[no-any-return]

    def stats(self, node: int) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http[node]}/stats.json", timeout=10) as reply:
            return json.loads(reply.read())  # type: ignore[no-any-return]


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_a_sticky_client_reaches_the_same_server_through_either_node(
    peer_dir: Path, sink_factory: Factory, relaybal_factory: Factory, redis: RedisServer
) -> None:
    pair = Pair(peer_dir, sink_factory, relaybal_factory, redis)
    clients = list(range(11, 17))
    first = {client: pair.send(0, client) for client in clients}
    assert sorted(first.values()) == ["mx1", "mx1", "mx2", "mx2", "mx3", "mx3"]  # node 0's round robin
    # Node 1 has not seen these clients; its own round robin, in reverse order, would disagree.
    second = {client: pair.send(1, client) for client in reversed(clients)}
    assert second == first
    # And back through node 0 again, alternating.
    third = {client: pair.send(client % 2, client) for client in clients}
    assert third == first
    assert redis.cli("GET", "relaybal:stick:mx:127.0.0.11") == first[11]
    ttl = int(redis.cli("PTTL", "relaybal:stick:mx:127.0.0.11"))
    assert 0 < ttl <= 600_000
    for node in (0, 1):
        assert metric(pair.metrics(node), "relaybal_shared_state_up") == 1.0
        assert "unreachable" not in pair.nodes[node].log()


def test_redis_stopped_mid_run_both_nodes_keep_relaying_and_reconcile(
    peer_dir: Path, sink_factory: Factory, relaybal_factory: Factory, redis: RedisServer
) -> None:
    pair = Pair(peer_dir, sink_factory, relaybal_factory, redis)
    before = pair.send(0, 21)
    assert pair.send(1, 21) == before
    redis.stop()
    # Mail keeps flowing through both nodes; each outage is logged once per node.
    during = {}
    for round_ in range(3):
        during[(0, 31)] = pair.send(0, 31)
        during[(1, 32)] = pair.send(1, 32)
        assert pair.send(round_ % 2, 21) == before  # the local tables still hold the old entries
    for node in (0, 1):
        wait_until(lambda n=node: "unreachable" in pair.nodes[n].log(), 10, "the outage in the log")  # type: ignore[misc]
        assert pair.nodes[node].log().count("unreachable") == 1
        text = pair.metrics(node)
        assert metric(text, "relaybal_shared_state_up") == 0.0
        assert metric(text, "relaybal_shared_state_fallbacks_total") >= 3
        assert metric(text, "relaybal_shared_state_unreconciled") >= 1
        assert pair.stats(node)["relaybal"]["shared_state"]["state"] == "down"
    redis.start()  # same port, empty: nothing was saved
    for node in (0, 1):
        wait_until(lambda n=node: "is back after" in pair.nodes[n].log(), 20, "the outage's end")  # type: ignore[misc]
    # Reconciled: what each node decided alone is in Redis now, so the other node follows it.
    def shared_entry(client: int) -> str:
        return redis.cli("GET", f"relaybal:stick:mx:127.0.0.{client}")

    wait_until(lambda: shared_entry(31) == during[(0, 31)], 10, "client 31's entry reconciled")
    wait_until(lambda: shared_entry(32) == during[(1, 32)], 10, "client 32's entry reconciled")
    assert pair.send(1, 31) == during[(0, 31)]
    assert pair.send(0, 32) == during[(1, 32)]
    for node in (0, 1):
        text = pair.metrics(node)
        assert metric(text, "relaybal_shared_state_up") == 1.0
        assert metric(text, "relaybal_shared_state_outages_total") == 1.0
        assert metric(text, "relaybal_shared_state_reconciled_total") >= 1
        assert pair.nodes[node].log().count("unreachable") == 1
        assert pair.stats(node)["relaybal"]["shared_state"]["state"] == "up"


# ----------------------------------------------------------------------------- rate limits


def relay_node_config(
    name: str, *, port: int, http: int, state_dir: Path, redis: RedisServer, sink: SmtpSink, rate: str
) -> str:
    return f"""
[global]
hostname = "{name}.test"
state_dir = "{state_dir}"
shared_state = {{ redis = "{redis.address}", timeout = "200ms" }}

[admin]
http = "tcp:{http}:interface=127.0.0.1"

[frontend.apps]
mode = "relay"
listen = ["tcp:{port}:interface=127.0.0.1"]
backend = "gw"
policies = ["local", "rate"]

[policy.local]
plugin = "networks"
allow = ["127.0.0.0/8"]

[policy.rate]
plugin = "ratelimit"
key = "client_address"
rate = "{rate}"

[backend.gw]
[[backend.gw.server]]
name = "gw1"
address = "127.0.0.1:{sink.port}"
"""


class RelayPair:
    """Two relay nodes with the same ratelimit policy, one gateway (a sink), one Redis."""

    def __init__(
        self, peer_dir: Path, sink_factory: Factory, relaybal_factory: Factory, redis: RedisServer, rate: str
    ) -> None:
        self.sink: SmtpSink = sink_factory()
        self.ports = [free_port(), free_port()]
        self.http = [free_port(), free_port()]
        self.nodes: list[RelaybalDaemon] = []
        for i in range(2):
            state = peer_dir / f"relay-state{i}"
            state.mkdir()
            config = relay_node_config(
                f"relay{i}", port=self.ports[i], http=self.http[i], state_dir=state, redis=redis,
                sink=self.sink, rate=rate,
            )  # fmt: skip
            self.nodes.append(relaybal_factory(config, wait_ports=[self.ports[i], self.http[i]]))
        self.sent = 0

    def send(self, node: int, client: int) -> bool:
        """One message from 127.0.0.CLIENT through node NODE: accepted, or deferred by the rate limit."""
        self.sent += 1
        done = send_one_message(
            self.ports[node], source_address=(f"127.0.0.{client}", 0), rcpts=[f"r{self.sent}@example.test"]
        )
        if done.accepted:
            return True
        assert done.mail is not None and done.mail.code == 450, done
        assert done.mail.text.startswith("4.7.1 "), done  # the enhanced status code of a rate limit
        return False

    def stats(self, node: int) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http[node]}/stats.json", timeout=10) as reply:
            return json.loads(reply.read())  # type: ignore[no-any-return]


def test_a_client_limited_to_n_per_minute_gets_exactly_n_through_both_nodes(
    peer_dir: Path, sink_factory: Factory, relaybal_factory: Factory, redis: RedisServer
) -> None:
    pair = RelayPair(peer_dir, sink_factory, relaybal_factory, redis, rate="4/m")
    accepted = [pair.send(i % 2, 41) for i in range(10)]
    assert accepted.count(True) == 4, accepted  # without shared state each node would take 4
    assert accepted[:4] == [True, True, True, True]
    assert pair.send(1, 42) and pair.send(0, 42)  # another client has its own bucket
    pair.sink.wait_for_count(6, timeout=20)
    assert redis.cli("EXISTS", "relaybal:bucket:rate:client_address:127.0.0.41") == "1"
    for node in (0, 1):
        assert pair.stats(node)["relaybal"]["shared_state"]["fallbacks"] == 0


def test_rate_limits_fall_back_during_an_outage_and_are_charged_after_it(
    peer_dir: Path, sink_factory: Factory, relaybal_factory: Factory, redis: RedisServer
) -> None:
    pair = RelayPair(peer_dir, sink_factory, relaybal_factory, redis, rate="4/h")
    assert pair.send(0, 43)  # 1 of 4, through Redis
    redis.stop()
    # Mail keeps flowing: each node decides from its own buckets.
    assert pair.send(0, 43) and pair.send(0, 43)
    assert pair.send(1, 43)
    for node in (0, 1):
        assert pair.nodes[node].log().count("unreachable") == 1
        assert pair.stats(node)["relaybal"]["shared_state"]["unreconciled"] == 1
    redis.start()
    for node in (0, 1):
        wait_until(
            lambda n=node: pair.stats(n)["relaybal"]["shared_state"]["state"] == "up"  # type: ignore[misc]
            and pair.stats(n)["relaybal"]["shared_state"]["unreconciled"] == 0,
            20,
            "the outage's end and the buckets charged",
        )
    # Redis restarted empty, then was charged 2 + 1 tokens: 1 of the 4 is left for the whole pair.
    # (The checks that timed out when Redis stopped were cancelled, not sent when it came back.)
    accepted = [pair.send(i % 2, 43) for i in range(4)]
    assert accepted == [True, False, False, False]


def test_a_node_started_while_redis_is_down_relays_and_finds_redis_later(
    peer_dir: Path, sink_factory: Factory, relaybal_factory: Factory, peer_registry: PeerRegistry
) -> None:
    redis = RedisServer(peer_dir / "late-redis", registry=peer_registry)  # not started yet
    pair = Pair(peer_dir, sink_factory, relaybal_factory, redis)
    first = pair.send(0, 51)
    assert pair.send(0, 51) == first  # the local table
    for node in (0, 1):
        wait_until(lambda n=node: "unreachable" in pair.nodes[n].log(), 10, "the outage in the log")  # type: ignore[misc]
    redis.start()
    for node in (0, 1):
        wait_until(lambda n=node: "is back after" in pair.nodes[n].log(), 20, "Redis found")  # type: ignore[misc]
        assert pair.nodes[node].log().count("unreachable") == 1
        assert "Scheduling retry" not in pair.nodes[node].log()  # no line per reconnection attempt
    wait_until(lambda: redis.cli("GET", "relaybal:stick:mx:127.0.0.51") == first, 10, "client 51 reconciled")
    assert pair.send(1, 51) == first


def test_a_hung_redis_costs_each_node_one_timeout_then_nothing(
    peer_dir: Path, sink_factory: Factory, relaybal_factory: Factory, redis: RedisServer
) -> None:
    """SIGSTOP: Redis accepts connections and never answers (an overloaded or frozen server)."""
    pair = Pair(peer_dir, sink_factory, relaybal_factory, redis)
    before = pair.send(0, 61)
    assert redis.pid is not None
    os.kill(redis.pid, signal.SIGSTOP)
    try:
        for _ in range(3):
            assert pair.send(0, 61) == before and pair.send(1, 61) == before
        for node in (0, 1):
            log = pair.nodes[node].log()
            assert log.count("unreachable (no reply within 200 ms)") == 1
            assert metric(pair.metrics(node), "relaybal_shared_state_timeouts_total") == 1.0
    finally:
        os.kill(redis.pid, signal.SIGCONT)
    for node in (0, 1):
        wait_until(lambda n=node: "is back after" in pair.nodes[n].log(), 30, "Redis answering again")  # type: ignore[misc]
    assert pair.send(1, 62) == pair.send(0, 62)
