"""Relay policies end to end: the real daemon, swaks, smtplib and a real policy server (postgrey).

Loopback clients are not special once a frontend lists ``policies``: the
tests allow ``10.0.0.0/8`` and connect from ``127.0.0.x``, which is then an
outside, unauthorised client.
"""

from __future__ import annotations

import os
import pwd
import smtplib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import (
    PeerProcess,
    PeerRegistry,
    RelaybalDaemon,
    ensure_dir,
    free_port,
    require_program,
    send_one_message,
    wait_until,
)

from relaybal.relay.testing import write_self_signed
from relaybal.smtp.auth import hash_password

pytestmark = pytest.mark.peers

Factory = Callable[..., Any]


def relay_config(
    port: int,
    directory: Path,
    policies: dict[str, dict[str, Any]],
    *,
    tls: bool = False,
    users: bool = False,
) -> str:
    lines = [
        "[global]",
        f'state_dir = "{directory / "state"}"',
        "[frontend.apps]",
        'mode = "relay"',
        f'listen = ["tcp:{port}:interface=127.0.0.1"]',
        'backend = "gw"',
        'hostname = "relay.test"',
        "policies = [" + ", ".join(f'"{name}"' for name in policies) + "]",
    ]
    if tls:
        cert, key = write_self_signed(str(directory))
        lines.append(f'tls = {{ certificate = "{cert}", key = "{key}" }}')
    if users:
        path = directory / "users"
        path.write_text(f"alice:{hash_password('wonderland')}\n")
        lines.append(f'auth = {{ users = "{path}" }}')
    for name, table in policies.items():
        lines.append(f"[policy.{name}]")
        for key, value in table.items():
            lines.append(f"{key} = {toml_value(value)}")
    lines += ["[[backend.gw.server]]", 'name = "gw1"', 'address = "127.0.0.1:10025"']
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


def accepted(daemon: RelaybalDaemon) -> list[str]:
    return [line for line in daemon.log().splitlines() if ": apps: accepted from=<" in line]


def swaks(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_program("swaks"), *args],
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def rcpt_codes(port: int, recipients: list[str], source: str = "127.0.0.2") -> dict[str, tuple[int, str]]:
    """Each recipient's RCPT reply in one transaction, sent exactly as written."""
    out: dict[str, tuple[int, str]] = {}
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0)) as client:
        client.ehlo("client.test")
        code, _ = client.docmd("MAIL FROM:<app@client.test>")
        assert code == 250
        for rcpt in recipients:
            code, text = client.docmd(f"RCPT TO:<{rcpt}>")
            out[rcpt] = (code, text.decode())
        client.rset()
    return out


# ----------------------------------------------------------------------------- who may relay


OUTSIDE_FORMS = [
    "user@outside.test",
    "user@OUTSIDE.test",
    "user%outside.test@example.com",
    "user%outside.test%example.com@example.com",
    "outside.test!user@example.com",
    '"user@outside.test"@example.com',
    '"user%outside.test"@example.com',
    "@example.com:user@outside.test",
    "@example.com,@example.org:user@outside.test",
    "user@[192.0.2.1]",
    "user@[IPv6:2001:db8::1]",
    "postmaster@outside.test",
]


def test_an_unauthorised_client_cannot_relay_in_any_address_form(
    relaybal_factory: Factory, peer_dir: Path
) -> None:
    port = free_port()
    policies = {
        "internal": {"plugin": "networks", "allow": ["10.0.0.0/8"]},
        "ours": {"plugin": "recipient-domains", "domains": ["example.com"]},
    }
    daemon = relaybal_factory(relay_config(port, peer_dir, policies), wait_ports=[port])
    replies = rcpt_codes(port, [*OUTSIDE_FORMS, "user@example.com", "User@Example.COM"])
    refused = {rcpt: reply for rcpt, reply in replies.items() if reply[0] >= 500}
    assert sorted(refused) == sorted(OUTSIDE_FORMS), replies
    assert replies["user@outside.test"] == (554, "5.7.1 Relay access denied")
    assert replies["@example.com:user@outside.test"][0] == 554  # the route is dropped: outside.test decides
    assert replies["user%outside.test@example.com"][0] == 553
    assert replies["user@[192.0.2.1]"][0] == 553
    assert replies["user@example.com"][0] == 250 and replies["User@Example.COM"][0] == 250
    # A whole message to an outside domain is refused; nothing was accepted.
    transcript = send_one_message(port, source_address=("127.0.0.2", 0), rcpts=["user@outside.test"])
    assert not transcript.accepted and transcript.rcpts[0].code == 554
    assert accepted(daemon) == []
    assert "apps: no policy permits relaying: refused rcpt from 127.0.0.2: 554 5.7.1" in daemon.log()
    assert "apps: the address check refuses rcpt from 127.0.0.2: 553 5.7.1" in daemon.log()


def test_an_authenticated_client_over_starttls_can_relay(relaybal_factory: Factory, peer_dir: Path) -> None:
    port = free_port()
    policies = {
        "internal": {"plugin": "networks", "allow": ["10.0.0.0/8"]},
        "users": {"plugin": "auth", "users": ["alice"]},
    }
    daemon = relaybal_factory(relay_config(port, peer_dir, policies, tls=True, users=True), wait_ports=[port])
    common = ["--server", f"127.0.0.1:{port}", "--from", "app@client.test", "--to", "user@outside.test"]
    denied = swaks(*common, "--tls")
    assert denied.returncode != 0
    assert "554 5.7.1 Relay access denied" in denied.stdout
    login = ["--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "wonderland"]
    result = swaks(*common, "--tls", *login)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<~  235 2.7.0 Authentication successful" in result.stdout
    assert "<~  250 2.1.5 Ok" in result.stdout
    assert "<~  250 2.0.0 Ok: queued as " in result.stdout
    (line,) = accepted(daemon)
    assert "user=alice" in line and "tls=TLSv1." in line


# ----------------------------------------------------------------------------- policyd and postgrey


class Postgrey(PeerProcess):
    """Debian's postgrey on loopback with a private database directory."""

    def __init__(self, directory: Path, port: int, delay: int, registry: PeerRegistry) -> None:
        super().__init__("postgrey", directory, registry)
        self.port = port
        self.delay = delay
        self.dbdir = ensure_dir(self.directory / "db")

    def start(self) -> None:
        program = require_program("postgrey")
        argv = [program, f"--inet=127.0.0.1:{self.port}", f"--delay={self.delay}", f"--dbdir={self.dbdir}"]
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgrey")  # it drops to this user: the database must be its own
            os.chown(self.dbdir, entry.pw_uid, entry.pw_gid)
        else:
            argv += [f"--user={pwd.getpwuid(os.geteuid()).pw_name}", f"--group={os.getegid()}"]
        self._spawn(argv)
        self.wait_for_port(self.port)


@pytest.fixture
def postgrey(peer_dir: Path, peer_registry: PeerRegistry) -> Iterator[Postgrey]:
    server = Postgrey(peer_dir / "postgrey", free_port(), delay=2, registry=peer_registry)
    server.start()
    yield server


def test_policyd_with_postgrey_greylists_then_accepts_the_retry(
    relaybal_factory: Factory, peer_dir: Path, postgrey: Postgrey
) -> None:
    port = free_port()
    policies = {
        "local": {"plugin": "networks", "allow": ["127.0.0.0/8"]},
        "grey": {"plugin": "policyd", "server": f"tcp:host=127.0.0.1:port={postgrey.port}", "timeout": "5s"},
    }
    daemon = relaybal_factory(relay_config(port, peer_dir, policies), wait_ports=[port])
    first = send_one_message(port, source_address=("127.0.0.3", 0), rcpts=["user@outside.test"])
    assert first.rcpts[0].code == 450, first
    assert first.rcpts[0].text.startswith("4.") and "Greylisted" in first.rcpts[0].text
    assert not first.accepted
    attempts: list[int] = []

    def retry_accepted() -> bool:
        again = send_one_message(port, source_address=("127.0.0.3", 0), rcpts=["user@outside.test"])
        attempts.append(again.rcpts[0].code)
        return again.accepted

    wait_until(retry_accepted, 30, "postgrey to accept the retry after its delay", interval=0.25)
    assert set(attempts[:-1]) <= {450}  # before the delay: greylisted again, never refused for good
    assert len(accepted(daemon)) == 1
    postgrey.wait_for_log("action=greylist, reason=new")  # its own account of it (its log may lag)
    postgrey.wait_for_log("action=pass, reason=triplet found")


def test_policyd_server_down_defers_with_the_default_action(
    relaybal_factory: Factory, peer_dir: Path
) -> None:
    port = free_port()
    policies = {
        "local": {"plugin": "networks", "allow": ["127.0.0.0/8"]},
        "grey": {"plugin": "policyd", "server": f"tcp:host=127.0.0.1:port={free_port()}"},
    }
    daemon = relaybal_factory(relay_config(port, peer_dir, policies), wait_ports=[port])
    transcript = send_one_message(port, source_address=("127.0.0.3", 0))
    assert transcript.rcpts[0].code == 451
    assert transcript.rcpts[0].text == "4.3.0 Error: policy unavailable, try again later"
    wait_until(lambda: "policy grey (policyd) failed at rcpt" in daemon.log(), 10, "the failure in the log")


# ----------------------------------------------------------------------------- ratelimit


def test_ratelimit_refuses_the_next_message_in_the_window_and_accepts_after_it(
    relaybal_factory: Factory, peer_dir: Path
) -> None:
    port = free_port()
    policies = {
        "local": {"plugin": "networks", "allow": ["127.0.0.0/8"]},
        "rate": {"plugin": "ratelimit", "key": "client_address", "rate": "3/6s"},
    }
    daemon = relaybal_factory(relay_config(port, peer_dir, policies), wait_ports=[port])
    message = b"Subject: x\r\n\r\nhi\r\n"
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=("127.0.0.4", 0)) as client:
        for _ in range(3):
            assert client.sendmail("app@client.test", ["user@outside.test"], message) == {}
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail("app@client.test", ["user@outside.test"], message)
        assert refused.value.smtp_code == 450
        assert refused.value.smtp_error == b"4.7.1 Error: rate limit exceeded, try again later"
    # Another client has its own bucket.
    assert send_one_message(port, source_address=("127.0.0.5", 0)).accepted

    def accepted_again() -> bool:
        return send_one_message(port, source_address=("127.0.0.4", 0)).accepted

    wait_until(accepted_again, 30, "a token to come back into the bucket", interval=0.25)
    assert len(accepted(daemon)) == 5


# ----------------------------------------------------------------------------- dnsbl


class DnsblServer(PeerProcess):
    """tests/fixtures/dnsbl_server.py: a blocklist zone on UDP loopback."""

    def __init__(
        self, directory: Path, port: int, zone: str, listed: list[str], registry: PeerRegistry
    ) -> None:
        super().__init__("dnsbl", directory, registry)
        self.port = port
        self._spawn(
            [
                sys.executable,
                str(Path(__file__).parent / "fixtures" / "dnsbl_server.py"),
                str(port),
                zone,
                *listed,
            ]
        )
        self.wait_for_log("ready")


def test_dnsbl_refuses_a_listed_client_through_twisted_names(
    relaybal_factory: Factory, peer_dir: Path, peer_registry: PeerRegistry
) -> None:
    dns_port = free_port()
    blocklist = DnsblServer(peer_dir / "dnsbl", dns_port, "bl.test", ["127.0.0.66"], peer_registry)
    port = free_port()
    policies = {
        "blocklists": {"plugin": "dnsbl", "zones": ["bl.test"], "servers": [f"127.0.0.1:{dns_port}"]},
        "ours": {"plugin": "recipient-domains", "domains": ["example.com"]},  # inbound mail for example.com
    }
    daemon = relaybal_factory(relay_config(port, peer_dir, policies), wait_ports=[port])
    to_us = ["user@example.com"]
    listed = send_one_message(port, source_address=("127.0.0.66", 0), rcpts=to_us)
    assert listed.mail is not None and listed.mail.code == 554
    assert listed.mail.text == "5.7.1 Service unavailable; client [127.0.0.66] blocked using bl.test"
    assert send_one_message(port, source_address=("127.0.0.67", 0), rcpts=to_us).accepted
    again = send_one_message(port, source_address=("127.0.0.66", 0), rcpts=to_us)
    assert again.mail is not None and again.mail.code == 554
    queries = [line for line in blocklist.log().splitlines() if line.startswith("query ")]
    assert queries == ["query 66.0.0.127.bl.test", "query 67.0.0.127.bl.test"]  # the second 66 was cached
    assert len(accepted(daemon)) == 1


# ----------------------------------------------------------------------------- plugins by name


def test_the_installed_example_plugin_is_applied_by_name(relaybal_factory: Factory, peer_dir: Path) -> None:
    pytest.importorskip("relaybal_policy_example", reason="pip install examples/relaybal-policy-example")
    senders = peer_dir / "senders"
    senders.write_text("app@client.test\n")
    port = free_port()
    policies = {
        "senders": {"plugin": "sender-allowlist", "file": str(senders)},
        "local": {"plugin": "networks", "allow": ["127.0.0.0/8"]},
    }
    daemon = relaybal_factory(relay_config(port, peer_dir, policies), wait_ports=[port])
    refused = send_one_message(port, sender="intruder@client.test")
    assert refused.mail is not None and refused.mail.code == 550
    assert refused.mail.text == "5.7.1 Sender address rejected: not in the allow-list"
    assert send_one_message(port, sender="app@client.test").accepted
    assert len(accepted(daemon)) == 1
    check = subprocess.run(
        [str(Path(sys.executable).parent / "relaybal"), "check-config", str(daemon.config_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr


def test_an_unknown_or_broken_plugin_stops_start_up(relaybal_factory: Factory, peer_dir: Path) -> None:
    extra = peer_dir / "extra"
    plugins = ensure_dir(extra / "relaybal" / "plugins")
    (plugins / "broken_policy.py").write_text("import no_such_module_here\n")
    port = free_port()
    daemon = relaybal_factory(
        relay_config(port, peer_dir, {"p": {"plugin": "broken"}}),
        start=False,
        env={"PYTHONPATH": str(extra)},
    )
    daemon.start()
    wait_until(lambda: daemon.poll() is not None, 30, "the daemon to refuse to start")
    assert daemon.returncode == 1
    log = daemon.log()
    assert 'policy.p.plugin: no policy plugin named "broken" (installed: auth, dnsbl' in log
    assert "ModuleNotFoundError: No module named 'no_such_module_here'" in log
    assert "broken_policy.py" in log
