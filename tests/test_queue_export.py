"""``relaybal queue export/import``: moving a stopped node's queue to another node."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from relaybal.relay.interfaces import Envelope
from relaybal.smtp.wire import Mailbox
from relaybal.spool import export
from relaybal.spool.export import QueueMoveError, export_queue, import_queue, read_archive
from relaybal.spool.message import QueuedMessage, RecipientState, RecipientStatus
from relaybal.spool.recovery import recover
from relaybal.spool.store import SpoolStore
from relaybal.spool.testing import ManualOffloader

HELD = math.inf
BIG = b"X" * 70 + b"\r\n"


def envelope(n: int, recipients: int, frontend: str = "apps") -> Envelope:
    return Envelope(
        sender=Mailbox(f"sender{n}", "client.test"),
        recipients=tuple(Mailbox(f"r{n}.{i}", "example.test") for i in range(recipients)),
        mail_params={"BODY": "8BITMIME"},
        smtputf8=False,
        body_type="8BITMIME",
        frontend=frontend,
        client=("192.0.2.7", 40000 + n),
        helo="client.test",
        tls=None,
        user=None,
        received_at=1_700_000_000.0 + n + 0.25,
    )


class Spool:
    """A spool driven by hand (ManualOffloader), as a node would have left it."""

    def __init__(self, directory: Path) -> None:
        self.offloader = ManualOffloader()
        self.store = SpoolStore.open(str(directory), offloader=self.offloader)

    def add(self, env: Envelope, body: bytes, states: dict[int, RecipientState] | None = None) -> str:
        writer = self.store.begin(env)
        for start in range(0, len(body), 4096):
            writer.write(body[start : start + 4096])
        d = writer.commit()
        ids: list[str] = []
        d.addCallback(ids.append)
        self.offloader.run_all()
        assert ids
        if states:
            self.store.record(ids[0], states)
            self.offloader.run_all()
        return ids[0]

    def close(self) -> None:
        d = self.store.close()
        self.offloader.run_all()
        assert d.called


def queued(directory: Path) -> list[QueuedMessage]:
    return [m for m, _ in recover(str(directory), repair=False).messages.values()]


def body_of(directory: Path, queue_id: str) -> bytes:
    offloader = ManualOffloader()
    store = SpoolStore.open(str(directory), offloader=offloader)
    out: list[bytes] = []
    store.read_body(queue_id).addCallback(out.append)
    offloader.run_all()
    store.close()
    offloader.run_all()
    return out[0]


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A spool with: a new message; one half delivered and deferred; a held one; a large one
    (body in its own file); one finished (every recipient delivered, not removed yet)."""
    directory = tmp_path / "node1" / "spool"
    spool = Spool(directory)
    bodies = {}
    delivered = RecipientState().delivered("250 2.0.0 ok")
    deferred = RecipientState().deferred(1_700_000_900.0, "451 4.3.0 try later")
    bodies["new"] = b"Subject: new\r\n\r\nHello.\r\n"
    spool.add(envelope(1, 1), bodies["new"])
    bodies["partial"] = b"Subject: partial\r\n\r\nHalf.\r\n"
    spool.add(
        envelope(2, 3),
        bodies["partial"],
        {0: delivered, 1: deferred, 2: RecipientState().bounced("550 5.1.1 no such user")},
    )
    bodies["held"] = b"Subject: held\r\n\r\nWait.\r\n"
    held = RecipientState(next_attempt=HELD)
    spool.add(envelope(3, 2), bodies["held"], {0: held, 1: held})
    bodies["large"] = b"Subject: large\r\n\r\n" + BIG * 3000  # ~216 KB: past the inline limit
    spool.add(envelope(4, 1), bodies["large"])
    spool.add(envelope(5, 1), b"Subject: done\r\n\r\nx\r\n", {0: delivered})
    spool.close()
    return directory, bodies


def by_sender(messages: list[QueuedMessage]) -> dict[str, QueuedMessage]:
    return {m.envelope.sender.local: m for m in messages}


def test_export_writes_pending_recipients_and_bodies_and_import_restores_them(
    tmp_path: Path, source: tuple[Path, dict[str, bytes]]
) -> None:
    directory, bodies = source
    archive = tmp_path / "queue.tar"
    report = export_queue(str(directory), str(archive), hostname="node1.test")
    assert (report.messages, report.recipients, report.skipped_finished, report.removed) == (4, 5, 1, 0)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names[0] == "relaybal-queue/manifest.json" and len(names) == 1 + 2 * 4
    manifest, archived = read_archive(str(archive))
    assert manifest["hostname"] == "node1.test" and manifest["messages"] == 4
    assert len(queued(directory)) == 5  # without --remove the source is unchanged

    target = tmp_path / "node2" / "spool"
    result = import_queue(str(archive), str(target))
    assert (result.messages, result.recipients, result.duplicates) == (4, 5, 0)
    moved = by_sender(queued(target))
    assert set(moved) == {"sender1", "sender2", "sender3", "sender4"}
    partial = moved["sender2"]
    # Only the recipient still to deliver came along, with its attempts and last reply, due now.
    assert [str(r) for r in partial.envelope.recipients] == ["r2.1@example.test"]
    assert partial.recipients == (RecipientState(RecipientStatus.DEFERRED, 1, 0.0, "451 4.3.0 try later"),)
    assert all(s.next_attempt == HELD for s in moved["sender3"].recipients)
    assert moved["sender1"].recipients == (RecipientState(),)
    for name, key in (("sender1", "new"), ("sender2", "partial"), ("sender3", "held"), ("sender4", "large")):
        message = moved[name]
        assert message.envelope.received_at == by_sender(queued(directory))[name].envelope.received_at
        assert message.envelope.client == by_sender(queued(directory))[name].envelope.client
        assert body_of(target, message.queue_id) == bodies[key]
    assert moved["sender4"].body_file is not None  # a large body gets its own file again


def test_importing_twice_skips_what_is_already_there(
    tmp_path: Path, source: tuple[Path, dict[str, bytes]]
) -> None:
    directory, _ = source
    archive = tmp_path / "queue.tar.gz"
    export_queue(str(directory), str(archive))
    target = tmp_path / "node2" / "spool"
    assert import_queue(str(archive), str(target)).messages == 4
    again = import_queue(str(archive), str(target))
    assert (again.messages, again.duplicates) == (0, 4)
    assert len(queued(target)) == 4


def test_export_with_remove_empties_the_source_after_the_archive_is_written(
    tmp_path: Path, source: tuple[Path, dict[str, bytes]]
) -> None:
    directory, _ = source
    archive = tmp_path / "queue.tar"
    report = export_queue(str(directory), str(archive), remove=True)
    assert report.removed == 4
    assert [m.envelope.sender.local for m in queued(directory)] == ["sender5"]  # the finished one stays
    assert not (tmp_path / "queue.tar.part").exists()
    assert len(read_archive(str(archive))[1]) == 4


def test_export_of_some_ids(tmp_path: Path, source: tuple[Path, dict[str, bytes]]) -> None:
    directory, _ = source
    first = sorted(m.queue_id for m in queued(directory))[0]
    archive = tmp_path / "one.tar"
    assert export_queue(str(directory), str(archive), ids=[first]).messages == 1
    with pytest.raises(QueueMoveError, match="not in the queue: NOPE"):
        export_queue(str(directory), str(archive), ids=["NOPE"])


def test_a_spool_in_use_is_refused(tmp_path: Path, source: tuple[Path, dict[str, bytes]]) -> None:
    directory, _ = source
    running = Spool(directory)  # a daemon holds the lock
    try:
        with pytest.raises(QueueMoveError, match="in use by a running relaybal: stop it first"):
            export_queue(str(directory), str(tmp_path / "q.tar"))
    finally:
        running.close()
    archive = tmp_path / "q.tar"
    export_queue(str(directory), str(archive))
    target = Spool(tmp_path / "node2" / "spool")
    try:
        with pytest.raises(QueueMoveError, match="in use by a running relaybal"):
            import_queue(str(archive), str(tmp_path / "node2" / "spool"))
    finally:
        target.close()


def test_a_damaged_archive_imports_nothing(tmp_path: Path, source: tuple[Path, dict[str, bytes]]) -> None:
    directory, _ = source
    archive = tmp_path / "q.tar"
    export_queue(str(directory), str(archive))
    damaged = tmp_path / "damaged.tar"
    with tarfile.open(archive) as tar, tarfile.open(damaged, "w") as out:
        for member in tar:
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if member.name.endswith(".eml") and b"Half." in data:
                data = data.replace(b"Half.", b"Full.")
            out.addfile(member, io.BytesIO(data))
    target = tmp_path / "node2" / "spool"
    with pytest.raises(QueueMoveError, match="does not match its checksum"):
        import_queue(str(damaged), str(target))
    assert not target.exists() or queued(target) == []
    (tmp_path / "junk.tar").write_bytes(b"not a tar file at all")
    with pytest.raises(QueueMoveError, match="cannot read the archive"):
        import_queue(str(tmp_path / "junk.tar"), str(target))


def test_frontend_names_are_checked_and_can_be_replaced(
    tmp_path: Path, source: tuple[Path, dict[str, bytes]]
) -> None:
    directory, _ = source
    archive = tmp_path / "q.tar"
    export_queue(str(directory), str(archive))
    target = tmp_path / "node2" / "spool"
    with pytest.raises(QueueMoveError, match="frontend apps, which the target configuration has no spooling"):
        import_queue(str(archive), str(target), known_frontends=["inbound"])
    assert not target.exists() or queued(target) == []
    report = import_queue(str(archive), str(target), frontend="inbound", known_frontends=["inbound"])
    assert report.messages == 4
    assert {m.envelope.frontend for m in queued(target)} == {"inbound"}


def test_the_cli_reads_the_spool_from_the_configuration(
    tmp_path: Path, source: tuple[Path, dict[str, bytes]]
) -> None:
    directory, _ = source
    target_state = tmp_path / "node2"
    config = tmp_path / "node2.toml"
    config.write_text(
        f'[global]\nstate_dir = "{target_state}"\n'
        '[frontend.apps]\nmode = "relay"\nlisten = ["tcp:0"]\nbackend = "gw"\n'
        '[backend.gw]\n[[backend.gw.server]]\nname = "gw1"\naddress = "127.0.0.1:2525"\n'
    )
    archive = tmp_path / "q.tar"
    relaybal = [sys.executable, "-m", "relaybal.cli"]
    done = subprocess.run(
        [*relaybal, "queue", "export", "--spool", str(directory), "-o", str(archive), "--remove"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "exported 4 messages (5 pending recipients" in done.stdout and "4 removed" in done.stdout

    def run(*words: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*relaybal, "queue", *words], capture_output=True, text=True, check=False)

    done = run("import", "-c", str(config), str(archive))  # options before or after the action
    assert done.returncode == 0, done.stderr
    assert f"imported 4 messages (5 recipients) from {archive} into {target_state}/spool" in done.stdout
    done = run("export", "--spool", str(directory))
    assert done.returncode == 2 and "-o FILE" in done.stderr
    done = run("import", "--spool", str(directory), str(tmp_path / "missing.tar"))
    assert done.returncode == 1 and "cannot read the archive" in done.stderr
    done = run("import", "--bogus", str(archive))
    assert done.returncode == 2 and "unrecognized arguments: --bogus" in done.stderr


def test_manifest_is_plain_json(tmp_path: Path, source: tuple[Path, dict[str, bytes]]) -> None:
    directory, _ = source
    archive = tmp_path / "q.tar"
    export_queue(str(directory), str(archive))
    with tarfile.open(archive) as tar:
        member = tar.extractfile("relaybal-queue/manifest.json")
        assert member is not None
        manifest = json.loads(member.read())
    assert manifest["format"] == export.FORMAT and manifest["version"] == export.VERSION
    assert manifest["recipients"] == 5
