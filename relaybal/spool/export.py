"""Moving a queue between nodes: ``relaybal queue export`` and ``relaybal queue import``.

The spool stays local to each node, as with every MTA. When a node is lost
for good its queued mail waits on its disk; an operator who can read that
disk (the node itself in rescue mode, or the disk mounted elsewhere) moves
the mail to another node:

1. ``relaybal queue export --spool /var/lib/relaybal/spool -o queue.tar --remove``
   writes every queued message (envelope, body, and the state of each
   recipient still pending; delivered and bounced recipients are left out)
   to a portable archive, syncs it, and then, with ``--remove``, marks the
   messages done in the source spool so the old node, should it come back,
   does not deliver them a second time;
2. ``relaybal queue import -c /etc/relaybal/relaybal.toml queue.tar`` on the
   target node loads the archive into its spool; the messages keep their
   arrival time (``max_queue_time`` counts from it), their attempts so far
   (``max_attempts``) and last reply, and whether they were held; the others
   are due at once (their wait was for the lost node, not for the gateways).

Both are offline operations: the spool they open must not be in use (the
spool's lock says so; a running daemon makes them fail with a clear message
rather than wait), so stop the daemon on the target for the import (a few
seconds: it drains, and on restart recovers its spool and the imported mail
with it). Importing twice is harmless: a message already in the target spool
(same arrival time, sender, recipients, client and size) is skipped, so an
interrupted import can simply be run again.

The archive is a POSIX tar file (gzip-compressed when its name ends in
``.gz`` or ``.tgz``) that ordinary tools can list::

    relaybal-queue/manifest.json      format, version, counts, where it came from
    relaybal-queue/ID.json            envelope (pending recipients only), their states, size, SHA-256
    relaybal-queue/ID.eml             the body, exactly as spooled (relaybal's Received: first)
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import socket
import sys
import tarfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import IO, Any, ParamSpec, TypeVar

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from relaybal.relay.interfaces import Envelope
from relaybal.spool import format as fmt
from relaybal.spool.message import QueuedMessage, RecipientState, RecipientStatus
from relaybal.spool.store import SpoolLocked, SpoolStore

P = ParamSpec("P")
T = TypeVar("T")

FORMAT = "relaybal-queue-export"
VERSION = 1
TOP = "relaybal-queue"
#: Messages committed per spool flush during an import (one fdatasync each batch).
IMPORT_BATCH = 256


class QueueMoveError(Exception):
    """The export or import cannot be done; the message says why and what to do."""


@attrs.frozen
class ExportReport:
    messages: int
    recipients: int
    bytes: int
    removed: int
    skipped_finished: int


@attrs.frozen
class ImportReport:
    messages: int
    recipients: int
    duplicates: int
    queue_ids: tuple[str, ...]


class _Offloader:
    """Runs the spool's blocking jobs on this thread when told to (an offline tool has no reactor)."""

    def __init__(self) -> None:
        self._jobs: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def submit(self, f: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        d: Deferred[T] = Deferred()
        self._jobs.append((lambda: f(*args, **kwargs), d))
        return d

    def stop(self) -> None:
        self.run()

    def run(self) -> None:
        """Run jobs, and the jobs they lead to, until none is left."""
        while self._jobs:
            job, d = self._jobs.pop(0)
            try:
                result = job()
            except Exception:
                d.errback(Failure())
            else:
                d.callback(result)


def _wait(offloader: _Offloader, d: Deferred[T]) -> T:
    """Drive the spool until ``d`` fires; its result, or its exception raised."""
    out: list[Any] = []
    d.addBoth(out.append)
    offloader.run()
    if not out:
        raise QueueMoveError("the spool did not finish an operation (internal error)")
    result = out[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result  # type: ignore[no-any-return]


def _open(directory: str, offloader: _Offloader, *, create: bool) -> SpoolStore:
    if not create and not os.path.isdir(directory):
        raise QueueMoveError(f"{directory}: no such spool directory")
    try:
        return SpoolStore.open(directory, offloader=offloader)
    except SpoolLocked:
        raise QueueMoveError(
            f"{directory} is in use by a running relaybal: stop it first (the spool may only be "
            "moved while no daemon delivers from it)"
        ) from None
    except OSError as e:
        raise QueueMoveError(f"{directory}: cannot open the spool: {e}") from None


def _close(store: SpoolStore, offloader: _Offloader) -> None:
    _wait(offloader, store.close())


def _pending_only(message: QueuedMessage) -> tuple[Envelope, tuple[RecipientState, ...]]:
    """The envelope with only the recipients still to deliver, and their states."""
    pending = message.pending
    envelope = attrs.evolve(
        message.envelope, recipients=tuple(message.envelope.recipients[i] for i in pending)
    )
    return envelope, tuple(message.recipients[i] for i in pending)


def _state_json(state: RecipientState) -> list[Any]:
    return [state.status.value, state.attempts, state.next_attempt, state.reply]


def _state_from(value: Any) -> RecipientState:
    status, attempts, next_attempt, reply = value
    return RecipientState(RecipientStatus(status), int(attempts), float(next_attempt), reply)


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(f"{TOP}/{name}")
    info.size = len(data)
    info.mtime = int(mtime)
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


def _writer(output: str, part: str | None, stdout: IO[bytes] | None) -> tarfile.TarFile:
    """The archive being written: to ``part`` (gzip for a ``.gz``/``.tgz`` ``output``) or to stdout."""
    if part is None:
        return tarfile.open(fileobj=stdout if stdout is not None else sys.stdout.buffer, mode="w|")
    if output.endswith((".gz", ".tgz")):
        return tarfile.open(part, mode="w:gz")
    return tarfile.open(part, mode="w")


def export_queue(
    spool_dir: str,
    output: str,
    *,
    ids: Collection[str] = (),
    remove: bool = False,
    hostname: str | None = None,
    stdout: IO[bytes] | None = None,
) -> ExportReport:
    """Write the queued messages of ``spool_dir`` (all, or ``ids``) to the archive ``output``.

    ``output`` ``-`` writes to ``stdout``; otherwise the archive is written
    next to its final name, synced, then renamed, so a finished file is a
    complete one. With ``remove`` the exported messages are then marked done
    in the source spool (only after the archive is safely on disk).
    """
    if remove and output == "-":
        raise QueueMoveError("--remove needs an output file (the archive must be on disk before removal)")
    offloader = _Offloader()
    store = _open(spool_dir, offloader, create=False)
    try:
        messages = store.messages()
        if ids:
            known = {m.queue_id for m in messages}
            missing = sorted(set(ids) - known)
            if missing:
                raise QueueMoveError(f"not in the queue: {', '.join(missing)}")
            messages = [m for m in messages if m.queue_id in ids]
        chosen = [m for m in messages if m.pending]
        recipients = sum(len(m.pending) for m in chosen)
        now = time.time()
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "exported_at": now,
            "hostname": hostname or socket.getfqdn(),
            "spool": os.path.abspath(spool_dir),
            "messages": len(chosen),
            "recipients": recipients,
            "ids": [m.queue_id for m in chosen],
        }
        part = None if output == "-" else f"{output}.part"
        total = 0
        with _writer(output, part, stdout) as tar:
            _add(tar, "manifest.json", json.dumps(manifest, indent=1).encode(), now)
            for message in chosen:
                body = _wait(offloader, store.read_body(message.queue_id))
                if len(body) != message.size:
                    size = message.size
                    raise QueueMoveError(f"{message.queue_id}: {len(body)} bytes of body, expected {size}")
                envelope, states = _pending_only(message)
                meta = {
                    "queue_id": message.queue_id,
                    "envelope": fmt.envelope_to_json(envelope),
                    "states": [_state_json(s) for s in states],
                    "size": message.size,
                    "sha256": hashlib.sha256(body).hexdigest(),
                }
                _add(tar, f"{message.queue_id}.json", json.dumps(meta).encode(), envelope.received_at)
                _add(tar, f"{message.queue_id}.eml", body, envelope.received_at)
                total += len(body)
        if part is not None:
            _sync_and_rename(part, output)
        removed = 0
        if remove:
            for message in chosen:
                _wait(offloader, store.remove(message.queue_id))
                removed += 1
        return ExportReport(
            messages=len(chosen),
            recipients=recipients,
            bytes=total,
            removed=removed,
            skipped_finished=len(messages) - len(chosen),
        )
    finally:
        _close(store, offloader)


def _sync_and_rename(part: str, final: str) -> None:
    fd = os.open(part, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(part, final)
    directory = os.path.dirname(os.path.abspath(final))
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@attrs.frozen
class _Archived:
    queue_id: str
    envelope: Envelope
    states: tuple[RecipientState, ...]
    body: bytes


def read_archive(path: str) -> tuple[Mapping[str, Any], list[_Archived]]:
    """The manifest and messages of an export archive; :class:`QueueMoveError` if it is not one."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                if not member.isfile() or not member.name.startswith(f"{TOP}/"):
                    raise QueueMoveError(f"{path}: unexpected member {member.name!r} (not a queue export)")
                extracted = tar.extractfile(member)
                assert extracted is not None
                files[member.name[len(TOP) + 1 :]] = extracted.read()
    except (OSError, tarfile.TarError, EOFError) as e:
        raise QueueMoveError(f"{path}: cannot read the archive: {e}") from None
    try:
        manifest = json.loads(files.pop("manifest.json"))
    except (KeyError, ValueError):
        raise QueueMoveError(f"{path}: no readable manifest.json (not a relaybal queue export)") from None
    if manifest.get("format") != FORMAT:
        raise QueueMoveError(f"{path}: not a relaybal queue export")
    if manifest.get("version") != VERSION:
        version = manifest.get("version")
        raise QueueMoveError(f"{path}: export version {version} (this relaybal reads {VERSION})")
    messages = []
    for queue_id in manifest.get("ids", []):
        try:
            meta = json.loads(files[f"{queue_id}.json"])
            body = files[f"{queue_id}.eml"]
            envelope = fmt.envelope_from_json(meta["envelope"])
            states = tuple(_state_from(s) for s in meta["states"])
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise QueueMoveError(f"{path}: message {queue_id} is incomplete or damaged: {e!r}") from None
        if hashlib.sha256(body).hexdigest() != meta.get("sha256") or len(body) != meta.get("size"):
            raise QueueMoveError(f"{path}: the body of {queue_id} does not match its checksum")
        if len(states) != len(envelope.recipients) or not states:
            raise QueueMoveError(f"{path}: message {queue_id} has no pending recipient states")
        messages.append(_Archived(queue_id, envelope, states, body))
    if len(messages) != manifest.get("messages"):
        raise QueueMoveError(f"{path}: the manifest counts {manifest.get('messages')} messages")
    return manifest, messages


def _due_now(states: Sequence[RecipientState]) -> list[RecipientState]:
    """Deferred recipients become due now; held ones (``next_attempt`` infinite) stay held."""
    return [s if s.next_attempt == math.inf else attrs.evolve(s, next_attempt=0.0) for s in states]


def _fingerprint(envelope: Envelope, size: int) -> tuple[Any, ...]:
    return (
        envelope.received_at,
        str(envelope.sender),
        tuple(str(r) for r in envelope.recipients),
        envelope.client,
        size,
    )


def import_queue(
    archive: str,
    spool_dir: str,
    *,
    frontend: str | None = None,
    known_frontends: Collection[str] | None = None,
) -> ImportReport:
    """Load the archive into the spool in ``spool_dir`` (created if missing).

    ``frontend`` replaces the relay frontend name the messages were received
    by (the target node delivers a message through the backend of that
    frontend); ``known_frontends``, when given, are the target's relay
    frontends with a spool, and a message naming another one is refused
    before anything is written.
    """
    manifest, messages = read_archive(archive)
    if frontend is not None:
        messages = [attrs.evolve(m, envelope=attrs.evolve(m.envelope, frontend=frontend)) for m in messages]
    if known_frontends is not None:
        unknown = sorted({m.envelope.frontend for m in messages} - set(known_frontends))
        if unknown:
            known = ", ".join(sorted(known_frontends)) or "none"
            raise QueueMoveError(
                f"the messages were received by frontend {', '.join(unknown)}, which the target "
                f"configuration has no spooling relay frontend of (known: {known}); "
                "name one with --frontend"
            )
    offloader = _Offloader()
    store = _open(spool_dir, offloader, create=True)
    try:
        present = {_fingerprint(m.envelope, m.size) for m in store.messages()}
        todo = []
        duplicates = 0
        for m in messages:
            fingerprint = _fingerprint(m.envelope, len(m.body))
            if fingerprint in present:
                duplicates += 1
                continue
            present.add(fingerprint)
            todo.append(m)
        new_ids: list[str] = []
        for start in range(0, len(todo), IMPORT_BATCH):
            batch = todo[start : start + IMPORT_BATCH]
            commits = []
            for m in batch:
                writer = store.begin(m.envelope)
                writer.write(m.body)
                commits.append(writer.commit())
            offloader.run()  # one flush (one fdatasync) for the batch
            ids = [_wait(offloader, d) for d in commits]
            records = []
            for m, queue_id in zip(batch, ids, strict=True):
                updates = {i: s for i, s in enumerate(_due_now(m.states)) if s != RecipientState()}
                if updates:
                    records.append(store.record(queue_id, updates))
            offloader.run()
            for d in records:
                _wait(offloader, d)
            new_ids.extend(ids)
        return ImportReport(
            messages=len(new_ids),
            recipients=sum(len(m.states) for m in todo),
            duplicates=duplicates,
            queue_ids=tuple(new_ids),
        )
    finally:
        _close(store, offloader)


# --------------------------------------------------------------------------- the CLI


def spool_of(config_path: str) -> tuple[str, list[str]] | int:
    """The spool directory and the spooling relay frontends of a configuration (or an exit status)."""
    from relaybal.config import load_or_report

    config = load_or_report(config_path)
    if isinstance(config, int):
        return 2
    frontends = [
        name for name, fc in config.frontends.items() if fc.mode == "relay" and fc.delivery == "spool"
    ]
    return os.path.join(config.global_.state_dir, "spool"), frontends


def export_command(
    config_path: str, spool: str | None, output: str | None, ids: Sequence[str], remove: bool
) -> int:
    """``relaybal queue export``: exit status 0, 1 (cannot), 2 (usage)."""
    if output is None:
        print("relaybal queue export: give the archive with -o FILE (or -o - for stdout)", file=sys.stderr)
        return 2
    if spool is None:
        found = spool_of(config_path)
        if isinstance(found, int):
            return found
        spool = found[0]
    try:
        report = export_queue(spool, output, ids=ids, remove=remove)
    except QueueMoveError as e:
        print(f"relaybal queue export: {e}", file=sys.stderr)
        return 1
    removed = f"; {report.removed} removed from {spool}" if remove else f"; {spool} is unchanged"
    print(
        f"exported {report.messages} messages ({report.recipients} pending recipients, "
        f"{report.bytes} bytes) to {output}{removed}",
        file=sys.stderr if output == "-" else sys.stdout,
    )
    return 0


def import_command(config_path: str, spool: str | None, archives: Sequence[str], frontend: str | None) -> int:
    """``relaybal queue import``: exit status 0, 1 (cannot), 2 (usage)."""
    if not archives:
        print("relaybal queue import: name the archive(s) to import", file=sys.stderr)
        return 2
    known: list[str] | None = None
    if spool is None:
        found = spool_of(config_path)
        if isinstance(found, int):
            return found
        spool, known = found
    status = 0
    for archive in archives:
        try:
            report = import_queue(archive, spool, frontend=frontend, known_frontends=known)
        except QueueMoveError as e:
            print(f"relaybal queue import: {e}", file=sys.stderr)
            status = 1
            continue
        skipped = f"; {report.duplicates} already there, skipped" if report.duplicates else ""
        print(
            f"imported {report.messages} messages ({report.recipients} recipients) from {archive} "
            f"into {spool}{skipped}"
        )
    return status
