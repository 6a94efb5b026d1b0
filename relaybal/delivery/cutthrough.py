"""``delivery = "cut-through"``: the client's ``250`` is a gateway's ``250``.

Nothing is stored on disk. The body is kept in memory while it arrives (it is
bounded by ``max_message_size``); at the end of DATA the message is sent to
a gateway chosen by the backend's ``balance``, and the client hears the
answer only after the gateway's reply to the final dot:

* the gateway took every recipient: ``250`` to the client;
* it refused every recipient for good (``5xx``): the client gets that
  refusal (so it bounces the message itself, no DSN is made);
* a temporary failure (``4xx``, a lost connection, a timeout): the same
  message goes to another gateway (up to ``1 + retries`` gateways when
  ``redispatch`` is on) before the client is answered;
* no gateway took any recipient: ``451 4.4.1`` (or the last gateway's
  ``4xx``), and the client retries later;
* some recipients were taken and others refused (or failed everywhere): the
  client gets ``250`` — the message was delivered — and a bounce for the
  others is sent at once, from ``<>`` to the sender, the same way. Without a
  spool it cannot be retried later: use ``delivery = "spool"`` where that
  matters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relaybal.balance.backend import Backend, Server
from relaybal.delivery.bounce import FailedRecipient, build_bounce, needs_bounce, original_headers
from relaybal.delivery.client import (
    DeliveryError,
    MissingExtension,
    SMTPReply,
    Transaction,
    TransactionResult,
)
from relaybal.delivery.pool import Gateways
from relaybal.delivery.scheduler import identity
from relaybal.relay.interfaces import Envelope, IMessageSink, IMessageWriter, SinkError
from relaybal.relay.queueid import QueueIdGenerator
from relaybal.smtp.wire import NULL_SENDER, Reply

log = Logger()

NO_GATEWAY = Reply(451, "4.4.1", "No gateway accepted the message, try again later")


class MemoryBody:
    """A :class:`~relaybal.delivery.client.BodySource` over chunks held in memory."""

    def __init__(self, chunks: Sequence[bytes]) -> None:
        self._chunks = list(chunks)
        self._next = 0
        self.size = sum(len(c) for c in self._chunks)
        self.position = 0

    def read(self, size: int = 256 * 1024) -> Deferred[bytes]:
        out: list[bytes] = []
        length = 0
        while self._next < len(self._chunks) and length < size:
            chunk = self._chunks[self._next]
            self._next += 1
            out.append(chunk)
            length += len(chunk)
        self.position += length
        return succeed(b"".join(out))

    def close(self) -> None:
        self._chunks = []


@implementer(IMessageSink)
class CutThroughSink:
    """Hands each message straight to a gateway of ``backend_for(frontend)``."""

    def __init__(
        self,
        gateways: Gateways,
        backend_for: Callable[[str], Backend | None],
        clock: Callable[[], float],
        hostname: str,
    ) -> None:
        self.gateways = gateways
        self.backend_for = backend_for
        self.clock = clock
        self.hostname = hostname
        self.ids = QueueIdGenerator(clock)
        self.accepted = 0
        self.refused = 0
        self.bounces = 0

    def begin(self, envelope: Envelope) -> IMessageWriter:
        backend = self.backend_for(envelope.frontend)
        if backend is None or backend.usable_count() == 0:
            raise SinkError(NO_GATEWAY)
        return CutThroughWriter(self, backend, self.ids.next(), envelope)


@implementer(IMessageWriter)
class CutThroughWriter:
    def __init__(self, sink: CutThroughSink, backend: Backend, queue_id: str, envelope: Envelope) -> None:
        self.sink = sink
        self.backend = backend
        self.queue_id = queue_id
        self.envelope = envelope
        self.chunks: list[bytes] = []
        self.size = 0
        self.tried: list[Server] = []
        self.pending = list(range(len(envelope.recipients)))
        self.delivered: list[int] = []
        self.failed: dict[int, SMTPReply | str] = {}
        #: The gateway (its address host) that gave the reply in ``failed``, when a gateway gave it.
        self.remote: dict[int, str] = {}
        self.last: SMTPReply | None = None
        self.result: Deferred[str] | None = None

    def write(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)

    def abort(self) -> None:
        self.chunks = []

    def commit(self) -> Deferred[str]:
        self.result = Deferred()
        self._next()
        return self.result

    # --- attempts

    def _choose(self) -> Server | None:
        config = self.backend.config
        limit = 1 + (config.retries if config.redispatch else 0)
        if len(self.tried) >= limit:
            return None
        key = self.envelope.client[0].encode() if self.envelope.client is not None else None
        return self.backend.pick(key, exclude=self.tried)

    def _next(self) -> None:
        server = self._choose()
        if server is None:
            self._answer()
            return
        self.tried.append(server)
        envelope = self.envelope
        chunks = self.chunks
        txn = Transaction(
            queue_id=self.queue_id,
            sender="" if envelope.sender == NULL_SENDER else str(envelope.sender),
            recipients=tuple(str(envelope.recipients[i]) for i in self.pending),
            body=lambda: MemoryBody(chunks),
            size=self.size,
            body_type=envelope.body_type,
            smtputf8=envelope.smtputf8,
            client=identity(envelope),
        )
        pending = list(self.pending)
        server.acquire()
        self.sink.gateways.counters_of(server).attempts += 1
        try:
            d = self.sink.gateways.pool(server).submit(txn)
        except Exception:
            d = fail(Failure())

        def done(result: TransactionResult | Failure) -> None:
            server.release()
            self._outcome(server, pending, result)

        d.addBoth(done)

    def _outcome(self, server: Server, pending: list[int], result: TransactionResult | Failure) -> None:
        counters = self.sink.gateways.counters_of(server)
        host = server.config.address.host
        still: list[int] = []
        if isinstance(result, Failure):
            error = result.value
            if isinstance(error, DeliveryError) and error.reply is not None:
                self.last = error.reply
            if isinstance(error, DeliveryError) and not isinstance(error, MissingExtension):
                server.record_failure(str(error))
            if isinstance(error, DeliveryError) and error.after_dot:
                counters.possible_duplicates += 1
                log.warn(
                    "{queue_id}: connection to {server} lost after the final dot: trying another "
                    "gateway, the message may arrive twice",
                    queue_id=self.queue_id,
                    server=server.name,
                )
            still = pending
            # With a reply the gateway reported the failure; without one (no connection) it is ours.
            replied = isinstance(error, DeliveryError) and error.reply is not None
            for i in pending:
                if i not in self.failed:
                    self.failed[i] = str(error)
                    if replied:
                        self.remote[i] = host
        else:
            data = result.data
            for i, reply in zip(pending, result.recipients, strict=False):
                final = data if reply.code < 300 and data is not None else reply
                if final.code < 300 and data is not None:
                    self.delivered.append(i)
                    self.failed.pop(i, None)
                    self.remote.pop(i, None)
                elif final.code >= 500:
                    self.failed[i] = final
                    self.remote[i] = host
                else:
                    self.last = final
                    self.failed[i] = final
                    self.remote[i] = host
                    still.append(i)
            still.extend(pending[len(result.recipients) :])
            delivered_now = [i for i in pending if i in self.delivered]
            if delivered_now:
                counters.messages += 1
                counters.recipients += len(delivered_now)
                counters.bytes += self.size
                server.bytes_out += self.size
            counters.bounced += sum(
                1 for i in pending if isinstance(self.failed.get(i), SMTPReply) and i not in still
            )
        counters.deferred += len(still)
        log.info(
            "{queue_id}: cut-through to {server}: {delivered} of {count} recipients taken",
            queue_id=self.queue_id,
            server=f"{server.backend_name}/{server.name}",
            delivered=len([i for i in pending if i in self.delivered]),
            count=len(pending),
        )
        self.pending = still
        if still:
            self._next()
        else:
            self._answer()

    def _answer(self) -> None:
        result = self.result
        assert result is not None
        sink = self.sink
        if not self.delivered:
            sink.refused += 1
            permanent = [r for r in self.failed.values() if isinstance(r, SMTPReply) and r.code >= 500]
            if permanent and not self.pending:
                refusal = permanent[0]
                text = refusal.text.replace("\n", " ")
                result.errback(SinkError(Reply(refusal.code, refusal.status or "5.0.0", text)))
            else:
                last = self.last
                reply = (
                    Reply(last.code, last.status or "4.0.0", last.text.replace("\n", " "))
                    if last is not None and 400 <= last.code < 500 and last.code != 421
                    else NO_GATEWAY
                )
                result.errback(SinkError(reply))
            self.chunks = []
            return
        sink.accepted += 1
        failed = [i for i in range(len(self.envelope.recipients)) if i not in self.delivered]
        if failed:
            self._bounce(failed)
        self.chunks = []
        result.callback(self.queue_id)

    def _bounce(self, failed: list[int]) -> None:
        envelope = self.envelope
        sender = "" if envelope.sender == NULL_SENDER else str(envelope.sender)
        log.warn(
            "{queue_id}: {count} recipient(s) not delivered by cut-through{what}",
            queue_id=self.queue_id,
            count=len(failed),
            what="; sending a bounce" if needs_bounce(sender) else "; null sender, no bounce",
        )
        if not needs_bounce(sender):
            return
        recipients = []
        for i in failed:
            reply = self.failed.get(i)
            diagnostic = str(reply) if reply is not None else None
            status = reply.status if isinstance(reply, SMTPReply) and reply.status else "5.0.0"
            if status.startswith("4"):
                status = "5" + status[1:]
            address = str(envelope.recipients[i])
            recipients.append(FailedRecipient(address, status, diagnostic, remote_mta=self.remote.get(i)))
        head = b"".join(self.chunks)[:65536]
        now = self.sink.clock()
        body = build_bounce(
            queue_id=self.queue_id,
            sender=sender,
            recipients=recipients,
            reporting_mta=self.sink.hostname,
            arrival_date=envelope.received_at,
            now=now,
            original_headers=original_headers(head),
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
            received_at=now,
        )
        writer = CutThroughWriter(self.sink, self.backend, self.sink.ids.next(), bounce)
        writer.write(body)
        self.sink.bounces += 1

        def lost(failure: Failure) -> None:
            log.error(
                "{queue_id}: the bounce for {original} could not be delivered: {why}",
                queue_id=writer.queue_id,
                original=self.queue_id,
                why=failure.getErrorMessage(),
            )

        writer.commit().addErrback(lost)

