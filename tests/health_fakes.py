"""Backends on a fake clock, with their log lines captured, for the health, stick and runtime tests."""

from __future__ import annotations

import random
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent

from relaybal.balance import backend as backend_module
from relaybal.balance.backend import Backend
from relaybal.config import Config, parse_config
from relaybal.health.state import CheckResult

PASS = CheckResult("L7OK", info="mx ESMTP", code=250, duration=0.002)
BUSY = CheckResult("L7STS", info="4.3.2 busy", code=421, duration=0.005)
REFUSED = CheckResult("L4CON", info="Connection refused")


def config_of(
    servers: list[dict[str, Any]] | None = None,
    *,
    check: dict[str, Any] | None = None,
    backend: dict[str, Any] | None = None,
    frontend: dict[str, Any] | None = None,
    admin: dict[str, Any] | None = None,
) -> Config:
    """A one-frontend, one-backend ("mx") configuration."""
    be: dict[str, Any] = {
        "server": servers
        if servers is not None
        else [{"name": "a", "address": "10.0.0.1:25"}, {"name": "b", "address": "10.0.0.2:25"}],
        **(backend or {}),
    }
    if check is not None:
        be["check"] = check
    data: dict[str, Any] = {
        "global": {"hostname": "lb.test"},
        "frontend": {
            "smtp": {"mode": "splice", "listen": ["tcp:2525"], "backend": "mx", **(frontend or {})}
        },
        "backend": {"mx": be},
    }
    if admin is not None:
        data["admin"] = admin
    return parse_config(data)


def make_backend(
    servers: list[dict[str, Any]] | None = None,
    *,
    check: dict[str, Any] | None = None,
    clock: Clock | None = None,
    **backend: Any,
) -> Backend:
    """A backend "mx" on a fake clock (``backend.clock``)."""
    config = config_of(servers, check=check, backend=backend)
    return Backend(config.backends["mx"], clock if clock is not None else Clock(), random.Random(1))


class LogCapture:
    """The health log's events, as formatted lines."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def lines(self) -> list[str]:
        return [formatEvent(event) for event in self.events]

    def levels(self) -> list[str]:
        return [event["log_level"].name for event in self.events]

    def clear(self) -> None:
        self.events.clear()

    @classmethod
    def install(cls, monkeypatch: pytest.MonkeyPatch) -> LogCapture:
        """Capture the health log (relaybal.balance.backend's logger) for one test."""
        capture = cls()
        monkeypatch.setattr(backend_module, "log", Logger(observer=capture.events.append))
        return capture
