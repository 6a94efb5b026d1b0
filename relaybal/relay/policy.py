"""The policy a relay frontend applies when it names no policies: relay for loopback only.

A frontend with ``policies = [...]`` gets a
:class:`~relaybal.policy.chain.PolicyChain` instead; both sit behind
:class:`~relaybal.relay.interfaces.ISessionPolicy`.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping

from zope.interface import implementer

from relaybal.relay.interfaces import Decision, Envelope, ISessionPolicy, SessionState
from relaybal.smtp.wire import Mailbox, Reply

RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")


@functools.lru_cache(maxsize=4096)
def is_local_client(host: str | None) -> bool:
    """Loopback addresses, and clients without an IP address (a UNIX socket), are local."""
    if host is None:
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@implementer(ISessionPolicy)
class LoopbackRelayPolicy:
    """Lets loopback clients relay; every other client hears ``554 5.7.1`` at RCPT."""

    wants_headers = False

    def connect(self, state: SessionState) -> Decision:
        return None

    def helo(self, state: SessionState, name: str) -> Decision:
        return None

    def auth(self, state: SessionState) -> Decision:
        return None

    def mail(self, state: SessionState, sender: Mailbox, params: Mapping[str, str | None]) -> Decision:
        return None

    def rcpt(self, state: SessionState, recipient: Mailbox, params: Mapping[str, str | None]) -> Decision:
        return None if is_local_client(state.client_host) else RELAY_DENIED

    def data(self, state: SessionState) -> Decision:
        return None

    def message(self, state: SessionState, envelope: Envelope, size: int) -> Decision:
        return None
