"""``max-recipients``: at most ``max`` recipients per transaction; past it ``452 4.5.3``.

RFC 5321 section 4.5.3.1.10: the client sends the rest in another
transaction. (The frontend's own ``max_recipients`` is the hard limit; this
one can be lower and, being a policy, can sit anywhere in a chain.)
"""

from __future__ import annotations

import attrs

from relaybal.interfaces import VerdictResult
from relaybal.policy.context import PolicyContext, PolicyEnvironment
from relaybal.policy.options import OptionReader, integer
from relaybal.policy.plugin import PolicyBase, PolicyPlugin
from relaybal.policy.verdicts import CONTINUE, defer

TOO_MANY = defer("Error: too many recipients", "4.5.3", 452)


@attrs.frozen
class MaxRecipientsSettings:
    max: int


def read_options(r: OptionReader) -> MaxRecipientsSettings:
    return MaxRecipientsSettings(r.require("max", integer(1), 1))


class MaxRecipientsPolicy(PolicyBase):
    """Defer recipients past the limit."""

    def __init__(self, settings: MaxRecipientsSettings) -> None:
        self.max = settings.max

    def rcpt(self, context: PolicyContext) -> VerdictResult:
        return TOO_MANY if len(context.recipients) >= self.max else CONTINUE


def make_policy(settings: MaxRecipientsSettings, environment: PolicyEnvironment) -> MaxRecipientsPolicy:
    return MaxRecipientsPolicy(settings)


PLUGIN = PolicyPlugin(
    name="max-recipients",
    read_options=read_options,
    factory=make_policy,
    description="at most max recipients per transaction (452 4.5.3 past it)",
)
