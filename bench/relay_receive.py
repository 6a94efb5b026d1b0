"""Relay-mode receiving benchmark: relaybal's ESMTP server next to Postfix's smtp-sink, same run.

``smtp-source`` (50 sessions, 1 KB messages) sends to

- ``smtp-sink``: Postfix's C test server, which accepts and discards (the
  ceiling for a receiver on this machine);
- the real ``twistd relaybal`` daemon (one process) with a relay frontend;
  as in production, ``250`` is sent only once a message is committed to the
  durable spool (``fdatasync``, group commit), so this measures the receiving
  side with durability: parsing, policy, DATA scanning, ``Received:``, queue
  IDs, the spool and the per-message log line (there is no delivery yet).

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

from peers import PeerRegistry, RelaybalDaemon, SmtpSink, free_port, make_peer_dir, smtp_source_rate

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

        results: dict[tuple[str, str], list[float]] = {}
        for workload, messages, reuse in (
            (WORKLOADS[0], args.new_messages, False),
            (WORKLOADS[1], args.reuse_messages, True),
        ):
            rate(sink.port, 200, reuse)  # warm both up
            rate(rport, 200, reuse)
            for run in range(args.runs):
                for name, port in (("smtp-sink", sink.port), ("relaybal", rport)):
                    r = rate(port, messages, reuse)
                    results.setdefault((workload, name), []).append(r)
                    print(f"  {workload:<28} run {run + 1}  {name:<9} {r:8.0f} msg/s", file=sys.stderr)

        print()
        print(
            f"relay receive: smtp-source -s {SESSIONS} -l {SIZE} → server (relaybal: durable spool);"
            f" median of {args.runs} runs"
        )
        print(f"{'workload':<28} {'smtp-sink msg/s':>16} {'relaybal msg/s':>15} {'ratio':>6}")
        for workload in WORKLOADS:
            s = statistics.median(results[(workload, "smtp-sink")])
            r = statistics.median(results[(workload, "relaybal")])
            print(f"{workload:<28} {s:16.0f} {r:15.0f} {r / s:6.2f}")
        return 0
    finally:
        registry.stop_all()


if __name__ == "__main__":
    sys.exit(main())
