"""The stats page's pieces on a fake clock: traffic history, snapshot, HTML, SVG, resources."""

from __future__ import annotations

import json
import re

import attrs
from health_fakes import BUSY, PASS, REFUSED, config_of
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from relaybal.admin.history import BUCKETS, TrafficHistory
from relaybal.admin.metrics import MetricsResource, make_registry
from relaybal.admin.snapshot import server_state, snapshot, status_class
from relaybal.admin.stats import ProcessView
from relaybal.admin.web import (
    CONTENT_SECURITY_POLICY,
    StatsJSON,
    StatsPage,
    admin_resource,
    human_age,
    human_bytes,
    render_page,
    traffic_svg,
)
from relaybal.balance.backend import Backend
from relaybal.health.state import CheckResult
from relaybal.relay.frontend import RelayFrontend
from relaybal.splice.frontend import SpliceFrontend
from relaybal.spool.sinks import SpoolSink


class World:
    """Backend "mx" (a, b, spare as backup), a splice frontend, a view and a history."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        config = config_of(
            [
                {"name": "a", "address": "10.0.0.1:25", "weight": 2},
                {"name": "b", "address": "10.0.0.2:25", "maxconn": 7},
                {"name": "spare", "address": "10.0.0.3:25", "backup": True},
            ],
            check={"kind": "starttls", "rise": 2, "fall": 3},
        )
        self.config = config
        self.mx = Backend(config.backends["mx"], self.clock)
        self.a, self.b, self.spare = self.mx.servers
        self.frontend = SpliceFrontend(config.frontends["smtp"], self.mx, MemoryReactorClock(), "lb.test")
        self.backends = {"mx": self.mx}
        self.view = ProcessView(self.backends, {"smtp": self.frontend}, self.clock, hostname="lb.test", pid=7)
        self.history = TrafficHistory(self.backends, self.clock)

    def traffic(self, server: object, sessions: int, moved: int) -> None:
        assert server in self.mx.servers
        for _ in range(sessions):
            server.acquire()  # type: ignore[attr-defined]
            server.release()  # type: ignore[attr-defined]
        server.bytes_in += moved  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- history


class TrafficHistoryTests(SynchronousTestCase):
    def test_each_bucket_holds_what_happened_in_its_interval(self) -> None:
        w = World()
        w.history.start()
        w.traffic(w.a, 3, 1000)
        w.clock.advance(10)
        w.traffic(w.a, 1, 50)
        w.traffic(w.b, 2, 10)
        w.clock.advance(10)
        w.clock.advance(10)
        series = w.history.series("mx", "a")
        self.assertEqual(series.sessions, (3, 1, 0))
        self.assertEqual(series.bytes, (1000, 50, 0))
        self.assertEqual(w.history.series("mx", "b").sessions, (0, 2, 0))
        self.assertEqual(series.end, w.clock.seconds())
        self.assertEqual(series.interval, 10.0)
        w.history.stop()
        w.clock.advance(10)
        self.assertEqual(len(w.history.series("mx", "a").sessions), 3)

    def test_the_ring_keeps_one_hour(self) -> None:
        w = World()
        w.history.start()
        for step in range(BUCKETS + 25):
            w.traffic(w.a, step % 5, 0)
            w.clock.advance(10)
        sessions = w.history.series("mx", "a").sessions
        self.assertEqual(len(sessions), BUCKETS)
        self.assertEqual(sessions[-1], (BUCKETS + 24) % 5)
        self.assertEqual(sessions[0], 25 % 5)

    def test_counters_from_before_the_first_sample_are_not_a_bucket(self) -> None:
        w = World()
        w.traffic(w.a, 500, 10**9)
        history = TrafficHistory(w.backends, w.clock)
        w.traffic(w.a, 1, 10)
        history.sample()
        self.assertEqual(history.series("mx", "a").sessions, (1,))
        self.assertEqual(history.series("mx", "a").bytes, (10,))

    def test_servers_that_go_away_or_are_replaced_lose_their_history(self) -> None:
        w = World()
        w.traffic(w.a, 2, 0)
        w.history.sample()
        self.assertEqual(w.history.series("mx", "a").sessions, (2,))
        w.mx.reconfigure(attrs.evolve(w.mx.config, servers=w.mx.config.servers[1:]))
        w.history.sample()
        self.assertEqual(w.history.series("mx", "a").sessions, ())
        # Same name, new address: a new server object, a new ring.
        moved = attrs.evolve(w.mx.config.servers[0], address=attrs.evolve(w.b.config.address, port=26))
        w.mx.reconfigure(attrs.evolve(w.mx.config, servers=(moved, w.mx.config.servers[1])))
        w.history.sample()
        self.assertIsNot(w.mx.servers[0], w.b)
        self.assertEqual(w.history.series("mx", "b").sessions, ())
        w.history.sample()
        self.assertEqual(w.history.series("mx", "b").sessions, (0,))


# --------------------------------------------------------------------------- snapshot


class SnapshotTests(SynchronousTestCase):
    def test_figures_and_states(self) -> None:
        w = World()
        w.a.check_done(PASS)
        w.a.check_done(CheckResult("L7OK", info="TLS established", code=250, duration=0.012, cert_days=40))
        for _ in range(3):
            w.b.check_done(REFUSED)
        w.spare.set_admin_state("drain")
        w.traffic(w.a, 4, 123)
        w.frontend.total = 9
        w.frontend.retries = 2
        w.frontend.redispatches = 1
        w.history.sample()
        w.clock.advance(30)
        snap = snapshot(w.view, w.history)
        json.dumps(snap)  # plain JSON types only
        self.assertEqual(snap["relaybal"]["node"], "lb.test")
        self.assertEqual(snap["relaybal"]["pid"], 7)
        [fe] = snap["frontends"]
        self.assertEqual(
            (fe["name"], fe["mode"], fe["backend"], fe["status"]), ("smtp", "splice", "mx", "OPEN")
        )
        self.assertEqual(fe["sessions"]["total"], 9)
        self.assertEqual(fe["listen"], ["tcp:2525"])
        [be] = snap["backends"]
        self.assertEqual(
            (be["name"], be["status"], be["balance"], be["check"]), ("mx", "UP", "roundrobin", "starttls")
        )
        self.assertEqual((be["retries"], be["redispatches"]), (2, 1))
        self.assertEqual(be["sessions"]["total"], 4)
        a, b, spare = be["servers"]
        self.assertEqual((a["name"], a["state"], a["status"], a["status_class"]), ("a", "UP", "UP", "up"))
        self.assertEqual(a["cert_days"], 40)
        self.assertEqual(a["check"]["status"], "L7OK")
        self.assertEqual(a["check"]["code"], 250)
        self.assertEqual(a["check"]["duration_ms"], 12)
        self.assertEqual(a["sessions"], {"current": 0, "max": 1, "limit": None, "total": 4})
        self.assertEqual(a["bytes"], {"in": 123, "out": 0})
        self.assertEqual(a["weight"], 2)
        self.assertEqual((b["state"], b["status"], b["status_class"]), ("DOWN", "DOWN", "down"))
        self.assertEqual(b["sessions"]["limit"], 7)
        self.assertEqual(b["check"]["status"], "L4CON")
        self.assertEqual(b["last_change_s"], 30)
        self.assertEqual((spare["state"], spare["status_class"], spare["backup"]), ("DRAIN", "drain", True))
        self.assertEqual(spare["weight"], 0)
        # The history's first sample (when it was made) is the baseline.
        self.assertEqual(a["traffic"]["sessions"], [4])
        self.assertEqual(a["traffic"]["bytes"], [123])
        w.history.sample()
        self.assertEqual(
            snapshot(w.view, w.history)["backends"][0]["servers"][0]["traffic"]["sessions"], [4, 0]
        )

    def test_maintenance_comes_before_health(self) -> None:
        self.assertEqual(server_state({"admin_state": "maint", "up": False}), "MAINT")
        self.assertEqual(server_state({"admin_state": "drain", "up": False}), "DOWN")
        self.assertEqual(server_state({"admin_state": "drain", "up": True}), "DRAIN")
        self.assertEqual(server_state({"admin_state": "ready", "up": True}), "UP")

    def test_status_classes(self) -> None:
        for status, cls in [
            ("UP", "up"), ("UP 1/3", "going-down"), ("DOWN 1/2", "going-up"), ("DOWN", "down"),
            ("DRAIN", "drain"), ("MAINT", "maint"), ("no check", "nocheck"), ("OPEN", "open"),
        ]:  # fmt: skip
            self.assertEqual(status_class(status), cls)

    def test_relay_frontends_carry_message_figures(self) -> None:
        w = World()

        @attrs.define
        class Relay:
            config: object
            backend: Backend
            messages: int = 12
            current: int = 1

        relay_config = attrs.evolve(w.config.frontends["smtp"], mode="relay", name="relay")
        w.view.frontends["relay"] = Relay(relay_config, w.mx)  # type: ignore[index]
        snap = snapshot(w.view)
        fe = snap["frontends"][1]
        self.assertEqual((fe["name"], fe["mode"], fe["delivery"]), ("relay", "relay", "spool"))
        # A spooling frontend does not count refused messages; a cut-through sink does.
        self.assertEqual(fe["messages"], {"accepted": 12, "refused": None, "bounces_sent": None})
        # No delivery state reached the view (no ``relay``): the relay section has no queue yet.
        self.assertEqual(snap["relay"]["accepted"], 12)
        self.assertIsNone(snap["relay"]["queue"])
        self.assertIn("messages", snap["backends"][0])
        self.assertEqual(snap["backends"][0]["servers"][0]["messages"]["delivered"], 0)
        self.assertIsNone(snapshot(World().view)["relay"])


# --------------------------------------------------------------------------- HTML and SVG


class PageTests(SynchronousTestCase):
    def page(self, w: World) -> str:
        return render_page(snapshot(w.view, w.history), refresh=7)

    def test_every_server_appears_with_its_status_and_colour(self) -> None:
        w = World()
        for _ in range(3):
            w.b.check_done(BUSY)
        w.spare.set_admin_state("maint")
        page = self.page(w)
        rows = re.findall(r'<tr class="([\w-]+)"><td class="name"[^>]*>(\w+)', page)
        # "a" has not been checked yet: UP but unproven (the first failure takes it down).
        self.assertEqual(rows, [("going-down", "a"), ("down", "b"), ("maint", "spare")])
        self.assertIn("<td>UP 1/3</td>", page)
        self.assertIn("L7STS/421", page)
        self.assertIn("4.3.2 busy", page)
        self.assertIn('<meta http-equiv="refresh" content="7">', page)
        self.assertIn('<meta name="viewport" content="width=device-width, initial-scale=1">', page)
        self.assertEqual(page.count("<svg"), 3)
        self.assertIn("Frontend smtp", page)

    def test_a_relay_frontend_brings_the_relay_panel_and_the_gateway_table(self) -> None:
        w = World()
        self.assertNotIn('id="relay"', self.page(w))
        relay_config = attrs.evolve(w.config.frontends["smtp"], mode="relay", name="relay")
        relay = RelayFrontend(relay_config, w.mx, MemoryReactorClock(), sink=SpoolSink())
        relay.messages = 5
        w.view.frontends["relay"] = relay  # type: ignore[index]
        page = self.page(w)
        self.assertIn('<section class="relay" id="relay">', page)
        self.assertIn("<b>5</b><span>accepted</span>", page)
        self.assertIn('<table class="gateways">', page)
        self.assertEqual(re.findall(r'<td class="name gw">(\w+)</td>', page), ["a", "b", "spare", "Backend"])
        self.assertIn("<th>Msgs accepted</th>", page)
        self.assertIn("relay (spool)", page)

    def test_the_page_loads_nothing_and_runs_nothing(self) -> None:
        page = self.page(World())
        self.assertNotIn("<script", page)
        self.assertNotIn("<img", page)
        self.assertNotIn("@import", page)
        self.assertNotIn("url(", page)
        # The only absolute URL is the SVG namespace, which is never fetched.
        urls = set(re.findall(r"https?://[^\"' )]+", page))
        self.assertEqual(urls, {"http://www.w3.org/2000/svg"})
        self.assertIn('href="data:,"', page)  # no favicon request

    def test_names_are_escaped(self) -> None:
        w = World()
        w.view.hostname = "<b>&"
        page = self.page(w)
        self.assertIn("&lt;b&gt;&amp;", page)
        self.assertNotIn("<b>&", page)

    def test_draining_and_refused_reload_are_announced(self) -> None:
        w = World()
        w.view.stopping = True
        w.view.last_reload_ok = False
        page = self.page(w)
        self.assertIn("Draining before exit", page)
        self.assertIn("reload was refused", page)
        self.assertIn('<tr class="stop"><td>STOP</td>', page)

    def test_svg_bars_are_right_aligned_and_scaled_to_the_peak(self) -> None:
        svg = traffic_svg([0, 2, 4], [10, 0, 5], buckets=10)
        self.assertIn('viewBox="0 0 10 100"', svg)
        # Newest bucket at the right edge: buckets 7, 8, 9; bucket 7 is empty (no bar).
        self.assertIn("M8 100V52.0h1V100Z", svg)
        self.assertIn("M9 100V4.0h1V100Z", svg)
        self.assertNotIn("M7 100", svg)
        self.assertIn('points="7.5,4.0 8.5,100.0 9.5,52.0"', svg)

    def test_an_empty_history_draws_no_series(self) -> None:
        svg = traffic_svg([], [])
        self.assertNotIn("<path", svg)
        self.assertNotIn("<polyline", svg)

    def test_human_units(self) -> None:
        self.assertEqual(human_bytes(1023), "1023 B")
        self.assertEqual(human_bytes(1536), "1.5 KiB")
        self.assertEqual(human_bytes(5 * 1024**3), "5.0 GiB")
        self.assertEqual(human_age(59), "59s")
        self.assertEqual(human_age(75), "1m15s")
        self.assertEqual(human_age(7300), "2h01m")
        self.assertEqual(human_age(200000), "2d07h")


# --------------------------------------------------------------------------- resources


def get(resource: object, path: bytes = b"") -> tuple[DummyRequest, bytes]:
    request = DummyRequest([path] if path else [])
    body = resource.render(request)  # type: ignore[attr-defined]
    assert isinstance(body, bytes)
    return request, body


class ResourceTests(SynchronousTestCase):
    def test_page_headers(self) -> None:
        w = World()
        request, body = get(StatsPage(w.view, w.history))
        headers = request.responseHeaders
        self.assertEqual(headers.getRawHeaders("content-type"), ["text/html; charset=utf-8"])
        self.assertEqual(headers.getRawHeaders("content-security-policy"), [CONTENT_SECURITY_POLICY])
        self.assertEqual(headers.getRawHeaders("cache-control"), ["no-store"])
        self.assertIn(b"<!DOCTYPE html>", body)

    def test_json(self) -> None:
        w = World()
        request, body = get(StatsJSON(w.view, w.history))
        self.assertEqual(request.responseHeaders.getRawHeaders("content-type"), ["application/json"])
        data = json.loads(body)
        self.assertEqual(data["schema"], 1)
        self.assertEqual([s["name"] for s in data["backends"][0]["servers"]], ["a", "b", "spare"])

    def test_tree(self) -> None:
        w = World()
        root = admin_resource(w.view, w.history, MetricsResource(make_registry(w.view, process=False)))
        for path, kind in [(b"", StatsPage), (b"stats.json", StatsJSON), (b"metrics", MetricsResource)]:
            self.assertIsInstance(root.getChildWithDefault(path, DummyRequest([path])), kind)
