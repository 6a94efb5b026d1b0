"""Splice mode's added latency: one session at a time, per transaction, direct vs through relaybal.

A lock-step client (one command, wait for its reply, next command) runs
``--transactions`` SMTP transactions (``MAIL``, ``RCPT``, ``DATA``, a 1 KB body
and the final dot: four round trips) over one connection, first straight to
``smtp-sink``, then through the real daemon's splice frontend to the same
sink, alternating in ``--rounds`` rounds. Printed: the median and the 99th
percentile of the per-transaction time of each, and what relaybal adds.
Target: p99 added ≤ 1 ms. Usage::

    .venv/bin/python bench/latency.py [--transactions 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from peers import PeerRegistry, RelaybalDaemon, SmtpSink, free_port, make_peer_dir
from summary import summary

BODY = b"Subject: latency\r\n\r\n" + (b"x" * 78 + b"\r\n") * 12 + b".\r\n"


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.expect(b"220")
        self.command(b"EHLO latency.test\r\n", b"250")

    def expect(self, code: bytes) -> None:
        while True:
            end = self.buf.find(b"\r\n")
            while end >= 0:
                line, self.buf = self.buf[:end], self.buf[end + 2 :]
                if line[3:4] != b"-":
                    if not line.startswith(code):
                        raise SystemExit(f"unexpected reply {line!r}")
                    return
                end = self.buf.find(b"\r\n")
            data = self.sock.recv(65536)
            if not data:
                raise SystemExit("connection closed")
            self.buf += data

    def command(self, line: bytes, code: bytes) -> None:
        self.sock.sendall(line)
        self.expect(code)

    def transaction(self) -> float:
        start = time.perf_counter()
        self.command(b"MAIL FROM:<bench@client.test>\r\n", b"250")
        self.command(b"RCPT TO:<user@example.test>\r\n", b"250")
        self.command(b"DATA\r\n", b"354")
        self.command(BODY, b"250")
        return time.perf_counter() - start

    def close(self) -> None:
        self.sock.close()


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    directory = make_peer_dir(prefix="relaybal-bench-latency-")
    registry = PeerRegistry()
    try:
        sink = SmtpSink(directory / "sink", name="sink", dump=False, registry=registry)
        port = free_port()
        config = (
            f'[global]\nstate_dir = "{directory}/state"\n'
            f'[frontend.mx]\nmode = "splice"\nlisten = ["tcp:{port}:interface=127.0.0.1"]\nbackend = "mx"\n'
            f'[[backend.mx.server]]\nname = "sink"\naddress = "127.0.0.1:{sink.port}"\n'
        )
        RelaybalDaemon(directory / "relaybal", config, registry=registry).start([port])
        times: dict[str, list[float]] = {"direct": [], "relaybal": []}
        for _ in range(args.rounds):
            for name, target in (("direct", sink.port), ("relaybal", port)):
                client = Client(target)
                for _ in range(100):
                    client.transaction()  # warm up
                times[name] += [client.transaction() for _ in range(args.transactions)]
                client.close()
        direct, relayed = times["direct"], times["relaybal"]
        ms = 1000.0
        print()
        print(f"splice latency: one session, {len(direct)} lock-step transactions each (4 round trips, 1 KB)")
        print(f"{'':<10} {'median ms':>10} {'p99 ms':>8}")
        print(f"{'direct':<10} {statistics.median(direct) * ms:10.3f} {p99(direct) * ms:8.3f}")
        print(f"{'relaybal':<10} {statistics.median(relayed) * ms:10.3f} {p99(relayed) * ms:8.3f}")
        added_median = (statistics.median(relayed) - statistics.median(direct)) * ms
        added_p99 = (p99(relayed) - p99(direct)) * ms
        print(f"{'added':<10} {added_median:10.3f} {added_p99:8.3f}   (target: p99 added ≤ 1 ms)")
        summary("splice added latency per transaction, p99", f"{p99(relayed) * ms:.3f} ms",
                f"{p99(direct) * ms:.3f} ms direct", f"+{added_p99:.3f} ms", "≤ +1 ms")  # fmt: skip
        return 0
    finally:
        registry.stop_all()


if __name__ == "__main__":
    sys.exit(main())
