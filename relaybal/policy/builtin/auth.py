"""``auth``: clients that authenticated (SMTP AUTH) may relay; ``users`` optionally limits who.

Decided at the ``auth`` stage, right after a successful AUTH: a PERMIT there
allows relaying for the rest of the session. A user not in ``users`` gets no
opinion (other policies may still permit); they stay authenticated.
"""

from __future__ import annotations

import attrs

from relaybal.interfaces import VerdictResult
from relaybal.policy.context import PolicyContext, PolicyEnvironment
from relaybal.policy.options import OptionReader, text
from relaybal.policy.plugin import PolicyBase, PolicyPlugin
from relaybal.policy.verdicts import CONTINUE, PERMIT


@attrs.frozen
class AuthSettings:
    users: frozenset[str] | None = None


def read_options(r: OptionReader) -> AuthSettings:
    users = r.get_list("users", text)
    return AuthSettings(frozenset(users) if users is not None else None)


class AuthPolicy(PolicyBase):
    """Permit relaying to authenticated users (all, or those listed)."""

    def __init__(self, settings: AuthSettings) -> None:
        self.users = settings.users

    def auth(self, context: PolicyContext) -> VerdictResult:
        user = context.sasl_username
        if user is None:
            return CONTINUE
        if self.users is None or user in self.users:
            return PERMIT
        return CONTINUE


def make_policy(settings: AuthSettings, environment: PolicyEnvironment) -> AuthPolicy:
    return AuthPolicy(settings)


PLUGIN = PolicyPlugin(
    name="auth",
    read_options=read_options,
    factory=make_policy,
    description="authenticated clients (optionally only the listed users) may relay",
)
