"""The spool's blocking side: every call that changes files, run in the spool's thread pool.

:class:`Disk` is the seam for the calls whose failure or timing matters
(open, write, fsync, rename, unlink); tests replace it to count fsyncs, to
inject ``EIO``/``ENOSPC``, or to simulate a power cut
(:mod:`relaybal.spool.testing`). Reads use :mod:`os` directly.

:class:`SegmentLog` appends batches of records to the current segment and
makes each batch durable with one ``fdatasync`` (group commit);
:class:`BodySpill` writes a large message's body to its own file as it
arrives. Neither touches the reactor: the store calls them through its
thread pool and reads their results on the reactor thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading

import attrs
from twisted.logger import Logger

from relaybal.spool import format as fmt

log = Logger()

LOG_DIR = "log"
BODIES_DIR = "bodies"
SEGMENT_SUFFIX = ".log"
NEW_SUFFIX = ".new"
PART_SUFFIX = ".part"


def segment_name(seq: int) -> str:
    return f"{seq:012d}{SEGMENT_SUFFIX}"


class Disk:
    """The file system calls the spool makes, one method each (override to inject faults).

    ``fsync`` makes a file's data (and the metadata needed to read it, such
    as its size) durable; ``fsync_dir`` makes a directory's entries (files
    created, renamed or removed in it) durable.
    """

    def open(self, path: str, flags: int, mode: int = 0o640) -> int:
        return os.open(path, flags | os.O_CLOEXEC, mode)

    def free_space(self, path: str) -> int:
        """Octets still free for unprivileged users on the file system that holds ``path``."""
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize

    def close(self, fd: int) -> None:
        os.close(fd)

    def write(self, fd: int, data: bytes, offset: int) -> None:
        """Write all of ``data`` at ``offset`` (a short write continues, an error raises)."""
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            if n <= 0:  # pragma: no cover - pwrite reports errors by raising
                raise OSError(errno.EIO, "short write")
            view = view[n:]
            offset += n

    def fsync(self, fd: int) -> None:
        os.fdatasync(fd)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)


def make_dirs(disk: Disk, path: str) -> None:
    """Create ``path`` and any missing parents, each made durable in its parent directory."""
    path = os.path.abspath(path)
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        os.makedirs(directory, mode=0o750, exist_ok=True)
        disk.fsync_dir(os.path.dirname(directory))


def read_at(path: str, offset: int, length: int) -> bytes:
    """Up to ``length`` bytes of ``path`` from ``offset`` (blocking: call it in the pool)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


@attrs.frozen
class Location:
    """Where a message's ``M`` record (and its body, when kept in the log) is."""

    segment: int
    record_offset: int
    body_offset: int


@attrs.frozen
class Append:
    """A record to append as it is."""

    data: bytes
    #: where the body starts inside the record (``M`` records), for :class:`Location`
    body_at: int | None = None
    #: the queue ID of a new message's ``M`` record: cancelled (``C``) if its batch fails
    new_message: str | None = None


@attrs.frozen
class Copy:
    """An ``M`` record built in the thread from its JSON part and a body read from the log.

    Compaction copies a live message forward this way; ``source`` is the
    segment path, body offset and length of the current copy.
    """

    meta: bytes
    source: tuple[str, int, int]


@attrs.frozen
class FlushPlan:
    """One flush: records to append (one ``fdatasync`` for all), then segments and files to remove."""

    records: tuple[Append | Copy, ...] = ()
    delete_segments: tuple[int, ...] = ()
    unlink: tuple[str, ...] = ()
    #: new messages are written only if this many octets stay free after the flush; the other
    #: records (removals, states, cancellations) may use them, so that space can come back
    reserve: int = 0
    #: when new messages are refused for lack of space, start a new segment: the current one is
    #: mostly garbage and, sealed, can be deleted once its last live message is done
    rotate_if_refused: bool = False


@attrs.frozen
class FlushResult:
    """What a flush did: where each record went, the current segment, what was removed."""

    locations: tuple[Location | None, ...]
    current: int
    #: the current segment's size
    offset: int
    deleted_segments: tuple[int, ...]
    unlink_failed: tuple[str, ...]
    #: the records (by index) of new messages left out because the reserve was reached
    refused: tuple[int, ...] = ()


class FlushError(Exception):
    """A flush failed: none of its records may be reported durable."""

    def __init__(self, cause: OSError, current: int, offset: int) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.current = current
        self.offset = offset


class SegmentLog:
    """The append side of the log: the current segment, written and flushed in batches.

    Not thread-safe: the store runs at most one :meth:`flush` at a time.
    After a failed flush the current segment may hold a torn or unacknowledged
    tail, so the next flush starts a new segment and first writes a ``C``
    record cancelling the failed batch's messages.
    """

    def __init__(self, disk: Disk, directory: str, seq: int, segment_size: int) -> None:
        self.disk = disk
        self.directory = directory
        self.log_dir = os.path.join(directory, LOG_DIR)
        self.segment_size = segment_size
        self.seq = seq
        self.fd: int | None = None
        self.offset = 0
        self.broken = True  # nothing open yet: the first flush creates the segment
        self.cancel: list[str] = []

    def segment_path(self, seq: int) -> str:
        return os.path.join(self.log_dir, segment_name(seq))

    def open_new_segment(self) -> None:
        """Create segment ``seq + 1`` durably (header synced, renamed, directory synced) and use it."""
        seq = self.seq + 1
        final = self.segment_path(seq)
        temp = final + NEW_SUFFIX
        disk = self.disk
        fd = disk.open(temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        try:
            header = fmt.encode_segment_header(seq)
            disk.write(fd, header, 0)
            disk.fsync(fd)
            disk.rename(temp, final)
            disk.fsync_dir(self.log_dir)
        except BaseException:
            disk.close(fd)
            raise
        if self.fd is not None:
            try:
                disk.close(self.fd)
            except OSError:
                log.failure("spool: closing segment {seq}", seq=self.seq)
        self.fd = fd
        self.seq = seq
        self.offset = len(header)
        self.broken = False

    def flush(self, plan: FlushPlan) -> FlushResult:
        """Append ``plan.records``, make them durable, then remove what the plan says.

        Raises :class:`FlushError` if any write, fsync or rename failed; then
        no record of the plan may be considered durable. Removal failures are
        logged and reported, never raised (the records are durable by then).
        """
        records = plan.records
        refused = self._over_reserve(records, plan.reserve) if records and plan.reserve else ()
        if refused:
            records = tuple(r for i, r in enumerate(records) if i not in refused)
            if plan.rotate_if_refused and not self.broken:
                try:
                    self.open_new_segment()
                except OSError:
                    log.failure("spool: starting a new segment to free space")
        written: list[Location | None] = []
        if records:
            try:
                written = self._append(records)
            except OSError as e:
                self.broken = True
                # Only new messages: cancelling a compaction copy would kill a live message.
                self.cancel.extend(
                    r.new_message for r in records if isinstance(r, Append) and r.new_message is not None
                )
                raise FlushError(e, self.seq, self.offset) from e
        places = iter(written)
        locations = [None if i in refused else next(places) for i in range(len(plan.records))]
        deleted: list[int] = []
        for seq in plan.delete_segments:
            try:
                # Gone already if an earlier attempt's directory fsync was what failed.
                with contextlib.suppress(FileNotFoundError):
                    self.disk.unlink(self.segment_path(seq))
                # One at a time, oldest first, each made durable before the next: a
                # segment's D records must outlive the older segments they cancel.
                self.disk.fsync_dir(self.log_dir)
            except OSError:
                log.failure("spool: removing segment {seq}", seq=seq)
                break
            deleted.append(seq)
        failed: list[str] = []
        for path in plan.unlink:
            try:
                self.disk.unlink(path)
            except FileNotFoundError:
                pass
            except OSError:
                log.failure("spool: removing {path}", path=path)
                failed.append(path)
        return FlushResult(tuple(locations), self.seq, self.offset, tuple(deleted), tuple(failed), refused)

    def _over_reserve(self, records: tuple[Append | Copy, ...], reserve: int) -> tuple[int, ...]:
        """The new messages among ``records`` if writing them all would leave less than ``reserve`` free."""
        new = tuple(i for i, r in enumerate(records) if isinstance(r, Append) and r.new_message is not None)
        if not new:
            return ()
        need = sum(len(r.data) if isinstance(r, Append) else len(r.meta) + r.source[2] for r in records)
        try:
            free = self.disk.free_space(self.log_dir)
        except OSError:
            return ()  # cannot tell: the writes themselves will report a full disk
        return new if free - need < reserve else ()

    def _append(self, records: tuple[Append | Copy, ...]) -> list[Location | None]:
        if self.broken or self.offset >= self.segment_size:
            self.open_new_segment()
        assert self.fd is not None
        pieces: list[bytes] = []
        offset = self.offset
        if self.cancel:
            cancel = fmt.encode_ids(fmt.KIND_CANCEL, self.cancel)
            pieces.append(cancel)
            offset += len(cancel)
        locations: list[Location | None] = []
        for record in records:
            data, body_at = self._bytes(record)
            locations.append(Location(self.seq, offset, offset + body_at) if body_at is not None else None)
            pieces.append(data)
            offset += len(data)
        self.disk.write(self.fd, b"".join(pieces), self.offset)
        self.disk.fsync(self.fd)
        self.offset = offset
        self.cancel = []
        return locations

    def _bytes(self, record: Append | Copy) -> tuple[bytes, int | None]:
        if isinstance(record, Append):
            return record.data, record.body_at
        path, body_offset, length = record.source
        body = read_at(path, body_offset, length)
        if len(body) != length:
            raise OSError(errno.EIO, f"short read copying a message from {path}")
        return fmt.encode_message_record(record.meta, body)

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            self.disk.close(fd)


class BodySpill:
    """A large message's body, written to ``bodies/QUEUEID.part`` as it arrives.

    :meth:`append` may run in the pool or (when the pool falls behind and the
    message's buffer is full) on the reactor thread; a lock keeps them apart,
    and explicit offsets make their order irrelevant. The first error is kept
    and reported by :meth:`finish`.
    """

    def __init__(self, disk: Disk, directory: str, queue_id: str) -> None:
        self.disk = disk
        self.bodies_dir = os.path.join(directory, BODIES_DIR)
        self.final = os.path.join(self.bodies_dir, queue_id)
        self.part = self.final + PART_SUFFIX
        self.lock = threading.Lock()
        self.fd: int | None = None
        self.error: OSError | None = None
        self.closed = False

    def append(self, offset: int, data: bytes) -> None:
        with self.lock:
            if self.error is not None or self.closed:
                return
            try:
                if self.fd is None:
                    self.fd = self.disk.open(self.part, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
                self.disk.write(self.fd, data, offset)
            except OSError as e:
                self.error = e

    def finish(self, offset: int, data: bytes) -> None:
        """Write the rest, make the file durable under its final name (raises on failure)."""
        self.append(offset, data)
        with self.lock:
            if self.error is not None:
                raise self.error
            assert self.fd is not None
            fd, self.fd = self.fd, None
            self.closed = True
            try:
                self.disk.fsync(fd)
            finally:
                self.disk.close(fd)
            self.disk.rename(self.part, self.final)
            self.disk.fsync_dir(self.bodies_dir)

    def discard(self) -> None:
        """Close and remove the file, whatever state it is in (errors are only logged)."""
        with self.lock:
            self.closed = True
            fd, self.fd = self.fd, None
            if fd is not None:
                try:
                    self.disk.close(fd)
                except OSError:
                    log.failure("spool: closing {path}", path=self.part)
            for path in (self.part, self.final):
                try:
                    self.disk.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError:
                    log.failure("spool: removing {path}", path=path)
