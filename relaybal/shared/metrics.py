"""``/metrics`` for the shared state: ``relaybal_shared_state_*``.

A collector registered in the service's registry; it reads the current
:class:`~relaybal.shared.state.SharedState` at each scrape (none: no
samples, so a node without ``shared_state`` exports nothing of it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from relaybal.shared.redis import CONNECTING, DOWN, UP
from relaybal.shared.state import SharedState

PREFIX = "relaybal_shared_state_"
STATES = (CONNECTING, UP, DOWN)


class SharedStateCollector:
    """Prometheus collector of the link's state and counters."""

    def __init__(self, shared: Callable[[], SharedState | None]) -> None:
        self.shared = shared

    def describe(self) -> Iterable[Metric]:
        return []  # the families depend on whether shared_state is configured

    def collect(self) -> Iterable[Metric]:
        shared = self.shared()
        if shared is None:
            return []
        status = shared.status()
        labels = ["redis"]
        value = [status.redis]
        up = GaugeMetricFamily(
            PREFIX + "up",
            "1 while decisions use Redis (up or connecting), 0 during an outage (node-local fallback).",
            labels=labels,
        )
        up.add_metric(value, 0.0 if status.state == DOWN else 1.0)
        state = GaugeMetricFamily(
            PREFIX + "state", "The link's state (1 for the current one).", labels=[*labels, "state"]
        )
        for name in STATES:
            state.add_metric([*value, name], 1.0 if status.state == name else 0.0)
        counters = (
            ("calls", "Decisions that asked Redis (or would have, during an outage).", status.calls),
            ("answered", "Decisions Redis answered in time.", status.answered),
            ("fallbacks", "Decisions made with node-local state (outage, timeout, error).", status.fallbacks),
            ("timeouts", "Calls not answered within shared_state.timeout.", status.timeouts),
            ("errors", "Calls that failed (connection lost, error reply).", status.errors),
            ("outages", "Outages (Redis unreachable or too slow) since the start.", status.outages),
            ("outage_seconds", "Time spent in outages, the current one included.", status.outage_seconds),
            ("reconciled", "Node-local entries written to Redis after outages.", status.reconciled),
        )
        families: list[Metric] = [up, state]
        for name, doc, figure in counters:
            family = CounterMetricFamily(PREFIX + name, doc, labels=labels)
            family.add_metric(value, float(figure))
            families.append(family)
        pending = GaugeMetricFamily(
            PREFIX + "unreconciled",
            "Stick entries and rate-limit buckets changed during an outage and not yet written to Redis.",
            labels=labels,
        )
        pending.add_metric(value, float(shared.unreconciled()))
        families.append(pending)
        return families
