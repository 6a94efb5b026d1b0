"""Finding policy plugins by name (``twisted.plugin.getPlugins`` in ``relaybal.plugins``); building chains.

Installing a distribution that ships ``relaybal/plugins/<module>.py`` (no
``__init__.py``) makes its plugin objects visible here: ``relaybal.plugins``
extends its ``__path__`` with every ``relaybal/plugins`` directory on
``sys.path`` (``twisted.plugin.pluginPackagePaths``).

A configured plugin that is not found is a configuration error naming the
installed ones, and any plugin module that failed to import is named too, so
a broken installation is never mistaken for a missing one and nothing is
silently skipped.

A plugin module that fails to import is reported once per process as a
warning (``twisted.logger``, namespace ``relaybal.policy.discovery``, with the
failure attached: the traceback goes to the daemon log with it). Twisted's own
report of it (a legacy ``log.err``: "Unhandled Error" and a traceback, which
goes to stderr before logging has begun) is kept out of every log: only for
the duration of the ``getPlugins`` call, a legacy log context
(``twisted.python.log.callWithContext``) makes the events ``twisted.plugin``
logs empty debug events of this namespace, and a log observer added for that
call collects them. ``twisted.plugin`` itself (its ``dropin.cache`` included)
runs unchanged.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
from twisted.logger import ILogObserver, Logger, LogLevel, globalLogPublisher
from twisted.plugin import getPlugins
from twisted.python import log as legacy_log
from twisted.python.failure import Failure
from zope.interface import implementer

from relaybal.config import FrontendConfig, PolicyConfig
from relaybal.interfaces import IRelayPolicy, IRelayPolicyPlugin
from relaybal.policy.chain import ChainLink, PolicyChain
from relaybal.policy.context import PolicyEnvironment
from relaybal.policy.plugin import PolicySetupError
from relaybal.policy.verdicts import DEFAULT_ACTION
from relaybal.relay.interfaces import ISessionPolicy
from relaybal.relay.policy import LoopbackRelayPolicy

__all__ = [
    "IMPORT_ERROR_KEY",
    "Discovery",
    "PluginImportError",
    "PluginNotFound",
    "build_policy_chain",
    "discover",
    "find_plugin",
    "parse_policy_options",
]

_log = Logger()

#: The key a warning about a plugin module that failed to import carries its :class:`PluginImportError` in.
IMPORT_ERROR_KEY = "plugin_import_error"


class PluginNotFound(Exception):
    """No (single) installed plugin has the configured name; the message says what is installed."""


@attrs.frozen
class PluginImportError:
    """A module of ``relaybal.plugins`` that failed to import (or a plugin in it that failed to load)."""

    #: Its dotted name (``relaybal.plugins.broken``); ``None`` when the failure names no module there.
    module: str | None
    #: The exception: ``ModuleNotFoundError: No module named 'x'``.
    error: str
    #: Where in the plugin directory it was raised: ``/path/relaybal/plugins/broken.py, line 1``, or ``""``.
    location: str = ""

    def describe(self) -> str:
        """As in :attr:`Discovery.failures`: the error, then where it was raised."""
        return f"{self.error} ({self.location})" if self.location else self.error

    def warning(self) -> str:
        """The one-line warning (``check-config`` prints it after ``warning: ``)."""
        if self.module is None:
            return f"a policy plugin in relaybal.plugins could not be loaded: {self.error}"
        return f"policy plugin module {self.module} could not be imported: {self.error}"


@attrs.frozen
class Discovery:
    """What one scan of ``relaybal.plugins`` found."""

    plugins: Mapping[str, IRelayPolicyPlugin]
    duplicates: frozenset[str] = frozenset()
    #: Every problem, one line each: the modules that failed to import and plugins without a name.
    failures: tuple[str, ...] = ()
    #: The modules that failed to import (also in :attr:`failures`).
    import_errors: tuple[PluginImportError, ...] = ()


def _module_in(filename: str, package: str, directories: Sequence[str]) -> str | None:
    """The dotted name of the module of ``package`` that ``filename`` is, if it is one."""
    path = os.path.realpath(filename)
    parent, base = os.path.split(path)
    stem, extension = os.path.splitext(base)
    if extension not in (".py", ".pyc") or not stem.isidentifier():
        return None
    if stem != "__init__" and parent in directories:
        return f"{package}.{stem}"
    if stem == "__init__" and os.path.dirname(parent) in directories:  # a package in the plugin directory
        return f"{package}.{os.path.basename(parent)}"
    return None


def _import_error(failure: Failure, package: str, directories: Sequence[str]) -> PluginImportError:
    """Which module of the plugin directories the failure came from (its outermost frame there), and where."""
    module = location = None
    for frame in failure.frames:  # outermost first: the plugin module, then whatever it imported
        name = _module_in(str(frame[1]), package, directories)
        if name is not None:
            module = module or name
            location = f"{frame[1]}, line {frame[2]}"
    value = failure.value
    if module is None and isinstance(value, SyntaxError) and value.filename:  # no frame runs in the file
        module = _module_in(value.filename, package, directories)
        if module is not None:
            location = f"{value.filename}, line {value.lineno}"
    error = failure.type.__name__ if failure.type is not None else "error"
    return PluginImportError(module, f"{error}: {failure.getErrorMessage()}", location or "")


_scans = itertools.count(1)
_SCAN_KEY = "relaybal_plugin_scan"


@implementer(ILogObserver)
class _ScanObserver:
    """Collects what ``twisted.plugin`` logs during one scan (the events that carry this scan's mark)."""

    def __init__(self) -> None:
        self.mark = next(_scans)
        self.failures: list[Failure] = []  # a module or a cached plugin that failed to load
        self.others: list[Mapping[str, Any]] = []  # anything else: logged again after the scan

    def context(self) -> dict[str, Any]:
        # Legacy events take their keys from the context (twisted.python.log.msg), and a new-style
        # observer keeps a given log_level, log_namespace and log_format (publishToNewObserver):
        # no observer gets a critical "Unhandled Error" with a traceback to print.
        return {
            _SCAN_KEY: self.mark, "log_namespace": __name__, "log_level": LogLevel.debug, "log_format": "",
        }

    def __call__(self, event: Mapping[str, Any]) -> None:
        if event.get(_SCAN_KEY) != self.mark:
            return
        failure = event.get("failure")
        if isinstance(failure, Failure) and event.get("why") is None and _caught_by_twisted_plugin(failure):
            self.failures.append(failure)
        else:
            self.others.append(event)

    def log_others(self) -> None:
        """Whatever else was logged the legacy way during the scan, logged again at its own level.

        E.g. ``twisted.plugin``'s "Unable to write to plugin cache PATH: error number 13".
        """
        for event in self.others:
            failure = event.get("failure")
            if event.get("isError") and isinstance(failure, Failure):
                _log.failure("{why}", failure, why=event.get("why") or "Unhandled Error")
            else:
                _log.info("{text}", text=legacy_log.textFromEventDict(dict(event)) or "")


def _caught_by_twisted_plugin(failure: Failure) -> bool:
    """Whether ``twisted.plugin`` caught it (loading a module, or a plugin from its ``dropin.cache``)."""
    return bool(failure.frames) and os.path.realpath(str(failure.frames[0][1])) == _TWISTED_PLUGIN_FILE


_TWISTED_PLUGIN_FILE = os.path.realpath(getPlugins.__code__.co_filename)


#: The import errors warned about so far: each one is logged once per process.
_warned: set[PluginImportError] = set()


def _warn_once(error: PluginImportError, failure: Failure) -> None:
    if error in _warned:
        return
    _warned.add(error)
    _log.failure(
        "policy plugin module {module} could not be imported: {error}" if error.module is not None
        else "a policy plugin in relaybal.plugins could not be loaded: {error}",
        failure, LogLevel.warn, module=error.module, error=error.error, **{IMPORT_ERROR_KEY: error},
    )  # fmt: skip


def _scan(package: Any) -> tuple[list[IRelayPolicyPlugin], list[tuple[PluginImportError, Failure]]]:
    """``getPlugins`` with what ``twisted.plugin`` logs about modules that fail to import collected."""
    observer = _ScanObserver()
    globalLogPublisher.addObserver(observer)
    try:
        found: list[IRelayPolicyPlugin] = legacy_log.callWithContext(
            observer.context(), lambda: list(getPlugins(IRelayPolicyPlugin, package))
        )
    finally:
        globalLogPublisher.removeObserver(observer)
    observer.log_others()
    directories = [os.path.realpath(path) for path in package.__path__]
    errors: dict[PluginImportError, Failure] = {}
    for failure in observer.failures:  # a module with several cached plugins fails once for each
        errors.setdefault(_import_error(failure, package.__name__, directories), failure)
    return found, list(errors.items())


def discover() -> Discovery:
    """Scan ``relaybal.plugins`` for :class:`~relaybal.interfaces.IRelayPolicyPlugin` providers.

    A module that fails to import is in :attr:`Discovery.import_errors` and
    is logged (once per process) as a warning with the failure attached.
    """
    import relaybal.plugins as package

    found, errors = _scan(package)
    failures = [error.describe() for error, _ in errors]
    plugins: dict[str, IRelayPolicyPlugin] = {}
    duplicates: set[str] = set()
    for plugin in found:
        name = getattr(plugin, "name", None)
        if not isinstance(name, str) or not name:
            failures.append(f"a plugin without a name: {plugin!r}")
            continue
        if name in plugins and plugins[name] is not plugin:
            duplicates.add(name)
        plugins[name] = plugin
    for error, failure in errors:
        _warn_once(error, failure)
    return Discovery(plugins, frozenset(duplicates), tuple(failures), tuple(error for error, _ in errors))


def _may_be_in(name: str, errors: Iterable[PluginImportError]) -> str:
    """The hint that a plugin not found may be in a module that failed to import."""
    errors = list(errors)
    modules = sorted({error.module for error in errors if error.module is not None})
    if modules:
        where = modules[0] if len(modules) == 1 else ", ".join(modules[:-1]) + " or " + modules[-1]
        return f'; "{name}" may be defined in {where}'
    return f'; "{name}" may be in a plugin that could not be loaded' if errors else ""


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
    raise PluginNotFound(message + _may_be_in(name, found.import_errors))


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
