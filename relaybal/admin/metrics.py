"""``/metrics``: Prometheus text format, collected on the reactor thread.

A private :class:`~prometheus_client.CollectorRegistry` holds one
:class:`RelaybalCollector`, which reads the live state (the same
:func:`~relaybal.admin.snapshot.snapshot` the stats page shows) at each
scrape, and :class:`MetricsResource` renders it with
``prometheus_client``'s encoder inside ``render_GET``, on the reactor thread.
``prometheus_client.twisted.MetricsResource`` is not used: it collects in the
reactor's shared thread pool, where reading objects the reactor mutates is a
race (and the pool also serves DNS).

Names follow HAProxy's built-in exporter, ``haproxy_`` becoming ``relaybal_``
and its ``proxy`` label ``frontend`` or ``backend``; the list is in
``docs/operations.rst`` (*Metrics*). Relay mode adds per-gateway message
counters (``relaybal_server_messages_delivered_total``, …), the queue
(``relaybal_relay_queue_*``), the delivery latency histogram
(``relaybal_relay_delivery_latency_seconds``, fed by the scheduler's attempts
through :meth:`~relaybal.admin.stats.ProcessView.follow`) and policy verdicts
(``relaybal_policy_verdicts_total``, when the view has ``policy_verdicts``).
Other parts of the daemon add their own collectors to the same registry
(:func:`make_registry` returns it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import attrs
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from twisted.web.resource import Resource
from twisted.web.server import Request

from relaybal.admin.snapshot import SERVER_STATES, snapshot
from relaybal.admin.stats import DelayHistogram, ProcessView
from relaybal.health.state import STATUSES

FRONTEND_STATES = ("OPEN", "STOP")
BACKEND_STATES = ("UP", "DOWN")

GAUGE = "gauge"
COUNTER = "counter"

Figure = Callable[[dict[str, Any]], float | None]


@attrs.frozen
class Spec:
    """One metric family: its name, type, help text and how to read its value (None: no sample)."""

    name: str
    kind: str
    doc: str
    value: Figure


def _at(*keys: str) -> Figure:
    def read(item: dict[str, Any]) -> float | None:
        value: Any = item
        for key in keys:
            value = value[key]
        return None if value is None else float(value)

    return read


FRONTEND_METRICS = (
    Spec("relaybal_frontend_current_sessions", GAUGE, "Client sessions open.", _at("sessions", "current")),
    Spec("relaybal_frontend_max_sessions", GAUGE, "Most sessions open at once.", _at("sessions", "max")),
    Spec("relaybal_frontend_limit_sessions", GAUGE, "Frontend maxconn.", _at("sessions", "limit")),
    Spec("relaybal_frontend_sessions", COUNTER, "Client sessions accepted.", _at("sessions", "total")),
    Spec("relaybal_frontend_bytes_in", COUNTER, "Bytes from clients (ended sessions).", _at("bytes", "in")),
    Spec("relaybal_frontend_bytes_out", COUNTER, "Bytes to clients (ended sessions).", _at("bytes", "out")),
    Spec(
        "relaybal_frontend_request_errors",
        COUNTER,
        "Sessions refused or ended in error (no server, limits, timeouts, bad PROXY header).",
        _at("errors"),
    ),
    Spec(
        "relaybal_frontend_no_server",
        COUNTER,
        "Clients answered 421 because no server could take them.",
        _at("no_server"),
    ),
    Spec(
        "relaybal_frontend_messages",
        COUNTER,
        "Messages accepted (relay frontends).",
        lambda fe: fe["messages"]["accepted"] if "messages" in fe else None,
    ),
    Spec(
        "relaybal_frontend_messages_refused",
        COUNTER,
        "Messages refused at the end of DATA because no gateway took them (cut-through relay frontends).",
        lambda fe: fe["messages"]["refused"] if "messages" in fe else None,
    ),
)

_BE = "relaybal_backend_"
BACKEND_METRICS = (
    Spec(_BE + "current_sessions", GAUGE, "Sessions on the servers now.", _at("sessions", "current")),
    Spec(_BE + "sessions", COUNTER, "Sessions given to the servers.", _at("sessions", "total")),
    Spec(_BE + "bytes_in", COUNTER, "Bytes from clients to servers (ended sessions).", _at("bytes", "in")),
    Spec(_BE + "bytes_out", COUNTER, "Bytes from servers to clients (ended sessions).", _at("bytes", "out")),
    Spec(_BE + "current_queue", GAUGE, "Sessions waiting for a server slot.", _at("queue", "current")),
    Spec(_BE + "queued", COUNTER, "Sessions that waited for a server slot.", _at("queue", "total")),
    Spec(_BE + "connection_errors", COUNTER, "Failed connection attempts.", _at("errors", "connect")),
    Spec(_BE + "retry_warnings", COUNTER, "Connection attempts retried.", _at("retries")),
    Spec(_BE + "redispatch_warnings", COUNTER, "Retries sent to another server.", _at("redispatches")),
    Spec(_BE + "active_servers", GAUGE, "Usable active servers.", _at("servers_active")),
    Spec(_BE + "backup_servers", GAUGE, "Usable backup servers.", _at("servers_backup")),
    Spec(_BE + "weight", GAUGE, "Total effective weight of the serving servers.", _at("weight")),
    Spec(_BE + "check_up_down", COUNTER, "Times the backend went DOWN.", _at("down_transitions")),
    Spec(_BE + "downtime_seconds", COUNTER, "Seconds without a usable server.", _at("downtime_s")),
)

_SV = "relaybal_server_"
SERVER_METRICS = (
    Spec(_SV + "current_sessions", GAUGE, "Sessions open on the server.", _at("sessions", "current")),
    Spec(_SV + "max_sessions", GAUGE, "Most sessions open at once.", _at("sessions", "max")),
    Spec(_SV + "limit_sessions", GAUGE, "Server maxconn (absent: unlimited).", _at("sessions", "limit")),
    Spec(_SV + "sessions", COUNTER, "Sessions given to the server.", _at("sessions", "total")),
    Spec(_SV + "bytes_in", COUNTER, "Bytes from clients to the server (ended sessions).", _at("bytes", "in")),
    Spec(_SV + "bytes_out", COUNTER, "Bytes from the server to clients (ended ones).", _at("bytes", "out")),
    Spec(_SV + "connection_errors", COUNTER, "Failed connection attempts.", _at("errors", "connect")),
    Spec(_SV + "weight", GAUGE, "Effective weight (after slowstart; 0 while draining).", _at("weight")),
    Spec(_SV + "downtime_seconds", COUNTER, "Seconds down or in maintenance.", _at("downtime_s")),
    Spec(
        _SV + "last_state_change_timestamp_seconds",
        GAUGE,
        "When the server's state last changed (Unix epoch).",
        _at("last_change_at"),
    ),
    Spec(
        _SV + "check_certificate_days_left",
        GAUGE,
        "Days until the certificate the last starttls check saw expires.",
        _at("cert_days"),
    ),
)

#: Relay gateways: read from a server's ``messages`` (servers of backends that relay mail goes to).
GATEWAY_METRICS = (
    Spec(
        _SV + "messages_delivered",
        COUNTER,
        "Messages delivered to the gateway (transactions that delivered at least one recipient).",
        _at("delivered"),
    ),
    Spec(_SV + "recipients_delivered", COUNTER, "Recipients the gateway took.", _at("recipients")),
    Spec(_SV + "delivered_bytes", COUNTER, "Bytes of the messages delivered to the gateway.", _at("bytes")),
    Spec(
        _SV + "recipients_deferred",
        COUNTER,
        "Recipients the gateway refused temporarily (or lost with the connection).",
        _at("deferred"),
    ),
    Spec(_SV + "recipients_bounced", COUNTER, "Recipients the gateway refused for good.", _at("bounced")),
    Spec(_SV + "delivery_attempts", COUNTER, "Transactions started with the gateway.", _at("attempts")),
    Spec(
        _SV + "possible_duplicates",
        COUNTER,
        "Connections lost after the final dot (the message was retried: it may arrive twice).",
        _at("possible_duplicates"),
    ),
    Spec(_SV + "pooled_connections", GAUGE, "Open connections in the gateway's pool.", _at("connections")),
    Spec(
        _SV + "messages_in_flight",
        GAUGE,
        "Transactions given to the gateway's pool, not finished.",
        _at("in_flight"),
    ),
)

_RL = "relaybal_relay_"
#: Process-wide relay figures: read from the snapshot's ``relay``.
RELAY_METRICS = (
    Spec(_RL + "messages_accepted", COUNTER, "Messages accepted by the relay frontends.", _at("accepted")),
    Spec(
        _RL + "recipients_delivered",
        COUNTER,
        "Recipients of spooled messages delivered.",
        _at("recipients", "delivered"),
    ),
    Spec(
        _RL + "recipients_bounced",
        COUNTER,
        "Recipients of spooled messages bounced.",
        _at("recipients", "bounced"),
    ),
    Spec(
        _RL + "deferrals",
        COUNTER,
        "Delivery rounds that ended with recipients deferred.",
        _at("deferrals"),
    ),
    Spec(
        _RL + "messages_done",
        COUNTER,
        "Spooled messages finished and removed from the queue.",
        _at("messages_done"),
    ),
    Spec(
        _RL + "bounces_sent",
        COUNTER,
        "Bounces (delivery status notifications) queued.",
        _at("bounces_sent"),
    ),
    Spec(
        _RL + "possible_duplicates",
        COUNTER,
        "Connections to gateways lost after the final dot (messages that may arrive twice).",
        _at("possible_duplicates"),
    ),
)

#: The queue's states (``relaybal_relay_queue_messages{state}``).
QUEUE_STATES = ("active", "waiting", "deferred", "held")

RELAY_SPOOL_METRICS = (
    Spec(_RL + "spool_commits", COUNTER, "Messages committed to the spool.", _at("commits")),
    Spec(_RL + "spool_commit_failures", COUNTER, "Spool commits that failed.", _at("commit_failures")),
    Spec(_RL + "spool_flushes", COUNTER, "Spool flushes (each one fdatasync).", _at("flushes")),
)

CHECK_METRICS = (
    Spec(_SV + "check_code", GAUGE, "SMTP reply code of the last check.", _at("code")),
    Spec(
        _SV + "check_duration_seconds",
        GAUGE,
        "Duration of the last check.",
        lambda check: None if check["duration_ms"] is None else check["duration_ms"] / 1000,
    ),
    Spec(_SV + "check_health", GAUGE, "Health counter (0 to rise+fall-1; UP from rise).", _at("health")),
    Spec(_SV + "check_failures", COUNTER, "Failed health checks.", _at("failures")),
    Spec(_SV + "check_up_down", COUNTER, "Times the server went DOWN.", _at("downs")),
)


def _bound(value: float) -> str:
    """A bucket's ``le`` label as Prometheus writes it: ``0.01``, ``1.0``, ``+Inf``."""
    return "+Inf" if value == float("inf") else repr(float(value))


class _Families:
    """Metric families filled sample by sample, emitted in creation order."""

    def __init__(self) -> None:
        self._families: dict[str, GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily] = {}

    def add(self, spec: Spec, labels: Mapping[str, str], item: dict[str, Any]) -> None:
        value = spec.value(item)
        if value is not None:
            self.sample(spec.name, spec.kind, spec.doc, labels, value)

    def sample(self, name: str, kind: str, doc: str, labels: Mapping[str, str], value: float) -> None:
        family = self._families.get(name)
        if family is None:
            cls = GaugeMetricFamily if kind == GAUGE else CounterMetricFamily
            family = self._families[name] = cls(name, doc, labels=list(labels))
        assert not isinstance(family, HistogramMetricFamily)
        family.add_metric(list(labels.values()), value)

    def histograms(self, name: str, doc: str, label: str, histogram: DelayHistogram) -> None:
        """One histogram per key of ``histogram`` (labelled ``label``); nothing when it is empty."""
        if not histogram.counts:
            return
        family = HistogramMetricFamily(name, doc, labels=[label])
        for key in sorted(histogram.counts):
            buckets = [(_bound(bound), count) for bound, count in histogram.cumulative(key)]
            family.add_metric([key], buckets, histogram.sums[key])
        self._families[name] = family

    def states(
        self, name: str, doc: str, labels: Mapping[str, str], states: Iterable[str], current: str
    ) -> None:
        """One sample per state, 1 for ``current`` and 0 for the others (HAProxy's exporter's way)."""
        for state in states:
            self.sample(name, GAUGE, doc, {**labels, "state": state}, int(state == current))

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._families.values())


class RelaybalCollector:
    """Reads the process's frontends, backends and servers at each collection."""

    def __init__(self, view: ProcessView) -> None:
        self.view = view

    def collect(self) -> Iterable[Metric]:
        snap = snapshot(self.view)
        m = _Families()
        process = snap["relaybal"]
        m.sample("relaybal_build_info", GAUGE, "relaybal version.", {"version": process["version"]}, 1)
        for name, kind, doc, value in (
            ("process_start_time_seconds", GAUGE, "Start time (Unix epoch).", process["started"]),
            ("process_uptime_seconds", GAUGE, "Seconds since start.", process["uptime_s"]),
            ("process_stopping", GAUGE, "1 while draining before exit (SIGTERM).", int(process["stopping"])),
            (
                "process_current_connections",
                GAUGE,
                "Client sessions open, all frontends.",
                sum(f["sessions"]["current"] for f in snap["frontends"]),
            ),
            ("config_reloads", COUNTER, "Configuration reloads applied.", process["reloads"]),
            ("config_reload_failures", COUNTER, "Configuration reloads refused.", process["reload_failures"]),
            (
                "config_last_reload_successful",
                GAUGE,
                "0 if the last reload was refused, else 1.",
                int(process["last_reload_ok"]),
            ),
        ):
            m.sample("relaybal_" + name, kind, doc, {}, value)
        for fe in snap["frontends"]:
            labels = {"frontend": fe["name"]}
            m.states(
                "relaybal_frontend_status",
                "Frontend status: 1 for the current state (STOP: draining).",
                labels,
                FRONTEND_STATES,
                fe["status"],
            )
            for spec in FRONTEND_METRICS:
                m.add(spec, labels, fe)
        for be in snap["backends"]:
            labels = {"backend": be["name"]}
            m.states(
                "relaybal_backend_status",
                "Backend status: 1 for the current state (UP: a server is usable).",
                labels,
                BACKEND_STATES,
                be["status"],
            )
            for spec in BACKEND_METRICS:
                m.add(spec, labels, be)
        for be in snap["backends"]:
            for server in be["servers"]:
                self._server(m, be["name"], server)
        for be in snap["backends"]:
            for server in be["servers"]:
                if "messages" in server:
                    for spec in GATEWAY_METRICS:
                        m.add(spec, {"backend": be["name"], "server": server["name"]}, server["messages"])
        relay = snap["relay"]
        if relay is not None:
            self._relay(m, relay)
        m.histograms(
            _RL + "delivery_latency_seconds",
            "Seconds from receipt to delivery of the messages delivered from the spool, per backend.",
            "backend",
            self.view.delivery_delays,
        )
        verdicts = self.view.policy_verdicts() if self.view.policy_verdicts is not None else {}
        for (policy, verdict), count in sorted(verdicts.items()):
            m.sample(
                "relaybal_policy_verdicts",
                COUNTER,
                "Relay policy verdicts, by policy and verdict.",
                {"policy": policy, "verdict": verdict},
                count,
            )
        return list(m)

    @staticmethod
    def _relay(m: _Families, relay: dict[str, Any]) -> None:
        for spec in RELAY_METRICS:
            m.add(spec, {}, relay)
        queue = relay["queue"]
        if queue is not None:
            m.sample(_RL + "queue_depth", GAUGE, "Messages in the spool (every state).", {}, queue["total"])
            for state in QUEUE_STATES:
                m.sample(
                    _RL + "queue_messages",
                    GAUGE,
                    "Messages in the spool by state: active (being delivered), waiting (for a gateway), "
                    "deferred (until their next attempt), held.",
                    {"state": state},
                    queue[state],
                )
        spool = relay["spool"]
        if spool is not None:
            for spec in RELAY_SPOOL_METRICS:
                m.add(spec, {}, spool)

    @staticmethod
    def _server(m: _Families, backend: str, server: dict[str, Any]) -> None:
        labels = {"backend": backend, "server": server["name"]}
        m.states("relaybal_server_status", "Server status: 1 for the current state.", labels, SERVER_STATES,
                 server["state"])  # fmt: skip
        for spec in SERVER_METRICS:
            m.add(spec, labels, server)
        check = server["check"]
        if check is None:
            return
        m.states(
            "relaybal_server_check_status",
            "Last health check status (HAProxy's codes): 1 for the current one.",
            labels,
            STATUSES,
            check["status"] or "INI",
        )
        for spec in CHECK_METRICS:
            m.add(spec, labels, check)


def make_registry(view: ProcessView, process: bool = True) -> CollectorRegistry:
    """A private registry with relaybal's collector (and ``process_*`` figures from /proc)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelaybalCollector(view))
    if process:
        ProcessCollector(registry=registry)
    return registry


class MetricsResource(Resource):
    """Renders the registry in the format the scraper asks for, in ``render_GET``."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        accept = request.getHeader("accept") or ""
        encoder, content_type = choose_encoder(accept)
        body = encoder(self.registry)
        request.setHeader("content-type", content_type)
        request.setHeader("cache-control", "no-store")
        return body
