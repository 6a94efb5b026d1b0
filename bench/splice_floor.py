"""How close to HAProxy can a splice written in Python get on this machine?

Runs the splice workload of ``bench/splice.py`` (``smtp-source -s 50 -l 1024``
→ balancer → two ``smtp-sink``) through four balancers, alternating, in the
same run:

- HAProxy (``mode tcp``, ``nbthread N``);
- ``bench/splice_floor_proxy.py``: the least Python a splice can run per
  connection (raw epoll, no Twisted, no checks, no timeouts, no log);
- ``bench/splice_portforward.py``: plain ``twisted.protocols.portforward``
  (only with ``--procs 1``);
- the real ``twistd relaybal`` daemon (``workers = N``).

For each it prints the median messages/s, the ratio to HAProxy and the CPU
time the balancer's processes used per message (user and system, from
``/proc``). Usage::

    .venv/bin/python bench/splice_floor.py [--runs 3] [--procs 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from peers import (
    HAProxy,
    PeerProcess,
    PeerRegistry,
    RelaybalDaemon,
    SmtpSink,
    free_port,
    haproxy_preamble,
    haproxy_tcp_listen,
    make_peer_dir,
    smtp_source_rate,
)
from splice import SESSIONS, SIZE, relaybal_config
from summary import summary

BENCH = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")


def process_tree_cpu(root: int) -> tuple[float, float]:
    """User and system seconds used so far by *root* and its live descendants."""
    parents: dict[int, int] = {}
    times: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]), int(fields[12]))
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        tree.update(children)
        frontier.extend(children)
    user = sum(times[pid][0] for pid in tree if pid in times)
    system = sum(times[pid][1] for pid in tree if pid in times)
    return user / TICK, system / TICK


class ScriptPeer(PeerProcess):
    """A benchmark balancer script run with this Python."""

    def start_script(self, argv: list[str], port: int) -> None:
        self._spawn([sys.executable, *argv])
        self.wait_for_port(port, "127.0.0.1", 10.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--procs", type=int, default=1, help="HAProxy nbthread = processes of the others")
    parser.add_argument("--new-messages", type=int, default=5000)
    parser.add_argument("--reuse-messages", type=int, default=20000)
    args = parser.parse_args()

    directory = make_peer_dir(prefix="relaybal-floor-")
    registry = PeerRegistry()
    try:
        sinks = [
            SmtpSink(directory / f"sink{i}", dump=False, name=f"sink{i}", registry=registry) for i in (1, 2)
        ]
        sink_ports = [str(s.port) for s in sinks]
        balancers: dict[str, tuple[int, PeerProcess]] = {}

        port = free_port()
        haproxy = HAProxy(
            directory / "haproxy",
            haproxy_preamble(nbthread=args.procs, maxconn=4000)
            + haproxy_tcp_listen("bench", port, [("127.0.0.1", s.port) for s in sinks]),
            registry=registry,
        )
        haproxy.start([port])
        balancers["HAProxy"] = (port, haproxy)

        port = free_port()
        floor = ScriptPeer("floor", directory / "floor", registry)
        floor.start_script(
            [str(BENCH / "splice_floor_proxy.py"), "--procs", str(args.procs), str(port), *sink_ports], port
        )
        balancers["Python floor (raw epoll)"] = (port, floor)

        if args.procs == 1:
            port = free_port()
            forward = ScriptPeer("portforward", directory / "portforward", registry)
            forward.start_script([str(BENCH / "splice_portforward.py"), str(port), *sink_ports], port)
            balancers["Twisted portforward"] = (port, forward)

        port = free_port()
        relaybal = RelaybalDaemon(
            directory / "relaybal",
            relaybal_config(port, sinks, args.procs, str(directory / "state")),
            registry=registry,
        )
        relaybal.start([port])
        balancers["relaybal"] = (port, relaybal)

        rates: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], list[tuple[float, float]]] = {}
        workloads = (
            ("new connection per message", args.new_messages, False),
            ("reused connections (-d)", args.reuse_messages, True),
        )
        for workload, messages, reuse in workloads:
            for port, _ in balancers.values():
                smtp_source_rate(port, messages=200, reuse=reuse, sessions=SESSIONS, size=SIZE)
            names = list(balancers)
            for run in range(args.runs):
                # Each run starts with a different balancer: the order of runs measurably moved
                # the figures (what a run leaves behind: thousands of sockets in TIME_WAIT).
                for name in names[run % len(names) :] + names[: run % len(names)]:
                    port, peer = balancers[name]
                    before = process_tree_cpu(peer.pid or 0)
                    rate = smtp_source_rate(
                        port, messages=messages, reuse=reuse, sessions=SESSIONS, size=SIZE
                    )
                    after = process_tree_cpu(peer.pid or 0)
                    rates.setdefault((workload, name), []).append(rate)
                    cpu.setdefault((workload, name), []).append(
                        ((after[0] - before[0]) / messages * 1e6, (after[1] - before[1]) / messages * 1e6)
                    )
                    user, system = cpu[(workload, name)][-1]
                    print(
                        f"  {workload:<28} run {run + 1}  {name:<26} {rate:8.0f} msg/s"
                        f"  user {user:4.0f} µs  sys {system:4.0f} µs",
                        file=sys.stderr,
                    )

        print()
        print(
            f"splice floor: smtp-source -s {SESSIONS} -l {SIZE} → balancer → 2 smtp-sinks;"
            f" {args.procs} process(es) / HAProxy nbthread {args.procs}; median of {args.runs} runs"
        )
        print(
            f"{'workload':<28} {'balancer':<26} {'msg/s':>7} {'ratio':>6}"
            f" {'user µs/msg':>12} {'sys µs/msg':>11}"
        )
        for workload, _, _ in workloads:
            reference = statistics.median(rates[(workload, "HAProxy")])
            for name in balancers:
                rate = statistics.median(rates[(workload, name)])
                user = statistics.median(u for u, _ in cpu[(workload, name)])
                system = statistics.median(s for _, s in cpu[(workload, name)])
                print(
                    f"{workload:<28} {name:<26} {rate:7.0f} {rate / reference:6.2f}"
                    f" {user:12.0f} {system:11.0f}"
                )
                if name not in ("HAProxy", "relaybal"):  # splice.py gives relaybal's target rows
                    summary(f"splice floor, {workload}, {name} (nbthread {args.procs})", f"{rate:.0f} msg/s",
                            f"{reference:.0f} msg/s", f"{rate / reference:.2f}x", "reference")  # fmt: skip
        return 0
    finally:
        registry.stop_all()
        subprocess.run(["pkill", "-f", str(BENCH / "splice_floor_proxy.py")], check=False)


if __name__ == "__main__":
    sys.exit(main())
