"""Relay delivery with real processes: smtp-source → ``twistd -n relaybal`` (spool) → smtp-sinks.

Every message carries a numbered recipient (``smtp-source -N``: ``1user@…``,
``2user@…``), so the sinks' dump files tell exactly which messages arrived
and how often.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import smtplib
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from peers import (
    PrivatePostfix,
    RelaybalDaemon,
    SmtpSink,
    free_port,
    send_one_message,
    smtp_source,
    wait_until,
)

RCPT = re.compile(r"<(\d+)user@example\.test>")


def relay_config(
    peer_dir: Path,
    port: int,
    sinks: Sequence[SmtpSink],
    *,
    weights: Sequence[int] | None = None,
    backend: str = "",
    frontend: str = "",
    admin: bool = False,
) -> str:
    servers = "".join(
        f'[[backend.gw.server]]\nname = "gw{i + 1}"\naddress = "127.0.0.1:{s.port}"\n'
        f"weight = {weights[i] if weights else 1}\n"
        for i, s in enumerate(sinks)
    )
    socket_line = f'[admin]\nsocket = "{peer_dir}/admin.sock"\n' if admin else ""
    return f"""
[global]
state_dir = "{peer_dir}/state"
hostname = "relay.test"
{socket_line}
[frontend.apps]
mode = "relay"
listen = ["tcp:{port}:interface=127.0.0.1"]
backend = "gw"
{frontend}

[backend.gw]
{backend}
{servers}"""


def numbers_delivered(sinks: Sequence[SmtpSink]) -> Counter[int]:
    """How many times each numbered recipient reached a sink (complete dump files only)."""
    seen: Counter[int] = Counter()
    for sink in sinks:
        for message in sink.messages():
            for arg in message.rcpt_args:
                match = RCPT.search(arg)
                if match:
                    seen[int(match.group(1))] += 1
    return seen


def start(
    relaybal_factory: Callable[..., RelaybalDaemon], peer_dir: Path, sinks: Sequence[SmtpSink], **kw: object
) -> tuple[RelaybalDaemon, int]:
    port = free_port()
    daemon = relaybal_factory(relay_config(peer_dir, port, sinks, **kw), wait_ports=[port])  # type: ignore[arg-type]
    return daemon, port


def send(port: int, count: int, sessions: int = 20) -> None:
    done = smtp_source(
        port, sessions=sessions, messages=count, size=1024, number_rcpts=True,
        sender="app@client.test", rcpt="user@example.test", timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_ten_thousand_messages_exactly_once_and_evenly(
    sink_factory: Callable[..., SmtpSink], relaybal_factory: Callable[..., RelaybalDaemon], peer_dir: Path
) -> None:
    sinks = [sink_factory() for _ in range(3)]
    daemon, port = start(relaybal_factory, peer_dir, sinks)
    send(port, 10_000)
    wait_until(lambda: sum(s.count() for s in sinks) >= 10_000, 180, "10,000 messages at the sinks")
    seen = numbers_delivered(sinks)
    assert set(seen) == set(range(1, 10_001))
    assert max(seen.values()) == 1, "a message arrived twice"
    counts = [s.count() for s in sinks]
    assert sum(counts) == 10_000
    assert max(counts) / min(counts) <= 1.02, counts
    assert "Traceback" not in daemon.log()


def test_weights_one_two_three(
    sink_factory: Callable[..., SmtpSink], relaybal_factory: Callable[..., RelaybalDaemon], peer_dir: Path
) -> None:
    sinks = [sink_factory() for _ in range(3)]
    _, port = start(relaybal_factory, peer_dir, sinks, weights=(1, 2, 3))
    send(port, 3000)
    wait_until(lambda: sum(s.count() for s in sinks) >= 3000, 120, "3,000 messages at the sinks")
    counts = [s.count() for s in sinks]
    for count, weight in zip(counts, (1, 2, 3), strict=True):
        assert abs(count - 500 * weight) <= 0.02 * 500 * weight, counts


FAULTS = [("451 at MAIL", ["-r", "MAIL"]), ("421 at RCPT", ["-Q", "RCPT"])]


@pytest.mark.parametrize(("fault", "options"), FAULTS)
def test_a_refusing_gateway_loses_its_share_and_nothing_is_lost(
    sink_factory: Callable[..., SmtpSink],
    relaybal_factory: Callable[..., RelaybalDaemon],
    peer_dir: Path,
    fault: str,
    options: list[str],
) -> None:
    good = [sink_factory(), sink_factory()]
    bad = sink_factory(options=options)
    daemon, port = start(relaybal_factory, peer_dir, [good[0], bad, good[1]])
    send(port, 600)
    wait_until(lambda: sum(s.count() for s in good) >= 600, 120, "600 messages at the good sinks")
    seen = numbers_delivered(good)
    assert set(seen) == set(range(1, 601)) and max(seen.values()) == 1
    # The refusing gateway took no message for good.
    assert numbers_delivered([bad]) == Counter() or fault.startswith("421")
    assert "Traceback" not in daemon.log()


def test_permanent_refusal_bounces(
    sink_factory: Callable[..., SmtpSink], relaybal_factory: Callable[..., RelaybalDaemon], peer_dir: Path
) -> None:
    # The gateway refuses RCPT for good: the message bounces; the bounce (from <>) is refused too,
    # and a bounce is never made for a bounce, so the queue ends empty.
    sink = sink_factory(options=["-f", "RCPT"])
    daemon, port = start(relaybal_factory, peer_dir, [sink], admin=True)
    transcript = send_one_message(port, sender="app@client.test", rcpts=["someone@example.test"])
    assert transcript.accepted
    wait_until(lambda: "bounce" in daemon.log() and "no bounce for a null-sender" in daemon.log(), 30,
               "the bounce, and no bounce for the bounce")  # fmt: skip


def test_gateway_killed_mid_run_moves_its_share(
    sink_factory: Callable[..., SmtpSink], relaybal_factory: Callable[..., RelaybalDaemon], peer_dir: Path
) -> None:
    sinks = [sink_factory() for _ in range(3)]
    daemon, port = start(relaybal_factory, peer_dir, sinks)
    send(port, 300)
    wait_until(lambda: sum(s.count() for s in sinks) >= 300, 60, "the first 300")
    sinks[1].kill()
    send(port, 300, sessions=10)
    survivors = [sinks[0], sinks[2]]
    wait_until(lambda: len(numbers_delivered(sinks)) >= 300 and sum(s.count() for s in survivors) >= 400, 120,
               "the second batch at the surviving sinks")  # fmt: skip
    # smtp-source numbers each run from 1: each number arrived twice in all (once per run).
    seen = numbers_delivered(sinks)
    assert set(seen) == set(range(1, 301)) and all(n >= 2 for n in seen.values())
    assert sum(seen.values()) >= 600


def _sender_thread(port: int, start: int, count: int, accepted: list[int], stop: threading.Event) -> None:
    try:
        client = smtplib.SMTP("127.0.0.1", port, timeout=30)
        for n in range(start, start + count):
            if stop.is_set():
                break
            rcpt = f"{n}user@example.test"
            client.sendmail("app@client.test", [rcpt], f"Subject: {n}\r\n\r\nbody {n}\r\n")
            accepted.append(n)
        client.quit()
    except (smtplib.SMTPException, OSError):
        pass


@contextlib.contextmanager
def steady_load(port: int, senders: int) -> Iterator[list[int]]:
    """``senders`` threads sending numbered messages until the block ends; yields the numbers answered 250."""
    accepted: list[int] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=_sender_thread, args=(port, 1 + t * 100_000, 100_000, accepted, stop))
        for t in range(senders)
    ]
    for t in threads:
        t.start()
    try:
        yield accepted
    finally:
        stop.set()
        for t in threads:
            t.join(60)


def test_kill_9_loses_nothing_that_was_answered_250(
    sink_factory: Callable[..., SmtpSink], relaybal_factory: Callable[..., RelaybalDaemon], peer_dir: Path
) -> None:
    sinks = [sink_factory() for _ in range(3)]
    daemon, port = start(relaybal_factory, peer_dir, sinks)
    with steady_load(port, 8) as accepted:
        wait_until(lambda: len(accepted) >= 1500, 60, "1,500 messages accepted")
        daemon.kill()  # SIGKILL: no drain, no flush
    answered = set(accepted)
    daemon.start([port])
    wait_until(lambda: answered <= set(numbers_delivered(sinks)), 120, "every accepted message delivered")
    seen = numbers_delivered(sinks)
    duplicates = sum(c - 1 for c in seen.values() if c > 1)
    print(f"kill -9: {len(answered)} answered 250, all delivered, {duplicates} delivered twice")


def test_xclient_tells_a_real_postfix_gateway_the_real_client(
    postfix_factory: Callable[..., PrivatePostfix],
    relaybal_factory: Callable[..., RelaybalDaemon],
    peer_dir: Path,
) -> None:
    # smtp-sink accepts XCLIENT but does not record it (it offers only NAME and HELO):
    # a real Postfix with smtpd_authorized_xclient_hosts shows the client it was told.
    postfix = postfix_factory(
        {"smtpd_authorized_xclient_hosts": "127.0.0.0/8", "default_transport": "discard:"}
    )
    port = free_port()
    config = relay_config(peer_dir, port, [], backend="xclient = true") + (
        f'[[backend.gw.server]]\nname = "postfix"\naddress = "127.0.0.1:{postfix.port}"\n'
    )
    relaybal_factory(config, wait_ports=[port])
    for n in (5, 6):
        transcript = send_one_message(
            port,
            sender="app@client.test",
            rcpts=[f"{n}user@example.test"],
            source_address=(f"127.0.0.{n}", 0),
        )
        assert transcript.accepted
    # Each message carries its own client, also over a reused connection.
    wait_until(lambda: "[127.0.0.5]" in postfix.log(), 30, "Postfix logging client 127.0.0.5")
    wait_until(lambda: "[127.0.0.6]" in postfix.log(), 30, "Postfix logging client 127.0.0.6")


def test_dot_lines_at_chunk_boundaries_arrive_intact(
    sink_factory: Callable[..., SmtpSink], relaybal_factory: Callable[..., RelaybalDaemon], peer_dir: Path
) -> None:
    sink = sink_factory()
    _, port = start(relaybal_factory, peer_dir, [sink], frontend='max_message_size = "10M"')
    lines = [b"Subject: dots", b""]
    body = b"\r\n".join(lines) + b"\r\n"
    for offset in (16383, 16384, 16385, 65536, 262143, 262144):
        filler = offset - len(body) - 2
        while filler > 0:
            piece = min(filler, 900)
            body += b"x" * piece + b"\r\n"
            filler -= piece + 2
        body += b".\r\n..two\r\n"
    body += b"end\r\n"
    transcript = send_one_message(port, sender="app@client.test", rcpts=["1user@example.test"], message=body)
    assert transcript.accepted, transcript
    sink.wait_for_count(1, 30)
    wait_until(lambda: sink.messages()[0].text.rstrip().endswith("end"), 30, "the complete dump")
    dumped = sink.messages()[0].text.replace("\r\n", "\n")
    sent = body.decode().replace("\r\n", "\n")
    # (smtp-sink ends its dump with one more empty line)
    assert dumped.rstrip("\n").endswith(sent.split("\n\n", 1)[1].rstrip("\n"))
    assert dumped.count("\n.\n") == 6 and dumped.count("\n..two\n") == 6


def test_cut_through_answers_with_the_gateway(
    sink_factory: Callable[..., SmtpSink], relaybal_factory: Callable[..., RelaybalDaemon], peer_dir: Path
) -> None:
    sinks = [sink_factory() for _ in range(3)]
    _, port = start(relaybal_factory, peer_dir, sinks, frontend='delivery = "cut-through"')
    send(port, 300)
    # Cut-through: by the time smtp-source got its 250s, the sinks had every message.
    seen = numbers_delivered(sinks)
    assert set(seen) == set(range(1, 301)) and max(seen.values()) == 1
    counts = [s.count() for s in sinks]
    assert max(counts) - min(counts) <= 1, counts


def test_cut_through_relays_a_refusal(
    sink_factory: Callable[..., SmtpSink], relaybal_factory: Callable[..., RelaybalDaemon], peer_dir: Path
) -> None:
    refusing = sink_factory(options=["-f", "RCPT"])
    _, port = start(relaybal_factory, peer_dir, [refusing], frontend='delivery = "cut-through"')
    transcript = send_one_message(port, sender="app@client.test", rcpts=["1user@example.test"])
    assert not transcript.accepted
    assert transcript.data is not None and transcript.data.code // 100 == 5, transcript


def _queue(peer_dir: Path, *words: str) -> subprocess.CompletedProcess[str]:
    relaybal = str(Path(sys.executable).parent / "relaybal")
    return subprocess.run(
        [relaybal, "queue", "--socket", str(peer_dir / "admin.sock"), *words],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_queue_commands_through_the_runtime_socket(
    sink_factory: Callable[..., SmtpSink], relaybal_factory: Callable[..., RelaybalDaemon], peer_dir: Path
) -> None:
    refusing = sink_factory(options=["-r", "RCPT"])  # 4xx: every message is deferred
    daemon, port = start(relaybal_factory, peer_dir, [refusing], admin=True)
    for n in (1, 2):
        assert send_one_message(port, sender="app@client.test", rcpts=[f"{n}user@example.test"]).accepted

    def listed() -> list[list[str]]:
        out = _queue(peer_dir, "list").stdout.splitlines()
        return [line.split() for line in out[1:]]

    wait_until(lambda: [row[1] for row in listed()] == ["deferred", "deferred"], 30, "two deferred messages")
    first, second = (row[0] for row in listed())
    shown = _queue(peer_dir, "show", first)
    assert shown.returncode == 0 and "recipient: <1user@example.test> deferred attempts=1" in shown.stdout
    assert _queue(peer_dir, "hold", first).returncode == 0
    wait_until(lambda: listed()[0][1] == "held", 10, "the first message held")
    assert _queue(peer_dir, "delete", second).returncode == 0
    wait_until(lambda: len(listed()) == 1, 10, "the second message deleted")
    missing = _queue(peer_dir, "show", second)
    assert missing.returncode == 1 and "No such message" in missing.stderr
    # The gateway comes back: flush does not touch the held message, release delivers it.
    good = sink_factory()
    refusing.stop()
    config = relay_config(peer_dir, port, [good], admin=True)
    daemon.config_path.write_text(config)
    assert daemon.pid is not None
    os.kill(daemon.pid, signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in daemon.log(), 10, "the reload")
    assert _queue(peer_dir, "flush").returncode == 0
    assert [row[1] for row in listed()] == ["held"]
    assert _queue(peer_dir, "release", first).returncode == 0
    good.wait_for_count(1, 30)
    wait_until(lambda: listed() == [], 30, "an empty queue")
    assert numbers_delivered([good]) == Counter({1: 1})


def test_sigterm_during_load_exits_0_and_loses_nothing(
    sink_factory: Callable[..., SmtpSink], relaybal_factory: Callable[..., RelaybalDaemon], peer_dir: Path
) -> None:
    sinks = [sink_factory() for _ in range(3)]
    daemon, port = start(relaybal_factory, peer_dir, sinks)
    with steady_load(port, 6) as accepted:
        wait_until(lambda: len(accepted) >= 600, 60, "600 messages accepted")
        assert daemon.stop(timeout=60) == 0  # SIGTERM: drain, then exit 0
    answered = set(accepted)
    log = daemon.log()
    assert "draining" in log and "Traceback" not in log
    daemon.start([port])
    wait_until(lambda: answered <= set(numbers_delivered(sinks)), 120, "every accepted message delivered")
    transcript = send_one_message(port, sender="app@client.test", rcpts=["1user@example.test"])
    assert transcript.accepted  # the restarted daemon takes mail again


def test_reload_during_load_swaps_a_gateway_and_loses_nothing(
    sink_factory: Callable[..., SmtpSink], relaybal_factory: Callable[..., RelaybalDaemon], peer_dir: Path
) -> None:
    first, second, third = sink_factory(), sink_factory(), sink_factory()
    daemon, port = start(relaybal_factory, peer_dir, [first, second])
    with steady_load(port, 4) as accepted:
        wait_until(lambda: len(accepted) >= 300, 60, "300 messages accepted")
        # gw1 leaves, a new server joins; a broken file first is refused and changes nothing.
        assert daemon.pid is not None
        broken = relay_config(peer_dir, port, [second, third]) + "\n[backend.gw.bogus]\n"
        daemon.config_path.write_text(broken)
        os.kill(daemon.pid, signal.SIGHUP)
        wait_until(lambda: "reload refused" in daemon.log().lower(), 10, "the broken reload refused")
        daemon.config_path.write_text(relay_config(peer_dir, port, [second, third]))
        os.kill(daemon.pid, signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in daemon.log(), 10, "the reload")
        before = len(accepted)
        wait_until(lambda: len(accepted) >= before + 300, 60, "300 more messages accepted")
    answered = set(accepted)
    sinks = [first, second, third]
    wait_until(lambda: answered <= set(numbers_delivered(sinks)), 120, "every accepted message delivered")
    assert third.count() > 0
    assert daemon.running and "Traceback" not in daemon.log()
