"""A real crash: a process committing to the spool is killed with SIGKILL at random points.

``tests/spool_crasher.py`` prints each acknowledgement (commit or removal)
as soon as its Deferred fires. After every kill the spool is opened here and
every acknowledged message must be present with its exact body, and every
acknowledged removal must have stuck. The next run continues on the same
spool, so recovery after recovery is exercised too.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from spool_crasher import body_for

from relaybal.spool import SpoolStore
from relaybal.spool.testing import ManualOffloader

ROOT = Path(__file__).resolve().parent.parent
CRASHER = Path(__file__).resolve().parent / "spool_crasher.py"


class Acknowledged:
    def __init__(self) -> None:
        self.committed: dict[str, tuple[str, int]] = {}
        self.removing: set[str] = set()  # removals started: acknowledged or not
        self.removed: set[str] = set()

    def take(self, line: str) -> None:
        parts = line.split()
        if parts[0] == "C":
            self.committed[parts[1]] = (parts[2], int(parts[3]))
        elif parts[0] == "r":
            self.removing.add(parts[1])
        elif parts[0] == "R":
            self.removed.add(parts[1])
        else:
            raise AssertionError(f"unexpected line from the crasher: {line!r}")


def run_and_kill(spool: Path, seed: int, kill_after: int, ack: Acknowledged, log: Path) -> int:
    """Run the crasher until it has acknowledged ``kill_after`` things, then SIGKILL it; lines read."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with open(log, "a") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(CRASHER), str(spool), str(seed)],
            stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
    watchdog = threading.Timer(60, proc.kill)  # a hung crasher fails the test instead of hanging it
    watchdog.start()
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert ready.startswith("ready "), f"crasher did not start: {ready!r}, see {log}"
        seen = 0
        while seen < kill_after:
            line = proc.stdout.readline()
            assert line, f"crasher died on its own, see {log}"
            ack.take(line)
            seen += 1
        proc.send_signal(signal.SIGKILL)
        # Lines already in the pipe were acknowledged before the kill: they count too.
        for line in proc.stdout:
            ack.take(line)
            seen += 1
        proc.wait()
    finally:
        watchdog.cancel()
    assert proc.returncode == -signal.SIGKILL
    return seen


def check(spool: Path, ack: Acknowledged) -> int:
    pool = ManualOffloader()
    store = SpoolStore.open(str(spool), offloader=pool)
    try:
        present = {m.queue_id for m in store.messages()}
        live = set(ack.committed) - ack.removing
        assert live <= present, f"acknowledged messages lost: {sorted(live - present)[:10]}"
        assert not ack.removed & present, "removed messages came back"
        for queue_id in live:
            tag, size = ack.committed[queue_id]
            out: list[Any] = []
            store.read_body(queue_id).addBoth(out.append)
            pool.run_all()
            assert out == [body_for(tag, size)], f"{queue_id}: body differs"
        return len(present)
    finally:
        store.kill()


def test_sigkill_at_random_points_loses_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random(20240611)
    spool = tmp_path / "spool"
    ack = Acknowledged()
    kills = 0
    for run in range(6):
        kill_after = rng.choice([0, rng.randint(1, 40), rng.randint(40, 600)])
        run_and_kill(spool, run, kill_after, ack, tmp_path / "crasher.log")
        kills += 1
        check(spool, ack)
    assert kills >= 5
    assert len(ack.committed) > 100 and ack.removed
