"""Client addresses as relaybal sees them: IP peers, trusted networks."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from twisted.internet.address import IPv4Address, IPv6Address

from relaybal.config import IPNetwork


def peer_ip(addr: object) -> tuple[str, int] | None:
    """(host, port) of an IP peer, unwrapping IPv4-mapped IPv6 addresses; None otherwise."""
    if isinstance(addr, IPv4Address | IPv6Address):
        host = addr.host
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        return host, addr.port
    return None


def in_networks(host: str, networks: Sequence[IPNetwork]) -> bool:
    """Whether textual IP ``host`` lies in any of ``networks`` (False for non-IPs)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return any(ip.version == n.version and ip in n for n in networks)
