"""etc/systemd/relaybal.{socket,service} and etc/systemd.toml fit together and work as systemd runs them.

systemd itself is not run: the socket unit's ``ListenStream=`` sockets are
bound here and handed over as systemd does (fds 3, 4, … with ``LISTEN_FDS``
and ``LISTEN_PID``), to the daemon running the example configuration. The
other way to get port 25, ``twistd --uid/--gid`` dropping root after the
listeners are open, is run for real when the tests run as root.
"""

from __future__ import annotations

import configparser
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from peers import SmtpSink, free_port, require_root, wait_until
from web_client import stats_json

from relaybal.config import load_config

ROOT = Path(__file__).parent.parent
UNITS = ROOT / "etc" / "systemd"
EXAMPLE = ROOT / "etc" / "systemd.toml"
TWISTD = str(Path(sys.executable).parent / "twistd")


def unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",), comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((UNITS / name).read_text().replace("\\\n", " "))
    return parser


def listen_streams() -> list[str]:
    return [
        line.split("=", 1)[1].strip()
        for line in (UNITS / "relaybal.socket").read_text().splitlines()
        if line.startswith("ListenStream=")
    ]


def test_the_socket_unit_and_the_example_configuration_agree() -> None:
    config = load_config(str(EXAMPLE))
    endpoints = [ep for fe in config.frontends.values() for ep in fe.listen]
    streams = listen_streams()
    assert len(streams) == len(endpoints) == 2
    for ep in endpoints:
        match = re.fullmatch(r"systemd:domain=(INET6?):index=(\d+)", ep)
        assert match, ep
        stream = streams[int(match.group(2))]
        assert stream.endswith(":25")
        assert match.group(1) == ("INET6" if stream.startswith("[") else "INET"), (ep, stream)
    socket_unit = unit("relaybal.socket")
    assert socket_unit["Socket"]["BindIPv6Only"] == "ipv6-only"
    assert socket_unit["Socket"]["Service"] == "relaybal.service"


def test_the_service_unit() -> None:
    service = unit("relaybal.service")["Service"]
    assert service["ExecStart"].split() == [
        "/opt/relaybal/.venv/bin/twistd", "-n", "--pidfile=", "relaybal", "-c", "/etc/relaybal/relaybal.toml",
    ]  # fmt: skip
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillSignal"] == "SIGTERM"
    assert (service["User"], service["Group"]) == ("relaybal", "relaybal")
    # systemd must wait longer than relaybal drains.
    assert int(service["TimeoutStopSec"]) > load_config(str(EXAMPLE)).global_.drain_timeout
    # The admin socket's directory is the one systemd creates for the service.
    assert load_config(str(EXAMPLE)).admin.socket == f"/run/{service['RuntimeDirectory']}/admin.sock"
    assert "relaybal.socket" in unit("relaybal.service")["Unit"]["Requires"]


def example_for(peer_dir: Path, sink: SmtpSink, http_port: int) -> Path:
    """etc/systemd.toml with its servers, admin socket and stats page moved into the test's reach."""
    text = EXAMPLE.read_text()
    text = re.sub(r'address = "192\.168\.1\.\d+:25"', f'address = "127.0.0.1:{sink.port}"', text)
    text = text.replace('"/run/relaybal/admin.sock"', f'"{peer_dir}/admin.sock"')
    text = text.replace('"tcp:8404:interface=127.0.0.1"', f'"tcp:{http_port}:interface=127.0.0.1"')
    text = text.replace('send_proxy = "v2"', 'send_proxy = "none"')  # smtp-sink speaks no PROXY
    assert str(sink.port) in text and str(http_port) in text and str(peer_dir) in text
    path = peer_dir / "relaybal.toml"
    path.write_text(text)
    return path


def greeting(family: int, address: tuple[Any, ...]) -> bytes:
    with socket.socket(family) as client:
        client.settimeout(10)
        client.connect(address)
        return client.recv(100)


@pytest.mark.peers
def test_socket_activation_with_the_example_configuration(sink_factory: Any, peer_dir: Path) -> None:
    sink: SmtpSink = sink_factory(dump=False)
    http_port = free_port()
    config = example_for(peer_dir, sink, http_port)
    # Bound as relaybal.socket says (on free ports instead of 25), in its order.
    v4 = socket.socket(socket.AF_INET)
    v4.bind(("127.0.0.1", 0))
    v6 = socket.socket(socket.AF_INET6)
    v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    v6.bind(("::1", 0))
    for s in (v4, v6):
        s.listen(128)
    fd4, fd6 = v4.fileno(), v6.fileno()
    script = (
        f"exec 100<&{fd4} 101<&{fd6} {fd4}<&- {fd6}<&-; exec 3<&100 4<&101 100<&- 101<&-; "
        f'LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES=smtp:smtp exec {TWISTD} -n --pidfile= relaybal -c "$0"'
    )
    log_path = peer_dir / "relaybal.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            ["bash", "-c", script, str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(fd4, fd6),
            start_new_session=True,
        )
    try:
        addresses = [(socket.AF_INET, v4.getsockname()), (socket.AF_INET6, v6.getsockname())]
        v4.close()
        v6.close()  # only the daemon holds them now
        wait_until(lambda: "relaybal ready" in log_path.read_text(), 20, "relaybal ready")
        for family, address in addresses:
            assert greeting(family, address).startswith(b"220 ")
        assert stats_json(http_port)["frontends"][0]["listen"] == [
            "systemd:domain=INET:index=0",
            "systemd:domain=INET6:index=1",
        ]
        # systemctl reload: the inherited listeners are kept (their endpoints did not change).
        config.write_text(config.read_text().replace("maxconn_per_client = 20", "maxconn_per_client = 30"))
        os.kill(proc.pid, signal.SIGHUP)
        wait_until(
            lambda: "reload: frontend smtp_inbound: settings changed" in log_path.read_text(), 10, "reload"
        )
        for family, address in addresses:
            assert greeting(family, address).startswith(b"220 ")
        # systemctl stop: drain, exit 0.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.mark.peers
def test_twistd_drops_root_after_opening_a_privileged_port(sink_factory: Any, peer_dir: Path) -> None:
    require_root("binding a port below 1024 and dropping privileges")
    sink: SmtpSink = sink_factory(dump=False)
    low = next(p for p in range(700, 1000) if _free(p))
    nobody = pwd.getpwnam("nobody")
    config = peer_dir / "relaybal.toml"
    config.write_text(
        f'[frontend.smtp]\nmode = "splice"\nlisten = ["tcp:{low}:interface=127.0.0.1"]\nbackend = "mx"\n'
        f'[[backend.mx.server]]\nname = "sink"\naddress = "127.0.0.1:{sink.port}"\n'
    )
    log_path = peer_dir / "relaybal.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", f"--uid={nobody.pw_uid}", f"--gid={nobody.pw_gid}",
             "relaybal", "-c", str(config)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until(lambda: "relaybal ready" in log_path.read_text(), 20, "relaybal ready")
        status = Path(f"/proc/{proc.pid}/status").read_text()
        uids = re.search(r"^Uid:\s+(.*)$", status, re.M)
        gids = re.search(r"^Gid:\s+(.*)$", status, re.M)
        assert uids and set(uids.group(1).split()) == {str(nobody.pw_uid)}
        assert gids and set(gids.group(1).split()) == {str(nobody.pw_gid)}
        assert greeting(socket.AF_INET, ("127.0.0.1", low)).startswith(b"220 ")
        # A reload re-reads the file as the unprivileged user and keeps the privileged port.
        config.write_text(config.read_text() + "weight = 2\n")
        os.kill(proc.pid, signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in log_path.read_text(), 10, "the reload")
        assert greeting(socket.AF_INET, ("127.0.0.1", low)).startswith(b"220 ")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
