"""A module in a ``relaybal/plugins`` directory that fails to import: one warning line, never Twisted's
"Unhandled Error" traceback on stderr; an error (with a hint) only when the configuration needs a plugin
that is then not found."""

from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import free_port, wait_until
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, eventAsText, formatEvent, globalLogPublisher
from twisted.python import log as legacy_log
from zope.interface import provider

import relaybal.plugins
from relaybal.config import parse_config
from relaybal.policy.chain import PolicyChain
from relaybal.policy.discovery import (
    IMPORT_ERROR_KEY,
    Discovery,
    PluginImportError,
    PluginNotFound,
    build_policy_chain,
    discover,
    find_plugin,
)

BIN = Path(sys.executable).parent
NOT_THERE = "ModuleNotFoundError: No module named 'nosuchmodule_xyz'"
WARNING = f"warning: policy plugin module relaybal.plugins.broken_plugin could not be imported: {NOT_THERE}"

GOOD_PLUGIN = """
from relaybal.policy import PolicyBase, PolicyPlugin, PERMIT

class Everyone(PolicyBase):
    def rcpt(self, context):
        return PERMIT

everyone = PolicyPlugin(name="everyone", read_options=lambda r: None, factory=lambda s, e: Everyone())
"""


def config_text(directory: Path, plugin: str, port: int = 2525) -> str:
    return textwrap.dedent(
        f"""\
        [global]
        state_dir = "{directory / "state"}"

        [frontend.apps]
        mode = "relay"
        listen = ["tcp:{port}:interface=127.0.0.1"]
        backend = "gw"
        policies = ["internal"]

        [policy.internal]
        plugin = "{plugin}"
        allow = ["10.0.0.0/8"]

        [[backend.gw.server]]
        name = "gw1"
        address = "127.0.0.1:10025"
        """
    )


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``tmp_path/site`` on ``sys.path``, with its ``relaybal/plugins`` in the plugin package's path."""
    root = tmp_path / "site"
    (root / "relaybal" / "plugins").mkdir(parents=True)
    monkeypatch.syspath_prepend(str(root))
    directories = [*relaybal.plugins.__path__, str(root / "relaybal" / "plugins")]
    monkeypatch.setattr(relaybal.plugins, "__path__", directories)
    before = set(sys.modules)
    yield root
    for name in set(sys.modules) - before:
        module = sys.modules[name]
        if str(getattr(module, "__file__", None) or "").startswith(str(root)):
            del sys.modules[name]
            if name.startswith("relaybal.plugins."):
                delattr(relaybal.plugins, name.rpartition(".")[2])


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    """Every log event published while the test runs."""
    seen: list[dict[str, Any]] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def warnings_in(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event for event in events if IMPORT_ERROR_KEY in event]


def assert_nothing_unhandled(events: list[dict[str, Any]]) -> None:
    for event in events:
        assert event.get("log_level") != LogLevel.critical, event
        assert "Unhandled Error" not in eventAsText(event), event


def test_a_module_that_fails_to_import_is_one_warning_with_the_failure_and_nothing_unhandled(
    site: Path, events: list[dict[str, Any]], capfd: pytest.CaptureFixture[str]
) -> None:
    plugins = site / "relaybal" / "plugins"
    (plugins / "broken_plugin.py").write_text("import nosuchmodule_xyz\n")
    (plugins / "everyone_plugin.py").write_text(GOOD_PLUGIN)

    found = discover()

    assert "everyone" in found.plugins and "networks" in found.plugins
    where = f"{plugins / 'broken_plugin.py'}, line 1"
    error = PluginImportError("relaybal.plugins.broken_plugin", NOT_THERE, where)
    assert found.import_errors == (error,)
    assert found.failures == (f"{NOT_THERE} ({where})",)
    [warning] = warnings_in(events)
    assert warning[IMPORT_ERROR_KEY] == error
    assert warning["log_level"] == LogLevel.warn and warning["log_namespace"] == "relaybal.policy.discovery"
    assert formatEvent(warning) == WARNING.removeprefix("warning: ")
    assert warning["log_failure"].check(ModuleNotFoundError)  # the traceback goes to the log with it
    assert_nothing_unhandled(events)
    assert "Unhandled Error" not in capfd.readouterr().err  # before logging begins, critical goes to stderr

    again = discover()  # every policy table and every chain scans again: warned once per process
    assert again.import_errors == (error,)
    assert len(warnings_in(events)) == 1
    assert_nothing_unhandled(events)


def test_twisteds_dropin_cache_is_still_written_and_the_log_context_does_not_outlive_the_scan(
    site: Path, events: list[dict[str, Any]]
) -> None:
    plugins = site / "relaybal" / "plugins"
    (plugins / "broken_plugin.py").write_text("import nosuchmodule_xyz\n")
    (plugins / "everyone_plugin.py").write_text(GOOD_PLUGIN)
    discover()
    cache = pickle.loads((plugins / "dropin.cache").read_bytes())
    assert "everyone_plugin" in cache and "broken_plugin" not in cache  # as twisted.plugin always did
    assert [plugin.name for plugin in cache["everyone_plugin"].plugins] == ["everyone"]

    legacy_log.msg("after the scan")
    [after] = [event for event in events if event.get("message") == ("after the scan",)]
    assert (after["log_level"], after["log_namespace"], formatEvent(after)) == (
        LogLevel.info, "log_legacy", "after the scan"
    )  # fmt: skip


def test_a_syntax_error_names_the_module_and_the_line(site: Path, events: list[dict[str, Any]]) -> None:
    plugins = site / "relaybal" / "plugins"
    (plugins / "syntax_plugin.py").write_text("X = 1\ndef broken(:\n")
    [error] = discover().import_errors
    assert error.module == "relaybal.plugins.syntax_plugin"
    assert error.error.startswith("SyntaxError: ")
    assert error.location == f"{plugins / 'syntax_plugin.py'}, line 2"
    assert_nothing_unhandled(events)


def test_a_cached_plugin_whose_dependency_went_away_is_reported_the_same_way(
    site: Path, events: list[dict[str, Any]]
) -> None:
    plugins = site / "relaybal" / "plugins"
    (site / "helper_dep_xyz.py").write_text("VALUE = 1\n")
    module = plugins / "dependent_plugin.py"
    module.write_text("import helper_dep_xyz\n" + GOOD_PLUGIN)
    assert "everyone" in discover().plugins
    # The module is in dropin.cache and unchanged since: twisted.plugin imports it only to load the plugin.
    (site / "helper_dep_xyz.py").unlink()
    for name in ("helper_dep_xyz", "relaybal.plugins.dependent_plugin"):
        del sys.modules[name]
    delattr(relaybal.plugins, "dependent_plugin")
    importlib.invalidate_caches()
    cached = (plugins / "dropin.cache").stat().st_mtime
    os.utime(module, (cached - 60, cached - 60))

    found = discover()

    assert "everyone" not in found.plugins
    error = PluginImportError(
        "relaybal.plugins.dependent_plugin", "ModuleNotFoundError: No module named 'helper_dep_xyz'",
        f"{module}, line 1",
    )  # fmt: skip
    assert found.import_errors == (error,)
    [warning] = warnings_in(events)
    assert warning["log_failure"].frames[0][0] == "getPlugins"  # loading the cached plugin failed
    assert_nothing_unhandled(events)


def test_what_else_twisted_plugin_logs_during_a_scan_is_still_logged(
    site: Path, events: list[dict[str, Any]]
) -> None:
    plugins = site / "relaybal" / "plugins"
    (plugins / "everyone_plugin.py").write_text(GOOD_PLUGIN)
    (plugins / "dropin.cache").mkdir()  # cannot be read nor replaced
    assert "everyone" in discover().plugins
    ours = [event for event in events if event.get("log_namespace") == "relaybal.policy.discovery"]
    [muted] = [event for event in ours if event["log_level"] == LogLevel.debug]  # twisted.plugin's own
    assert formatEvent(muted) == ""  # a text observer writes nothing for it
    [note] = [event for event in ours if event["log_level"] == LogLevel.info]  # and what it said, again
    cache = plugins / "dropin.cache"
    assert formatEvent(note) == f"Unable to write to plugin cache {cache}: error number 21"
    assert_nothing_unhandled(events)


def test_an_error_a_module_logs_itself_while_importing_is_logged_as_it_was(
    site: Path, events: list[dict[str, Any]]
) -> None:
    own = "from twisted.python import log\ntry:\n    1 / 0\nexcept ZeroDivisionError:\n    log.err()\n"
    (site / "relaybal" / "plugins" / "noisy_plugin.py").write_text(own + GOOD_PLUGIN)
    found = discover()
    assert "everyone" in found.plugins and found.import_errors == () and found.failures == ()
    [again] = [event for event in events if event["log_level"] == LogLevel.critical]
    assert again["log_failure"].check(ZeroDivisionError) and formatEvent(again) == "Unhandled Error"
    assert warnings_in(events) == []


def test_a_plugin_not_found_names_the_modules_it_may_be_in() -> None:
    a = PluginImportError("relaybal.plugins.a", "ImportError: x", "/p/relaybal/plugins/a.py, line 3")
    b = PluginImportError("relaybal.plugins.b", "RuntimeError: y")
    found = Discovery({}, failures=(a.describe(), b.describe()), import_errors=(a, b))
    with pytest.raises(PluginNotFound) as info:
        find_plugin("foo", found)
    assert str(info.value) == (
        'no policy plugin named "foo" (installed: none); plugin modules that failed to import: '
        'ImportError: x (/p/relaybal/plugins/a.py, line 3); RuntimeError: y; "foo" may be defined in '
        "relaybal.plugins.a or relaybal.plugins.b"
    )
    nameless = PluginImportError(None, "TypeError: z")
    assert nameless.warning() == "a policy plugin in relaybal.plugins could not be loaded: TypeError: z"
    with pytest.raises(PluginNotFound, match=r'"foo" may be in a plugin that could not be loaded$'):
        find_plugin("foo", Discovery({}, failures=("TypeError: z",), import_errors=(nameless,)))


def test_the_daemon_builds_its_chain_and_warns_once(
    site: Path, events: list[dict[str, Any]], tmp_path: Path
) -> None:
    (site / "relaybal" / "plugins" / "broken_plugin.py").write_text("import nosuchmodule_xyz\n")
    config = parse_config(tomllib.loads(config_text(tmp_path, "networks")), "relay.toml")
    chain = build_policy_chain(config.frontends["apps"], config.policies, Clock())
    assert isinstance(chain, PolicyChain)
    assert [link.plugin for link in chain.links] == ["networks"]
    assert [formatEvent(event) for event in warnings_in(events)] == [WARNING.removeprefix("warning: ")]
    assert_nothing_unhandled(events)


def check_config(site: Path, config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(
        [str(BIN / "relaybal"), "check-config", str(config)],
        capture_output=True, text=True, env=env, cwd=site.parent, check=False,
    )  # fmt: skip


def test_check_config_warns_in_one_line_and_passes_when_the_module_is_not_needed(site: Path) -> None:
    (site / "relaybal" / "plugins" / "broken_plugin.py").write_text("import nosuchmodule_xyz\n")
    config = site.parent / "relay.toml"
    config.write_text(config_text(site.parent, "networks"))
    done = check_config(site, config)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{config}: valid (1 frontends, 1 backends, 1 policies)\n"
    assert done.stderr == WARNING + "\n"  # no "Unhandled Error", no traceback


def test_check_config_fails_with_a_hint_when_the_missing_plugin_may_be_in_the_broken_module(
    site: Path,
) -> None:
    broken = site / "relaybal" / "plugins" / "broken_plugin.py"
    broken.write_text("import nosuchmodule_xyz\n")
    config = site.parent / "relay.toml"
    config.write_text(config_text(site.parent, "foo"))
    done = check_config(site, config)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "Unhandled Error" not in done.stderr
    warning, error = done.stderr.splitlines()
    assert warning == WARNING
    assert error.startswith(f'{config}: policy.internal.plugin: no policy plugin named "foo" (installed: ')
    assert "networks" in error
    assert error.endswith(
        f"; plugin modules that failed to import: {NOT_THERE} ({broken}, line 1); "
        '"foo" may be defined in relaybal.plugins.broken_plugin'
    )


def test_the_daemon_logs_one_warning_with_its_traceback(site: Path, relaybal_factory: Any) -> None:
    (site / "relaybal" / "plugins" / "broken_plugin.py").write_text("import nosuchmodule_xyz\n")
    port = free_port()
    config = config_text(site.parent, "networks", port).replace(
        'policies = ["internal"]', 'policies = ["internal", "rate"]'
    ) + '[policy.rate]\nplugin = "ratelimit"\nrate = "10/s"\n'  # three scans: two tables and the chain
    daemon = relaybal_factory(config, wait_ports=[port], env={"PYTHONPATH": str(site)})
    wait_until(lambda: "relaybal ready" in daemon.log(), 10, "the daemon says it is ready")
    log = daemon.log()
    assert log.count(WARNING.removeprefix("warning: ")) == 1
    assert "[relaybal.policy.discovery#warn] policy plugin module relaybal.plugins.broken_plugin" in log
    assert log.count("Traceback (most recent call last)") == 1 and "Unhandled Error" not in log
