"""``relaybal ctl``: answer splitting, readable tables, exit statuses."""

from __future__ import annotations

import io
import socket
import threading
from pathlib import Path

import pytest
from health_fakes import BUSY, PASS, config_of
from twisted.internet.task import Clock

from relaybal import cli
from relaybal.admin.commands import CliSession, RuntimeCommands
from relaybal.admin.ctl import align, readable, run_ctl, split_blocks
from relaybal.admin.stats import ProcessView
from relaybal.balance.backend import Backend


def test_split_blocks() -> None:
    assert split_blocks("\n") == [[]]
    assert split_blocks("\n[3]: No such server.\n\n") == [[], ["[3]: No such server."]]
    assert split_blocks("a\nb\n\nc\n\n") == [["a", "b"], ["c"]]
    assert split_blocks("cut short\n") == [["cut short"]]


def test_align() -> None:
    assert align([["name", "x"], ["a", "12345"]]) == ["name  x", "a     12345"]
    assert align([]) == []


def answers() -> tuple[RuntimeCommands, Backend]:
    clock = Clock()
    config = config_of(check={"kind": "smtp"}, backend={"stick": {"size": 10, "expire": "1m"}})
    backend = Backend(config.backends["mx"], clock)
    backend.servers[0].check_done(PASS)
    backend.servers[1].check_done(BUSY)
    backend.connected(backend.servers[0], b"192.0.2.7")
    return RuntimeCommands(ProcessView({"mx": backend}, {}, clock)), backend


def dump(commands: RuntimeCommands, line: str) -> list[str]:
    [block] = split_blocks(commands.execute_line(line, CliSession()))
    return block


def test_servers_state_becomes_an_aligned_table() -> None:
    commands, _ = answers()
    table = readable(dump(commands, "show servers state"))
    assert len(table) == 3
    assert table[0].split()[:4] == ["be_id", "be_name", "srv_id", "srv_name"]
    assert table[1].split()[:4] == ["1", "mx", "1", "a"]
    # Columns line up: each header starts where its values start.
    start = table[0].index("srv_name")
    assert table[1][start:].startswith("a ") and table[2][start:].startswith("b ")


def test_show_stat_table_keeps_only_columns_with_values() -> None:
    commands, _ = answers()
    table = readable(dump(commands, "show stat"))
    header = table[0].split()
    assert header[:2] == ["pxname", "svname"] and "status" in header and "check_status" in header
    assert "hrsp_1xx" not in header and "cookie" not in header
    assert table[2].split()[:2] == ["mx", "b"] and "L7STS" in table[2] and "DOWN" in table[2]


def test_table_entries_become_columns() -> None:
    commands, _ = answers()
    table = readable(dump(commands, "show table mx"))
    assert table[0] == "# table: mx, type: ip, size:10, used:1"
    assert table[1].split() == ["id", "key", "use", "exp", "server_id", "server_key"]
    assert table[2].split() == ["0x1", "192.0.2.7", "0", "60000", "1", "a"]


def test_other_answers_are_printed_as_they_are() -> None:
    assert readable(["Name: relaybal", "Pid: 1"]) == ["Name: relaybal", "Pid: 1"]
    assert readable([]) == []


class OneShotServer:
    """A UNIX socket that answers one connection with the runtime commands, in a thread."""

    def __init__(self, path: Path, commands: RuntimeCommands) -> None:
        self.path = str(path)
        self.commands = commands
        self.received = ""
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(self.path)
        self.sock.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            data = b""
            while not data.endswith(b"\n"):
                data += conn.recv(4096)
            self.received = data.decode()
            conn.sendall(self.commands.execute_line(self.received.strip(), CliSession()).encode())
        self.sock.close()


def test_run_ctl_prints_results_and_reports_errors(tmp_path: Path) -> None:
    commands, backend = answers()
    server = OneShotServer(tmp_path / "s", commands)
    out, err = io.StringIO(), io.StringIO()
    status = run_ctl(server.path, ["set", "server", "mx/a", "state", "drain;", "get", "weight", "mx/zz"],
                     raw=False, timeout=5, out=out, err=err)  # fmt: skip
    server.thread.join(5)
    assert server.received == "set severity-output number;set server mx/a state drain; get weight mx/zz\n"
    assert status == 1 and err.getvalue() == "No such server.\n" and out.getvalue() == ""
    assert backend.servers[0].admin_state == "drain"


def test_run_ctl_raw_prints_exactly_what_came(tmp_path: Path) -> None:
    commands, _ = answers()
    server = OneShotServer(tmp_path / "s", commands)
    out, err = io.StringIO(), io.StringIO()
    assert run_ctl(server.path, ["show", "backend"], raw=True, timeout=5, out=out, err=err) == 0
    server.thread.join(5)
    assert server.received == "show backend\n" and out.getvalue() == "# name\nmx\n\n"


def test_run_ctl_without_a_daemon_exits_2(tmp_path: Path) -> None:
    err = io.StringIO()
    assert run_ctl(str(tmp_path / "none"), ["help"], raw=False, timeout=1, out=io.StringIO(), err=err) == 2
    assert err.getvalue().startswith(f"relaybal ctl: {tmp_path / 'none'}: ")


def test_cli_ctl_needs_a_socket_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "r.toml"
    config.write_text(
        '[frontend.a]\nmode = "splice"\nlisten = ["tcp:2525"]\nbackend = "mx"\n'
        '[[backend.mx.server]]\nname = "a"\naddress = "127.0.0.1:25"\n'
    )
    assert cli.main(["ctl", "-c", str(config), "show", "info"]) == 2
    assert "admin.socket is not set" in capsys.readouterr().err
    assert cli.main(["ctl", "-c", str(tmp_path / "missing.toml"), "show", "info"]) == 2
    assert "cannot read" in capsys.readouterr().err
    with config.open("a") as f:
        f.write(f'[admin]\nsocket = "{tmp_path / "admin.sock"}"\n')
    assert cli.main(["ctl", "-c", str(config), "show", "info"]) == 2  # configured, but nobody listens
    assert f"{tmp_path / 'admin.sock'}" in capsys.readouterr().err
