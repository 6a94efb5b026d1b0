"""Start-up recovery: rebuild the queue from the log segments and body files.

Segments are replayed oldest first; each stops at its first invalid record
(a torn tail: never acknowledged, see ``docs/design.rst``). What is left is
every message whose ``M`` record is valid and not followed by a ``D`` or
``C`` record for it, in the state its last records give. Leftovers of
interrupted work (``*.new`` segments, ``*.part`` bodies, body files no live
message names) are removed when ``repair`` is true.
"""

from __future__ import annotations

import os

import attrs
from twisted.logger import Logger

from relaybal.spool import format as fmt
from relaybal.spool.disk import (
    BODIES_DIR,
    LOG_DIR,
    NEW_SUFFIX,
    PART_SUFFIX,
    SEGMENT_SUFFIX,
    Disk,
    Location,
    make_dirs,
    segment_name,
)
from relaybal.spool.message import QueuedMessage

log = Logger()


@attrs.frozen
class RecoveryReport:
    """What recovery found, for the log and the operator.

    ``torn`` lists segments whose tail was cut off: (segment, valid bytes,
    why reading stopped). ``discarded`` names files removed as leftovers;
    ``damaged`` names queued messages dropped because their body file is
    missing or shorter than recorded (only possible if the disk lost
    synced data); ``bad_records`` counts records that passed their checksum
    but could not be decoded.
    """

    messages: int
    segments: tuple[int, ...]
    torn: tuple[tuple[int, int, str], ...] = ()
    discarded: tuple[str, ...] = ()
    damaged: tuple[str, ...] = ()
    bad_records: int = 0


@attrs.frozen
class Recovered:
    """The queue as the log describes it: messages (by queue ID, oldest first) and where they are."""

    messages: dict[str, tuple[QueuedMessage, Location]]
    segments: tuple[int, ...]
    #: each segment's size in bytes
    sizes: dict[int, int]
    report: RecoveryReport


def list_segments(log_dir: str) -> list[int]:
    segments = []
    for name in os.listdir(log_dir):
        stem, dot, _ = name.partition(".")
        if name.endswith(SEGMENT_SUFFIX) and dot and stem.isdigit() and name == segment_name(int(stem)):
            segments.append(int(stem))
    return sorted(segments)


def recover(directory: str, *, repair: bool = True, disk: Disk | None = None) -> Recovered:
    """Read the spool in ``directory``; with ``repair``, create what is missing and remove leftovers.

    Without ``repair`` nothing is changed (safe while a daemon owns the spool,
    for inspection).
    """
    disk = disk if disk is not None else Disk()
    log_dir = os.path.join(directory, LOG_DIR)
    bodies_dir = os.path.join(directory, BODIES_DIR)
    if repair:
        for path in (directory, log_dir, bodies_dir):
            make_dirs(disk, path)
    segments = list_segments(log_dir) if os.path.isdir(log_dir) else []
    live: dict[str, tuple[QueuedMessage, Location]] = {}
    torn: list[tuple[int, int, str]] = []
    sizes: dict[int, int] = {}
    bad_records = 0
    for seq in segments:
        path = os.path.join(log_dir, segment_name(seq))
        with open(path, "rb") as f:
            size = sizes[seq] = os.fstat(f.fileno()).st_size
            try:
                header_seq = fmt.decode_segment_header(f.read(fmt.SEGMENT_HEADER_SIZE))
            except fmt.FormatError as e:
                torn.append((seq, 0, str(e)))
                continue
            if header_seq != seq:
                torn.append((seq, 0, f"header says segment {header_seq}"))
                continue
            scan = fmt.SegmentScan()
            for record in fmt.iter_records(f, fmt.SEGMENT_HEADER_SIZE, size, scan):
                try:
                    _replay(live, seq, record)
                except fmt.FormatError as e:
                    bad_records += 1
                    log.error(
                        "spool: segment {seq} offset {offset}: {error}",
                        seq=seq,
                        offset=record.offset,
                        error=e,
                    )
            if scan.stopped is not None:
                torn.append((seq, scan.valid_end, scan.stopped))
    damaged: list[str] = []
    for queue_id, (message, _) in list(live.items()):
        if message.body_file is None:
            continue
        try:
            body_size = os.stat(os.path.join(bodies_dir, message.body_file)).st_size
        except FileNotFoundError:
            body_size = -1
        if body_size != message.size:
            damaged.append(queue_id)
            del live[queue_id]
            log.error("spool: {queue_id}: body file missing or short, message dropped", queue_id=queue_id)
    discarded: list[str] = []
    if repair:
        keep = {m.body_file for m, _ in live.values() if m.body_file is not None}
        leftovers = [os.path.join(log_dir, n) for n in os.listdir(log_dir) if n.endswith(NEW_SUFFIX)]
        leftovers += [
            os.path.join(bodies_dir, n)
            for n in os.listdir(bodies_dir)
            if n.endswith(PART_SUFFIX) or n not in keep
        ]
        for path in sorted(leftovers):
            disk.unlink(path)
            discarded.append(os.path.relpath(path, directory))
    ordered = dict(sorted(live.items()))
    report = RecoveryReport(
        messages=len(ordered),
        segments=tuple(segments),
        torn=tuple(torn),
        discarded=tuple(discarded),
        damaged=tuple(damaged),
        bad_records=bad_records,
    )
    return Recovered(ordered, tuple(segments), sizes, report)


def _replay(live: dict[str, tuple[QueuedMessage, Location]], seq: int, record: fmt.RawRecord) -> None:
    if record.kind == fmt.KIND_MESSAGE:
        message, body_start = fmt.decode_message(record.payload)
        body_offset = record.offset + fmt.RECORD_HEADER_SIZE + body_start
        live[message.queue_id] = (message, Location(seq, record.offset, body_offset))
    elif record.kind == fmt.KIND_STATE:
        queue_id, updates = fmt.decode_state(record.payload)
        entry = live.get(queue_id)
        if entry is None:
            return  # its message was in a segment already removed
        message, location = entry
        states = list(message.recipients)
        for index, state in updates.items():
            if not 0 <= index < len(states):
                raise fmt.FormatError(f"{queue_id}: no recipient {index}")
            states[index] = state
        live[queue_id] = (attrs.evolve(message, recipients=tuple(states)), location)
    else:  # KIND_DONE, KIND_CANCEL
        for queue_id in fmt.decode_ids(record.payload):
            live.pop(queue_id, None)
