"""An in-memory message sink: for tests, the benchmark and (until the spool exists) the daemon.

Nothing is written to disk and nothing is delivered: a committed message is
kept in :attr:`MemoryMessageSink.messages` (the last ``keep`` of them) and
counted. Tests can hold commits open (:attr:`MemoryMessageSink.hold`) or make
them fail, to exercise the server's asynchronous paths.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from relaybal.relay.interfaces import Envelope, IMessageSink, IMessageWriter
from relaybal.relay.queueid import QueueIdGenerator


@attrs.frozen
class StoredMessage:
    """A committed message: its queue ID, envelope and body (Received: header included)."""

    queue_id: str
    envelope: Envelope
    data: bytes


@implementer(IMessageWriter)
class MemoryWriter:
    """Collects one message's body (or only its size, when the sink keeps nothing)."""

    def __init__(self, sink: MemoryMessageSink, queue_id: str, envelope: Envelope) -> None:
        self.sink = sink
        self.queue_id = queue_id
        self.envelope = envelope
        self.chunks: list[bytes] = []
        self.size = 0
        self.state = "open"

    def write(self, data: bytes) -> None:
        assert self.state == "open", f"write after {self.state}"
        self.size += len(data)
        if self.sink.keep != 0:
            self.chunks.append(data)
        if self.sink.fail_write is not None:
            raise self.sink.fail_write

    def commit(self) -> Deferred[str]:
        assert self.state == "open", f"commit after {self.state}"
        self.state = "committing"
        sink = self.sink
        if sink.fail_commit is not None:
            self.state = "aborted"
            return fail(sink.fail_commit)
        if sink.hold:
            d: Deferred[str] = Deferred()
            sink.pending.append((self, d))
            return d.addCallback(self._store)
        return succeed(self._store(self.queue_id))

    def _store(self, queue_id: str) -> str:
        self.state = "committed"
        self.sink.committed += 1
        self.sink.bytes += self.size
        if self.sink.keep != 0:
            self.sink.messages.append(StoredMessage(self.queue_id, self.envelope, b"".join(self.chunks)))
        self.chunks = []
        return queue_id

    def abort(self) -> None:
        self.state = "aborted"
        self.chunks = []
        self.sink.aborted += 1


@implementer(IMessageSink)
class MemoryMessageSink:
    """Keeps the last ``keep`` committed messages in memory (all of them when None).

    Test switches: ``hold`` (commits wait in :attr:`pending` until the test
    fires them with :meth:`release`), ``fail_begin``/``fail_write``/``fail_commit``
    (raise or fail with that exception).
    """

    def __init__(self, clock: Callable[[], float], keep: int | None = None) -> None:
        self.ids = QueueIdGenerator(clock)
        self.keep = keep
        self.messages: deque[StoredMessage] = deque(maxlen=keep)
        self.writers: list[MemoryWriter] = []
        self.committed = 0
        self.aborted = 0
        self.bytes = 0
        self.hold = False
        self.pending: list[tuple[MemoryWriter, Deferred[str]]] = []
        self.fail_begin: Exception | None = None
        self.fail_write: Exception | None = None
        self.fail_commit: Exception | None = None

    def begin(self, envelope: Envelope) -> MemoryWriter:
        if self.fail_begin is not None:
            raise self.fail_begin
        writer = MemoryWriter(self, self.ids.next(), envelope)
        if self.keep is None:
            self.writers.append(writer)
        return writer

    def release(self) -> None:
        """Let every held commit succeed, oldest first."""
        pending, self.pending = self.pending, []
        for writer, d in pending:
            d.callback(writer.queue_id)
