"""Relay mode, cut-through: relaybal against Haraka forwarding the same load, same run.

``smtp-source -s 50 -l 1024`` sends N messages to

- the real ``twistd -n relaybal`` daemon (one process): relay frontend with
  ``delivery = "cut-through"`` (the client's ``250`` is a gateway's),
  ``balance = "roundrobin"`` over three gateways;
- Haraka 3.3 (one process; ``npm install Haraka@3.3`` into ``--haraka-dir``,
  default ``bench/.haraka``, done on first use): plugins ``relay``
  (``relay_acl_allow`` 127.0.0.0/8) and ``queue/smtp_forward``
  (``enable_outbound = true``, ``forwarding_host_pool`` = the three sinks).

Gateways are three ``smtp-sink -d``; the time runs from the start of
``smtp-source`` until the sinks hold all N messages. Runs alternate; medians,
the ratio relaybal/Haraka, and each one's spread (max/min per gateway, worst
run). Usage::

    .venv/bin/python bench/relay_cutthrough.py [--runs 3] [--messages 3000]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import PeerProcess, PeerRegistry, RelaybalDaemon, SmtpSink, free_port, make_peer_dir
from relay_e2e import compare
from summary import summary

HARAKA_VERSION = "3.3"


def relaybal_config(port: int, state_dir: Path, sinks: Sequence[SmtpSink]) -> str:
    servers = "".join(
        f'[[backend.gw.server]]\nname = "gw{i + 1}"\naddress = "127.0.0.1:{s.port}"\n'
        for i, s in enumerate(sinks)
    )
    return (
        f'[global]\nstate_dir = "{state_dir}"\nhostname = "relay.bench"\n'
        f'[frontend.bench]\nmode = "relay"\nlisten = ["tcp:{port}:interface=127.0.0.1:backlog=1024"]\n'
        f'backend = "gw"\ndelivery = "cut-through"\n[backend.gw]\nbalance = "roundrobin"\n{servers}'
    )


def install_haraka(directory: Path) -> Path:
    """``npm install Haraka@3.3`` into ``directory`` (once); the path of its ``haraka`` script."""
    script = directory / "node_modules" / ".bin" / "haraka"
    if not script.exists():
        if shutil.which("npm") is None:
            raise SystemExit("npm is not installed (apt-get install npm): Haraka cannot be measured")
        directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", f"Haraka@{HARAKA_VERSION}", "--no-audit", "--no-fund", "--silent"],
            cwd=directory, check=True, timeout=600,
        )  # fmt: skip
    return script


class Haraka(PeerProcess):
    """One Haraka process relaying from loopback clients to a pool of forwarding hosts."""

    def __init__(self, directory: Path, script: Path, port: int, pool: Sequence[SmtpSink],
                 registry: PeerRegistry) -> None:  # fmt: skip
        super().__init__("haraka", directory, registry)
        instance = directory / "instance"
        subprocess.run([str(script), "-i", str(instance)], check=True, capture_output=True, timeout=120)
        config = instance / "config"
        (config / "smtp.ini").write_text(f"listen=127.0.0.1:{port}\n")
        (config / "plugins").write_text("relay\nqueue/smtp_forward\n")
        (config / "relay.ini").write_text("[relay]\nacl=true\n")
        (config / "relay_acl_allow").write_text("127.0.0.0/8\n")
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in pool)
        (config / "smtp_forward.ini").write_text(f"enable_outbound=true\nforwarding_host_pool={hosts}\n")
        self._spawn([str(script), "-c", str(instance)])
        self.wait_for_port(port, timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--haraka-dir", type=Path, default=Path(__file__).resolve().parent / ".haraka")
    args = parser.parse_args()
    script = install_haraka(args.haraka_dir)

    directory = make_peer_dir(prefix="relaybal-bench-cutthrough-")
    registry = PeerRegistry()
    try:
        sinks = [SmtpSink(directory / f"sink{i}", name=f"sink{i}", registry=registry) for i in range(3)]
        rport = free_port()
        relaybal = RelaybalDaemon(
            directory / "relaybal", relaybal_config(rport, directory / "state", sinks), registry=registry
        )
        relaybal.start([rport])
        hport = free_port()
        Haraka(directory / "haraka", script, hport, sinks, registry)

        figures = compare({"relaybal": rport, "haraka": hport}, sinks, args.messages, args.runs)
        (r, rs), (h, hs) = figures["relaybal"], figures["haraka"]
        print()
        print(
            f"relay cut-through: smtp-source -s 50 -l 1024 -m {args.messages} → relaybal (cut-through) "
            f"or Haraka {HARAKA_VERSION} (smtp_forward) → 3 smtp-sinks; median of {args.runs} runs"
        )
        print(f"{'relaybal msg/s':>15} {'Haraka msg/s':>13} {'ratio':>6} {'relaybal spread':>16}"
              f" {'Haraka spread':>14}")  # fmt: skip
        print(f"{r:15.0f} {h:13.0f} {r / h:6.2f} {rs:16.3f} {hs:14.3f}")
        summary(f"relay cut-through (Haraka {HARAKA_VERSION})", f"{r:.0f} msg/s", f"{h:.0f} msg/s",
                f"{r / h:.2f}x", "≥ 2x")  # fmt: skip
        return 0
    finally:
        registry.stop_all()


if __name__ == "__main__":
    sys.exit(main())
