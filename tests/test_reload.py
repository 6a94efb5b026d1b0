"""Reloading: Backend.reconfigure on a fake clock, and whole reloads of a service on a memory reactor."""

from __future__ import annotations

import os
import random
import tempfile
from typing import Any

import attrs
import pytest
from health_fakes import PASS, REFUSED, config_of, make_backend
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock

from relaybal.admin.commands import ERROR, INFO, CliSession, RuntimeCommands
from relaybal.balance.backend import DRAIN, MAINT, READY
from relaybal.config import Config, parse_config
from relaybal.reload import ReloadRefused, apply_config, describe_changes, reload_service
from relaybal.service import RelaybalService

# --------------------------------------------------------------------------- Backend.reconfigure


def servers(*specs: dict[str, Any]) -> list[dict[str, Any]]:
    return list(specs)


A = {"name": "a", "address": "10.0.0.1:25"}
B = {"name": "b", "address": "10.0.0.2:25"}
C = {"name": "c", "address": "10.0.0.3:25"}


def test_kept_servers_keep_their_state_and_units_in_flight() -> None:
    backend = make_backend(servers(A, B), check={"rise": 2, "fall": 3})
    a, b = backend.servers
    a.acquire()
    a.acquire()
    a.bytes_in = 500
    b.check_done(REFUSED)
    b.check_done(REFUSED)
    b.check_done(REFUSED)
    assert not b.up
    new = config_of(servers({**A, "weight": 4}, B, C), check={"rise": 2, "fall": 3}).backends["mx"]
    backend.reconfigure(new)
    assert [s.name for s in backend.servers] == ["a", "b", "c"]
    assert backend.servers[0] is a and backend.servers[1] is b
    assert (a.load, a.total, a.bytes_in, a.weight) == (2, 2, 500, 4)
    assert not b.up and b.last_check is not None and b.last_check.status == "L4CON"
    c = backend.servers[2]
    assert (c.sid, c.up, c.total) == (3, True, 0)
    assert backend.server("c") is c
    assert backend.config is new


def test_removed_servers_leave_but_their_units_finish() -> None:
    backend = make_backend(servers(A, B))
    a, b = backend.servers
    a.acquire()
    backend.reconfigure(config_of(servers(B)).backends["mx"])
    assert backend.servers == [b] and b.sid == 1
    assert backend.server("a") is None
    assert all(backend.pick() is b for _ in range(5))
    a.release()  # a session ending on the removed server touches nothing else
    assert a.load == 0 and b.load == 0


def test_a_changed_address_is_a_new_server() -> None:
    backend = make_backend(servers(A))
    a = backend.servers[0]
    a.acquire()
    backend.reconfigure(config_of(servers({**A, "address": "10.0.0.9:25"})).backends["mx"])
    assert backend.servers[0] is not a
    assert backend.servers[0].load == 0 and str(backend.servers[0].config.address) == "10.0.0.9:25"


def test_runtime_changes_survive_unless_the_configuration_changes_them() -> None:
    backend = make_backend(servers(A, B))
    a, b = backend.servers
    a.set_weight(7)
    b.set_admin_state(DRAIN)
    backend.reconfigure(config_of(servers(A, B), backend={"timeout_server": "1m"}).backends["mx"])
    assert (a.weight, b.admin_state) == (7, DRAIN)
    assert backend.config.timeout_server == 60
    backend.reconfigure(config_of(servers({**A, "weight": 2}, {**B, "state": "maint"})).backends["mx"])
    assert (a.weight, b.admin_state, b.up) == (2, MAINT, False)
    backend.reconfigure(config_of(servers({**A, "weight": 2}, B)).backends["mx"])
    assert (b.admin_state, b.up) == (READY, True)


def test_backup_flag_and_balance_changes() -> None:
    backend = make_backend(servers(A, B))
    a, b = backend.servers
    backend.reconfigure(
        config_of(servers(A, {**B, "backup": True}), backend={"balance": "first"}).backends["mx"]
    )
    assert backend.active == [a] and backend.backups == [b]
    assert [backend.pick() for _ in range(3)] == [a, a, a]
    a.set_admin_state(MAINT)
    assert backend.pick() is b


def test_check_changes_keep_the_verdict() -> None:
    backend = make_backend(servers(A, B), check={"rise": 2, "fall": 3})
    a, b = backend.servers
    a.check_done(PASS)
    assert a.health is not None and a.health.fully_up
    for _ in range(3):
        b.check_done(REFUSED)
    backend.reconfigure(config_of(servers(A, B), check={"rise": 3, "fall": 5}).backends["mx"])
    assert a.health is not None and (a.health.rise, a.health.fall, a.health.up) == (3, 5, True)
    assert a.health.fully_up
    assert b.health is not None and (b.health.up, b.health.health, b.up) == (False, 0, False)
    # Removing the check brings the down server back up.
    backend.reconfigure(config_of(servers(A, B)).backends["mx"])
    assert (b.health, b.up, b.last_check) == (None, True, None)
    # Adding one starts the servers up but unproven.
    backend.reconfigure(config_of(servers(A, B), check={"rise": 2, "fall": 2}).backends["mx"])
    assert a.health is not None and (a.health.up, a.health.health) == (True, 2)
    b.check_done(REFUSED)
    assert not b.up


def test_a_changed_stick_table_starts_empty() -> None:
    backend = make_backend(servers(A, B), stick={"size": 10})
    assert backend.stick is not None
    backend.stick.record(b"192.0.2.1", "a", 0.0)
    backend.reconfigure(config_of(servers(A, B), backend={"stick": {"size": 20}}).backends["mx"])
    assert backend.stick is not None and backend.stick.size == 20 and len(backend.stick) == 0
    backend.reconfigure(config_of(servers(A, B)).backends["mx"])
    assert backend.stick is None


# --------------------------------------------------------------------------- whole reloads


@attrs.define(eq=False)
class FakePort:
    port: int
    factory: Any
    stopped: bool = False

    def stopListening(self) -> None:
        self.stopped = True

    def getHost(self) -> Any:
        return None


class Reactor(MemoryReactorClock):
    """Listens on fake ports, which remember their factory and whether they were closed."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[FakePort] = []
        self.refuse: set[int] = set()

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> FakePort:
        if port in self.refuse:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        fake = FakePort(port, factory)
        self.ports.append(fake)
        factory.doStart()
        return fake


def make_config(**changes: Any) -> Config:
    data: dict[str, Any] = {
        "global": {"hostname": "lb.test"},
        "frontend": {
            "smtp": {"mode": "splice", "listen": ["tcp:2525", "tcp:2526"], "backend": "mx"},
            "other": {"mode": "splice", "listen": ["tcp:2600"], "backend": "mx"},
        },
        "backend": {
            "mx": {"server": [A, B], "check": {"kind": "tcp"}},
            "old": {"server": [C]},
        },
    }
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return parse_config(data, "/etc/relaybal/test.toml")


@pytest.fixture
def svc() -> RelaybalService:
    service = RelaybalService(make_config(), Reactor(), random.Random(1), handle_signals=False)
    service.privilegedStartService()
    service.startService()
    yield service  # type: ignore[misc]
    service.stopService()


def port_of(service: RelaybalService, number: int) -> FakePort:
    [port] = [p for p in service.reactor.ports if p.port == number and not p.stopped]
    return port


def test_listeners_kept_opened_closed_and_moved(svc: RelaybalService) -> None:
    smtp = svc.frontends["smtp"]
    kept, dropped, moved = port_of(svc, 2525), port_of(svc, 2526), port_of(svc, 2600)
    new = make_config(
        frontend__smtp__listen=["tcp:2525", "tcp:2600", "tcp:2700"],
        frontend__other=None,
    )
    lines = apply_config(svc, new)
    assert svc.frontends["smtp"] is smtp
    assert list(svc.frontends) == ["smtp"]
    assert smtp.ports == [kept, moved, port_of(svc, 2700)]
    assert not kept.stopped and not moved.stopped and dropped.stopped
    assert moved.factory is smtp  # the listener changed hands without closing
    assert set(svc.ports) == {kept, moved, port_of(svc, 2700)}
    assert "frontend other removed (its open sessions finish)" in lines
    assert "frontend smtp: listening on tcp:2600, tcp:2700; no longer on tcp:2526" in lines


def test_backends_added_changed_removed(svc: RelaybalService) -> None:
    mx, old = svc.backends["mx"], svc.backends["old"]
    a = mx.servers[0]
    a.acquire()
    new = make_config(
        backend__old=None,
        backend__extra={"server": [C]},
        backend__mx__server=[A, C],
        backend__mx__timeout_server="10s",
        frontend__other__backend="extra",
    )
    apply_config(svc, new)
    assert list(svc.backends) == ["mx", "extra"]
    assert svc.backends["mx"] is mx and [s.name for s in mx.servers] == ["a", "c"]
    assert mx.servers[0] is a and a.load == 1
    assert svc.frontends["other"].backend is svc.backends["extra"]
    assert svc.frontends["smtp"].config.listen == ("tcp:2525", "tcp:2526")
    assert svc.frontends["smtp"].backend.config.timeout_server == 10
    assert set(svc.health) == {"mx", "extra"}
    assert set(svc.health["mx"].checkers) == set(mx.servers)  # checks follow the new servers
    assert old not in svc.backends.values()
    assert svc.runtime.backends is svc.backends  # the runtime API and the stats page see it


def test_a_listener_that_cannot_open_refuses_everything(svc: RelaybalService) -> None:
    before = (svc.config, dict(svc.backends), dict(svc.frontends), list(svc.ports))
    svc.reactor.refuse.add(2800)
    new = make_config(
        frontend__smtp__listen=["tcp:2525", "tcp:2700", "tcp:2800"],
        backend__mx__server=[A],
    )
    with pytest.raises(ReloadRefused) as refused:
        apply_config(svc, new)
    assert refused.value.lines == [
        "/etc/relaybal/test.toml: frontend.smtp.listen[2]: cannot listen on 'tcp:2800': "
        "Couldn't listen on any:2800: [Errno 98] Address already in use."
    ]
    assert (svc.config, dict(svc.backends), dict(svc.frontends), list(svc.ports)) == before
    assert [s.name for s in svc.backends["mx"].servers] == ["a", "b"]
    assert port_of(svc, 2526) in svc.ports
    opened_then_closed = [p for p in svc.reactor.ports if p.port == 2700]
    assert len(opened_then_closed) == 1 and opened_then_closed[0].stopped


def test_a_systemd_listener_that_was_not_handed_over_refuses(svc: RelaybalService) -> None:
    with pytest.raises(ReloadRefused) as refused:
        apply_config(svc, make_config(frontend__smtp__listen=["systemd:domain=INET:index=7"]))
    [line] = refused.value.lines
    assert "frontend.smtp.listen[0]: cannot listen on 'systemd:domain=INET:index=7'" in line
    assert not port_of(svc, 2525).stopped


def test_reload_from_a_file(svc: RelaybalService) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write('[frontend.smtp]\nmode = "splice"\nlisten = ["tcp:2525"]\nbackend = "mx"\n')
        f.write('[[backend.mx.server]]\nname = "z"\naddress = "10.0.0.26:25"\n')
    try:
        lines = reload_service(svc, f.name)
        assert svc.config.source == f.name
        assert [s.name for s in svc.backends["mx"].servers] == ["z"]
        assert "backend old removed (its open sessions finish)" in lines
        assert (svc.runtime.reloads, svc.runtime.last_reload_ok) == (1, True)
        with open(f.name, "a") as again:
            again.write('[backend.mx]\nbalance = "nope"\n')
        with pytest.raises(ReloadRefused) as refused:
            reload_service(svc)
        assert refused.value.lines == [
            f'{f.name}: backend.mx.balance: "nope" is not allowed '
            "(expected one of: roundrobin, static-rr, leastconn, first, source, random)"
        ]
        assert (svc.runtime.reloads, svc.runtime.reload_failures, svc.runtime.last_reload_ok) == (1, 1, False)
        assert [s.name for s in svc.backends["mx"].servers] == ["z"]
        os.unlink(f.name)
        with pytest.raises(ReloadRefused, match="cannot read"):
            reload_service(svc)
    finally:
        if os.path.exists(f.name):
            os.unlink(f.name)


def test_no_reload_while_draining(svc: RelaybalService) -> None:
    svc.drain()
    with pytest.raises(ReloadRefused, match="draining"):
        reload_service(svc)
    assert svc.frontends["smtp"].ports == []
    assert svc.runtime.reload_failures == 1


def test_a_relay_frontend_that_cannot_be_built_refuses(svc: RelaybalService) -> None:
    relay = {
        "mode": "relay",
        "listen": ["tcp:2626"],
        "backend": "mx",
        "tls": {"certificate": "/nonexistent/cert.pem", "key": "/nonexistent/key.pem"},
    }
    with pytest.raises(ReloadRefused) as refused:
        apply_config(svc, make_config(frontend__relay=relay))
    [line] = refused.value.lines
    assert line.startswith("/etc/relaybal/test.toml: frontend.relay.tls: cannot read /nonexistent/cert.pem")
    assert "relay" not in svc.frontends
    assert not [p for p in svc.reactor.ports if p.port == 2626 and not p.stopped]


def test_a_mode_change_hands_the_listener_to_the_new_frontend(svc: RelaybalService) -> None:
    port = port_of(svc, 2600)
    old = svc.frontends["other"]
    # cut-through: no spool to open (this service runs on a fake reactor)
    apply_config(svc, make_config(frontend__other__mode="relay", frontend__other__delivery="cut-through"))
    new = svc.frontends["other"]
    assert new is not old and new.config.mode == "relay"
    assert port.factory is new and not port.stopped and new.ports == [port]


def test_the_stats_page_and_admin_socket_follow(svc: RelaybalService) -> None:
    apply_config(svc, make_config(admin={"http": "tcp:8404"}))
    site = svc.web
    assert site is not None and port_of(svc, 8404).factory is site
    apply_config(svc, make_config(admin={"http": "tcp:8405"}))
    assert svc.web is site and port_of(svc, 8405).factory is site
    assert not [p for p in svc.reactor.ports if p.port == 8404 and not p.stopped]
    apply_config(svc, make_config())
    assert svc.web is None and "http" not in svc.admin_ports


def test_describe_changes() -> None:
    old = make_config()
    assert describe_changes(old, old) == ["no changes"]
    new = make_config(
        backend__mx__server=[{**A, "weight": 3}, C],
        backend__mx__retries=5,
        frontend__smtp__maxconn=7,
        **{"global": {"hostname": "lb2.test"}},
    )
    assert describe_changes(old, new) == [
        "frontend smtp: settings changed",
        "backend mx: servers added: c; servers removed: b; servers changed: a; settings changed",
        "global settings changed",
    ]


# --------------------------------------------------------------------------- the runtime command


def test_reload_command() -> None:
    service = RelaybalService(make_config(), Reactor(), handle_signals=False)
    outcomes: list[tuple[bool, list[str]]] = [
        (True, ["backend mx: servers added: c"]),
        (False, ["f: bad", "f: worse"]),
    ]
    commands = RuntimeCommands(service.runtime, reload=lambda: outcomes.pop(0))
    session = CliSession()
    ok = commands.run(["reload"], session)
    assert (ok.lines, ok.severity) == (("backend mx: servers added: c",), INFO)
    refused = commands.run(["reload"], session)
    assert refused.severity == ERROR
    assert refused.lines == ("Reload refused; the running configuration is unchanged:", "f: bad", "f: worse")
    assert commands.run(["reload", "now"], session).lines == ("'reload' takes no arguments.",)
    assert RuntimeCommands(service.runtime).run(["reload"], session).severity == ERROR
    assert "reload" in commands.execute_line("help reload", session)
