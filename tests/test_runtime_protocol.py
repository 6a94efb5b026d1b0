"""The runtime-API socket protocol on Twisted's fakes, and the socket file's life cycle."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
from health_fakes import config_of
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport

from relaybal.admin import runtime as runtime_module
from relaybal.admin.commands import RuntimeCommands
from relaybal.admin.runtime import (
    AdminSocketError,
    RuntimeFactory,
    listen_admin_socket,
    remove_stale_socket,
)
from relaybal.admin.stats import ProcessView
from relaybal.balance.backend import Backend


class Conn:
    def __init__(self, idle_timeout: float = 60.0) -> None:
        self.clock = Clock()
        config = config_of()
        self.backend = Backend(config.backends["mx"], self.clock)
        view = ProcessView({"mx": self.backend}, {}, self.clock)
        self.factory = RuntimeFactory(RuntimeCommands(view), self.clock, idle_timeout)
        self.protocol = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> bytes:
        self.transport.clear()
        self.protocol.dataReceived(data)
        return self.transport.value()


def test_one_line_answered_then_closed() -> None:
    c = Conn()
    assert c.send(b"show backend\n") == b"# name\nmx\n\n"
    assert c.transport.disconnecting
    assert c.send(b"show backend\n") == b""  # nothing more is read


def test_several_commands_on_one_line_crlf_tolerated() -> None:
    c = Conn()
    assert c.send(b"get weight mx/a; get weight mx/b\r\n") == b"1 (initial 1)\n\n1 (initial 1)\n\n"


def test_interactive_mode_prompts_until_quit() -> None:
    c = Conn()
    assert c.send(b"prompt\n") == b"\n> "
    assert not c.transport.disconnecting
    assert c.send(b"set server mx/a state drain\n") == b"\n> "
    assert c.backend.servers[0].admin_state == "drain"
    assert c.send(b"get weight mx/a\n") == b"1 (initial 1)\n\n> "
    assert c.send(b"quit\n") == b""
    assert c.transport.disconnecting


def test_half_close_still_gets_the_answer_even_without_a_newline() -> None:
    """``echo cmd | socat`` (or printf without newline) shuts its side down after sending."""
    c = Conn()
    c.protocol.dataReceived(b"show back")
    c.protocol.dataReceived(b"end")
    assert c.transport.value() == b""
    c.protocol.readConnectionLost()
    assert c.transport.value() == b"# name\nmx\n\n" and c.transport.disconnecting


def test_half_close_after_a_complete_line_answers_once() -> None:
    c = Conn()
    c.protocol.dataReceived(b"show backend\n")
    c.protocol.readConnectionLost()
    assert c.transport.value() == b"# name\nmx\n\n"


def test_overlong_line_is_refused_and_closed() -> None:
    c = Conn()
    out = c.send(b"x" * 20000)
    assert out == b"Command line too long (limit 16384 bytes).\n\n" and c.transport.disconnecting


def test_idle_connection_is_closed() -> None:
    c = Conn(idle_timeout=10)
    c.send(b"prompt\n")
    c.clock.advance(9)
    c.send(b"show backend\n")  # activity restarts the idle time
    c.clock.advance(9)
    assert not c.transport.disconnecting
    c.clock.advance(1)
    assert c.transport.disconnecting
    c.protocol.connectionLost(None)
    assert c.clock.getDelayedCalls() == []


def test_an_unexpected_failure_never_escapes(monkeypatch: pytest.MonkeyPatch) -> None:
    c = Conn()
    events: list[dict[str, Any]] = []
    from twisted.logger import Logger

    monkeypatch.setattr(runtime_module, "log", Logger(observer=events.append))

    def explode(line: str, session: Any) -> str:
        raise MemoryError("gone")

    monkeypatch.setattr(c.factory.commands, "execute_line", explode)
    assert c.send(b"show info\n") == b"Internal error.\n\n"
    assert events and c.transport.disconnecting


def test_listen_uses_mode_0660(tmp_path: Path) -> None:
    reactor = MemoryReactor()
    path = str(tmp_path / "admin.sock")
    factory = RuntimeFactory(RuntimeCommands(ProcessView({}, {}, Clock())), Clock())
    listen_admin_socket(reactor, path, factory)
    [(address, got_factory, _backlog, mode, _want_pid)] = reactor.unixServers
    assert address == path and got_factory is factory and mode == 0o660


def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "admin.sock")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)
    dead.close()  # the file stays, nobody listens: what a killed daemon leaves
    assert os.path.exists(path)
    remove_stale_socket(path)
    assert not os.path.exists(path)
    remove_stale_socket(path)  # nothing there: nothing to do


def test_live_socket_or_other_file_is_not_touched(tmp_path: Path) -> None:
    path = str(tmp_path / "admin.sock")
    live = socket.socket(socket.AF_UNIX)
    live.bind(path)
    live.listen(1)
    try:
        with pytest.raises(AdminSocketError, match="another process is listening"):
            remove_stale_socket(path)
        assert os.path.exists(path)
    finally:
        live.close()
    regular = tmp_path / "not-a-socket"
    regular.write_text("keep me")
    with pytest.raises(AdminSocketError, match="exists and is not a socket"):
        remove_stale_socket(str(regular))
    assert regular.read_text() == "keep me"


def test_listen_failure_is_reported_readably(tmp_path: Path) -> None:
    from twisted.internet.error import CannotListenError

    class Refusing:
        def listenUNIX(self, path: str, factory: Any, mode: int) -> Any:
            raise CannotListenError(None, path, PermissionError(13, "Permission denied"))

    factory = RuntimeFactory(RuntimeCommands(ProcessView({}, {}, Clock())), Clock())
    path = str(tmp_path / "admin.sock")
    with pytest.raises(AdminSocketError, match=f"cannot listen on {path}: Permission denied"):
        listen_admin_socket(Refusing(), path, factory)
