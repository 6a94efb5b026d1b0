"""Hostile clients against the real daemon: limits hold, others are served, memory stays bounded.

One ``twistd relaybal`` runs for the whole module with a relay frontend
(spool, STARTTLS) and a splice frontend, both with short limits so that the
attacks end quickly:

=======================  ======================================================
``timeout_client``       2 s idle (relay and splice)
``timeout_data``         2 s idle inside a message body
``timeout_session``      6 s for a whole relay session
``proxy_timeout``        1 s for the PROXY header, from 127.0.0.9 only
``maxconn``              200 per frontend
``maxconn_per_client``   20 per client address
=======================  ======================================================

Each attack runs while a *canary* (a well-behaved client on 127.0.0.2 for the
relay and 127.0.0.3 for the splice) keeps sending real messages; the test
asserts that the canary completed a transaction on each frontend while the
attack was holding its resources (no timing assertion), that the daemon's
resident memory grew by less than a generous bound, and (at the end of every
test) that the daemon is still running with no traceback in its log.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import re
import resource
import shutil
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from peers import PeerRegistry, RelaybalDaemon, SmtpSink, free_port, make_peer_dir, wait_until
from soak.common import (
    choose,
    connect_from,
    crash_lines,
    read_replies,
    read_reply,
    read_until_closed,
    record,
    rss_kib,
)

from relaybal.proxyproto import V2_SIGNATURE, encode_v1, encode_v2
from relaybal.relay.testing import write_self_signed

TRUSTED = "127.0.0.9"  # the only address allowed to send a PROXY header
MAXCONN = 200
PER_CLIENT = 20
# Memory a single attack may add to the daemon's resident set (generous: Python's allocator
# keeps what it once used; an unbounded buffer would blow far past it).
RSS_BOUND_KIB = 64 * 1024
_ENHANCED = re.compile(rb"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}( |$)")

pytestmark = pytest.mark.peers


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, 65536), hard))


class Daemon:
    """The module's daemon, its gateway sinks and its ports."""

    def __init__(self, directory: Path, registry: PeerRegistry) -> None:
        self.directory = directory
        self.gateway = SmtpSink(directory / "gateway", name="gateway", registry=registry)
        self.spliced = SmtpSink(directory / "spliced", name="spliced", registry=registry)
        # smtp-sink is one process: a client that floods it without reading its replies stalls
        # it for everyone. The patient splice frontend (the floods' target) has a sink of its own.
        self.victim = SmtpSink(directory / "victim", name="victim", registry=registry, dump=False)
        cert, key = write_self_signed(str(directory))
        self.relay_port = free_port()
        self.splice_port = free_port()
        self.patient_relay_port = free_port()
        self.patient_splice_port = free_port()
        self.flood_splice_port = free_port()
        limits = f"""
accept_proxy = ["{TRUSTED}"]
proxy_timeout = "1s"
maxconn = {MAXCONN}
maxconn_per_client = {PER_CLIENT}
"""
        config = f"""
[global]
state_dir = "{directory}/state"
hostname = "relay.test"

[frontend.relay]
mode = "relay"
listen = ["tcp:{self.relay_port}:interface=127.0.0.1:backlog=4096"]
backend = "gw"
{limits}
timeout_client = "2s"
timeout_data = "2s"
timeout_session = "6s"
tls = {{ certificate = "{cert}", key = "{key}" }}

[frontend.splice]
mode = "splice"
listen = ["tcp:{self.splice_port}:interface=127.0.0.1:backlog=4096"]
backend = "spliced"
{limits}
timeout_client = "2s"

# The same with the default timeouts, for the connection counting tests.
[frontend.patient-relay]
mode = "relay"
listen = ["tcp:{self.patient_relay_port}:interface=127.0.0.1:backlog=4096"]
backend = "gw"
{limits}

[frontend.patient-splice]
mode = "splice"
listen = ["tcp:{self.patient_splice_port}:interface=127.0.0.1:backlog=4096"]
backend = "victim"
{limits}

# The floods' target: short timeouts, and a server of its own (see the victim sink).
[frontend.flood-splice]
mode = "splice"
listen = ["tcp:{self.flood_splice_port}:interface=127.0.0.1:backlog=4096"]
backend = "victim"
{limits}
timeout_client = "2s"

[backend.gw]
[[backend.gw.server]]
name = "gw1"
address = "127.0.0.1:{self.gateway.port}"

[backend.spliced]
[[backend.spliced.server]]
name = "s1"
address = "127.0.0.1:{self.spliced.port}"

[backend.victim]
timeout_server = "2s"
[[backend.victim.server]]
name = "v1"
address = "127.0.0.1:{self.victim.port}"
"""
        self.process = RelaybalDaemon(directory / "relaybal", config, registry=registry)
        self.process.start([self.relay_port, self.splice_port, self.patient_relay_port,
                            self.patient_splice_port, self.flood_splice_port])  # fmt: skip

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def rss(self) -> int:
        return rss_kib(self.pid)

    def check_alive(self) -> None:
        assert self.process.running, f"the daemon died:\n{self.process.log()[-3000:]}"
        crashes = crash_lines(self.process.log())
        assert not crashes, crashes[:5]


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    _raise_fd_limit()
    registry = PeerRegistry()
    directory = make_peer_dir(prefix="relaybal-hostile-")
    ok = False
    try:
        yield Daemon(directory, registry)
        ok = True
    finally:
        registry.stop_all()
        if ok and os.environ.get("RELAYBAL_KEEP_PEER_DIRS") != "1":
            shutil.rmtree(directory, ignore_errors=True)
        else:
            print(f"hostile-clients peer directory kept: {directory}")


class Canary(threading.Thread):
    """A well-behaved client sending one message per connection to both frontends, over and over."""

    def __init__(self, daemon: Daemon) -> None:
        super().__init__(daemon=True)
        self.target = daemon
        self.stop_event = threading.Event()
        self.relayed = 0
        self.spliced = 0
        self.failures: list[str] = []
        self.numbers = itertools.count(1)

    def _send(self, port: int, source: str) -> bool:
        n = next(self.numbers)
        try:
            with smtplib.SMTP(timeout=20, source_address=(source, 0)) as client:
                client.connect("127.0.0.1", port)
                client.sendmail("canary@client.test", [f"canary{n}@example.test"],
                                f"Subject: canary {n}\r\n\r\nstill here\r\n")  # fmt: skip
            return True
        except (OSError, smtplib.SMTPException) as e:
            self.failures.append(f"{port}: {e!r}")
            return False

    def run(self) -> None:
        while not self.stop_event.is_set():
            if self._send(self.target.relay_port, "127.0.0.2"):
                self.relayed += 1
            if self._send(self.target.splice_port, "127.0.0.3"):
                self.spliced += 1
            self.stop_event.wait(0.05)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(60)


@contextlib.contextmanager
def attack(daemon: Daemon, name: str, **figures: object) -> Iterator[dict[str, object]]:
    """Run an attack: measure memory around it, run the canary through it, check the daemon after it.

    The body sets up the attack and leaves it holding its resources; before the
    attack is torn down (the ``with`` block's end) the canary must complete a
    transaction on both frontends.
    """
    canary = Canary(daemon)
    before = daemon.rss()
    canary.start()
    results: dict[str, object] = dict(figures)
    try:
        yield results
        relayed, spliced = canary.relayed, canary.spliced
        try:
            wait_until(lambda: canary.relayed > relayed and canary.spliced > spliced, 60,
                       f"the canary served on both frontends during {name}")  # fmt: skip
        except AssertionError as e:
            raise AssertionError(f"{e}; canary: relayed {relayed} -> {canary.relayed}, spliced {spliced} "
                                 f"-> {canary.spliced}, failures {canary.failures[-5:]}") from None
        peak = daemon.rss()
    finally:
        canary.stop()
    daemon.check_alive()
    grown = peak - before
    record(f"hostile-{name}", rss_before_kib=before, rss_during_kib=peak, canary_relayed=canary.relayed,
           canary_spliced=canary.spliced, **results)  # fmt: skip
    assert grown < RSS_BOUND_KIB, f"{name}: the daemon grew by {grown} KiB"


def closes_without_a_word(sock: socket.socket) -> bool:
    """Whether the peer closes *sock* without sending anything (within the socket's timeout)."""
    try:
        data = sock.recv(4096)
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return data == b""


def closed_within(sock: socket.socket, timeout: float) -> bool:
    """Whether the peer closes *sock* within *timeout* s (whatever it says first)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def sendall_quietly(sock: socket.socket, data: bytes) -> int:
    """Send *data*; how much went out before the peer closed (a hostile client does not care)."""
    sent = 0
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        view = memoryview(data)
        while sent < len(data):
            sent += sock.send(view[sent : sent + 65536])
    return sent


# --------------------------------------------------------------------------- slowloris


def trickle(sock: socket.socket, data: bytes, interval: float, stop: threading.Event) -> int:
    """Send *data* one byte at a time every *interval* s until the peer closes; the bytes sent."""
    for sent, byte in enumerate(data):
        if stop.wait(interval):
            return sent
        try:
            sock.send(bytes([byte]))
        except OSError:
            return sent
    return len(data)


def test_slowloris_is_cut_off_by_the_session_and_idle_limits(daemon: Daemon) -> None:
    rate = 1.0  # one byte per second
    stop = threading.Event()
    outcomes: dict[str, bytes] = {}

    def relay_loris(label: str, source: str, opening: bytes, dribble: bytes, interval: float) -> None:
        sock = connect_from(source, daemon.relay_port, timeout=30)
        with sock:
            read_reply(sock)  # greeting
            sock.sendall(opening)
            read_replies(sock, opening.count(b"\r\n"))
            sender = threading.Thread(target=trickle, args=(sock, dribble, interval, stop))
            sender.start()
            outcomes[label] = read_until_closed(sock)
            sender.join()

    def proxy_loris(label: str, port: int) -> None:
        sock = connect_from(TRUSTED, port, timeout=30)
        with sock:
            header = encode_v1(("192.0.2.1", 1), ("192.0.2.2", 25))
            sender = threading.Thread(target=trickle, args=(sock, header, 0.5, stop))
            sender.start()
            outcomes[label] = read_until_closed(sock)
            sender.join()

    data_opening = b"EHLO loris.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n"
    plans: list[tuple[Callable[..., None], tuple[object, ...]]] = [
        # A command line at one byte per second: never idle, so the session limit (6 s) ends it.
        (relay_loris, ("command", "127.0.0.30", b"", b"EHLO " + b"x" * 100, rate)),
        # A body at one byte per second: the same.
        (relay_loris, ("body", "127.0.0.31", data_opening, b"y" * 100, rate)),
        # A byte every 3 s: the idle limit (2 s) ends it.
        (relay_loris, ("idle", "127.0.0.32", b"", b"EHLO " + b"x" * 100, 3.0)),
        # A PROXY header at a byte every 0.5 s: proxy_timeout (1 s) ends it, without a word.
        (proxy_loris, ("proxy-relay", daemon.relay_port)),
        (proxy_loris, ("proxy-splice", daemon.splice_port)),
    ]
    threads = [threading.Thread(target=f, args=args) for f, args in plans]
    with attack(daemon, "slowloris", connections=len(threads)):
        for thread in threads:
            thread.start()
    for thread in threads:
        thread.join(60)
    stop.set()
    assert outcomes["command"].endswith(b"421 4.4.2 relay.test Error: session time limit exceeded\r\n")
    assert outcomes["body"].endswith(b"421 4.4.2 relay.test Error: session time limit exceeded\r\n")
    assert outcomes["idle"].endswith(b"421 4.4.2 relay.test Error: timeout\r\n")
    assert outcomes["proxy-relay"] == b"", outcomes["proxy-relay"]
    assert outcomes["proxy-splice"] == b"", outcomes["proxy-splice"]


# --------------------------------------------------------------------------- many connections


def open_many(source: str, port: int, count: int) -> list[tuple[socket.socket, bytes]]:
    """*count* connections from *source*, each with the first reply it got (b"" if none yet)."""
    out = []
    for _ in range(count):
        sock = connect_from(source, port, timeout=10)
        out.append(sock)
    replies = []
    for sock in out:
        sock.settimeout(10)
        try:
            replies.append((sock, read_reply(sock)))
        except (TimeoutError, ConnectionResetError):
            replies.append((sock, b""))
    return replies


def test_thousands_of_idle_connections_from_one_address(daemon: Daemon) -> None:
    count = choose(1000, 3000)
    held: list[socket.socket] = []
    try:
        with attack(daemon, "idle-connections", connections=2 * count) as figures:
            for name, port, source in (("relay", daemon.patient_relay_port, "127.0.0.40"),
                                       ("splice", daemon.patient_splice_port, "127.0.0.41")):  # fmt: skip
                replies = open_many(source, port, count)
                held += [sock for sock, _ in replies]
                greeted = [r for _, r in replies if r.startswith(b"220")]
                refused = [r for _, r in replies if r.startswith(b"421 4.7.0")]
                figures[f"greeted_{name}"] = len(greeted)
                figures[f"refused_{name}"] = len(refused)
                assert len(greeted) == PER_CLIENT, (len(greeted), {r[:40] for _, r in replies})
                assert len(refused) == count - PER_CLIENT
    finally:
        for sock in held:
            sock.close()
    # Idle connections are closed by timeout_client (2 s on these frontends).
    idle = [sock for sock, _ in open_many("127.0.0.42", daemon.relay_port, PER_CLIENT)]
    idle += [sock for sock, _ in open_many("127.0.0.43", daemon.splice_port, PER_CLIENT)]
    try:
        still_open = [sock for sock in idle if not closed_within(sock, 15)]
        assert not still_open, f"{len(still_open)} idle connections outlived timeout_client"
    finally:
        for sock in idle:
            sock.close()


def test_maxconn_holds_and_service_resumes_when_the_flood_ends(daemon: Daemon) -> None:
    held: list[socket.socket] = []
    greeted = 0
    refused = 0
    try:
        for address in range(100, 100 + (MAXCONN // PER_CLIENT) + 3):
            for sock, reply in open_many(f"127.0.0.{address}", daemon.relay_port, PER_CLIENT):
                held.append(sock)
                greeted += reply.startswith(b"220")
                refused += reply.startswith(b"421 4.7.0")
        assert greeted == MAXCONN and refused == len(held) - MAXCONN
        # While the frontend is full, a newcomer is told so: the limit holds for everyone.
        with connect_from("127.0.0.2", daemon.relay_port) as sock:
            assert read_reply(sock).startswith(b"421 4.7.0 relay.test Error: too many connections")
    finally:
        for sock in held:
            sock.close()
    # The flood is gone: service resumes.
    with attack(daemon, "maxconn", connections=len(held), greeted=greeted, refused=refused):
        pass


# --------------------------------------------------------------------------- floods and huge input


def test_a_pipelined_flood_that_never_reads_is_throttled(daemon: Daemon) -> None:
    line = b"NOOP\r\n"
    sent = {"relay": 0, "splice": 0}
    socks = []
    with attack(daemon, "pipelined-noop-flood", sent_octets=sent) as figures:
        for name, port, source in (("relay", daemon.relay_port, "127.0.0.50"),
                                   ("splice", daemon.flood_splice_port, "127.0.0.51")):  # fmt: skip
            sock = connect_from(source, port)
            socks.append(sock)
            read_reply(sock)
            sock.setblocking(False)
            chunk = line * 10000
            stalled_since = None
            # Write without reading until the daemon stops taking bytes for a while (it paused
            # reading because its replies pile up unread), or 64 MiB went out.
            while sent[name] < 64 << 20:
                try:
                    sent[name] += sock.send(chunk)
                    stalled_since = None
                except BlockingIOError:
                    stalled_since = stalled_since or time.monotonic()
                    if time.monotonic() - stalled_since > 1.0:
                        break
                    time.sleep(0.01)
        figures["sent_octets"] = dict(sent)
        assert sent["relay"] < 64 << 20, "the relay frontend never stopped reading"

    def cut_off(sock: socket.socket) -> bool:
        try:
            sock.send(b"NOOP\r\n")
        except BlockingIOError:
            return False  # still there, its buffers full
        except (ConnectionResetError, BrokenPipeError):
            return True
        return False

    # The flooders never read. The relay: once idle for timeout_client it gets a 421 it never
    # takes, and another timeout_client later it is cut off. The splice: nothing moves either
    # way for timeout_server (the server's turn: it was sent the last bytes), then both sides go.
    try:
        for name, sock in zip(sent, socks, strict=True):
            wait_until(lambda sock=sock: cut_off(sock), 30, f"the {name} flooder cut off")
    finally:
        for sock in socks:
            sock.close()


def test_pipelined_transactions_all_arrive(daemon: Daemon) -> None:
    count = choose(300, 3000)
    assert daemon.gateway.dump_dir is not None
    batch = b"EHLO pipeliner.test\r\n" + b"".join(
        b"MAIL FROM:<app@client.test>\r\nRCPT TO:<%dpipe@example.test>\r\nDATA\r\n"
        b"Subject: pipelined %d\r\n\r\nbody %d\r\n.\r\n" % (n, n, n)
        for n in range(1, count + 1)
    ) + b"QUIT\r\n"
    with (
        attack(daemon, "pipelined-transactions", messages=count),
        connect_from("127.0.0.52", daemon.relay_port, timeout=60) as sock,
    ):
        read_reply(sock)
        sender = threading.Thread(target=sock.sendall, args=(batch,))
        sender.start()
        replies = read_until_closed(sock, 1 << 26)
        sender.join()
    assert replies.count(b"250 2.0.0 Ok: queued as ") == count, replies[-300:]
    assert replies.endswith(b"221 2.0.0 Bye\r\n")

    def arrived() -> set[int]:
        found = set()
        for path in daemon.gateway.message_files():
            m = re.search(rb"<(\d+)pipe@example\.test>", path.read_bytes()[:400])
            if m:
                found.add(int(m.group(1)))
        return found

    wait_until(lambda: arrived() >= set(range(1, count + 1)), 60, "every pipelined message at the gateway")


def test_megabyte_lines_without_crlf(daemon: Daemon) -> None:
    megabytes = choose(4, 64)
    with attack(daemon, "megabyte-lines", megabytes=megabytes) as figures:
        # A command line: refused after max_command_line octets, and the connection closed.
        with connect_from("127.0.0.53", daemon.relay_port) as sock:
            read_reply(sock)
            sender = threading.Thread(target=sendall_quietly, args=(sock, b"A" * (1 << 20)))
            sender.start()
            reply = read_until_closed(sock)
            sender.join()
        assert reply == b"500 5.5.2 Error: line too long\r\n", reply
        # Inside a body: read to the real end, then refused; the session goes on.
        with connect_from("127.0.0.54", daemon.relay_port, timeout=60) as sock:
            read_reply(sock)
            sock.sendall(b"EHLO big.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
            assert [r[:3] for r in read_replies(sock, 4)] == [b"250", b"250", b"250", b"354"]
            line = b"B" * (1 << 20)
            for _ in range(megabytes):
                sock.sendall(line)
            sock.sendall(b"\r\n.\r\n")
            assert read_reply(sock) == b"554 5.6.0 Error: message has a line that is too long\r\n"
            sock.sendall(b"QUIT\r\n")
            assert read_reply(sock).startswith(b"221 2.0.0")
        # Through the splice: the bytes go to the server, which copes as it can.
        with connect_from("127.0.0.55", daemon.flood_splice_port, timeout=30) as sock:
            read_reply(sock)
            figures["spliced_octets"] = sendall_quietly(sock, b"C" * (megabytes << 20))


# --------------------------------------------------------------------------- bytes that are not SMTP


def check_replies(data: bytes) -> list[bytes]:
    """Every reply line of *data*; each one that is not a greeting or EHLO line has an enhanced code."""
    lines = data.split(b"\r\n")[:-1]
    for line in lines:
        greeting = line.startswith(b"220 relay.test ESMTP")
        ehlo = line.startswith(b"250") and not line[4:5].isdigit()  # "250-PIPELINING", "250 HELP"
        if greeting or ehlo:
            continue
        assert _ENHANCED.match(line), line
    return lines


def test_nul_and_8bit_bytes_in_commands(daemon: Daemon) -> None:
    junk = [
        b"EHLO \x00\xff\xfe",
        b"\x00\x00\x00",
        b"\xff\xfe\xfd\xfc",
        b"MAIL FROM:<\xff\xfe@client.test>",
        b"MAIL FROM:<a\x00b@client.test>",
        b"HELO \x80",
        b"RCPT TO:<a@b\x00c>",
        b"DATA\x00",
        b"NOOP \xc3\x28",
        b"\x1b[31mRED\x1b[0m",
        b"MAIL FROM:<\xc3\xa9@client.test> SMTPUTF8",
        b"VRFY \x00",
        b"AUTH PLAIN \x00\x00",
        b"BDAT \xff",
        b"STARTTLS \x00",
    ]
    rng = random.Random(8)
    for _ in range(60):
        junk.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60))).replace(b"\n", b""))
    with attack(daemon, "nul-8bit-commands", lines=len(junk)):
        for start in range(0, len(junk), 15):
            with connect_from("127.0.0.56", daemon.relay_port) as sock:
                read_reply(sock)
                sock.sendall(b"EHLO junk.test\r\n")
                read_reply(sock)
                for line in junk[start : start + 15]:
                    sock.sendall(line + b"\r\n")
                sock.sendall(b"QUIT\r\n")
                check_replies(read_until_closed(sock))


def test_tls_garbage_after_starttls(daemon: Daemon) -> None:
    rng = random.Random(9)
    with attack(daemon, "tls-garbage", attempts=4):
        # Random bytes instead of a handshake: the connection is dropped.
        for size in (1, 5, 1000, 64 * 1024):
            with connect_from("127.0.0.57", daemon.relay_port) as sock:
                read_reply(sock)
                sock.sendall(b"EHLO tls.test\r\n")
                assert b"STARTTLS" in read_reply(sock)
                sock.sendall(b"STARTTLS\r\n")
                assert read_reply(sock).startswith(b"220 2.0.0")
                sendall_quietly(sock, bytes(rng.randrange(256) for _ in range(size)))
                # A TLS alert perhaps, then the close (a short record waits for the idle timeout).
                assert closed_within(sock, 15)
        # Half a ClientHello, then silence: the idle limit ends it.
        with connect_from("127.0.0.57", daemon.relay_port, timeout=30) as sock:
            read_reply(sock)
            sock.sendall(b"EHLO tls.test\r\nSTARTTLS\r\n")
            read_replies(sock, 2)
            sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            assert closed_within(sock, 15)
    # Plaintext injected after STARTTLS (CVE-2011-0411 style) is thrown away.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with connect_from("127.0.0.58", daemon.relay_port) as raw:
        read_reply(raw)
        raw.sendall(b"EHLO tls.test\r\n")
        read_reply(raw)
        raw.sendall(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
        assert read_reply(raw).startswith(b"220 2.0.0")
        with context.wrap_socket(raw, server_hostname="relay.test") as tls:
            tls.sendall(b"EHLO tls.test\r\n")
            read_reply(tls)  # type: ignore[arg-type]
            tls.sendall(b"RCPT TO:<x@example.test>\r\n")
            assert read_reply(tls).startswith(b"503 5.5.1")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- PROXY headers


def test_proxy_headers_from_untrusted_addresses_are_not_believed(daemon: Daemon) -> None:
    header = encode_v1(("203.0.113.7", 4000), ("127.0.0.1", 25))
    with attack(daemon, "untrusted-proxy"):
        # Relay: the header is just a bad command, the client stays who it is.
        with smtplib.SMTP(timeout=20, source_address=("127.0.0.60", 0)) as client:
            client.connect("127.0.0.1", daemon.relay_port)
            code, _ = client.docmd(header[:-2].decode())
            assert code == 500
            client.sendmail("app@client.test", ["untrusted1@example.test"], "Subject: untrusted\r\n\r\nx\r\n")
        with connect_from("127.0.0.61", daemon.relay_port) as sock:
            read_reply(sock)
            sock.sendall(encode_v2(("203.0.113.7", 4000), ("127.0.0.1", 25)) + b"QUIT\r\n")
            check_replies(read_until_closed(sock))
        # Splice: passed on to the server as bytes, and logged with the real client.
        with connect_from("127.0.0.62", daemon.splice_port) as sock:
            read_reply(sock)
            sock.sendall(header + b"QUIT\r\n")
            read_until_closed(sock)
    wait_until(lambda: "<untrusted1@example.test>" in "".join(
        p.read_text(errors="replace") for p in daemon.gateway.message_files()), 30, "the untrusted message")
    dumped = next(p.read_text() for p in daemon.gateway.message_files() if "untrusted1@" in p.read_text())
    assert "[127.0.0.60]" in dumped and "203.0.113.7" not in dumped
    log = daemon.process.log()
    assert "127.0.0.62:" in log and "203.0.113.7" not in log


BAD_HEADERS = {
    "v1-truncated": b"PROXY TCP4 192.0.2.1 ",
    "v1-oversized": b"PROXY TCP4 " + b"1" * 200 + b"\r\n",
    "v1-bad-address": b"PROXY TCP4 300.1.1.1 192.0.2.2 1 25\r\n",
    "v1-bad-port": b"PROXY TCP4 192.0.2.1 192.0.2.2 99999 25\r\n",
    "v1-lf-only": b"PROXY TCP4 192.0.2.1 192.0.2.2 1 25\n",
    "v2-truncated": V2_SIGNATURE + b"\x21\x11\x00\x0c" + b"\xc0\x00",
    "v2-oversized": V2_SIGNATURE + b"\x21\x11\xff\xff" + b"\x00" * 4000,
    "v2-bad-version": V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\x00" * 12,
    "v2-short-addresses": V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\x00" * 4,
    "garbage": bytes(range(256)) * 4,
    "smtp-instead": b"EHLO no-header.test\r\n",
    "nothing": b"",
}


def test_malformed_proxy_headers_from_the_trusted_address_get_no_word(daemon: Daemon) -> None:
    outcomes: dict[str, bytes] = {}

    def try_one(port: int, name: str, data: bytes) -> None:
        with connect_from(TRUSTED, port, timeout=10) as sock:
            sendall_quietly(sock, data)
            outcomes[f"{port}-{name}"] = read_until_closed(sock)

    with attack(daemon, "malformed-proxy", headers=len(BAD_HEADERS) * 2):
        threads = [
            threading.Thread(target=try_one, args=(port, name, data))
            for port in (daemon.relay_port, daemon.splice_port)
            for name, data in BAD_HEADERS.items()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert len(outcomes) == len(threads)
    said = {name: data for name, data in outcomes.items() if data}
    assert not said, said
    # A good header from the trusted address is believed: the relay check sees 203.0.113.7.
    with connect_from(TRUSTED, daemon.relay_port) as sock:
        sock.sendall(encode_v2(("203.0.113.7", 4000), ("127.0.0.1", 25)))
        assert read_reply(sock).startswith(b"220 relay.test")
        sock.sendall(b"EHLO x.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\n")
        replies = read_replies(sock, 3)
        assert replies[2].startswith(b"554 5.7.1"), replies


def test_the_daemon_survived_everything(daemon: Daemon) -> None:
    daemon.check_alive()
    # It still does its job.
    with smtplib.SMTP("127.0.0.1", daemon.relay_port, timeout=20) as client:
        client.sendmail("app@client.test", ["survivor@example.test"], "Subject: after\r\n\r\nx\r\n")
