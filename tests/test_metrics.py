"""``/metrics``: the collector on a fake clock, and the real daemon's figures after real traffic."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from health_fakes import REFUSED, config_of
from peers import SmtpSink, free_port, smtp_source, wait_until
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest
from web_client import daemon_config, metrics, sample

from relaybal.admin.metrics import MetricsResource, RelaybalCollector, make_registry
from relaybal.admin.stats import ProcessView
from relaybal.balance.backend import Backend
from relaybal.health.state import STATUSES, CheckResult
from relaybal.splice.frontend import SpliceFrontend

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types


class CollectorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(5000)
        config = config_of(
            [
                {"name": "a", "address": "10.0.0.1:25", "weight": 3, "maxconn": 50},
                {"name": "b", "address": "10.0.0.2:25"},
            ],
            check={"kind": "starttls"},
        )
        self.mx = Backend(config.backends["mx"], self.clock)
        self.a, self.b = self.mx.servers
        self.frontend = SpliceFrontend(config.frontends["smtp"], self.mx, MemoryReactorClock(), "lb.test")
        self.view = ProcessView({"mx": self.mx}, {"smtp": self.frontend}, self.clock, hostname="lb.test")
        self.registry = make_registry(self.view, process=False)

    def scrape(self) -> tuple[Samples, dict[str, str]]:
        return parse(generate_latest(self.registry).decode())

    def test_values_and_types(self) -> None:
        for _ in range(5):
            self.a.acquire()
        self.a.release()
        self.a.bytes_in, self.a.bytes_out = 1000, 200
        self.b.failures = 2
        self.a.check_done(CheckResult("L7OK", code=250, duration=0.025, cert_days=12))
        for _ in range(3):
            self.b.check_done(REFUSED)
        self.frontend.total, self.frontend.current, self.frontend.bytes_in = 9, 4, 1000
        self.frontend.retries, self.frontend.redispatches, self.frontend.no_server = 3, 2, 1
        self.clock.advance(60)
        samples, types = self.scrape()
        a = {"backend": "mx", "server": "a"}
        b = {"backend": "mx", "server": "b"}
        self.assertEqual(sample(samples, "relaybal_server_current_sessions", **a), 4)
        self.assertEqual(sample(samples, "relaybal_server_max_sessions", **a), 5)
        self.assertEqual(sample(samples, "relaybal_server_limit_sessions", **a), 50)
        self.assertEqual(sample(samples, "relaybal_server_sessions_total", **a), 5)
        self.assertEqual(sample(samples, "relaybal_server_bytes_in_total", **a), 1000)
        self.assertEqual(sample(samples, "relaybal_server_bytes_out_total", **a), 200)
        self.assertEqual(sample(samples, "relaybal_server_weight", **a), 3)
        self.assertEqual(sample(samples, "relaybal_server_connection_errors_total", **b), 2)
        self.assertEqual(sample(samples, "relaybal_server_status", **a, state="UP"), 1)
        self.assertEqual(sample(samples, "relaybal_server_status", **a, state="DOWN"), 0)
        self.assertEqual(sample(samples, "relaybal_server_status", **b, state="DOWN"), 1)
        self.assertEqual(sample(samples, "relaybal_server_check_status", **a, state="L7OK"), 1)
        self.assertEqual(sample(samples, "relaybal_server_check_status", **b, state="L4CON"), 1)
        for server in (a, b):
            states = [sample(samples, "relaybal_server_check_status", **server, state=s) for s in STATUSES]
            self.assertEqual(sum(states), 1)
        self.assertEqual(sample(samples, "relaybal_server_check_code", **a), 250)
        self.assertAlmostEqual(sample(samples, "relaybal_server_check_duration_seconds", **a), 0.025)
        self.assertEqual(sample(samples, "relaybal_server_check_certificate_days_left", **a), 12)
        self.assertEqual(sample(samples, "relaybal_server_check_up_down_total", **b), 1)
        self.assertEqual(sample(samples, "relaybal_server_downtime_seconds_total", **b), 60)
        self.assertNotIn(("relaybal_server_limit_sessions", frozenset(b.items())), samples)
        fe = {"frontend": "smtp"}
        self.assertEqual(sample(samples, "relaybal_frontend_sessions_total", **fe), 9)
        self.assertEqual(sample(samples, "relaybal_frontend_current_sessions", **fe), 4)
        self.assertEqual(sample(samples, "relaybal_frontend_bytes_in_total", **fe), 1000)
        self.assertEqual(sample(samples, "relaybal_frontend_no_server_total", **fe), 1)
        self.assertEqual(sample(samples, "relaybal_frontend_status", **fe, state="OPEN"), 1)
        be = {"backend": "mx"}
        self.assertEqual(sample(samples, "relaybal_backend_sessions_total", **be), 5)
        self.assertEqual(sample(samples, "relaybal_backend_retry_warnings_total", **be), 3)
        self.assertEqual(sample(samples, "relaybal_backend_redispatch_warnings_total", **be), 2)
        self.assertEqual(sample(samples, "relaybal_backend_active_servers", **be), 1)
        self.assertEqual(sample(samples, "relaybal_backend_status", **be, state="UP"), 1)
        self.assertEqual(sample(samples, "relaybal_process_current_connections"), 4)
        self.assertEqual(sample(samples, "relaybal_config_last_reload_successful"), 1)
        self.assertEqual(types["relaybal_server_sessions"], "counter")
        self.assertEqual(types["relaybal_server_current_sessions"], "gauge")

    def test_a_server_without_checks_has_no_check_metrics(self) -> None:
        config = config_of([{"name": "a", "address": "10.0.0.1:25"}])
        plain = attrs.evolve(config.backends["mx"], name="plain")
        self.view.backends["plain"] = Backend(plain, self.clock)  # type: ignore[index]
        samples, _ = self.scrape()
        names = {name for name, labels in samples if ("backend", "plain") in labels}
        self.assertIn("relaybal_server_status", names)
        self.assertFalse({n for n in names if n.startswith("relaybal_server_check_")})

    def test_draining_and_reloads(self) -> None:
        self.view.stopping = True
        self.view.reloads, self.view.reload_failures, self.view.last_reload_ok = 3, 1, False
        samples, _ = self.scrape()
        self.assertEqual(sample(samples, "relaybal_process_stopping"), 1)
        self.assertEqual(sample(samples, "relaybal_frontend_status", frontend="smtp", state="STOP"), 1)
        self.assertEqual(sample(samples, "relaybal_config_reloads_total"), 3)
        self.assertEqual(sample(samples, "relaybal_config_reload_failures_total"), 1)
        self.assertEqual(sample(samples, "relaybal_config_last_reload_successful"), 0)

    def test_collected_in_render_on_the_calling_thread(self) -> None:
        """``render_GET`` collects and returns the bytes itself: no Deferred, no thread pool."""
        threads: list[threading.Thread] = []

        class Watching(RelaybalCollector):
            def collect(self) -> Any:
                threads.append(threading.current_thread())
                return super().collect()

        registry = CollectorRegistry()
        registry.register(Watching(self.view))
        request = DummyRequest([b"metrics"])
        body = MetricsResource(registry).render(request)
        self.assertIsInstance(body, bytes)
        self.assertEqual(threads, [threading.current_thread()])
        self.assertIn(b"relaybal_server_sessions_total", body)
        self.assertTrue(request.responseHeaders.getRawHeaders("content-type")[0].startswith("text/plain"))

    def test_openmetrics_when_asked(self) -> None:
        request = DummyRequest([b"metrics"])
        request.requestHeaders.setRawHeaders(b"accept", [b"application/openmetrics-text; version=1.0.0"])
        body = MetricsResource(self.registry).render(request)
        self.assertTrue(
            request.responseHeaders.getRawHeaders("content-type")[0].startswith(
                "application/openmetrics-text"
            )
        )
        self.assertTrue(body.endswith(b"# EOF\n"))

    def test_the_latency_histogram_in_both_formats(self) -> None:
        """A histogram family renders in the text format and in OpenMetrics (which parses it back)."""
        self.view.delivery_delays.observe("gw", 0.004)
        self.view.delivery_delays.observe("gw", 2.0)
        self.view.delivery_delays.observe("gw", 7200.0)
        samples, types = self.scrape()
        name = "relaybal_relay_delivery_latency_seconds"
        self.assertEqual(types[name], "histogram")
        self.assertEqual(sample(samples, name + "_bucket", backend="gw", le="0.01"), 1)
        self.assertEqual(sample(samples, name + "_bucket", backend="gw", le="2.5"), 2)
        self.assertEqual(sample(samples, name + "_bucket", backend="gw", le="3600.0"), 2)
        self.assertEqual(sample(samples, name + "_bucket", backend="gw", le="+Inf"), 3)
        self.assertEqual(sample(samples, name + "_count", backend="gw"), 3)
        self.assertAlmostEqual(sample(samples, name + "_sum", backend="gw"), 7202.004)
        request = DummyRequest([b"metrics"])
        request.requestHeaders.setRawHeaders(b"accept", [b"application/openmetrics-text; version=1.0.0"])
        body = MetricsResource(self.registry).render(request).decode()
        [family] = [f for f in openmetrics(body) if f.name == name]
        self.assertEqual(family.type, "histogram")
        self.assertIn('relaybal_relay_delivery_latency_seconds_bucket{backend="gw",le="+Inf"} 3.0', body)

    def test_a_splice_only_process_has_no_relay_metrics(self) -> None:
        samples, _ = self.scrape()
        relay = [name for name, _ in samples if name.startswith(("relaybal_relay_", "relaybal_policy_"))]
        self.assertEqual(relay, [])
        self.assertFalse([name for name, _ in samples if "messages" in name or "recipients" in name])

    def test_process_figures_from_proc(self) -> None:
        samples, _ = parse(generate_latest(make_registry(self.view)).decode())
        self.assertGreater(sample(samples, "process_resident_memory_bytes"), 0)


# --------------------------------------------------------------------------- the real daemon

Factory = Callable[..., Any]


@pytest.mark.peers
def test_metrics_match_the_traffic_sent(sink_factory: Factory, relaybal_factory: Factory) -> None:
    """40 one-message sessions through relaybal: /metrics counts them per frontend, backend, server."""
    light: SmtpSink = sink_factory()
    heavy: SmtpSink = sink_factory()
    port, http_port = free_port(), free_port()
    config = daemon_config(port, http_port, [("light", light.port), ("heavy", heavy.port)])
    heavy_line = f'address = "127.0.0.1:{heavy.port}"'
    config = config.replace(heavy_line, heavy_line + "\nweight = 3")
    relaybal_factory(config, wait_ports=[port, http_port])
    done = smtp_source(
        port, sessions=4, messages=40, size=1000, sender="a@client.test", rcpt="user@example.test"
    )
    assert done.returncode == 0, done.stderr
    light.wait_for_count(10)
    heavy.wait_for_count(30)

    def settled() -> bool:
        samples = metrics(http_port)
        return (
            sample(samples, "relaybal_frontend_current_sessions", frontend="smtp") == 0
            and sample(samples, "relaybal_server_check_status", backend="mx", server="light", state="L7OK")
            == 1
            and sample(samples, "relaybal_server_check_status", backend="mx", server="heavy", state="L7OK")
            == 1
        )

    wait_until(settled, 10, "sessions closed and checks passed")
    samples = metrics(http_port)
    assert sample(samples, "relaybal_frontend_sessions_total", frontend="smtp") == 40
    assert sample(samples, "relaybal_backend_sessions_total", backend="mx") == 40
    assert (
        sample(samples, "relaybal_server_sessions_total", backend="mx", server="light") == light.count() == 10
    )
    assert (
        sample(samples, "relaybal_server_sessions_total", backend="mx", server="heavy") == heavy.count() == 30
    )
    for server in ("light", "heavy"):
        assert sample(samples, "relaybal_server_status", backend="mx", server=server, state="UP") == 1
        assert sample(samples, "relaybal_server_current_sessions", backend="mx", server=server) == 0
        assert sample(samples, "relaybal_server_max_sessions", backend="mx", server=server) >= 1
    bytes_in = sample(samples, "relaybal_frontend_bytes_in_total", frontend="smtp")
    bytes_out = sample(samples, "relaybal_frontend_bytes_out_total", frontend="smtp")
    # Each message carries 1000 bytes of body plus its commands; replies flow back.
    assert 40 * 1000 < bytes_in < 40 * 1500
    assert bytes_out > 40 * 50
    per_server_in = sum(
        sample(samples, "relaybal_server_bytes_in_total", backend="mx", server=s) for s in ("light", "heavy")
    )
    assert per_server_in == bytes_in == sample(samples, "relaybal_backend_bytes_in_total", backend="mx")
    assert sample(samples, "relaybal_frontend_request_errors_total", frontend="smtp") == 0
    assert sample(samples, "relaybal_build_info", version=__import__("relaybal").__version__) == 1
