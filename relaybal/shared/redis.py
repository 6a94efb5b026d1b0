"""The connection to Redis, and what happens when Redis is down or slow.

:class:`RedisLink` is the only way relaybal talks to Redis. Every call is a
*decision* that has a node-local answer too, so a call never fails and never
waits longer than ``timeout``: it fires with the reply, or with
:data:`FALLBACK`, and the caller then decides with its local state.

States of the link:

``connecting``
    at start-up, until the first reply; calls are sent (with the timeout).
``up``
    calls are sent; the first timeout or connection error starts an outage.
``down`` (an outage)
    calls are not sent at all: they fire with :data:`FALLBACK` at once, so
    mail never waits for a Redis that is known to be away. A ``PING`` probe
    runs every ``probe_interval`` seconds (one at a time); the first reply
    ends the outage, and the ``on_recovered`` callbacks reconcile what was
    decided locally meanwhile.

An outage is logged once when it starts (warning) and once when it ends
(info), never per decision; the counters of :class:`LinkStats` and
:meth:`RedisLink.status` feed the stats page and ``/metrics``.

The client underneath is an :class:`IRedisClient`: :class:`TxRedisClient`
(``txredisapi``, which reconnects by itself with a capped back-off) in the
daemon, a fake in unit tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import ILogObserver, Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from relaybal.config import SharedStateConfig

log = Logger(namespace="relaybal.shared")

CONNECTING: Final = "connecting"
UP: Final = "up"
DOWN: Final = "down"

Arg = str | bytes | int | float


class _Fallback:
    """The answer of a call that Redis did not answer in time (or at all)."""

    _instance: _Fallback | None = None

    def __new__(cls) -> _Fallback:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "FALLBACK"

    def __bool__(self) -> bool:
        return False


FALLBACK: Final = _Fallback()
"""What a :class:`RedisLink` call fires with when the caller must decide locally."""


class RedisReplyError(Exception):
    """Redis answered with an error reply (a script or command problem, not an outage)."""


class IRedisClient(Interface):
    """A Redis connection that reconnects by itself."""

    def execute(*args: Arg) -> Deferred[Any]:
        """Send one command; fire with its reply, or fail (connection lost, error reply)."""

    def eval(script: LuaScript, keys: Sequence[Arg], args: Sequence[Arg]) -> Deferred[Any]:
        """Run ``script`` (``EVALSHA``, loading it with ``EVAL`` when Redis does not know it)."""

    def close() -> Deferred[None]:
        """Stop reconnecting and close the connection."""


@attrs.frozen
class LuaScript:
    """A Lua script run atomically by Redis; ``sha1`` is the name ``EVALSHA`` knows it by."""

    source: str
    sha1: str = attrs.field(init=False)

    @sha1.default
    def _sha1(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()


def parse_redis_address(text: str) -> tuple[str, str, int]:
    """``("tcp", host, port)`` or ``("unix", path, 0)`` from a ``shared_state.redis`` value."""
    kind, _, rest = text.partition(":")
    if kind == "unix":
        return "unix", rest, 0
    host, _, port = rest.rpartition(":")
    return "tcp", host.strip("[]"), int(port)


@implementer(IRedisClient)
class TxRedisClient:
    """A ``txredisapi`` lazy connection (one socket) to the server of ``config``.

    ``txredisapi`` queues commands while it (re)connects and reconnects by
    itself with an exponential back-off, capped here at ``max_delay`` seconds
    so that the end of an outage is noticed soon. ``reply_timeout`` makes it
    drop a connection whose server stopped answering (a hung Redis), which
    fails the commands waiting on it and starts a reconnection.
    """

    def __init__(
        self,
        reactor: Any,
        config: SharedStateConfig,
        *,
        password: str | None = None,
        reply_timeout: float = 5.0,
        max_delay: float = 2.0,
    ) -> None:
        import txredisapi  # type: ignore[import-untyped]
        from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint

        kind, host, port = parse_redis_address(config.redis)
        endpoint: Any = (
            UNIXClientEndpoint(reactor, host, timeout=5)
            if kind == "unix"
            else HostnameEndpoint(reactor, host, port, timeout=5)
        )
        factory = txredisapi.RedisFactory(
            config.redis,
            config.db or None,
            1,
            isLazy=True,
            handler=txredisapi.ConnectionHandler,
            charset="utf-8",
            password=password,
            replyTimeout=reply_timeout,
            convertNumbers=False,
            username=config.username,
        )
        factory.initialDelay = min(0.5, max_delay)
        factory.maxDelay = max_delay
        _start_quietly(txredisapi, factory, endpoint)
        self._factory = factory
        self._handler = factory.handler

    def execute(self, *args: Arg) -> Deferred[Any]:
        return maybeDeferred(self._handler.execute_command, *args)

    def eval(self, script: LuaScript, keys: Sequence[Arg], args: Sequence[Arg]) -> Deferred[Any]:
        # txredisapi's eval tries EVALSHA first once the script is known on this connection.
        return maybeDeferred(self._handler.eval, script.source, list(keys), list(args))

    def close(self) -> Deferred[None]:
        d: Deferred[Any] = maybeDeferred(self._factory.disconnect)
        return d.addBoth(lambda _: None)


@implementer(ILogObserver)
class _Drop:
    """A log observer that keeps nothing."""

    def __call__(self, event: Any) -> None:
        pass


def _start_quietly(txredisapi: Any, factory: Any, endpoint: Any) -> None:
    """``factory.startConnecting(endpoint)``, without a log line per reconnection attempt.

    txredisapi reconnects through Twisted's ``ClientService``, which logs
    "Scheduling retry N to connect" at every attempt: during an outage that
    would be a line every ``max_delay`` seconds, while relaybal logs an
    outage once. Same slot, same service, only its logger is silent. Should
    txredisapi's internals change, the connection is started the public way.
    """
    from twisted.application.internet import ClientService

    slot_class = getattr(txredisapi, "_PoolSlot", None)
    slot_factory = getattr(txredisapi, "_SlotFactory", None)
    if slot_class is None or slot_factory is None or not hasattr(factory, "slots"):
        factory.startConnecting(endpoint)
        return

    class QuietClientService(ClientService):
        _log = Logger(observer=_Drop())

    try:
        slot = slot_class(factory, endpoint, factory.reconnect)
        slot.service = QuietClientService(
            endpoint,
            slot_factory(factory, slot),
            retryPolicy=slot._retryDelay,
            prepareConnection=slot._prepareConnection,
        )
    except (AttributeError, TypeError):
        factory.startConnecting(endpoint)
        return
    factory.slots.append(slot)
    slot.start()


@attrs.define
class LinkStats:
    """Counters since the process started (they survive a reconnection)."""

    calls: int = 0
    """Decisions that asked Redis (or would have, during an outage)."""
    answered: int = 0
    fallbacks: int = 0
    """Decisions made with node-local state: outage, timeout, error."""
    timeouts: int = 0
    errors: int = 0
    outages: int = 0
    outage_seconds: float = 0.0
    """Length of the finished outages."""
    reconciled: int = 0
    """Local entries written to Redis after outages."""


@attrs.frozen
class LinkStatus:
    """The link at one moment, for the stats page, ``stats.json`` and ``/metrics``."""

    redis: str
    state: str
    since: float
    """When the current state began (reactor time)."""
    timeout: float
    calls: int
    answered: int
    fallbacks: int
    timeouts: int
    errors: int
    outages: int
    outage_seconds: float
    """Total time in outages, the current one included."""
    reconciled: int
    last_error: str

    @property
    def ok(self) -> bool:
        return self.state != DOWN

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


class RedisLink:
    """Calls to Redis bounded by ``timeout``, with a node-local fallback and outage tracking."""

    def __init__(
        self,
        client: IRedisClient,
        clock: IReactorTime,
        *,
        timeout: float,
        where: str,
        probe_interval: float = 1.0,
        start_grace: float = 2.0,
    ) -> None:
        self.client = client
        self.clock = clock
        self.timeout = timeout
        self.where = where
        self.probe_interval = probe_interval
        self.start_grace = start_grace
        self.state: str = CONNECTING
        self.since = clock.seconds()
        self.stats = LinkStats()
        self.last_error = ""
        self.on_recovered: list[Callable[[], Deferred[int] | int | None]] = []
        """Called when an outage ends; each may return (a Deferred of) how many entries it reconciled."""
        self._probe: IDelayedCall | None = None
        self._probing = False
        self._fallbacks_at_start = 0
        self._reported_errors: set[str] = set()
        self._stopped = False
        self._first: IDelayedCall | None = None

    # -- life cycle

    def start(self) -> None:
        """Send a first ``PING``; no answer within ``start_grace`` seconds starts an outage."""
        self._first = self.clock.callLater(self.start_grace, self._no_first_answer)
        self.client.execute("PING").addCallbacks(self._first_answer, self._first_failed)

    def _first_answer(self, reply: object) -> None:
        if self._first is not None and self._first.active():
            self._first.cancel()
        self._first = None
        if self.state == CONNECTING:
            self._set_state(UP)
            log.info("shared state: using Redis {redis}", redis=self.where, shared_state="up")

    def _first_failed(self, failure: Failure) -> None:
        if self._first is not None and self._first.active():
            self._first.cancel()
        self._first = None
        if self.state == CONNECTING:
            self._outage(_describe(failure))

    def _no_first_answer(self) -> None:
        self._first = None
        if self.state == CONNECTING:
            self._outage(f"no answer to PING within {self.start_grace:g}s")

    def stop(self) -> Deferred[None]:
        """Stop probing and close the connection."""
        self._stopped = True
        for call in (self._probe, self._first):
            if call is not None and call.active():
                call.cancel()
        self._probe = self._first = None
        return self.client.close()

    # -- calls

    def call(self, *args: Arg) -> Deferred[Any]:
        """Send one command; fire with its reply, or with :data:`FALLBACK` (never fails)."""
        return self._guarded(lambda: self.client.execute(*args), str(args[0]) if args else "")

    def eval(self, script: LuaScript, keys: Sequence[Arg], args: Sequence[Arg]) -> Deferred[Any]:
        """Run a Lua script; fire with its result, or with :data:`FALLBACK` (never fails)."""
        return self._guarded(lambda: self.client.eval(script, keys, args), "EVAL")

    @property
    def down(self) -> bool:
        return self.state == DOWN

    def _guarded(self, send: Callable[[], Deferred[Any]], what: str) -> Deferred[Any]:
        stats = self.stats
        stats.calls += 1
        if self.state == DOWN or self._stopped:
            stats.fallbacks += 1
            return succeed(FALLBACK)
        result: Deferred[Any] = Deferred()
        sent: list[Deferred[Any]] = []

        def timed_out() -> None:
            stats.timeouts += 1
            stats.fallbacks += 1
            result.callback(FALLBACK)
            self._outage(f"no reply within {self.timeout * 1000:g} ms")
            # The decision was made locally: a command still waiting for a connection must not
            # run when Redis comes back (a rate-limit token would be taken twice). One already
            # sent cannot be called back; its late reply is ignored.
            for d in sent:
                d.cancel()

        timer = self.clock.callLater(self.timeout, timed_out)

        def answered(reply: object) -> None:
            if result.called:
                return  # too late: the decision was made locally
            timer.cancel()
            stats.answered += 1
            if self.state == CONNECTING:
                self._first_answer(reply)
            result.callback(reply)

        def failed(failure: Failure) -> None:
            if result.called:
                return
            timer.cancel()
            stats.errors += 1
            stats.fallbacks += 1
            result.callback(FALLBACK)
            if _is_reply_error(failure):
                self._reply_error(what, failure)
            else:
                self._outage(_describe(failure))

        try:
            command = send()
        except Exception:
            failed(Failure())
            return result
        sent.append(command)
        command.addCallbacks(answered, failed)
        return result

    def _reply_error(self, what: str, failure: Failure) -> None:
        """Redis refused a command: a problem of ours or of its configuration, logged once per text."""
        text = failure.getErrorMessage()
        self.last_error = f"{what}: {text}"
        if text not in self._reported_errors and len(self._reported_errors) < 100:
            self._reported_errors.add(text)
            log.error(
                "shared state: Redis {redis} refused {what}: {error}; this decision was made locally",
                redis=self.where,
                what=what,
                error=text,
            )

    # -- outages

    def _set_state(self, state: str) -> None:
        self.state = state
        self.since = self.clock.seconds()

    def _outage(self, reason: str) -> None:
        self.last_error = reason
        if self.state == DOWN or self._stopped:
            return
        self._set_state(DOWN)
        self.stats.outages += 1
        self._fallbacks_at_start = self.stats.fallbacks - 1
        log.warn(
            "shared state: Redis {redis} unreachable ({reason}); decisions use node-local state "
            "until it is back",
            redis=self.where,
            reason=reason,
            shared_state="down",
        )
        self._schedule_probe()

    def _schedule_probe(self) -> None:
        if self._stopped or (self._probe is not None and self._probe.active()):
            return
        self._probe = self.clock.callLater(self.probe_interval, self._send_probe)

    def _send_probe(self) -> None:
        self._probe = None
        if self._stopped or self.state != DOWN:
            return
        if self._probing:
            # The previous PING is still queued (the client is reconnecting): keep just one.
            self._schedule_probe()
            return
        self._probing = True

        def answered(reply: object) -> None:
            self._probing = False
            if self.state == DOWN and not self._stopped:
                self._recovered()

        def failed(failure: Failure) -> None:
            self._probing = False
            self.last_error = _describe(failure)
            self._schedule_probe()

        try:
            d = self.client.execute("PING")
        except Exception:
            failed(Failure())
            return
        d.addCallbacks(answered, failed)
        self._schedule_probe()

    def _recovered(self) -> None:
        now = self.clock.seconds()
        lasted = now - self.since
        self.stats.outage_seconds += lasted
        local = self.stats.fallbacks - self._fallbacks_at_start
        self._set_state(UP)
        if self._probe is not None and self._probe.active():
            self._probe.cancel()
        self._probe = None
        log.info(
            "shared state: Redis {redis} is back after {lasted:.1f}s; {local} decisions were made "
            "locally meanwhile; reconciling",
            redis=self.where,
            lasted=lasted,
            local=local,
            shared_state="up",
        )
        for callback in list(self.on_recovered):
            d = maybeDeferred(callback)
            d.addCallbacks(self._count_reconciled, self._reconcile_failed)

    def _count_reconciled(self, count: object) -> None:
        if isinstance(count, int):
            self.stats.reconciled += count

    def _reconcile_failed(self, failure: Failure) -> None:
        log.failure("shared state: reconciling after an outage failed", failure)

    # -- reporting

    def status(self) -> LinkStatus:
        s = self.stats
        current = self.clock.seconds() - self.since if self.state == DOWN else 0.0
        return LinkStatus(
            redis=self.where,
            state=self.state,
            since=self.since,
            timeout=self.timeout,
            calls=s.calls,
            answered=s.answered,
            fallbacks=s.fallbacks,
            timeouts=s.timeouts,
            errors=s.errors,
            outages=s.outages,
            outage_seconds=s.outage_seconds + current,
            reconciled=s.reconciled,
            last_error=self.last_error,
        )


def _is_reply_error(failure: Failure) -> bool:
    if failure.check(RedisReplyError):
        return True
    try:
        import txredisapi
    except ImportError:  # pragma: no cover - an install requirement
        return False
    # An error reply (txredisapi's ConnectionError, a lost or timed-out connection, is not one).
    return failure.check(txredisapi.ResponseError) is not None


def _describe(failure: Failure) -> str:
    error = failure.value
    text = failure.getErrorMessage()
    name = type(error).__name__ if error is not None else "error"
    return f"{name}: {text}" if text else name
