"""The building blocks of a policy plugin: :class:`PolicyBase` and :class:`PolicyPlugin`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.plugin import IPlugin
from zope.interface import implementer

from relaybal.interfaces import IRelayPolicy, IRelayPolicyPlugin, VerdictResult
from relaybal.policy.context import PolicyContext, PolicyEnvironment
from relaybal.policy.options import OptionReader, OptionsError
from relaybal.policy.verdicts import CONTINUE

__all__ = ["PolicyBase", "PolicyPlugin", "PolicySetupError", "overrides"]


class PolicySetupError(Exception):
    """A policy cannot be built (a file it needs is unreadable, ...); the daemon does not start."""


class PolicyError(Exception):
    """An expected failure of a policy (its server is down, it answered nonsense).

    Raise it (or fail the Deferred with it) to get the ``default_action``
    with a one-line log entry; any other exception is logged with its
    traceback, as a bug.
    """


@implementer(IRelayPolicy)
class PolicyBase:
    """An :class:`~relaybal.interfaces.IRelayPolicy` with no opinion anywhere: override the hooks you need.

    The chain asks only the hooks a subclass overrides, so an unused stage
    costs nothing.
    """

    def connect(self, context: PolicyContext) -> VerdictResult:
        return CONTINUE

    def helo(self, context: PolicyContext) -> VerdictResult:
        return CONTINUE

    def auth(self, context: PolicyContext) -> VerdictResult:
        return CONTINUE

    def mail(self, context: PolicyContext) -> VerdictResult:
        return CONTINUE

    def rcpt(self, context: PolicyContext) -> VerdictResult:
        return CONTINUE

    def data(self, context: PolicyContext) -> VerdictResult:
        return CONTINUE

    def end_of_data(self, context: PolicyContext) -> VerdictResult:
        return CONTINUE

    def close(self) -> Deferred[None] | None:
        return None


def overrides(policy: object, hook: str) -> bool:
    """Whether the chain should ask ``policy``'s ``hook``.

    A policy may say which hooks it uses with a ``hooks`` attribute (a set of
    names; for policies whose stages are configurable). Otherwise a
    :class:`PolicyBase` subclass is asked what it overrides, and anything
    else is asked everything.
    """
    declared = getattr(policy, "hooks", None)
    if declared is not None:
        return hook in declared
    if not isinstance(policy, PolicyBase):
        return True
    return getattr(type(policy), hook) is not getattr(PolicyBase, hook)


@implementer(IPlugin, IRelayPolicyPlugin)
@attrs.frozen
class PolicyPlugin:
    """A plugin object from two functions; put one at module level in ``relaybal/plugins/<name>.py``.

    ``read_options(reader)`` reads the options with an
    :class:`~relaybal.policy.options.OptionReader` and returns the settings
    (unknown keys are reported for it); ``factory(settings, environment)``
    builds the :class:`~relaybal.interfaces.IRelayPolicy`.
    """

    name: str
    read_options: Callable[[OptionReader], Any]
    factory: Callable[[Any, PolicyEnvironment], IRelayPolicy]
    description: str = ""

    def parse_options(self, options: Mapping[str, Any]) -> Any:
        reader = OptionReader(options)
        settings = self.read_options(reader)
        reader.finish()
        if reader.problems:
            raise OptionsError(reader.problems)
        return settings

    def make_policy(self, settings: Any, environment: PolicyEnvironment) -> IRelayPolicy:
        return self.factory(settings, environment)
