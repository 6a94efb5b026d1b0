"""``[global] workers = N``: more processes serve the splice listeners.

The main process (the one twistd runs) opens every listener, as always, and
then starts ``N - 1`` worker processes (``python -m relaybal.worker``),
handing each the splice listening sockets (the same descriptors: the kernel
gives each new connection to one of the processes waiting in ``accept``).
A worker builds the same frontends and backends from the same file, runs its
own health checks and serves only the sockets it was given; relay frontends
(the spool has one writer), the runtime API and the stats page stay in the
main process.

The main process keeps its workers in step:

- a runtime API command that changes something (``set server``, ``set
  weight``, ``enable``/``disable``, ``clear table``) is sent to every worker
  on its standard input and run there too;
- ``SIGHUP`` (and ``reload``): each worker re-reads the file itself; a
  listener that a reload adds is served by the main process alone until the
  next restart;
- ``SIGTERM``: every worker drains with the main process, which exits after
  them; a worker that dies otherwise is started again a second later.

What stays per process (and so is N times what one process would do): the
balance algorithms' positions, stick tables, counters on the stats page (the
main process's only), ``maxconn`` per server, ``maxconn_per_client`` and the
health checks' traffic. With N workers a ``roundrobin`` backend's picks are
exact within each process, so the spread over all of them stays within N
connections of the weights.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


@attrs.frozen
class Inherited:
    """A listening socket handed to a worker: ``frontend``'s ``index``-th ``listen``, as descriptor ``fd``."""

    frontend: str
    index: int
    fd: int
    family: int

    def encode(self) -> str:
        return f"{self.index}:{self.fd}:{self.family}:{self.frontend}"

    @classmethod
    def decode(cls, text: str) -> Inherited:
        index, fd, family, frontend = text.split(":", 3)
        return cls(frontend, int(index), int(fd), int(family))


@attrs.frozen
class WorkerSetup:
    """What a worker process was given: its number and the sockets to adopt."""

    index: int
    inherited: tuple[Inherited, ...]

    def socket_for(self, frontend: str, index: int) -> Inherited | None:
        for item in self.inherited:
            if item.frontend == frontend and item.index == index:
                return item
        return None


class _WorkerProtocol(ProcessProtocol):
    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.pool._ended(self, reason)
        self.ended.callback(None)


class WorkerPool:
    """The worker processes of the main process (numbered 1 to ``count``)."""

    def __init__(
        self,
        reactor: Any,
        config_path: str,
        count: int,
        inherited: Sequence[Inherited],
        *,
        respawn_delay: float = 1.0,
        executable: str = sys.executable,
    ) -> None:
        self.reactor = reactor
        self.config_path = config_path
        self.count = count
        self.inherited = tuple(inherited)
        self.respawn_delay = respawn_delay
        self.executable = executable
        self.workers: dict[int, _WorkerProtocol] = {}
        self.stopping = False
        self.restarts = 0

    def start(self) -> None:
        for index in range(1, self.count + 1):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        if self.stopping:
            return
        argv = [self.executable, "-m", "relaybal.worker", "--config", self.config_path, "--index", str(index)]
        for item in self.inherited:
            argv += ["--socket", item.encode()]
        child_fds: dict[int, int | str] = {0: "w", 1: 1, 2: 2}
        for item in self.inherited:
            os.set_inheritable(item.fd, True)
            child_fds[item.fd] = item.fd
        protocol = _WorkerProtocol(self, index)
        self.reactor.spawnProcess(protocol, self.executable, argv, env=os.environ.copy(), childFDs=child_fds)
        self.workers[index] = protocol
        log.info("worker {index} started (pid {pid})", index=index, pid=protocol.transport.pid)  # type: ignore[union-attr]

    def _ended(self, protocol: _WorkerProtocol, reason: Failure) -> None:
        if self.workers.get(protocol.index) is protocol:
            del self.workers[protocol.index]
        if self.stopping:
            log.info("worker {index} exited", index=protocol.index)
            return
        self.restarts += 1
        log.error(
            "worker {index} ended unexpectedly ({reason}); starting it again in {delay:g}s",
            index=protocol.index,
            reason=reason.getErrorMessage(),
            delay=self.respawn_delay,
        )
        self.reactor.callLater(self.respawn_delay, self._spawn, protocol.index)

    @property
    def pids(self) -> list[int]:
        return [p.transport.pid for p in self.workers.values() if p.transport is not None and p.transport.pid]

    def broadcast(self, line: str) -> None:
        """Run the runtime API command ``line`` in every worker too."""
        for protocol in self.workers.values():
            if protocol.transport is not None:
                protocol.transport.writeToChild(0, line.encode("utf-8") + b"\n")

    def signal(self, signum: int) -> None:
        for protocol in self.workers.values():
            if protocol.transport is not None:
                with contextlib.suppress(Exception):  # already gone: processEnded follows
                    protocol.transport.signalProcess(signum)

    def stop(self) -> Deferred[None]:
        """``SIGTERM`` every worker (they drain) and fire once all have exited."""
        self.stopping = True
        ended = [p.ended for p in self.workers.values()]
        self.signal(signal.SIGTERM)
        if not ended:
            return succeed(None)
        return DeferredList(ended).addCallback(lambda _: None)


def command_line(words: Sequence[str]) -> str:
    """``words`` as one runtime API line (spaces, ``;`` and ``\\`` escaped)."""
    return " ".join("".join("\\" + c if c in " \t;\\" else c for c in word) for word in words)
