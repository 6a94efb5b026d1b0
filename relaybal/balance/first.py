"""``balance = "first"``: fill servers in configuration order (HAProxy's ``first``).

Meant for using as few servers as possible: each server takes traffic until it
reaches its ``maxconn``, and only then does the next one get any.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from relaybal.balance.base import Candidate


class FirstAvailable:
    """Chooses the first candidate in configuration order whose load is below its maxconn.

    A server with ``maxconn`` 0 (unlimited) always has room, so it is chosen
    whenever it is the first such candidate. When every candidate is full, the
    first candidate is returned: the caller sees its load at ``maxconn`` and
    queues the unit, as for any full server.
    """

    def __init__(self, servers: Sequence[Candidate], rng: random.Random) -> None:
        del servers, rng

    def pick(self, candidates: Sequence[Candidate], key: bytes | None) -> Candidate | None:
        """Return the first candidate with room, the first candidate if none has, or None."""
        for candidate in candidates:
            maxconn = candidate.maxconn
            if maxconn <= 0 or candidate.load < maxconn:
                return candidate
        return candidates[0] if candidates else None

    def servers_changed(self) -> None:
        """Nothing to rebuild: loads and limits are read at each pick."""
