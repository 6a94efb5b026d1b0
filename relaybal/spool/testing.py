"""Fakes for testing the spool and the code that uses it.

- :class:`ManualOffloader` keeps submitted jobs until the test runs them, in
  the order it chooses (concurrency made deterministic).
- :class:`FaultyDisk` counts the spool's file system calls and raises the
  errors a test queued for them.
- :class:`PowerCutDisk` remembers what has been made durable, and
  :meth:`~PowerCutDisk.cut` turns the directory into what a power failure
  could leave: each file keeps its synced length plus a random part of its
  unsynced tail (sometimes zero-filled), and each directory loses a random
  suffix of the entry changes made since it was last synced. It makes no
  real fsync calls.
"""

from __future__ import annotations

import collections
import os
import random
import shutil
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from relaybal.relay.interfaces import Envelope
from relaybal.smtp.wire import NULL_SENDER, Mailbox
from relaybal.spool.disk import Disk

P = ParamSpec("P")
T = TypeVar("T")


@attrs.define
class _Job:
    run: Callable[[], Any]
    d: Deferred[Any]


class ManualOffloader:
    """Runs nothing until told: :meth:`run_next`, :meth:`run_all`, :meth:`run_one_of`.

    A job's exception becomes a failed Deferred, as in a thread pool; a
    ``BaseException`` that is not an ``Exception`` (such as
    :class:`PowerCut`) propagates to the test instead.
    """

    def __init__(self) -> None:
        self.jobs: list[_Job] = []
        self.ran = 0
        self.stopped = False

    def submit(self, f: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        d: Deferred[T] = Deferred()
        self.jobs.append(_Job(lambda: f(*args, **kwargs), d))
        return d

    def stop(self) -> None:
        self.run_all()
        self.stopped = True

    def run_next(self, index: int = 0) -> None:
        job = self.jobs.pop(index)
        self.ran += 1
        try:
            result = job.run()
        except Exception:
            job.d.errback(Failure())
        else:
            job.d.callback(result)

    def run_one_of(self, rng: random.Random) -> None:
        """Run one waiting job chosen by ``rng`` (jobs may finish in any order, as in a pool)."""
        self.run_next(rng.randrange(len(self.jobs)))

    def run_all(self) -> int:
        """Run jobs (and the jobs they lead to) until none is left; how many ran."""
        n = 0
        while self.jobs:
            self.run_next()
            n += 1
        return n


class FaultyDisk(Disk):
    """A real :class:`Disk` that counts calls by name and fails those a test asked to fail.

    ``fail("fsync", OSError(errno.EIO, "…"))`` makes the next ``fsync`` call
    raise; ``fail("write", error, after=2)`` lets two writes through first.
    """

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self._faults: dict[str, list[tuple[int, OSError]]] = {}

    @property
    def fsyncs(self) -> int:
        """File and directory fsyncs so far."""
        return self.calls["fsync"] + self.calls["fsync_dir"]

    def fail(self, name: str, error: OSError, after: int = 0) -> None:
        self._faults.setdefault(name, []).append((self.calls[name] + after, error))

    def _call(self, name: str) -> None:
        n = self.calls[name]
        self.calls[name] += 1
        for fault in self._faults.get(name, []):
            if fault[0] == n:
                self._faults[name].remove(fault)
                raise fault[1]

    def open(self, path: str, flags: int, mode: int = 0o640) -> int:
        self._call("open")
        return super().open(path, flags, mode)

    def write(self, fd: int, data: bytes, offset: int) -> None:
        self._call("write")
        super().write(fd, data, offset)

    def fsync(self, fd: int) -> None:
        self._call("fsync")
        super().fsync(fd)

    def fsync_dir(self, path: str) -> None:
        self._call("fsync_dir")
        super().fsync_dir(path)

    def rename(self, src: str, dst: str) -> None:
        self._call("rename")
        super().rename(src, dst)

    def unlink(self, path: str) -> None:
        self._call("unlink")
        super().unlink(path)


class PowerCut(BaseException):
    """The simulated power failed: the process is gone (not an ``Exception``, so nothing catches it)."""


class PowerCutDisk(Disk):
    """A real :class:`Disk` that knows what a power failure could take away.

    ``cut_at`` is the number of calls (of any kind) that succeed; the next one
    raises :class:`PowerCut`, as do all after it. Then :meth:`cut` rewrites
    the files. Unlinked files are kept aside in ``trash`` so that an unsynced
    unlink can be undone.
    """

    def __init__(self, trash: str, cut_at: int | None = None) -> None:
        self.trash = trash
        self.cut_at = cut_at
        self.calls = 0
        self.dead = False
        self._paths: dict[int, str] = {}  # fd -> path it was opened as
        self._synced: dict[int, int] = {}  # inode -> durable length
        self._dir_ops: dict[str, list[tuple[str, str, str]]] = {}  # dir -> unsynced entry changes

    def _step(self) -> None:
        if self.dead or (self.cut_at is not None and self.calls >= self.cut_at):
            self.dead = True
            raise PowerCut()
        self.calls += 1

    def _ino(self, fd: int) -> int:
        return os.fstat(fd).st_ino

    def _dir_op(self, kind: str, path: str, other: str = "") -> None:
        self._dir_ops.setdefault(os.path.dirname(os.path.abspath(path)), []).append((kind, path, other))

    def open(self, path: str, flags: int, mode: int = 0o640) -> int:
        self._step()
        existed = os.path.exists(path)
        fd = super().open(path, flags, mode)
        self._paths[fd] = path
        if not existed:
            self._dir_op("create", path)
            self._synced[self._ino(fd)] = 0
        elif flags & os.O_TRUNC:
            self._synced[self._ino(fd)] = 0
        return fd

    def close(self, fd: int) -> None:
        self._step()
        self._paths.pop(fd, None)
        super().close(fd)

    def write(self, fd: int, data: bytes, offset: int) -> None:
        self._step()
        ino = self._ino(fd)
        # Overwriting synced bytes makes them uncertain again.
        self._synced[ino] = min(self._synced.get(ino, 0), offset)
        super().write(fd, data, offset)

    # No real fsync: the simulation decides what survives, and real ones would make
    # running hundreds of crash scenarios slow.
    def fsync(self, fd: int) -> None:
        self._step()
        self._synced[self._ino(fd)] = os.fstat(fd).st_size

    def fsync_dir(self, path: str) -> None:
        self._step()
        self._dir_ops.pop(os.path.abspath(path), None)

    def rename(self, src: str, dst: str) -> None:
        self._step()
        super().rename(src, dst)
        self._dir_op("rename", dst, src)

    def unlink(self, path: str) -> None:
        self._step()
        os.makedirs(self.trash, exist_ok=True)
        saved = os.path.join(self.trash, f"{len(os.listdir(self.trash))}")
        os.rename(path, saved)
        self._dir_op("unlink", path, saved)

    def cut(self, rng: random.Random, roots: list[str]) -> list[str]:
        """Make the files under ``roots`` what the power failure left; a description of what was lost."""
        lost: list[str] = []
        # Directory entries first: a random suffix of each directory's unsynced changes is undone.
        for ops in self._dir_ops.values():
            keep = rng.randint(0, len(ops))
            for kind, path, other in reversed(ops[keep:]):
                lost.append(f"{kind} {path}")
                if kind == "create":
                    if os.path.exists(path):
                        os.unlink(path)
                elif kind == "rename":
                    if os.path.exists(path):
                        os.rename(path, other)
                else:  # unlink
                    shutil.move(other, path)
        self._dir_ops.clear()
        for root in roots:
            for base, _, names in os.walk(root):
                for name in names:
                    path = os.path.join(base, name)
                    st = os.stat(path)
                    synced = self._synced.get(st.st_ino)
                    if synced is None or synced >= st.st_size:
                        continue
                    length = rng.randint(synced, st.st_size)
                    with open(path, "r+b") as f:
                        f.truncate(length)
                        if length > synced and rng.random() < 0.5:
                            start = rng.randint(synced, length - 1)
                            end = rng.randint(start + 1, length)
                            f.seek(start)
                            f.write(bytes(end - start))
                    lost.append(f"tail {path} {synced}..{st.st_size} -> {length}")
        return lost


def sample_envelope(
    sender: str = "app@example.test",
    recipients: tuple[str, ...] = ("user@example.org",),
    received_at: float = 1_700_000_000.0,
) -> Envelope:
    """An envelope as a relay frontend would hand it over (for tests of the spool and its users)."""

    def mailbox(address: str) -> Mailbox:
        local, _, domain = address.rpartition("@")
        return Mailbox(local, domain)

    return Envelope(
        sender=mailbox(sender) if sender else NULL_SENDER,
        recipients=tuple(mailbox(r) for r in recipients),
        mail_params={"BODY": "8BITMIME"},
        smtputf8=False,
        body_type="8BITMIME",
        frontend="relay",
        client=("192.0.2.10", 40000),
        helo="app.example.test",
        tls=None,
        user=None,
        received_at=received_at,
    )
