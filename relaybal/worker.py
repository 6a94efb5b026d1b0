"""``python -m relaybal.worker``: one worker process of ``[global] workers`` (see :mod:`relaybal.workers`).

Started by the main process, never by hand: it adopts the listening sockets
it is given (``--socket INDEX:FD:FAMILY:FRONTEND``), runs the frontends and
backends of ``--config`` for them, runs the runtime API commands the main
process writes on its standard input, reloads on ``SIGHUP``, drains and exits
on ``SIGTERM``, and drains and exits when its standard input closes (the main
process is gone).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import cast

from twisted.internet import stdio
from twisted.logger import ILogObserver, LogEvent, Logger, globalLogBeginner
from twisted.protocols.basic import LineOnlyReceiver

log = Logger()


class _Commands(LineOnlyReceiver):
    delimiter = b"\n"

    def __init__(self, service: object) -> None:
        from relaybal.admin.commands import CliSession, RuntimeCommands

        self.service = service
        self.commands = RuntimeCommands(service.runtime, reload=service._reload_for_cli)  # type: ignore[attr-defined]
        self.session = CliSession()

    def lineReceived(self, line: bytes) -> None:
        self.commands.execute_line(line.decode("utf-8", "replace"), self.session)

    def connectionLost(self, reason: object = None) -> None:
        # The main process is gone: drain and exit (unless already stopping).
        terminate = getattr(self.service, "terminate", None)
        if callable(terminate) and getattr(self.service, "drainer", None) is None:
            terminate()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relaybal-worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--socket", action="append", default=[])
    args = parser.parse_args(argv)

    from relaybal import reactor as lean

    lean.install()
    from twisted.internet import reactor

    from relaybal.config import load_or_report
    from relaybal.logobservers import text_log_observer
    from relaybal.service import RelaybalService
    from relaybal.workers import Inherited, WorkerSetup

    config = load_or_report(args.config)
    if isinstance(config, int):
        return config
    observer = text_log_observer()
    tag = f"/w{args.index}"

    def tagged(event: LogEvent) -> None:
        # The worker's number after the system: [relaybal.splice#info/w1].
        level = event.get("log_level")
        namespace = event.get("log_namespace", "-")
        system = event.get("log_system") or f"{namespace}#{level.name if level else '-'}"
        observer({**event, "log_system": system + tag})

    globalLogBeginner.beginLoggingTo([cast(ILogObserver, tagged)], redirectStandardIO=False)
    setup = WorkerSetup(args.index, tuple(Inherited.decode(s) for s in args.socket))
    service = RelaybalService(config, reactor, worker=setup)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    stdio.StandardIO(_Commands(service))
    log.info("worker {index}: serving {count} sockets", index=args.index, count=len(setup.inherited))
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
