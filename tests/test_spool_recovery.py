"""Recovery after crashes: torn tails, leftovers, and a power cut before every disk call.

The durability claim under test: whatever was acknowledged (a commit's
queue ID, a removal, a recorded outcome) is there after any crash, intact;
whatever was never acknowledged is either absent or, for a commit in flight,
complete; nothing else appears.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from relaybal.relay.interfaces import Envelope
from relaybal.spool import RecipientState, SpoolStore
from relaybal.spool import format as fmt
from relaybal.spool.disk import segment_name
from relaybal.spool.recovery import recover
from relaybal.spool.testing import ManualOffloader, PowerCut, PowerCutDisk, sample_envelope


def fired(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out and not isinstance(out[0], Failure), out
    return out[0]


def body_of(store: SpoolStore, pool: ManualOffloader, queue_id: str) -> bytes:
    d = store.read_body(queue_id)
    pool.run_all()
    return bytes(fired(d))


# --- torn tails --------------------------------------------------------------------


@attrs.frozen
class Scenario:
    """A one-segment log and the queue after each of its records."""

    data: bytes
    ends: list[int]  # where each record ends
    after: list[dict[str, tuple[RecipientState, ...]]]  # the queue after 0, 1, 2, … records
    bodies: dict[str, bytes]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    directory = str(tmp_path_factory.mktemp("scenario"))
    pool = ManualOffloader()
    store = SpoolStore.open(directory, offloader=pool, clock=lambda: 1_700_000_000.0)
    pool.run_all()
    bodies: dict[str, bytes] = {}
    after: list[dict[str, tuple[RecipientState, ...]]] = [{}]

    def send(body: bytes) -> str:
        writer = store.begin(sample_envelope())
        writer.write(body)
        writer.commit()
        bodies[writer.queue_id] = body
        return writer.queue_id

    def snapshot() -> None:
        after.append({m.queue_id: m.recipients for m in store.messages()})

    a = send(b"Subject: a\r\n\r\nfirst\r\n")
    pool.run_all()
    snapshot()
    b = send(b"Subject: b\r\n\r\nsecond\r\n")
    send(b"Subject: c\r\n\r\nthird, in the same flush as the first\r\n")
    pool.run_all()  # c waited for b's flush: two flushes
    after.append({**after[-1], b: after[-1].get(b, store.get(b).recipients)})
    snapshot()
    store.record(a, {0: RecipientState().deferred(1_700_000_600.0, "421 busy")})
    pool.run_all()
    snapshot()
    store.remove(b)
    pool.run_all()
    snapshot()
    send(b"Subject: d\r\n\r\n" + b"last\r\n" * 50)
    pool.run_all()
    snapshot()
    store.kill()
    data = Path(directory, "log", segment_name(1)).read_bytes()
    with open(Path(directory, "log", segment_name(1)), "rb") as f:
        f.seek(fmt.SEGMENT_HEADER_SIZE)
        scan = fmt.SegmentScan()
        ends = [r.end for r in fmt.iter_records(f, fmt.SEGMENT_HEADER_SIZE, len(data), scan)]
    assert len(ends) == len(after) - 1 == 6
    return Scenario(data, ends, after, bodies)


def recover_bytes(tmp: Path, data: bytes) -> dict[str, tuple[RecipientState, ...]]:
    """Recover a spool whose only segment holds ``data``; check every body read back."""
    (tmp / "log").mkdir(parents=True, exist_ok=True)
    (tmp / "bodies").mkdir(exist_ok=True)
    (tmp / "log" / segment_name(1)).write_bytes(data)
    recovered = recover(str(tmp), repair=False)
    for message, location in recovered.messages.values():
        body = data[location.body_offset : location.body_offset + message.size]
        assert len(body) == message.size
    return {q: m.recipients for q, (m, _) in recovered.messages.items()}


def test_a_log_cut_at_any_offset_keeps_exactly_the_complete_records(
    scenario: Scenario, tmp_path: Path
) -> None:
    for cut in range(len(scenario.data) + 1):
        complete = sum(end <= cut for end in scenario.ends)
        assert recover_bytes(tmp_path / "s", scenario.data[:cut]) == scenario.after[complete], cut


def test_a_zero_filled_or_garbage_tail_is_ignored(scenario: Scenario, tmp_path: Path) -> None:
    rng = random.Random(7)
    for tail in (bytes(4096), bytes(5), rng.randbytes(3000), fmt.RECORD_MAGIC + rng.randbytes(40)):
        assert recover_bytes(tmp_path / "s", scenario.data + tail) == scenario.after[-1]


def test_a_damaged_record_ends_the_segment_there(scenario: Scenario, tmp_path: Path) -> None:
    rng = random.Random(11)
    starts = [fmt.SEGMENT_HEADER_SIZE, *scenario.ends[:-1]]
    for index, (start, end) in enumerate(zip(starts, scenario.ends, strict=True)):
        for _ in range(5):
            data = bytearray(scenario.data)
            data[rng.randrange(start, end)] ^= 1 << rng.randrange(8)
            assert recover_bytes(tmp_path / "s", bytes(data)) == scenario.after[index]


def test_leftovers_of_interrupted_work_are_removed(scenario: Scenario, tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    (directory / "log").mkdir(parents=True)
    (directory / "bodies").mkdir()
    (directory / "log" / segment_name(1)).write_bytes(scenario.data)
    (directory / "log" / (segment_name(2) + ".new")).write_bytes(b"RBSPOOL\n")
    (directory / "bodies" / "4ZQ7KXB2M1.part").write_bytes(b"half a body")
    (directory / "bodies" / "4ZQ7KXB2M2").write_bytes(b"a body nobody refers to")
    pool = ManualOffloader()
    store = SpoolStore.open(str(directory), offloader=pool)
    assert sorted(store.recovery.discarded) == [
        "bodies/4ZQ7KXB2M1.part", "bodies/4ZQ7KXB2M2", "log/000000000002.log.new",
    ]  # fmt: skip
    assert os.listdir(directory / "bodies") == []
    assert {m.queue_id: m.recipients for m in store.messages()} == scenario.after[-1]
    for queue_id in scenario.after[-1]:
        assert body_of(store, pool, queue_id) == scenario.bodies[queue_id]
    # The new segment is 2 (the leftover's number), and appends never go to segment 1.
    assert sorted(os.listdir(directory / "log")) == [segment_name(1), segment_name(2)]


def test_a_message_whose_body_file_is_gone_is_reported_damaged(tmp_path: Path) -> None:
    pool = ManualOffloader()
    store = SpoolStore.open(str(tmp_path), offloader=pool, inline_limit=10)
    writer = store.begin(sample_envelope())
    writer.write(b"a body too large for the log\r\n")
    writer.commit()
    pool.run_all()
    store.kill()
    os.truncate(tmp_path / "bodies" / writer.queue_id, 5)
    store = SpoolStore.open(str(tmp_path), offloader=ManualOffloader())
    assert store.recovery.damaged == (writer.queue_id,) and len(store) == 0


# --- a power cut before every disk call ---------------------------------------------


@attrs.define
class Tracker:
    """What the workload was told, to judge what recovery may show."""

    envelopes: dict[str, Envelope] = attrs.field(factory=dict)
    bodies: dict[str, bytes] = attrs.field(factory=dict)
    committing: set[str] = attrs.field(factory=set)
    acked: set[str] = attrs.field(factory=set)
    removing: set[str] = attrs.field(factory=set)
    removed: set[str] = attrs.field(factory=set)
    history: dict[str, list[tuple[RecipientState, ...]]] = attrs.field(factory=dict)
    acked_state: dict[str, int] = attrs.field(factory=dict)
    store: SpoolStore | None = None
    pool: ManualOffloader = attrs.field(factory=ManualOffloader)


ACTIONS = ["send", "send", "large", "abort", "record", "remove", "remove", "run", "run", "run"]


def workload(directory: str, disk: PowerCutDisk, seed: int, steps: int = 100) -> Tracker:
    """Commits (small, large, concurrent), aborts, outcomes, removals, compaction; until the power cut."""
    rng = random.Random(seed)
    t = Tracker()
    clock = [1_700_000_000.0]

    def now() -> float:
        clock[0] += 0.001
        return clock[0]

    try:
        t.store = store = SpoolStore.open(
            directory, offloader=t.pool, disk=disk, clock=now,
            segment_size=600, inline_limit=300, spill_chunk=200, max_buffered=600, keep_sealed=1,
        )  # fmt: skip
        for step in range(steps):
            action = rng.choice(ACTIONS)
            live = sorted(t.acked - t.removing)
            if action in ("send", "large", "abort"):
                size = rng.randint(1, 250) if action == "send" else rng.randint(301, 2000)
                body = rng.randbytes(size)
                envelope = sample_envelope(recipients=tuple(f"r{i}@x.test" for i in range(rng.randint(1, 3))))
                writer = store.begin(envelope)
                for i in range(0, size, 97):
                    writer.write(body[i : i + 97])
                    if rng.random() < 0.2 and t.pool.jobs:
                        t.pool.run_one_of(rng)
                if action == "abort":
                    writer.abort()
                    continue
                queue_id = writer.queue_id
                t.envelopes[queue_id] = envelope
                t.bodies[queue_id] = body
                t.committing.add(queue_id)
                t.history[queue_id] = [tuple(RecipientState() for _ in envelope.recipients)]
                t.acked_state[queue_id] = 0
                writer.commit().addCallback(t.acked.add)
            elif action == "record" and live:
                queue_id = rng.choice(live)
                message = store.get(queue_id)
                index = rng.randrange(len(message.recipients))
                state = message.recipients[index].deferred(now() + rng.randint(1, 999), f"4xx {step}")
                recorded = store.record(queue_id, {index: state})
                t.history[queue_id].append(store.get(queue_id).recipients)
                n = len(t.history[queue_id]) - 1
                recorded.addCallback(lambda _, q=queue_id, n=n: t.acked_state.__setitem__(q, n))
            elif action == "remove" and live:
                queue_id = rng.choice(live)
                t.removing.add(queue_id)
                store.remove(queue_id).addCallback(lambda _, q=queue_id: t.removed.add(q))
            elif t.pool.jobs:
                t.pool.run_one_of(rng)
        t.pool.run_all()
    except PowerCut:
        pass
    return t


def check_recovered(t: Tracker, directory: str, context: str) -> None:
    pool = ManualOffloader()
    store = SpoolStore.open(directory, offloader=pool)
    pool.run_all()
    present = {m.queue_id for m in store.messages()}
    must = t.acked - t.removing  # a removal in flight may or may not have been made durable
    assert must <= present, f"{context}: acknowledged messages lost: {sorted(must - present)}"
    assert present <= t.acked | t.committing, f"{context}: unknown messages {sorted(present - t.acked)}"
    assert not present & t.removed, f"{context}: removed messages came back"
    for queue_id in present:
        message = store.get(queue_id)
        assert message.envelope == t.envelopes[queue_id], context
        assert body_of(store, pool, queue_id) == t.bodies[queue_id], f"{context}: {queue_id} body"
        history = t.history[queue_id][t.acked_state[queue_id] :]
        assert message.recipients in history, f"{context}: {queue_id} state went back"
    store.kill()


# The simulation decides what survives, so a RAM-backed directory serves as well and runs
# the hundreds of scenarios much faster.
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@pytest.mark.parametrize("seed", [6, 13, 14])  # seeds whose workload includes compaction
def test_a_power_cut_before_any_disk_call_loses_nothing_acknowledged(seed: int) -> None:
    with tempfile.TemporaryDirectory(dir=SCRATCH) as root:
        full = PowerCutDisk(os.path.join(root, "trash-full"))
        t = workload(os.path.join(root, "full"), full, seed)
        assert t.store is not None and len(t.acked) >= 10 and t.removed and t.store.stats.moved
        assert t.store.stats.segments_removed and t.store.stats.spilled
        t.store.kill()
        check_recovered(t, os.path.join(root, "full"), "no crash")
        calls = full.calls
    for cut_at in range(calls + 1):
        with tempfile.TemporaryDirectory(dir=SCRATCH) as root:
            directory = os.path.join(root, "spool")
            disk = PowerCutDisk(os.path.join(root, "trash"), cut_at=cut_at)
            t = workload(directory, disk, seed)
            if t.store is not None:
                t.store.kill()
            lost = disk.cut(random.Random(cut_at), [directory])
            check_recovered(t, directory, f"seed {seed}, cut before call {cut_at}, lost {lost}")
