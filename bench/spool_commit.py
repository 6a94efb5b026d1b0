"""Spool commit benchmark: commits/s and fsyncs per message, 1, 10 and 50 concurrent writers.

Each writer loops: ``begin``, write a 1 KB body, ``commit``, wait for the
acknowledgement (the moment a relay frontend would answer ``250``). The
spool runs as in the daemon: real files on a real disk, its own thread
pool, the default reactor. File fdatasyncs and directory fsyncs are counted
together through a :class:`~relaybal.spool.disk.Disk` subclass; with group
commit, fsyncs per message fall as writers are added. A line of reference
gives the cost of one bare 1 KB write + fdatasync on the same directory.

Usage::

    .venv/bin/python bench/spool_commit.py [--messages 5000] [--dir DIR] [--writers 1,10,50]

``--dir`` is where the temporary spools are made (default: the current
directory; not a tmpfs, or the fsyncs cost nothing).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorCore

from relaybal.spool import SpoolStore
from relaybal.spool.disk import Disk
from relaybal.spool.testing import sample_envelope

BODY = (b"Subject: spool benchmark\r\n\r\n" + b"x" * 70 + b"\r\n") * 11  # about 1 KB
BODY = BODY[:1022] + b"\r\n"


class CountingDisk(Disk):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fsyncs = 0

    def fsync(self, fd: int) -> None:
        super().fsync(fd)
        with self.lock:
            self.fsyncs += 1

    def fsync_dir(self, path: str) -> None:
        super().fsync_dir(path)
        with self.lock:
            self.fsyncs += 1


def bare_fsync_cost(directory: str, rounds: int = 300) -> float:
    """Seconds per 1 KB append + fdatasync, for reference."""
    path = os.path.join(directory, "bare")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        start = time.perf_counter()
        for _ in range(rounds):
            os.write(fd, BODY)
            os.fdatasync(fd)
        return (time.perf_counter() - start) / rounds
    finally:
        os.close(fd)
        os.unlink(path)


async def one_level(reactor: IReactorCore, base: str, writers: int, messages: int) -> tuple[float, int, int]:
    """Run ``writers`` concurrent writers until ``messages`` commits; (seconds, fsyncs, flushes)."""
    directory = tempfile.mkdtemp(prefix="spool-bench-", dir=base)
    disk = CountingDisk()
    store = SpoolStore.open(directory, reactor=reactor, disk=disk)  # type: ignore[arg-type]
    envelope = sample_envelope()
    left = messages

    async def writer() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            message = store.begin(envelope)
            message.write(BODY)
            await message.commit()

    # Let the start-up flush (if any) settle before measuring.
    await task.deferLater(reactor, 0.05, lambda: None)  # type: ignore[arg-type]
    fsyncs0, flushes0 = disk.fsyncs, store.stats.flushes
    start = time.perf_counter()
    await defer.gatherResults([defer.ensureDeferred(writer()) for _ in range(writers)])
    elapsed = time.perf_counter() - start
    fsyncs, flushes = disk.fsyncs - fsyncs0, store.stats.flushes - flushes0
    assert store.stats.commits == messages
    await store.close()
    shutil.rmtree(directory)
    return elapsed, fsyncs, flushes


async def run(reactor: IReactorCore, args: argparse.Namespace) -> None:
    base = os.path.abspath(args.dir)
    bare = bare_fsync_cost(base)
    print(f"bare 1 KB write + fdatasync in {base}: {bare * 1e6:.0f} µs ({1 / bare:.0f}/s)")
    print(f"{'writers':>7} {'messages':>8} {'seconds':>8} {'commits/s':>10} {'fsyncs':>7} {'fsyncs/msg':>10} "
          f"{'msgs/flush':>10}")  # fmt: skip
    for writers in args.writers:
        elapsed, fsyncs, flushes = await one_level(reactor, base, writers, args.messages)
        print(
            f"{writers:>7} {args.messages:>8} {elapsed:>8.2f} {args.messages / elapsed:>10.0f} {fsyncs:>7} "
            f"{fsyncs / args.messages:>10.3f} {args.messages / max(flushes, 1):>10.1f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--dir", default=".")
    parser.add_argument("--writers", type=lambda s: [int(w) for w in s.split(",")], default=[1, 10, 50])
    args = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    main()
