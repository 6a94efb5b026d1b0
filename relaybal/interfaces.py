"""relaybal's public interfaces for plugin authors.

A relay policy plugin is two objects:

- an :class:`IRelayPolicyPlugin` (with ``twisted.plugin.IPlugin``) at module
  level in a module of the ``relaybal.plugins`` package, found by
  ``twisted.plugin.getPlugins``: it has the ``name`` operators write in
  ``plugin = "..."``, checks the options of a ``[policy.NAME]`` table and
  builds the policy;
- an :class:`IRelayPolicy`: asked at each stage of every session of the
  frontends that list it, answering with a
  :class:`~relaybal.policy.verdicts.Verdict` (or a Deferred of one).

:class:`relaybal.policy.PolicyPlugin` and :class:`relaybal.policy.PolicyBase`
implement the boring parts; ``docs/plugins.rst`` is the tutorial and the
reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from relaybal.policy.context import PolicyContext, PolicyEnvironment
    from relaybal.policy.verdicts import Verdict

__all__ = ["IRelayPolicy", "IRelayPolicyPlugin", "VerdictResult"]

#: What a policy hook returns.
VerdictResult: TypeAlias = "Verdict | Deferred[Verdict]"


class IRelayPolicy(Interface):
    """One relay policy: a hook per SMTP stage, each answering with a verdict.

    Hooks get an immutable :class:`~relaybal.policy.context.PolicyContext`
    and return a :class:`~relaybal.policy.verdicts.Verdict` or a Deferred
    firing with one. Anything else (None included), an exception, a failed
    Deferred, or no answer within the policy's ``timeout`` yields the
    policy's ``default_action`` instead (and is logged); it never permits.

    A hook is asked only when no policy before it in the frontend's
    ``policies`` list gave a decisive verdict at the same stage.
    """

    def connect(context: PolicyContext) -> VerdictResult:
        """A client connected (its real address is known); a refusal replaces the greeting."""

    def helo(context: PolicyContext) -> VerdictResult:
        """HELO or EHLO; ``context.helo_name`` is the name being given."""

    def auth(context: PolicyContext) -> VerdictResult:
        """AUTH succeeded (``context.sasl_username``); a refusal is sent instead of ``235``."""

    def mail(context: PolicyContext) -> VerdictResult:
        """MAIL FROM (``context.sender``, ``context.mail_params``)."""

    def rcpt(context: PolicyContext) -> VerdictResult:
        """RCPT TO, once per recipient (``context.recipient``; ``context.recipients``: accepted so far)."""

    def data(context: PolicyContext) -> VerdictResult:
        """DATA (or the first BDAT), before the body."""

    def end_of_data(context: PolicyContext) -> VerdictResult:
        """The whole body arrived: ``context.headers``, ``context.size``, ``context.queue_id``."""

    def close() -> Deferred[None] | None:
        """The frontend stops: release connections and timers (optional work; may return a Deferred)."""


class IRelayPolicyPlugin(Interface):
    """A kind of relay policy, found by name in the ``relaybal.plugins`` package.

    Providers must also provide ``twisted.plugin.IPlugin`` and live at the
    module level of a module in ``relaybal/plugins/`` (a distribution installs
    its own ``relaybal/plugins/<name>.py``; no ``__init__.py``).
    """

    name = Attribute("str: the name used in ``plugin = ...``; built-ins are reserved")
    description = Attribute("str: one line saying what the policy does")

    def parse_options(options: Mapping[str, Any]) -> Any:
        """Check the table's own keys and return the plugin's settings.

        ``options`` is the ``[policy.NAME]`` table without ``plugin``,
        ``timeout`` and ``default_action``. Raise
        :class:`relaybal.policy.options.OptionsError` listing every problem
        (keys relative to the table); never touch the network or the disk
        beyond what checking needs: ``check-config`` calls this.
        """

    def make_policy(settings: Any, environment: PolicyEnvironment) -> IRelayPolicy:
        """Build the policy for one frontend from ``parse_options``'s settings.

        Raise :class:`relaybal.policy.plugin.PolicySetupError` (with a message
        an operator understands) when it cannot be built: the daemon does
        not start.
        """
