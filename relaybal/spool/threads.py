"""Running the spool's blocking calls off the reactor thread.

The spool has its own :class:`~twisted.python.threadpool.ThreadPool`, never
the reactor's default one (name resolution uses that, and a slow disk must
not stall it). :class:`Offloader` is the seam: tests substitute
:class:`~relaybal.spool.testing.ManualOffloader` to decide when each job runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

P = ParamSpec("P")
T = TypeVar("T")


class Offloader(Protocol):
    """Runs a blocking function elsewhere and reports its result on the reactor thread."""

    def submit(self, f: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Deferred[T]: ...

    def stop(self) -> None:
        """Finish the jobs already submitted and stop (blocking)."""


class ThreadPoolOffloader:
    """The spool's own thread pool: started at once, stopped by :meth:`stop`.

    It is also stopped after the reactor has shut down, so a process whose
    spool was never closed can still exit (its threads are not daemons).
    """

    def __init__(self, reactor: IReactorFromThreads, threads: int = 4, name: str = "relaybal-spool") -> None:
        self.reactor = reactor
        self.pool = ThreadPool(minthreads=1, maxthreads=threads, name=name)
        self.pool.start()
        IReactorCore(reactor).addSystemEventTrigger("after", "shutdown", self.stop)

    def submit(self, f: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        return deferToThreadPool(self.reactor, self.pool, f, *args, **kwargs)

    def stop(self) -> None:
        if self.pool.started:
            self.pool.stop()
