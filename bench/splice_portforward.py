"""A naive Twisted splice: ``twisted.protocols.portforward`` with round robin.

A reference point for ``bench/splice_floor.py``: what plain Twisted
protocols cost per connection, with nothing of relaybal's added.

Usage: ``python bench/splice_portforward.py LISTEN_PORT SERVER_PORT...``
"""

from __future__ import annotations

import itertools
import sys

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import reactor  # noqa: E402
from twisted.protocols import portforward  # noqa: E402

servers = itertools.cycle(int(port) for port in sys.argv[2:])


class RoundRobinServer(portforward.ProxyServer):
    def connectionMade(self) -> None:
        self.factory.port = next(servers)
        super().connectionMade()


factory = portforward.ProxyFactory("127.0.0.1", 0)
factory.protocol = RoundRobinServer
reactor.listenTCP(int(sys.argv[1]), factory, backlog=4096, interface="127.0.0.1")  # type: ignore[attr-defined]
reactor.run()  # type: ignore[attr-defined]
