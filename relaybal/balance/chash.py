"""``balance = "source"``: consistent hashing of the client address.

A ring of points is built from *all* the backend's servers, not from the
candidates of one pick, so that whether a server is usable changes only which
points are skipped: when a server goes down only the keys that were on it
move (each to the next usable server clockwise), and when it comes back it
gets exactly those keys back.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from collections.abc import Sequence
from hashlib import blake2b

from relaybal.balance.base import Candidate

#: Ring points per unit of weight. 100 keeps a weight-1 server's share within
#: about 10% of its due and a full ring of 50 servers at weight 256 near 1.3M
#: points; HAProxy uses 16, which is cheaper but much lumpier.
POINTS_PER_WEIGHT = 100

# Distinct personalisations keep key hashes and point hashes independent.
_KEY_PERSON = b"relaybal-key"
_POINT_PERSON = b"relaybal-point"


def key_hash(key: bytes) -> int:
    """The 64-bit ring position of a key (stable across processes and versions)."""
    return int.from_bytes(blake2b(key, digest_size=8, person=_KEY_PERSON).digest(), "big")


def _point_hash(name: str, number: int) -> int:
    data = f"{name}\0{number}".encode()
    return int.from_bytes(blake2b(data, digest_size=8, person=_POINT_PERSON).digest(), "big")


class ConsistentHash:
    """Maps each key to a server by a weighted consistent-hash ring.

    Promises:

    * the ring holds ``points_per_weight * effective_weight`` points per server
      (weights read when the ring is built: by the factory and by
      :meth:`servers_changed`), placed by hashing the server's *name*, so the
      mapping does not depend on configuration order;
    * a pick hashes ``key`` (None counts as ``b""``) and returns the owner of the
      first point clockwise whose server is among the candidates; hence the
      mapping of a key changes only if its server leaves or comes back, or the
      ring is rebuilt with other weights;
    * if no candidate has any point (e.g. it had weight 0 when the ring was
      built), the key chooses among the candidates by its hash modulo their
      number;
    * a pick costs one hash and one bisection when the key's server is usable;
      otherwise a ring restricted to the candidates is built once per distinct
      candidate set and reused while that set lasts.

    The factory keeps a reference to ``servers`` and reads it again in
    :meth:`servers_changed`.
    """

    def __init__(
        self,
        servers: Sequence[Candidate],
        rng: random.Random,
        *,
        points_per_weight: int = POINTS_PER_WEIGHT,
    ) -> None:
        del rng
        self._servers = servers
        self._points_per_weight = points_per_weight
        # Point hashes per server name, kept across rebuilds so a weight change
        # costs only the new points' hashes (and moves only their keys).
        self._point_cache: dict[str, list[int]] = {}
        self._names: tuple[str, ...] = ()
        self._shift = 1
        self._ring: list[int] = []
        self._sub_names: tuple[str, ...] = ()
        self._sub_ring: list[int] = []
        self._sub_positions: dict[int, int] = {}
        self._build()

    def pick(self, candidates: Sequence[Candidate], key: bytes | None) -> Candidate | None:
        """Return the candidate owning ``key`` on the ring, or None if empty."""
        count = len(candidates)
        if count == 0:
            return None
        position = key_hash(b"" if key is None else key)
        ring = self._ring
        if ring:
            shift = self._shift
            # A ring entry is (point hash << shift) | server index, so bisecting
            # for ``position << shift`` finds the first point at or after it.
            index = bisect_left(ring, position << shift)
            owner = ring[index if index < len(ring) else 0] & ((1 << shift) - 1)
            # Candidates keep configuration order, so while every server is
            # usable the owner sits at its own index; one name check confirms.
            if owner < count:
                candidate = candidates[owner]
                if candidate.name == self._names[owner]:
                    return candidate
            chosen = self._pick_among(candidates, position)
            if chosen is not None:
                return chosen
        return candidates[position % count]

    def servers_changed(self) -> None:
        """Rebuild the ring from the servers given to the factory, with their current weights."""
        self._build()

    def _pick_among(self, candidates: Sequence[Candidate], position: int) -> Candidate | None:
        """Walk the ring restricted to ``candidates``; None if none of them has a point."""
        names = tuple(candidate.name for candidate in candidates)
        if names != self._sub_names:
            self._restrict(names)
        sub_ring = self._sub_ring
        if not sub_ring:
            return None
        shift = self._shift
        index = bisect_left(sub_ring, position << shift)
        owner = sub_ring[index if index < len(sub_ring) else 0] & ((1 << shift) - 1)
        return candidates[self._sub_positions[owner]]

    def _restrict(self, names: tuple[str, ...]) -> None:
        """Cache the ring points of the servers named in ``names`` (a candidate list)."""
        ring_index = {name: index for index, name in enumerate(self._names)}
        positions = {
            ring_index[name]: position
            for position, name in enumerate(names)
            if name in ring_index
        }
        mask = (1 << self._shift) - 1
        # Filtering keeps the order, and skipping non-candidates' points is
        # exactly what walking the full ring clockwise would do.
        self._sub_ring = [entry for entry in self._ring if entry & mask in positions]
        self._sub_positions = positions
        self._sub_names = names

    def _build(self) -> None:
        servers = list(self._servers)
        names = tuple(server.name for server in servers)
        shift = max(1, len(names).bit_length())
        cache = self._point_cache
        for stale in set(cache) - set(names):
            del cache[stale]
        ring: list[int] = []
        for index, server in enumerate(servers):
            wanted = max(server.effective_weight, 0) * self._points_per_weight
            points = cache.setdefault(server.name, [])
            if len(points) < wanted:
                points.extend(_point_hash(server.name, n) for n in range(len(points), wanted))
            ring.extend((point << shift) | index for point in points[:wanted])
        ring.sort()
        self._names = names
        self._shift = shift
        self._ring = ring
        self._sub_names = ()
        self._sub_ring = []
        self._sub_positions = {}
