"""Relay mode on the stats page, ``/stats.json`` and ``/metrics``, on a fake clock with fake delivery state.

The scheduler, the spool and the gateways' pools are small fakes with the
figures the stats read (:class:`~relaybal.admin.stats.RelayState`); the
gateway counters, the frontends and the cut-through sink are the real
objects. The last tests follow a real :class:`~relaybal.delivery.scheduler.Scheduler`
over a real spool (the delivery tests' world) to check the latency histogram.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_delivery_scheduler import World as DeliveryWorld
from test_delivery_scheduler import accept
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from relaybal.admin.history import TrafficHistory
from relaybal.admin.metrics import make_registry
from relaybal.admin.snapshot import snapshot
from relaybal.admin.stats import (
    DELAY_BUCKETS,
    DelayHistogram,
    ProcessView,
    RelayState,
    show_stat,
    stat_records,
)
from relaybal.admin.web import render_page
from relaybal.balance.backend import Backend
from relaybal.config import parse_config
from relaybal.delivery.client import Transaction, TransactionResult
from relaybal.delivery.cutthrough import CutThroughSink
from relaybal.delivery.pool import Gateways
from relaybal.delivery.scheduler import Attempt, SchedulerStats
from relaybal.relay.frontend import RelayFrontend
from relaybal.splice.frontend import SpliceFrontend
from relaybal.spool.sinks import SpoolSink
from relaybal.spool.store import SpoolStats

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@attrs.define
class FakeScheduler:
    stats: SchedulerStats = attrs.Factory(SchedulerStats)
    on_attempt: list[Any] = attrs.Factory(list)
    in_flight: int = 0
    waiting: int = 0
    deferred_count: int = 0
    held: frozenset[str] = frozenset()


@attrs.define
class FakePool:
    connections: int = 0
    in_flight: int = 0
    opened: int = 0
    connect_failures: int = 0


@attrs.define
class FakeSpool:
    depth: int = 0
    stats: SpoolStats = attrs.Factory(SpoolStats)

    def __len__(self) -> int:
        return self.depth


def attempt(backend: str = "gw", delay: float = 0.5, delivered: int = 1, server: str = "gw1") -> Attempt:
    return Attempt(
        queue_id="Q1", backend=backend, server=server, recipients=max(delivered, 1), delivered=delivered,
        deferred=0 if delivered else 1, bounced=0, size=100, reply="250 2.0.0 Ok", delay=delay,
    )  # fmt: skip


class RelayWorld:
    """Splice frontend "smtp" → backend "mx"; relay frontends "apps" (spool) and "ct" (cut-through) → "gw"."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.config = parse_config(
            {
                "global": {"hostname": "lb.test"},
                "frontend": {
                    "smtp": {"mode": "splice", "listen": ["tcp:2525"], "backend": "mx"},
                    "apps": {"mode": "relay", "listen": ["tcp:2526"], "backend": "gw"},
                    "ct": {
                        "mode": "relay",
                        "listen": ["tcp:2527"],
                        "backend": "gw",
                        "delivery": "cut-through",
                    },
                },
                "backend": {
                    "mx": {"server": [{"name": "a", "address": "10.0.0.1:25"}]},
                    "gw": {
                        "server": [
                            {"name": "gw1", "address": "10.0.1.1:25"},
                            {"name": "gw2", "address": "10.0.1.2:25"},
                        ]
                    },
                },
            }
        )
        self.backends = {name: Backend(bc, self.clock) for name, bc in self.config.backends.items()}
        self.mx, self.gw = self.backends["mx"], self.backends["gw"]
        self.gw1, self.gw2 = self.gw.servers
        reactor = MemoryReactorClock()
        self.gateways = Gateways(reactor, hostname="lb.test", backends=lambda: self.backends)
        self.cut_through = CutThroughSink(self.gateways, lambda name: self.gw, self.clock.seconds, "lb.test")
        fcs = self.config.frontends
        self.smtp = SpliceFrontend(fcs["smtp"], self.mx, reactor, "lb.test")
        self.apps = RelayFrontend(fcs["apps"], self.gw, reactor, sink=SpoolSink())
        self.ct = RelayFrontend(fcs["ct"], self.gw, reactor, sink=self.cut_through)
        self.frontends: dict[str, Any] = {"smtp": self.smtp, "apps": self.apps, "ct": self.ct}
        self.scheduler: FakeScheduler | None = FakeScheduler()
        self.spool: FakeSpool | None = FakeSpool()
        self.view = ProcessView(
            self.backends, self.frontends, self.clock, hostname="lb.test",
            relay=lambda: RelayState(self.gateways, self.scheduler, self.spool),
        )  # fmt: skip
        self.history = TrafficHistory(self.backends, self.clock)

    def deliveries(self) -> None:
        """Some relay traffic: gw1 delivered 3 messages, gw2 2, with deferrals, a bounce, a duplicate."""
        c1 = self.gateways.counters_of(self.gw1)
        c1.messages, c1.recipients, c1.bytes, c1.attempts, c1.deferred = 3, 4, 3000, 5, 2
        c2 = self.gateways.counters_of(self.gw2)
        c2.messages, c2.recipients, c2.bytes, c2.attempts, c2.bounced, c2.possible_duplicates = (
            2,
            2,
            500,
            3,
            1,
            1,
        )
        self.gateways.pools[self.gw1] = FakePool(connections=2, in_flight=1, opened=3)  # type: ignore[assignment]
        self.apps.messages, self.ct.messages = 7, 2
        self.cut_through.refused, self.cut_through.bounces = 1, 1
        assert self.scheduler is not None and self.spool is not None
        self.scheduler.stats = SchedulerStats(
            delivered=5, deferred=2, bounced=1, bounces_sent=1, messages_done=4, possible_duplicates=1
        )
        self.scheduler.in_flight, self.scheduler.waiting, self.scheduler.deferred_count = 1, 2, 3
        self.scheduler.held = frozenset({"H1"})
        self.spool.depth = 7
        self.spool.stats.commits, self.spool.stats.flushes, self.spool.stats.bytes = 9, 4, 12_345


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    if key not in samples:
        raise AssertionError(f"no sample {name}{labels}")
    return samples[key]


# --------------------------------------------------------------------------- the view


class ProcessViewTests(SynchronousTestCase):
    def test_follow_observes_delivered_attempts_once(self) -> None:
        w = RelayWorld()
        scheduler = FakeScheduler()
        w.view.follow(scheduler)
        w.view.follow(scheduler)
        self.assertEqual(len(scheduler.on_attempt), 1)
        for observer in scheduler.on_attempt:
            observer(attempt(delay=0.02))
            observer(attempt(delay=7.0))
            observer(attempt(delay=99.0, delivered=0))  # deferred: not a delivery
            observer(attempt(backend="other", delay=4000.0))
        delays = w.view.delivery_delays
        self.assertEqual(sorted(delays.counts), ["gw", "other"])
        self.assertEqual(sum(delays.counts["gw"]), 2)
        self.assertAlmostEqual(delays.sums["gw"], 7.02)
        cumulative = dict(delays.cumulative("gw"))
        self.assertEqual(
            (cumulative[0.01], cumulative[0.025], cumulative[5.0], cumulative[10.0]), (0, 1, 1, 2)
        )
        self.assertEqual(delays.cumulative("other")[-1], (float("inf"), 1))
        self.assertEqual(delays.cumulative("other")[-2], (3600.0, 0))

    def test_relay_state_follows_the_scheduler_it_finds_and_totals_survive_a_replacement(self) -> None:
        w = RelayWorld()
        first = w.scheduler
        assert first is not None
        first.stats.delivered, first.stats.bounces_sent = 10, 1
        self.assertIsNotNone(w.view.relay_state())
        self.assertEqual(len(first.on_attempt), 1)
        second = FakeScheduler(stats=SchedulerStats(delivered=2))
        w.scheduler = second  # a reload re-opened the spool
        w.view.relay_state()
        self.assertEqual(len(second.on_attempt), 1)
        totals = w.view.scheduler_totals()
        self.assertEqual((totals.delivered, totals.bounces_sent), (12, 1))
        relay = snapshot(w.view)["relay"]
        self.assertEqual(relay["recipients"]["delivered"], 12)

    def test_a_bucket_bound_counts_as_below_it(self) -> None:
        histogram = DelayHistogram()
        histogram.observe("gw", 1.0)
        self.assertEqual(dict(histogram.cumulative("gw"))[1.0], 1)
        self.assertEqual(dict(histogram.cumulative("gw"))[0.5], 0)
        self.assertEqual(len(histogram.cumulative("gw")), len(DELAY_BUCKETS) + 1)
        self.assertEqual((DELAY_BUCKETS[0], DELAY_BUCKETS[-1]), (0.01, 3600.0))

    def test_show_stat_is_unchanged_by_the_relay_figures(self) -> None:
        w = RelayWorld()
        w.deliveries()
        lines = show_stat(w.view)
        columns = lines[0].count(",")
        self.assertTrue(all(line.count(",") == columns for line in lines[1:]), lines)
        records = {(r["pxname"], r["svname"]): r for r in stat_records(w.view)}
        self.assertEqual(records[("gw", "gw1")]["gateway"]["delivered"], 3)  # type: ignore[index]
        self.assertNotIn("gateway", records[("mx", "a")])


# --------------------------------------------------------------------------- /stats.json


class SnapshotTests(SynchronousTestCase):
    def test_relay_section_frontends_and_gateways(self) -> None:
        w = RelayWorld()
        w.deliveries()
        snap = snapshot(w.view, w.history)
        relay = snap["relay"]
        self.assertEqual(relay["accepted"], 9)
        self.assertEqual(relay["queue"], {"total": 7, "active": 1, "waiting": 2, "deferred": 3, "held": 1})
        self.assertEqual(relay["recipients"], {"delivered": 5, "bounced": 1})
        self.assertEqual((relay["deferrals"], relay["messages_done"], relay["bounces_sent"]), (2, 4, 1))
        self.assertEqual(relay["possible_duplicates"], 1)
        self.assertEqual(relay["spool"], {"commits": 9, "commit_failures": 0, "flushes": 4, "bytes": 12_345})
        fes = {fe["name"]: fe for fe in snap["frontends"]}
        self.assertNotIn("messages", fes["smtp"])
        self.assertEqual(fes["apps"]["delivery"], "spool")
        self.assertEqual(fes["apps"]["messages"], {"accepted": 7, "refused": None, "bounces_sent": None})
        self.assertEqual(fes["ct"]["delivery"], "cut-through")
        self.assertEqual(fes["ct"]["messages"], {"accepted": 2, "refused": 1, "bounces_sent": 1})
        mx, gw = snap["backends"]
        self.assertNotIn("messages", mx)
        self.assertNotIn("messages", mx["servers"][0])
        gw1, gw2 = gw["servers"]
        self.assertEqual(
            gw1["messages"],
            {
                "delivered": 3, "recipients": 4, "bytes": 3000, "deferred": 2, "bounced": 0,
                "attempts": 5, "possible_duplicates": 0, "connections": 2, "in_flight": 1, "opened": 3,
                "connect_failures": 0,
            },
        )  # fmt: skip
        self.assertEqual((gw2["messages"]["delivered"], gw2["messages"]["connections"]), (2, 0))
        self.assertEqual(gw["messages"]["delivered"], 5)
        self.assertEqual(gw["messages"]["recipients"], 6)
        self.assertEqual(gw["messages"]["bytes"], 3500)
        self.assertEqual(gw["messages"]["in_flight"], 1)

    def test_before_any_delivery_every_figure_is_zero(self) -> None:
        w = RelayWorld()
        snap = snapshot(w.view)
        self.assertEqual(
            snap["relay"]["queue"], {"total": 0, "active": 0, "waiting": 0, "deferred": 0, "held": 0}
        )
        self.assertEqual(snap["backends"][1]["servers"][0]["messages"]["delivered"], 0)
        # Reading the figures makes no pools and no counters.
        self.assertEqual((w.gateways.pools, w.gateways.counters), ({}, {}))

    def test_cut_through_only_has_no_queue(self) -> None:
        w = RelayWorld()
        w.scheduler = w.spool = None
        relay = snapshot(w.view)["relay"]
        self.assertIsNone(relay["queue"])
        self.assertIsNone(relay["spool"])
        self.assertEqual(relay["recipients"], {"delivered": 0, "bounced": 0})

    def test_no_relay_frontend_no_relay_section(self) -> None:
        w = RelayWorld()
        del w.frontends["apps"], w.frontends["ct"]
        w.scheduler = w.spool = None
        snap = snapshot(w.view)
        self.assertIsNone(snap["relay"])
        self.assertFalse([b for b in snap["backends"] if "messages" in b])
        samples, _ = parse(generate_latest(make_registry(w.view, process=False)).decode())
        self.assertFalse([name for name, _ in samples if name.startswith("relaybal_relay_")])
        self.assertFalse([name for name, _ in samples if "messages_delivered" in name])

    def test_a_backend_relay_mail_was_delivered_to_keeps_its_figures(self) -> None:
        # A reload moved the relay frontends away from "mx": what its servers were given still shows.
        w = RelayWorld()
        w.gateways.counters_of(w.mx.servers[0]).messages = 4
        mx = snapshot(w.view)["backends"][0]
        self.assertEqual(mx["servers"][0]["messages"]["delivered"], 4)


# --------------------------------------------------------------------------- /metrics


class MetricsTests(SynchronousTestCase):
    def scrape(self, view: ProcessView) -> tuple[Samples, dict[str, str]]:
        return parse(generate_latest(make_registry(view, process=False)).decode())

    def test_relay_metrics(self) -> None:
        w = RelayWorld()
        w.deliveries()
        w.view.relay_state()  # follows the fake scheduler
        assert w.scheduler is not None
        for observer in w.scheduler.on_attempt:
            observer(attempt(delay=0.3))
            observer(attempt(delay=45.0, server="gw2"))
        samples, types = self.scrape(w.view)
        gw1 = {"backend": "gw", "server": "gw1"}
        gw2 = {"backend": "gw", "server": "gw2"}
        self.assertEqual(value(samples, "relaybal_server_messages_delivered_total", **gw1), 3)
        self.assertEqual(value(samples, "relaybal_server_messages_delivered_total", **gw2), 2)
        self.assertEqual(value(samples, "relaybal_server_recipients_delivered_total", **gw1), 4)
        self.assertEqual(value(samples, "relaybal_server_delivered_bytes_total", **gw1), 3000)
        self.assertEqual(value(samples, "relaybal_server_recipients_deferred_total", **gw1), 2)
        self.assertEqual(value(samples, "relaybal_server_recipients_bounced_total", **gw2), 1)
        self.assertEqual(value(samples, "relaybal_server_delivery_attempts_total", **gw1), 5)
        self.assertEqual(value(samples, "relaybal_server_possible_duplicates_total", **gw2), 1)
        self.assertEqual(value(samples, "relaybal_server_pooled_connections", **gw1), 2)
        self.assertEqual(value(samples, "relaybal_server_messages_in_flight", **gw1), 1)
        self.assertNotIn(
            ("relaybal_server_messages_delivered_total", frozenset({"backend": "mx", "server": "a"}.items())),
            samples,
        )
        self.assertEqual(value(samples, "relaybal_frontend_messages_total", frontend="apps"), 7)
        self.assertEqual(value(samples, "relaybal_frontend_messages_refused_total", frontend="ct"), 1)
        self.assertNotIn(
            ("relaybal_frontend_messages_refused_total", frozenset({"frontend": "apps"}.items())), samples
        )
        self.assertEqual(value(samples, "relaybal_relay_messages_accepted_total"), 9)
        self.assertEqual(value(samples, "relaybal_relay_queue_depth"), 7)
        for state, count in {"active": 1, "waiting": 2, "deferred": 3, "held": 1}.items():
            self.assertEqual(value(samples, "relaybal_relay_queue_messages", state=state), count)
        self.assertEqual(value(samples, "relaybal_relay_recipients_delivered_total"), 5)
        self.assertEqual(value(samples, "relaybal_relay_recipients_bounced_total"), 1)
        self.assertEqual(value(samples, "relaybal_relay_deferrals_total"), 2)
        self.assertEqual(value(samples, "relaybal_relay_messages_done_total"), 4)
        self.assertEqual(value(samples, "relaybal_relay_bounces_sent_total"), 1)
        self.assertEqual(value(samples, "relaybal_relay_possible_duplicates_total"), 1)
        self.assertEqual(value(samples, "relaybal_relay_spool_commits_total"), 9)
        self.assertEqual(value(samples, "relaybal_relay_spool_flushes_total"), 4)
        latency = "relaybal_relay_delivery_latency_seconds"
        self.assertEqual(types[latency], "histogram")
        self.assertEqual(value(samples, latency + "_count", backend="gw"), 2)
        self.assertAlmostEqual(value(samples, latency + "_sum", backend="gw"), 45.3)
        self.assertEqual(value(samples, latency + "_bucket", backend="gw", le="0.25"), 0)
        self.assertEqual(value(samples, latency + "_bucket", backend="gw", le="0.5"), 1)
        self.assertEqual(value(samples, latency + "_bucket", backend="gw", le="60.0"), 2)
        self.assertEqual(value(samples, latency + "_bucket", backend="gw", le="+Inf"), 2)
        buckets = [labels for name, labels in samples if name == latency + "_bucket"]
        self.assertEqual(len(buckets), len(DELAY_BUCKETS) + 1)
        self.assertEqual(types["relaybal_server_messages_delivered"], "counter")
        self.assertEqual(types["relaybal_relay_queue_depth"], "gauge")

    def test_no_histogram_before_a_delivery(self) -> None:
        samples, types = self.scrape(RelayWorld().view)
        self.assertNotIn("relaybal_relay_delivery_latency_seconds", types)
        self.assertEqual(value(samples, "relaybal_relay_queue_depth"), 0)

    def test_policy_verdicts(self) -> None:
        w = RelayWorld()
        samples, _ = self.scrape(w.view)
        self.assertFalse([name for name, _ in samples if name.startswith("relaybal_policy_")])
        w.view.policy_verdicts = lambda: {("dnsbl", "reject"): 3, ("networks", "permit"): 40}
        samples, types = self.scrape(w.view)
        self.assertEqual(types["relaybal_policy_verdicts"], "counter")
        self.assertEqual(
            value(samples, "relaybal_policy_verdicts_total", policy="dnsbl", verdict="reject"), 3
        )
        self.assertEqual(
            value(samples, "relaybal_policy_verdicts_total", policy="networks", verdict="permit"), 40
        )


# --------------------------------------------------------------------------- the page


class PageTests(SynchronousTestCase):
    def test_relay_panel_gateway_table_and_frontend_columns(self) -> None:
        w = RelayWorld()
        w.deliveries()
        page = render_page(snapshot(w.view, w.history))
        panel = re.search(r'<section class="relay" id="relay">(.*?)</section>', page)
        assert panel is not None
        tiles = dict(
            (label, int(number))
            for number, label in re.findall(r"<b>(\d+)</b><span>([^<]+)</span>", panel[1])
        )
        self.assertEqual(
            tiles,
            {
                "accepted": 9, "in queue": 7, "active": 1, "waiting": 2, "deferred": 3, "held": 1,
                "delivered": 5, "bounced": 1, "bounces sent": 1, "possible dup.": 1,
            },
        )  # fmt: skip
        self.assertIn("spool: 9 messages committed in 4 flushes (12.1 KiB), 4 done", panel[1])
        self.assertIn('<li class="warn" title="messages waiting for their next attempt', panel[1])
        # The relay panel comes before the frontends.
        self.assertLess(page.index('id="relay"'), page.index('id="frontend-smtp"'))
        table = re.search(r'<table class="gateways">(.*?)</table>', page)
        assert table is not None
        rows = re.findall(r'<td class="name gw">(\w+)</td>((?:<td[^>]*>[^<]*</td>)+)', table[1])
        cells = {name: re.findall(r"<td[^>]*>([^<]*)</td>", rest) for name, rest in rows}
        self.assertEqual(list(cells), ["gw1", "gw2", "Backend"])
        self.assertEqual(cells["gw1"], ["3", "4", "2.9 KiB", "2", "0", "5", "0", "2", "1"])
        self.assertEqual(cells["Backend"][:2], ["5", "6"])
        self.assertEqual(page.count('<table class="gateways">'), 1)  # mx is not a relay backend
        self.assertIn("<h2>Frontend ct <small>relay (cut-through)", page)
        self.assertIn("<th>Msgs accepted</th><th>Msgs refused</th>", page)
        self.assertIn("0 transactions</span>", page)  # relay gateways' graphs count transactions
        self.assertIn("0 sessions</span>", page)
        # The status rows the browser test reads are still one per server.
        servers = re.findall(r'<tr class="[\w-]+"><td class="name"[^>]*>(\w+)', page)
        self.assertEqual(servers, ["a", "gw1", "gw2"])
        self.assertNotIn("<script", page)
        self.assertEqual(set(re.findall(r"https?://[^\"' )]+", page)), {"http://www.w3.org/2000/svg"})

    def test_cut_through_only(self) -> None:
        w = RelayWorld()
        w.scheduler = w.spool = None
        page = render_page(snapshot(w.view))
        self.assertIn("cut-through only: no spool", page)
        self.assertNotIn("in queue", page)

    def test_no_panel_without_relay(self) -> None:
        w = RelayWorld()
        del w.frontends["apps"], w.frontends["ct"]
        w.scheduler = w.spool = None
        self.assertNotIn('id="relay"', render_page(snapshot(w.view)))


# --------------------------------------------------------------------------- a real scheduler


def test_a_real_scheduler_feeds_the_latency_histogram(tmp_path: Path) -> None:
    world = DeliveryWorld(tmp_path)
    backends = {"gateways": world.backend}
    view = ProcessView(
        backends, {}, world.clock,
        relay=lambda: RelayState(world.pools, world.scheduler, world.store),  # type: ignore[arg-type]
    )  # fmt: skip
    view.follow(world.scheduler)
    answers: list[tuple[Deferred[TransactionResult], Transaction]] = []

    def slow(txn: Transaction) -> Deferred[TransactionResult]:
        answers.append((Deferred(), txn))
        return answers[-1][0]

    world.gateways = dict.fromkeys(world.gateways, slow)
    world.scheduler.start()
    world.queue(3)
    assert len(answers) == 3
    world.clock.advance(2.5)  # the gateways answer 2.5 s after the messages were received
    for answer, txn in answers:
        answer.callback(accept(txn).result)
    world.settle()
    assert world.scheduler.stats.delivered == 3
    assert sum(view.delivery_delays.counts["gateways"]) == 3
    assert dict(view.delivery_delays.cumulative("gateways"))[1.0] == 0
    assert dict(view.delivery_delays.cumulative("gateways"))[2.5] == 3
    snap = snapshot(view)
    assert snap["relay"]["recipients"]["delivered"] == 3
    assert snap["relay"]["queue"]["total"] == 0
    assert sum(s["messages"]["delivered"] for s in snap["backends"][0]["servers"]) == 3
    samples, _ = parse(generate_latest(make_registry(view, process=False)).decode())
    assert value(samples, "relaybal_relay_delivery_latency_seconds_count", backend="gateways") == 3
    assert value(samples, "relaybal_relay_queue_depth") == 0


def test_every_metric_is_documented() -> None:
    """Each family ``/metrics`` has (splice and relay, the histogram, verdicts) is in docs/operations.rst."""
    docs = (Path(__file__).parent.parent / "docs" / "operations.rst").read_text()
    w = RelayWorld()
    w.deliveries()
    w.view.policy_verdicts = lambda: {("networks", "permit"): 1}
    w.view.delivery_delays.observe("gw", 0.2)
    text = generate_latest(make_registry(w.view, process=False)).decode()
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    assert "relaybal_relay_delivery_latency_seconds" in names and "relaybal_policy_verdicts_total" in names
    missing = []
    for name in sorted(names):
        prefix = "_".join(name.split("_")[:2])  # relaybal_server, relaybal_relay, …
        if f"``{name}``" not in docs and f"``…{name[len(prefix) :]}``" not in docs:
            missing.append(name)
    assert missing == []
