"""Splice mode end to end: the real daemon between real SMTP programs on loopback.

``smtp-source``/``smtp-sink`` (Postfix), a private Postfix ``smtpd``, HAProxy and
``twistd -n relaybal``. Missing programs skip these tests locally and fail them
under ``RELAYBAL_REQUIRE_PEERS=1`` (CI).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from peers import (
    HAProxy,
    PrivatePostfix,
    RelaybalDaemon,
    SmtpSink,
    free_port,
    haproxy_preamble,
    send_one_message,
    smtp_source,
    wait_until,
)

pytestmark = pytest.mark.peers

Factory = Callable[..., Any]


def splice_config(
    port: int,
    servers: Sequence[tuple[str, int, dict[str, Any]]],
    *,
    backend: str = "",
    frontend: str = "",
) -> str:
    lines = [
        "[global]",
        'hostname = "lb.test"',
        "[frontend.smtp]",
        'mode = "splice"',
        f'listen = ["tcp:{port}:interface=127.0.0.1"]',
        'backend = "mx"',
        frontend,
        "[backend.mx]",
        backend,
    ]
    for name, server_port, extra in servers:
        lines += ["[[backend.mx.server]]", f'name = "{name}"', f'address = "127.0.0.1:{server_port}"']
        lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def log_lines(daemon: RelaybalDaemon) -> list[str]:
    return [line for line in daemon.log().splitlines() if "[relaybal.splice#info]" in line]


def test_every_message_delivered_and_weights_respected(
    sink_factory: Factory, relaybal_factory: Factory
) -> None:
    """smtp-source → relaybal → two smtp-sinks: all 400 messages arrive, split 1:3 exactly."""
    light: SmtpSink = sink_factory()
    heavy: SmtpSink = sink_factory()
    port = free_port()
    relaybal_factory(
        splice_config(port, [("light", light.port, {"weight": 1}), ("heavy", heavy.port, {"weight": 3})]),
        wait_ports=[port],
    )
    done = smtp_source(
        port,
        sessions=20,
        messages=400,
        size=1024,
        number_rcpts=True,
        sender="a@client.test",
        rcpt="user@example.test",
    )
    assert done.returncode == 0, done.stderr
    wait_until(lambda: light.count() + heavy.count() == 400, 20, "400 messages at the sinks")
    # Every message arrived exactly once: the numbered recipients 1..400 are all there.
    rcpts = sorted(
        int(re.match(r"(\d+)", arg.split(":", 1)[-1].strip(" <")).group(1))
        for arg in light.rcpt_args() + heavy.rcpt_args()
    )  # type: ignore[union-attr]
    assert rcpts == list(range(1, 401))
    # One connection per message: smooth weighted round robin gives exactly 100/300.
    assert abs(light.count() - 100) <= 2 and abs(heavy.count() - 300) <= 6, (light.count(), heavy.count())


def test_killed_active_server_sends_new_connections_to_the_backup(
    sink_factory: Factory, relaybal_factory: Factory
) -> None:
    active: SmtpSink = sink_factory()
    backup: SmtpSink = sink_factory()
    port = free_port()
    daemon = relaybal_factory(
        splice_config(port, [("active", active.port, {}), ("backup", backup.port, {"backup": "true"})]),
        wait_ports=[port],
    )
    done = smtp_source(port, sessions=5, messages=20, size=512, sender="a@client.test", rcpt="u@example.test")
    assert done.returncode == 0, done.stderr
    wait_until(lambda: active.count() == 20, 10, "20 messages at the active server")
    assert backup.count() == 0  # a backup takes nothing while the active server works
    active.kill()
    done = smtp_source(port, sessions=5, messages=20, size=512, sender="a@client.test", rcpt="u@example.test")
    assert done.returncode == 0, done.stderr
    wait_until(lambda: backup.count() == 20, 10, "20 messages at the backup")
    wait_until(
        lambda: any(" mx/backup " in line for line in log_lines(daemon)), 10, "a log line for mx/backup"
    )


def test_verify_banner_skips_a_server_that_answers_421(
    sink_factory: Factory, relaybal_factory: Factory
) -> None:
    busy: SmtpSink = sink_factory(options=["-Q", "CONNECT"])  # 421 and hang up at once
    good: SmtpSink = sink_factory()
    port = free_port()
    daemon = relaybal_factory(
        splice_config(
            port, [("busy", busy.port, {}), ("good", good.port, {})], backend="verify_banner = true"
        ),
        wait_ports=[port],
    )
    for _ in range(6):  # both servers come up in turn; the busy one is never seen
        transcript = send_one_message(port)
        assert transcript.banner is not None and transcript.banner.code == 220, transcript
        assert "421" not in transcript.banner.text
        assert transcript.accepted
    assert good.count() == 6 and busy.count() == 0

    # Retries show in the log: at least the sessions that went to "busy" first redispatched.
    def redispatched() -> list[str]:
        return [line for line in log_lines(daemon) if re.search(r" mx/good .* -- \d+/\d+/\d+/1 ", line)]

    wait_until(lambda: len(redispatched()) >= 2, 10, "log lines of redispatched sessions")
    assert all("busy: greeting '421 " in line for line in redispatched())


def test_no_usable_server_answers_421(sink_factory: Factory, relaybal_factory: Factory) -> None:
    dead_port = free_port()  # nothing listens there
    port = free_port()
    relaybal_factory(splice_config(port, [("dead", dead_port, {})]), wait_ports=[port])
    transcript = send_one_message(port)
    assert transcript.banner is not None
    assert transcript.banner.code == 421
    assert transcript.banner.text.startswith("4.3.2 lb.test Service not available")


def test_proxy_v2_out_makes_postfix_log_the_real_client(
    postfix_factory: Factory, relaybal_factory: Factory
) -> None:
    postfix: PrivatePostfix = postfix_factory({"smtpd_upstream_proxy_protocol": "haproxy"})
    port = free_port()
    relaybal_factory(
        splice_config(
            port, [("postfix", postfix.port, {})], backend='send_proxy = "v2"\nverify_banner = true'
        ),
        wait_ports=[port],
    )
    transcript = send_one_message(port, source_address=("127.0.0.42", 0))
    assert transcript.banner is not None and transcript.banner.code == 220, transcript
    wait_until(
        lambda: (
            "connect from localhost[127.0.0.42]" in postfix.log()
            or "connect from unknown[127.0.0.42]" in postfix.log()
        ),
        10,
        "Postfix logging 127.0.0.42",
    )


def test_haproxy_send_proxy_v2_into_accept_proxy(
    postfix_factory: Factory, haproxy_factory: Factory, relaybal_factory: Factory
) -> None:
    """client 127.0.0.43 → HAProxy (send-proxy-v2) → relaybal (accept_proxy, send_proxy v1) → Postfix.

    Postfix, two proxies away, logs HAProxy's client.
    """
    postfix: PrivatePostfix = postfix_factory({"smtpd_upstream_proxy_protocol": "haproxy"})
    relay_port = free_port()
    daemon = relaybal_factory(
        splice_config(
            relay_port,
            [("postfix", postfix.port, {})],
            frontend='accept_proxy = ["127.0.0.1"]\nproxy_timeout = "1s"',
            backend='send_proxy = "v1"',
        ),
        wait_ports=[relay_port],
    )
    haproxy_port = free_port()
    config = haproxy_preamble() + (
        f"listen front\n    bind 127.0.0.1:{haproxy_port}\n"
        f"    server relaybal 127.0.0.1:{relay_port} send-proxy-v2\n"
    )
    haproxy: HAProxy = haproxy_factory(config, wait_ports=[haproxy_port])
    transcript = send_one_message(haproxy_port, source_address=("127.0.0.43", 0))
    assert transcript.accepted or (transcript.rcpts and transcript.rcpts[0].code >= 400), transcript
    assert transcript.banner is not None and transcript.banner.code == 220
    wait_until(lambda: "[127.0.0.43]" in postfix.log(), 10, "Postfix logging 127.0.0.43")
    wait_until(
        lambda: any(line.split()[2].startswith("127.0.0.43:") for line in log_lines(daemon)),
        10,
        "relaybal logging HAProxy's client",
    )
    assert haproxy.running
    # A client that connects to relaybal directly from a trusted address without a
    # header is refused (nothing reaches Postfix).
    direct = send_one_message(relay_port, timeout=10)
    assert direct.banner is None or direct.banner.code != 220
