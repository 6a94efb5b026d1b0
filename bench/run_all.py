"""``make bench``: every benchmark in turn, then one table of every target.

Each benchmark prints its own table as it finishes; their ``SUMMARY`` lines
are collected here and printed together at the end.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PREFIX = "SUMMARY\t"

RUNS = [
    # Latency first: the throughput runs leave tens of thousands of connections in TIME_WAIT.
    ["latency.py", "--transactions", "1500", "--rounds", "3"],
    ["splice.py", "--runs", "3"],
    ["splice.py", "--runs", "3", "--workers", "2", "--new-messages", "4000", "--reuse-messages", "15000"],
    ["splice_floor.py", "--runs", "3"],
    ["relay_receive.py", "--runs", "3"],
    ["relay_e2e.py", "--runs", "3", "--messages", "3000"],
    ["relay_cutthrough.py", "--runs", "3", "--messages", "3000"],
    ["memory.py"],
    ["two_nodes.py", "--runs", "3", "--messages", "3000", "--splice"],
    ["spool_commit.py"],
]


def main() -> int:
    rows: list[list[str]] = []
    started = time.monotonic()
    status = 0
    for argv in RUNS:
        print(f"\n=== bench/{' '.join(argv)}", flush=True)
        command = [sys.executable, str(HERE / argv[0]), *argv[1:]]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(PREFIX):
                rows.append(line[len(PREFIX) :].rstrip("\n").split("\t"))
            else:
                print(line, end="", flush=True)
        if proc.wait() != 0:
            status = 1
            print(f"bench/{argv[0]} failed with status {proc.returncode}", flush=True)
    header = ["measurement", "relaybal", "peer", "result", "target"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n=== every target ({time.monotonic() - started:.0f} s in all)")
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return status


if __name__ == "__main__":
    sys.exit(main())
