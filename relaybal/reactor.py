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
    _IN = EPollReactor._POLL_IN
    _OUT = EPollReactor._POLL_OUT
    _DISCONNECTED = EPollReactor._POLL_DISCONNECTED

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
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is None:
                    continue
                if event & _DISCONNECTED and not event & _IN:
                    # A hang-up with no input left: Twisted's own handling.
                    self._doReadOrWrite(selectable, fd, event)  # type: ignore[no-untyped-call]
                    continue
                # The common case, inlined: read and/or write, and disconnect the
                # selectable if either says so or raises (as _doReadOrWrite does,
                # less its fileno() == -1 check for long-gone Python sockets).
                why = None
                in_read = False
                try:
                    if event & _IN:
                        why = selectable.doRead()
                        in_read = True
                    if not why and event & _OUT:
                        why = selectable.doWrite()
                        in_read = False
                except BaseException as e:
                    why = e
                    log.failure("unhandled error in event handler")
                # A handler that raised after its transport had already closed leaves nothing to
                # clean up (and removing a closed descriptor makes Twisted scan every selectable).
                if why and not getattr(selectable, "disconnected", False):
                    self._disconnectSelectable(selectable, why, in_read)  # type: ignore[no-untyped-call]

        doIteration = doPoll


def install() -> Any:
    """Install the lean reactor if none is installed yet; return the reactor in use."""
    if "twisted.internet.reactor" not in sys.modules and EPollReactor is not None:
        from twisted.internet.main import installReactor

        reactor = RelaybalEPollReactor()  # type: ignore[no-untyped-call]
        installReactor(reactor)
    from twisted.internet import reactor as installed

    return installed
