"""The spool's on-disk format: segment headers, log records and their JSON metadata.

Pure encoding and decoding, no file system calls (the reader takes any binary
file object). See the "The spool" section of ``docs/design.rst`` for the
layout and the durability argument.

A segment file starts with a 20-byte header::

    b"RBSPOOL\\n"  segment number (u64, big-endian)  CRC-32 of the 16 bytes before (u32)

and is followed by records, each::

    b"\\x1eR"  kind (1 byte)  version (1 byte)  payload length (u32)  CRC-32 (u32)  payload

The CRC covers kind, version, length and payload, so a torn or zero-filled
tail never reads as a record. Kinds:

``M`` (message)
    u32 length of a JSON object (queue ID, envelope, recipient states, size,
    where the body is), the JSON, then the body itself when it is kept in the
    log (``"body": "log"``). A later ``M`` record for the same queue ID
    replaces an earlier one (compaction copies live messages forward).
``S`` (state)
    JSON ``{"id": …, "rcpt": [[index, status, attempts, next_attempt, reply], …]}``:
    new states for some recipients.
``D`` (done) and ``C`` (cancelled)
    JSON ``{"ids": […]}``: the messages are gone (delivered/bounced and
    removed; or their commit failed and they were never acknowledged).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any, Final

import attrs

from relaybal.relay.interfaces import Envelope, TLSInfo
from relaybal.smtp.wire import Mailbox
from relaybal.spool.message import QueuedMessage, RecipientState, RecipientStatus

SEGMENT_MAGIC: Final = b"RBSPOOL\n"
_SEGMENT_HEADER = struct.Struct(">8sQI")
SEGMENT_HEADER_SIZE: Final = _SEGMENT_HEADER.size

RECORD_MAGIC: Final = b"\x1eR"
_RECORD_HEADER = struct.Struct(">2scBII")
RECORD_HEADER_SIZE: Final = _RECORD_HEADER.size
RECORD_VERSION: Final = 1
_U32 = struct.Struct(">I")

KIND_MESSAGE: Final = b"M"
KIND_STATE: Final = b"S"
KIND_DONE: Final = b"D"
KIND_CANCEL: Final = b"C"
KINDS: Final = frozenset((KIND_MESSAGE, KIND_STATE, KIND_DONE, KIND_CANCEL))

#: No record is larger: a length field above it is damage, not a record.
MAX_RECORD: Final = 1 << 30


class FormatError(ValueError):
    """Bytes that are not a valid header, record or metadata object."""


def encode_segment_header(seq: int) -> bytes:
    head = SEGMENT_MAGIC + seq.to_bytes(8, "big")
    return head + _U32.pack(zlib.crc32(head))


def decode_segment_header(data: bytes) -> int:
    """The segment number in a segment header; :class:`FormatError` if it is not one."""
    if len(data) < SEGMENT_HEADER_SIZE:
        raise FormatError("short segment header")
    magic, seq, crc = _SEGMENT_HEADER.unpack_from(data)
    if magic != SEGMENT_MAGIC or crc != zlib.crc32(data[:16]):
        raise FormatError("not a spool segment")
    return int(seq)


def encode_record(kind: bytes, *pieces: bytes) -> bytes:
    """A record of ``kind`` whose payload is the concatenation of ``pieces``."""
    length = sum(len(p) for p in pieces)
    crc = zlib.crc32(kind + bytes((RECORD_VERSION,)) + _U32.pack(length))
    for piece in pieces:
        crc = zlib.crc32(piece, crc)
    return b"".join((_RECORD_HEADER.pack(RECORD_MAGIC, kind, RECORD_VERSION, length, crc), *pieces))


@attrs.frozen
class RawRecord:
    """A record read back: its kind, where it starts in the file, and its payload."""

    kind: bytes
    offset: int
    payload: bytes

    @property
    def end(self) -> int:
        return self.offset + RECORD_HEADER_SIZE + len(self.payload)


@attrs.define
class SegmentScan:
    """What :func:`scan_records` found: the valid records and where validity ended.

    ``valid_end`` is the offset just past the last valid record; ``stopped``
    says why reading stopped there (None at a clean end of file).
    """

    records: list[RawRecord] = attrs.field(factory=list)
    valid_end: int = SEGMENT_HEADER_SIZE
    stopped: str | None = None


def iter_records(f: IO[bytes], start: int, size: int, scan: SegmentScan) -> Iterator[RawRecord]:
    """Yield the valid records of a segment file from ``start``, stopping at the first invalid one.

    ``f`` is positioned at ``start``; ``size`` is the file's size. Records
    are written in order and only ever acknowledged after a flush that
    covers everything before them, so nothing acknowledged lies beyond the
    first invalid record (the durability argument in ``docs/design.rst``).
    ``scan`` is updated as reading goes.
    """
    offset = start
    scan.valid_end = start
    while True:
        if offset == size:
            return
        header = f.read(RECORD_HEADER_SIZE)
        if len(header) < RECORD_HEADER_SIZE:
            scan.stopped = "torn record header"
            return
        magic, kind, version, length, crc = _RECORD_HEADER.unpack(header)
        if magic != RECORD_MAGIC or kind not in KINDS or version != RECORD_VERSION:
            scan.stopped = "bad record header"
            return
        if length > MAX_RECORD or offset + RECORD_HEADER_SIZE + length > size:
            scan.stopped = "torn record"
            return
        payload = f.read(length)
        if len(payload) < length or zlib.crc32(payload, zlib.crc32(header[2:8])) != crc:
            scan.stopped = "checksum mismatch"
            return
        record = RawRecord(kind, offset, payload)
        offset = record.end
        scan.valid_end = offset
        yield record


# --- JSON metadata ---------------------------------------------------------------

BODY_IN_LOG: Final = "log"


def _mailbox(value: Any) -> Mailbox:
    local, domain = value
    return Mailbox(str(local), str(domain))


def _state_out(state: RecipientState) -> list[Any]:
    return [state.status.value, state.attempts, state.next_attempt, state.reply]


def _state_in(value: Any) -> RecipientState:
    status, attempts, next_attempt, reply = value
    return RecipientState(RecipientStatus(status), int(attempts), float(next_attempt), reply)


def envelope_to_json(envelope: Envelope) -> dict[str, Any]:
    """The envelope as a JSON object (in ``M`` records and ``relaybal queue export`` archives).

    ``client_name`` is written only when there is one, so a spool (or an
    archive) of a frontend without ``reverse_lookup`` is as before (earlier
    versions ignore the key); :func:`envelope_from_json` takes a missing one as None.
    """
    tls = envelope.tls
    obj: dict[str, Any] = {
        "sender": [envelope.sender.local, envelope.sender.domain],
        "rcpt": [[r.local, r.domain] for r in envelope.recipients],
        "params": dict(envelope.mail_params),
        "smtputf8": envelope.smtputf8,
        "body_type": envelope.body_type,
        "frontend": envelope.frontend,
        "client": list(envelope.client) if envelope.client is not None else None,
        "helo": envelope.helo,
        "tls": [tls.version, tls.cipher, tls.bits] if tls is not None else None,
        "user": envelope.user,
        "received_at": envelope.received_at,
    }
    if envelope.client_name is not None:
        obj["client_name"] = envelope.client_name
    return obj


def envelope_from_json(obj: Mapping[str, Any]) -> Envelope:
    client = obj["client"]
    tls = obj["tls"]
    client_name = obj.get("client_name")  # absent from records written before it existed
    if client_name is not None and not isinstance(client_name, str):
        raise TypeError(f"client_name is not a string: {client_name!r}")
    return Envelope(
        sender=_mailbox(obj["sender"]),
        recipients=tuple(_mailbox(r) for r in obj["rcpt"]),
        mail_params=dict(obj["params"]),
        smtputf8=bool(obj["smtputf8"]),
        body_type=str(obj["body_type"]),
        frontend=str(obj["frontend"]),
        client=(str(client[0]), int(client[1])) if client is not None else None,
        helo=obj["helo"],
        tls=TLSInfo(str(tls[0]), str(tls[1]), int(tls[2])) if tls is not None else None,
        user=obj["user"],
        received_at=float(obj["received_at"]),
        client_name=client_name,
    )


def encode_message_meta(message: QueuedMessage) -> bytes:
    """The JSON part of ``message``'s ``M`` record."""
    meta = {
        "id": message.queue_id,
        "env": envelope_to_json(message.envelope),
        "state": [_state_out(s) for s in message.recipients],
        "size": message.size,
        "body": message.body_file if message.body_file is not None else BODY_IN_LOG,
    }
    return json.dumps(meta, separators=(",", ":")).encode("ascii")


def encode_message_record(meta: bytes, body: bytes = b"") -> tuple[bytes, int]:
    """An ``M`` record from its JSON part and body, and where the body starts inside the record."""
    prefix = _U32.pack(len(meta))
    return encode_record(KIND_MESSAGE, prefix, meta, body), RECORD_HEADER_SIZE + len(prefix) + len(meta)


def encode_message(message: QueuedMessage, body: bytes = b"") -> tuple[bytes, int]:
    """An ``M`` record for ``message`` and where its body starts inside the record.

    ``body`` is the body kept in the log (empty when ``message.body_file``
    names a file instead).
    """
    return encode_message_record(encode_message_meta(message), body)


def decode_message(payload: bytes) -> tuple[QueuedMessage, int]:
    """The message in an ``M`` payload and where its body starts inside the payload."""
    try:
        (length,) = _U32.unpack_from(payload)
        meta = json.loads(payload[4 : 4 + length])
        body = meta["body"]
        envelope = envelope_from_json(meta["env"])
        states = tuple(_state_in(s) for s in meta["state"])
        message = QueuedMessage(
            queue_id=str(meta["id"]),
            envelope=envelope,
            recipients=states,
            size=int(meta["size"]),
            body_file=None if body == BODY_IN_LOG else str(body),
        )
    except (struct.error, ValueError, KeyError, TypeError, IndexError) as e:
        raise FormatError(f"bad message record: {e}") from e
    if len(states) != len(envelope.recipients):
        raise FormatError("recipient states do not match the recipients")
    body_start = 4 + length
    if message.body_file is None and len(payload) - body_start != message.size:
        raise FormatError("body length does not match the size")
    return message, body_start


def encode_state(queue_id: str, updates: Mapping[int, RecipientState]) -> bytes:
    obj = {"id": queue_id, "rcpt": [[i, *_state_out(s)] for i, s in sorted(updates.items())]}
    return encode_record(KIND_STATE, json.dumps(obj, separators=(",", ":")).encode("ascii"))


def decode_state(payload: bytes) -> tuple[str, dict[int, RecipientState]]:
    try:
        obj = json.loads(payload)
        return str(obj["id"]), {int(u[0]): _state_in(u[1:]) for u in obj["rcpt"]}
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise FormatError(f"bad state record: {e}") from e


def encode_ids(kind: bytes, queue_ids: Sequence[str]) -> bytes:
    """A ``D`` or ``C`` record for ``queue_ids``."""
    return encode_record(kind, json.dumps({"ids": list(queue_ids)}, separators=(",", ":")).encode("ascii"))


def decode_ids(payload: bytes) -> list[str]:
    try:
        return [str(q) for q in json.loads(payload)["ids"]]
    except (ValueError, KeyError, TypeError) as e:
        raise FormatError(f"bad id list record: {e}") from e
