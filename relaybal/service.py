"""The running daemon: backends and frontends built from a configuration."""

from __future__ import annotations

import random
import sys
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaybal.admin.commands import RuntimeCommands
from relaybal.admin.runtime import AdminSocketError, RuntimeFactory, listen_admin_socket
from relaybal.admin.stats import ProcessView
from relaybal.balance.backend import Backend
from relaybal.config import Config
from relaybal.health.checks import HealthMonitor
from relaybal.relay.frontend import RelayFrontend, RelaySetupError, build_relay_frontend
from relaybal.splice.frontend import SpliceFrontend

log = Logger(namespace="relaybal")


class ListenError(Exception):
    """A configured endpoint could not be listened on."""


class RelaybalService(MultiService):
    """Owns the backends and frontends of one configuration and their listeners."""

    def __init__(self, config: Config, reactor: Any, rng: random.Random | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.config = config
        self.reactor = reactor
        rng = rng if rng is not None else random.Random()
        self.backends = {name: Backend(bc, reactor, rng) for name, bc in config.backends.items()}
        self.frontends: dict[str, SpliceFrontend | RelayFrontend] = {}
        for name, fc in config.frontends.items():
            if fc.mode == "splice":
                self.frontends[name] = SpliceFrontend(
                    fc, self.backends[fc.backend], reactor, config.global_.hostname
                )
            else:
                try:
                    self.frontends[name] = build_relay_frontend(fc, self.backends[fc.backend], reactor)
                except RelaySetupError as e:
                    print(f"relaybal: {e}", file=sys.stderr)
                    raise SystemExit(1) from None
                log.warn(
                    "frontend {name}: relay mode has no spool or delivery yet: accepted messages "
                    "are counted and discarded, not delivered{policies}",
                    name=name,
                    policies="; policies are not applied yet (only loopback clients may relay)"
                    if fc.policies
                    else "",
                )
        self.ports: list[IListeningPort] = []
        self._listening = False
        # Health checks and the runtime API (the view reads self.frontends at each command).
        self.health = HealthMonitor(self.backends.values(), reactor)
        self.runtime = ProcessView(
            self.backends, self.frontends, reactor, hostname=config.global_.hostname
        )

    def privilegedStartService(self) -> None:
        # Listening happens here, before twistd drops privileges (port 25 needs root).
        self._open_listeners()
        super().privilegedStartService()  # type: ignore[no-untyped-call]

    def _open_listeners(self) -> None:
        """Open every listener, or report all that failed and exit with status 1."""
        if self._listening:
            return
        self._listening = True
        problems: list[str] = []
        for name, frontend in self.frontends.items():
            for ep in frontend.config.listen:
                try:
                    port = self._listen(ep, frontend)
                except ListenError as e:
                    problems.append(f"frontend.{name}.listen: cannot listen on {ep!r}: {e}")
                    continue
                frontend.ports.append(port)
                self.ports.append(port)
        if self.config.admin.socket:
            factory = RuntimeFactory(RuntimeCommands(self.runtime), self.reactor)
            try:
                self.ports.append(listen_admin_socket(self.reactor, self.config.admin.socket, factory))
            except AdminSocketError as e:
                problems.append(f"admin.socket: {e}")
        if problems:
            for p in problems:
                print(f"relaybal: {p}", file=sys.stderr)
            for port in self.ports:
                port.stopListening()
            raise SystemExit(1)

    def _listen(self, ep: str, factory: Any) -> IListeningPort:
        try:
            d: Deferred[IListeningPort] = endpoints.serverFromString(self.reactor, ep).listen(factory)
        except Exception as e:  # e.g. a systemd index that was not handed over
            raise ListenError(f"{type(e).__name__}: {e}") from None
        result: list[IListeningPort | Failure] = []
        d.addBoth(result.append)
        if not result:  # every endpoint relaybal supports listens synchronously
            raise ListenError("listening did not complete")
        if isinstance(result[0], Failure):
            raise ListenError(result[0].getErrorMessage())
        return result[0]

    def startService(self) -> None:
        self._open_listeners()  # `twist` never calls privilegedStartService
        super().startService()  # type: ignore[no-untyped-call]
        self.health.start()
        for name, frontend in self.frontends.items():
            log.info(
                "frontend {name} ({mode}) listening on {where} → backend {backend}",
                name=name,
                mode=frontend.config.mode,
                where=", ".join(frontend.config.listen),
                backend=frontend.backend.name,
            )
        # "after startup": signal handlers are installed by then, so "ready" means ready.
        self.reactor.addSystemEventTrigger("after", "startup", self._ready)

    def _ready(self) -> None:
        log.info(
            "relaybal ready: {frontends} frontends, {backends} backends",
            frontends=len(self.frontends),
            backends=len(self.backends),
        )

    def stopService(self) -> Deferred[None] | None:
        self.health.stop()
        closing = [port.stopListening() for port in self.ports]
        self.ports.clear()
        stopped = super().stopService()  # type: ignore[no-untyped-call]
        # Wait for the listeners to close: a UNIX socket's file is removed only then.
        waits = [d for d in (*closing, stopped) if isinstance(d, Deferred)]
        return gatherResults(waits).addCallback(lambda _: None)
