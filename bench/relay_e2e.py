"""Relay mode end to end: relaybal (durable spool) against Postfix relaying the same load, same run.

``smtp-source -s 50 -l 1024`` sends N messages to

- the real ``twistd -n relaybal`` daemon (one process): relay frontend,
  ``delivery = "spool"`` (``250`` only after ``fdatasync``), three gateways
  with ``balance = "roundrobin"``;
- a private Postfix (root needed) relaying to the same three sinks with
  ``transport_maps = randmap:{…}`` (Postfix's own way to spread mail across
  relays), default queue settings (Postfix fsyncs its queue files too).

The gateways are three ``smtp-sink -d`` processes; the time is from the
start of ``smtp-source`` until the sinks hold all N messages. Runs alternate
between the two; the table gives the median messages/s of each, the ratio
relaybal/Postfix, and each one's spread (max/min messages per gateway, worst
run). Only ratios are meaningful on a shared machine. Usage::

    .venv/bin/python bench/relay_e2e.py [--runs 3] [--messages 5000]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from peers import (
    PeerRegistry,
    PrivatePostfix,
    RelaybalDaemon,
    SmtpSink,
    free_port,
    make_peer_dir,
    smtp_source,
    wait_until,
)
from summary import summary

SESSIONS = 50
SIZE = 1024


def relaybal_config(port: int, state_dir: Path, sinks: Sequence[SmtpSink]) -> str:
    servers = "".join(
        f'[[backend.gw.server]]\nname = "gw{i + 1}"\naddress = "127.0.0.1:{s.port}"\n'
        for i, s in enumerate(sinks)
    )
    return (
        f'[global]\nstate_dir = "{state_dir}"\nhostname = "relay.bench"\n'
        f'[frontend.bench]\nmode = "relay"\nlisten = ["tcp:{port}:interface=127.0.0.1:backlog=1024"]\n'
        f'backend = "gw"\n[backend.gw]\nbalance = "roundrobin"\n{servers}'
    )


def postfix_settings(sinks: Sequence[SmtpSink]) -> dict[str, str]:
    relays = ", ".join(f"smtp:[127.0.0.1]:{s.port}" for s in sinks)
    return {
        "transport_maps": f"randmap:{{{relays}}}",
        "smtpd_relay_restrictions": "permit_mynetworks, reject",
        "myhostname": "postfix.bench",
        "smtpd_client_connection_count_limit": "0",
        "smtpd_client_connection_rate_limit": "0",
    }


def clear(sinks: Sequence[SmtpSink]) -> None:
    for sink in sinks:
        for path in sink.message_files():
            path.unlink()


def counts(sinks: Sequence[SmtpSink]) -> list[int]:
    return [sink.count() for sink in sinks]


def run_once(port: int, sinks: Sequence[SmtpSink], messages: int) -> tuple[float, list[int]]:
    clear(sinks)
    start = time.perf_counter()
    done = smtp_source(
        port, sessions=SESSIONS, messages=messages, size=SIZE,
        sender="bench@client.test", rcpt="user@example.test", timeout=600,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"smtp-source against port {port} failed: {done.stderr.strip()}")
    wait_until(lambda: sum(counts(sinks)) >= messages, 600, f"{messages} at the sinks", interval=0.02)
    elapsed = time.perf_counter() - start
    return messages / elapsed, counts(sinks)


def spread(per_gateway: list[int]) -> float:
    return max(per_gateway) / min(per_gateway) if min(per_gateway) else float("inf")


def compare(
    ports: dict[str, int], sinks: Sequence[SmtpSink], messages: int, runs: int
) -> dict[str, tuple[float, float]]:
    """Alternating runs against each of ``ports`` (after a warm-up): name → (median msg/s, worst spread)."""
    results: dict[str, list[tuple[float, list[int]]]] = {name: [] for name in ports}
    for port in ports.values():
        run_once(port, sinks, 200)
    for run in range(runs):
        for name, port in ports.items():
            rate, per_gateway = run_once(port, sinks, messages)
            results[name].append((rate, per_gateway))
            print(f"  run {run + 1}  {name:<9} {rate:8.0f} msg/s  per gateway {per_gateway}", file=sys.stderr)
    return {
        name: (statistics.median(rate for rate, _ in rows), max(spread(g) for _, g in rows))
        for name, rows in results.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=5000)
    args = parser.parse_args()
    if shutil.which("master", path="/usr/lib/postfix/sbin") is None:
        raise SystemExit("Postfix is not installed (apt-get install postfix)")

    directory = make_peer_dir(prefix="relaybal-bench-e2e-")
    registry = PeerRegistry()
    try:
        sinks = [SmtpSink(directory / f"sink{i}", name=f"sink{i}", registry=registry) for i in range(3)]
        rport = free_port()
        relaybal = RelaybalDaemon(
            directory / "relaybal", relaybal_config(rport, directory / "state", sinks), registry=registry
        )
        relaybal.start([rport])
        postfix = PrivatePostfix(directory / "postfix", postfix_settings(sinks), registry=registry)
        postfix.start()

        figures = compare({"relaybal": rport, "postfix": postfix.port}, sinks, args.messages, args.runs)
        (r, rs), (p, ps) = figures["relaybal"], figures["postfix"]
        print()
        print(
            f"relay end to end: smtp-source -s {SESSIONS} -l {SIZE} -m {args.messages} → relaybal "
            f"(spool, fsync) or Postfix (randmap) → 3 smtp-sinks, until all delivered; "
            f"median of {args.runs} runs"
        )
        print(f"{'relaybal msg/s':>15} {'Postfix msg/s':>14} {'ratio':>6} {'relaybal spread':>16}"
              f" {'Postfix spread':>15}")  # fmt: skip
        print(f"{r:15.0f} {p:14.0f} {r / p:6.2f} {rs:16.3f} {ps:15.3f}")
        summary("relay end to end, spool + fsync (Postfix randmap)", f"{r:.0f} msg/s", f"{p:.0f} msg/s",
                f"{r / p:.2f}x", "≥ 2x")  # fmt: skip
        summary("relay spread over 3 gateways (max/min)", f"{rs:.3f}", f"{ps:.3f}", f"{rs:.3f}", "≤ 1.02")
        return 0
    finally:
        registry.stop_all()


if __name__ == "__main__":
    sys.exit(main())
