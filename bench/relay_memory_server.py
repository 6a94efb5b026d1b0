"""relaybal's relay frontend with the in-memory sink, for bench/relay_receive.py.

Measures the receiving side alone (parsing, policy, DATA scanning,
``Received:``, queue IDs, the per-message log line) without the spool: the
same frontend the daemon runs, built from the same configuration file, but
handing messages to :class:`relaybal.relay.memory.MemoryMessageSink`, which
counts them and keeps nothing. Never use this to receive real mail.

Usage: ``python bench/relay_memory_server.py CONFIG.toml LOGFILE``
"""

from __future__ import annotations

import random
import sys

from relaybal import reactor as lean_reactor


def main(config_path: str, logfile: str) -> None:
    reactor = lean_reactor.install()
    from twisted.internet import endpoints
    from twisted.logger import globalLogBeginner

    from relaybal.balance.backend import Backend
    from relaybal.config import load_config
    from relaybal.logobservers import FastTextObserver
    from relaybal.relay.frontend import build_relay_frontend

    config = load_config(config_path)
    globalLogBeginner.beginLoggingTo(
        [FastTextObserver(open(logfile, "a", encoding="utf-8"))],  # noqa: SIM115 - for the process
        redirectStandardIO=False,
    )
    [fc] = [fc for fc in config.frontends.values() if fc.mode == "relay"]
    backend = Backend(config.backends[fc.backend], reactor, random.Random())
    frontend = build_relay_frontend(fc, backend, reactor)  # no sink given: the in-memory one
    for ep in fc.listen:
        endpoints.serverFromString(reactor, ep).listen(frontend)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
