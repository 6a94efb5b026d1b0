"""Memory under load: one 100 MB message, and thousands of idle sessions.

Two measurements on the real ``twistd -n relaybal`` daemon (one process):

- **big message**: a relay frontend (durable spool) in front of one
  ``smtp-sink``; one message of ``--big-mb`` MB (default 100) goes in through
  smtplib and out to the sink. The daemon's peak resident memory
  (``VmHWM``, reset through ``/proc/PID/clear_refs`` just before) minus its
  resident memory before: the message must be streamed, never held whole.
  Target: growth ≤ 20 MB.
- **idle sessions**: ``--idle`` (default 5,000) client connections opened to a
  splice frontend (each also holds a connection to the sink) and as many to a
  relay frontend, all left idle after the greeting; then the daemon's
  resident memory, and whether a new client is still served (one message
  through each frontend). Target: RSS ≤ 200 MB.

Usage::

    .venv/bin/python bench/memory.py [--big-mb 100] [--idle 5000]
"""

from __future__ import annotations

import argparse
import re
import resource
import smtplib
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from peers import (
    PeerRegistry,
    RelaybalDaemon,
    SmtpSink,
    free_port,
    make_peer_dir,
    send_one_message,
    wait_until,
)
from summary import summary

MB = 1024 * 1024


def status(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` memory field in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def config(splice_port: int, relay_port: int, sink: SmtpSink, state_dir: Path, idle: int) -> str:
    return f"""
[global]
state_dir = "{state_dir}"
hostname = "relay.bench"

[frontend.splice]
mode = "splice"
listen = ["tcp:{splice_port}:interface=127.0.0.1:backlog=4096"]
backend = "sinks"
maxconn = {idle + 100}

[frontend.relay]
mode = "relay"
listen = ["tcp:{relay_port}:interface=127.0.0.1:backlog=4096"]
backend = "sinks"
max_message_size = "200M"
maxconn = {idle + 100}
timeout_client = "10m"

[backend.sinks]
[[backend.sinks.server]]
name = "sink"
address = "127.0.0.1:{sink.port}"
"""


def big_message(size: int) -> bytes:
    line = b"x" * 998 + b"\r\n"
    count = size // len(line)
    return b"Subject: big\r\n\r\n" + line * count


def measure_big(daemon: RelaybalDaemon, relay_port: int, sink: SmtpSink, megabytes: int) -> tuple[int, int]:
    pid = daemon.pid
    assert pid is not None
    body = big_message(megabytes * MB)
    before = status(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    client = smtplib.SMTP("127.0.0.1", relay_port, timeout=300)
    client.sendmail("bench@client.test", ["user@example.test"], body)
    client.quit()
    # (smtp-sink dumps with LF line ends: the daemon's delivery line tells the size it sent)
    delivered = re.compile(r"to sinks/sink: delivered, 1 rcpt, (\d+) bytes")

    def done() -> bool:
        return any(int(size) >= len(body) for size in delivered.findall(daemon.log()))

    wait_until(done, 300, "the big message delivered", 0.1)
    peak = status(pid, "VmHWM")
    return before, peak


def open_idle(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that read the greeting and then say nothing."""
    sockets: list[socket.socket] = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        sockets.append(s)
    for s in sockets:
        s.settimeout(30)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit(f"a session on port {port} was closed before its greeting")
            data += chunk
        if not data.startswith(b"220"):
            raise SystemExit(f"unexpected greeting on port {port}: {data[:80]!r}")
    return sockets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big-mb", type=int, default=100)
    parser.add_argument("--idle", type=int, default=5000)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.idle + 1000)), hard))

    directory = make_peer_dir(prefix="relaybal-bench-memory-")
    registry = PeerRegistry()
    held: list[socket.socket] = []
    try:
        # smtp-sink takes 256 connections at once unless told (-m)
        sink = SmtpSink(directory / "sink", name="sink", registry=registry, backlog=4096,
                        options=["-m", str(args.idle + 100)])  # fmt: skip
        splice_port, relay_port = free_port(), free_port()
        daemon = RelaybalDaemon(
            directory / "relaybal",
            config(splice_port, relay_port, sink, directory / "state", args.idle),
            registry=registry,
        )
        daemon.start([splice_port, relay_port])
        # Warm up both paths once.
        assert send_one_message(splice_port).banner is not None
        assert send_one_message(relay_port, sender="bench@client.test", rcpts=["user@example.test"]).accepted
        before, peak = measure_big(daemon, relay_port, sink, args.big_mb)
        growth = (peak - before) / MB

        pid = daemon.pid
        assert pid is not None
        start = time.perf_counter()
        held += open_idle(splice_port, args.idle)
        held += open_idle(relay_port, args.idle)
        opened = time.perf_counter() - start
        rss = status(pid, "VmRSS") / MB
        splice_ok = send_one_message(splice_port, timeout=30).banner is not None
        relay_ok = send_one_message(
            relay_port, sender="bench@client.test", rcpts=["user@example.test"], timeout=30
        ).accepted

        print()
        print(f"memory: the real daemon, one process (RSS before the big message: {before / MB:.1f} MB)")
        print(f"{'measurement':<44} {'figure':>12} {'target':>10}")
        big = f"{args.big_mb} MB message through the spool: peak growth"
        print(f"{big:<44} {growth:9.1f} MB {'≤ 20 MB':>10}")
        idle = f"{args.idle} idle splice + {args.idle} idle relay: RSS"
        print(f"{idle:<44} {rss:9.1f} MB {'≤ 200 MB':>10}")
        print(f"{'new splice session served while idle ones held':<44} {'yes' if splice_ok else 'NO':>12}")
        print(f"{'new relay message accepted while idle ones held':<44} {'yes' if relay_ok else 'NO':>12}")
        print(f"(opening the {2 * args.idle} idle sessions took {opened:.1f} s)")
        summary(f"one {args.big_mb} MB message: peak RSS growth", f"{growth:.1f} MB", "-", f"{growth:.1f} MB",
                "≤ 20 MB")  # fmt: skip
        served = "served" if splice_ok and relay_ok else "NOT served"
        summary(f"{args.idle} + {args.idle} idle sessions: RSS", f"{rss:.1f} MB", "-",
                f"{rss:.1f} MB, new ones {served}", "≤ 200 MB")  # fmt: skip
        return 0 if splice_ok and relay_ok else 1
    finally:
        for s in held:
            s.close()
        registry.stop_all()


if __name__ == "__main__":
    sys.exit(main())
