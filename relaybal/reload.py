"""Reloading the configuration of a running process (``SIGHUP``, the runtime API's ``reload``).

A reload either applies all of a new configuration or none of it:

1. the file is read and validated; any problem refuses the reload, and every
   problem is logged (and answered to ``reload``), as ``check-config`` would
   print them;
2. everything that can fail is prepared without touching what runs: new
   frontends are built (certificates, users files), the stats page's users
   file is read, new listeners are opened; a failure closes what was just
   opened and refuses the reload;
3. then the new configuration is committed in one go, on the reactor thread.

What a reload keeps: listeners whose endpoint text is unchanged (they never
close, so no client is refused; an endpoint that moves to another frontend
keeps its socket too); established sessions, which finish on the objects
they started with (a removed frontend, backend or server lets its sessions
finish); each kept server's counters, health and runtime state (see
:meth:`~relaybal.balance.backend.Backend.reconfigure`); splice frontends'
counters. Backends whose configuration changed restart their health checks.
Relay frontends are rebuilt when their configuration changed or when they
use TLS (so a renewed certificate is read), and their counters restart.

Endpoints are matched by their exact text: ``"tcp:25"`` and
``"tcp:port=25"`` are two listeners on one port, so that change needs a
restart (the reload is refused with the bind error).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from relaybal.admin.runtime import AdminSocketError, listen_admin_socket
from relaybal.balance.backend import Backend
from relaybal.config import BackendConfig, Config, ConfigError, ConfigFileError, load_config
from relaybal.health.checks import HealthMonitor
from relaybal.relay.frontend import RelaySetupError
from relaybal.splice.frontend import SpliceFrontend

if TYPE_CHECKING:
    from relaybal.service import RelaybalService

log = Logger(namespace="relaybal")


class ReloadRefused(Exception):
    """The new configuration was not applied; ``lines`` say why (one problem each)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------- what changed


def _server_changes(old: BackendConfig, new: BackendConfig) -> list[str]:
    before = {s.name: s for s in old.servers}
    after = {s.name: s for s in new.servers}
    words = []
    added = [name for name in after if name not in before]
    removed = [name for name in before if name not in after]
    changed = [name for name in after if name in before and after[name] != before[name]]
    if added:
        words.append("servers added: " + ", ".join(added))
    if removed:
        words.append("servers removed: " + ", ".join(removed))
    if changed:
        words.append("servers changed: " + ", ".join(changed))
    settings = attrs.evolve(new, servers=old.servers) != old
    if settings:
        words.append("settings changed")
    return words


def _added_removed(kind: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    lines = [f"{kind} {name} added" for name in after if name not in before]
    lines += [f"{kind} {name} removed (its open sessions finish)" for name in before if name not in after]
    return lines


def describe_changes(old: Config, new: Config) -> list[str]:
    """One line per changed frontend, backend and admin listener (``no changes`` if none)."""
    lines = _added_removed("frontend", old.frontends, new.frontends)
    for name, fe_new in new.frontends.items():
        fe_old = old.frontends.get(name)
        if fe_old is None or fe_old == fe_new:
            continue
        opened = [ep for ep in fe_new.listen if ep not in fe_old.listen]
        closed = [ep for ep in fe_old.listen if ep not in fe_new.listen]
        words = []
        if opened:
            words.append("listening on " + ", ".join(opened))
        if closed:
            words.append("no longer on " + ", ".join(closed))
        if attrs.evolve(fe_new, listen=fe_old.listen) != fe_old:
            words.append("settings changed")
        lines.append(f"frontend {name}: " + "; ".join(words))
    lines += _added_removed("backend", old.backends, new.backends)
    for name, be_new in new.backends.items():
        be_old = old.backends.get(name)
        if be_old is not None and be_old != be_new:
            lines.append(f"backend {name}: " + "; ".join(_server_changes(be_old, be_new)))
    if old.admin != new.admin:
        lines.append("admin settings changed")
    if old.global_ != new.global_:
        lines.append("global settings changed")
    return lines or ["no changes"]


# --------------------------------------------------------------------------- applying


@attrs.define
class _Plan:
    """Everything prepared for the commit (nothing running has changed yet)."""

    backends: dict[str, Backend]
    frontends: dict[str, Any]
    in_place: dict[str, Any]
    """Splice frontends kept as objects, with the object holding their new settings."""
    ports: dict[str, list[IListeningPort]]
    swaps: list[tuple[IListeningPort, Any, Any]]
    """(port, old factory, new factory): kept listeners that change hands."""
    to_close: list[IListeningPort]
    opened: list[IListeningPort]
    admin_open: dict[str, IListeningPort]
    admin_close: list[IListeningPort]
    web: Any
    problems: list[str]


def reload_service(service: RelaybalService, path: str | None = None) -> list[str]:
    """Read ``path`` (default: the running configuration's file) and apply it to ``service``.

    Returns the lines of :func:`describe_changes`; raises :class:`ReloadRefused`.
    The outcome is logged and counted in ``service.runtime`` either way.
    """
    source = path if path is not None else service.config.source
    view = service.runtime
    view.last_reload = service.reactor.seconds()
    try:
        if view.stopping:
            # Listeners closed by the drain must stay closed.
            raise ReloadRefused(["the process is draining before exit; a reload would reopen its listeners"])
        try:
            new = load_config(source)
        except ConfigFileError as e:
            raise ReloadRefused([str(e)]) from None
        except ConfigError as e:
            raise ReloadRefused(e.lines()) from None
        lines = apply_config(service, new)
    except ReloadRefused as e:
        view.reload_failures += 1
        view.last_reload_ok = False
        log.error(
            "configuration reload refused ({count} problems); the running configuration is unchanged",
            count=len(e.lines),
        )
        for line in e.lines:
            log.error("reload refused: {problem}", problem=line)
        raise
    view.reloads += 1
    view.last_reload_ok = True
    log.info("configuration reloaded from {path}", path=source)
    for line in lines:
        log.info("reload: {change}", change=line)
    return lines


def apply_config(service: RelaybalService, new: Config) -> list[str]:
    """Apply a validated configuration to ``service`` (all of it, or nothing: :class:`ReloadRefused`)."""
    plan = _prepare(service, new)
    if plan.problems:
        for port in plan.opened + list(plan.admin_open.values()):
            port.stopListening()
        raise ReloadRefused(plan.problems)
    lines = describe_changes(service.config, new)
    _commit(service, new, plan)
    return lines


def _prepare(service: RelaybalService, new: Config) -> _Plan:
    old = service.config
    problems: list[str] = []
    backends: dict[str, Backend] = {}
    for name, bc in new.backends.items():
        existing = service.backends.get(name)
        backends[name] = existing if existing is not None else Backend(bc, service.reactor, service.rng)

    frontends: dict[str, Any] = {}
    in_place: dict[str, Any] = {}
    hostname = new.global_.hostname
    for name, fc in new.frontends.items():
        current = service.frontends.get(name)
        backend = backends[fc.backend]
        if isinstance(current, SpliceFrontend) and fc.mode == "splice":
            # Kept as an object (its sessions and counters go on); a throwaway
            # frontend built from the new settings carries what changes.
            frontends[name] = current
            in_place[name] = SpliceFrontend(fc, backend, service.reactor, hostname)
            continue
        if (
            current is not None
            and current.config == fc
            and current.backend is backend
            and getattr(fc, "tls", None) is None
            and all(new.policies.get(p) == old.policies.get(p) for p in fc.policies)
        ):
            frontends[name] = current
            continue
        try:
            frontends[name] = service.make_frontend(fc, backend, hostname, new.policies)
        except RelaySetupError as e:
            problems.append(f"{new.source}: {e}")

    # Listeners: every open frontend listener by its endpoint text.
    open_now: dict[str, tuple[IListeningPort, Any]] = {}
    for frontend in service.frontends.values():
        for ep, port in zip(frontend.config.listen, frontend.ports, strict=False):
            open_now[ep] = (port, frontend)
    ports: dict[str, list[IListeningPort]] = {}
    swaps: list[tuple[IListeningPort, Any, Any]] = []
    opened: list[IListeningPort] = []
    for name, fc in new.frontends.items():
        owner_after = frontends.get(name)
        if owner_after is None:
            continue  # could not be built; already a problem
        ports[name] = []
        for index, ep in enumerate(fc.listen):
            if ep in open_now:
                port, owner = open_now.pop(ep)
                ports[name].append(port)
                if owner is not owner_after:
                    swaps.append((port, owner, owner_after))
                continue
            try:
                port = service.listen(ep, owner_after)
            except Exception as e:
                where = f"frontend.{name}.listen[{index}]"
                problems.append(f"{new.source}: {where}: cannot listen on {ep!r}: {e}")
                continue
            opened.append(port)
            ports[name].append(port)
    to_close = [port for port, _ in open_now.values()]

    # The admin listeners and the stats page.
    from relaybal.service import AdminSetupError, ListenError

    admin_open: dict[str, IListeningPort] = {}
    admin_close: list[IListeningPort] = []
    web = service.web
    try:
        web = service.make_admin_site(new.admin)
    except AdminSetupError as e:
        problems.append(f"{new.source}: {e}")
    if new.admin.socket != old.admin.socket:
        if "socket" in service.admin_ports:
            admin_close.append(service.admin_ports["socket"])
        if new.admin.socket:
            try:
                admin_open["socket"] = listen_admin_socket(
                    service.reactor, new.admin.socket, service.runtime_factory()
                )
            except AdminSocketError as e:
                problems.append(f"{new.source}: admin.socket: {e}")
    if new.admin.http != old.admin.http:
        if "http" in service.admin_ports:
            admin_close.append(service.admin_ports["http"])
        site = service.web if service.web is not None else web
        if new.admin.http and site is not None:
            try:
                admin_open["http"] = service.listen(new.admin.http, site)
            except ListenError as e:
                problems.append(f"{new.source}: admin.http: cannot listen on {new.admin.http!r}: {e}")
    return _Plan(
        backends=backends,
        frontends=frontends,
        in_place=in_place,
        ports=ports,
        swaps=swaps,
        to_close=to_close,
        opened=opened,
        admin_open=admin_open,
        admin_close=admin_close,
        web=web,
        problems=problems,
    )


def _commit(service: RelaybalService, new: Config, plan: _Plan) -> None:
    reactor = service.reactor
    running = service.running
    # Backends: removed ones stop checking (their sessions finish), changed ones are
    # reconfigured in place, new ones start.
    for name, backend in list(service.backends.items()):
        if name not in plan.backends:
            monitor = service.health.pop(name, None)
            if monitor is not None:
                monitor.stop()
            backend.stop()
    for name, backend in plan.backends.items():
        config = new.backends[name]
        if name in service.backends and backend.config == config:
            continue
        monitor = service.health.pop(name, None)
        if monitor is not None:
            monitor.stop()
        if name in service.backends:
            backend.reconfigure(config)
        monitor = HealthMonitor([backend], reactor)
        service.health[name] = monitor
        if running:
            monitor.start()
    service.backends.clear()
    service.backends.update(plan.backends)
    # Frontends: kept splice frontends take their new settings; listeners change hands.
    for name, template in plan.in_place.items():
        frontend = plan.frontends[name]
        frontend.config = template.config
        frontend.backend = template.backend
        frontend.hostname = template.hostname
        frontend.no_server_reply = template.no_server_reply
    for port, old_factory, new_factory in plan.swaps:
        new_factory.doStart()
        port.factory = new_factory  # type: ignore[attr-defined]
        old_factory.doStop()
    for port in plan.to_close:
        port.stopListening()
    for name, frontend in plan.frontends.items():
        frontend.ports[:] = plan.ports.get(name, [])
    service.frontends.clear()
    service.frontends.update(plan.frontends)
    # Admin listeners and the stats page.
    for port in plan.admin_close:
        port.stopListening()
        for key, value in list(service.admin_ports.items()):
            if value is port:
                del service.admin_ports[key]
    service.admin_ports.update(plan.admin_open)
    if new.admin.http is None or plan.web is None:
        service.web = None
    elif service.web is None:
        service.web = plan.web
    else:
        # The listener keeps its site; the site takes the new resource tree (users file).
        service.web.resource = plan.web.resource
    service.ports[:] = [
        *(port for frontend in service.frontends.values() for port in frontend.ports),
        *service.admin_ports.values(),
    ]
    service.config = new
    service.runtime.hostname = new.global_.hostname
    try:
        service.apply_shared_state()  # [global] shared_state, and the stick tables it shares
    except Exception as e:
        log.error("reload: shared_state not changed: {error}", error=e)
