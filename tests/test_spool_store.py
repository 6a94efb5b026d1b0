"""The spool store on a real temporary directory: commit, abort, group commit, failures, the queue.

Jobs run when the test says so (:class:`ManualOffloader`) and every file
system call goes through a :class:`FaultyDisk`, which counts fsyncs and
raises the errors a test queues.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from relaybal.relay.interfaces import IMessageSink, IMessageWriter, SinkError
from relaybal.spool import RecipientStatus, SpoolLocked, SpoolStore
from relaybal.spool.disk import segment_name
from relaybal.spool.recovery import recover
from relaybal.spool.testing import FaultyDisk, ManualOffloader, sample_envelope


class Harness:
    """A store with a manual thread pool and a counting disk, reopenable as after a crash."""

    def __init__(self, directory: Path, **options: Any) -> None:
        self.directory = str(directory)
        self.options = options
        self.clock = 1_700_000_000.0
        self.pool = ManualOffloader()
        self.disk = FaultyDisk()
        self.store = self.open()

    def open(self) -> SpoolStore:
        # Without the body cache unless a test asks for it: reads go to the disk.
        options = {"body_cache": 0, **self.options}
        return SpoolStore.open(self.directory, offloader=self.pool, disk=self.disk, clock=self.now, **options)

    def now(self) -> float:
        self.clock += 0.001
        return self.clock

    def crash_and_reopen(self) -> SpoolStore:
        """The process dies (nothing pending runs) and a new one opens the spool."""
        self.store.kill()
        self.pool = ManualOffloader()
        self.store = self.open()
        self.pool.run_all()
        return self.store

    def send(self, body: bytes, chunk: int = 0, recipients: int = 1) -> tuple[str, Deferred[str]]:
        rcpts = tuple(f"user{i}@example.org" for i in range(recipients))
        writer = self.store.begin(sample_envelope(recipients=rcpts))
        step = chunk or max(len(body), 1)
        for i in range(0, len(body), step):
            writer.write(body[i : i + step])
        return writer.queue_id, writer.commit()

    def body(self, queue_id: str) -> bytes:
        out: list[bytes] = []
        self.store.read_body(queue_id).addCallback(out.append)
        self.pool.run_all()
        return out[0]


def result(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def failure_reply(d: Deferred[Any]) -> tuple[int, str]:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out and isinstance(out[0], Failure), f"expected a failure, got {out}"
    error = out[0].value
    assert isinstance(error, SinkError)
    return error.reply.code, error.reply.status


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path / "spool")


def test_it_provides_the_sink_interfaces(h: Harness) -> None:
    assert IMessageSink.providedBy(h.store)
    writer = h.store.begin(sample_envelope())
    assert IMessageWriter.providedBy(writer)
    assert writer.queue_id and writer.queue_id.isalnum()


def test_commit_fires_only_after_the_flush_synced_the_record(h: Harness) -> None:
    h.pool.run_all()
    before = h.disk.calls["fsync"]
    queue_id, d = h.send(b"Subject: hi\r\n\r\nhello\r\n")
    assert not d.called and len(h.pool.jobs) == 1
    h.pool.run_next()
    assert h.disk.calls["fsync"] == before + 1
    assert result(d) == queue_id
    message = h.store.get(queue_id)
    assert message.envelope == sample_envelope(recipients=("user0@example.org",))
    assert message.size == len(b"Subject: hi\r\n\r\nhello\r\n")
    assert [r.status for r in message.recipients] == [RecipientStatus.QUEUED]
    assert h.body(queue_id) == b"Subject: hi\r\n\r\nhello\r\n"


def test_a_committed_message_survives_a_crash(h: Harness) -> None:
    queue_id, d = h.send(b"body\r\n" * 100, chunk=7)
    h.pool.run_all()
    assert result(d) == queue_id
    store = h.crash_and_reopen()
    assert [m.queue_id for m in store.messages()] == [queue_id]
    assert h.body(queue_id) == b"body\r\n" * 100
    assert store.recovery.messages == 1


def test_an_aborted_message_leaves_nothing(h: Harness) -> None:
    writer = h.store.begin(sample_envelope())
    writer.write(b"x" * 100)
    writer.abort()
    writer.abort()  # a second abort is harmless
    h.pool.run_all()
    assert len(h.store) == 0 and h.store.stats.aborted == 1
    assert len(h.crash_and_reopen()) == 0


def test_an_uncommitted_message_is_not_there_after_a_crash(h: Harness) -> None:
    _, d = h.send(b"never acknowledged\r\n")
    assert not d.called  # the process dies before the flush runs
    assert len(h.crash_and_reopen()) == 0


def test_concurrent_commits_share_fsyncs(h: Harness) -> None:
    """Group commit: commits arriving while a flush runs are flushed together by the next one."""
    h.pool.run_all()
    before = h.disk.fsyncs
    sends = [h.send(f"message {i}\r\n".encode()) for i in range(20)]
    assert len(h.pool.jobs) == 1  # the first commit started a flush; the rest wait for the next
    h.pool.run_all()
    assert [result(d) for _, d in sends] == [q for q, _ in sends]
    fsyncs = h.disk.fsyncs - before
    assert fsyncs == 2 < len(sends)
    assert h.store.stats.flushes == 2 and h.store.stats.commits == 20


def test_commits_arriving_during_a_flush_go_into_the_next_one(h: Harness) -> None:
    h.pool.run_all()
    before = h.disk.fsyncs
    first = h.send(b"one\r\n")
    second = h.send(b"two\r\n")
    h.pool.run_next()  # the flush of "one" completes; "two" starts the next flush
    assert first[1].called and not second[1].called
    third = h.send(b"three\r\n")
    fourth = h.send(b"four\r\n")
    h.pool.run_next()
    assert second[1].called and not third[1].called
    h.pool.run_next()
    assert third[1].called and fourth[1].called
    assert h.disk.fsyncs - before == 3


def test_writers_that_commit_again_as_soon_as_acknowledged_share_one_flush(h: Harness) -> None:
    """Ten writers each sending five messages back to back: one flush per round, not two."""
    h.pool.run_all()
    before = h.disk.fsyncs
    sent: list[str] = []

    def loop(left: int) -> None:
        if left:
            queue_id, d = h.send(b"again\r\n")
            d.addCallback(lambda q: (sent.append(q), loop(left - 1)))

    for _ in range(10):
        loop(5)
    h.pool.run_all()
    assert len(sent) == 50
    assert h.disk.fsyncs - before == h.store.stats.flushes <= 6


def test_eio_on_fsync_answers_451_and_nothing_is_durable(h: Harness) -> None:
    kept, d = h.send(b"kept\r\n")
    h.pool.run_all()
    h.disk.fail("fsync", OSError(errno.EIO, "I/O error"))
    lost, d = h.send(b"lost\r\n")
    # These arrive while the failing flush runs: they go into the next one.
    later = [h.send(f"later {i}\r\n".encode()) for i in range(2)]
    h.pool.run_all()
    assert failure_reply(d) == (451, "4.3.0")
    assert lost not in h.store and h.store.stats.commit_failures == 1
    assert [result(d) for _, d in later] == [q for q, _ in later]
    # The failed record was written (only its fsync failed), so the bytes are in the old
    # segment; the new segment starts with a record cancelling it.
    segments = sorted(os.listdir(Path(h.directory) / "log"))
    assert len(segments) == 2
    assert b"lost" in (Path(h.directory) / "log" / segments[0]).read_bytes()
    store = h.crash_and_reopen()
    assert [m.queue_id for m in store.messages()] == [kept] + [q for q, _ in later]


def test_enospc_on_write_answers_452(h: Harness) -> None:
    h.pool.run_all()
    h.disk.fail("write", OSError(errno.ENOSPC, "No space left on device"))
    _, d = h.send(b"too much\r\n")
    h.pool.run_all()
    assert failure_reply(d) == (452, "4.3.1")
    assert len(h.crash_and_reopen()) == 0


def test_enospc_on_fsync_answers_452(h: Harness) -> None:
    h.pool.run_all()
    h.disk.fail("fsync", OSError(errno.ENOSPC, "No space left on device"))
    _, d = h.send(b"too much\r\n")
    h.pool.run_all()
    assert failure_reply(d) == (452, "4.3.1")


def test_a_failed_segment_rename_answers_451(tmp_path: Path) -> None:
    h = Harness(tmp_path, segment_size=64)  # every flush starts a new segment
    queue_id, d = h.send(b"first\r\n")
    h.pool.run_all()
    assert result(d) == queue_id
    h.disk.fail("rename", OSError(errno.EIO, "rename failed"))
    _, d = h.send(b"second\r\n")
    h.pool.run_all()
    assert failure_reply(d) == (451, "4.3.0")
    store = h.crash_and_reopen()
    assert [m.queue_id for m in store.messages()] == [queue_id]
    assert not [n for n in os.listdir(tmp_path / "log") if n.endswith(".new")]


def test_a_failed_directory_fsync_answers_451(tmp_path: Path) -> None:
    h = Harness(tmp_path, segment_size=64)
    h.send(b"first\r\n")
    h.pool.run_all()
    h.disk.fail("fsync_dir", OSError(errno.EIO, "fsync failed"))
    _, d = h.send(b"second\r\n")
    h.pool.run_all()
    assert failure_reply(d) == (451, "4.3.0")


def test_a_large_body_is_written_to_its_own_file_as_it_arrives(tmp_path: Path) -> None:
    h = Harness(tmp_path, inline_limit=1000, spill_chunk=500, max_buffered=4000)
    body = bytes(range(256)) * 400  # 100 KiB
    writer = h.store.begin(sample_envelope())
    part = tmp_path / "bodies" / f"{writer.queue_id}.part"
    peak = 0
    for i in range(0, len(body), 300):
        writer.write(body[i : i + 300])
        peak = max(peak, writer._buffered + writer._in_flight)
        h.pool.run_all()
    assert part.exists() and part.stat().st_size > len(body) - 500
    assert peak <= 4000 + 300  # bounded memory per message
    d = writer.commit()
    h.pool.run_all()
    assert result(d) == writer.queue_id
    assert not part.exists()
    assert (tmp_path / "bodies" / writer.queue_id).read_bytes() == body
    assert h.store.get(writer.queue_id).body_file == writer.queue_id
    assert h.body(writer.queue_id) == body
    h.crash_and_reopen()
    assert h.body(writer.queue_id) == body


def test_a_large_body_is_written_by_the_reactor_when_the_pool_falls_behind(tmp_path: Path) -> None:
    h = Harness(tmp_path, inline_limit=1000, spill_chunk=500, max_buffered=2000)
    h.pool.run_all()
    body = os.urandom(50_000)
    writer = h.store.begin(sample_envelope())
    for i in range(0, len(body), 100):
        writer.write(body[i : i + 100])  # the pool runs nothing meanwhile
        assert writer._buffered + writer._in_flight <= 2000 + 100
    assert h.store.stats.blocking_writes > 0
    d = writer.commit()
    h.pool.run_all()
    assert result(d) == writer.queue_id
    assert h.body(writer.queue_id) == body


def test_an_aborted_large_message_removes_its_file(tmp_path: Path) -> None:
    h = Harness(tmp_path, inline_limit=100, spill_chunk=100)
    writer = h.store.begin(sample_envelope())
    writer.write(b"x" * 1000)
    h.pool.run_all()
    assert os.listdir(tmp_path / "bodies") == [f"{writer.queue_id}.part"]
    writer.abort()
    h.pool.run_all()
    assert os.listdir(tmp_path / "bodies") == []


def test_a_failed_rename_of_a_large_body_answers_451_and_removes_it(tmp_path: Path) -> None:
    h = Harness(tmp_path, inline_limit=100, spill_chunk=100)
    h.pool.run_all()
    h.disk.fail("rename", OSError(errno.EIO, "rename failed"))
    _, d = h.send(b"y" * 1000, chunk=50)
    h.pool.run_all()
    assert failure_reply(d) == (451, "4.3.0")
    assert os.listdir(tmp_path / "bodies") == []
    assert len(h.crash_and_reopen()) == 0


def test_enospc_while_spilling_answers_452_at_commit(tmp_path: Path) -> None:
    h = Harness(tmp_path, inline_limit=100, spill_chunk=100)
    h.pool.run_all()
    h.disk.fail("write", OSError(errno.ENOSPC, "No space left on device"), after=1)
    _, d = h.send(b"z" * 2000, chunk=150)
    h.pool.run_all()
    assert failure_reply(d) == (452, "4.3.1")
    assert os.listdir(tmp_path / "bodies") == []


def test_a_failed_log_flush_removes_the_large_body(tmp_path: Path) -> None:
    h = Harness(tmp_path, inline_limit=100, spill_chunk=100)
    h.pool.run_all()
    h.disk.fail("fsync", OSError(errno.EIO, "I/O error"), after=1)  # the body's fsync passes, the log's fails
    _, d = h.send(b"w" * 1000)
    h.pool.run_all()
    assert failure_reply(d) == (451, "4.3.0")
    assert os.listdir(tmp_path / "bodies") == []
    assert len(h.crash_and_reopen()) == 0


def test_recipient_outcomes_are_recorded_durably(h: Harness) -> None:
    queue_id, d = h.send(b"hello\r\n", recipients=3)
    h.pool.run_all()
    message = h.store.get(queue_id)
    assert message.pending == (0, 1, 2) and message.next_attempt == 0.0
    updates = {
        0: message.recipients[0].delivered("250 2.0.0 Ok"),
        1: message.recipients[1].deferred(1_700_000_300.0, "451 4.7.1 try later"),
        2: message.recipients[2].bounced("550 5.1.1 no such user"),
    }
    recorded = h.store.record(queue_id, updates)
    assert h.store.get(queue_id).pending == (1,)  # visible at once
    h.pool.run_all()
    assert result(recorded) is None
    store = h.crash_and_reopen()
    message = store.get(queue_id)
    assert [r.status for r in message.recipients] == [
        RecipientStatus.DELIVERED, RecipientStatus.DEFERRED, RecipientStatus.BOUNCED,
    ]  # fmt: skip
    assert [r.attempts for r in message.recipients] == [1, 1, 1]
    assert message.recipients[1].reply == "451 4.7.1 try later"
    assert message.next_attempt == 1_700_000_300.0 and not message.finished
    with pytest.raises(IndexError):
        store.record(queue_id, {3: message.recipients[0]})


def test_a_removed_message_stays_removed(h: Harness) -> None:
    keep, d1 = h.send(b"keep\r\n")
    drop, d2 = h.send(b"drop\r\n")
    h.pool.run_all()
    removed = h.store.remove(drop)
    assert drop not in h.store
    h.pool.run_all()
    assert result(removed) is None
    with pytest.raises(KeyError):
        h.store.remove(drop)
    store = h.crash_and_reopen()
    assert [m.queue_id for m in store.messages()] == [keep]


def test_a_removed_large_message_loses_its_file_after_the_last_reader(tmp_path: Path) -> None:
    h = Harness(tmp_path, inline_limit=100, spill_chunk=100)
    queue_id, d = h.send(b"v" * 1000)
    h.pool.run_all()
    reader = h.store.open_body(queue_id)
    h.store.remove(queue_id)
    h.pool.run_all()
    assert os.listdir(tmp_path / "bodies") == [queue_id]
    first = reader.read(600)
    h.pool.run_all()
    assert result(first) == b"v" * 600
    rest = reader.read(600)
    h.pool.run_all()
    assert result(rest) == b"v" * 400
    end = reader.read()
    assert result(end) == b""
    reader.close()
    h.pool.run_all()
    assert os.listdir(tmp_path / "bodies") == []


def test_a_failed_removal_is_retried_with_the_next_flush(h: Harness) -> None:
    queue_id, d = h.send(b"delivered\r\n")
    h.pool.run_all()
    h.disk.fail("fsync", OSError(errno.EIO, "I/O error"))
    removed = h.store.remove(queue_id)
    h.pool.run_all()
    assert isinstance(failure_value(removed), OSError)
    other, d = h.send(b"next\r\n")
    h.pool.run_all()
    store = h.crash_and_reopen()
    assert [m.queue_id for m in store.messages()] == [other]


def failure_value(d: Deferred[Any]) -> BaseException:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out and isinstance(out[0], Failure)
    value = out[0].value
    assert value is not None
    return value.cause if hasattr(value, "cause") else value


def test_compaction_copies_live_messages_forward_and_removes_old_segments(tmp_path: Path) -> None:
    h = Harness(tmp_path, segment_size=400, keep_sealed=1)
    deferred_id, d = h.send(b"deferred for a long time\r\n" * 4)
    h.pool.run_all()
    for i in range(30):
        queue_id, d = h.send(f"quick {i}\r\n".encode())
        h.pool.run_all()
        h.store.remove(queue_id)
        h.pool.run_all()
    segments = sorted(os.listdir(tmp_path / "log"))
    assert len(segments) <= 3  # the current one, at most keep_sealed, and the one being emptied
    assert h.store.stats.moved >= 1 and h.store.stats.segments_removed >= 5
    assert h.body(deferred_id) == b"deferred for a long time\r\n" * 4
    store = h.crash_and_reopen()
    assert [m.queue_id for m in store.messages()] == [deferred_id]
    assert h.body(deferred_id) == b"deferred for a long time\r\n" * 4


def test_a_segment_removal_whose_directory_fsync_failed_is_completed_later(tmp_path: Path) -> None:
    h = Harness(tmp_path, segment_size=64)
    queue_id, d = h.send(b"one\r\n")
    h.pool.run_all()
    h.store.remove(queue_id)
    h.pool.run_next()  # the D record goes to a new segment; removing the first one is planned
    assert len(h.pool.jobs) == 1
    h.disk.fail("fsync_dir", OSError(errno.EIO, "fsync failed"))
    h.pool.run_all()
    assert segment_name(1) not in os.listdir(tmp_path / "log") and h.store.stats.segments_removed == 0
    h.send(b"two\r\n")
    h.pool.run_all()
    assert h.store.stats.segments_removed == 1


def test_a_segment_is_kept_while_a_reader_has_a_body_in_it(tmp_path: Path) -> None:
    h = Harness(tmp_path, segment_size=200, keep_sealed=0)
    queue_id, d = h.send(b"read me\r\n" * 10)
    h.pool.run_all()
    first_segment = min(os.listdir(tmp_path / "log"))
    reader = h.store.open_body(queue_id)
    h.store.remove(queue_id)
    for i in range(5):
        other, d = h.send(f"m{i}\r\n".encode())
        h.pool.run_all()
        h.store.remove(other)
        h.pool.run_all()
    assert first_segment in os.listdir(tmp_path / "log")
    chunk = reader.read()
    h.pool.run_all()
    assert result(chunk) == b"read me\r\n" * 10
    reader.close()
    h.pool.run_all()
    assert first_segment not in os.listdir(tmp_path / "log")


def test_a_second_process_cannot_open_the_spool(h: Harness) -> None:
    with pytest.raises(SpoolLocked):
        SpoolStore.open(h.directory, offloader=ManualOffloader())


def test_close_finishes_pending_commits_then_refuses_new_messages(h: Harness) -> None:
    queue_id, d = h.send(b"in flight\r\n")
    closed = h.store.close()
    with pytest.raises(SinkError) as refused:
        h.store.begin(sample_envelope())
    assert refused.value.reply.code == 451
    assert not closed.called
    h.pool.run_all()
    assert result(d) == queue_id and closed.called
    reopened = SpoolStore.open(h.directory, offloader=ManualOffloader())  # the lock was released
    assert queue_id in reopened


def test_queue_ids_stay_unique_when_the_clock_goes_back_across_a_restart(h: Harness) -> None:
    first, d = h.send(b"one\r\n")
    h.pool.run_all()
    h.store.kill()
    h.clock -= 0.001  # the next ID the generator makes is the one already queued
    h.pool = ManualOffloader()
    h.store = h.open()
    second, d = h.send(b"two\r\n")
    h.pool.run_all()
    assert second != first and {m.queue_id for m in h.store.messages()} == {first, second}


def test_on_queued_hears_of_each_committed_message(h: Harness) -> None:
    heard: list[str] = []
    h.store.on_queued.append(lambda m: heard.append(m.queue_id))
    sends = [h.send(f"{i}\r\n".encode()) for i in range(3)]
    h.pool.run_all()
    assert heard == [q for q, _ in sends]


def test_recovery_without_repair_changes_nothing(h: Harness) -> None:
    queue_id, d = h.send(b"x\r\n")
    h.pool.run_all()
    leftover = Path(h.directory) / "bodies" / "ZZZ.part"
    leftover.write_bytes(b"half")
    seen = recover(h.directory, repair=False)
    assert list(seen.messages) == [queue_id] and leftover.exists()


def test_the_inspection_command_lists_and_shows_messages(h: Harness, capsysbinary: Any) -> None:
    from relaybal.spool.__main__ import main

    queue_id, d = h.send(b"Subject: look\r\n\r\nat me\r\n", recipients=2)
    h.pool.run_all()
    assert main([h.directory]) == 0
    listing = capsysbinary.readouterr().out.decode()
    assert queue_id in listing and "<user1@example.org> queued/0" in listing and "-- 1 messages" in listing
    assert main([h.directory, queue_id]) == 0
    shown = capsysbinary.readouterr().out
    assert shown.endswith(b"\n\nSubject: look\r\n\r\nat me\r\n") and b"sender: <app@example.test>" in shown
    assert main([h.directory, "NOSUCHID"]) == 1


def test_committed_inline_bodies_are_read_from_memory(tmp_path: Path) -> None:
    h = Harness(tmp_path, body_cache=3000)  # room for two of the four bodies
    bodies = [bytes([65 + i]) * 1000 + b"\r\n" for i in range(4)]
    ids = []
    for body in bodies:
        queue_id, d = h.send(body)
        h.pool.run_all()
        assert d.called
        ids.append(queue_id)
    # The cache keeps the newest bodies within its size: the oldest is read from disk.
    for queue_id, body in zip(ids, bodies, strict=True):
        out: list[bytes] = []
        h.store.read_body(queue_id).addCallback(out.append)
        h.pool.run_all()
        assert out == [body]
    assert h.store.stats.cache_hits == 2
    h.store.remove(ids[-1])
    h.pool.run_all()
    assert ids[-1] not in h.store and h.store._cached == len(bodies[2])
