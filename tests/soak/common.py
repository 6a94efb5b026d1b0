"""Load generation, accounting and figures for the reliability suites.

Every suite has a short version (``make test``) and a long one (``make soak``,
which sets ``RELAYBAL_SOAK=1``). The knobs:

``RELAYBAL_SOAK=1``
    run the long version;
``RELAYBAL_SOAK_SECONDS``
    how long each long suite keeps its load up (default 120);
``RELAYBAL_SOAK_SEED``
    the seed of the random choices (kill moments, faults); printed by every
    suite, so a run can be repeated;
``RELAYBAL_FIGURES``
    a file to which every suite appends its figures as one JSON line (what
    ``docs/reliability.rst`` quotes).

Messages are numbered: message *n* goes to ``<n>user@example.test``, so the
sinks' dump files say exactly which messages arrived and how often; a bounce
(from ``<>`` to the sender) names the message it is about in its
``Final-Recipient:`` field.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import smtplib
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import attrs

SOAK_ENV = "RELAYBAL_SOAK"
SECONDS_ENV = "RELAYBAL_SOAK_SECONDS"
SEED_ENV = "RELAYBAL_SOAK_SEED"
FIGURES_ENV = "RELAYBAL_FIGURES"

SENDER = "app@client.test"
RCPT_DOMAIN = "example.test"
_RCPT = re.compile(rb"<(\d+)user@example\.test>")
_FINAL_RECIPIENT = re.compile(rb"Final-Recipient: *rfc822; *(\d+)user@example\.test", re.IGNORECASE)


# --------------------------------------------------------------------------- knobs


def soaking() -> bool:
    """Whether the long (``make soak``) versions run."""
    return os.environ.get(SOAK_ENV) == "1"


def load_seconds(short: float) -> float:
    """How long a suite keeps its load up: *short* in ``make test``, ``RELAYBAL_SOAK_SECONDS`` in a soak."""
    if not soaking():
        return short
    return float(os.environ.get(SECONDS_ENV, "120"))


def choose(short: int, long: int) -> int:
    """*short* in ``make test``, *long* in a soak."""
    return long if soaking() else short


def seeded_random(suite: str) -> tuple[random.Random, int]:
    """A random generator for *suite* and its seed (``RELAYBAL_SOAK_SEED`` or a fresh one)."""
    raw = os.environ.get(SEED_ENV)
    seed = int(raw) if raw else random.SystemRandom().randrange(1 << 32)
    print(f"{suite}: seed {seed} (repeat with {SEED_ENV}={seed})")
    return random.Random(seed), seed


def record(suite: str, **figures: object) -> None:
    """Print *figures* and append them to ``$RELAYBAL_FIGURES`` (one JSON line) if set."""
    shown = " ".join(f"{key}={value}" for key, value in figures.items())
    print(f"FIGURES {suite}: {shown}")
    path = os.environ.get(FIGURES_ENV)
    if path:
        line = {"suite": suite, "soak": soaking(), "time": int(time.time()), **figures}
        with open(path, "a") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- daemon helpers


def rss_kib(pid: int) -> int:
    """Resident memory of process *pid* in KiB (``VmRSS`` in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def crash_lines(log: str) -> list[str]:
    """Lines of a daemon log that show an unexpected exception."""
    return [line for line in log.splitlines() if "Traceback" in line or "Unhandled Error" in line]


def gateways_toml(ports: Sequence[int], backend: str = "gw", options: str = "") -> str:
    """A ``[backend.NAME]`` table with one server per port."""
    servers = "".join(
        f'[[backend.{backend}.server]]\nname = "gw{i + 1}"\naddress = "127.0.0.1:{port}"\n'
        for i, port in enumerate(ports)
    )
    return f"[backend.{backend}]\n{options}\n{servers}"


# --------------------------------------------------------------------------- senders


def rcpt(number: int) -> str:
    """The recipient of message *number*."""
    return f"{number}user@{RCPT_DOMAIN}"


def message_text(number: int, size: int = 300) -> str:
    """The body of message *number*, about *size* octets of CRLF lines."""
    head = f"Subject: message {number}\r\nMessage-ID: <{number}@client.test>\r\n\r\n"
    line = f"line of message {number} " + "x" * 40 + "\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


class Tally:
    """What the senders saw, per message number; thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.attempted = 0
        self.accepted: set[int] = set()
        # A final reply other than 250 (the client knows it must retry or give up).
        self.refused: dict[int, int] = {}
        # The connection went away between the end of the body and the reply: the
        # message may or may not have been taken.
        self.unknown: set[int] = set()

    def snapshot(self) -> tuple[int, int, int, int]:
        with self.lock:
            return self.attempted, len(self.accepted), len(self.refused), len(self.unknown)


class NumberedSender(threading.Thread):
    """Sends numbered one-recipient messages over reused connections until stopped.

    Numbers come from a shared counter; ``pause`` seconds between messages
    make a steady load instead of as fast as the daemon accepts. A connection that fails (refused,
    reset, the daemon killed) is opened again after a short pause, so a
    sender rides through restarts. Each message's outcome goes to *tally*.
    """

    def __init__(
        self,
        port: int,
        numbers: Iterator[int],
        tally: Tally,
        stop: threading.Event,
        *,
        source: str = "127.0.0.1",
        size: int = 300,
        per_connection: int = 50,
        limit: int | None = None,
        pause: float = 0.0,
    ) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.numbers = numbers
        self.tally = tally
        self.stop_event = stop
        self.source = source
        self.size = size
        self.per_connection = per_connection
        self.limit = limit
        self.pause = pause
        self.errors: Counter[str] = Counter()
        self._lock = threading.Lock()

    def run(self) -> None:
        sent = 0
        while not self.stop_event.is_set() and (self.limit is None or sent < self.limit):
            try:
                client = smtplib.SMTP(timeout=30, source_address=(self.source, 0))
                client.connect("127.0.0.1", self.port)
                client.ehlo("sender.client.test")
            except (OSError, smtplib.SMTPException) as e:
                self.errors[type(e).__name__] += 1
                time.sleep(0.05)
                continue
            try:
                for _ in range(self.per_connection):
                    if self.stop_event.is_set() or (self.limit is not None and sent >= self.limit):
                        break
                    self._one(client, next(self.numbers))
                    sent += 1
                    if self.pause:
                        self.stop_event.wait(self.pause)
                with contextlib.suppress(OSError, smtplib.SMTPException):
                    client.quit()
            except (OSError, smtplib.SMTPException) as e:
                self.errors[type(e).__name__] += 1
            finally:
                client.close()

    def _one(self, client: smtplib.SMTP, number: int) -> None:
        with self.tally.lock:
            self.tally.attempted += 1
        code, _ = client.mail(SENDER)
        if code != 250:
            self._refused(number, code)
            client.rset()
            return
        code, _ = client.rcpt(rcpt(number))
        if code not in (250, 251):
            self._refused(number, code)
            client.rset()
            return
        client.putcmd("data")
        code, _ = client.getreply()
        if code != 354:
            self._refused(number, code)
            return
        body = smtplib.quotedata(message_text(number, self.size)).encode() + b"\r\n.\r\n"
        client.send(body)
        try:
            code, _ = client.getreply()
        except (OSError, smtplib.SMTPServerDisconnected):
            with self.tally.lock:
                self.tally.unknown.add(number)
            raise
        if code == 250:
            with self.tally.lock:
                self.tally.accepted.add(number)
        else:
            self._refused(number, code)

    def _refused(self, number: int, code: int) -> None:
        with self.tally.lock:
            self.tally.refused[number] = code


def number_source(start: int = 1) -> Iterator[int]:
    """A thread-safe counter of message numbers."""
    lock = threading.Lock()
    counter = itertools.count(start)

    def numbers() -> Iterator[int]:
        while True:
            with lock:
                n = next(counter)
            yield n

    return numbers()


class Load:
    """Several :class:`NumberedSender` threads sharing one counter and one tally."""

    def __init__(self, port: int, senders: int = 6, **options: object) -> None:
        self.tally = Tally()
        self.stop_event = threading.Event()
        numbers = number_source()
        self.threads = [
            NumberedSender(port, numbers, self.tally, self.stop_event, **options)  # type: ignore[arg-type]
            for _ in range(senders)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(60)
        alive = [t for t in self.threads if t.is_alive()]
        assert not alive, f"{len(alive)} sender threads did not stop"

    def errors(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for thread in self.threads:
            total.update(thread.errors)
        return total


# --------------------------------------------------------------------------- arrivals


@attrs.frozen
class Dump:
    """What one smtp-sink dump file tells: numbered recipients and, for a bounce, the messages it is about."""

    numbers: tuple[int, ...]
    bounce_of: tuple[int, ...]
    complete: bool


def read_dump(path: Path) -> Dump:
    data = path.read_bytes()
    header, _, body = data.partition(b"\nReceived:")
    mail_args = [line for line in header.split(b"\n") if line.startswith(b"X-Mail-Args:")]
    # smtp-sink records MAIL's arguments without "FROM:": "<>" for the null sender.
    is_bounce = bool(mail_args) and mail_args[0].split(b":", 1)[1].strip().startswith(b"<>")
    rcpt_lines = [line for line in header.split(b"\n") if line.startswith(b"X-Rcpt-Args:")]
    numbers = tuple(int(m.group(1)) for line in rcpt_lines if (m := _RCPT.search(line)))
    bounce_of = tuple(int(m) for m in _FINAL_RECIPIENT.findall(body)) if is_bounce else ()
    # smtp-sink ends a finished dump with an empty line after the message.
    return Dump(() if is_bounce else numbers, bounce_of, data.endswith(b"\n\n"))


class Arrivals:
    """Counts what reached a set of dump directories; re-reads only files that changed."""

    def __init__(self, directories: Iterable[Path] = ()) -> None:
        self.directories = list(directories)
        self._cache: dict[Path, tuple[int, Dump]] = {}

    def add(self, directory: Path) -> None:
        self.directories.append(directory)

    def dumps(self, directories: Iterable[Path] | None = None) -> list[Dump]:
        out: list[Dump] = []
        for directory in self.directories if directories is None else directories:
            for path in directory.rglob("*"):
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    continue
                if not path.is_file():
                    continue
                cached = self._cache.get(path)
                if cached is None or cached[0] != size:
                    cached = (size, read_dump(path))
                    self._cache[path] = cached
                out.append(cached[1])
        return out

    def delivered(self, directories: Iterable[Path] | None = None) -> Counter[int]:
        """How many times each numbered message arrived (bounces excluded)."""
        seen: Counter[int] = Counter()
        for dump in self.dumps(directories):
            seen.update(dump.numbers)
        return seen

    def bounced(self, directories: Iterable[Path] | None = None) -> Counter[int]:
        """How many bounces arrived for each numbered message."""
        seen: Counter[int] = Counter()
        for dump in self.dumps(directories):
            seen.update(dump.bounce_of)
        return seen


def duplicates(seen: Counter[int]) -> int:
    """Arrivals beyond the first."""
    return sum(count - 1 for count in seen.values() if count > 1)


# --------------------------------------------------------------------------- raw sockets


def connect_from(source: str, port: int, timeout: float = 10.0) -> socket.socket:
    """A TCP connection to 127.0.0.1:*port* from *source* (an address in 127.0.0.0/8)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def read_until_closed(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Everything the peer sends until it closes (or *limit* octets, or the socket's timeout)."""
    out = bytearray()
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while len(out) < limit:
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
    return bytes(out)


def read_reply(sock: socket.socket) -> bytes:
    """One complete SMTP reply (all its lines), or what came before the peer closed."""
    out = bytearray()
    while True:
        if out.endswith(b"\r\n"):
            last = out[:-2].rsplit(b"\r\n", 1)[-1]
            if last[3:4] != b"-":
                return bytes(out)
        chunk = sock.recv(65536)
        if not chunk:
            return bytes(out)
        out += chunk


def read_replies(sock: socket.socket, count: int) -> list[bytes]:
    """The next *count* complete replies (pipelined replies may arrive in one read)."""
    buffer = bytearray()
    replies: list[bytes] = []
    start = 0
    while len(replies) < count:
        end = buffer.find(b"\r\n", start)
        if end < 0:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer += chunk
            continue
        line = bytes(buffer[start : end + 2])
        start = end + 2
        if line[3:4] != b"-":
            replies.append(bytes(buffer[: start]))
            del buffer[:start]
            start = 0
    if buffer:
        raise AssertionError(f"more than {count} replies: {bytes(buffer)[:200]!r}")
    return replies
