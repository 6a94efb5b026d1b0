"""The contract between a backend and its balance algorithm."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Protocol


class Candidate(Protocol):
    """What an algorithm may know about a server.

    The backend passes its servers (in configuration order) to the algorithm's
    factory once, and at each pick the subset that may take traffic now.
    """

    @property
    def name(self) -> str:
        """Unique within the backend."""

    @property
    def effective_weight(self) -> int:
        """Configured weight (0-256) after slowstart; > 0 for every candidate passed to pick."""

    @property
    def load(self) -> int:
        """Units in flight now: connections (splice) or messages (relay)."""

    @property
    def maxconn(self) -> int:
        """Maximum load, 0 meaning unlimited."""


class BalanceAlgorithm(Protocol):
    """Chooses one server among candidates, for one unit (connection or message)."""

    def pick(self, candidates: Sequence[Candidate], key: bytes | None) -> Candidate | None:
        """Return one of ``candidates`` (never another object), or None if it is empty.

        ``candidates`` keeps configuration order and holds only usable servers.
        ``key`` is the client address as bytes (used by hashing algorithms).
        """

    def servers_changed(self) -> None:
        """Called when the set of servers or their weights changed (rebuild caches)."""


AlgorithmFactory = Callable[[Sequence[Candidate], random.Random], BalanceAlgorithm]
