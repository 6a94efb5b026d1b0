"""One consistent picture of the running process, for the stats page, ``/stats.json`` and ``/metrics``.

The figures are the runtime API's (:func:`relaybal.admin.stats.stat_records`,
the records behind ``show stat``), regrouped as frontends, and backends with
their servers, plus each server's traffic buckets
(:mod:`relaybal.admin.history`). Everything is plain JSON types; the shape
is documented in ``docs/operations.rst`` (*Stats page*).
"""

from __future__ import annotations

from typing import Any

from relaybal.admin.history import TrafficHistory
from relaybal.admin.stats import (
    STAT_BACKEND,
    STAT_FRONTEND,
    STAT_SERVER,
    ProcessView,
    RelayState,
    stat_records,
)

#: Server states as HAProxy's exporter names them (``relaybal_server_status{state}``).
SERVER_STATES = ("UP", "DOWN", "DRAIN", "MAINT")

#: Version of the ``/stats.json`` layout; bumped when a field changes meaning or goes away.
SCHEMA_VERSION = 1


def _int(record: dict[str, object], key: str) -> int:
    value = record.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _opt_int(record: dict[str, object], key: str) -> int | None:
    value = record.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(record: dict[str, object], key: str) -> str:
    value = record.get(key)
    return "" if value is None else str(value)


def server_state(record: dict[str, object]) -> str:
    """One of :data:`SERVER_STATES` for a server record: maintenance first, then health."""
    if record.get("admin_state") == "maint":
        return "MAINT"
    if not record.get("up"):
        return "DOWN"
    if record.get("admin_state") == "drain":
        return "DRAIN"
    return "UP"


def status_class(status: str) -> str:
    """The colour class of a ``show stat`` status: up, going-down, going-up, down, drain, maint,
    nocheck, open, stop."""
    if status.startswith("UP "):
        return "going-down"
    if status.startswith("DOWN "):
        return "going-up"
    return {"no check": "nocheck"}.get(status, status.lower())


def _server(record: dict[str, object], now: float, history: TrafficHistory | None) -> dict[str, Any]:
    status = _text(record, "status")
    check: dict[str, Any] | None = None
    if record.get("check_rise") is not None:
        raw_status = _text(record, "check_status")
        duration = _opt_int(record, "check_duration")
        check = {
            "status": raw_status.removeprefix("* ") or None,
            "running": raw_status.startswith("* "),
            "code": _opt_int(record, "check_code"),
            "duration_ms": duration,
            "info": _text(record, "last_chk"),
            "description": _text(record, "check_desc"),
            "health": _int(record, "check_health"),
            "rise": _int(record, "check_rise"),
            "fall": _int(record, "check_fall"),
            "failures": _int(record, "chkfail"),
            "downs": _int(record, "chkdown"),
        }
    last_change = record.get("last_change")
    server: dict[str, Any] = {
        "name": _text(record, "svname"),
        "id": _int(record, "sid"),
        "address": _text(record, "addr"),
        "status": status,
        "status_class": status_class(status),
        "state": server_state(record),
        "admin_state": _text(record, "admin_state"),
        "backup": bool(_int(record, "bck")),
        "weight": _int(record, "weight"),
        "weight_set": _int(record, "uweight"),
        "throttle_pct": _opt_int(record, "throttle"),
        "sessions": {
            "current": _int(record, "scur"),
            "max": _int(record, "smax"),
            "limit": _opt_int(record, "slim"),
            "total": _int(record, "stot"),
        },
        "bytes": {"in": _int(record, "bin"), "out": _int(record, "bout")},
        "errors": {"connect": _int(record, "econ")},
        "last_change_s": _int(record, "lastchg"),
        "last_change_at": last_change if isinstance(last_change, float) else now,
        "downtime_s": _int(record, "downtime"),
        "check": check,
        "cert_days": _opt_int(record, "cert_days"),
    }
    gateway = record.get("gateway")
    if isinstance(gateway, dict):
        server["messages"] = dict(gateway)
    if history is not None:
        series = history.series(_text(record, "pxname"), server["name"])
        server["traffic"] = {
            "interval_s": series.interval,
            "end": series.end,
            "sessions": list(series.sessions),
            "bytes": list(series.bytes),
        }
    return server


def _backend(record: dict[str, object], servers: list[dict[str, Any]], view: ProcessView) -> dict[str, Any]:
    status = _text(record, "status")
    name = _text(record, "pxname")
    backend = view.backends[name]
    result: dict[str, Any] = {
        "name": name,
        "id": _int(record, "iid"),
        "status": status,
        "status_class": status_class(status),
        "balance": _text(record, "algo"),
        "sessions": {"current": _int(record, "scur"), "total": _int(record, "stot")},
        "queue": {
            "current": _int(record, "qcur"),
            "total": _int(record, "queued_total"),
            "timeout_s": backend.config.timeout_queue,
        },
        "bytes": {"in": _int(record, "bin"), "out": _int(record, "bout")},
        "errors": {"connect": _int(record, "econ")},
        "retries": _int(record, "wretr"),
        "redispatches": _int(record, "wredis"),
        "weight": _int(record, "weight"),
        "servers_active": _int(record, "act"),
        "servers_backup": _int(record, "bck"),
        "down_transitions": _int(record, "chkdown"),
        "last_change_s": _int(record, "lastchg"),
        "downtime_s": _int(record, "downtime"),
        "check": backend.config.check.kind if backend.config.check is not None else None,
        "servers": servers,
    }
    gateway = record.get("gateway")
    if isinstance(gateway, dict):
        result["messages"] = dict(gateway)
    return result


def _frontend(record: dict[str, object], view: ProcessView) -> dict[str, Any]:
    name = _text(record, "pxname")
    frontend = view.frontends[name]
    config = getattr(frontend, "config", None)
    backend = getattr(frontend, "backend", None)
    mode = _text(record, "proxy_mode")
    result: dict[str, Any] = {
        "name": name,
        "id": _int(record, "iid"),
        "mode": mode,
        "status": _text(record, "status"),
        "status_class": status_class(_text(record, "status")),
        "listen": list(getattr(config, "listen", ())),
        "backend": getattr(backend, "name", None),
        "sessions": {
            "current": _int(record, "scur"),
            "max": _int(record, "smax"),
            "limit": _int(record, "slim"),
            "total": _int(record, "stot"),
        },
        "bytes": {"in": _int(record, "bin"), "out": _int(record, "bout")},
        "errors": _int(record, "ereq"),
        "no_server": _int(record, "no_server"),
        "retries": _int(record, "retries"),
        "redispatches": _int(record, "redispatches"),
    }
    if mode == "relay":
        result["delivery"] = _text(record, "delivery")
        result["messages"] = {
            "accepted": _int(record, "messages"),
            "refused": _opt_int(record, "messages_refused"),
            "bounces_sent": _opt_int(record, "bounces_sent"),
        }
    return result


def relay_summary(view: ProcessView, relay: RelayState | None) -> dict[str, Any] | None:
    """The process-wide relay figures (``relay`` in ``/stats.json``); None without relay mode.

    ``queue`` and ``spool`` are None without a spool (cut-through only). The
    scheduler's figures add up every scheduler of the process
    (:meth:`~relaybal.admin.stats.ProcessView.scheduler_totals`);
    ``possible_duplicates`` counts spooled and cut-through mail.
    """
    if not view.has_relay:
        return None
    scheduler = relay.scheduler if relay is not None else None
    spool = relay.spool if relay is not None else None
    gateways = relay.gateways if relay is not None else None
    totals = view.scheduler_totals()
    queue: dict[str, int] | None = None
    if spool is not None or scheduler is not None:
        queue = {
            "total": len(spool) if spool is not None else 0,
            "active": scheduler.in_flight if scheduler is not None else 0,
            "waiting": scheduler.waiting if scheduler is not None else 0,
            "deferred": scheduler.deferred_count if scheduler is not None else 0,
            "held": len(scheduler.held) if scheduler is not None else 0,
        }
    duplicates = totals.possible_duplicates
    if gateways is not None:
        duplicates = max(duplicates, sum(c.possible_duplicates for c in gateways.counters.values()))
    accepted = sum(
        getattr(f, "messages", 0)
        for f in view.frontends.values()
        if getattr(getattr(f, "config", None), "mode", "") == "relay"
    )
    return {
        "accepted": accepted,
        "queue": queue,
        "recipients": {"delivered": totals.delivered, "bounced": totals.bounced},
        "deferrals": totals.deferred,
        "messages_done": totals.messages_done,
        "bounces_sent": totals.bounces_sent,
        "possible_duplicates": duplicates,
        "spool": None
        if spool is None
        else {
            "commits": spool.stats.commits,
            "commit_failures": spool.stats.commit_failures,
            "flushes": spool.stats.flushes,
            "bytes": spool.stats.bytes,
        },
    }


def snapshot(view: ProcessView, history: TrafficHistory | None = None) -> dict[str, Any]:
    """The whole picture: ``relaybal`` (process), ``frontends``, ``backends`` (with ``servers``).

    With ``history``, each server carries its ``traffic`` buckets.
    """
    now = view.clock.seconds()
    relay = relay_summary(view, view.relay_state())
    frontends: list[dict[str, Any]] = []
    backends: list[dict[str, Any]] = []
    servers: list[dict[str, Any]] = []
    for record in stat_records(view, types=STAT_FRONTEND | STAT_BACKEND | STAT_SERVER):
        kind = record.get("type")
        if kind == 0:
            frontends.append(_frontend(record, view))
        elif kind == 2:
            servers.append(_server(record, now, history))
        else:
            backends.append(_backend(record, servers, view))
            servers = []
    return {
        "schema": SCHEMA_VERSION,
        "relaybal": {
            "version": view.version,
            "pid": view.pid,
            "node": view.hostname,
            "now": now,
            "started": view.started,
            "uptime_s": int(max(0.0, now - view.started)),
            "stopping": view.stopping,
            "reloads": view.reloads,
            "reload_failures": view.reload_failures,
            "last_reload": view.last_reload or None,
            "last_reload_ok": view.last_reload_ok,
            "shared_state": view.shared_state() if view.shared_state is not None else None,
        },
        "frontends": frontends,
        "backends": backends,
        "relay": relay,
    }
