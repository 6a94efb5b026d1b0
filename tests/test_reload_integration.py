"""Reloading the real daemon under steady load: nothing dropped, nothing lost, nothing twice."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from peers import SmtpSink, free_port, send_one_message, smtp_source, wait_until
from web_client import daemon_config, metrics, sample, stats_json

pytestmark = pytest.mark.peers

Factory = Callable[..., Any]


class Load(threading.Thread):
    """One smtp-source run in the background; ``result`` once it is done."""

    def __init__(self, port: int, rcpt: str, messages: int, reuse: bool) -> None:
        super().__init__(daemon=True)
        self.args = dict(
            sessions=4, messages=messages, size=200, reuse=reuse, number_rcpts=True,
            sender="load@client.test", rcpt=rcpt, timeout=120,
        )  # fmt: skip
        self.port = port
        self.result: subprocess.CompletedProcess[str] | None = None

    def run(self) -> None:
        self.result = smtp_source(self.port, **self.args)  # type: ignore[arg-type]


def numbers(sinks: list[SmtpSink], domain: str) -> Counter[int]:
    """How many times each numbered recipient ``<N…@domain>`` arrived, over all sinks."""
    seen: Counter[int] = Counter()
    for sink in sinks:
        for arg in sink.rcpt_args():
            match = re.fullmatch(rf"<(\d+)\w*@{re.escape(domain)}>", arg)
            if match:
                seen[int(match.group(1))] += 1
    return seen


def runtime(path: Path, command: str) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(command.encode() + b"\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data.decode()


def test_reload_during_load_adds_and_removes_servers_without_loss(
    sink_factory: Factory, relaybal_factory: Factory, peer_dir: Path
) -> None:
    one: SmtpSink = sink_factory()
    two: SmtpSink = sink_factory()
    three: SmtpSink = sink_factory()
    sinks = [one, two, three]
    port, http_port = free_port(), free_port()
    admin = peer_dir / "admin.sock"
    admin_extra = f'socket = "{admin}"'
    before = daemon_config(port, http_port, [("one", one.port), ("two", two.port)], admin_extra=admin_extra)
    after = daemon_config(
        port,
        http_port,
        [("two", two.port), ("three", three.port)],
        admin_extra=admin_extra,
        backend_extra='timeout_server = "2m"',
    )
    daemon = relaybal_factory(before, wait_ports=[port, http_port])
    daemon.wait_for_log("relaybal ready")

    # Long sessions first (4 connections, 1500 messages each, alternating over one and two),
    # then one connection per message on top.
    persistent = Load(port, "user@persist.test", 6000, reuse=True)
    persistent.start()
    wait_until(lambda: one.count() > 0 and two.count() > 0, 20, "the long sessions on both servers")
    fresh = Load(port, "user@fresh.test", 1500, reuse=False)
    fresh.start()
    wait_until(lambda: len(numbers(sinks, "fresh.test")) >= 200, 30, "200 one-message sessions")

    daemon.config_path.write_text(after)
    os.kill(daemon.pid, signal.SIGHUP)
    daemon.wait_for_log("configuration reloaded")
    at_reload = one.count()
    assert persistent.is_alive() and fresh.is_alive(), "the load ended before the reload"

    persistent.join(120)
    fresh.join(120)
    assert persistent.result is not None and persistent.result.returncode == 0, persistent.result
    assert fresh.result is not None and fresh.result.returncode == 0, fresh.result
    # Every message exactly once, wherever it went.
    assert numbers(sinks, "persist.test") == Counter(range(1, 6001))
    assert numbers(sinks, "fresh.test") == Counter(range(1, 1501))
    # The sessions established on the removed server went on after the reload ...
    assert one.count() > at_reload
    # ... new sessions went to the added one, and no session was refused or cut.
    assert len(numbers([three], "fresh.test")) > 0
    # No session was refused (SC), cut by a server (SD) or timed out; the four long ones
    # lasted the whole run, two of them on the removed server. (smtp-source resets some
    # connections after QUIT, which relaybal logs as CD, reload or not.)
    log = daemon.log()
    ends = re.findall(r" smtp mx/(\w+) \S+ \d+ (\d+) (\S\S) ", log)
    assert {end for _, _, end in ends} <= {"--", "CD"}
    long_sessions = sorted(server for server, moved, _ in ends if int(moved) > 100_000)
    assert long_sessions == ["one", "one", "two", "two"]
    assert "reload: backend mx: servers added: three; servers removed: one; settings changed" in log
    data = stats_json(http_port)
    assert [s["name"] for s in data["backends"][0]["servers"]] == ["two", "three"]
    assert data["relaybal"]["reloads"] == 1

    # A broken configuration is refused (here through the runtime API), and the old one keeps running.
    daemon.config_path.write_text(after + '[[backend.mx.server]]\nname = "two"\naddress = "127.0.0.1:9"\n')
    answer = runtime(admin, "reload")
    assert answer.startswith("Reload refused; the running configuration is unchanged:\n"), answer
    assert 'backend.mx.server[2].name: "two" is used twice in this backend' in answer
    daemon.wait_for_log("reload refused: " + str(daemon.config_path))
    assert daemon.running
    transcript = send_one_message(port, rcpts=["after@refused.test"])
    assert transcript.accepted, transcript
    assert len(numbers(sinks, "refused.test")) == 0 and sum(s.count() for s in sinks) == 6000 + 1500 + 1
    samples = metrics(http_port)
    assert sample(samples, "relaybal_config_reloads_total") == 1
    assert sample(samples, "relaybal_config_reload_failures_total") == 1
    assert sample(samples, "relaybal_config_last_reload_successful") == 0
    assert stats_json(http_port)["backends"][0]["servers"][1]["name"] == "three"
