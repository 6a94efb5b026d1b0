"""The real ``twistd relaybal`` and ``relaybal`` commands: start-up errors and logging."""

from __future__ import annotations

import json
import pathlib
import socket
import subprocess
import sys

BIN = pathlib.Path(sys.executable).parent


def splice_config(directory: pathlib.Path, listen: str) -> pathlib.Path:
    """A one-frontend splice config listening on ``listen``, its server on the unused port 9."""
    config = directory / "r.toml"
    config.write_text(
        f'[frontend.a]\nmode = "splice"\nlisten = ["{listen}"]\nbackend = "mx"\n'
        '[[backend.mx.server]]\nname = "a"\naddress = "127.0.0.1:9"\n'
    )
    return config


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*args], capture_output=True, text=True, timeout=timeout, check=False)


def test_twistd_rejects_a_bad_config_with_every_problem(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[frontend.a]\nmode = "splice"\nlisten = ["tcp:0"]\nbackend = "nope"\n'
        '[backend.mx]\nbalance = "fastest"\n[[backend.mx.server]]\nname = "a"\naddress = "10.0.0.1"\n'
    )
    done = run(str(BIN / "twistd"), "-n", "--pidfile=", "relaybal", "-c", str(bad))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert f'{bad}: frontend.a.backend: no backend named "nope" (known: mx)' in lines
    assert any(line.startswith(f'{bad}: backend.mx.balance: "fastest" is not allowed') for line in lines)
    assert f'{bad}: backend.mx.server[0].address: "10.0.0.1" has no port (expected host:port)' in lines


def test_twistd_unreadable_or_not_toml_exits_2(tmp_path: pathlib.Path) -> None:
    done = run(str(BIN / "twistd"), "-n", "--pidfile=", "relaybal", "-c", str(tmp_path / "none.toml"))
    assert done.returncode == 2 and "cannot read" in done.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[frontend.a\n")
    done = run(str(BIN / "relaybal"), "check-config", str(broken))
    assert done.returncode == 2 and "not valid TOML" in done.stderr and "line 1" in done.stderr


def test_listen_failure_is_reported_and_exits_1(tmp_path: pathlib.Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = splice_config(tmp_path, f"tcp:{port}:interface=127.0.0.1")
        done = run(str(BIN / "twistd"), "-n", "--pidfile=", "relaybal", "-c", str(config))
    assert done.returncode == 1
    # twistd -n sends stderr to its log on stdout
    assert f"relaybal: frontend.a.listen: cannot listen on 'tcp:{port}:interface=127.0.0.1'" in (
        done.stdout + done.stderr
    )


def test_json_log_format(tmp_path: pathlib.Path) -> None:
    """--log-format json: every line of the log is a JSON event."""
    port = free_tcp_port()
    config = splice_config(tmp_path, f"tcp:{port}:interface=127.0.0.1")
    proc = subprocess.Popen(
        [str(BIN / "twistd"), "-n", "--pidfile=", "relaybal", "--log-format", "json", "-c", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    with proc:
        try:
            check_json_log(proc)
        finally:
            proc.kill()


def check_json_log(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    events = []
    for line in proc.stdout:  # wait for the start-up line, then stop the daemon
        events.append(json.loads(line))
        if "relaybal ready" in events[-1].get("log_format", ""):
            break
    proc.terminate()
    rest, _ = proc.communicate(timeout=20)
    events.extend(json.loads(line) for line in rest.splitlines() if line.strip())
    started = [e for e in events if e.get("log_namespace") == "relaybal"]
    assert started and started[0]["name"] == "a" and started[0]["mode"] == "splice"
    # SIGTERM drains (nothing is open here) and stops the reactor itself: a clean exit, status 0.
    assert any(e.get("log_format") == "Server Shut Down." for e in events)
    assert proc.returncode == 0


def test_systemd_endpoint_without_handed_over_socket(tmp_path: pathlib.Path) -> None:
    config = splice_config(tmp_path, "systemd:domain=INET:index=0")
    done = run(str(BIN / "twistd"), "-n", "--pidfile=", "relaybal", "-c", str(config))
    assert done.returncode == 1
    assert (
        "relaybal: frontend.a.listen: cannot listen on 'systemd:domain=INET:index=0'"
        in done.stdout + done.stderr
    )


def test_twist_runs_the_plugin(tmp_path: pathlib.Path) -> None:
    """The newer runner: ``twist relaybal -c FILE`` (it logs JSON when not on a terminal)."""
    port = free_tcp_port()
    config = splice_config(tmp_path, f"tcp:{port}:interface=127.0.0.1")
    proc = subprocess.Popen(
        [str(BIN / "twist"), "relaybal", "-c", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    with proc:
        try:
            ready = False
            for line in proc.stdout:
                if "relaybal ready" in line:
                    ready = True
                    break
            with socket.create_connection(("127.0.0.1", port)) as client:
                client.settimeout(10)
                assert client.recv(100).startswith(b"421 4.3.2 ")  # port 9: nothing listens
            proc.terminate()
            proc.communicate(timeout=20)
            assert ready
        finally:
            proc.kill()
