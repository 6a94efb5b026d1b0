"""The durable spool: a message sink that answers only once the bytes are on stable storage.

Accepted messages are records in an append-only log of segment files
(``log/``); a commit is acknowledged after the ``fdatasync`` of a flush that
covers its record. Flushes run one at a time in the spool's own thread pool
and take every record that arrived while the previous one ran, so
concurrent commits share one disk flush (group commit). Bodies larger than
``inline_limit`` are written to their own file under ``bodies/`` as they
arrive and synced before their record is appended. Recipient outcomes and
removals are records too. Compaction copies the live messages of old
segments forward so that old segments can be removed, oldest first.

The format, the layout and the durability argument are in the "The spool"
section of ``docs/design.rst``. All methods are called on the reactor
thread; blocking work goes through an :class:`~relaybal.spool.threads.Offloader`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, TypeVar

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relaybal.relay.interfaces import Envelope, IMessageSink, IMessageWriter, SinkError
from relaybal.relay.queueid import QueueIdGenerator
from relaybal.smtp.wire import Reply
from relaybal.spool import format as fmt
from relaybal.spool.disk import (
    BODIES_DIR,
    Append,
    BodySpill,
    Copy,
    Disk,
    FlushError,
    FlushPlan,
    FlushResult,
    Location,
    SegmentLog,
    make_dirs,
    read_at,
)
from relaybal.spool.message import QueuedMessage, RecipientState
from relaybal.spool.recovery import RecoveryReport, recover
from relaybal.spool.threads import Offloader, ThreadPoolOffloader

log = Logger()
T = TypeVar("T")

#: The reply for a full disk (RFC 3463: 4.3.1 mail system full).
SPOOL_FULL: Final = Reply(452, "4.3.1", "Insufficient system storage")
#: Free space (octets) new messages leave on the spool's file system: only removals and
#: recipient states may use it, so that delivering queued mail can always free space.
DEFAULT_MIN_FREE: Final = 1024 * 1024
#: The reply when the spool is shutting down.
SPOOL_CLOSING: Final = Reply(451, "4.3.2", "Service shutting down, try again later")

_NO_SPACE = frozenset((errno.ENOSPC, errno.EDQUOT))
# Compaction copies at most this many messages per flush so client commits sharing the
# flush are not held up by a large copy.
_MOVES_PER_FLUSH = 256
# When space runs short, the current segment is sealed (so it can be deleted) if at least this
# much of it, and at least half, is garbage.
_ROTATE_GARBAGE = 64 * 1024


class SpoolLocked(Exception):
    """Another process has the spool open."""


def sink_error(error: BaseException) -> SinkError:
    """What the client is told when storing failed: ``452 4.3.1`` for a full disk, else ``451 4.3.0``."""
    if isinstance(error, FlushError):
        error = error.cause
    if isinstance(error, OSError) and error.errno in _NO_SPACE:
        return SinkError(SPOOL_FULL)
    return SinkError()


@attrs.define
class SpoolStats:
    """Counters since the store was opened."""

    commits: int = 0
    commit_failures: int = 0
    aborted: int = 0
    #: flushes that appended records (each costs one fdatasync)
    flushes: int = 0
    records: int = 0
    failed_flushes: int = 0
    bytes: int = 0
    spilled: int = 0
    #: body chunks the reactor wrote itself because the pool was behind
    blocking_writes: int = 0
    moved: int = 0
    segments_removed: int = 0
    #: bodies handed out from memory (no disk read)
    cache_hits: int = 0


@attrs.define(eq=False)
class _Live:
    message: QueuedMessage
    location: Location
    readers: int = 0
    moving: bool = False
    removed: bool = False
    done_durable: bool = False
    unlink_planned: bool = False


@attrs.define(eq=False)
class _CommitItem:
    writer: SpoolWriter
    message: QueuedMessage
    record: Append
    d: Deferred[str]
    body: bytes | None = None
    """An inline body, kept in the body cache once committed."""


@attrs.define(eq=False)
class _RecordItem:
    record: Append
    d: Deferred[None] | None
    #: the removed message, for a D record
    done: _Live | None = None


@attrs.define(eq=False)
class _MoveItem:
    queue_id: str
    record: Append | Copy


_Item = _CommitItem | _RecordItem | _MoveItem


@implementer(IMessageWriter)
class SpoolWriter:
    """One message being received into the spool.

    The body is kept in memory up to the store's ``inline_limit``; past it,
    it is written to ``bodies/QUEUEID.part`` in the pool as it arrives, so
    memory per message stays under about twice ``max_buffered``. If the pool
    falls that far behind, :meth:`write` writes the buffered part itself (the
    reactor stalls, and so stops reading from clients: back-pressure).
    """

    def __init__(self, store: SpoolStore, queue_id: str, envelope: Envelope) -> None:
        self.store = store
        self.queue_id = queue_id
        self.envelope = envelope
        self.size = 0
        self.state: Literal["open", "committing", "committed", "failed", "aborted"] = "open"
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._spill: BodySpill | None = None
        self._spilled = 0
        self._in_flight = 0
        self._job: Deferred[None] | None = None
        self._after_job: Callable[[], None] | None = None

    def write(self, data: bytes) -> None:
        if self.state != "open":
            raise RuntimeError(f"write after {self.state}")
        if not data:
            return
        store = self.store
        self.size += len(data)
        self._chunks.append(data)
        self._buffered += len(data)
        if self._spill is None:
            if self._buffered > store.inline_limit:
                self._spill = BodySpill(store.disk, store.directory, self.queue_id)
                self._push()
        elif self._job is None:
            if self._buffered >= store.spill_chunk:
                self._push()
        elif self._buffered + self._in_flight > store.max_buffered:
            offset, chunk = self._take()
            store.stats.blocking_writes += 1
            self._spill.append(offset, chunk)

    def _take(self) -> tuple[int, bytes]:
        data = b"".join(self._chunks)
        self._chunks = []
        self._buffered = 0
        offset = self._spilled
        self._spilled += len(data)
        return offset, data

    def _push(self) -> None:
        assert self._spill is not None
        offset, data = self._take()
        self._in_flight = len(data)
        self.store.stats.spilled += len(data)
        job = self.store._submit(self._spill.append, offset, data)
        self._job = job
        job.addBoth(self._pushed)

    def _pushed(self, result: object) -> None:
        if isinstance(result, Failure):  # append keeps OSErrors; anything else is a bug
            log.failure("spool: {queue_id}: writing the body", result, queue_id=self.queue_id)
            assert self._spill is not None
            if self._spill.error is None:
                self._spill.error = OSError(errno.EIO, str(result.value))
        self._job = None
        self._in_flight = 0
        then, self._after_job = self._after_job, None
        if then is not None:
            then()
        elif self.state == "open" and self._buffered >= self.store.spill_chunk:
            self._push()

    def _when_idle(self, then: Callable[[], None]) -> None:
        if self._job is None:
            then()
        else:
            self._after_job = then

    def commit(self) -> Deferred[str]:
        if self.state != "open":
            raise RuntimeError(f"commit after {self.state}")
        self.state = "committing"
        d: Deferred[str] = Deferred()
        store = self.store
        if store._closing:
            self._failed(d, SinkError(SPOOL_CLOSING))
            return d
        spill = self._spill
        if spill is None:
            body = b"".join(self._chunks)
            self._chunks = []
            message = self._message(None)
            data, body_at = fmt.encode_message(message, body)
            store._enqueue_commit(_CommitItem(self, message, Append(data, body_at, self.queue_id), d, body))
            return d

        def finish() -> None:
            offset, rest = self._take()
            job = store._submit(spill.finish, offset, rest)
            job.addCallbacks(synced, lambda f: self._failed(d, f.value))

        def synced(_: None) -> None:
            message = self._message(self.queue_id)
            data, body_at = fmt.encode_message(message)
            store._enqueue_commit(_CommitItem(self, message, Append(data, body_at, self.queue_id), d))

        self._when_idle(finish)
        return d

    def _message(self, body_file: str | None) -> QueuedMessage:
        recipients = tuple(RecipientState() for _ in self.envelope.recipients)
        return QueuedMessage(self.queue_id, self.envelope, recipients, self.size, body_file)

    def _failed(self, d: Deferred[str], error: BaseException) -> None:
        """The message could not be made durable: say so, and remove what was written."""
        self.state = "failed"
        store = self.store
        store._writers.pop(self.queue_id, None)
        store.stats.commit_failures += 1
        if not isinstance(error, SinkError):
            log.error("spool: {queue_id}: commit failed: {error}", queue_id=self.queue_id, error=error)
            error = sink_error(error)
        self._chunks = []
        spill = self._spill
        if spill is not None:
            self._when_idle(lambda: store._discard(spill))
        d.errback(error)

    def abort(self) -> None:
        if self.state != "open":
            return  # a commit's outcome stands; a second abort is nothing
        self.state = "aborted"
        store = self.store
        store._writers.pop(self.queue_id, None)
        store.stats.aborted += 1
        self._chunks = []
        self._buffered = 0
        spill = self._spill
        if spill is not None:
            self._when_idle(lambda: store._discard(spill))


class BodyReader:
    """Streams one queued message's body (the ``Received:`` header first, no dot-stuffing).

    While it is open the body stays readable even if the message is removed
    or moved by compaction. :meth:`close` it when done.
    """

    def __init__(self, store: SpoolStore, live: _Live, path: str, start: int, pin: int | None) -> None:
        self.store = store
        self.queue_id = live.message.queue_id
        self.size = live.message.size
        self._live = live
        self._path = path
        self._start = start
        self._pin = pin
        self.position = 0
        self.closed = False

    def read(self, size: int = 256 * 1024) -> Deferred[bytes]:
        """The next at most ``size`` octets; ``b""`` at the end."""
        if self.closed:
            raise RuntimeError("read after close")
        want = min(size, self.size - self.position)
        if want <= 0:
            return succeed(b"")
        self.position += want

        def check(data: bytes) -> bytes:
            if len(data) != want:
                raise OSError(errno.EIO, f"{self.queue_id}: body shorter than recorded")
            return data

        return self.store._submit(read_at, self._path, self._start + self.position - want, want).addCallback(
            check
        )

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.store._reader_closed(self._live, self._pin)


class CachedBodyReader:
    """A :class:`BodyReader` for a body still held in memory (no disk read, no thread)."""

    def __init__(self, queue_id: str, body: bytes) -> None:
        self.queue_id = queue_id
        self.size = len(body)
        self.position = 0
        self.closed = False
        self._body = body

    def read(self, size: int = 256 * 1024) -> Deferred[bytes]:
        """The next at most ``size`` octets; ``b""`` at the end."""
        if self.closed:
            raise RuntimeError("read after close")
        start = self.position
        self.position = min(self.size, start + size)
        return succeed(self._body[start : self.position])

    def close(self) -> None:
        self.closed = True


@implementer(IMessageSink)
class SpoolStore:
    """A spool directory opened by this process (see :meth:`open`).

    As a sink: :meth:`begin` starts a message; its writer's ``commit`` fires
    with the queue ID once the message is on stable storage, or fails with
    :class:`~relaybal.relay.interfaces.SinkError` (``452 4.3.1`` when the disk
    is full, else ``451 4.3.0``), never both.

    For a scheduler: :meth:`messages`/:meth:`get` list the queue,
    :meth:`open_body` streams a body, :meth:`record` stores new recipient
    states, :meth:`remove` drops a finished message; ``on_queued`` callbacks
    hear of each newly committed message.
    """

    def __init__(
        self,
        directory: str,
        *,
        offloader: Offloader,
        disk: Disk,
        log: SegmentLog,
        lock_fd: int,
        recovered: Mapping[str, tuple[QueuedMessage, Location]],
        segments: tuple[int, ...],
        sizes: Mapping[int, int],
        report: RecoveryReport,
        clock: Callable[[], float],
        inline_limit: int,
        max_buffered: int,
        spill_chunk: int,
        keep_sealed: int,
        owns_offloader: bool,
        body_cache: int = 32 * 1024 * 1024,
        min_free: int = DEFAULT_MIN_FREE,
    ) -> None:
        self.directory = directory
        self.min_free = min_free
        self.disk = disk
        self.recovery = report
        self.inline_limit = inline_limit
        self.max_buffered = max_buffered
        self.spill_chunk = spill_chunk
        self.keep_sealed = keep_sealed
        self.stats = SpoolStats()
        # Inline bodies of recently committed messages, oldest first, so that delivering
        # them needs no disk read (bounded by body_cache bytes).
        self.body_cache = body_cache
        self._bodies: dict[str, bytes] = {}
        self._cached = 0
        self.on_queued: list[Callable[[QueuedMessage], None]] = []
        self._offloader = offloader
        self._owns_offloader = owns_offloader
        self._log = log
        self._lock_fd: int | None = lock_fd
        self._ids = QueueIdGenerator(clock)
        self._index: dict[str, _Live] = {}
        # Per segment: the live messages whose current M record is there, their bytes, its size.
        self._members: dict[int, set[str]] = {seq: set() for seq in segments}
        self._live_bytes: dict[int, int] = dict.fromkeys(segments, 0)
        self._sizes: dict[int, int] = {seq: sizes.get(seq, 0) for seq in segments}
        self._pins: dict[int, int] = {}
        self._segments = sorted({*segments, log.seq})
        self._current = log.seq
        self._members.setdefault(log.seq, set())
        self._live_bytes.setdefault(log.seq, 0)
        self._sizes[log.seq] = log.offset
        for queue_id, (message, location) in recovered.items():
            live = _Live(message, location)
            self._index[queue_id] = live
            self._add_member(live)
        self._writers: dict[str, SpoolWriter] = {}
        self._pending: list[_Item] = []
        self._retry: list[_RecordItem] = []
        self._moves = 0  # copies planned and not yet flushed
        self._flushing = False
        self._maintain = True
        self._jobs: set[Deferred[Any]] = set()
        self._closing = False
        self._closed: Deferred[None] | None = None
        self._dead = False
        self._kick()

    @classmethod
    def open(
        cls,
        directory: str,
        *,
        reactor: IReactorFromThreads | None = None,
        offloader: Offloader | None = None,
        disk: Disk | None = None,
        clock: Callable[[], float] = time.time,
        threads: int = 4,
        segment_size: int = 64 * 1024 * 1024,
        inline_limit: int = 64 * 1024,
        max_buffered: int = 1024 * 1024,
        spill_chunk: int = 256 * 1024,
        keep_sealed: int = 1,
        body_cache: int = 32 * 1024 * 1024,
        min_free: int = DEFAULT_MIN_FREE,
    ) -> SpoolStore:
        """Lock, recover and open the spool in ``directory`` (created if missing). Blocking: call at start-up.

        Blocking work later runs through ``offloader``, or by default in a
        new thread pool of ``threads`` threads reporting to ``reactor``.
        ``segment_size`` is the size past which a new segment is started;
        ``keep_sealed`` how many full segments are left alone before the
        oldest one's live messages are copied forward. ``body_cache`` bytes
        of recently committed inline bodies are kept in memory for
        :meth:`open_body` (0: none). A new message is refused (``452``)
        rather than leave less than ``min_free`` octets free on the file
        system: removals and recipient states may use that reserve, so a
        spool that filled its disk can still record deliveries and free
        space (0: no reserve). Raises
        :class:`SpoolLocked` if another process has the spool open, and
        :class:`OSError` if it cannot be read or written.
        """
        disk = disk if disk is not None else Disk()
        make_dirs(disk, directory)
        lock_fd = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise SpoolLocked(f"{directory} is in use by another process") from None
        try:
            recovered = recover(directory, repair=True, disk=disk)
            seg_log = SegmentLog(disk, directory, max(recovered.segments, default=0), segment_size)
            # Appends never continue an old segment: its tail may be torn.
            seg_log.open_new_segment()
        except BaseException:
            os.close(lock_fd)
            raise
        owns = offloader is None
        if offloader is None:
            if reactor is None:
                raise ValueError("SpoolStore.open needs a reactor or an offloader")
            offloader = ThreadPoolOffloader(reactor, threads)
        report = recovered.report
        log.info(
            "spool: {directory}: recovered {messages} messages from {segments} segments"
            "{torn} torn, {discarded} leftovers removed",
            directory=directory,
            messages=report.messages,
            segments=len(report.segments),
            torn=f", {len(report.torn)}" if report.torn else ", none",
            discarded=len(report.discarded),
        )
        return cls(
            directory,
            offloader=offloader,
            disk=disk,
            log=seg_log,
            lock_fd=lock_fd,
            recovered=recovered.messages,
            segments=recovered.segments,
            sizes=recovered.sizes,
            report=report,
            clock=clock,
            inline_limit=inline_limit,
            max_buffered=max_buffered,
            spill_chunk=spill_chunk,
            keep_sealed=keep_sealed,
            owns_offloader=owns,
            body_cache=body_cache,
            min_free=min_free,
        )

    # --- IMessageSink -------------------------------------------------------------

    def begin(self, envelope: Envelope) -> SpoolWriter:
        if self._closing:
            raise SinkError(SPOOL_CLOSING)
        queue_id = self._ids.next()
        while queue_id in self._index or queue_id in self._writers:
            queue_id = self._ids.next()  # only after a clock step back across a restart
        writer = SpoolWriter(self, queue_id, envelope)
        self._writers[queue_id] = writer
        return writer

    # --- the queue ----------------------------------------------------------------

    def messages(self) -> list[QueuedMessage]:
        """Every queued message, oldest queue ID first."""
        return [self._index[q].message for q in sorted(self._index)]

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, queue_id: object) -> bool:
        return queue_id in self._index

    def get(self, queue_id: str) -> QueuedMessage:
        """The queued message ``queue_id`` (:class:`KeyError` if there is none)."""
        return self._index[queue_id].message

    def open_body(self, queue_id: str) -> BodyReader | CachedBodyReader:
        """A reader for the body of ``queue_id`` (:class:`KeyError` if there is none)."""
        live = self._index[queue_id]
        cached = self._bodies.get(queue_id)
        if cached is not None:
            self.stats.cache_hits += 1
            return CachedBodyReader(queue_id, cached)
        live.readers += 1
        message = live.message
        if message.body_file is not None:
            path = os.path.join(self.directory, BODIES_DIR, message.body_file)
            return BodyReader(self, live, path, 0, None)
        seq = live.location.segment
        self._pins[seq] = self._pins.get(seq, 0) + 1
        return BodyReader(self, live, self._log.segment_path(seq), live.location.body_offset, seq)

    def read_body(self, queue_id: str) -> Deferred[bytes]:
        """The whole body of ``queue_id`` at once (for small messages and tests)."""
        reader = self.open_body(queue_id)

        def done(result: T) -> T:
            reader.close()
            return result

        return reader.read(reader.size).addBoth(done)

    def record(self, queue_id: str, updates: Mapping[int, RecipientState]) -> Deferred[None]:
        """Store new states for some recipients (by index); fires once they are durable.

        The new states are visible through :meth:`get` at once. If the flush
        fails the Deferred fails, and after a crash the older states may come
        back (the recipients are then tried again: at-least-once).
        """
        live = self._index[queue_id]
        states = list(live.message.recipients)
        for index, state in updates.items():
            if not 0 <= index < len(states):
                raise IndexError(f"{queue_id} has no recipient {index}")
            states[index] = state
        live.message = attrs.evolve(live.message, recipients=tuple(states))
        d: Deferred[None] = Deferred()
        self._pending.append(_RecordItem(Append(fmt.encode_state(queue_id, updates)), d))
        self._kick()
        return d

    def remove(self, queue_id: str) -> Deferred[None]:
        """Drop a finished message from the queue; fires once that is durable.

        Its body file, if any, is removed after that, and after the last open
        reader is closed.
        """
        live = self._index.pop(queue_id)
        live.removed = True
        self._uncache_body(queue_id)
        self._drop_member(live)
        d: Deferred[None] = Deferred()
        self._pending.append(_RecordItem(Append(fmt.encode_ids(fmt.KIND_DONE, [queue_id])), d, done=live))
        self._kick()
        return d

    # --- flushing -----------------------------------------------------------------

    def _cache_body(self, queue_id: str, body: bytes) -> None:
        if len(body) > self.body_cache:
            return
        self._bodies[queue_id] = body
        self._cached += len(body)
        while self._cached > self.body_cache:
            oldest = next(iter(self._bodies))
            self._cached -= len(self._bodies.pop(oldest))

    def _uncache_body(self, queue_id: str) -> None:
        body = self._bodies.pop(queue_id, None)
        if body is not None:
            self._cached -= len(body)

    def _submit(self, f: Callable[..., T], *args: object) -> Deferred[T]:
        d = self._offloader.submit(f, *args)
        self._jobs.add(d)

        def forget(result: object) -> object:
            self._jobs.discard(d)
            self._check_closed()
            return result

        d.addBoth(forget)
        return d

    def _log_failure(self, failure: Failure) -> None:
        log.failure("spool: background job failed", failure)

    def _discard(self, spill: BodySpill) -> None:
        self._submit(spill.discard).addErrback(self._log_failure)

    def _enqueue_commit(self, item: _CommitItem) -> None:
        self._pending.append(item)
        self._kick()

    def _kick(self) -> None:
        """Start a flush if none is running and there is work; the heart of group commit."""
        if self._flushing or self._dead:
            return
        if self._maintain and not self._closing:
            self._plan_moves()
        delete = self._deletable() if self._maintain and not self._closing else ()
        if not self._pending and not delete:
            return
        batch: list[_Item] = []
        if any(not isinstance(i, _MoveItem) for i in self._pending):
            # D records of failed flushes ride along with the next flush a client asked for.
            batch.extend(self._retry)
            self._retry = []
        batch.extend(self._pending)
        self._pending = []
        unlink = []
        for item in batch:
            if isinstance(item, _RecordItem) and item.done is not None:
                live = item.done
                if live.message.body_file is not None and live.readers == 0 and not live.unlink_planned:
                    live.unlink_planned = True
                    unlink.append(os.path.join(self.directory, BODIES_DIR, live.message.body_file))
        plan = FlushPlan(
            tuple(item.record for item in batch), delete, tuple(unlink), self.min_free, self._worth_rotating()
        )
        self._flushing = True
        d = self._submit(self._log.flush, plan)
        d.addCallbacks(self._flushed, self._flush_failed, callbackArgs=(batch,), errbackArgs=(batch,))

    def _plan_moves(self) -> None:
        if self._moves:
            return  # one batch of copies at a time
        sealed = [seq for seq in self._segments if seq != self._current]
        if len(sealed) <= self.keep_sealed:
            return
        # Copy only while the log is at least half garbage (and a segment's worth): each byte
        # copied then frees at least one, and copying stops when what is left is mostly live.
        live_bytes = sum(self._live_bytes.values())
        garbage = sum(self._sizes.values()) - live_bytes
        if garbage < max(live_bytes, self._log.segment_size):
            return
        oldest = sealed[0]
        for queue_id in sorted(self._members.get(oldest, ())):
            if self._moves >= _MOVES_PER_FLUSH:
                break
            live = self._index[queue_id]
            live.moving = True
            self._moves += 1
            meta = fmt.encode_message_meta(live.message)
            loc = live.location
            record: Append | Copy
            if live.message.body_file is None:
                record = Copy(meta, (self._log.segment_path(loc.segment), loc.body_offset, live.message.size))
            else:
                record = Append(*fmt.encode_message_record(meta))
            self._pending.append(_MoveItem(queue_id, record))

    def _worth_rotating(self) -> bool:
        """Whether the current segment is mostly garbage (worth sealing when space runs short)."""
        size = self._sizes.get(self._current, 0)
        garbage = size - self._live_bytes.get(self._current, 0)
        return garbage >= _ROTATE_GARBAGE and 2 * garbage >= size

    def _deletable(self) -> tuple[int, ...]:
        out = []
        for seq in self._segments:
            if seq == self._current or self._members.get(seq) or self._pins.get(seq):
                break
            out.append(seq)
        return tuple(out)

    def _note_current(self, current: int, offset: int) -> None:
        if current != self._current:
            self._current = current
            self._segments.append(current)
            self._members.setdefault(current, set())
            self._live_bytes.setdefault(current, 0)
        self._sizes[current] = offset

    @staticmethod
    def _record_bytes(live: _Live) -> int:
        loc = live.location
        inline = live.message.size if live.message.body_file is None else 0
        return loc.body_offset - loc.record_offset + inline

    def _add_member(self, live: _Live) -> None:
        seq = live.location.segment
        self._members[seq].add(live.message.queue_id)
        self._live_bytes[seq] += self._record_bytes(live)

    def _drop_member(self, live: _Live) -> None:
        seq = live.location.segment
        members = self._members[seq]
        if live.message.queue_id in members:
            members.discard(live.message.queue_id)
            self._live_bytes[seq] -= self._record_bytes(live)

    def _flushed(self, result: FlushResult, batch: list[_Item]) -> None:
        # _flushing stays set while the callbacks run: commits they make (a writer's next
        # message) then gather into one flush instead of the first one leaving alone.
        self._note_current(result.current, result.offset)
        for seq in result.deleted_segments:
            self._segments.remove(seq)
            self._members.pop(seq, None)
            self._live_bytes.pop(seq, None)
            self._sizes.pop(seq, None)
            self.stats.segments_removed += 1
        progress = bool(result.deleted_segments)
        client = False
        queued: list[QueuedMessage] = []
        stats = self.stats
        if batch:
            stats.flushes += 1
            stats.records += len(batch)
        refused = set(result.refused)
        if refused:
            log.error("spool: less than {free} octets would stay free: {n} new messages refused",
                      free=self.min_free, n=len(refused))  # fmt: skip
        for index, (item, location) in enumerate(zip(batch, result.locations, strict=True)):
            if index in refused:
                assert isinstance(item, _CommitItem)
                client = True  # keep maintaining: deleting segments is how space comes back
                item.writer._failed(item.d, SinkError(SPOOL_FULL))
                continue
            if isinstance(item, _CommitItem):
                client = True
                assert location is not None
                writer = item.writer
                writer.state = "committed"
                self._writers.pop(writer.queue_id, None)
                live = _Live(item.message, location)
                self._index[writer.queue_id] = live
                if item.body is not None:
                    self._cache_body(writer.queue_id, item.body)
                self._add_member(live)
                stats.commits += 1
                stats.bytes += item.message.size
                queued.append(item.message)
                item.d.callback(writer.queue_id)
            elif isinstance(item, _MoveItem):
                progress = True
                self._moves -= 1
                moved = self._index.get(item.queue_id)
                if moved is not None and moved.moving:
                    assert location is not None
                    self._drop_member(moved)
                    moved.location = location
                    moved.moving = False
                    self._add_member(moved)
                    stats.moved += 1
            else:
                client = True
                if item.done is not None:
                    self._done_durable(item.done)
                if item.d is not None:
                    item.d.callback(None)
        self._maintain = client or progress
        for message in queued:
            for callback in list(self.on_queued):
                try:
                    callback(message)
                except Exception:
                    log.failure("spool: on_queued callback failed")
        self._flushing = False
        self._kick()
        self._check_closed()

    def _flush_failed(self, failure: Failure, batch: list[_Item]) -> None:
        error = failure.value
        if isinstance(error, FlushError):
            self._note_current(error.current, error.offset)
            log.error("spool: flush of {n} records failed: {error}", n=len(batch), error=error.cause)
        else:
            log.failure("spool: flush failed", failure)
        self.stats.failed_flushes += 1
        self._maintain = False
        assert error is not None
        for item in batch:
            if isinstance(item, _CommitItem):
                item.writer._failed(item.d, error)
            elif isinstance(item, _MoveItem):
                self._moves -= 1
                live = self._index.get(item.queue_id)
                if live is not None:
                    live.moving = False
            else:
                if item.done is not None:
                    # Removal is final and idempotent: try again with the next flush.
                    item.done.unlink_planned = False
                    self._retry.append(_RecordItem(item.record, None, done=item.done))
                if item.d is not None:
                    item.d.errback(failure)
        self._flushing = False
        self._kick()
        self._check_closed()

    def _done_durable(self, live: _Live) -> None:
        live.done_durable = True
        if live.message.body_file is not None and live.readers == 0 and not live.unlink_planned:
            self._unlink_body(live)

    def _unlink_body(self, live: _Live) -> None:
        assert live.message.body_file is not None
        live.unlink_planned = True
        path = os.path.join(self.directory, BODIES_DIR, live.message.body_file)
        self._submit(self._quiet_unlink, path).addErrback(self._log_failure)

    def _quiet_unlink(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.disk.unlink(path)

    def _reader_closed(self, live: _Live, pin: int | None) -> None:
        live.readers -= 1
        if pin is not None:
            self._pins[pin] -= 1
            if not self._pins[pin]:
                del self._pins[pin]
                self._kick()
        if (
            live.removed
            and live.readers == 0
            and live.done_durable
            and not live.unlink_planned
            and live.message.body_file is not None
        ):
            self._unlink_body(live)

    # --- closing ------------------------------------------------------------------

    def close(self) -> Deferred[None]:
        """Refuse new messages, finish pending flushes and jobs, stop the pool, release the lock."""
        if self._closed is not None:
            return self._closed if not self._closed.called else succeed(None)
        self._closing = True
        self._closed = Deferred()
        d = self._closed
        self._check_closed()
        return d

    def _check_closed(self) -> None:
        d = self._closed
        if d is None or d.called or self._flushing or self._pending or self._jobs or self._dead:
            return
        self._dead = True

        def stopped(_: object) -> None:
            if self._owns_offloader:
                self._offloader.stop()
            self._release_lock()

        job = self._offloader.submit(self._log.close)
        job.addErrback(self._log_failure).addBoth(stopped).addBoth(lambda _: d.callback(None))

    def kill(self) -> None:
        """Stop at once as if the process had died (tests): nothing more is written, the lock is released."""
        self._dead = True
        for writer in self._writers.values():
            spill = writer._spill
            if spill is not None and spill.fd is not None:
                fd, spill.fd = spill.fd, None
                os.close(fd)
        if self._log.fd is not None:
            fd, self._log.fd = self._log.fd, None
            os.close(fd)
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)
