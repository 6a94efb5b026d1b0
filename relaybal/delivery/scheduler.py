"""The delivery scheduler: every queued message to a gateway, evenly, until it is done.

For each message the scheduler picks a gateway of the message's backend
with the backend's ``balance`` over **messages**, runs one transaction for
the recipients still pending on a pooled connection
(:class:`~relaybal.delivery.pool.GatewayPool`), and stores each
recipient's outcome in the spool:

* ``2xx``: delivered;
* ``5xx``: bounced (a DSN goes to the sender, never for a null sender);
* ``4xx``, a lost connection, a timeout: tried again at once on another
  gateway (up to ``retries`` more gateways when ``redispatch`` is on), then
  deferred for the next step of ``retry_schedule``; a message that reaches
  ``max_attempts`` rounds or ``max_queue_time`` bounces.

A connection lost after the final dot is retried like any temporary failure
(the gateway may have taken the message: at-least-once) and logged as a
possible duplicate.

Evenness. With ``roundrobin``/``static-rr`` the rotation decides and the
scheduler waits for the chosen gateway to have room (each pool takes at most
:attr:`~relaybal.delivery.pool.GatewayPool.capacity` transactions), so
message counts follow the weights exactly while the gateways keep up; a
gateway that is full and has finished nothing for ``stall_after`` seconds
is passed over until it moves again. The other algorithms choose among the
gateways with room (``leastconn``: fewest messages in flight), so a slow
gateway gets less mail, never more.

Messages that wait for a gateway (all down or all full) are not counted as
attempts. Held messages (``next_attempt`` = infinity in the spool) are not
scheduled until released.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaybal.balance.backend import Backend, Server
from relaybal.delivery.bounce import FailedRecipient, build_bounce, needs_bounce, original_headers
from relaybal.delivery.client import (
    ClientIdentity,
    DeliveryError,
    IdentityConflict,
    MissingExtension,
    Transaction,
    TransactionResult,
)
from relaybal.delivery.pool import GatewayPool, Gateways
from relaybal.relay.interfaces import Envelope
from relaybal.smtp.wire import NULL_SENDER, Mailbox
from relaybal.spool.message import QueuedMessage, RecipientState, RecipientStatus
from relaybal.spool.store import SpoolStore

log = Logger()

#: ``next_attempt`` of a held message's pending recipients.
HELD = math.inf

#: The default ``retry_schedule``: 1 minute doubling to an hour, then hourly.
DEFAULT_SCHEDULE: tuple[float, ...] = (60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0)

# The status codes a bounce gives for what the gateways could not take.
_MISSING_STATUS = {
    "SMTPUTF8": ("5.6.7", "no gateway supports SMTPUTF8, which this message needs"),
    "8BITMIME": ("5.6.3", "no gateway supports 8BITMIME, which this message needs"),
    "SIZE": ("5.3.4", "message too big for every gateway"),
}


def backoff(schedule: tuple[float, ...], attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th failed round (the last step repeats)."""
    if not schedule:
        return DEFAULT_SCHEDULE[0]
    return schedule[min(max(attempts, 1), len(schedule)) - 1]


def identity(envelope: Envelope) -> ClientIdentity:
    """The original client of a message, for XCLIENT/XFORWARD."""
    client = envelope.client
    return ClientIdentity(
        addr=client[0] if client is not None else None,
        port=client[1] if client is not None else None,
        name=envelope.confirmed_client_name,
        helo=envelope.helo,
        proto="ESMTP",
        login=envelope.user,
    )


def _address(mailbox: Mailbox) -> str:
    return "" if mailbox == NULL_SENDER else str(mailbox)


@attrs.define
class SchedulerStats:
    delivered: int = 0
    """Recipients delivered."""
    deferred: int = 0
    """Rounds that ended with recipients deferred."""
    bounced: int = 0
    """Recipients bounced."""
    bounces_sent: int = 0
    """Bounce messages queued."""
    messages_done: int = 0
    """Messages finished and removed from the queue."""
    possible_duplicates: int = 0


@attrs.frozen
class Attempt:
    """One transaction's outcome, for logs and metrics."""

    queue_id: str
    backend: str
    server: str
    recipients: int
    delivered: int
    deferred: int
    bounced: int
    size: int
    reply: str
    delay: float
    """Seconds since the message was received."""


@attrs.define(eq=False)
class _Work:
    """A delivery round of one message."""

    message: QueuedMessage
    backend: Backend
    pending: list[int]
    tried: list[Server] = attrs.field(factory=list)
    updates: dict[int, RecipientState] = attrs.field(factory=dict)
    replies: dict[int, str] = attrs.field(factory=dict)
    remote: dict[int, str | None] = attrs.field(factory=dict)
    """Per recipient with a reply in ``replies``: the gateway that gave it (its address host),
    None when the text is not a gateway's reply (a connection failure, a timeout, an internal error)."""
    missing: str | None = None
    cancelled: bool = False

    @property
    def queue_id(self) -> str:
        return self.message.queue_id

    @property
    def key(self) -> bytes | None:
        client = self.message.envelope.client
        return client[0].encode() if client is not None else None


class Scheduler:
    """Delivers the messages of ``store`` through the backends' gateways.

    ``backend_for(frontend_name)`` tells which backend a message received by
    that frontend goes to (None: no such relay frontend any more: the
    message waits until a reload brings one back); ``backends()`` returns
    the current backends by name. ``gateways`` holds the connection pools
    (shared with cut-through delivery; by default the scheduler makes its
    own).
    """

    def __init__(
        self,
        store: SpoolStore,
        reactor: Any,
        *,
        hostname: str,
        backend_for: Callable[[str], Backend | None],
        backends: Callable[[], Mapping[str, Backend]],
        gateways: Gateways | None = None,
        schedule: tuple[float, ...] = DEFAULT_SCHEDULE,
        stall_after: float = 10.0,
        idle_timeout: float = 30.0,
        wait_poll: float = 30.0,
    ) -> None:
        self.store = store
        self.reactor = reactor
        self.hostname = hostname
        self.backend_for = backend_for
        self.backends = backends
        self.gateways = gateways if gateways is not None else Gateways(
            reactor, hostname=hostname, backends=backends, idle_timeout=idle_timeout
        )
        self.gateways.on_free.append(lambda _: self._dispatch_soon())
        self.schedule = schedule
        self.stall_after = stall_after
        self.wait_poll = wait_poll
        self.stats = SchedulerStats()
        self.on_attempt: list[Callable[[Attempt], None]] = []
        self.on_done: list[Callable[[QueuedMessage, float], None]] = []
        # Per backend name: messages due now, in order.
        self._ready: dict[str, deque[str]] = {}
        self._queued: set[str] = set()
        # Deferred messages: heap of (due, queue_id); _due says which entries are current.
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}
        self._timer: IDelayedCall | None = None
        self._poll: IDelayedCall | None = None
        self._soon: IDelayedCall | None = None
        self._reserved: dict[str, Server] = {}
        self._active: dict[str, _Work] = {}
        self._held: set[str] = set()
        self._deleted: set[str] = set()
        self._subscribed: set[str] = set()
        self._running = False
        self._stopped: Deferred[None] | None = None
        self._jobs: set[Deferred[Any]] = set()
        # Per queued message, per recipient index: the gateway (its address host) whose reply
        # decided the recipient's recorded state, for the bounce's Remote-MTA. Kept in memory:
        # after a restart a bounce reports no Remote-MTA for replies received before it.
        self._remote: dict[str, dict[int, str]] = {}

    # --- life cycle

    def start(self) -> None:
        """Schedule what the spool holds and every message it will be given."""
        self._running = True
        self.store.on_queued.append(self._new_message)
        for message in self.store.messages():
            self._schedule(message)
        self._dispatch()

    def stop(self) -> Deferred[None]:
        """Start nothing new; fire once running transactions are done and connections closed."""
        if self._stopped is not None:
            return self._stopped
        self._running = False
        if self._new_message in self.store.on_queued:
            self.store.on_queued.remove(self._new_message)
        for timer in (self._timer, self._poll, self._soon):
            if timer is not None and timer.active():
                timer.cancel()
        self._stopped = Deferred()
        self._check_stopped()
        return self._stopped

    def _check_stopped(self) -> None:
        stopped = self._stopped
        if stopped is None or stopped.called or self._active or self._jobs:
            return
        self.gateways.close().addBoth(lambda _: stopped.callback(None) if not stopped.called else None)

    @property
    def in_flight(self) -> int:
        return len(self._active)

    @property
    def waiting(self) -> int:
        """Messages due now and waiting for a gateway."""
        return sum(len(q) for q in self._ready.values())

    @property
    def deferred_count(self) -> int:
        return len(self._due)

    @property
    def held(self) -> frozenset[str]:
        return frozenset(self._held)

    # --- queueing

    def _new_message(self, message: QueuedMessage) -> None:
        self._schedule(message)
        self._dispatch_soon()

    def _schedule(self, message: QueuedMessage) -> None:
        queue_id = message.queue_id
        if queue_id in self._active or queue_id in self._queued:
            return
        due = message.next_attempt
        if due is None:
            # Every recipient is final (a crash before removal): finish it.
            self._track(self._finish_message(queue_id))
            return
        if due == HELD:
            self._held.add(queue_id)
            return
        self._held.discard(queue_id)
        if due <= self.reactor.seconds():
            self._make_ready(queue_id, message)
        else:
            self._defer_until(queue_id, due)

    def _make_ready(self, queue_id: str, message: QueuedMessage) -> None:
        self._due.pop(queue_id, None)
        backend = self.backend_for(message.envelope.frontend)
        name = backend.name if backend is not None else ""
        self._ready.setdefault(name, deque()).append(queue_id)
        self._queued.add(queue_id)

    def _defer_until(self, queue_id: str, due: float) -> None:
        self._due[queue_id] = due
        heapq.heappush(self._heap, (due, queue_id))
        self._arm_timer()

    def _arm_timer(self) -> None:
        if not self._running:
            return
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        if not self._heap:
            return
        due = self._heap[0][0]
        delay = max(0.0, due - self.reactor.seconds())
        timer = self._timer
        if timer is not None and timer.active():
            if timer.getTime() <= due:
                return
            timer.cancel()
        self._timer = self.reactor.callLater(delay, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        now = self.reactor.seconds()
        while self._heap and self._heap[0][0] <= now:
            due, queue_id = heapq.heappop(self._heap)
            if self._due.get(queue_id) != due:
                continue
            del self._due[queue_id]
            if queue_id in self.store:
                self._make_ready(queue_id, self.store.get(queue_id))
            else:
                self._remote.pop(queue_id, None)
        self._arm_timer()
        self._dispatch()

    def _dispatch_soon(self) -> None:
        if self._soon is None and self._running:
            self._soon = self.reactor.callLater(0, self._dispatch_now)

    def _dispatch_now(self) -> None:
        self._soon = None
        self._dispatch()

    def _dispatch(self) -> None:
        """Start a round for each ready message that a gateway can take now."""
        if not self._running:
            return
        blocked = False
        for name, ready in list(self._ready.items()):
            backend = self._backend(name)
            if backend is None:
                blocked = blocked or bool(ready)
                continue
            self._watch(backend)
            while ready:
                queue_id = ready[0]
                if queue_id not in self.store or queue_id in self._deleted:
                    ready.popleft()
                    self._queued.discard(queue_id)
                    if queue_id not in self.store:
                        self._remote.pop(queue_id, None)
                    continue
                message = self.store.get(queue_id)
                work = _Work(message, backend, list(message.pending))
                server = self._first_choice(work)
                if server is None:
                    blocked = True
                    break
                ready.popleft()
                self._queued.discard(queue_id)
                if not work.pending:
                    self._track(self._finish_message(queue_id))
                    continue
                self._active[queue_id] = work
                self._attempt(work, server)
        if blocked:
            self._arm_poll()

    def _backend(self, name: str) -> Backend | None:
        if not name:
            self._reroute()
            return None
        return self.backends().get(name)

    def _reroute(self) -> None:
        """Messages whose frontend had no backend: look again (a reload may have added it)."""
        lost = self._ready.get("")
        if not lost:
            return
        waiting = list(lost)
        lost.clear()
        for queue_id in waiting:
            self._queued.discard(queue_id)
            if queue_id in self.store:
                self._make_ready(queue_id, self.store.get(queue_id))
        if len(lost) < len(waiting):
            self._dispatch_soon()

    def _watch(self, backend: Backend) -> None:
        if backend.name not in self._subscribed:
            self._subscribed.add(backend.name)
            backend.subscribe(lambda server, event: self._dispatch_soon())

    def _arm_poll(self) -> None:
        """Look again later at messages that wait for a gateway (also woken by server changes)."""
        if self._poll is None or not self._poll.active():
            # Soon enough to notice a gateway that has stalled.
            self._poll = self.reactor.callLater(min(self.wait_poll, self.stall_after), self._dispatch)

    # --- choosing gateways

    def pool(self, server: Server) -> GatewayPool:
        return self.gateways.pool(server)

    def _first_choice(self, work: _Work) -> Server | None:
        """The gateway for a new round, or None to wait (all full, or none usable)."""
        backend = work.backend
        if backend.config.balance in ("roundrobin", "static-rr"):
            reserved = self._reserved.get(backend.name)
            if reserved is not None and reserved.usable and backend.server(reserved.name) is reserved:
                pool = self.pool(reserved)
                if pool.has_room:
                    del self._reserved[backend.name]
                    return reserved
                if not pool.stalled(self.stall_after):
                    return None
            self._reserved.pop(backend.name, None)
            pools = self.gateways.pools
            stalled = [s for s in backend.servers if s in pools and pools[s].stalled(self.stall_after)]
            server = backend.pick(work.key, exclude=stalled)
            if server is None:
                return None
            if self.pool(server).has_room:
                return server
            self._reserved[backend.name] = server
            return None
        pools = self.gateways.pools
        full = [s for s in backend.servers if s in pools and not pools[s].has_room]
        return backend.pick(work.key, exclude=full)

    def _next_choice(self, work: _Work) -> Server | None:
        """Another gateway for the same round after a temporary failure, or None."""
        config = work.backend.config
        limit = 1 + (config.retries if config.redispatch else 0)
        if len(work.tried) >= limit:
            return None
        return work.backend.pick(work.key, exclude=work.tried)

    # --- one transaction

    def _attempt(self, work: _Work, server: Server) -> None:
        work.tried.append(server)
        message = work.message
        envelope = message.envelope
        queue_id = message.queue_id
        store = self.store
        txn = Transaction(
            queue_id=queue_id,
            sender=_address(envelope.sender),
            recipients=tuple(str(envelope.recipients[i]) for i in work.pending),
            body=lambda: store.open_body(queue_id),
            size=message.size,
            body_type=envelope.body_type,
            smtputf8=envelope.smtputf8,
            client=identity(envelope),
        )
        counters = self.gateways.counters_of(server)
        counters.attempts += 1
        server.acquire()
        pending = list(work.pending)
        try:
            d = self.pool(server).submit(txn)
        except Exception:
            d = fail(Failure())

        def finished(result: TransactionResult | Failure) -> None:
            server.release()
            self._outcome(work, server, pending, result)

        d.addBoth(finished)

    def _outcome(
        self, work: _Work, server: Server, pending: list[int], result: TransactionResult | Failure
    ) -> None:
        counters = self.gateways.counters_of(server)
        message = work.message
        now = self.reactor.seconds()
        host = server.config.address.host
        still: list[int] = []
        delivered = bounced = 0
        summary = ""
        if isinstance(result, Failure):
            error = result.value
            if isinstance(error, MissingExtension):
                work.missing = error.extension
                still = pending
                summary = f"gateway lacks {error.extension}"
            elif isinstance(error, DeliveryError):
                reply = error.reply
                summary = str(reply) if reply is not None else str(error)
                if error.after_dot:
                    counters.possible_duplicates += 1
                    self.stats.possible_duplicates += 1
                    log.warn(
                        "{queue_id}: connection to {server} lost after the final dot: "
                        "retrying, the gateway may deliver it twice",
                        queue_id=message.queue_id,
                        server=f"{server.backend_name}/{server.name}",
                    )
                permanent = not error.retry_elsewhere and (reply is None or reply.code >= 500)
                # With a reply the gateway reported the failure; without one it is ours.
                remote = host if reply is not None else None
                if permanent:
                    # The gateway refused it for good, or it cannot be sent at all (a bad address).
                    for i in pending:
                        work.updates[i] = message.recipients[i].bounced(summary)
                        work.replies[i] = summary
                        work.remote[i] = remote
                    bounced = len(pending)
                else:
                    still = pending
                    for i in pending:
                        work.replies[i] = summary
                        work.remote[i] = remote
                    if not isinstance(error, IdentityConflict):
                        server.record_failure(summary)
            else:
                log.failure("{queue_id}: delivery to {server} failed", result, queue_id=message.queue_id,
                            server=f"{server.backend_name}/{server.name}")  # fmt: skip
                summary = f"internal error: {error}"
                still = pending
                for i in pending:
                    work.replies[i] = summary
                    work.remote[i] = None
        else:
            replies = result.recipients
            data = result.data
            for i, reply in zip(pending, replies, strict=False):
                # A recipient the gateway took is done when the message is (the reply after the dot).
                final = data if reply.code < 300 and data is not None else reply
                text = str(final)
                if final.code < 300 and data is not None:
                    work.updates[i] = message.recipients[i].delivered(text)
                    delivered += 1
                elif final.code >= 500:
                    work.updates[i] = message.recipients[i].bounced(text)
                    bounced += 1
                else:
                    still.append(i)
                work.replies[i] = text
                work.remote[i] = host
            if len(replies) < len(pending):
                still.extend(pending[len(replies) :])
            summary = str(result.data) if result.data is not None else (str(replies[0]) if replies else "")
        if delivered:
            counters.messages += 1
            counters.recipients += delivered
            counters.bytes += message.size
            server.bytes_out += message.size
            self.stats.delivered += delivered
        counters.bounced += bounced
        counters.deferred += len(still)
        work.pending = still
        attempt = Attempt(
            queue_id=message.queue_id,
            backend=server.backend_name,
            server=server.name,
            recipients=len(pending),
            delivered=delivered,
            deferred=len(still),
            bounced=bounced,
            size=message.size,
            reply=summary,
            delay=max(0.0, now - message.envelope.received_at),
        )
        outcome = (
            ("delivered" if delivered == len(pending) else "partly delivered")
            if delivered
            else ("bounced" if bounced else "deferred")
        )
        where = f"{server.backend_name}/{server.name}"
        log.info(
            "{line}",
            line=f"{message.queue_id}: to {where}: {outcome}, {len(pending)} rcpt, {message.size} bytes, "
            f"delay {attempt.delay:.3f}s: {summary}",
            queue_id=message.queue_id,
            backend=server.backend_name,
            server=server.name,
            result=outcome,
            recipients=len(pending),
            size=message.size,
            delay=attempt.delay,
            reply=summary,
        )
        for observer in self.on_attempt:
            observer(attempt)
        if still and not work.cancelled:
            nxt = self._next_choice(work)
            if nxt is not None:
                self._attempt(work, nxt)
                return
        self._end_round(work)

    # --- the end of a round

    def _end_round(self, work: _Work) -> None:
        message = work.message
        queue_id = message.queue_id
        now = self.reactor.seconds()
        if work.pending:
            self.stats.deferred += 1
            current = self.store.get(queue_id).recipients if queue_id in self.store else message.recipients
            attempts = max(current[i].attempts for i in work.pending) + 1
            expired = (
                attempts >= work.backend.config.max_attempts
                or now - message.envelope.received_at >= work.backend.config.max_queue_time
            )
            missing = work.missing
            only_missing = missing is not None and all(
                "lacks" in work.replies.get(i, "lacks") for i in work.pending
            ) and not [s for s in work.backend.servers if s.usable and s not in work.tried]
            if only_missing and missing is not None:
                status, text = _MISSING_STATUS.get(missing, ("5.3.0", f"no gateway supports {missing}"))
                for i in work.pending:
                    # Made here, not a gateway's reply: no Remote-MTA.
                    work.updates[i] = current[i].bounced(f"554 {status} {text}")
                    work.remote[i] = None
            elif expired:
                for i in work.pending:
                    last = work.replies.get(i)
                    if not last:
                        last = "no gateway could be reached"
                        work.remote[i] = None
                    expiry = f"{last} (delivery time expired after {attempts} attempts)"
                    work.updates[i] = current[i].bounced(expiry)
            else:
                schedule = work.backend.config.retry_schedule
                due = HELD if queue_id in self._held else now + backoff(schedule, attempts)
                for i in work.pending:
                    work.updates[i] = current[i].deferred(due, work.replies.get(i))
        self._track(self._save(work))

    def _save(self, work: _Work) -> Deferred[None]:
        queue_id = work.queue_id
        if queue_id not in self.store:
            self._active.pop(queue_id, None)
            self._remote.pop(queue_id, None)
            return succeed(None)
        states = list(self.store.get(queue_id).recipients)
        for i, state in work.updates.items():
            states[i] = state
        if queue_id in self._deleted:
            return self._remove(queue_id)
        if all(s.status.final for s in states):
            if all(s.status is RecipientStatus.DELIVERED for s in states):
                # Nothing to remember: the removal record says it all.
                return self._remove(queue_id)
            d = self.store.record(queue_id, work.updates)
            d.addCallback(lambda _: self._remember(work))
            d.addCallback(lambda _: self._finish_message(queue_id))
            d.addErrback(self._save_failed, queue_id)
            return d
        d = self.store.record(queue_id, work.updates)

        def saved(_: None) -> None:
            self._remember(work)
            self._active.pop(queue_id, None)
            if queue_id in self.store:
                self._schedule(self.store.get(queue_id))
            self._dispatch_soon()

        d.addCallback(saved)
        d.addErrback(self._save_failed, queue_id)
        return d

    def _remember(self, work: _Work) -> None:
        """Keep, for each recipient whose new state was recorded, the gateway whose reply decided it.

        A state decided by no gateway's reply (a connection failure, a local
        bounce, no reply at all) forgets the gateway of an earlier round:
        Remote-MTA always names the gateway that gave the recipient's last
        reply, the one the bounce quotes.
        """
        remote = self._remote.setdefault(work.queue_id, {})
        for i, state in work.updates.items():
            host = work.remote.get(i) if i in work.replies else None
            if host is not None and state.status is not RecipientStatus.DELIVERED:
                remote[i] = host
            else:
                remote.pop(i, None)
        if not remote:
            del self._remote[work.queue_id]

    def _save_failed(self, failure: Failure, queue_id: str) -> None:
        log.failure("{queue_id}: cannot store delivery results (tried again later)", failure,
                    queue_id=queue_id)  # fmt: skip
        self._active.pop(queue_id, None)
        if queue_id in self.store:
            self._defer_until(queue_id, self.reactor.seconds() + backoff(self.schedule, 1))
        self._dispatch_soon()

    def _finish_message(self, queue_id: str) -> Deferred[None]:
        """Every recipient is final: queue the bounce (if one is owed), then remove the message."""
        if queue_id not in self.store:
            self._active.pop(queue_id, None)
            return succeed(None)
        message = self.store.get(queue_id)
        remote = self._remote.get(queue_id, {})
        failed = [
            (message.envelope.recipients[i], state, remote.get(i))
            for i, state in enumerate(message.recipients)
            if state.status is RecipientStatus.BOUNCED
        ]
        sender = _address(message.envelope.sender)
        if not failed or not needs_bounce(sender):
            if failed:
                log.info("{queue_id}: no bounce for a null-sender message", queue_id=queue_id)
            return self._remove(queue_id)
        d = self._queue_bounce(message, failed)
        d.addCallback(lambda _: self._remove(queue_id))

        def bounce_failed(failure: Failure) -> None:
            log.failure("{queue_id}: cannot queue the bounce (tried again later)", failure, queue_id=queue_id)
            self._active.pop(queue_id, None)
            self._defer_until(queue_id, self.reactor.seconds() + backoff(self.schedule, 1))

        d.addErrback(bounce_failed)
        return d

    def _queue_bounce(
        self, message: QueuedMessage, failed: list[tuple[Mailbox, RecipientState, str | None]]
    ) -> Deferred[None]:
        """Queue the bounce for ``failed``: (recipient, its state, the gateway whose reply bounced it)."""
        reader = self.store.open_body(message.queue_id)
        d = reader.read(65536)

        def build(prefix: bytes) -> Deferred[str]:
            envelope = message.envelope
            body = build_bounce(
                queue_id=message.queue_id,
                sender=_address(envelope.sender),
                recipients=[
                    FailedRecipient(
                        address=str(rcpt),
                        status=_status_of(state.reply),
                        diagnostic=state.reply,
                        remote_mta=remote_mta,
                    )
                    for rcpt, state, remote_mta in failed
                ],
                reporting_mta=self.hostname,
                arrival_date=envelope.received_at,
                now=self.reactor.seconds(),
                original_headers=original_headers(prefix),
                smtputf8=envelope.smtputf8,
            )
            bounce = Envelope(
                sender=NULL_SENDER,
                recipients=(envelope.sender,),
                mail_params={},
                smtputf8=envelope.smtputf8,
                body_type="7BIT" if body.isascii() else "8BITMIME",
                frontend=envelope.frontend,
                client=None,
                helo=None,
                tls=None,
                user=None,
                received_at=self.reactor.seconds(),
            )
            writer = self.store.begin(bounce)
            writer.write(body)
            return writer.commit()

        def closed(result: Any) -> Any:
            reader.close()
            return result

        def queued(bounce_id: str) -> None:
            self.stats.bounces_sent += 1
            log.info(
                "{queue_id}: bounce {bounce_id} queued for <{sender}> ({count} recipient(s) failed)",
                queue_id=message.queue_id,
                bounce_id=bounce_id,
                sender=_address(message.envelope.sender),
                count=len(failed),
            )

        d.addBoth(closed)
        return d.addCallback(build).addCallback(queued)

    def _remove(self, queue_id: str) -> Deferred[None]:
        message = self.store.get(queue_id) if queue_id in self.store else None
        self._remote.pop(queue_id, None)
        self._deleted.discard(queue_id)
        self._held.discard(queue_id)
        self._due.pop(queue_id, None)
        if message is None:
            self._active.pop(queue_id, None)
            return succeed(None)
        self.stats.bounced += sum(1 for s in message.recipients if s.status is RecipientStatus.BOUNCED)
        d = self.store.remove(queue_id)
        self._active.pop(queue_id, None)
        self.stats.messages_done += 1
        now = self.reactor.seconds()
        for observer in self.on_done:
            observer(message, now)
        self._dispatch_soon()

        def failed(failure: Failure) -> None:
            log.failure("{queue_id}: cannot record its removal", failure, queue_id=queue_id)

        return d.addErrback(failed)

    def _track(self, d: Deferred[Any]) -> None:
        if d.called:
            self._check_stopped()
            return
        self._jobs.add(d)

        def forget(result: object) -> object:
            self._jobs.discard(d)
            self._check_stopped()
            return result

        d.addBoth(forget)

    # --- queue administration

    def flush(self, queue_id: str | None = None) -> int:
        """Try deferred messages now (one, or all); returns how many were moved to the ready queue."""
        ids = [queue_id] if queue_id is not None else list(self._due)
        count = 0
        for q in ids:
            if q in self._due and q in self.store:
                del self._due[q]
                self._make_ready(q, self.store.get(q))
                count += 1
        self._arm_timer()
        self._dispatch()
        return count

    def hold(self, queue_id: str) -> Deferred[None]:
        """Keep ``queue_id`` from delivery until :meth:`release` (durable)."""
        message = self.store.get(queue_id)
        self._held.add(queue_id)
        self._due.pop(queue_id, None)
        if queue_id in self._active:
            return succeed(None)  # the running round ends with the message held
        self._unready(queue_id)
        return self.store.record(queue_id, _retimed(message, HELD))

    def release(self, queue_id: str) -> Deferred[None]:
        """Deliver a held message again, now."""
        message = self.store.get(queue_id)
        self._held.discard(queue_id)
        if queue_id in self._active:
            return succeed(None)
        d = self.store.record(queue_id, _retimed(message, 0.0))

        def released(_: None) -> None:
            if queue_id in self.store:
                self._schedule(self.store.get(queue_id))
                self._dispatch()

        return d.addCallback(released)

    def delete(self, queue_id: str) -> Deferred[None]:
        """Drop ``queue_id`` without delivering it or bouncing it."""
        if queue_id not in self.store:
            raise KeyError(queue_id)
        if queue_id in self._active:
            self._deleted.add(queue_id)
            self._active[queue_id].cancelled = True
            return succeed(None)
        self._unready(queue_id)
        return self._remove(queue_id)

    def _unready(self, queue_id: str) -> None:
        if queue_id in self._queued:
            self._queued.discard(queue_id)
            for ready in self._ready.values():
                if queue_id in ready:
                    ready.remove(queue_id)

    def state_of(self, queue_id: str) -> str:
        """``active``, ``held``, ``deferred`` or ``ready`` (waiting for a gateway)."""
        if queue_id in self._active:
            return "active"
        if queue_id in self._held:
            return "held"
        if queue_id in self._due:
            return "deferred"
        return "ready"


def _retimed(message: QueuedMessage, due: float) -> Mapping[int, RecipientState]:
    return {
        i: attrs.evolve(state, next_attempt=due)
        for i, state in enumerate(message.recipients)
        if not state.status.final
    }


def _status_of(reply: str | None) -> str:
    """The enhanced status code in a stored reply text, or a generic permanent one."""
    if reply:
        parts = reply.split()
        for part in parts[:3]:
            pieces = part.split(".")
            if len(pieces) == 3 and pieces[0] in ("4", "5") and all(p.isdigit() for p in pieces):
                return "5" + part[1:] if part[0] == "4" else part
    return "5.0.0"
