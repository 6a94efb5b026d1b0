"""The real daemon's relay figures: smtp-source → ``twistd -n relaybal`` (spool, cut-through) → smtp-sinks.

``/stats.json`` and ``/metrics`` (parsed with ``prometheus_client.parser``)
must say exactly what the test sent and what the sinks received.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from peers import SmtpSink, free_port, smtp_source, wait_until
from web_client import http_get, metrics, sample, stats_json

pytestmark = pytest.mark.peers

Factory = Callable[..., Any]
LATENCY = "relaybal_relay_delivery_latency_seconds"


def relay_config(peer_dir: Path, spool_port: int, ct_port: int, http_port: int, sinks: list[SmtpSink]) -> str:
    servers = "".join(
        f'[[backend.gw.server]]\nname = "gw{i}"\naddress = "127.0.0.1:{sink.port}"\n'
        for i, sink in enumerate(sinks, start=1)
    )
    return f"""
[global]
state_dir = "{peer_dir}/state"
hostname = "relay.test"

[admin]
http = "tcp:{http_port}:interface=127.0.0.1"

[frontend.apps]
mode = "relay"
listen = ["tcp:{spool_port}:interface=127.0.0.1"]
backend = "gw"

[frontend.direct]
mode = "relay"
delivery = "cut-through"
listen = ["tcp:{ct_port}:interface=127.0.0.1"]
backend = "gw"

[backend.gw]
balance = "roundrobin"
{servers}"""


def send(port: int, count: int) -> None:
    done = smtp_source(
        port, sessions=5, messages=count, size=1000, number_rcpts=True,
        sender="app@client.test", rcpt="user@example.test",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_stats_and_metrics_count_the_relayed_mail(
    sink_factory: Factory, relaybal_factory: Factory, peer_dir: Path
) -> None:
    sinks: list[SmtpSink] = [sink_factory() for _ in range(3)]
    spool_port, ct_port, http_port = free_port(), free_port(), free_port()
    daemon = relaybal_factory(
        relay_config(peer_dir, spool_port, ct_port, http_port, sinks),
        wait_ports=[spool_port, ct_port, http_port],
    )

    # 30 messages through the spool: 10 per gateway (roundrobin), the queue empty at the end.
    send(spool_port, 30)
    wait_until(lambda: sum(s.count() for s in sinks) >= 30, 60, "30 messages at the sinks")

    def drained() -> bool:
        relay = stats_json(http_port)["relay"]
        return relay["queue"]["total"] == 0 and relay["recipients"]["delivered"] == 30

    wait_until(drained, 30, "the queue to empty")
    data = stats_json(http_port)
    relay = data["relay"]
    assert relay["accepted"] == 30
    assert relay["queue"] == {"total": 0, "active": 0, "waiting": 0, "deferred": 0, "held": 0}
    assert relay["recipients"] == {"delivered": 30, "bounced": 0}
    assert (relay["deferrals"], relay["bounces_sent"], relay["possible_duplicates"]) == (0, 0, 0)
    assert relay["messages_done"] == 30
    assert relay["spool"]["commits"] == 30 and relay["spool"]["commit_failures"] == 0
    assert 1 <= relay["spool"]["flushes"] <= 30 * 3
    fes = {fe["name"]: fe for fe in data["frontends"]}
    assert (fes["apps"]["delivery"], fes["apps"]["messages"]["accepted"]) == ("spool", 30)
    assert (fes["direct"]["delivery"], fes["direct"]["messages"]["accepted"]) == ("cut-through", 0)
    [gw] = data["backends"]
    per_server = {s["name"]: s["messages"] for s in gw["servers"]}
    assert {name: m["delivered"] for name, m in per_server.items()} == {"gw1": 10, "gw2": 10, "gw3": 10}
    assert [sink.count() for sink in sinks] == [10, 10, 10]
    for m in per_server.values():
        assert (m["recipients"], m["deferred"], m["bounced"], m["in_flight"]) == (10, 0, 0, 0)
        assert m["attempts"] == 10
        assert 10 * 1000 < m["bytes"] < 10 * 1500
        assert 1 <= m["connections"] <= 4  # pooled, idle until the 30 s idle timeout
    assert gw["messages"]["delivered"] == 30

    samples = metrics(http_port)
    for name in ("gw1", "gw2", "gw3"):
        labels = {"backend": "gw", "server": name}
        assert sample(samples, "relaybal_server_messages_delivered_total", **labels) == 10
        assert sample(samples, "relaybal_server_recipients_delivered_total", **labels) == 10
        assert sample(samples, "relaybal_server_delivered_bytes_total", **labels) == per_server[name]["bytes"]
        assert sample(samples, "relaybal_server_recipients_deferred_total", **labels) == 0
        assert sample(samples, "relaybal_server_recipients_bounced_total", **labels) == 0
        assert sample(samples, "relaybal_server_messages_in_flight", **labels) == 0
    assert sample(samples, "relaybal_frontend_messages_total", frontend="apps") == 30
    assert sample(samples, "relaybal_frontend_messages_refused_total", frontend="direct") == 0
    assert sample(samples, "relaybal_relay_messages_accepted_total") == 30
    assert sample(samples, "relaybal_relay_recipients_delivered_total") == 30
    assert sample(samples, "relaybal_relay_queue_depth") == 0
    for state in ("active", "waiting", "deferred", "held"):
        assert sample(samples, "relaybal_relay_queue_messages", state=state) == 0
    assert sample(samples, "relaybal_relay_spool_commits_total") == 30
    assert sample(samples, "relaybal_relay_bounces_sent_total") == 0
    assert sample(samples, "relaybal_relay_possible_duplicates_total") == 0
    assert sample(samples, LATENCY + "_count", backend="gw") == 30
    assert sample(samples, LATENCY + "_bucket", backend="gw", le="+Inf") == 30
    # Local smtp-sinks on an idle queue: every message delivered within a minute of its receipt.
    assert sample(samples, LATENCY + "_bucket", backend="gw", le="60.0") == 30
    assert 0 < sample(samples, LATENCY + "_sum", backend="gw") < 30 * 60

    # 6 more through the cut-through frontend: the gateways' counters add them, the queue never sees them.
    send(ct_port, 6)
    wait_until(lambda: sum(s.count() for s in sinks) >= 36, 30, "36 messages at the sinks")
    wait_until(
        lambda: (
            sum(s["messages"]["delivered"] for s in stats_json(http_port)["backends"][0]["servers"]) == 36
        ),
        10,
        "the cut-through deliveries counted",
    )
    data = stats_json(http_port)
    fes = {fe["name"]: fe for fe in data["frontends"]}
    assert fes["direct"]["messages"] == {"accepted": 6, "refused": 0, "bounces_sent": 0}
    assert data["relay"]["accepted"] == 36
    assert data["relay"]["recipients"]["delivered"] == 30  # spooled mail only
    servers = data["backends"][0]["servers"]
    assert [s["messages"]["delivered"] for s in servers] == [sink.count() for sink in sinks]
    samples = metrics(http_port)
    assert (
        sum(
            sample(samples, "relaybal_server_messages_delivered_total", backend="gw", server=f"gw{i}")
            for i in (1, 2, 3)
        )
        == 36
    )
    assert sample(samples, LATENCY + "_count", backend="gw") == 30

    # The page shows the relay panel with the same figures.
    status, _, body = http_get(http_port, "/")
    page = body.decode()
    assert status == 200
    tiles = {label: int(n) for n, label in re.findall(r"<b>(\d+)</b><span>([^<]+)</span>", page)}
    assert (tiles["accepted"], tiles["in queue"], tiles["delivered"], tiles["bounced"]) == (36, 0, 30, 0)
    gateway_rows = re.findall(r'<td class="name gw">(\w+)</td><td class="n">(\d+)</td>', page)
    assert [(name, int(n)) for name, n in gateway_rows] == [
        (f"gw{i}", sink.count()) for i, sink in enumerate(sinks, start=1)
    ] + [("Backend", 36)]
    assert "Traceback" not in daemon.log()
