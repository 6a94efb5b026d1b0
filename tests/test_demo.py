"""``relaybal demo --once``: the main job on built-in defaults, nothing else installed."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

BIN = pathlib.Path(sys.executable).parent


def test_demo_once_delivers_and_prints_the_table() -> None:
    done = subprocess.run(
        [str(BIN / "relaybal"), "demo", "--once", "--messages", "60"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "60 of 60 messages accepted" in out
    rows = re.findall(r"^\s+(sink\d)\s+127\.0\.0\.1:\d+\s+1\s+(\d+)\s+([\d.]+)%\s+(\d+)$", out, re.M)
    assert [r[0] for r in rows] == ["sink1", "sink2"]
    # Round robin over equal weights: 30 connections each, and each sink saw its 30 messages.
    assert [(int(r[1]), int(r[3])) for r in rows] == [(30, 30), (30, 30)]
    logfile = re.search(r"connection log \(HAProxy tcplog style\): (\S+)", out)
    assert logfile is not None
    lines = [
        line for line in pathlib.Path(logfile.group(1)).read_text().splitlines() if "relaybal.splice" in line
    ]
    assert len(lines) == 60 and all(" -- " in line for line in lines)


def test_demo_once_relays_messages_evenly_over_three_gateways() -> None:
    done = subprocess.run(
        [str(BIN / "relaybal"), "demo", "--once", "--messages", "60"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "60 of 60 messages accepted (each answered 250 once on disk), all delivered" in out
    rows = re.findall(r"^\s+(gw\d)\s+127\.0\.0\.1:\d+\s+1\s+(\d+)\s+([\d.]+)%\s+(\d+)\s+(\d+)$", out, re.M)
    assert [r[0] for r in rows] == ["gw1", "gw2", "gw3"]
    # Messages, not connections: 20 each, and each gateway received what the scheduler says it delivered.
    assert [(int(r[1]), int(r[4])) for r in rows] == [(20, 20)] * 3
    assert re.search(r"stats page: http://127\.0\.0\.1:\d+/", out)
