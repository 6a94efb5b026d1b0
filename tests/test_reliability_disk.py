"""Disk suite: when the spool cannot store a message the client hears ``451``/``452``, never ``250``.

Two ways of breaking the disk:

- **Injected faults** (any machine): ``tests/soak/faulty_spool_server.py``
  runs the real ESMTP server over a loopback socket on a real spool whose
  :class:`~relaybal.spool.testing.FaultyDisk` fails the calls the test names
  (``write``/``fsync``/``fsync_dir``/``rename``/``open``, with ``EIO``,
  ``ENOSPC``, ``EDQUOT``, ``EROFS``). Afterwards the process is killed with SIGKILL and
  the spool read back: every message answered ``250`` is there intact, none
  that was refused is.
- **A real small file system** (root only): the daemon's ``state_dir`` is a
  tmpfs of a few MiB. Filling it gives ``452 4.3.1``; when space returns,
  messages are accepted again without a restart, and every accepted message
  is delivered once a gateway is there. (A read-only file system is only
  injected: Linux refuses to remount a file system read-only while the spool
  has its segment open for writing.)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import smtplib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import RelaybalDaemon, SmtpSink, free_port, require_root, wait_until
from soak.common import Arrivals, choose, crash_lines, duplicates, message_text, rcpt, record

from relaybal.spool.store import SpoolStore
from relaybal.spool.testing import ManualOffloader

ROOT = Path(__file__).resolve().parent.parent
SERVER = Path(__file__).resolve().parent / "soak" / "faulty_spool_server.py"


def send(port: int, number: int, size: int = 300) -> int:
    """Send message *number*; the final reply's code (0: the connection failed)."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo("disk.client.test")
            code, _ = client.mail("app@client.test")
            if code != 250:
                return code
            code, _ = client.rcpt(rcpt(number))
            if code != 250:
                return code
            code, _ = client.data(message_text(number, size).encode())
            return code
    except smtplib.SMTPDataError as e:
        return e.smtp_code
    except (OSError, smtplib.SMTPException):
        return 0


def message_number(body: bytes) -> int:
    subject = body.split(b"Subject: message ", 1)[1]
    return int(subject.split(b"\r\n", 1)[0])


# --------------------------------------------------------------------------- injected faults


class FaultyServer:
    """``faulty_spool_server.py`` as a child process."""

    def __init__(self, spool: Path, log: Path) -> None:
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        self.log = log
        with open(log, "ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, str(SERVER), str(spool)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=ROOT,
            )  # fmt: skip
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline().decode()
        assert ready.startswith("ready "), f"server did not start: {ready!r}; see {log}"
        self.port = int(ready.split()[1])

    def command(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().decode().strip()

    def fail(self, call: str, code: int, after: int = 0) -> None:
        assert self.command(f"fail {call} {code} {after}") == "ok"

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.command("stats"))
        return result

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def spool_contents(spool: Path) -> dict[int, bytes]:
    """Message number → body of every message in a spool no process has open."""
    pool = ManualOffloader()
    store = SpoolStore.open(str(spool), offloader=pool)
    try:
        out: dict[int, bytes] = {}
        for message in store.messages():
            bodies: list[Any] = []
            store.read_body(message.queue_id).addBoth(bodies.append)
            pool.run_all()
            assert isinstance(bodies[0], bytes), bodies
            out[message_number(bodies[0])] = bodies[0]
        return out
    finally:
        store.kill()


# (faults to inject, size of the messages that meet them, the replies those messages must get).
# A failed flush makes the next one start a new segment (open, write, fsync, rename, fsync of
# log/): faults of those calls are met by the message after the one that met the first fault.
FAULTS: list[tuple[list[tuple[str, int]], int, list[int]]] = [
    ([("fsync", errno.EIO)], 300, [451]),
    ([("write", errno.ENOSPC)], 300, [452]),
    ([("write", errno.EDQUOT)], 300, [452]),
    ([("fsync", errno.ENOSPC)], 300, [452]),
    ([("write", errno.EIO)], 300, [451]),
    ([("fsync", errno.EIO), ("fsync_dir", errno.EIO)], 300, [451, 451]),
    ([("fsync", errno.EIO), ("open", errno.EROFS)], 300, [451, 451]),
    ([("fsync", errno.EIO), ("rename", errno.EIO)], 300, [451, 451]),
    ([("fsync", errno.EIO), ("write", errno.ENOSPC, 1)], 300, [451, 452]),
    # A large body goes to a file of its own while it arrives, renamed at the commit.
    ([("open", errno.EROFS)], 200_000, [451]),
    ([("write", errno.ENOSPC)], 200_000, [452]),
    ([("fsync", errno.EIO)], 200_000, [451]),
    ([("rename", errno.EIO)], 200_000, [451]),
    ([("fsync_dir", errno.EIO)], 200_000, [451]),
]


def test_injected_disk_faults_get_451_or_452_never_250(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    server = FaultyServer(spool, tmp_path / "server.log")
    accepted: dict[int, int] = {}
    refused: dict[int, int] = {}
    number = 0
    rounds = choose(1, 5)
    try:
        for _ in range(rounds):
            for faults, size, expected in FAULTS:
                number += 1
                assert send(server.port, number) == 250
                accepted[number] = 300
                for call, code, *after in faults:
                    server.fail(call, code, *after)
                for wanted in expected:
                    number += 1
                    reply = send(server.port, number, size)
                    assert reply == wanted, (faults, size, number, reply)
                    refused[number] = reply
                # The spool goes on: the next message is stored.
                number += 1
                assert send(server.port, number, size) == 250, (faults, size)
                accepted[number] = size
        stats = server.stats()
    finally:
        server.kill()
    contents = spool_contents(spool)
    missing = set(accepted) - set(contents)
    back = set(refused) & set(contents)
    record(
        "disk-injected",
        faults=len(FAULTS) * rounds,
        sent=number,
        acknowledged=len(accepted),
        refused_451=sum(1 for r in refused.values() if r == 451),
        refused_452=sum(1 for r in refused.values() if r == 452),
        lost=len(missing),
        refused_but_stored=len(back),
        failed_flushes=stats["spool"]["failed_flushes"],
    )
    assert not missing, f"answered 250, not in the spool after SIGKILL: {sorted(missing)}"
    assert not back, f"refused, yet in the spool: {sorted(back)}"
    for n, size in accepted.items():
        # Intact: the body as sent, after relaybal's Received: header.
        assert contents[n].endswith(message_text(n, size).encode())
        assert contents[n].startswith(b"Received: ")
    # Each failure is one log line, never an unhandled exception.
    assert not crash_lines((tmp_path / "server.log").read_text())


# --------------------------------------------------------------------------- a real, small file system


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    require_root("mounting a tmpfs")
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                            capture_output=True, text=True, check=False)  # fmt: skip
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def fill(path: Path, leave: int) -> Path:
    """A ballast file that leaves about *leave* octets free on *path*'s file system."""
    ballast = path / "ballast"
    with open(ballast, "ab") as f:
        while free_bytes(path) > leave:
            try:
                f.write(b"\0" * min(1 << 20, max(4096, free_bytes(path) - leave)))
                f.flush()
            except OSError:
                break
    return ballast


def test_a_full_spool_refuses_then_recovers_when_space_returns(
    sink_factory: Callable[..., SmtpSink],
    relaybal_factory: Callable[..., RelaybalDaemon],
    peer_dir: Path,
) -> None:
    state = peer_dir / "state"
    with tmpfs(state, "8m"):
        gateway_port = free_port()  # nothing listens there yet: messages stay queued
        port = free_port()
        config = f"""
[global]
state_dir = "{state}"
hostname = "relay.test"

[frontend.apps]
mode = "relay"
listen = ["tcp:{port}:interface=127.0.0.1"]
backend = "gw"

[backend.gw]
retry_schedule = ["1s"]
[[backend.gw.server]]
name = "gw1"
address = "127.0.0.1:{gateway_port}"
"""
        daemon = relaybal_factory(config, wait_ports=[port])
        replies: dict[int, int] = {}
        counter = iter(range(1, 10**9))

        def send_some(count: int, size: int) -> list[int]:
            codes = []
            for _ in range(count):
                n = next(counter)
                replies[n] = send(port, n, size)
                codes.append(replies[n])
            return codes

        assert send_some(5, 2000) == [250] * 5
        # 1. Full: a ballast file leaves ~200 KiB; messages of 20 KB fill the rest.
        ballast = fill(state, 200 * 1024)
        codes = send_some(choose(40, 200), 20_000)
        full_codes = [c for c in codes if c != 250]
        assert full_codes, "the disk never filled up"
        assert set(full_codes) <= {451, 452}, codes
        assert 452 in full_codes, codes
        # Large bodies (their own files) meet the full disk too.
        assert set(send_some(3, 300_000)) <= {451, 452}
        # 2. Space returns (the ballast goes): messages are accepted again, no restart.
        ballast.unlink()
        wait_until(lambda: send_some(1, 2000) == [250], 30, "a message accepted after space returned")
        assert send_some(5, 2000) == [250] * 5
        # 3. A gateway appears: everything answered 250 is delivered; nothing refused is.
        sink = sink_factory(port=gateway_port)
        assert sink.dump_dir is not None
        arrivals = Arrivals([sink.dump_dir])
        accepted = {n for n, code in replies.items() if code == 250}
        refused = {n for n, code in replies.items() if code != 250}
        wait_until(lambda: accepted <= set(arrivals.delivered()), 120, "every accepted message delivered")
        seen = arrivals.delivered()
        record(
            "disk-tmpfs",
            sent=len(replies),
            acknowledged=len(accepted),
            refused_452=sum(1 for c in replies.values() if c == 452),
            refused_451=sum(1 for c in replies.values() if c == 451),
            delivered=len(accepted & set(seen)),
            duplicated=duplicates(seen),
            lost=len(accepted - set(seen)),
            refused_but_delivered=len(refused & set(seen)),
        )
        assert not refused & set(seen), sorted(refused & set(seen))
        assert not crash_lines(daemon.log()) or "No space left" in daemon.log(), crash_lines(daemon.log())[:5]
        daemon.stop()



def test_a_spool_full_of_its_own_messages_drains_when_a_gateway_returns(
    sink_factory: Callable[..., SmtpSink],
    relaybal_factory: Callable[..., RelaybalDaemon],
    peer_dir: Path,
) -> None:
    # No ballast: the spool itself fills the file system while no gateway is reachable. Delivering
    # then needs removal records, which need space: relaybal must still get out of it.
    state = peer_dir / "state"
    with tmpfs(state, "4m"):
        gateway_port = free_port()
        port = free_port()
        config = f"""
[global]
state_dir = "{state}"
hostname = "relay.test"

[frontend.apps]
mode = "relay"
listen = ["tcp:{port}:interface=127.0.0.1"]
backend = "gw"

[backend.gw]
retry_schedule = ["1s"]
[[backend.gw.server]]
name = "gw1"
address = "127.0.0.1:{gateway_port}"
"""
        daemon = relaybal_factory(config, wait_ports=[port])
        replies: dict[int, int] = {}
        number = 0
        while 452 not in replies.values() and number < 1000:
            number += 1
            replies[number] = send(port, number, 30_000)
        accepted = {n for n, code in replies.items() if code == 250}
        assert 452 in replies.values() and accepted
        # Keep knocking while it is full: more 452s, no 250.
        for _ in range(5):
            number += 1
            replies[number] = send(port, number, 30_000)
            assert replies[number] in (451, 452)
        sink = sink_factory(port=gateway_port)
        assert sink.dump_dir is not None
        arrivals = Arrivals([sink.dump_dir])
        wait_until(lambda: accepted <= set(arrivals.delivered()), 120, "every accepted message delivered")
        # The delivered messages' space comes back: new messages are accepted again.
        def one_more() -> bool:
            nonlocal number
            number += 1
            replies[number] = send(port, number, 30_000)
            return replies[number] == 250

        wait_until(one_more, 60, "a message accepted after the drain")
        accepted.add(number)
        wait_until(lambda: accepted <= set(arrivals.delivered()), 60, "the last message delivered")
        seen = arrivals.delivered()
        record(
            "disk-self-full",
            sent=number,
            acknowledged=len(accepted),
            refused_452=sum(1 for c in replies.values() if c == 452),
            delivered=len(accepted & set(seen)),
            duplicated=duplicates(seen),
            lost=len(accepted - set(seen)),
        )
        assert not crash_lines(daemon.log()), crash_lines(daemon.log())[:5]
        daemon.stop()
