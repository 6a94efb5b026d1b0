"""The running daemon: backends and frontends built from a configuration."""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from relaybal.admin.commands import RuntimeCommands
from relaybal.admin.history import TrafficHistory
from relaybal.admin.metrics import MetricsResource, make_registry
from relaybal.admin.runtime import AdminSocketError, RuntimeFactory, listen_admin_socket
from relaybal.admin.stats import ProcessView, RelayState
from relaybal.admin.web import AdminSite, admin_resource, with_basic_auth
from relaybal.balance.backend import Backend
from relaybal.config import AdminConfig, Config, FrontendConfig
from relaybal.delivery.cutthrough import CutThroughSink
from relaybal.delivery.pool import Gateways
from relaybal.delivery.scheduler import Scheduler
from relaybal.drain import Drainer, open_sessions
from relaybal.health.checks import HealthMonitor
from relaybal.relay.frontend import RelayFrontend, RelaySetupError, build_relay_frontend
from relaybal.relay.interfaces import IMessageSink
from relaybal.shared.buckets import SharedBucketStore
from relaybal.shared.metrics import SharedStateCollector
from relaybal.shared.state import SharedState, SharedStateError
from relaybal.smtp.auth import UsersFile, UsersFileError
from relaybal.splice import lean
from relaybal.splice.frontend import SpliceFrontend
from relaybal.spool.sinks import SpoolSink
from relaybal.spool.store import SpoolLocked, SpoolStore
from relaybal.workers import Inherited, WorkerPool, WorkerSetup, command_line

log = Logger(namespace="relaybal")


class ListenError(Exception):
    """A configured endpoint could not be listened on."""


class AdminSetupError(Exception):
    """The stats page cannot be set up (an unreadable users file)."""


class RelaybalService(MultiService):
    """Owns the backends and frontends of one configuration and their listeners.

    With ``handle_signals`` (the daemon), once the reactor runs, ``SIGHUP``
    reloads the configuration (:meth:`reload`) and ``SIGTERM`` drains
    (:meth:`terminate`): listeners close, open sessions finish (up to
    ``global.drain_timeout``), and the process exits with status 0.
    """

    def __init__(
        self,
        config: Config,
        reactor: Any,
        rng: random.Random | None = None,
        *,
        handle_signals: bool = True,
        worker: WorkerSetup | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.config = config
        # [global] workers: in the main process, the worker processes (started in startService);
        # in a worker, what it was handed (it serves only those sockets).
        self.worker = worker
        self.workers: WorkerPool | None = None
        self.reactor = reactor
        self.rng = rng if rng is not None else random.Random()
        self.handle_signals = handle_signals
        self.backends = {name: Backend(bc, reactor, self.rng) for name, bc in config.backends.items()}
        # [global] shared_state: stick tables and rate limits shared through Redis (None: all local).
        self.shared: SharedState | None = None
        # ratelimit policies built while shared_state is set keep their buckets in Redis.
        self.bucket_store = SharedBucketStore(lambda: self.shared)
        try:
            self.apply_shared_state()
        except SharedStateError as e:
            print(f"relaybal: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        self.frontends: dict[str, SpliceFrontend | RelayFrontend] = {}
        # Relay frontends with delivery = "spool" share one spool, opened in startService.
        self.spool: SpoolStore | None = None
        self.spool_sink = SpoolSink()
        self.scheduler: Scheduler | None = None
        # Connection pools to the relay gateways, shared by the scheduler and cut-through delivery.
        self.gateways = Gateways(reactor, hostname=config.global_.hostname, backends=lambda: self.backends)
        for name, fc in config.frontends.items():
            try:
                self.frontends[name] = self.make_frontend(
                    fc, self.backends[fc.backend], config.global_.hostname
                )
            except RelaySetupError as e:
                print(f"relaybal: {e}", file=sys.stderr)
                raise SystemExit(1) from None
        self.ports: list[IListeningPort] = []
        self.admin_ports: dict[str, IListeningPort] = {}
        """The runtime API socket (``socket``) and the stats page (``http``) listeners."""
        self._listening = False
        # Health checks (one monitor per backend, so a reload restarts only the changed ones)
        # and the runtime API (the view reads self.frontends at each command).
        self.health = {name: HealthMonitor([b], reactor) for name, b in self.backends.items()}
        self.runtime = ProcessView(
            self.backends, self.frontends, reactor, hostname=config.global_.hostname,
            relay=lambda: RelayState(self.gateways, self.scheduler, self.spool),
            policy_verdicts=self.policy_verdicts,
        )  # fmt: skip
        self.runtime.shared_state = lambda: self.shared.describe() if self.shared is not None else None
        # The stats page: traffic history, Prometheus registry (other parts may register
        # collectors of their own in self.metrics), and the site itself.
        self.history = TrafficHistory(self.backends, reactor)
        self.metrics = make_registry(self.runtime)
        self.metrics.register(SharedStateCollector(lambda: self.shared))
        self.admin_auth_pool = ThreadPool(minthreads=0, maxthreads=1, name="relaybal-admin-auth")
        try:
            self.web: AdminSite | None = self.make_admin_site(config.admin)
        except AdminSetupError as e:
            print(f"relaybal: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        # Draining (SIGTERM): things to wait for besides open sessions (the relay spool
        # adds its flush here).
        self.drain_waits: list[Callable[[], Deferred[None] | None]] = []
        self.drainer: Drainer | None = None
        self._drained: Deferred[bool] | None = None

    def make_frontend(
        self, fc: FrontendConfig, backend: Backend, hostname: str, policies: Any = None
    ) -> SpliceFrontend | RelayFrontend:
        """The frontend object for ``fc`` (at start-up and when a reload changes it).

        ``policies`` are the ``[policy.NAME]`` tables its ``policies`` name (default:
        the running configuration's). Raises :class:`RelaySetupError` when a relay
        frontend's certificate, users file or policy chain cannot be loaded.
        """
        if fc.mode == "splice":
            return SpliceFrontend(fc, backend, self.reactor, hostname)
        sink: IMessageSink = (
            self.spool_sink
            if fc.delivery == "spool"
            else CutThroughSink(self.gateways, self.relay_backend, self.reactor.seconds, hostname)
        )
        frontend = build_relay_frontend(
            fc, backend, self.reactor, sink=sink, state_dir=self.config.global_.state_dir,
            policies=self.config.policies if policies is None else policies,
            bucket_store=self.bucket_store if self.shared is not None else None,
        )  # fmt: skip
        if fc.delivery == "spool" and self.running:  # a reload added the first spooling frontend
            self.open_spool()
        log.warn(
            "frontend {name}: {delivery}{policies}",
            name=fc.name,
            delivery="accepted messages are stored durably in the spool, then delivered to "
            f"backend {fc.backend}"
            if fc.delivery == "spool"
            else f"cut-through: each message is answered with the reply of a gateway of backend {fc.backend}",
            policies=f"; relay policies: {', '.join(fc.policies)}"
            if fc.policies
            else "; no policies: only loopback clients may relay",
        )
        return frontend

    def open_spool(self) -> None:
        """Open ``state_dir/spool`` (recovering what a previous run left), or exit with status 1."""
        if self.spool is not None or self.worker is not None:
            return  # the spool has one writer: the main process
        path = os.path.join(self.config.global_.state_dir, "spool")
        try:
            self.spool = SpoolStore.open(path, reactor=self.reactor)
        except SpoolLocked:
            print(f"relaybal: global.state_dir: {path} is in use by another relaybal", file=sys.stderr)
            raise SystemExit(1) from None
        except OSError as e:
            print(f"relaybal: global.state_dir: cannot open the spool {path}: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        self.spool_sink.store = self.spool
        log.info(
            "spool {path}: {count} messages queued",
            path=path,
            count=len(self.spool.messages()),
        )
        self.scheduler = Scheduler(
            self.spool,
            self.reactor,
            hostname=self.config.global_.hostname,
            backend_for=self.relay_backend,
            backends=lambda: self.backends,
            gateways=self.gateways,
        )
        self.runtime.follow(self.scheduler)  # the stats' delivery latency and totals
        if self.running:
            self.scheduler.start()

    def apply_shared_state(self) -> None:
        """Follow ``[global] shared_state`` of the running configuration (at start-up and after a reload).

        A changed table replaces the Redis link (the old one closes); every
        backend with a stick table shares it. Raises :class:`SharedStateError`
        when the password file cannot be read (a reload then logs it and
        keeps the link it had).
        """
        wanted = self.config.global_.shared_state
        current = self.shared
        error: SharedStateError | None = None
        if (current.config if current is not None else None) != wanted:
            try:
                fresh = SharedState(wanted, self.reactor) if wanted is not None else None
            except SharedStateError as e:
                error = e
            else:
                if current is not None:
                    log.info("shared state: no longer using Redis {redis}", redis=current.config.redis)
                    current.stop()
                self.shared = fresh
                if fresh is not None and self.running:
                    fresh.start()
        if self.shared is not None:
            self.shared.attach(self.backends)
        else:
            for backend in self.backends.values():
                backend.stick_share = None
        if error is not None:
            raise error

    def policy_verdicts(self) -> dict[tuple[str, str], int]:
        """The relay policies' decisions so far, by (policy, verdict), over every relay frontend.

        Counts start again when a reload rebuilds a frontend (a changed policy table).
        """
        total: Counter[tuple[str, str]] = Counter()
        for frontend in self.frontends.values():
            verdicts = getattr(getattr(frontend, "policy", None), "verdicts", None)
            if isinstance(verdicts, Counter):
                total.update(verdicts)
        return dict(total)

    def relay_backend(self, frontend: str) -> Backend | None:
        """The backend that messages received by relay frontend ``frontend`` go to (None if it is gone)."""
        found = self.frontends.get(frontend)
        return found.backend if isinstance(found, RelayFrontend) else None

    def make_admin_site(self, admin: AdminConfig) -> AdminSite | None:
        """The stats page's site for ``admin`` (None without ``http``); reads the users file.

        Raises :class:`AdminSetupError` when the users file cannot be read.
        """
        if admin.http is None:
            return None
        resource: Any = admin_resource(self.runtime, self.history, MetricsResource(self.metrics))
        if admin.http_users is not None:
            try:
                users = UsersFile(admin.http_users)
            except UsersFileError as e:
                raise AdminSetupError(f"admin.http_users: {e}") from None
            pool = self.admin_auth_pool

            def run(check: Callable[[], bool]) -> Deferred[bool]:
                return deferToThreadPool(self.reactor, pool, check)

            resource = with_basic_auth(resource, users, run)
        site = AdminSite(resource, timeout=60)  # type: ignore[no-untyped-call]
        return site

    def runtime_factory(self) -> RuntimeFactory:
        """A factory for the runtime API socket (its ``reload`` command reloads this service)."""
        commands = RuntimeCommands(
            self.runtime, reload=self._reload_for_cli, queue=lambda: self.scheduler, on_change=self._changed
        )
        return RuntimeFactory(commands, self.reactor)

    def privilegedStartService(self) -> None:
        # Listening happens here, before twistd drops privileges (port 25 needs root).
        self._open_listeners()
        super().privilegedStartService()  # type: ignore[no-untyped-call]

    def _open_listeners(self) -> None:
        """Open every listener, or report all that failed and exit with status 1."""
        if self._listening:
            return
        self._listening = True
        if self.worker is not None:
            self._adopt_listeners(self.worker)
            return
        problems: list[str] = []
        for name, frontend in self.frontends.items():
            for ep in frontend.config.listen:
                try:
                    port = self.listen(ep, frontend)
                except ListenError as e:
                    problems.append(f"frontend.{name}.listen: cannot listen on {ep!r}: {e}")
                    continue
                frontend.ports.append(port)
                self.ports.append(port)
        if self.config.admin.socket:
            try:
                port = listen_admin_socket(self.reactor, self.config.admin.socket, self.runtime_factory())
            except AdminSocketError as e:
                problems.append(f"admin.socket: {e}")
            else:
                self.admin_ports["socket"] = port
                self.ports.append(port)
        if self.web is not None and self.config.admin.http:
            try:
                port = self.listen(self.config.admin.http, self.web)
            except ListenError as e:
                problems.append(f"admin.http: cannot listen on {self.config.admin.http!r}: {e}")
            else:
                self.admin_ports["http"] = port
                self.ports.append(port)
        if problems:
            for p in problems:
                print(f"relaybal: {p}", file=sys.stderr)
            for port in self.ports:
                port.stopListening()
            raise SystemExit(1)

    def _adopt_listeners(self, worker: WorkerSetup) -> None:
        """In a worker: serve the listening sockets the main process handed over, nothing else."""
        for name, frontend in self.frontends.items():
            for index in range(len(frontend.config.listen)):
                item = worker.socket_for(name, index)
                if item is None:
                    continue
                port = self.reactor.adoptStreamPort(item.fd, item.family, frontend)
                lean.use_for_accepted(port, self.reactor)
                frontend.ports.append(port)
                self.ports.append(port)

    def start_workers(self) -> None:
        """In the main process with ``workers > 1``: hand the splice listeners to new worker processes."""
        count = self.config.global_.workers - 1
        if self.worker is not None or count < 1 or self.workers is not None:
            return
        inherited: list[Inherited] = []
        for name, frontend in self.frontends.items():
            if frontend.config.mode != "splice":
                continue
            for index, port in enumerate(frontend.ports):
                sock = getattr(port, "socket", None)
                if sock is not None:
                    inherited.append(Inherited(name, index, sock.fileno(), sock.family))
        self.workers = WorkerPool(self.reactor, os.path.abspath(self.config.source), count, inherited)
        self.workers.start()
        self.drain_waits.append(self._stop_workers)

    def _stop_workers(self) -> Deferred[None] | None:
        return self.workers.stop() if self.workers is not None else None

    def listen(self, ep: str, factory: Any) -> IListeningPort:
        """Listen on endpoint ``ep`` now; :class:`ListenError` says why not."""
        if self.worker is not None:
            return _NotHere()  # a listener added by a reload is the main process's
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
        lean.use_for_accepted(result[0], self.reactor)
        return result[0]

    def startService(self) -> None:
        self._open_listeners()  # `twist` never calls privilegedStartService
        if any(fc.mode == "relay" and fc.delivery == "spool" for fc in self.config.frontends.values()):
            self.open_spool()
        super().startService()  # type: ignore[no-untyped-call]
        self.start_workers()
        if self.shared is not None:
            self.shared.start()
        for monitor in self.health.values():
            monitor.start()
        if self.scheduler is not None:
            self.scheduler.start()
        self.history.start()
        if not self.admin_auth_pool.started:
            self.admin_auth_pool.start()
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
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            # Twisted installed its own handlers during start-up; these replace two of them.
            signal.signal(signal.SIGHUP, self._on_sighup)
            signal.signal(signal.SIGTERM, self._on_sigterm)
        if self.config.admin.http:
            log.info("stats page, /stats.json and /metrics on {where}", where=self.config.admin.http)
        log.info(
            "relaybal ready: {frontends} frontends, {backends} backends",
            frontends=len(self.frontends),
            backends=len(self.backends),
        )

    # -- reload (SIGHUP, runtime API ``reload``)

    def reload(self, path: str | None = None) -> list[str]:
        """Re-read the configuration (``path``, default the running one's file) and apply it.

        Returns lines describing what changed; raises
        :class:`~relaybal.reload.ReloadRefused` (with every problem) and
        leaves the running configuration untouched when the new one is
        invalid or cannot be applied. See :mod:`relaybal.reload`.
        """
        from relaybal.reload import reload_service

        return reload_service(self, path)

    def _reload_for_cli(self) -> tuple[bool, Sequence[str]]:
        from relaybal.reload import ReloadRefused

        try:
            lines = self.reload()
        except ReloadRefused as e:
            return False, e.lines
        if self.workers is not None:
            self.workers.signal(signal.SIGHUP)  # each worker re-reads the file itself
        return True, lines

    def _changed(self, words: Sequence[str]) -> None:
        """A runtime API command changed something: the workers run it too."""
        if self.workers is not None and words and words[0] != "reload":
            self.workers.broadcast(command_line(words))

    def _on_sighup(self, signum: int, frame: FrameType | None) -> None:
        self.reactor.callFromThread(self._reload_logged)

    def _reload_logged(self) -> None:
        log.info("SIGHUP: reloading {path}", path=self.config.source)
        self._reload_for_cli()  # reload_service logs the outcome either way

    # -- draining (SIGTERM)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.reactor.callFromThread(self.terminate)

    def terminate(self) -> None:
        """Drain, then stop the reactor (so twistd exits with status 0); a second call stops now."""
        if self.drainer is not None:
            log.warn(
                "SIGTERM again: stopping now with {count} sessions open",
                count=open_sessions(self.frontends),
            )
            self.drainer.cancel()
            return
        d = self.drain()
        d.addErrback(lambda f: log.failure("draining failed", f))
        d.addBoth(lambda _: self._stop_reactor())

    def _stop_reactor(self) -> None:
        if self.reactor.running:
            self.reactor.stop()

    def drain(self) -> Deferred[bool]:
        """Stop accepting and wait for open sessions to finish, up to ``global.drain_timeout``.

        Frontend listeners close (a frontend with a ``begin_drain()`` method
        is asked to drain itself instead, and keeps its listeners); the
        runtime API socket and the stats page stay open so the drain can be
        watched. Fires with True when everything finished in time.
        """
        if self._drained is not None:
            return _fork(self._drained)
        self.runtime.stopping = True
        if self.workers is not None:
            self.workers.stop()  # they drain alongside; drain_waits waits for them
        for frontend in self.frontends.values():
            begin_drain = getattr(frontend, "begin_drain", None)
            if callable(begin_drain):
                begin_drain()
                continue
            for port in frontend.ports:
                port.stopListening()
                if port in self.ports:
                    self.ports.remove(port)
            frontend.ports.clear()
        timeout = self.config.global_.drain_timeout
        log.info(
            "draining: listeners closed, {count} sessions open; exiting when they finish "
            "or in {timeout:g}s",
            count=open_sessions(self.frontends),
            timeout=timeout,
        )
        self.drainer = Drainer(self.frontends, self.reactor, timeout, self.drain_waits)

        def report(drained: bool) -> bool:
            if drained:
                log.info("drained: every session finished")
            else:
                log.warn(
                    "drain timeout: closing {count} sessions still open",
                    count=open_sessions(self.frontends),
                )
            return drained

        self._drained = self.drainer.start().addCallback(report)
        return _fork(self._drained)

    def stopService(self) -> Deferred[None] | None:
        workers = self.workers.stop() if self.workers is not None else None
        for monitor in self.health.values():
            monitor.stop()
        self.history.stop()
        if self.drainer is not None:
            self.drainer.cancel()
        if self.admin_auth_pool.started:
            self.admin_auth_pool.stop()
        closing = [port.stopListening() for port in self.ports]
        if self.shared is not None:
            self.shared.stop()  # not waited for: a Redis that is away must not hold up the exit
        self.ports.clear()
        stopped = super().stopService()  # type: ignore[no-untyped-call]
        # Wait for the listeners to close: a UNIX socket's file is removed only then.
        waits = [d for d in (*closing, stopped, workers) if isinstance(d, Deferred)]
        done: Deferred[Any] = gatherResults(waits)
        scheduler = self.scheduler
        if scheduler is not None:
            # Running deliveries finish (their outcomes are stored) before the spool closes.
            self.scheduler = None
            done.addCallback(lambda _: scheduler.stop())
        done.addCallback(lambda _: self.gateways.close())
        spool = self.spool
        if spool is not None:
            # Last: commits still in flight finish (or fail) before the spool closes.
            self.spool = None
            self.spool_sink.store = None
            done.addCallback(lambda _: spool.close())
        return done.addCallback(lambda _: None)


@implementer(IListeningPort)
class _NotHere:
    """A listener a worker does not serve (the main process does)."""

    def startListening(self) -> None:
        pass

    def stopListening(self) -> Deferred[None]:
        return succeed(None)

    def getHost(self) -> Any:
        return None


def _fork(d: Deferred[bool]) -> Deferred[bool]:
    """A new Deferred with ``d``'s result, leaving ``d``'s own chain as it was."""
    forked: Deferred[bool] = Deferred()

    def pass_on(result: bool) -> bool:
        forked.callback(result)
        return result

    d.addCallback(pass_on)
    return forked
