"""Log observers for ``twistd relaybal``: ``--log-format text`` (fast) and ``json``.

twistd's own text observer formats every event through ``string.Formatter`` and
``datetime``; at one connection-log line per SMTP session that is a measurable
share of a splice session's CPU (docs/performance.rst). The text observer here
writes exactly twistd's format (``TIME [SYSTEM] TEXT``) but takes relaybal's
pre-formatted connection lines as they are and formats the timestamp once per
second; every other event goes through Twisted's own formatter.

Where the log goes follows twistd's rules: stdout with ``-n`` (or
``--logfile -``), otherwise ``--logfile`` (default ``twistd.log``) with
rotation on ``SIGUSR1``.
"""

from __future__ import annotations

import atexit
import signal
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from twisted.logger import (
    ILogObserver,
    LogEvent,
    formatEventAsClassicLogText,
    jsonFileLogObserver,
)
from twisted.python import logfile
from zope.interface import implementer

#: Filled in by ``relaybal.tap.Options`` from twistd's own options.
settings: dict[str, Any] = {"logfile": None, "nodaemon": True}


def _open_log() -> IO[str]:
    name = settings.get("logfile")
    if name == "-" or (settings.get("nodaemon") and not name):
        return sys.stdout
    log = logfile.LogFile.fromFullPath(name or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(signum: int, frame: Any) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(log.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    return log  # type: ignore[no-any-return]


@implementer(ILogObserver)
class FastTextObserver:
    """twistd's text format, with a fast path for pre-formatted ``{line}`` events."""

    def __init__(self, out: IO[str], defer_flush: Callable[[Callable[[], None]], bool] | None = None) -> None:
        self.out = out
        self._second = -1
        self._stamp = ""
        # ``defer_flush(f)`` schedules ``f`` for the end of this reactor iteration and says
        # whether it did: lines logged in one iteration then go out in one write.
        self._defer_flush = defer_flush
        self._pending: list[str] = []

    def _time(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(second))
        return self._stamp

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_format") == "{line}" and "log_failure" not in event:
            system = event.get("log_system")
            if system is None:
                level = event.get("log_level")
                system = f"{event.get('log_namespace', '-')}#{level.name if level else '-'}"
            text = f"{self._time(event['log_time'])} [{system}] {event['line']}\n"
        else:
            classic = formatEventAsClassicLogText(event)
            if classic is None:
                return
            text = classic
        pending = self._pending
        pending.append(text)
        if len(pending) == 1 and (self._defer_flush is None or not self._defer_flush(self.flush)):
            self.flush()

    def flush(self) -> None:
        """Write out the lines logged so far."""
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            self.out.write(text)
            self.out.flush()


def _flush_at_end_of_iteration(flush: Callable[[], None]) -> bool:
    from twisted.internet import reactor
    from twisted.python.threadable import isInIOThread

    if not reactor.running or not isInIOThread():
        return False
    reactor.callLater(0, flush)
    return True


def text_log_observer() -> ILogObserver:
    """twistd ``--logger`` factory for ``--log-format text``."""
    observer = FastTextObserver(_open_log(), _flush_at_end_of_iteration)
    atexit.register(observer.flush)
    return observer


def json_log_observer() -> ILogObserver:
    """twistd ``--logger`` factory for ``--log-format json``: one JSON event a line."""
    return jsonFileLogObserver(_open_log(), recordSeparator="")
