"""Splice-mode benchmark: relaybal against HAProxy, measured in the same run.

Starts two ``smtp-sink`` servers, then runs ``smtp-source`` (50 sessions, 1 KB
messages) through HAProxy (``mode tcp``, ``nbthread N``) and through the real
``twistd relaybal`` daemon (``workers = N``; ``--workers``, default 1) with the
same two servers:

- ``new``: one connection per message (each message is a whole SMTP session);
- ``reuse``: ``-d``, many messages over each connection.

Runs alternate between the two balancers (which one goes first alternates
too), and the median of ``--runs`` runs is reported with the ratio
relaybal/HAProxy. Only ratios are meaningful: absolute rates on a shared
machine are noise. Usage::

    .venv/bin/python bench/splice.py [--runs 3] [--workers 1] [--new-messages 5000] [--reuse-messages 20000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from peers import (
    HAProxy,
    PeerRegistry,
    RelaybalDaemon,
    SmtpSink,
    free_port,
    haproxy_preamble,
    haproxy_tcp_listen,
    make_peer_dir,
    smtp_source_rate,
)
from summary import summary

SESSIONS = 50
SIZE = 1024


def rate(port: int, messages: int, reuse: bool) -> float:
    return smtp_source_rate(port, messages=messages, reuse=reuse, sessions=SESSIONS, size=SIZE)


def relaybal_config(port: int, sinks: list[SmtpSink], workers: int = 1, state_dir: str = "/tmp") -> str:
    servers = "".join(
        f'[[backend.mx.server]]\nname = "sink{i}"\naddress = "127.0.0.1:{s.port}"\n'
        for i, s in enumerate(sinks, 1)
    )
    return (
        f'[global]\nworkers = {workers}\nstate_dir = "{state_dir}"\n'
        f'[frontend.bench]\nmode = "splice"\nlisten = ["tcp:{port}:interface=127.0.0.1:backlog=1024"]\n'
        f'backend = "mx"\n[backend.mx]\nbalance = "roundrobin"\n{servers}'
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--new-messages", type=int, default=5000)
    parser.add_argument("--reuse-messages", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=1, help="relaybal workers = HAProxy nbthread")
    args = parser.parse_args()

    directory = make_peer_dir(prefix="relaybal-bench-")
    registry = PeerRegistry()
    try:
        sinks = [
            SmtpSink(directory / f"sink{i}", dump=False, name=f"sink{i}", registry=registry) for i in (1, 2)
        ]
        hport, rport = free_port(), free_port()
        haproxy = HAProxy(
            directory / "haproxy",
            haproxy_preamble(nbthread=args.workers, maxconn=4000)
            + haproxy_tcp_listen("bench", hport, [("127.0.0.1", s.port) for s in sinks]),
            registry=registry,
        )
        haproxy.start([hport])
        config = relaybal_config(rport, sinks, args.workers, str(directory / "state"))
        relaybal = RelaybalDaemon(directory / "relaybal", config, registry=registry)
        relaybal.start([rport])

        results: dict[tuple[str, str], list[float]] = {}
        for workload, messages, reuse in (
            ("new connection per message", args.new_messages, False),
            ("reused connections (-d)", args.reuse_messages, True),
        ):
            rate(hport, 200, reuse)  # warm both up
            rate(rport, 200, reuse)
            for run in range(args.runs):
                # Counterbalanced: the balancer that goes first alternates, so that the order of
                # runs (what one leaves behind, thousands of sockets in TIME_WAIT) favours neither.
                order = [("haproxy", hport), ("relaybal", rport)]
                for name, port in order if run % 2 == 0 else order[::-1]:
                    r = rate(port, messages, reuse)
                    results.setdefault((workload, name), []).append(r)
                    print(f"  {workload:<28} run {run + 1}  {name:<8} {r:8.0f} msg/s", file=sys.stderr)

        print()
        print(
            f"splice: smtp-source -s {SESSIONS} -l {SIZE} → balancer → 2 smtp-sinks; relaybal workers ="
            f" HAProxy nbthread = {args.workers}; median of {args.runs} runs"
        )
        print(f"{'workload':<28} {'HAProxy msg/s':>14} {'relaybal msg/s':>15} {'ratio':>6}  target")
        for workload in ("new connection per message", "reused connections (-d)"):
            h = statistics.median(results[(workload, "haproxy")])
            r = statistics.median(results[(workload, "relaybal")])
            print(f"{workload:<28} {h:14.0f} {r:15.0f} {r / h:6.2f}  ≥ 0.90")
            summary(f"splice, {workload} (HAProxy nbthread {args.workers})", f"{r:.0f} msg/s",
                    f"{h:.0f} msg/s", f"{r / h:.2f}x", "≥ 0.90x")  # fmt: skip
        return 0
    finally:
        registry.stop_all()


if __name__ == "__main__":
    sys.exit(main())
