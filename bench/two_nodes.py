"""Two relaybal nodes sharing state through Redis, against one node: messages/s and spread.

Relay mode, as several relays behind DNS or an L4 balancer would run: each
node has a relay frontend with ``policies = ["local", "rate"]`` (``networks``
allowing loopback, then ``ratelimit`` on the client address with a rate far
above the load, so every message costs one bucket check and none is
refused), the durable spool, and ``balance = "roundrobin"`` over the same
three ``smtp-sink -d`` gateways. Three set-ups, runs alternating:

``1 node``
    one daemon, buckets in its memory (no ``shared_state``);
``1 node + Redis``
    one daemon with ``[global] shared_state`` (one Lua script per MAIL);
``2 nodes + Redis``
    two daemons sharing one ``redis-server``; the load is split between
    them (two ``smtp-source`` processes, half the sessions and messages each).

``smtp-source -s 50 -l 1024`` (new connection per message) sends N messages;
the time runs until the sinks hold all of them. The table gives the median
messages/s, the ratio to one node, and the spread (max/min messages per
gateway, worst run) of the set-up's deliveries. ``--splice`` adds the same
three set-ups in splice mode with ``stick = { on = "src" }`` (one ``GETEX``
per connection; every connection comes from 127.0.0.1, so all stick to one
server and no spread is given).

Only ratios mean something here: the nodes, Redis, the load generator and the
sinks share the machine's cores, so a second node adds no CPU, it splits the
same CPU between two processes. Usage::

    .venv/bin/python bench/two_nodes.py [--runs 3] [--messages 4000] [--splice]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from peers import (
    PeerRegistry,
    RelaybalDaemon,
    SmtpSink,
    free_port,
    make_peer_dir,
    smtp_source,
    wait_until,
)
from redis_peer import RedisServer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from summary import summary

SESSIONS = 50
SIZE = 1024
SETUPS = ("1 node", "1 node + Redis", "2 nodes + Redis")


def relay_config(port: int, state_dir: Path, sinks: Sequence[SmtpSink], redis: RedisServer | None) -> str:
    shared = f'shared_state = {{ redis = "{redis.address}", timeout = "200ms" }}\n' if redis else ""
    servers = "".join(
        f'[[backend.gw.server]]\nname = "gw{i + 1}"\naddress = "127.0.0.1:{s.port}"\n'
        for i, s in enumerate(sinks)
    )
    return (
        f'[global]\nstate_dir = "{state_dir}"\nhostname = "node.bench"\n{shared}'
        f'[frontend.bench]\nmode = "relay"\nlisten = ["tcp:{port}:interface=127.0.0.1:backlog=1024"]\n'
        f'backend = "gw"\npolicies = ["local", "rate"]\n'
        f'[policy.local]\nplugin = "networks"\nallow = ["127.0.0.0/8"]\n'
        f'[policy.rate]\nplugin = "ratelimit"\nkey = "client_address"\nrate = "1000000/s"\n'
        f'[backend.gw]\nbalance = "roundrobin"\n{servers}'
    )


def splice_config(port: int, state_dir: Path, sinks: Sequence[SmtpSink], redis: RedisServer | None) -> str:
    shared = f'shared_state = {{ redis = "{redis.address}", timeout = "200ms" }}\n' if redis else ""
    servers = "".join(
        f'[[backend.mx.server]]\nname = "mx{i + 1}"\naddress = "127.0.0.1:{s.port}"\n'
        for i, s in enumerate(sinks)
    )
    return (
        f'[global]\nstate_dir = "{state_dir}"\nhostname = "node.bench"\n{shared}'
        f'[frontend.bench]\nmode = "splice"\nlisten = ["tcp:{port}:interface=127.0.0.1:backlog=1024"]\n'
        f'backend = "mx"\n[backend.mx]\nstick = {{ on = "src", size = 10000, expire = "30m" }}\n{servers}'
    )


def clear(sinks: Sequence[SmtpSink]) -> None:
    for sink in sinks:
        for path in sink.message_files():
            path.unlink()


def counts(sinks: Sequence[SmtpSink]) -> list[int]:
    return [sink.count() for sink in sinks]


def spread(per_gateway: list[int]) -> float:
    return max(per_gateway) / min(per_gateway) if min(per_gateway) else float("inf")


def run_once(ports: Sequence[int], sinks: Sequence[SmtpSink], messages: int) -> tuple[float, list[int]]:
    """Split the load between ``ports`` (one smtp-source each); messages/s until the sinks have it all."""
    clear(sinks)
    share = messages // len(ports)
    failures: list[str] = []

    def send(port: int) -> None:
        done = smtp_source(
            port, sessions=SESSIONS // len(ports), messages=share, size=SIZE,
            sender="bench@client.test", rcpt="user@example.test", timeout=600,
        )  # fmt: skip
        if done.returncode != 0:
            failures.append(f"smtp-source against port {port} failed: {done.stderr.strip()}")

    start = time.perf_counter()
    threads = [threading.Thread(target=send, args=(port,)) for port in ports]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit("\n".join(failures))
    total = share * len(ports)
    wait_until(lambda: sum(counts(sinks)) >= total, 600, f"{total} at the sinks", interval=0.02)
    return total / (time.perf_counter() - start), counts(sinks)


def measure(
    name: str,
    make_config: Callable[[int, Path, Sequence[SmtpSink], RedisServer | None], str],
    *,
    directory: Path,
    registry: PeerRegistry,
    sinks: Sequence[SmtpSink],
    redis: RedisServer,
    runs: int,
    messages: int,
) -> dict[str, list[tuple[float, list[int]]]]:
    daemons: dict[str, list[int]] = {}
    for setup, nodes, shared in ((SETUPS[0], 1, False), (SETUPS[1], 1, True), (SETUPS[2], 2, True)):
        ports = []
        for n in range(nodes):
            port = free_port()
            label = f"{name}-{setup.replace(' ', '').replace('+', '-')}-{n}"
            daemon = RelaybalDaemon(
                directory / label,
                make_config(port, directory / f"state-{label}", sinks, redis if shared else None),
                name=label,
                registry=registry,
            )
            daemon.start([port])
            ports.append(port)
        daemons[setup] = ports
    results: dict[str, list[tuple[float, list[int]]]] = {setup: [] for setup in SETUPS}
    for ports in daemons.values():
        run_once(ports, sinks, 200)  # warm up
    for run in range(runs):
        for setup, ports in daemons.items():
            rate, per_gateway = run_once(ports, sinks, messages)
            results[setup].append((rate, per_gateway))
            print(f"  run {run + 1}  {name:<6} {setup:<16} {rate:8.0f} msg/s  per gateway {per_gateway}",
                  file=sys.stderr)  # fmt: skip
    return results


def report(
    mode: str, title: str, results: dict[str, list[tuple[float, list[int]]]], *, with_spread: bool
) -> None:
    print()
    print(title)
    print(f"{'set-up':<18} {'msg/s':>8} {'vs 1 node':>10}" + (f" {'spread':>8}" if with_spread else ""))
    base = statistics.median(rate for rate, _ in results[SETUPS[0]])
    for setup in SETUPS:
        rate = statistics.median(r for r, _ in results[setup])
        line = f"{setup:<18} {rate:8.0f} {rate / base:10.2f}"
        if with_spread:
            line += f" {max(spread(g) for _, g in results[setup]):8.3f}"
        print(line)
    pair = statistics.median(r for r, _ in results[SETUPS[2]])
    summary(f"{mode}, 2 nodes + Redis (1 node, local state)", f"{pair:.0f} msg/s", f"{base:.0f} msg/s",
            f"{pair / base:.2f}", "measured")  # fmt: skip
    if with_spread:
        worst = max(spread(g) for _, g in results[SETUPS[2]])
        summary(f"{mode}, 2 nodes: spread over 3 gateways (max/min)", f"{worst:.3f}", "-",
                f"{worst:.3f}", "≤ 1.02")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--splice", action="store_true", help="also splice mode with a shared stick table")
    args = parser.parse_args()

    directory = make_peer_dir(prefix="relaybal-bench-two-nodes-")
    registry = PeerRegistry()
    try:
        redis = RedisServer(directory / "redis", registry=registry)
        redis.start()
        sinks = [SmtpSink(directory / f"sink{i}", name=f"sink{i}", registry=registry) for i in range(3)]
        def run(name: str, config: Callable[[int, Path, Sequence[SmtpSink], RedisServer | None], str]) -> Any:
            return measure(
                name, config, directory=directory, registry=registry, sinks=sinks, redis=redis,
                runs=args.runs, messages=args.messages,
            )  # fmt: skip

        relay = run("relay", relay_config)
        splice = run("splice", splice_config) if args.splice else None
        report(
            "relay",
            f"relay mode, ratelimit on every message: smtp-source -s {SESSIONS} -l {SIZE} "
            f"-m {args.messages} (split between the nodes) → spool → 3 smtp-sinks, until all delivered; "
            f"median of {args.runs} runs",
            relay,
            with_spread=True,
        )
        if splice is not None:
            report(
                "splice stick",
                f"splice mode, stick on src: smtp-source -s {SESSIONS} -l {SIZE} -m {args.messages}; "
                f"median of {args.runs} runs",
                splice,
                with_spread=False,
            )
        return 0
    finally:
        registry.stop_all()


if __name__ == "__main__":
    sys.exit(main())
