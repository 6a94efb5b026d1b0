"""Relay policies: verdicts, the context they decide on, the chain, and what plugin authors build with.

The public face for plugin authors::

    from relaybal.policy import (
        PolicyBase, PolicyPlugin, PolicyContext, PolicyEnvironment, Stage,
        CONTINUE, PERMIT, reject, defer, disconnect, defer_if_permit, defer_if_reject,
        OptionReader, OptionsError, PolicySetupError,
    )

``docs/plugins.rst`` is the tutorial and the reference; :mod:`relaybal.testing`
has the helpers to test a policy without sockets.
"""

from relaybal.policy.address import MailAddress, mail_address, normalise_domain
from relaybal.policy.context import PolicyContext, PolicyEnvironment, Stage
from relaybal.policy.options import OptionProblem, OptionReader, OptionsError, OptionValueError
from relaybal.policy.plugin import PolicyBase, PolicyError, PolicyPlugin, PolicySetupError
from relaybal.policy.verdicts import (
    CONTINUE,
    PERMIT,
    Kind,
    Verdict,
    defer,
    defer_if_permit,
    defer_if_reject,
    disconnect,
    reject,
)

__all__ = [
    "CONTINUE",
    "PERMIT",
    "Kind",
    "MailAddress",
    "OptionProblem",
    "OptionReader",
    "OptionValueError",
    "OptionsError",
    "PolicyBase",
    "PolicyContext",
    "PolicyEnvironment",
    "PolicyError",
    "PolicyPlugin",
    "PolicySetupError",
    "Stage",
    "Verdict",
    "defer",
    "defer_if_permit",
    "defer_if_reject",
    "disconnect",
    "mail_address",
    "normalise_domain",
    "reject",
]
