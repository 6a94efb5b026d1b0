"""``[policy.NAME]`` in the configuration: plugin options checked by the plugin, errors with key paths,
chains built by the daemon and rebuilt by a reload."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet.testing import MemoryReactorClock

from relaybal.config import ConfigError, load_or_report, parse_config
from relaybal.policy import PolicySetupError, defer, reject
from relaybal.policy import discovery as discovery_module
from relaybal.policy.chain import PolicyChain
from relaybal.policy.discovery import Discovery, PluginNotFound, find_plugin
from relaybal.policy.plugin import PolicyBase, PolicyPlugin
from relaybal.relay.policy import LoopbackRelayPolicy
from relaybal.reload import apply_config
from relaybal.service import RelaybalService

BAD = """
[frontend.apps]
mode = "relay"
listen = ["tcp:2599"]
backend = "gw"
policies = ["rate", "gone", "nets", "pd", "bl"]

[policy.rate]
plugin = "ratelimit"
rate = "100 per minute"
burst = 0

[policy.gone]
plugin = "nope"

[policy.nets]
plugin = "networks"
allow = ["10.0.0.0/8", "300.1.1.1"]
extra = 1

[policy.pd]
plugin = "policyd"
server = "tcp:host=127.0.0.1:port=10023"
default_action = "permit"
timeout = "0s"
stages = ["rcpt", "auth"]

[policy.bl]
plugin = "dnsbl"
zones = ["zen.example.org", { zone = "x", timeout = "-1" }, 5]

[[backend.gw.server]]
name = "gw1"
address = "127.0.0.1:10025"
"""


def test_check_config_reports_every_plugin_problem_with_its_key_path(tmp_path: Path) -> None:
    path = tmp_path / "relaybal.toml"
    path.write_text(BAD)
    err = io.StringIO()
    assert load_or_report(str(path), err) == 1
    lines = [line.removeprefix(f"{path}: ") for line in err.getvalue().splitlines()]
    assert lines[:2] == [
        'policy.rate.rate: "100 per minute" is not a rate (expected N/s|m|h)',
        "policy.rate.burst: 0 is out of range (expected an integer >= 1)",
    ]
    assert lines[2].startswith('policy.gone.plugin: no policy plugin named "nope" (installed: auth, dnsbl, ')
    assert lines[3:] == [
        'policy.nets.allow[1]: "300.1.1.1" is not a network (expected e.g. "10.0.0.0/8" or "::1")',
        "policy.nets.extra: unknown key (known: allow, deny)",
        "policy.pd.timeout: must be greater than zero",
        'policy.pd.default_action: "permit" is not allowed: a failing policy never permits '
        '(expected "defer", "reject", "disconnect", "continue" or a reply like "450 4.7.1 text")',
        'policy.pd.stages[1]: "auth" is not allowed '
        "(expected one of: connect, helo, mail, rcpt, data, end_of_data)",
        'policy.bl.zones[1].zone: "x" is not a DNS zone (expected e.g. "zen.spamhaus.org")',
        'policy.bl.zones[1].timeout: "-1" is not a duration (expected e.g. "5s", "250ms", "1m")',
        "policy.bl.zones[2]: 5 is not a table",
    ]


def relay_doc(policies: dict[str, dict[str, Any]], **frontend: Any) -> dict[str, Any]:
    return {
        "global": {"hostname": "relay.test"},
        "frontend": {
            "apps": {
                "mode": "relay", "listen": ["tcp:2599"], "backend": "gw", "delivery": "cut-through",
                "policies": list(policies), **frontend,
            }
        },
        "backend": {"gw": {"server": [{"name": "gw1", "address": "127.0.0.1:10025"}]}},
        "policy": policies,
    }  # fmt: skip


def test_policy_tables_keep_their_settings() -> None:
    config = parse_config(
        relay_doc(
            {
                "rate": {
                    "plugin": "ratelimit",
                    "rate": "3/2s",
                    "timeout": "2s",
                    "default_action": "450 4.7.1 Busy",
                },
                "nets": {"plugin": "networks", "allow": ["10.0.0.0/8"]},
            }
        )
    )
    rate = config.policies["rate"]
    assert (rate.plugin, rate.timeout, rate.default_action) == ("ratelimit", 2.0, defer("Busy", "4.7.1", 450))
    assert rate.options == {"rate": "3/2s"}
    assert rate.settings.rate.count == 3 and rate.settings.burst == 3
    nets = config.policies["nets"]
    assert (nets.timeout, nets.default_action) == (10.0, None)
    assert config.frontends["apps"].policies == ("rate", "nets")


def test_find_plugin_names_what_is_installed_and_what_failed() -> None:
    found = Discovery({}, failures=("ImportError: boom (relaybal/plugins/x.py, line 1)",))
    with pytest.raises(PluginNotFound) as info:
        find_plugin("mine", found)
    assert str(info.value) == (
        'no policy plugin named "mine" (installed: none); plugin modules that failed to import: '
        "ImportError: boom (relaybal/plugins/x.py, line 1)"
    )
    with pytest.raises(PluginNotFound, match="more than one installed plugin is called"):
        find_plugin("twice", Discovery({}, duplicates=frozenset({"twice"})))


# ----------------------------------------------------------------------------- the daemon


@attrs.define
class FakePort:
    port: int
    factory: Any
    stopped: bool = False

    def stopListening(self) -> None:
        self.stopped = True

    def getHost(self) -> Any:
        return None


class Reactor(MemoryReactorClock):
    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> FakePort:
        factory.doStart()
        return FakePort(port, factory)


def service_of(doc: dict[str, Any]) -> RelaybalService:
    return RelaybalService(
        parse_config(doc, "/etc/relaybal/test.toml"), Reactor(), random.Random(1), handle_signals=False
    )


def test_the_daemon_builds_each_frontends_chain_in_order() -> None:
    service = service_of(
        relay_doc(
            {
                "nets": {
                    "plugin": "networks",
                    "allow": ["10.0.0.0/8"],
                    "timeout": "3s",
                    "default_action": "reject",
                },
                "rate": {"plugin": "ratelimit", "rate": "10/s"},
            }
        )
    )
    chain = service.frontends["apps"].policy
    assert isinstance(chain, PolicyChain)
    assert [(link.name, link.plugin, link.timeout) for link in chain.links] == [
        ("nets", "networks", 3.0),
        ("rate", "ratelimit", 10.0),
    ]
    assert chain.links[0].default_action == reject("Error: policy refused", "5.7.1")
    plain = service_of(relay_doc({}))
    assert isinstance(plain.frontends["apps"].policy, LoopbackRelayPolicy)


class Unbuildable(PolicyBase):
    pass


def failing_factory(settings: Any, environment: Any) -> Unbuildable:
    raise PolicySetupError("cannot read /etc/relaybal/list: No such file or directory")


def test_a_policy_that_cannot_be_built_stops_the_daemon(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = PolicyPlugin(name="fragile", read_options=lambda r: None, factory=failing_factory)
    real = discovery_module.discover()
    monkeypatch.setattr(
        discovery_module, "discover", lambda: Discovery({**real.plugins, "fragile": plugin}, real.duplicates)
    )
    with pytest.raises(SystemExit) as info:
        service_of(relay_doc({"list": {"plugin": "fragile"}}))
    assert info.value.code == 1
    assert capsys.readouterr().err == (
        "relaybal: policy.list: cannot read /etc/relaybal/list: No such file or directory\n"
    )


def test_a_reload_rebuilds_a_frontend_whose_policies_changed_only() -> None:
    doc = relay_doc({"rate": {"plugin": "ratelimit", "rate": "10/s"}})
    service = service_of(doc)
    service.privilegedStartService()
    service.startService()
    try:
        before = service.frontends["apps"]
        apply_config(service, parse_config(doc, "/etc/relaybal/test.toml"))
        assert service.frontends["apps"] is before  # same policies: kept, with its buckets
        changed = relay_doc({"rate": {"plugin": "ratelimit", "rate": "20/s"}})
        apply_config(service, parse_config(changed, "/etc/relaybal/test.toml"))
        after = service.frontends["apps"]
        assert after is not before
        assert after.policy.links[0].policy.settings.rate.count == 20  # type: ignore[attr-defined]
    finally:
        service.stopService()


def test_parse_errors_do_not_hide_other_errors() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(relay_doc({"x": {"plugin": "networks"}}, max_recipients=0))
    assert [p.path for p in info.value.problems] == ["policy.x.allow", "frontend.apps.max_recipients"]
