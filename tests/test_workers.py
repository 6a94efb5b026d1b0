"""``[global] workers = N`` with the real daemon: more processes serve the splice listeners."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from peers import RelaybalDaemon, SmtpSink, free_port, smtp_source, wait_until

from relaybal.workers import Inherited, command_line


def config(peer_dir: Path, port: int, sinks: list[SmtpSink], workers: int = 2) -> str:
    servers = "".join(
        f'[[backend.mx.server]]\nname = "s{i + 1}"\naddress = "127.0.0.1:{s.port}"\n'
        for i, s in enumerate(sinks)
    )
    return (
        f'[global]\nstate_dir = "{peer_dir}/state"\nworkers = {workers}\n'
        f'[admin]\nsocket = "{peer_dir}/admin.sock"\n'
        f'[frontend.mx]\nmode = "splice"\nlisten = ["tcp:{port}:interface=127.0.0.1"]\nbackend = "mx"\n'
        f"[backend.mx]\n{servers}"
    )


def worker_pids(peer_dir: Path) -> list[int]:
    """The worker processes of the daemon whose files are in ``peer_dir``."""
    pattern = f"relaybal.worker --config {peer_dir}"
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False).stdout
    return [int(pid) for pid in out.split()]


def served_by(daemon: RelaybalDaemon) -> Counter[str]:
    """Connection log lines per process: "main" or the worker tag."""
    counts: Counter[str] = Counter()
    for line in daemon.log().splitlines():
        match = re.search(r"\[relaybal\.splice#info(/w\d+)?\] \S+ \[", line)
        if match:
            counts[match.group(1) or "main"] += 1
    return counts


def send(port: int, count: int) -> None:
    done = smtp_source(
        port, sessions=20, messages=count, size=512, sender="a@client.test", rcpt="u@example.test"
    )
    assert done.returncode == 0, done.stderr


def test_two_processes_share_the_listener_follow_runtime_changes_and_exit_together(
    sink_factory: Callable[..., SmtpSink], relaybal_factory: Callable[..., RelaybalDaemon], peer_dir: Path
) -> None:
    sinks = [sink_factory(), sink_factory()]
    port = free_port()
    daemon = relaybal_factory(config(peer_dir, port, sinks), wait_ports=[port])
    wait_until(lambda: "worker 1: serving 1 sockets" in daemon.log(), 20, "worker 1 up")
    send(port, 1000)
    wait_until(lambda: sum(served_by(daemon).values()) >= 1000, 20, "1,000 connection log lines")
    by = served_by(daemon)
    assert set(by) == {"main", "/w1"}, by  # both processes took connections
    assert sum(s.count() for s in sinks) == 1000
    # A runtime change made through the main process's socket reaches the worker too.
    relaybal = str(Path(sys.executable).parent / "relaybal")
    changed = subprocess.run(
        [relaybal, "ctl", "--socket", str(peer_dir / "admin.sock"), "set server mx/s1 state maint"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert changed.returncode == 0, changed.stderr
    wait_until(lambda: daemon.log().count("mx/s1 is going DOWN for maintenance") >= 2, 10,
               "both processes putting s1 in maintenance")  # fmt: skip
    before = [s.count() for s in sinks]
    send(port, 400)
    wait_until(lambda: sinks[1].count() >= before[1] + 400, 20, "400 more at s2")
    assert sinks[0].count() == before[0]
    # A worker that dies is started again.
    (pid,) = worker_pids(peer_dir)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: worker_pids(peer_dir) not in ([], [pid]), 20, "a new worker 1")
    # SIGTERM: the worker drains with the main process; both are gone, status 0.
    assert daemon.stop(timeout=60) == 0
    assert worker_pids(peer_dir) == []
    assert "Traceback" not in daemon.log()


def test_socket_handover_encoding_round_trips() -> None:
    item = Inherited("front:with:colons", 2, 7, 10)
    assert Inherited.decode(item.encode()) == item
    assert command_line(["set", "server", "a b/c;d", "state", "maint"]) == r"set server a\ b/c\;d state maint"
