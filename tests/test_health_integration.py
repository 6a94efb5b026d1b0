"""Health checks, drain and the runtime API with the real daemon and real SMTP peers.

``twistd -n relaybal`` between ``smtp-source``/smtplib clients and Postfix's
``smtp-sink`` (and a private Postfix with STARTTLS, and HAProxy for
comparison). The runtime API is used the way operators use it: a UNIX socket
spoken to like ``socat`` does, and ``relaybal ctl``.
"""

from __future__ import annotations

import csv
import datetime
import os
import re
import smtplib
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from peers import (
    HAProxy,
    PrivatePostfix,
    RelaybalDaemon,
    SmtpSink,
    free_port,
    haproxy_preamble,
    require_program,
    send_one_message,
    smtp_source,
    wait_until,
)

pytestmark = pytest.mark.peers

Factory = Callable[..., Any]
BIN = Path(sys.executable).parent

#: ``show servers state`` format version 1, as HAProxy's doc/management.txt lists it.
HAPROXY_SERVERS_STATE_V1 = [
    "be_id", "be_name", "srv_id", "srv_name", "srv_addr", "srv_op_state", "srv_admin_state",
    "srv_uweight", "srv_iweight", "srv_time_since_last_change", "srv_check_status",
    "srv_check_result", "srv_check_health", "srv_check_state", "srv_agent_state", "bk_f_forced_id",
    "srv_f_forced_id", "srv_fqdn", "srv_port", "srvrecord", "srv_use_ssl", "srv_check_port",
    "srv_check_addr", "srv_agent_addr", "srv_agent_port",
]  # fmt: skip
NUMERIC_FIELDS = set(HAPROXY_SERVERS_STATE_V1) - {
    "be_name", "srv_name", "srv_addr", "srv_fqdn", "srvrecord", "srv_check_addr", "srv_agent_addr",
}  # fmt: skip


def config_text(
    port: int,
    servers: Sequence[tuple[str, int]],
    admin_socket: Path,
    *,
    check: str = "",
    backend: str = "",
) -> str:
    lines = [
        "[global]",
        'hostname = "lb.test"',
        "[admin]",
        f'socket = "{admin_socket}"',
        "[frontend.smtp]",
        'mode = "splice"',
        f'listen = ["tcp:{port}:interface=127.0.0.1"]',
        'backend = "mx"',
        "[backend.mx]",
        backend,
    ]
    if check:
        lines.append(f"check = {{ {check} }}")
    for name, server_port in servers:
        lines += ["[[backend.mx.server]]", f'name = "{name}"', f'address = "127.0.0.1:{server_port}"']
    return "\n".join(lines) + "\n"


def admin(path: Path, line: str, timeout: float = 5.0) -> str:
    """What ``echo LINE | socat stdio PATH`` prints: send, shut the sending side, read to the end."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(line.encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def stat_rows(path: Path) -> dict[str, dict[str, str]]:
    """``show stat`` rows of backend mx by server name (and BACKEND)."""
    lines = [line for line in admin(path, "show stat mx").splitlines() if line]
    lines[0] = lines[0][2:]
    return {row["svname"]: row for row in csv.DictReader(lines)}


def ctl(config: Path, *words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "relaybal"), "ctl", "-c", str(config), *words],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def health_lines(daemon: RelaybalDaemon) -> list[str]:
    return [line for line in daemon.log().splitlines() if "[relaybal.health#" in line]


def splice_lines(daemon: RelaybalDaemon) -> list[str]:
    return [line for line in daemon.log().splitlines() if "[relaybal.splice#info]" in line]


def wait_status(path: Path, server: str, status: str, timeout: float) -> float:
    """Poll ``show stat`` until ``server`` shows ``status``; return the seconds it took."""
    start = time.monotonic()
    wait_until(lambda: stat_rows(path)[server]["status"] == status, timeout, f"{server} {status}")
    return time.monotonic() - start


def test_stopped_sink_goes_down_in_time_traffic_moves_and_it_comes_back(
    sink_factory: Factory, relaybal_factory: Factory, peer_dir: Path
) -> None:
    interval, fall, rise, timeout = 0.5, 3, 2, 1.0
    a: SmtpSink = sink_factory()
    b: SmtpSink = sink_factory()
    port = free_port()
    sock = peer_dir / "admin.sock"
    daemon: RelaybalDaemon = relaybal_factory(
        config_text(
            port,
            [("a", a.port), ("b", b.port)],
            sock,
            check=(
                f'kind = "smtp", interval = "{interval}s", rise = {rise}, fall = {fall}, '
                f'timeout = "{timeout}s"'
            ),
        ),
        wait_ports=[port],
    )
    wait_status(sock, "a", "UP", 10)
    wait_status(sock, "b", "UP", 10)
    a_port = a.port
    a.kill()
    went_down = wait_status(sock, "a", "DOWN", 10)
    bound = fall * interval + timeout
    print(f"\nstopped sink marked DOWN after {went_down:.3f}s (bound {bound:.1f}s)")
    assert went_down <= bound, f"DOWN after {went_down:.3f}s, more than fall x interval + timeout = {bound}s"
    row = stat_rows(sock)["a"]
    assert row["check_status"] == "L4CON" and row["last_chk"] == "Connection refused"
    down = [line for line in health_lines(daemon) if "Server mx/a is DOWN" in line]
    assert len(down) == 1 and 'reason: Layer4 connection problem, info: "Connection refused"' in down[0]

    # Traffic moves away: new sessions go to b without even trying a.
    before = len(splice_lines(daemon))
    done = smtp_source(port, sessions=4, messages=12, size=300, sender="s@client.test", rcpt="r@example.test")
    assert done.returncode == 0, done.stderr
    b.wait_for_count(12)
    wait_until(lambda: len(splice_lines(daemon)) >= before + 12, 10, "12 session log lines")
    new = splice_lines(daemon)[before:]
    # (However the clients hang up, each session went to b at the first attempt: 0 retries.)
    assert [line for line in new if not re.search(r" mx/b .* \d+/\d+/\d+/0( |$)", line)] == []

    # It comes back after `rise` successful checks.
    a2: SmtpSink = sink_factory(port=a_port)
    came_back = wait_status(sock, "a", "UP", 10)
    up_bound = rise * interval + timeout
    print(f"restarted sink marked UP after {came_back:.3f}s (bound {up_bound:.1f}s)")
    assert came_back <= up_bound
    up = [line for line in health_lines(daemon) if "Server mx/a is UP" in line]
    assert len(up) == 1 and "reason: Layer7 check passed, code: 250" in up[0]
    done = smtp_source(port, sessions=2, messages=10, size=300, sender="s@client.test", rcpt="r@example.test")
    assert done.returncode == 0, done.stderr
    a2.wait_for_count(5)


def test_server_answering_421_fails_the_smtp_check(
    sink_factory: Factory, relaybal_factory: Factory, peer_dir: Path
) -> None:
    busy: SmtpSink = sink_factory(options=["-Q", "CONNECT"])  # 421 at once, then hangs up
    good: SmtpSink = sink_factory()
    port = free_port()
    sock = peer_dir / "admin.sock"
    daemon: RelaybalDaemon = relaybal_factory(
        config_text(
            port, [("busy", busy.port), ("good", good.port)], sock, check='kind = "smtp", interval = "1s"'
        ),
        wait_ports=[port],
    )
    wait_status(sock, "busy", "DOWN", 10)
    row = stat_rows(sock)["busy"]
    assert (row["check_status"], row["check_code"], row["check_desc"]) == (
        "L7STS",
        "421",
        "Layer7 wrong status",
    )
    wait_status(sock, "good", "UP", 10)
    assert stat_rows(sock)["good"]["check_status"] == "L7OK"
    [line] = [line for line in health_lines(daemon) if "mx/busy is DOWN" in line]
    assert (
        'Server mx/busy is DOWN, reason: Layer7 wrong status, code: 421, info: "4.0.0 Server closing' in line
    )
    # Clients never meet the busy server (no verify_banner here: only health keeps it away).
    for _ in range(6):
        transcript = send_one_message(port)
        assert transcript.accepted, transcript
    good.wait_for_count(6)


def test_drain_stops_new_connections_while_an_open_one_completes(
    sink_factory: Factory, relaybal_factory: Factory, peer_dir: Path
) -> None:
    a: SmtpSink = sink_factory()
    b: SmtpSink = sink_factory()
    port = free_port()
    sock = peer_dir / "admin.sock"
    daemon: RelaybalDaemon = relaybal_factory(
        config_text(port, [("a", a.port), ("b", b.port)], sock, check='kind = "smtp", interval = "1s"'),
        wait_ports=[port],
    )
    config = daemon.config_path
    # One client is in the middle of a transaction…
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10)
    client.ehlo()
    client.mail("s@client.test")
    client.rcpt("r@example.test")
    wait_until(lambda: any(r["scur"] == "1" for r in stat_rows(sock).values()), 10, "the open session")
    busy, other = ("a", b) if stat_rows(sock)["a"]["scur"] == "1" else ("b", a)
    busy_sink = a if busy == "a" else b
    other_name = "b" if busy == "a" else "a"
    # …when its server is drained.
    done = ctl(config, "set", "server", f"mx/{busy}", "state", "drain")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert stat_rows(sock)[busy]["status"] == "DRAIN"
    state = admin(sock, "show servers state mx").splitlines()
    [row] = [line.split() for line in state[2:] if line.split()[3:4] == [busy]]
    assert row[6] == "8"  # SRV_ADMF_FDRAIN
    for _ in range(4):
        assert send_one_message(port).accepted
    other.wait_for_count(4)
    wait_until(lambda: len(splice_lines(daemon)) == 4, 10, "4 session log lines")
    assert all(f" mx/{other_name} " in line for line in splice_lines(daemon))
    # The open session still finishes on the drained server.
    client.data(b"Subject: drained\r\n\r\nstill delivered\r\n")
    client.quit()
    wait_until(lambda: "still delivered" in "".join(m.text for m in busy_sink.messages()), 10, "the message")
    assert busy_sink.count() == 1
    wait_until(lambda: stat_rows(sock)[busy]["scur"] == "0", 10, "the session to end")
    drained = [line for line in health_lines(daemon) if f"Server mx/{busy} enters drain state" in line]
    assert len(drained) == 1
    # Back to ready: it takes traffic again.
    assert ctl(config, "set", "server", f"mx/{busy}", "state", "ready").returncode == 0
    for _ in range(4):
        assert send_one_message(port).accepted
    busy_sink.wait_for_count(2)


def test_show_servers_state_parses_with_haproxys_field_list(
    sink_factory: Factory, relaybal_factory: Factory, haproxy_factory: Factory, peer_dir: Path
) -> None:
    a: SmtpSink = sink_factory()
    dead_port = free_port()
    port = free_port()
    sock = peer_dir / "admin.sock"
    relaybal_factory(
        config_text(
            port, [("mail1", a.port), ("mail2", dead_port)], sock, check='kind = "tcp", interval = "1s"'
        ),
        wait_ports=[port],
    )
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
    wait_status(sock, "mail2", "DOWN", 10)
    answer = admin(sock, "show servers state")
    assert answer.endswith("\n\n")  # the end-of-output marker
    lines = answer[:-2].split("\n")
    assert lines[0] == "1"
    assert lines[1].startswith("# ") and lines[1][2:].split(" ") == HAPROXY_SERVERS_STATE_V1
    rows = [dict(zip(HAPROXY_SERVERS_STATE_V1, line.split(" "), strict=True)) for line in lines[2:]]
    assert [(r["be_name"], r["srv_name"], r["srv_port"]) for r in rows] == [
        ("mx", "mail1", str(a.port)), ("mx", "mail2", str(dead_port)),
    ]  # fmt: skip
    for row in rows:
        for field in NUMERIC_FIELDS:
            assert re.fullmatch(r"-?\d+", row[field]), (field, row[field])
    assert (rows[0]["srv_op_state"], rows[1]["srv_op_state"]) == ("2", "0")
    assert rows[1]["srv_check_status"] == "8" and rows[1]["srv_check_result"] == "2"  # L4CON, failed

    # HAProxy itself prints the same version line and header, and as many fields per server.
    hsock = peer_dir / "haproxy.sock"
    hport = free_port()
    haproxy: HAProxy = haproxy_factory(
        haproxy_preamble().replace("global\n", f"global\n    stats socket {hsock} mode 660 level admin\n", 1)
        + f"listen mx\n    bind 127.0.0.1:{hport}\n    server mail1 127.0.0.1:{a.port} check\n",
        wait_ports=[hport],
    )
    wait_until(hsock.exists, 10, "HAProxy's stats socket")
    theirs = admin(hsock, "show servers state").split("\n")
    assert theirs[:2] == lines[:2]
    assert len(theirs[2].split(" ")) == len(lines[2].split(" "))
    assert haproxy.running


def test_socat_style_and_ctl_readable_output(
    sink_factory: Factory, relaybal_factory: Factory, peer_dir: Path
) -> None:
    a: SmtpSink = sink_factory()
    port = free_port()
    sock = peer_dir / "admin.sock"
    daemon: RelaybalDaemon = relaybal_factory(
        config_text(port, [("mail1", a.port)], sock, backend='stick = { size = 100, expire = "10m" }'),
        wait_ports=[port],
    )
    info = admin(sock, "show info;show backend")
    assert info.startswith("Name: relaybal\n") and info.endswith("\n\n# name\nmx\n\n")
    assert admin(sock, "frobnicate") == "Unknown command 'frobnicate'; 'help' lists the commands.\n\n"
    assert send_one_message(port, source_address=("127.0.0.55", 0)).accepted
    table = ctl(daemon.config_path, "show", "table", "mx")
    assert table.returncode == 0
    out = table.stdout.splitlines()
    assert out[0] == "# table: mx, type: ip, size:100, used:1"
    assert out[1].split() == ["id", "key", "use", "exp", "server_id", "server_key"]
    assert out[2].split()[1] == "127.0.0.55" and out[2].split()[-1] == "mail1"
    state = ctl(daemon.config_path, "show", "servers", "state")
    assert state.returncode == 0 and state.stdout.splitlines()[0].split()[:4] == [
        "be_id", "be_name", "srv_id", "srv_name",
    ]  # fmt: skip
    raw = ctl(daemon.config_path, "--raw", "show", "servers", "state")
    assert raw.stdout.startswith("1\n# be_id be_name ") and raw.stdout.endswith(" 0\n\n")
    assert len(raw.stdout.splitlines()) == len(admin(sock, "show servers state").splitlines())
    bad = ctl(daemon.config_path, "set", "server", "mx/nope", "state", "drain")
    assert (bad.returncode, bad.stdout, bad.stderr) == (1, "", "No such server.\n")
    assert daemon.running  # nothing a client sent disturbed it


def _certificate(directory: Path, days: float) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw.test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "gw.crt", directory / "gw.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_starttls_check_against_postfix_reports_certificate_days(
    postfix_factory: Factory, sink_factory: Factory, relaybal_factory: Factory, peer_dir: Path
) -> None:
    cert, key = _certificate(peer_dir, days=10.5)
    postfix: PrivatePostfix = postfix_factory(
        {
            "smtpd_tls_cert_file": str(cert),
            "smtpd_tls_key_file": str(key),
            "smtpd_tls_security_level": "may",
            "smtpd_tls_loglevel": "1",
        }
    )
    plain: SmtpSink = sink_factory()  # smtp-sink offers no STARTTLS
    port = free_port()
    sock = peer_dir / "admin.sock"
    relaybal_factory(
        config_text(
            port,
            [("gw", postfix.port), ("plain", plain.port)],
            sock,
            check='kind = "starttls", interval = "1s", timeout = "3s"',
        ),
        wait_ports=[port],
    )
    wait_until(lambda: stat_rows(sock)["gw"]["check_status"] in ("L7OK", "* L7OK"), 20, "a passed TLS check")
    row = stat_rows(sock)["gw"]
    assert row["status"] == "UP" and "TLS established; certificate expires in 10 days" in row["last_chk"]
    wait_status(sock, "plain", "DOWN", 10)
    assert stat_rows(sock)["plain"]["check_status"] == "L7RSP"
    assert stat_rows(sock)["plain"]["last_chk"] == "STARTTLS not offered"
    # Postfix saw complete, polite sessions: TLS, a second EHLO, QUIT; nothing aborted.
    wait_until(lambda: "starttls=1" in postfix.log(), 10, "Postfix logging a STARTTLS session")
    sessions = [line for line in postfix.log().splitlines() if "disconnect from" in line]
    assert sessions and all("quit=1" in line for line in sessions), sessions
    assert "lost connection" not in postfix.log()


def test_real_socat_speaks_to_the_admin_socket(
    sink_factory: Factory, relaybal_factory: Factory, peer_dir: Path
) -> None:
    """``echo "show servers state" | socat stdio UNIX-CONNECT:…`` works as it does for HAProxy."""
    socat = require_program("socat")
    a: SmtpSink = sink_factory()
    port = free_port()
    sock = peer_dir / "admin.sock"
    relaybal_factory(config_text(port, [("mail1", a.port)], sock), wait_ports=[port])
    wait_until(sock.exists, 10, "the admin socket")
    done = subprocess.run(
        [socat, "stdio", f"UNIX-CONNECT:{sock}"],
        input="show servers state\n", capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "1" and lines[1].startswith("# be_id be_name srv_id srv_name srv_addr")
    assert lines[2].split(" ")[1:4] == ["mx", "1", "mail1"]
    done = subprocess.run(
        [socat, "stdio", f"UNIX-CONNECT:{sock}"],
        input="set server mx/mail1 state drain\n", capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == ""
    done = subprocess.run(
        [socat, "stdio", f"UNIX-CONNECT:{sock}"],
        input="show servers state mx\n", capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    assert done.stdout.splitlines()[2].split(" ")[6] == "8"  # srv_admin_state: drain (HAProxy's bit 8)
