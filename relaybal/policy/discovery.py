"""Finding policy plugins by name (``twisted.plugin.getPlugins`` in ``relaybal.plugins``); building chains.

Installing a distribution that ships ``relaybal/plugins/<module>.py`` (no
``__init__.py``) makes its plugin objects visible here: ``relaybal.plugins``
extends its ``__path__`` with every ``relaybal/plugins`` directory on
``sys.path`` (``twisted.plugin.pluginPackagePaths``).

A configured plugin that is not found is a configuration error naming the
installed ones, and any plugin module that failed to import is named too, so
a broken installation is never mistaken for a missing one and nothing is
silently skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.plugin import getPlugins
from twisted.python.failure import Failure
from zope.interface import provider

from relaybal.config import FrontendConfig, PolicyConfig
from relaybal.interfaces import IRelayPolicy, IRelayPolicyPlugin
from relaybal.policy.chain import ChainLink, PolicyChain
from relaybal.policy.context import PolicyEnvironment
from relaybal.policy.plugin import PolicySetupError
from relaybal.policy.verdicts import DEFAULT_ACTION
from relaybal.relay.interfaces import ISessionPolicy
from relaybal.relay.policy import LoopbackRelayPolicy

__all__ = [
    "Discovery",
    "PluginNotFound",
    "build_policy_chain",
    "discover",
    "find_plugin",
    "parse_policy_options",
]


class PluginNotFound(Exception):
    """No (single) installed plugin has the configured name; the message says what is installed."""


@attrs.frozen
class Discovery:
    """What one scan of ``relaybal.plugins`` found."""

    plugins: Mapping[str, IRelayPolicyPlugin]
    duplicates: frozenset[str] = frozenset()
    failures: tuple[str, ...] = ()


def _describe_failure(failure: Failure) -> str:
    where = ""
    for frame in reversed(failure.frames):
        filename = str(frame[1])
        if "plugins" in filename.replace("\\", "/").split("/"):
            where = f" ({filename}, line {frame[2]})"
            break
    error = failure.type.__name__ if failure.type is not None else "error"
    return f"{error}: {failure.getErrorMessage()}{where}"


def discover() -> Discovery:
    """Scan ``relaybal.plugins`` for :class:`~relaybal.interfaces.IRelayPolicyPlugin` providers."""
    import relaybal.plugins as package

    failures: list[str] = []

    @provider(ILogObserver)
    def observe(event: Mapping[str, Any]) -> None:
        failure = event.get("log_failure", event.get("failure"))  # twisted.plugin logs the legacy way
        if isinstance(failure, Failure):
            failures.append(_describe_failure(failure))

    plugins: dict[str, IRelayPolicyPlugin] = {}
    duplicates: set[str] = set()
    globalLogPublisher.addObserver(observe)
    try:
        for plugin in getPlugins(IRelayPolicyPlugin, package):
            name = getattr(plugin, "name", None)
            if not isinstance(name, str) or not name:
                failures.append(f"a plugin without a name: {plugin!r}")
                continue
            if name in plugins and plugins[name] is not plugin:
                duplicates.add(name)
            plugins[name] = plugin
    finally:
        globalLogPublisher.removeObserver(observe)
    return Discovery(plugins, frozenset(duplicates), tuple(failures))


def find_plugin(name: str, found: Discovery | None = None) -> IRelayPolicyPlugin:
    """The plugin called ``name``; :class:`PluginNotFound` if none or several are."""
    found = found if found is not None else discover()
    if name in found.duplicates:
        raise PluginNotFound(f'more than one installed plugin is called "{name}": uninstall all but one')
    plugin = found.plugins.get(name)
    if plugin is not None:
        return plugin
    installed = ", ".join(sorted(found.plugins)) or "none"
    message = f'no policy plugin named "{name}" (installed: {installed})'
    if found.failures:
        message += "; plugin modules that failed to import: " + "; ".join(found.failures)
    raise PluginNotFound(message)


def parse_policy_options(plugin_name: str, options: Mapping[str, Any], found: Discovery | None = None) -> Any:
    """The settings of a ``[policy.NAME]`` table's own keys.

    Raises :class:`PluginNotFound` or :class:`~relaybal.policy.options.OptionsError`.
    """
    return find_plugin(plugin_name, found).parse_options(options)


def build_policy_chain(
    frontend: FrontendConfig,
    policies: Mapping[str, PolicyConfig],
    reactor: Any,
    *,
    state_dir: str = ".",
    hostname: str = "localhost",
    resolver: Any = None,
    bucket_store: Any = None,
) -> ISessionPolicy:
    """The session policy of a relay frontend: its chain, or loopback-only without ``policies``.

    Raises :class:`~relaybal.policy.plugin.PolicySetupError` naming the
    ``policy.NAME`` that cannot be built.
    """
    if not frontend.policies:
        return LoopbackRelayPolicy()
    found: Discovery | None = None
    links: list[ChainLink] = []
    for name in frontend.policies:
        pc = policies.get(name)
        if pc is None:
            raise PolicySetupError(f"frontend.{frontend.name}.policies: no policy named {name!r}")
        try:
            if found is None:
                found = discover()
            plugin = find_plugin(pc.plugin, found)
            settings = pc.settings if pc.settings is not None else plugin.parse_options(pc.options)
            environment = PolicyEnvironment(
                reactor=reactor, policy=name, frontend=frontend.name, state_dir=state_dir,
                hostname=hostname, resolver=resolver, bucket_store=bucket_store,
            )  # fmt: skip
            policy = plugin.make_policy(settings, environment)
        except PolicySetupError as e:
            raise PolicySetupError(f"policy.{name}: {e}") from None
        except Exception as e:  # PluginNotFound, OptionsError, or a plugin's own bug
            raise PolicySetupError(f"policy.{name}: cannot build the {pc.plugin!r} policy: {e}") from None
        if not IRelayPolicy.providedBy(policy):
            raise PolicySetupError(f"policy.{name}: plugin {pc.plugin!r} built {policy!r}, not a policy")
        default_action = pc.default_action if pc.default_action is not None else DEFAULT_ACTION
        links.append(ChainLink(name, policy, pc.plugin, pc.timeout, default_action))
    return PolicyChain(links, reactor, frontend=frontend.name)
