"""``[admin] http``: the stats page, ``/stats.json`` and ``/metrics`` on ``twisted.web``.

* ``/`` — an HTML page in the spirit of HAProxy's statistics page: one table
  per frontend and per backend, servers colour-coded by status, and one
  traffic graph per server over the last hour (10-second buckets), drawn
  here as inline SVG. With relay frontends, a relay panel (messages
  accepted, the queue, delivered, deferred, bounced) comes first, and each
  relay backend has a table of what its gateways were given. The page
  loads nothing else (no scripts, fonts, images or style sheets: its
  Content-Security-Policy forbids them),
  refreshes itself (``<meta http-equiv="refresh">``) and fits a phone
  (the tables scroll sideways, optional columns hide on narrow screens).
* ``/stats.json`` — the same :func:`~relaybal.admin.snapshot.snapshot` as JSON.
* ``/metrics`` — Prometheus text format (:mod:`relaybal.admin.metrics`).

Everything renders on the reactor thread from live state; a request costs
one walk over the servers. With a users file (``[admin] http_users``) every
path needs HTTP basic authentication; the password hashes are checked off the
reactor thread, as the relay's ``AUTH`` does.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from twisted.web import http
from twisted.web.guard import BasicCredentialFactory, HTTPAuthSessionWrapper
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from relaybal.admin.history import TrafficHistory
from relaybal.admin.metrics import MetricsResource
from relaybal.admin.snapshot import snapshot
from relaybal.admin.stats import ProcessView
from relaybal.smtp.auth import UserLookup, UsersFileChecker

#: Seconds between the page's own refreshes.
REFRESH = 10

#: The page may use its own inline styles and nothing else.
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'"

_STYLE = """
:root{--head:#27406b;--line:#c9ced6;--muted:#5b6573}
*{box-sizing:border-box}
body{margin:0;padding:12px 16px;background:#f3f4f6;color:#15191e;
font:14px/1.35 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header h1{margin:0;font-size:20px}header h1 small{font-weight:normal;color:var(--muted)}
.meta{margin:4px 0 8px;color:var(--muted)}.meta a{color:var(--head)}
.banner{padding:6px 10px;border-radius:4px;margin:6px 0;font-weight:600}
.legend{display:flex;flex-wrap:wrap;gap:6px;margin:0 0 10px;padding:0;list-style:none;font-size:12px}
.legend li{padding:2px 8px;border:1px solid var(--line);border-radius:10px}
section{background:#fff;border:1px solid var(--line);border-radius:6px;margin:0 0 14px;padding:8px 10px}
section h2{margin:0 0 6px;font-size:16px}section h2 small{font-weight:normal;color:var(--muted)}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{border:1px solid var(--line);padding:3px 6px;white-space:nowrap}
th{background:var(--head);color:#fff;font-weight:600;font-size:12px;white-space:normal}
td.n{text-align:right}
td.name{font-weight:600;position:sticky;left:0;background:inherit;z-index:1}
th.first{position:sticky;left:0;z-index:2}
td.info{white-space:normal;min-width:9em;max-width:22em;font-size:12px;color:#333}
tr.total td{font-weight:600;border-top:2px solid #7a8594}
.tag{font-size:11px;font-weight:normal;padding:0 4px;border:1px solid #888;border-radius:3px;margin-left:4px}
.up{background:#c0ffc0}.nocheck{background:#e2f5e2}.going-down{background:#ffffa0}
.going-up{background:#ffd37a}.down{background:#ff9c9c}.drain{background:#a8cdfc}
.maint{background:#d6aa6e}.open{background:#c0ffc0}.stop{background:#ff9c9c}
.warn{background:#ffe38a}.crit{background:#ff9c9c}
.graphs{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:10px;margin-top:10px}
figure{margin:0;border:1px solid var(--line);border-left:6px solid #9aa3ad;border-radius:4px;padding:6px;
background:#fbfbfc}
.up-edge,.nocheck-edge{border-left-color:#4caf50}.going-down-edge{border-left-color:#e6d200}
.going-up-edge{border-left-color:#f0a020}.down-edge{border-left-color:#e53935}
.drain-edge{border-left-color:#4f8fe0}.maint-edge{border-left-color:#a0682a}
figcaption{font-size:12px;margin-bottom:4px}figcaption b{font-size:13px}
figure svg{display:block;width:100%;height:84px;background:#fff;border:1px solid #e3e6ea}
.axis{display:flex;justify-content:space-between;font-size:11px;color:var(--muted)}
.key-s{color:#3b78c4}.key-b{color:#e07b00}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(104px,1fr));gap:6px;margin:0;padding:0;
list-style:none}
.tiles li{border:1px solid var(--line);border-radius:4px;padding:4px 8px;background:#fbfbfc}
.tiles b{display:block;font-size:20px;font-variant-numeric:tabular-nums;line-height:1.2}
.tiles span{font-size:12px;color:var(--muted)}
.note{margin:6px 0 0;font-size:12px;color:var(--muted)}
h3{margin:10px 0 4px;font-size:14px}
@media (max-width:720px){body{padding:6px;font-size:13px}.opt{display:none}
section{padding:6px}.graphs{grid-template-columns:1fr}td.info{min-width:9em}
.tiles{grid-template-columns:repeat(4,1fr);gap:4px}.tiles li{padding:3px 5px}.tiles b{font-size:16px}
.tiles span{font-size:11px}}
"""

_LEGEND = (
    ("up", "UP"),
    ("nocheck", "no check"),
    ("going-down", "UP, going down"),
    ("going-up", "DOWN, going up"),
    ("down", "DOWN"),
    ("drain", "DRAIN"),
    ("maint", "MAINT"),
)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def human_bytes(count: int) -> str:
    """``1536`` → ``1.5 KiB``; exact below 1 KiB."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float) -> str:
    """``75`` → ``1m15s``; ``7300`` → ``2h01m``; ``200000`` → ``2d07h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _num(value: object, opt: bool = False) -> str:
    cls = "n opt" if opt else "n"
    return f'<td class="{cls}">{"" if value is None else _e(value)}</td>'


def _bytes(count: int) -> str:
    return f'<td class="n" title="{count} bytes">{human_bytes(count)}</td>'


# --------------------------------------------------------------------------- graphs

GRAPH_WIDTH = 360
GRAPH_HEIGHT = 100
_TOP = 4


def traffic_svg(sessions: Sequence[int], moved: Sequence[int], buckets: int = GRAPH_WIDTH) -> str:
    """An inline SVG of one server's buckets: bars for sessions, a line for bytes.

    The newest bucket is at the right edge; one bucket is one unit of the
    ``viewBox``, which the page stretches to its width. Each series is scaled
    to its own peak (the caption gives both peaks).
    """
    width = max(buckets, 1)
    offset = width - len(sessions)
    parts = [
        f'<svg viewBox="0 0 {width} {GRAPH_HEIGHT}" preserveAspectRatio="none" '
        'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="traffic over the last hour">'
    ]
    for quarter in (1, 2, 3):
        x = width * quarter // 4
        parts.append(
            f'<line x1="{x}" y1="0" x2="{x}" y2="{GRAPH_HEIGHT}" stroke="#e3e6ea" '
            'vector-effect="non-scaling-stroke"/>'
        )
    span = GRAPH_HEIGHT - _TOP
    peak = max(sessions, default=0)
    if peak:
        bars = []
        for i, value in enumerate(sessions):
            if value:
                height = round(span * value / peak, 2)
                top = round(GRAPH_HEIGHT - height, 2)
                bars.append(f"M{offset + i} {GRAPH_HEIGHT}V{top}h1V{GRAPH_HEIGHT}Z")
        parts.append(f'<path d="{"".join(bars)}" fill="#7eaee8"/>')
    peak_bytes = max(moved, default=0)
    if peak_bytes and len(moved) > 1:
        points = " ".join(
            f"{offset + i + 0.5},{round(GRAPH_HEIGHT - span * value / peak_bytes, 2)}"
            for i, value in enumerate(moved)
        )
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="#e07b00" stroke-width="1.5" '
            'vector-effect="non-scaling-stroke" stroke-linejoin="round"/>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _graph(backend: str, server: dict[str, Any], unit: str = "session") -> str:
    """One server's figure; ``unit`` names what the bars count (relay gateways: transactions)."""
    traffic = server.get("traffic") or {"sessions": [], "bytes": [], "interval_s": 10}
    sessions, moved = traffic["sessions"], traffic["bytes"]
    interval = traffic["interval_s"]
    span_min = round(GRAPH_WIDTH * interval / 60)
    caption = (
        f"<b>{_e(backend)}/{_e(server['name'])}</b> "
        f'<span class="key-s">■ {_plural(sum(sessions), unit)}</span> '
        f'<span class="key-b">— {human_bytes(sum(moved))}</span> in the last {span_min} min'
    )
    peaks = (
        f"peak {_plural(max(sessions, default=0), unit)} and {human_bytes(max(moved, default=0))} "
        f"per {interval:g} s"
    )
    return (
        f'<figure class="{_e(server["status_class"])}-edge"><figcaption>{caption}</figcaption>'
        f"{traffic_svg(sessions, moved)}"
        f'<div class="axis"><span>&minus;{span_min} min</span><span>{peaks}</span><span>now</span></div>'
        "</figure>"
    )


# --------------------------------------------------------------------------- tables


def _check_cells(server: dict[str, Any]) -> str:
    check = server["check"]
    if check is None:
        return '<td>—</td><td class="info opt"></td>'
    status = check["status"] or "INI"
    words = status
    if check["code"] is not None:
        words += f"/{check['code']}"
    if check["duration_ms"] is not None:
        words += f" in {check['duration_ms']}ms"
    if check["running"]:
        words = "* " + words
    info = check["info"] or check["description"]
    title = f"{check['description']}; health {check['health']}/{check['rise'] + check['fall'] - 1}"
    return f'<td title="{_e(title)}">{_e(words)}</td><td class="info opt">{_e(info)}</td>'


def _cert_cell(days: int | None) -> str:
    if days is None:
        return '<td class="n opt"></td>'
    cls = "crit" if days < 7 else "warn" if days < 21 else ""
    return f'<td class="n opt {cls}">{days} d</td>'


def _server_row(server: dict[str, Any]) -> str:
    sessions = server["sessions"]
    weight = str(server["weight"])
    if server["throttle_pct"] is not None:
        weight += f" ({server['throttle_pct']}%)"
    tags = '<span class="tag">backup</span>' if server["backup"] else ""
    return (
        f'<tr class="{_e(server["status_class"])}">'
        f'<td class="name" title="{_e(server["address"])}">{_e(server["name"])}{tags}</td>'
        f"<td>{_e(server['status'])}</td>"
        f"{_check_cells(server)}"
        f"{_num(weight)}"
        f"{_num(sessions['current'])}{_num(sessions['total'])}"
        f"{_num(sessions['max'], True)}{_num(sessions['limit'], True)}"
        f"{_num(None)}"
        f"{_bytes(server['bytes']['in'])}{_bytes(server['bytes']['out'])}"
        f"{_num(server['errors']['connect'])}"
        f"{_num(None, True)}{_num(None, True)}"
        f'<td class="n" title="down {human_age(server["downtime_s"])} in all">'
        f"{human_age(server['last_change_s'])}</td>"
        f"{_cert_cell(server['cert_days'])}"
        "</tr>"
    )


def _backend_section(backend: dict[str, Any]) -> str:
    # Group headings (colspan) only over columns that are always shown: the optional
    # ones (hidden on narrow screens) have headings of their own.
    head = (
        "<thead><tr>"
        '<th rowspan="2" class="first">Server</th><th rowspan="2">Status</th>'
        '<th rowspan="2">Last check</th><th rowspan="2" class="opt">Check info</th>'
        '<th rowspan="2">Weight</th><th colspan="2">Sessions</th>'
        '<th rowspan="2" class="opt">Max</th><th rowspan="2" class="opt">Limit</th>'
        '<th rowspan="2">Queue</th><th colspan="2">Bytes</th><th rowspan="2">Conn errors</th>'
        '<th rowspan="2" class="opt">Retries</th><th rowspan="2" class="opt">Redisp.</th>'
        '<th rowspan="2">Since</th><th rowspan="2" class="opt">Cert</th></tr>'
        "<tr><th>Cur</th><th>Total</th><th>In</th><th>Out</th></tr></thead>"
    )
    rows = [_server_row(server) for server in backend["servers"]]
    sessions = backend["sessions"]
    rows.append(
        f'<tr class="total {_e(backend["status_class"])}"><td class="name">Backend</td>'
        f"<td>{_e(backend['status'])}</td><td>{backend['servers_active']} active, "
        f'{backend["servers_backup"]} backup</td><td class="info opt"></td>'
        f"{_num(backend['weight'])}{_num(sessions['current'])}{_num(sessions['total'])}"
        f"{_num(None, True)}{_num(None, True)}"
        f'<td class="n" title="{backend["queue"]["total"]} queued in all">{backend["queue"]["current"]}</td>'
        f"{_bytes(backend['bytes']['in'])}{_bytes(backend['bytes']['out'])}"
        f"{_num(backend['errors']['connect'])}{_num(backend['retries'], True)}"
        f"{_num(backend['redispatches'], True)}"
        f'<td class="n">{human_age(backend["last_change_s"])}</td><td class="opt"></td></tr>'
    )
    check = f" · check {backend['check']}" if backend["check"] else " · no check"
    relay = "messages" in backend
    unit = "transaction" if relay else "session"
    graphs = "".join(_graph(backend["name"], server, unit) for server in backend["servers"])
    return (
        f'<section class="backend" id="backend-{_e(backend["name"])}">'
        f"<h2>Backend {_e(backend['name'])} <small>{_e(backend['balance'])}{_e(check)}"
        f"{' · relay gateways' if relay else ''}</small></h2>"
        f'<div class="scroll"><table>{head}<tbody>{"".join(rows)}</tbody></table></div>'
        f"{_gateway_table(backend) if relay else ''}"
        f'<div class="graphs">{graphs}</div></section>'
    )


def _gateway_cells(figures: dict[str, Any]) -> str:
    return (
        f"{_num(figures['delivered'])}{_num(figures['recipients'])}{_bytes(figures['bytes'])}"
        f"{_num(figures['deferred'])}{_num(figures['bounced'])}"
        f"{_num(figures['attempts'], True)}{_num(figures['possible_duplicates'], True)}"
        f"{_num(figures['connections'])}{_num(figures['in_flight'])}"
    )


def _gateway_table(backend: dict[str, Any]) -> str:
    """What relay delivery gave each gateway of ``backend`` and made of it (``messages``)."""
    head = (
        '<thead><tr><th rowspan="2" class="first">Gateway</th><th colspan="3">Delivered</th>'
        '<th colspan="2">Recipients refused</th><th rowspan="2" class="opt">Attempts</th>'
        '<th rowspan="2" class="opt">Possible dup.</th><th colspan="2">Pool</th></tr>'
        "<tr><th>Msgs</th><th>Rcpts</th><th>Bytes</th><th>Deferred</th><th>Bounced</th>"
        "<th>Conns</th><th>In flight</th></tr></thead>"
    )
    rows = [
        f'<tr class="{_e(server["status_class"])}"><td class="name gw">{_e(server["name"])}</td>'
        f"{_gateway_cells(server['messages'])}</tr>"
        for server in backend["servers"]
    ]
    rows.append(
        f'<tr class="total"><td class="name gw">Backend</td>{_gateway_cells(backend["messages"])}</tr>'
    )
    return (
        f'<h3 id="gateways-{_e(backend["name"])}">Messages</h3>'
        f'<div class="scroll"><table class="gateways">{head}<tbody>{"".join(rows)}</tbody></table></div>'
    )


def _frontend_section(frontend: dict[str, Any]) -> str:
    sessions = frontend["sessions"]
    relay = frontend.get("messages")
    extra_head = extra_cell = ""
    if relay is not None:
        extra_head = "<th>Msgs accepted</th>"
        extra_cell = _num(relay["accepted"])
        if relay["refused"] is not None:
            extra_head += "<th>Msgs refused</th>"
            extra_cell += _num(relay["refused"])
    head = (
        '<thead><tr><th>Status</th><th>Cur</th><th class="opt">Max</th><th class="opt">Limit</th>'
        f"<th>Total</th>{extra_head}<th>Bytes in</th><th>Bytes out</th><th>Errors</th>"
        '<th>No server</th><th class="opt">Retr</th><th class="opt">Redis</th>'
        '<th class="opt">Listening on</th></tr></thead>'
    )
    row = (
        f'<tr class="{_e(frontend["status_class"])}"><td>{_e(frontend["status"])}</td>'
        f"{_num(sessions['current'])}{_num(sessions['max'], True)}{_num(sessions['limit'], True)}"
        f"{_num(sessions['total'])}{extra_cell}"
        f"{_bytes(frontend['bytes']['in'])}{_bytes(frontend['bytes']['out'])}"
        f"{_num(frontend['errors'])}{_num(frontend['no_server'])}"
        f"{_num(frontend['retries'], True)}{_num(frontend['redispatches'], True)}"
        f'<td class="opt">{_e(", ".join(frontend["listen"]))}</td></tr>'
    )
    target = frontend["backend"]
    arrow = f' → <a href="#backend-{_e(target)}">{_e(target)}</a>' if target else ""
    mode = frontend["mode"] + (f" ({frontend['delivery']})" if frontend.get("delivery") else "")
    return (
        f'<section class="frontend" id="frontend-{_e(frontend["name"])}">'
        f"<h2>Frontend {_e(frontend['name'])} <small>{_e(mode)}{arrow}</small></h2>"
        f'<div class="scroll"><table>{head}<tbody>{row}</tbody></table></div></section>'
    )


def _tile(value: int, label: str, title: str, alert: str = "") -> str:
    """One figure of the relay panel; ``alert`` (a colour class) applies when ``value`` is not 0."""
    cls = f' class="{alert}"' if alert and value else ""
    return f'<li{cls} title="{_e(title)}"><b>{value}</b><span>{_e(label)}</span></li>'


def _relay_section(relay: dict[str, Any]) -> str:
    """The relay panel: messages accepted, the queue by state, what became of the mail."""
    queue = relay["queue"]
    recipients = relay["recipients"]
    tiles = [_tile(relay["accepted"], "accepted", "messages accepted by the relay frontends")]
    if queue is not None:
        deferred_title = (
            f"messages waiting for their next attempt; {relay['deferrals']} delivery rounds deferred in all"
        )
        tiles += [
            _tile(queue["total"], "in queue", "messages in the spool, every state"),
            _tile(queue["active"], "active", "messages being delivered now"),
            _tile(queue["waiting"], "waiting", "messages due now, waiting for a gateway with room", "warn"),
            _tile(queue["deferred"], "deferred", deferred_title, "warn"),
            _tile(queue["held"], "held", "messages kept from delivery (queue hold)"),
        ]
    tiles += [
        _tile(recipients["delivered"], "delivered", "recipients of spooled messages delivered"),
        _tile(recipients["bounced"], "bounced", "recipients of spooled messages bounced", "crit"),
        _tile(relay["bounces_sent"], "bounces sent", "delivery status notifications queued"),
        _tile(relay["possible_duplicates"], "possible dup.", "connections lost after the final dot", "warn"),
    ]
    spool = relay["spool"]
    if spool is None:
        note = "cut-through only: no spool"
    else:
        note = (
            f"spool: {_plural(spool['commits'], 'message')} committed in "
            f"{_plural(spool['flushes'], 'flush')} ({human_bytes(spool['bytes'])}), "
            f"{relay['messages_done']} done"
        )
        if spool["commit_failures"]:
            note += f", {spool['commit_failures']} failed commits"
    return (
        '<section class="relay" id="relay"><h2>Relay <small>messages and recipients</small></h2>'
        f'<ul class="tiles">{"".join(tiles)}</ul><p class="note">{_e(note)}</p></section>'
    )


def render_page(snap: dict[str, Any], refresh: int = REFRESH) -> str:
    """The stats page for one :func:`~relaybal.admin.snapshot.snapshot`."""
    process = snap["relaybal"]
    node = process["node"] or "relaybal"
    generated = time.strftime("%H:%M:%S", time.localtime(process["now"]))
    banners = []
    if process["stopping"]:
        banners.append(
            '<p class="banner stop">Draining before exit: listeners are closed, '
            "open sessions are finishing.</p>"
        )
    if not process["last_reload_ok"]:
        banners.append(
            '<p class="banner warn">The last configuration reload was refused '
            "(see the log); the previous configuration is running.</p>"
        )
    shared = process.get("shared_state")
    shared_meta = f"shared state {_e(shared['state'])} · " if shared is not None else ""
    if shared is not None and shared["state"] == "down":
        banners.append(
            f'<p class="banner warn">Shared state: Redis {_e(shared["redis"])} is unreachable '
            f"({_e(shared['last_error'])}); rate limits and stick tables are node-local until it is "
            f"back ({shared['fallbacks']} local decisions so far).</p>"
        )
    legend = "".join(f'<li class="{cls}">{_e(text)}</li>' for cls, text in _LEGEND)
    relay = snap.get("relay")
    sections = [_relay_section(relay)] if relay is not None else []
    sections += [_frontend_section(f) for f in snap["frontends"]]
    sections += [_backend_section(b) for b in snap["backends"]]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="refresh" content="{int(refresh)}">'
        f"<title>relaybal on {_e(node)}</title>"
        '<link rel="icon" href="data:,">'
        f"<style>{_STYLE}</style></head><body>"
        f"<header><h1>relaybal <small>on {_e(node)}</small></h1>"
        f'<p class="meta">version {_e(process["version"])} · pid {_e(process["pid"])} · '
        f"up {human_age(process['uptime_s'])} · {len(snap['frontends'])} frontends, "
        f"{len(snap['backends'])} backends · reloads {process['reloads']} · {shared_meta}"
        f"updated {generated}, every {int(refresh)} s · "
        '<a href="stats.json">stats.json</a> · <a href="metrics">metrics</a></p>'
        f'{"".join(banners)}<ul class="legend">{legend}</ul></header>'
        f"<main>{''.join(sections)}</main></body></html>\n"
    )


# --------------------------------------------------------------------------- resources


def _common_headers(request: Request, content_type: str) -> None:
    request.setHeader("content-type", content_type)
    request.setHeader("cache-control", "no-store")
    request.setHeader("x-content-type-options", "nosniff")


class StatsPage(Resource):
    """``/``: the HTML stats page."""

    isLeaf = True

    def __init__(self, view: ProcessView, history: TrafficHistory | None, refresh: int = REFRESH) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.view = view
        self.history = history
        self.refresh = refresh

    def render_GET(self, request: Request) -> bytes:
        _common_headers(request, "text/html; charset=utf-8")
        request.setHeader("content-security-policy", CONTENT_SECURITY_POLICY)
        request.setHeader("referrer-policy", "no-referrer")
        request.setHeader("x-frame-options", "DENY")
        return render_page(snapshot(self.view, self.history), self.refresh).encode("utf-8")


class StatsJSON(Resource):
    """``/stats.json``: the snapshot as JSON."""

    isLeaf = True

    def __init__(self, view: ProcessView, history: TrafficHistory | None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.view = view
        self.history = history

    def render_GET(self, request: Request) -> bytes:
        _common_headers(request, "application/json")
        return json.dumps(snapshot(self.view, self.history), separators=(",", ":")).encode("utf-8")


def admin_resource(
    view: ProcessView, history: TrafficHistory | None, metrics: MetricsResource, refresh: int = REFRESH
) -> Resource:
    """The tree: ``/``, ``/stats.json``, ``/metrics``."""
    root = Resource()
    root.putChild(b"", StatsPage(view, history, refresh))
    root.putChild(b"stats.json", StatsJSON(view, history))
    root.putChild(b"metrics", metrics)
    return root


@implementer(IRealm)
class _AdminRealm:
    """Every authenticated user sees the same resource tree."""

    def __init__(self, resource: IResource) -> None:
        self.resource = resource

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple[Any, Any, Any]:
        if IResource not in interfaces:
            raise NotImplementedError("only IResource avatars")
        return IResource, self.resource, lambda: None


def with_basic_auth(
    resource: IResource, users: UserLookup, run: Callable[[Callable[[], bool]], Deferred[bool]]
) -> IResource:
    """``resource`` behind HTTP basic authentication against a users file (realm ``relaybal``)."""
    portal = Portal(_AdminRealm(resource), [UsersFileChecker(users, run)])
    return HTTPAuthSessionWrapper(portal, [BasicCredentialFactory(b"relaybal")])


class AdminSite(Site):
    """A ``Site`` that neither logs each request nor its own start and stop."""

    noisy = False

    def log(self, request: http.Request) -> None:
        # Scrapers ask every few seconds; an access line each time would drown the
        # connection log that operators read.
        pass


def _plural(count: int, noun: str) -> str:
    """``1 session``, ``2 sessions``, ``2 flushes``."""
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {noun}es" if noun.endswith(("s", "sh", "ch", "x")) else f"{count} {noun}s"
