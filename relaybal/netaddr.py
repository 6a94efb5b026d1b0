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


class ClientCounts(dict[str, int]):
    """Open sessions per client address, for ``maxconn_per_client``.

    A plain ``{host: count}`` mapping with no zero entries, so its size is the
    number of distinct clients connected now.
    """

    def take(self, host: str, limit: int) -> bool:
        """Count one more session from ``host``; False (and nothing counted) at ``limit``."""
        count = self.get(host, 0)
        if count >= limit:
            return False
        self[host] = count + 1
        return True

    def release(self, host: str) -> None:
        """A session counted by :meth:`take` ended."""
        left = self[host] - 1
        if left:
            self[host] = left
        else:
            del self[host]
