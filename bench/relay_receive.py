"""Relay-mode receiving benchmark: relaybal's ESMTP server next to Postfix's smtp-sink, same run.

``smtp-source`` (50 sessions, 1 KB messages) sends to

- ``smtp-sink``: Postfix's C test server, which accepts and discards (the
  ceiling for a receiver on this machine);
- relaybal's relay frontend with the in-memory sink
  (``bench/relay_memory_server.py``): the receiving side alone — parsing,
  policy, DATA scanning, ``Received:``, queue IDs, the per-message log line;
- the real ``twistd relaybal`` daemon (one process) with the same frontend,
  which answers ``250`` only once a message is committed to the durable spool
  (``fdatasync``, group commit): receiving with durability, as in production.

Two workloads: a new connection per message, and reused connections (``-d``).
Runs alternate between the two servers; the median of ``--runs`` runs is
printed with the ratio relaybal/smtp-sink. Only ratios are meaningful: absolute
rates on a shared machine are noise. Usage::

    .venv/bin/python bench/relay_receive.py [--runs 3] [--new-messages 5000] [--reuse-messages 20000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from peers import (
    PeerProcess,
    PeerRegistry,
    RelaybalDaemon,
    SmtpSink,
    free_port,
    make_peer_dir,
    smtp_source_rate,
)

SESSIONS = 50
SIZE = 1024
WORKLOADS = ("new connection per message", "reused connections (-d)")


def rate(port: int, messages: int, reuse: bool) -> float:
    return smtp_source_rate(port, messages=messages, reuse=reuse, sessions=SESSIONS, size=SIZE)


def relaybal_config(port: int, state_dir: Path) -> str:
    return (
        f'[global]\nstate_dir = "{state_dir}"\n'
        f'[frontend.bench]\nmode = "relay"\nlisten = ["tcp:{port}:interface=127.0.0.1:backlog=1024"]\n'
        'backend = "gw"\nhostname = "relay.bench"\n'
        '[[backend.gw.server]]\nname = "gw1"\naddress = "127.0.0.1:10025"\n'
    )


class MemoryRelay(PeerProcess):
    """bench/relay_memory_server.py: the relay frontend with the in-memory sink."""

    def __init__(self, directory: Path, registry: PeerRegistry) -> None:
        super().__init__("relaybal-memory", directory, registry)

    def start(self, config: str, port: int) -> None:
        path = self.directory / "relay.toml"
        path.write_text(config)
        server = Path(__file__).resolve().parent / "relay_memory_server.py"
        self._spawn([sys.executable, str(server), str(path), str(self.directory / "relay.log")])
        self.wait_for_port(port)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--new-messages", type=int, default=5000)
    parser.add_argument("--reuse-messages", type=int, default=20000)
    args = parser.parse_args()

    directory = make_peer_dir(prefix="relaybal-bench-relay-")
    registry = PeerRegistry()
    try:
        sink = SmtpSink(directory / "sink", dump=False, name="sink", registry=registry)
        rport = free_port()
        config = relaybal_config(rport, directory / "state")
        relaybal = RelaybalDaemon(directory / "relaybal", config, registry=registry)
        relaybal.start([rport])
        mport = free_port()
        memory = MemoryRelay(directory / "memory", registry)
        memory.start(relaybal_config(mport, directory / "unused"), mport)

        results: dict[tuple[str, str], list[float]] = {}
        for workload, messages, reuse in (
            (WORKLOADS[0], args.new_messages, False),
            (WORKLOADS[1], args.reuse_messages, True),
        ):
            for port in (sink.port, mport, rport):
                rate(port, 200, reuse)  # warm up
            for run in range(args.runs):
                for name, port in (("smtp-sink", sink.port), ("memory", mport), ("relaybal", rport)):
                    r = rate(port, messages, reuse)
                    results.setdefault((workload, name), []).append(r)
                    print(f"  {workload:<28} run {run + 1}  {name:<9} {r:8.0f} msg/s", file=sys.stderr)

        print()
        print(
            f"relay receive: smtp-source -s {SESSIONS} -l {SIZE} → smtp-sink, relaybal with the in-memory"
            f" sink (receive only), relaybal daemon (durable spool); median of {args.runs} runs"
        )
        print(
            f"{'workload':<28} {'smtp-sink msg/s':>16} {'memory msg/s':>13} {'ratio':>6}"
            f" {'spool msg/s':>12} {'ratio':>6}"
        )
        for workload in WORKLOADS:
            s = statistics.median(results[(workload, "smtp-sink")])
            m = statistics.median(results[(workload, "memory")])
            r = statistics.median(results[(workload, "relaybal")])
            print(f"{workload:<28} {s:16.0f} {m:13.0f} {m / s:6.2f} {r:12.0f} {r / s:6.2f}")
        return 0
    finally:
        registry.stop_all()


if __name__ == "__main__":
    sys.exit(main())
