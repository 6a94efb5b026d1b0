"""The peer harness itself, exercised with the real programs (nothing mocked)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable

import pytest
from peers import (
    HAProxy,
    PeerExitedError,
    PeerRegistry,
    PrivatePostfix,
    RelaybalDaemon,
    SmtpSink,
    free_port,
    haproxy_preamble,
    haproxy_tcp_listen,
    port_is_listening,
    process_group_members,
    require_program,
    send_one_message,
    smtp_source,
    wait_until,
)

pytestmark = pytest.mark.peers

SENDER = "sender@client.test"


def test_wait_until_names_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match="waiting for the moon"):
        wait_until(lambda: False, 0.05, "the moon")


def test_missing_program_skips_locally_and_fails_when_peers_are_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RELAYBAL_REQUIRE_PEERS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        require_program("relaybal-no-such-program")

    monkeypatch.setenv("RELAYBAL_REQUIRE_PEERS", "1")
    with pytest.raises(pytest.fail.Exception, match="not installed"):
        require_program("relaybal-no-such-program")


def test_smtp_source_delivers_every_message_to_a_dumping_sink(
    sink_factory: Callable[..., SmtpSink],
) -> None:
    sink = sink_factory()

    result = smtp_source(
        sink.port,
        sessions=2,
        messages=6,
        size=300,
        reuse=True,
        number_rcpts=True,
        sender=SENDER,
        rcpt="user@sink.test",
    )

    assert result.returncode == 0, result.stderr
    assert sink.count() == 6
    # -N numbers the recipients, so each message is identifiable.
    assert sorted(sink.rcpt_args()) == sorted(f"<{n}user@sink.test>" for n in range(1, 7))
    assert sink.client_addrs() == ["127.0.0.1"] * 6
    assert {message.mail_args for message in sink.messages()} == {f"<{SENDER}>"}


def test_sink_refusing_at_connect_makes_smtp_source_fail(
    sink_factory: Callable[..., SmtpSink],
) -> None:
    sink = sink_factory(options=["-Q", "CONNECT"])

    result = smtp_source(
        sink.port, sessions=1, messages=1, size=100, sender=SENDER, rcpt="user@sink.test"
    )

    assert result.returncode != 0
    assert "421" in result.stderr
    assert sink.count() == 0


def test_send_one_message_binds_the_requested_loopback_address(
    sink_factory: Callable[..., SmtpSink],
) -> None:
    sink = sink_factory()

    transcript = send_one_message(
        sink.port, source_address=("127.0.0.42", 0), rcpts=["one@sink.test", "two@sink.test"]
    )

    assert transcript.accepted, transcript
    assert [reply.code for reply in transcript.rcpts] == [250, 250]
    assert sink.client_addrs() == ["127.0.0.42"]
    assert sink.rcpt_args() == ["<one@sink.test>", "<two@sink.test>"]


def test_send_one_message_reports_a_refusal_instead_of_raising(
    sink_factory: Callable[..., SmtpSink],
) -> None:
    sink = sink_factory(options=["-Q", "CONNECT"])

    transcript = send_one_message(sink.port)

    assert transcript.banner is not None
    assert transcript.banner.code == 421
    assert transcript.ehlo is None
    assert not transcript.accepted


def test_waiting_for_a_peer_that_exits_reports_its_output(
    sink_factory: Callable[..., SmtpSink],
) -> None:
    # smtp-sink sets SO_REUSEPORT, so only a listener without it (as here)
    # makes its bind fail, as when another program took the "free" port.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(PeerExitedError, match=r"(?i)address already in use"):
            sink_factory(dump=False, port=taken.getsockname()[1])


def test_private_postfix_accepts_mail_and_logs_the_client_address(
    postfix_factory: Callable[..., PrivatePostfix],
) -> None:
    postfix = postfix_factory({"default_transport": "discard:"})

    transcript = send_one_message(postfix.port, source_address=("127.0.0.42", 0))

    assert transcript.accepted, transcript
    postfix.wait_for_log("[127.0.0.42]")
    postfix.wait_for_log("status=sent")
    log = postfix.log()
    connects = [line for line in log.splitlines() if "connect from " in line]
    assert any("[127.0.0.42]" in line for line in connects), log
    # start() waited for the port without connecting: the test's own session
    # is the only one Postfix saw.
    assert len([line for line in connects if "disconnect from" not in line]) == 1, log


def test_private_postfix_stop_leaves_no_process_behind(
    postfix_factory: Callable[..., PrivatePostfix],
) -> None:
    postfix = postfix_factory()
    master_pid = postfix.pid
    assert master_pid is not None

    postfix.stop()

    assert not port_is_listening(*postfix.address, connect=True)
    # Zombies may linger until init reaps them; they hold nothing.
    assert process_group_members(master_pid) == []


def test_haproxy_forwards_smtp_source_sessions_to_sinks(
    sink_factory: Callable[..., SmtpSink],
    haproxy_factory: Callable[..., HAProxy],
) -> None:
    sinks = [sink_factory(), sink_factory()]
    port = free_port()
    config = haproxy_preamble() + haproxy_tcp_listen(
        "smtp", port, [sink.address for sink in sinks]
    )
    haproxy_factory(config, wait_ports=[port])

    result = smtp_source(
        port,
        sessions=4,
        messages=20,
        size=500,
        number_rcpts=True,
        sender=SENDER,
        rcpt="user@sink.test",
    )

    assert result.returncode == 0, result.stderr
    assert sum(sink.count() for sink in sinks) == 20
    assert all(sink.count() > 0 for sink in sinks)
    delivered = sorted(arg for sink in sinks for arg in sink.rcpt_args())
    assert delivered == sorted(f"<{n}user@sink.test>" for n in range(1, 21))


def test_swaks_sends_one_message_to_a_sink(sink_factory: Callable[..., SmtpSink]) -> None:
    swaks = require_program("swaks")
    sink = sink_factory()

    result = subprocess.run(
        [
            swaks,
            "--server",
            f"127.0.0.1:{sink.port}",
            "--helo",
            "client.test",
            "--from",
            SENDER,
            "--to",
            "swaks@sink.test",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert sink.count() == 1
    assert sink.rcpt_args() == ["<swaks@sink.test>"]


def test_relaybal_daemon_that_exits_reports_its_log(
    relaybal_factory: Callable[..., RelaybalDaemon],
    peer_registry: PeerRegistry,
) -> None:
    daemon = relaybal_factory("this is [not valid toml", start=False)

    with pytest.raises(PeerExitedError) as raised:
        daemon.start(wait_ports=[free_port()], timeout=30)

    assert daemon.argv[1:] == ["-n", "--pidfile=", "relaybal", "-c", str(daemon.config_path)]
    assert daemon.returncode not in (None, 0)
    assert daemon.log().strip() in str(raised.value)
    assert daemon in peer_registry.running()
