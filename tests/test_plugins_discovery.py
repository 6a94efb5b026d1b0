"""Plugin discovery in ``relaybal.plugins``: built-ins, third-party modules, broken ones, and the example
distribution as a wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from twisted.plugin import IPlugin

import relaybal.plugins
from relaybal.interfaces import IRelayPolicy, IRelayPolicyPlugin
from relaybal.policy.discovery import discover
from relaybal.testing import make_environment

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "relaybal-policy-example"
BUILTINS = [
    "auth", "dnsbl", "max-recipients", "networks", "policyd", "ratelimit",
    "recipient-domains", "sender-domains",
]  # fmt: skip
MINIMAL_OPTIONS = {
    "auth": {},
    "dnsbl": {"zones": ["bl.example.org"]},
    "max-recipients": {"max": 10},
    "networks": {"allow": ["10.0.0.0/8"]},
    "policyd": {"server": "tcp:host=127.0.0.1:port=10023"},
    "ratelimit": {"rate": "10/s"},
    "recipient-domains": {"domains": ["example.com"]},
    "sender-domains": {"domains": ["example.com"]},
}


def test_the_builtins_are_plugins_with_their_contract_names() -> None:
    found = discover()
    assert set(BUILTINS) <= set(found.plugins)
    assert found.failures == () and found.duplicates == frozenset()
    for name in BUILTINS:
        plugin = found.plugins[name]
        assert IPlugin.providedBy(plugin) and IRelayPolicyPlugin.providedBy(plugin)
        assert plugin.description
        settings = plugin.parse_options(MINIMAL_OPTIONS[name])
        policy = plugin.make_policy(settings, make_environment(resolver=object()))
        assert IRelayPolicy.providedBy(policy)


def test_the_plugin_package_is_open_to_other_distributions() -> None:
    assert Path(relaybal.plugins.__path__[0]) == ROOT / "relaybal" / "plugins"
    assert not (ROOT / "relaybal" / "plugins" / "__init__.pyc").exists()


def run_discovery(pythonpath: Path, code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, check=False
    )


THIRD_PARTY = """
from relaybal.policy import PolicyBase, PolicyPlugin, PERMIT

class Everyone(PolicyBase):
    def rcpt(self, context):
        return PERMIT

third = PolicyPlugin(name="third-party", read_options=lambda r: None, factory=lambda s, e: Everyone())
"""


def test_a_module_installed_elsewhere_on_sys_path_is_found(tmp_path: Path) -> None:
    plugins = tmp_path / "relaybal" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "third_party_policy.py").write_text(THIRD_PARTY)
    (plugins / "broken_policy.py").write_text("raise RuntimeError('half installed')\n")
    (plugins / "clash_policy.py").write_text(THIRD_PARTY.replace("third =", "clash ="))
    done = run_discovery(
        tmp_path,
        """
        from relaybal.policy.discovery import discover, find_plugin, PluginNotFound
        found = discover()
        print(sorted(found.plugins))
        print(sorted(found.duplicates))
        for failure in found.failures:
            print("FAILURE", failure)
        try:
            find_plugin("missing", found)
        except PluginNotFound as e:
            print("MISSING", e)
        """,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert "'third-party'" in out[0] and "'networks'" in out[0]
    assert out[1] == "['third-party']"  # two plugin objects claim the name: never guess which
    [failure] = [line for line in out if line.startswith("FAILURE")]
    assert "RuntimeError: half installed" in failure and "broken_policy.py, line 1" in failure
    [missing] = [line for line in out if line.startswith("MISSING")]
    assert "plugin modules that failed to import: RuntimeError: half installed" in missing


def test_the_example_distribution_builds_a_wheel_that_installs_a_dropin(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(EXAMPLE),
        ],
        check=True,
    )
    [wheel] = dist.glob("relaybal_policy_example-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "relaybal/plugins/relaybal_policy_example.py" in names
    assert "relaybal_policy_example/policy.py" in names
    # relaybal and relaybal.plugins belong to relaybal: the dropin must not shadow them.
    assert "relaybal/__init__.py" not in names and "relaybal/plugins/__init__.py" not in names
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
    )
    done = run_discovery(
        target,
        """
        import relaybal, relaybal.plugins, relaybal_policy_example
        from relaybal.policy.discovery import discover
        found = discover()
        print(relaybal_policy_example.__file__)
        print(relaybal.__file__)
        print("sender-allowlist" in found.plugins, sorted(found.duplicates), found.failures)
        """,
    )
    assert done.returncode == 0, done.stderr
    example_file, relaybal_file, result = done.stdout.splitlines()
    assert example_file.startswith(str(target))  # the wheel's copy, not the editable one
    assert Path(relaybal_file) == ROOT / "relaybal" / "__init__.py"
    assert result == "True [] ()"


def test_the_example_distributions_own_tests_pass() -> None:
    pytest.importorskip("relaybal_policy_example", reason="pip install examples/relaybal-policy-example")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        capture_output=True,
        text=True,
        cwd=EXAMPLE,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout.splitlines()[-1]
