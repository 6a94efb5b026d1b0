"""SIGTERM: drain on a fake clock, and the real daemon finishing an open session and exiting 0."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from peers import SmtpSink, free_port, port_is_listening, wait_until
from test_reload import Reactor, make_config
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from relaybal.drain import Drainer, open_sessions
from relaybal.service import RelaybalService


@attrs.define
class Fe:
    current: int = 0


def test_nothing_open_drains_at_once() -> None:
    clock = Clock()
    results: list[bool] = []
    Drainer({"a": Fe()}, clock, 30).start().addCallback(results.append)
    assert results == [True]


def test_waits_for_sessions_then_for_the_extra_waits() -> None:
    clock = Clock()
    fe = Fe(current=2)
    flushed: Deferred[None] = Deferred()
    results: list[bool] = []
    Drainer({"a": fe, "b": Fe()}, clock, 30, waits=[lambda: flushed]).start().addCallback(results.append)
    clock.advance(5)
    fe.current = 0
    clock.advance(1)
    assert results == []  # the spool (say) has not flushed yet
    flushed.callback(None)
    assert results == [True]
    assert not clock.getDelayedCalls()


def test_gives_up_after_the_timeout() -> None:
    clock = Clock()
    results: list[bool] = []
    Drainer({"a": Fe(current=1)}, clock, 30).start().addCallback(results.append)
    clock.advance(29.9)
    assert results == []
    clock.advance(0.2)
    assert results == [False]
    assert not clock.getDelayedCalls()


def test_cancel_and_failing_waits() -> None:
    clock = Clock()
    results: list[bool] = []
    drainer = Drainer({"a": Fe(current=1)}, clock, 30, waits=[lambda: 1 / 0])  # type: ignore[arg-type,return-value]
    drainer.start().addCallback(results.append)
    drainer.cancel()
    drainer.cancel()
    assert results == [False]
    other: list[bool] = []
    Drainer({"a": Fe()}, clock, 30, waits=[lambda: 1 / 0]).start().addCallback(other.append)  # type: ignore[arg-type,return-value]
    assert other == [True]  # a wait that fails does not hold the exit up


def test_open_sessions_counts_every_frontend() -> None:
    assert open_sessions({"a": Fe(3), "b": Fe(4), "c": object()}) == 7


def test_the_service_closes_frontend_listeners_keeps_admin_ones_and_stops_the_reactor() -> None:
    reactor = Reactor()
    config = make_config(
        admin={"http": "tcp:8404"}, **{"global": {"hostname": "lb.test", "drain_timeout": "10s"}}
    )
    service = RelaybalService(config, reactor, handle_signals=False)
    service.privilegedStartService()
    service.startService()
    reactor.running = True
    smtp = service.frontends["smtp"]
    smtp.current = 1
    drained: list[bool] = []

    @attrs.define
    class Relay:
        """A frontend that drains itself (as relay frontends will, answering 421)."""

        config: Any
        backend: Any
        ports: list[Any] = attrs.Factory(list)
        current: int = 0
        asked: int = 0

        def begin_drain(self) -> None:
            self.asked += 1

    relay = Relay(
        service.frontends["other"].config, service.backends["mx"], list(service.frontends["other"].ports)
    )
    service.frontends["other"] = relay  # type: ignore[assignment]
    service.terminate()
    service.drain().addCallback(drained.append)  # a second drain() joins the first
    assert service.runtime.stopping
    assert relay.asked == 1 and relay.ports and not any(p.stopped for p in relay.ports)
    assert smtp.ports == [] and all(p.stopped for p in reactor.ports if p.factory is smtp)
    assert not service.admin_ports["http"].stopped  # the stats page shows the drain
    reactor.advance(3)
    assert drained == [] and not reactor.hasStopped
    smtp.current = 0
    reactor.advance(0.1)
    assert drained == [True] and reactor.hasStopped
    service.stopService()


def test_a_second_sigterm_stops_at_once() -> None:
    reactor = Reactor()
    service = RelaybalService(make_config(), reactor, handle_signals=False)
    service.privilegedStartService()
    service.startService()
    reactor.running = True
    service.frontends["smtp"].current = 5
    service.terminate()
    reactor.advance(1)
    assert not reactor.hasStopped
    service.terminate()
    assert reactor.hasStopped
    service.stopService()


# --------------------------------------------------------------------------- the real daemon

Factory = Callable[..., Any]


def reply(sock: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and lines[-2][3:4] == b" ":
            return data


def exit_status(daemon: Any) -> int | None:
    wait_until(lambda: daemon.poll() is not None, 15, "the daemon to exit")
    status: int | None = daemon.returncode
    return status


def splice_config(port: int, sink_port: int, drain_timeout: str) -> str:
    return (
        f'[global]\nhostname = "lb.test"\ndrain_timeout = "{drain_timeout}"\n'
        f'[frontend.smtp]\nmode = "splice"\nlisten = ["tcp:{port}:interface=127.0.0.1"]\nbackend = "mx"\n'
        f'[[backend.mx.server]]\nname = "sink"\naddress = "127.0.0.1:{sink_port}"\n'
    )


@pytest.mark.peers
def test_sigterm_lets_open_sessions_finish_and_exits_0(
    sink_factory: Factory, relaybal_factory: Factory
) -> None:
    sink: SmtpSink = sink_factory()
    port = free_port()
    daemon = relaybal_factory(splice_config(port, sink.port, "30s"), wait_ports=[port])
    daemon.wait_for_log("relaybal ready")
    clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
    for client in clients:
        assert reply(client).startswith(b"220 ")
        client.sendall(b"EHLO client.test\r\n")
        assert reply(client).startswith(b"250")
        client.sendall(b"MAIL FROM:<a@client.test>\r\n")
        assert reply(client).startswith(b"250")
    os.kill(daemon.pid, signal.SIGTERM)
    daemon.wait_for_log("draining: listeners closed, 3 sessions open")
    # New clients are refused while the open sessions go on.
    wait_until(lambda: not port_is_listening("127.0.0.1", port), 5, "the listener to close")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    for number, client in enumerate(clients):
        client.sendall(f"RCPT TO:<{number}user@example.test>\r\n".encode())
        assert reply(client).startswith(b"250")
        client.sendall(b"DATA\r\n")
        assert reply(client).startswith(b"354")
        client.sendall(b"Subject: drain\r\n\r\nsent while draining\r\n.\r\n")
        assert reply(client).startswith(b"250")
        assert daemon.running  # one session still open keeps the process up
        client.sendall(b"QUIT\r\n")
        assert reply(client).startswith(b"221")
        client.close()
    assert exit_status(daemon) == 0
    assert "drained: every session finished" in daemon.log()
    assert sink.count() == 3
    assert sorted(sink.rcpt_args()) == [f"<{n}user@example.test>" for n in range(3)]


@pytest.mark.peers
def test_drain_timeout_closes_what_is_left_and_still_exits_0(
    sink_factory: Factory, relaybal_factory: Factory
) -> None:
    sink: SmtpSink = sink_factory(dump=False)
    port = free_port()
    daemon = relaybal_factory(splice_config(port, sink.port, "1s"), wait_ports=[port])
    daemon.wait_for_log("relaybal ready")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as idle:
        assert reply(idle).startswith(b"220 ")
        os.kill(daemon.pid, signal.SIGTERM)
        assert exit_status(daemon) == 0
        assert idle.recv(100) == b""  # closed by the exiting daemon
    assert "drain timeout: closing 1 sessions still open" in daemon.log()
