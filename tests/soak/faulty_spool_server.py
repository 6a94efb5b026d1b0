"""A relay frontend over a real spool whose disk calls fail on command (``tests/test_reliability_disk.py``).

Run as ``python faulty_spool_server.py SPOOL_DIR``: it listens on a free port
of 127.0.0.1, prints ``ready PORT``, and reads commands on stdin, one a line,
answering each with one line on stdout:

``fail CALL ERRNO [AFTER]``
    the next ``CALL`` (``open``, ``write``, ``fsync``, ``fsync_dir``,
    ``rename``, ``unlink``) after ``AFTER`` more successful ones raises
    ``OSError(ERRNO)``; answers ``ok``;
``stats``
    answers a JSON object: the disk calls made and the spool's counters.

The server is the real :class:`~relaybal.smtp.server.ESMTPServer` of a
:class:`~relaybal.relay.frontend.RelayFrontend` on the real reactor; the
spool is the real :class:`~relaybal.spool.store.SpoolStore` with its own
thread pool, only its :class:`~relaybal.spool.disk.Disk` seam is
:class:`~relaybal.spool.testing.FaultyDisk`. Nothing is delivered.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading

import attrs
from twisted.internet import reactor as _reactor
from twisted.internet import stdio
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.protocols.basic import LineReceiver

from relaybal.balance.backend import Backend
from relaybal.config import parse_config
from relaybal.relay.frontend import RelayFrontend
from relaybal.relay.testing import relay_config_dict
from relaybal.spool.store import SpoolStore
from relaybal.spool.testing import FaultyDisk

reactor: object = _reactor


class LockedFaultyDisk(FaultyDisk):
    """:class:`FaultyDisk` whose fault list may be changed from the reactor thread while the pool runs."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def fail(self, name: str, error: OSError, after: int = 0) -> None:
        with self.lock:
            super().fail(name, error, after)

    def _call(self, name: str) -> None:
        with self.lock:
            super()._call(name)


class Control(LineReceiver):
    delimiter = b"\n"

    def __init__(self, disk: LockedFaultyDisk, store: SpoolStore) -> None:
        self.disk = disk
        self.store = store

    def lineReceived(self, line: bytes) -> None:
        words = line.decode().split()
        if words and words[0] == "fail":
            code = int(words[2])
            self.disk.fail(words[1], OSError(code, os.strerror(code)), int(words[3]) if len(words) > 3 else 0)
            self.sendLine(b"ok")
        elif words == ["stats"]:
            with self.disk.lock:
                calls = dict(self.disk.calls)
            self.sendLine(json.dumps({"calls": calls, "spool": attrs.asdict(self.store.stats)}).encode())
        else:
            self.sendLine(b"error: unknown command")


def main(spool_dir: str) -> None:
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    config = parse_config(relay_config_dict(listen=["tcp:0:interface=127.0.0.1"]))
    disk = LockedFaultyDisk()
    store = SpoolStore.open(spool_dir, reactor=reactor, disk=disk)  # type: ignore[arg-type]
    backend = Backend(config.backends["gw"], reactor, random.Random(1))
    frontend = RelayFrontend(config.frontends["relay"], backend, reactor, sink=store)
    port = reactor.listenTCP(0, frontend, interface="127.0.0.1")  # type: ignore[attr-defined]
    stdio.StandardIO(Control(disk, store))
    print(f"ready {port.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv[1])
