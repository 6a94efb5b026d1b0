"""``networks``: clients in ``allow`` may relay (for the whole session); clients in ``deny`` are refused.

Decided at ``connect`` on the real client address (after a PROXY header).
``deny`` is checked first: a denied client gets ``554 5.7.1 Access denied``
instead of the greeting and the connection is closed. A client in neither
list (or on a UNIX socket) gets no opinion.
"""

from __future__ import annotations

import ipaddress

import attrs

from relaybal.config import IPNetwork
from relaybal.interfaces import VerdictResult
from relaybal.policy.context import PolicyContext, PolicyEnvironment
from relaybal.policy.options import OptionReader, network
from relaybal.policy.plugin import PolicyBase, PolicyPlugin
from relaybal.policy.verdicts import CONTINUE, PERMIT, Verdict, reject

DENIED = reject("Access denied", "5.7.1")


@attrs.frozen
class NetworksSettings:
    allow: tuple[IPNetwork, ...] = ()
    deny: tuple[IPNetwork, ...] = ()


def read_options(r: OptionReader) -> NetworksSettings:
    allow = r.get_list("allow", network)
    deny = r.get_list("deny", network)
    if allow is None and deny is None:
        r.error("allow", "is required (or deny; expected a list of networks)")
    return NetworksSettings(allow or (), deny or ())


def _contains(networks: tuple[IPNetwork, ...], ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return any(ip.version == n.version and ip in n for n in networks)


class NetworksPolicy(PolicyBase):
    """Permit (session-wide) or reject clients by address."""

    def __init__(self, settings: NetworksSettings) -> None:
        self.settings = settings

    def connect(self, context: PolicyContext) -> VerdictResult:
        return self.decide(context.client_address)

    def decide(self, host: str | None) -> Verdict:
        if host is None:
            return CONTINUE
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return CONTINUE
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:10.1.2.3 is 10.1.2.3 (as a PROXY header may say)
        if _contains(self.settings.deny, ip):
            return DENIED
        if _contains(self.settings.allow, ip):
            return PERMIT
        return CONTINUE


def make_policy(settings: NetworksSettings, environment: PolicyEnvironment) -> NetworksPolicy:
    return NetworksPolicy(settings)


PLUGIN = PolicyPlugin(
    name="networks",
    read_options=read_options,
    factory=make_policy,
    description="clients in allow may relay; clients in deny are refused at connect",
)
