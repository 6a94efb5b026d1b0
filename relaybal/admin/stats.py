"""What the process knows, in HAProxy's runtime-API formats.

Each function returns the lines of one dump (no trailing empty line: the
protocol adds the end-of-output marker). Formats follow HAProxy 2.6's
``doc/management.txt``:

* ``show info``: ``Name: value`` lines, for the fields relaybal has;
* ``show stat``: CSV whose header is HAProxy's column list from ``pxname``
  to ``uweight`` (so columns keep HAProxy's positions), with the values
  relaybal has and empty fields elsewhere, every line ending with a comma; a
  value holding a comma or a double quote is quoted (RFC 4180);
* ``show servers state``: version ``1``, the ``#`` header of the 25 version-1
  fields, one space-separated line per server;
* ``show table``: ``# table: NAME, type: ip, size:N, used:N`` and one
  ``0xID: key=… use=0 exp=MS server_id=N server_key=NAME`` line per entry.

Proxy ids (``iid``, ``be_id``): backends are numbered from 1 in
configuration order, frontends after them.
"""

from __future__ import annotations

import bisect
import ipaddress
import os
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Protocol

import attrs
from twisted.internet.interfaces import IReactorTime

from relaybal import __version__
from relaybal.balance.backend import DRAIN, MAINT, Backend, Server
from relaybal.balance.stick import StickTable
from relaybal.delivery.pool import GatewayCounters
from relaybal.delivery.scheduler import Attempt, SchedulerStats
from relaybal.spool.store import SpoolStats

#: ``show stat`` columns, HAProxy 2.6's names and order, up to ``uweight``.
STAT_COLUMNS: tuple[str, ...] = (
    "pxname", "svname", "qcur", "qmax", "scur", "smax", "slim", "stot", "bin", "bout",
    "dreq", "dresp", "ereq", "econ", "eresp", "wretr", "wredis", "status", "weight", "act",
    "bck", "chkfail", "chkdown", "lastchg", "downtime", "qlimit", "pid", "iid", "sid", "throttle",
    "lbtot", "tracked", "type", "rate", "rate_lim", "rate_max", "check_status", "check_code",
    "check_duration", "hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other",
    "hanafail", "req_rate", "req_rate_max", "req_tot", "cli_abrt", "srv_abrt", "comp_in",
    "comp_out", "comp_byp", "comp_rsp", "lastsess", "last_chk", "last_agt", "qtime", "ctime",
    "rtime", "ttime", "agent_status", "agent_code", "agent_duration", "check_desc", "agent_desc",
    "check_rise", "check_fall", "check_health", "agent_rise", "agent_fall", "agent_health",
    "addr", "cookie", "mode", "algo", "conn_rate", "conn_rate_max", "conn_tot", "intercepted",
    "dcon", "dses", "wrew", "connect", "reuse", "cache_lookups", "cache_hits", "srv_icur",
    "src_ilim", "qtime_max", "ctime_max", "rtime_max", "ttime_max", "eint", "idle_conn_cur",
    "safe_conn_cur", "used_conn_cur", "need_conn_est", "uweight",
)  # fmt: skip

#: ``show servers state`` fields of format version 1 (HAProxy's documented list).
SERVERS_STATE_FIELDS: tuple[str, ...] = (
    "be_id", "be_name", "srv_id", "srv_name", "srv_addr", "srv_op_state", "srv_admin_state",
    "srv_uweight", "srv_iweight", "srv_time_since_last_change", "srv_check_status",
    "srv_check_result", "srv_check_health", "srv_check_state", "srv_agent_state",
    "bk_f_forced_id", "srv_f_forced_id", "srv_fqdn", "srv_port", "srvrecord", "srv_use_ssl",
    "srv_check_port", "srv_check_addr", "srv_agent_addr", "srv_agent_port",
)  # fmt: skip

# srv_admin_state bits.
ADMF_FMAINT = 0x01
ADMF_CMAINT = 0x04
ADMF_FDRAIN = 0x08
# srv_check_state bits.
CHK_ST_INPROGRESS = 0x01
CHK_ST_CONFIGURED = 0x02
CHK_ST_ENABLED = 0x04
CHK_ST_PAUSED = 0x08
# srv_op_state values.
SRV_ST_STOPPED = 0
SRV_ST_STARTING = 1
SRV_ST_RUNNING = 2


# --------------------------------------------------------------------------- relay delivery


class SchedulerView(Protocol):
    """What the stats read of the delivery :class:`~relaybal.delivery.scheduler.Scheduler`."""

    @property
    def stats(self) -> SchedulerStats: ...

    @property
    def on_attempt(self) -> list[Callable[[Attempt], None]]: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def waiting(self) -> int: ...

    @property
    def deferred_count(self) -> int: ...

    @property
    def held(self) -> Collection[str]: ...


class PoolView(Protocol):
    """What the stats read of a :class:`~relaybal.delivery.pool.GatewayPool`."""

    @property
    def connections(self) -> int: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def opened(self) -> int: ...

    @property
    def connect_failures(self) -> int: ...


class GatewaysView(Protocol):
    """What the stats read of :class:`~relaybal.delivery.pool.Gateways` (pools and counters by server)."""

    @property
    def pools(self) -> Mapping[Server, PoolView]: ...

    @property
    def counters(self) -> Mapping[Server, GatewayCounters]: ...


class SpoolView(Protocol):
    """What the stats read of the :class:`~relaybal.spool.store.SpoolStore`: its size and counters."""

    @property
    def stats(self) -> SpoolStats: ...

    def __len__(self) -> int: ...


@attrs.frozen
class RelayState:
    """Relay delivery as it is at one moment, for the stats page, ``/stats.json`` and ``/metrics``.

    ``gateways`` holds the gateways' connection pools and counters (spooled and
    cut-through mail); ``scheduler`` and ``spool`` are None without a relay
    frontend with ``delivery = "spool"`` (or before the spool opens, or once it
    closed).
    """

    gateways: GatewaysView | None = None
    scheduler: SchedulerView | None = None
    spool: SpoolView | None = None


#: Upper bounds (seconds) of the delivery latency histogram's buckets: 10 ms to an hour.
DELAY_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip


@attrs.define
class DelayHistogram:
    """Per backend, how long delivered messages had waited since they were received.

    ``counts[backend][i]`` counts the observations in ``(bounds[i-1], bounds[i]]``;
    the last entry (index ``len(bounds)``) those above the last bound.
    """

    bounds: tuple[float, ...] = DELAY_BUCKETS
    counts: dict[str, list[int]] = attrs.field(factory=dict)
    sums: dict[str, float] = attrs.field(factory=dict)

    def observe(self, backend: str, seconds: float) -> None:
        counts = self.counts.get(backend)
        if counts is None:
            counts = self.counts[backend] = [0] * (len(self.bounds) + 1)
            self.sums[backend] = 0.0
        counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sums[backend] += seconds

    def cumulative(self, backend: str) -> list[tuple[float, int]]:
        """``(upper bound, observations at or below it)`` for each bucket, ending with ``(inf, count)``."""
        counts = self.counts.get(backend, [0] * (len(self.bounds) + 1))
        total = 0
        result: list[tuple[float, int]] = []
        for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
            total += count
            result.append((bound, total))
        return result


@attrs.define
class ProcessView:
    """What the runtime API reports on: the backends and frontends of one running process.

    ``frontends`` may be any objects; the figures read from them (``current``,
    ``max_current``, ``total``, ``bytes_in``, ``bytes_out``, ``errors``,
    ``ports``, ``config.maxconn``, ``config.mode``) count as 0 when missing.
    The mappings are read at each command, so a view built once sees
    frontends added later to the same mapping. ``relay`` (a callable, also
    read at each request) gives relay mode's delivery state
    (:class:`RelayState`); ``policy_verdicts`` the relay policies' verdict
    counts. Both default to nothing.
    """

    backends: Mapping[str, Backend]
    frontends: Mapping[str, Any]
    clock: IReactorTime
    hostname: str = ""
    pid: int = attrs.field(factory=os.getpid)
    version: str = __version__
    started: float = -1.0
    stopping: bool = False
    """The process is draining before it exits (SIGTERM): listeners are closed."""
    reloads: int = 0
    """Configuration reloads applied (SIGHUP, ``reload``)."""
    reload_failures: int = 0
    """Reloads refused (an invalid configuration, a listener that could not open)."""
    last_reload: float = 0.0
    """When the last reload was tried (0: never)."""
    last_reload_ok: bool = True
    relay: Callable[[], RelayState | None] | None = None
    """Relay delivery now (the service's gateways, scheduler and spool), read at each request."""
    policy_verdicts: Callable[[], Mapping[tuple[str, str], int]] | None = None
    """Relay policy verdicts so far by ``(policy name, verdict)`` (e.g. ``("dnsbl", "reject")``), for
    ``relaybal_policy_verdicts_total``; None (the default): not reported."""
    delivery_delays: DelayHistogram = attrs.field(factory=DelayHistogram)
    shared_state: Callable[[], Mapping[str, Any] | None] | None = None
    """``[global] shared_state`` now (the Redis link's state and counters), read at each request;
    None, or a None result: not configured (see :meth:`relaybal.shared.state.SharedState.describe`)."""
    """Seconds from receipt to delivery of the messages delivered, per backend (see :meth:`follow`)."""
    _followed: list[SchedulerView] = attrs.field(factory=list, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.started < 0:
            self.started = self.clock.seconds()

    # -- relay delivery

    def follow(self, scheduler: SchedulerView) -> None:
        """Observe ``scheduler``'s attempts (delivery latency) and count its figures from now on.

        Idempotent. A scheduler that replaces another (a reload re-opening the
        spool) is followed too, and the totals keep what the old one counted, so
        the counters never go back. :meth:`relay_state` follows the scheduler it
        finds, but the service calls this as soon as it makes one, so no attempt
        goes unobserved before the first request.
        """
        if any(known is scheduler for known in self._followed):
            return
        scheduler.on_attempt.append(self._attempted)
        self._followed.append(scheduler)

    def _attempted(self, attempt: Attempt) -> None:
        if attempt.delivered:
            self.delivery_delays.observe(attempt.backend, attempt.delay)

    def relay_state(self) -> RelayState | None:
        """The relay delivery state now (None without ``relay``); its scheduler is followed."""
        state = self.relay() if self.relay is not None else None
        if state is not None and state.scheduler is not None:
            self.follow(state.scheduler)
        return state

    def scheduler_totals(self) -> SchedulerStats:
        """Every followed scheduler's :class:`SchedulerStats`, added up (this process's totals)."""
        return SchedulerStats(
            **{
                field.name: sum(getattr(s.stats, field.name) for s in self._followed)
                for field in attrs.fields(SchedulerStats)
            }
        )

    @property
    def has_relay(self) -> bool:
        """A relay frontend is configured, or a spool was delivered from."""
        return bool(self._followed) or any(
            getattr(getattr(f, "config", None), "mode", "") == "relay" for f in self.frontends.values()
        )

    def backend_ids(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.backends, start=1)}

    def frontend_ids(self) -> dict[str, int]:
        first = len(self.backends) + 1
        return {name: index for index, name in enumerate(self.frontends, start=first)}

    def find_backend(self, name_or_id: str) -> Backend | None:
        """A backend by name, or by id (as ``show servers state`` prints it)."""
        backend = self.backends.get(name_or_id)
        if backend is not None:
            return backend
        if name_or_id.isdigit():
            for name, number in self.backend_ids().items():
                if number == int(name_or_id):
                    return self.backends[name]
        return None


def _figure(obj: Any, attribute: str) -> int:
    value = getattr(obj, attribute, 0)
    return value if isinstance(value, int) else 0


def _frontend_maxconn(frontend: Any) -> int:
    return _figure(getattr(frontend, "config", None), "maxconn")


def _uptime(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}d {hours}h{minutes:02d}m{secs:02d}s"


def show_info(view: ProcessView) -> list[str]:
    """``show info``: process-wide figures."""
    now = view.clock.seconds()
    uptime = int(max(0.0, now - view.started))
    frontends = list(view.frontends.values())
    fields = [
        ("Name", "relaybal"),
        ("Version", view.version),
        ("Nbthread", 1),
        ("Nbproc", 1),
        ("Process_num", 1),
        ("Pid", view.pid),
        ("Uptime", _uptime(uptime)),
        ("Uptime_sec", uptime),
        ("Maxconn", sum(_frontend_maxconn(f) for f in frontends)),
        ("CurrConns", sum(_figure(f, "current") for f in frontends)),
        ("CumConns", sum(_figure(f, "total") for f in frontends)),
        ("Stopping", int(view.stopping)),
        ("Listeners", sum(len(getattr(f, "ports", ())) for f in frontends)),
        ("node", view.hostname),
        ("Start_time_sec", int(view.started)),
    ]
    return [f"{name}: {value}" for name, value in fields]


# --------------------------------------------------------------------------- show stat


def server_status(server: Server) -> str:
    """``show stat``'s status of a server: MAINT, DRAIN, no check, UP, DOWN, UP 2/3, DOWN 1/2."""
    health = server.health
    if server.admin_state == MAINT:
        return "MAINT"
    if not server.up:
        return health.status_text() if health is not None else "DOWN"
    if server.admin_state == DRAIN:
        return "DRAIN"
    if health is None:
        return "no check"
    return health.status_text()


def _row(values: Mapping[str, object]) -> str:
    cells = []
    for column in STAT_COLUMNS:
        value = values.get(column)
        text = "" if value is None else str(value).replace("\n", " ")
        if "," in text or '"' in text:
            # Quoted as RFC 4180 says (HAProxy's csv_enc does the same).
            text = '"' + text.replace('"', '""') + '"'
        cells.append(text)
    return ",".join(cells) + ","


def _server_stats(server: Server, iid: int, now: float) -> dict[str, object]:
    result = server.last_check
    health = server.health
    check = server.check
    values: dict[str, object] = {
        "pxname": server.backend_name,
        "svname": server.name,
        "qcur": 0,
        "qmax": 0,
        "scur": server.load,
        "smax": server.max_load,
        "slim": server.maxconn or None,
        "stot": server.total,
        "bin": server.bytes_in,
        "bout": server.bytes_out,
        "econ": server.failures,
        "status": server_status(server),
        "weight": 0 if server.admin_state == DRAIN else server.effective_weight,
        "act": 0 if server.backup else 1,
        "bck": 1 if server.backup else 0,
        "lastchg": int(now - server.last_change),
        "downtime": int(server.total_downtime()),
        "pid": 1,
        "iid": iid,
        "sid": server.sid,
        "lbtot": server.total,
        "type": 2,
        "addr": str(server.config.address),
        "mode": "tcp",
        "connect": server.total,
        "uweight": server.weight,
        # Not HAProxy columns (show stat leaves them out); the stats page and metrics use them.
        "admin_state": server.admin_state,
        "up": server.up,
        "cert_days": server.cert_days,
        "last_change": server.last_change,
    }
    if server.ramping and server.weight:
        values["throttle"] = int(100 * server.effective_weight / server.weight)
    if health is not None and check is not None:
        values.update(
            chkfail=health.failed_checks,
            chkdown=health.down_transitions,
            check_rise=health.rise,
            check_fall=health.fall,
            check_health=health.health,
        )
        if result is not None:
            values.update(
                check_status=("* " if server.checking else "") + result.status,
                check_code=result.code,
                check_duration=int(result.duration * 1000),
                last_chk=result.info,
                check_desc=result.check_status.description,
            )
    return values


def _backend_stats(
    backend: Backend, iid: int, now: float, frontends: Iterable[Any] = ()
) -> dict[str, object]:
    servers = backend.servers
    # Retries and redispatches are counted by the frontends that use this backend.
    users = [f for f in frontends if getattr(f, "backend", None) is backend]
    usable_active = [s for s in backend.active if s.usable]
    usable_backup = [s for s in backend.backups if s.usable]
    serving = usable_active or usable_backup
    return {
        "pxname": backend.name,
        "svname": "BACKEND",
        "qcur": backend.queue_length,
        "scur": sum(s.load for s in servers),
        "stot": sum(s.total for s in servers),
        "bin": sum(s.bytes_in for s in servers),
        "bout": sum(s.bytes_out for s in servers),
        "econ": sum(s.failures for s in servers),
        "wretr": sum(_figure(f, "retries") for f in users),
        "wredis": sum(_figure(f, "redispatches") for f in users),
        "status": "UP" if backend.available else "DOWN",
        "weight": sum(s.effective_weight for s in serving),
        "act": len(usable_active),
        "bck": len(usable_backup),
        "chkdown": backend.down_transitions,
        "lastchg": int(now - backend.last_change),
        "downtime": int(backend.total_downtime()),
        "pid": 1,
        "iid": iid,
        "sid": 0,
        "lbtot": sum(s.total for s in servers),
        "type": 1,
        "mode": "tcp",
        "algo": backend.config.balance,
        "connect": sum(s.total for s in servers),
        "uweight": sum(s.weight for s in serving),
        "queued_total": backend.queued_total,
        "last_change": backend.last_change,
    }


def _frontend_stats(name: str, frontend: Any, iid: int, stopping: bool = False) -> dict[str, object]:
    config = getattr(frontend, "config", None)
    return {
        "pxname": name,
        "svname": "FRONTEND",
        "scur": _figure(frontend, "current"),
        "smax": _figure(frontend, "max_current"),
        "slim": _frontend_maxconn(frontend),
        "stot": _figure(frontend, "total"),
        "bin": _figure(frontend, "bytes_in"),
        "bout": _figure(frontend, "bytes_out"),
        "ereq": _figure(frontend, "errors"),
        "status": "STOP" if stopping else "OPEN",
        "pid": 1,
        "iid": iid,
        "sid": 0,
        "type": 0,
        "mode": "tcp",
        "conn_tot": _figure(frontend, "total"),
        # Not HAProxy columns: for the stats page and metrics.
        "proxy_mode": getattr(config, "mode", ""),
        "no_server": _figure(frontend, "no_server"),
        "retries": _figure(frontend, "retries"),
        "redispatches": _figure(frontend, "redispatches"),
        "messages": _figure(frontend, "messages"),
        **_relay_frontend_figures(frontend),
    }


def _count_or_none(obj: Any, attribute: str) -> int | None:
    value = getattr(obj, attribute, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _relay_frontend_figures(frontend: Any) -> dict[str, object]:
    """``delivery``, and what a cut-through sink counts: ``messages_refused``, ``bounces_sent``."""
    config = getattr(frontend, "config", None)
    if getattr(config, "mode", "") != "relay":
        return {}
    sink = getattr(frontend, "sink", None)
    refused = _count_or_none(frontend, "messages_refused")
    return {
        "delivery": getattr(config, "delivery", ""),
        "messages_refused": refused if refused is not None else _count_or_none(sink, "refused"),
        "bounces_sent": _count_or_none(sink, "bounces"),
    }


#: The per-gateway figures of a relay backend's server records (``gateway``), and their backend sums.
GATEWAY_FIGURES = (
    "delivered", "recipients", "bytes", "deferred", "bounced", "attempts", "possible_duplicates",
    "connections", "in_flight", "opened", "connect_failures",
)  # fmt: skip


def gateway_figures(relay: RelayState | None, server: Server) -> dict[str, int]:
    """What relay delivery gave ``server`` and made of it, and its connection pool now.

    ``delivered`` counts transactions that delivered at least one recipient
    (messages), ``recipients``/``bytes`` what they delivered, ``deferred`` and
    ``bounced`` recipients refused temporarily or for good, ``attempts``
    transactions started; ``connections`` and ``in_flight`` are the pool's
    open connections and unfinished transactions, ``opened`` and
    ``connect_failures`` its connection attempts.
    """
    gateways = relay.gateways if relay is not None else None
    counters = gateways.counters.get(server) if gateways is not None else None
    if counters is None:
        counters = GatewayCounters()
    pool = gateways.pools.get(server) if gateways is not None else None
    return {
        "delivered": counters.messages,
        "recipients": counters.recipients,
        "bytes": counters.bytes,
        "deferred": counters.deferred,
        "bounced": counters.bounced,
        "attempts": counters.attempts,
        "possible_duplicates": counters.possible_duplicates,
        "connections": pool.connections if pool is not None else 0,
        "in_flight": pool.in_flight if pool is not None else 0,
        "opened": pool.opened if pool is not None else 0,
        "connect_failures": pool.connect_failures if pool is not None else 0,
    }


def relay_backend_names(view: ProcessView, relay: RelayState | None) -> set[str]:
    """Backends that relay mail goes to: those of relay frontends, and any a gateway pool was made for."""
    names = {
        getattr(getattr(f, "backend", None), "name", "")
        for f in view.frontends.values()
        if getattr(getattr(f, "config", None), "mode", "") == "relay"
    }
    gateways = relay.gateways if relay is not None else None
    if gateways is not None:
        names.update(server.backend_name for server in (*gateways.pools, *gateways.counters))
    return names


#: ``show stat`` object types (HAProxy's bit values for the ``<type>`` argument).
STAT_FRONTEND = 1
STAT_BACKEND = 2
STAT_SERVER = 4


def show_stat(
    view: ProcessView, proxy: int | None = None, types: int = 7, sid: int | None = None
) -> list[str]:
    """``show stat``: the CSV header and one line per frontend, server and backend.

    ``proxy`` restricts to one proxy id, ``types`` to a set of object types
    (ORed :data:`STAT_FRONTEND`, :data:`STAT_BACKEND`, :data:`STAT_SERVER`),
    ``sid`` to one server.
    """
    lines = ["# " + ",".join(STAT_COLUMNS) + ","]
    lines.extend(_row(record) for record in stat_records(view, proxy, types, sid))
    return lines


def stat_records(
    view: ProcessView, proxy: int | None = None, types: int = 7, sid: int | None = None
) -> list[dict[str, object]]:
    """The records ``show stat`` prints (same arguments), as dicts keyed by column name.

    Besides HAProxy's columns a record may carry figures ``show stat`` leaves
    out (the stats page and ``/metrics`` read them): servers ``admin_state``,
    ``up``, ``cert_days``, ``last_change``; backends ``queued_total``,
    ``last_change``; frontends ``proxy_mode``, ``no_server``, ``retries``,
    ``redispatches``, ``messages``. Relay frontends add ``delivery``,
    ``messages_refused`` and ``bounces_sent`` (None when not counted); the
    servers of backends that relay mail goes to carry ``gateway`` (a dict of
    :data:`GATEWAY_FIGURES`, see :func:`gateway_figures`) and those backends
    ``gateway`` with the sums. Frontends come first, then each backend's
    servers followed by the backend itself.
    """
    now = view.clock.seconds()
    relay = view.relay_state()
    relay_backends = relay_backend_names(view, relay)
    records: list[dict[str, object]] = []
    for name, iid in view.frontend_ids().items():
        if (proxy is None or proxy == iid) and types & STAT_FRONTEND:
            records.append(_frontend_stats(name, view.frontends[name], iid, view.stopping))
    for name, iid in view.backend_ids().items():
        if proxy is not None and proxy != iid:
            continue
        backend = view.backends[name]
        gateways = {s: gateway_figures(relay, s) for s in backend.servers} if name in relay_backends else {}
        if types & STAT_SERVER:
            for server in backend.servers:
                if sid is None or server.sid == sid:
                    record = _server_stats(server, iid, now)
                    if server in gateways:
                        record["gateway"] = gateways[server]
                    records.append(record)
        if types & STAT_BACKEND:
            record = _backend_stats(backend, iid, now, view.frontends.values())
            if gateways:
                record["gateway"] = {
                    key: sum(figures[key] for figures in gateways.values()) for key in GATEWAY_FIGURES
                }
            records.append(record)
    return records


# --------------------------------------------------------------------------- servers state


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def server_state_fields(server: Server, be_id: int, now: float) -> list[str]:
    """One ``show servers state`` line's fields for ``server``."""
    if not server.up:
        op_state = SRV_ST_STOPPED
    elif server.ramping:
        op_state = SRV_ST_STARTING
    else:
        op_state = SRV_ST_RUNNING
    admin = 0
    if server.admin_state == MAINT:
        admin = ADMF_FMAINT | (ADMF_CMAINT if server.admin_from_config else 0)
    elif server.admin_state == DRAIN:
        admin = ADMF_FDRAIN
    result = server.last_check
    health = server.health
    check_state = 0
    if health is not None:
        check_state = CHK_ST_CONFIGURED
        if server.checks_enabled:
            check_state |= CHK_ST_ENABLED
        if server.admin_state == MAINT:
            check_state |= CHK_ST_PAUSED
        if server.checking:
            check_state |= CHK_ST_INPROGRESS
    address = server.config.address
    is_ip = _is_ip(address.host)
    values: list[object] = [
        be_id,
        server.backend_name,
        server.sid,
        server.name,
        address.host,
        op_state,
        admin,
        server.weight,
        server.config.weight,
        int(now - server.last_change),
        result.check_status.number if result is not None else 1,
        result.check_status.result if result is not None else 0,
        health.health if health is not None else 0,
        check_state,
        0,
        0,
        0,
        "-" if is_ip else address.host,
        address.port,
        "-",
        0,
        0,
        "-",
        "-",
        0,
    ]
    return [str(value) for value in values]


def show_servers_state(view: ProcessView, backends: Iterable[Backend] | None = None) -> list[str]:
    """``show servers state``: version line, header, one line per server."""
    now = view.clock.seconds()
    ids = view.backend_ids()
    chosen = list(view.backends.values()) if backends is None else list(backends)
    lines = ["1", "# " + " ".join(SERVERS_STATE_FIELDS)]
    for backend in chosen:
        be_id = ids[backend.name]
        lines.extend(" ".join(server_state_fields(s, be_id, now)) for s in backend.servers)
    return lines


# --------------------------------------------------------------------------- tables


def table_header(name: str, table: StickTable) -> str:
    return f"# table: {name}, type: ip, size:{table.size}, used:{len(table)}"


def show_table(backend: Backend, now: float, key: bytes | None = None) -> list[str]:
    """``show table NAME [key K]``: the header and the (matching) entries."""
    table = backend.stick
    assert table is not None
    entries = table.entries(now)
    lines = [table_header(backend.name, table)]
    for entry in entries:
        if key is not None and entry.key != key:
            continue
        server = backend.server(entry.server)
        sid = server.sid if server is not None else 0
        text = entry.key.decode("utf-8", "replace")
        lines.append(
            f"0x{entry.serial:x}: key={text} use=0 exp={int(entry.expires_in * 1000)} "
            f"server_id={sid} server_key={entry.server}"
        )
    return lines
