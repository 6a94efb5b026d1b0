"""An epoll reactor without the per-event legacy log context.

Twisted's ``EPollReactor.doPoll`` wraps every read and write event in
``log.callWithLogger``, which only sets a legacy log prefix and costs about a
tenth of a splice session's CPU (see docs/performance.rst). This subclass calls
the event handler directly; ``_doReadOrWrite`` already turns an exception from
a handler into a closed connection, and anything escaping it is still logged.

Installed by the twistd plugin when no reactor was chosen (``--reactor`` wins).
"""

from __future__ import annotations

import errno
import sys
from typing import Any

from twisted.logger import Logger

log = Logger(namespace="relaybal.reactor")

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # not Linux
    EPollReactor = None  # type: ignore[assignment,misc]


if EPollReactor is not None:

    class RelaybalEPollReactor(EPollReactor):
        """``EPollReactor`` with a leaner event dispatch loop."""

        def doPoll(self, timeout: float | None) -> None:
            try:
                events = self._poller.poll(
                    -1 if timeout is None else timeout, len(self._selectables)
                )
            except OSError as err:
                if err.errno == errno.EINTR:
                    return
                raise
            selectables = self._selectables
            handle = self._doReadOrWrite
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is not None:
                    try:
                        handle(selectable, fd, event)  # type: ignore[no-untyped-call]
                    except Exception:
                        log.failure("unhandled error in event handler")

        doIteration = doPoll


def install() -> Any:
    """Install the lean reactor if none is installed yet; return the reactor in use."""
    if "twisted.internet.reactor" not in sys.modules and EPollReactor is not None:
        from twisted.internet.main import installReactor

        reactor = RelaybalEPollReactor()  # type: ignore[no-untyped-call]
        installReactor(reactor)
    from twisted.internet import reactor as installed

    return installed
