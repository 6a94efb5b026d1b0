"""The real daemon: tcp, tcp6 and unix listeners, and back-pressure on a stalled server."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import SmtpSink, free_port, wait_until

pytestmark = pytest.mark.peers

Factory = Callable[..., Any]


def greeting_of(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
    return data


def test_tcp_tcp6_and_unix_listeners(
    sink_factory: Factory, relaybal_factory: Factory, peer_dir: Path
) -> None:
    sink: SmtpSink = sink_factory(dump=False)
    port4, port6 = free_port(), free_port("::1")
    path = peer_dir / "smtp.sock"
    relaybal_factory(
        "[frontend.smtp]\n"
        'mode = "splice"\n'
        f'listen = ["tcp:{port4}:interface=127.0.0.1", "tcp6:{port6}:interface=\\\\:\\\\:1", "unix:{path}"]\n'
        'backend = "mx"\n'
        f'[[backend.mx.server]]\nname = "sink"\naddress = "127.0.0.1:{sink.port}"\n',
        wait_ports=[port4],
    )
    clients = [
        socket.create_connection(("127.0.0.1", port4)),
        socket.create_connection(("::1", port6)),
    ]
    unix = socket.socket(socket.AF_UNIX)
    unix.connect(str(path))
    clients.append(unix)
    for client in clients:
        with client:
            assert greeting_of(client).startswith(b"220 ")


@pytest.fixture
def stalled_server() -> Iterator[int]:
    """A server that greets and then never reads another byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []

    def serve() -> None:
        conn, _ = listener.accept()
        accepted.append(conn)
        conn.sendall(b"220 stalled ESMTP\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    thread.join(5)
    for conn in accepted:
        conn.close()
    listener.close()


def test_back_pressure_bounds_what_a_client_can_push(stalled_server: int, relaybal_factory: Factory) -> None:
    """A server that stops reading stops the client too: relaybal does not buffer without bound."""
    port = free_port()
    daemon = relaybal_factory(
        "[frontend.smtp]\n"
        'mode = "splice"\n'
        f'listen = ["tcp:{port}:interface=127.0.0.1"]\n'
        'backend = "mx"\n'
        '[backend.mx]\ntimeout_server = "2s"\n'
        f'[[backend.mx.server]]\nname = "stalled"\naddress = "127.0.0.1:{stalled_server}"\n',
        wait_ports=[port],
    )
    limit = 256 * 1024 * 1024
    block = b"x" * 65536
    sent = 0
    with socket.create_connection(("127.0.0.1", port)) as client:
        assert greeting_of(client).startswith(b"220 stalled")
        client.setblocking(False)
        # Push until the connection stays unwritable for a second (the condition we
        # wait for), or until far more than any bounded buffer could hold.
        while sent < limit:
            _, writable, _ = select.select([], [client], [], 1.0)
            if not writable:
                break
            try:
                sent += client.send(block)
            except BlockingIOError:
                continue
    # Kernel socket buffers on both hops plus relaybal's bounded buffer (Twisted pauses
    # the reading side at 64 KiB queued) hold a few MiB at most.
    assert sent < 32 * 1024 * 1024, f"client pushed {sent} bytes into a stalled server"
    # It is the server's turn and it never answers: timeout_server ends the session (sD),
    # with nothing left behind even though bytes were still queued for the server.
    wait_until(lambda: "mx/stalled" in daemon.log(), 10, "the session's log line")
    [line] = [line for line in daemon.log().splitlines() if "mx/stalled" in line]
    assert " sD " in line and '"idle timeout"' in line


def test_systemd_socket_activation(sink_factory: Factory, peer_dir: Path) -> None:
    """A listening socket handed over as fd 3 with LISTEN_FDS/LISTEN_PID, as systemd does."""
    import subprocess
    import sys

    sink: SmtpSink = sink_factory(dump=False)
    config = peer_dir / "systemd.toml"
    config.write_text(
        '[frontend.smtp]\nmode = "splice"\nlisten = ["systemd:domain=INET:index=0"]\nbackend = "mx"\n'
        f'[[backend.mx.server]]\nname = "sink"\naddress = "127.0.0.1:{sink.port}"\n'
    )
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    twistd = str(Path(sys.executable).parent / "twistd")
    log = (peer_dir / "systemd.log").open("w")

    fd = listener.fileno()
    # bash moves the socket to fd 3 and execs twistd, keeping its pid for LISTEN_PID.
    script = (
        f"exec 3<&{fd} {fd}<&-; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=smtp "
        f'exec {twistd} -n --pidfile= relaybal -c "$0"'
    )
    proc = subprocess.Popen(
        ["bash", "-c", script, str(config)], stdout=log, stderr=subprocess.STDOUT, pass_fds=(fd,)
    )
    try:
        listener.close()  # only the daemon holds it now
        wait_until(lambda: "relaybal ready" in (peer_dir / "systemd.log").read_text(), 20, "relaybal ready")
        with socket.create_connection(("127.0.0.1", port)) as client:
            assert greeting_of(client).startswith(b"220 ")
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
