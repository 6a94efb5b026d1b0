"""The service and ``[global] shared_state``: reloads, the stats page, ``/metrics``, ``clear table``."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from shared_fakes import FakeRedis
from test_reload import Reactor, make_config

from relaybal.admin.commands import CliSession, RuntimeCommands
from relaybal.admin.snapshot import snapshot
from relaybal.admin.web import render_page
from relaybal.reload import apply_config
from relaybal.service import RelaybalService
from relaybal.shared.stick import SharedStick

SHARED = {"redis": "tcp:127.0.0.1:6390", "timeout": "100ms"}
STICK = {"size": 100, "expire": "1m"}


@pytest.fixture
def svc() -> Iterator[RelaybalService]:
    config = make_config(global__shared_state=SHARED, backend__mx__stick=STICK)
    service = RelaybalService(config, Reactor(), random.Random(1), handle_signals=False)
    assert service.shared is not None
    fake = FakeRedis(service.reactor)
    service.shared.link.client = fake
    service.privilegedStartService()
    service.startService()
    yield service
    service.stopService()


def test_backends_with_a_stick_table_share_it(svc: RelaybalService) -> None:
    assert svc.shared is not None and svc.shared.config.timeout == 0.1
    share = svc.backends["mx"].stick_share
    assert isinstance(share, SharedStick) and share.link is svc.shared.link
    assert svc.backends["old"].stick_share is None  # no stick table


def test_a_reload_follows_shared_state(svc: RelaybalService) -> None:
    first = svc.shared
    assert first is not None
    new_backend = {"stick": STICK, "server": [{"name": "n", "address": "10.0.0.9:25"}]}
    apply_config(
        svc,
        make_config(
            global__shared_state=SHARED, backend__mx__stick=STICK, backend__new=new_backend,
            frontend__other__backend="new",
        ),
    )  # fmt: skip
    assert svc.shared is first  # unchanged table: same link
    assert isinstance(svc.backends["new"].stick_share, SharedStick)
    slower = {**SHARED, "timeout": "300ms"}
    apply_config(svc, make_config(global__shared_state=slower, backend__mx__stick=STICK))
    assert svc.shared is not None and svc.shared is not first
    assert first.link._stopped
    share = svc.backends["mx"].stick_share
    assert isinstance(share, SharedStick) and share.link is svc.shared.link
    apply_config(svc, make_config(backend__mx__stick=STICK))
    assert svc.shared is None
    assert svc.backends["mx"].stick_share is None


def test_the_stats_page_and_metrics_show_the_link(svc: RelaybalService) -> None:
    assert svc.shared is not None
    snap = snapshot(svc.runtime)
    shared = snap["relaybal"]["shared_state"]
    assert shared["redis"] == "tcp:127.0.0.1:6390" and shared["state"] == "up"
    page = render_page(snap)
    assert "shared state up" in page and "unreachable" not in page
    metrics = generate_latest(svc.metrics).decode()
    assert 'relaybal_shared_state_up{redis="tcp:127.0.0.1:6390"} 1.0' in metrics
    svc.shared.link._outage("no reply within 100 ms")
    page = render_page(snapshot(svc.runtime))
    assert "shared state down" in page
    assert "Redis tcp:127.0.0.1:6390 is unreachable (no reply within 100 ms)" in page
    metrics = generate_latest(svc.metrics).decode()
    assert 'relaybal_shared_state_up{redis="tcp:127.0.0.1:6390"} 0.0' in metrics
    assert 'relaybal_shared_state_outages_total{redis="tcp:127.0.0.1:6390"} 1.0' in metrics
    assert 'relaybal_shared_state_state{redis="tcp:127.0.0.1:6390",state="down"} 1.0' in metrics


def test_without_shared_state_nothing_is_reported() -> None:
    service = RelaybalService(make_config(backend__mx__stick=STICK), Reactor(), handle_signals=False)
    assert service.shared is None and service.backends["mx"].stick_share is None
    assert snapshot(service.runtime)["relaybal"]["shared_state"] is None
    assert "relaybal_shared_state" not in generate_latest(service.metrics).decode()


def test_clear_table_clears_redis_too(svc: RelaybalService) -> None:
    assert svc.shared is not None
    fake: Any = svc.shared.link.client
    backend = svc.backends["mx"]
    server = backend.pick(b"192.0.2.7")
    assert server is not None
    backend.connected(server, b"192.0.2.7")
    assert fake.data["relaybal:stick:mx:192.0.2.7"][0] == server.name
    commands = RuntimeCommands(svc.runtime)
    assert commands.execute_line("clear table mx key 192.0.2.7", CliSession()) == "\n"
    assert fake.data == {}
