"""Moving a stopped node's queue to another node, with real daemons and a real smtp-sink.

Node A spools mail its gateway never takes, then stops (its "loss"); the
operator exports A's queue with ``--remove``, imports it into node B (stopped,
under another frontend name) and starts B: every message arrives exactly
once, and A's spool is empty should A come back.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from peers import RelaybalDaemon, SmtpSink, free_port, send_one_message

pytestmark = pytest.mark.peers

Factory = Callable[..., Any]


def relay_node(state_dir: Path, port: int, gateway_port: int, frontend: str) -> str:
    return f"""
[global]
state_dir = "{state_dir}"
hostname = "{frontend}.test"

[frontend.{frontend}]
mode = "relay"
listen = ["tcp:{port}:interface=127.0.0.1"]
backend = "gw"

[backend.gw]
retry_schedule = ["10m"]
[[backend.gw.server]]
name = "gw1"
address = "127.0.0.1:{gateway_port}"
"""


def relaybal(*words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaybal.cli", *words],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def test_a_lost_nodes_queue_is_delivered_by_another_node_exactly_once(
    peer_dir: Path, sink_factory: Factory, relaybal_factory: Factory
) -> None:
    sink: SmtpSink = sink_factory()
    port_a, port_b, nowhere = free_port(), free_port(), free_port()
    state_a, state_b = peer_dir / "state-a", peer_dir / "state-b"
    config_a = relay_node(state_a, port_a, nowhere, "apps")
    node_a: RelaybalDaemon = relaybal_factory(config_a, wait_ports=[port_a])
    rcpts = [f"moved{n}@example.test" for n in range(1, 6)]
    for rcpt in rcpts:
        done = send_one_message(port_a, rcpts=[rcpt])
        assert done.accepted, done
    assert node_a.stop() == 0  # node A is lost with 5 messages in its spool

    archive = peer_dir / "queue-a.tar.gz"
    done = relaybal("queue", "export", "--spool", str(state_a / "spool"), "-o", str(archive), "--remove")
    assert done.returncode == 0, done.stderr
    assert "exported 5 messages (5 pending recipients" in done.stdout
    listing = subprocess.run(
        [sys.executable, "-m", "relaybal.spool", str(state_a / "spool")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "-- 0 messages" in listing.stdout  # should node A come back, it delivers none of them again

    config_b = relay_node(state_b, port_b, sink.port, "inbound")
    config_path = peer_dir / "node-b.toml"
    config_path.write_text(config_b)
    done = relaybal("queue", "import", "-c", str(config_path), str(archive))
    assert done.returncode == 1 and "name one with --frontend" in done.stderr  # B's frontend has another name
    done = relaybal("queue", "import", "-c", str(config_path), "--frontend", "inbound", str(archive))
    assert done.returncode == 0, done.stderr
    assert "imported 5 messages (5 recipients)" in done.stdout

    relaybal_factory(config_b, wait_ports=[port_b])
    sink.wait_for_count(5, timeout=30)
    delivered = sorted(arg for arg in sink.rcpt_args() if "moved" in arg)
    assert len(delivered) == 5
    assert all(any(rcpt in arg for arg in delivered) for rcpt in rcpts)
