"""Relay mode, receiving side, end to end: the real daemon with swaks, smtp-source, smtplib and HAProxy.

Accepted messages go to the daemon's in-memory sink (no spool yet); the
daemon's log tells what it accepted (one ``accepted`` line per message).
"""

from __future__ import annotations

import re
import smtplib
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from peers import (
    RelaybalDaemon,
    free_port,
    haproxy_preamble,
    require_program,
    smtp_source,
    wait_until,
)

from relaybal.relay.testing import write_self_signed
from relaybal.smtp.auth import hash_password

pytestmark = pytest.mark.peers

Factory = Callable[..., Any]


def relay_config(
    port: int, directory: Path, *, tls: bool = False, users: bool = False, extra: str = ""
) -> str:
    lines = [
        "[global]",
        f'state_dir = "{directory / "state"}"',
        "[frontend.apps]",
        'mode = "relay"',
        f'listen = ["tcp:{port}:interface=127.0.0.1:backlog=1024"]',
        'backend = "gw"',
        'hostname = "relay.test"',
        extra,
    ]
    if tls:
        cert, key = write_self_signed(str(directory))
        lines.append(f'tls = {{ certificate = "{cert}", key = "{key}" }}')
    if users:
        path = directory / "users"
        path.write_text(f"alice:{hash_password('wonderland')}\n")
        lines.append(f'auth = {{ users = "{path}" }}')
    lines += ["[[backend.gw.server]]", 'name = "gw1"', 'address = "127.0.0.1:10025"']
    return "\n".join(lines) + "\n"


def accepted(daemon: RelaybalDaemon) -> list[str]:
    return [line for line in daemon.log().splitlines() if ": apps: accepted from=<" in line]


def swaks(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_program("swaks"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_with_tls_and_auth(relaybal_factory: Factory, peer_dir: Path, mechanism: str) -> None:
    port = free_port()
    daemon = relaybal_factory(relay_config(port, peer_dir, tls=True, users=True), wait_ports=[port])
    result = swaks(
        "--server", f"127.0.0.1:{port}", "--from", "app@client.test", "--to", "user@example.test",
        "--tls", "--auth", mechanism, "--auth-user", "alice", "--auth-password", "wonderland",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  220 2.0.0 Ready to start TLS" in result.stdout
    assert "<~  235 2.7.0 Authentication successful" in result.stdout
    assert "<~  250 2.0.0 Ok: queued as " in result.stdout
    (line,) = accepted(daemon)
    assert "tls=TLSv1." in line and "user=alice" in line


def test_swaks_wrong_password_and_pipelining(relaybal_factory: Factory, peer_dir: Path) -> None:
    port = free_port()
    relaybal_factory(relay_config(port, peer_dir, tls=True, users=True), wait_ports=[port])
    result = swaks(
        "--server", f"127.0.0.1:{port}", "--from", "a@client.test", "--to", "b@example.test",
        "--tls", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "queen",
    )  # fmt: skip
    assert result.returncode != 0
    assert "535 5.7.8 Error: authentication credentials invalid" in result.stdout
    result = swaks(
        "--server", f"127.0.0.1:{port}", "--from", "a@client.test", "--to", "b@example.test",
        "--pipeline",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 Ok: queued as " in result.stdout


def test_smtplib_starttls_verifies_the_certificate(relaybal_factory: Factory, peer_dir: Path) -> None:
    port = free_port()
    relaybal_factory(relay_config(port, peer_dir, tls=True), wait_ports=[port])
    context = ssl.create_default_context(cafile=str(peer_dir / "cert.pem"))
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client._host = "relay.test"  # type: ignore[attr-defined]  # the name starttls() verifies
        client.ehlo("client.test")
        assert client.has_extn("starttls") and client.has_extn("pipelining") and client.has_extn("chunking")
        client.starttls(context=context)
        client.ehlo("client.test")
        assert not client.has_extn("starttls")
        refused = client.sendmail("a@client.test", ["b@example.test"], b"Subject: x\r\n\r\n.hi\r\n")
        assert refused == {}


def test_smtp_source_10000_messages_at_50_sessions(relaybal_factory: Factory, peer_dir: Path) -> None:
    port = free_port()
    daemon = relaybal_factory(relay_config(port, peer_dir), wait_ports=[port])
    done = smtp_source(
        port, sessions=50, messages=10_000, size=1024, sender="app@client.test", rcpt="user@example.test",
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    wait_until(lambda: len(accepted(daemon)) >= 10_000, 30, "10000 accepted messages in the log")
    lines = accepted(daemon)
    assert len(lines) == 10_000
    ids = {m.group(1) for line in lines if (m := re.search(r"\] (\w+): apps: accepted", line))}
    assert len(ids) == 10_000  # distinct queue IDs


def test_proxy_protocol_from_haproxy(
    relaybal_factory: Factory, haproxy_factory: Factory, peer_dir: Path
) -> None:
    port, hport = free_port(), free_port()
    daemon = relaybal_factory(
        relay_config(port, peer_dir, extra='accept_proxy = ["127.0.0.1"]'), wait_ports=[port]
    )
    haproxy_factory(
        haproxy_preamble()
        + f"listen relay\n    bind 127.0.0.1:{hport}\n    server r 127.0.0.1:{port} send-proxy-v2\n",
        wait_ports=[hport],
    )
    result = swaks(
        "--server", f"127.0.0.1:{hport}", "--local-interface", "127.0.0.77",
        "--from", "a@client.test", "--to", "b@example.test",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = accepted(daemon)
    assert "client=[127.0.0.77]:" in line


def test_accepted_mail_is_in_the_spool_after_kill_9(relaybal_factory: Factory, peer_dir: Path) -> None:
    """Every message answered 250 survives SIGKILL: the restarted daemon finds it queued."""
    port = free_port()
    config = relay_config(port, peer_dir)
    daemon = relaybal_factory(config, wait_ports=[port])
    done = smtp_source(
        port, sessions=10, messages=300, size=2048, sender="app@client.test", rcpt="user@example.test"
    )
    assert done.returncode == 0, done.stderr  # smtp-source saw 250 for every message
    daemon.kill()
    again = relaybal_factory(config, wait_ports=[port])
    wait_until(lambda: "messages queued" in again.log(), 20, "the spool's start-up line")
    [line] = [line for line in again.log().splitlines() if "messages queued" in line]
    assert line.endswith(": 300 messages queued"), line
