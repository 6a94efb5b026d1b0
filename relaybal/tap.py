"""twistd wiring: options and ``makeService``.

This module and :mod:`relaybal.cli` are the only places that read the
configuration file and build objects from it.
"""

from __future__ import annotations

from typing import Any, TextIO

from twisted.application.service import IService
from twisted.python import usage

from relaybal import logobservers
from relaybal.config import Config, load_or_report

DEFAULT_CONFIG = "/etc/relaybal/relaybal.toml"


def load_or_exit(path: str, stderr: TextIO | None = None) -> Config:
    """Load a configuration or print every problem and exit (1: invalid, 2: unreadable)."""
    config = load_or_report(path, stderr)
    if isinstance(config, int):
        raise SystemExit(config)
    return config


class Options(usage.Options):
    """``twistd relaybal`` options."""

    synopsis = "[-c FILE] [--log-format text|json]"
    optParameters = [
        ["config", "c", DEFAULT_CONFIG, "configuration file (TOML)"],
        ["log-format", None, "text", "log format: text or json"],
    ]

    def postOptions(self) -> None:
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError("--log-format must be text or json")
        from relaybal import reactor

        reactor.install()  # before anything imports the default one
        self["config_obj"] = load_or_exit(self["config"])
        parent: Any = getattr(self, "parent", None)
        # Under twistd (its options have "logger"), choose relaybal's observer unless the
        # operator chose one (--logger) or syslog. `twist` has its own --log-format.
        if parent is not None and not parent.get("logger", True) and not parent.get("syslog"):
            logobservers.settings.update(logfile=parent.get("logfile"), nodaemon=parent.get("nodaemon"))
            parent["logger"] = f"relaybal.logobservers.{self['log-format']}_log_observer"


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from relaybal.service import RelaybalService

    return RelaybalService(options["config_obj"], reactor)
