"""``balance = "source"``: consistent hashing of the client address.

A ring of points is built from *all* the backend's servers, not from the
candidates of one pick, so that whether a server is usable changes only which
points are skipped: when a server goes down only the keys that were on it
move (each to the next usable server clockwise), and when it comes back it
gets exactly those keys back.
"""

from __future__ import annotations

import random
import struct
from bisect import bisect_left
from collections.abc import Sequence
from hashlib import blake2b

from relaybal.balance.base import Candidate

#: Ring points per unit of weight. 100 keeps a weight-1 server's share within
#: about 10% of its due; the ring holds 100 x sum(weights) entries (HAProxy uses
#: 16 per unit, cheaper but much lumpier for small weights).
POINTS_PER_WEIGHT = 100

# Distinct personalisations keep key hashes and point hashes independent.
_KEY_PERSON = b"relaybal-key"
_POINT_PERSON = b"relaybal-point"

_POINTS_PER_DIGEST = 8
_UNPACK_POINTS = struct.Struct(">8Q").unpack

#: Ring entries looked at one by one before switching to a ring restricted to
#: the candidates; a walk that long means most of the ring is unusable.
_WALK_LIMIT = 32


def key_hash(key: bytes) -> int:
    """The 64-bit ring position of a key (stable across processes and versions)."""
    return int.from_bytes(blake2b(key, digest_size=8, person=_KEY_PERSON).digest(), "big")


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
    * a pick costs one hash and one bisection when the key's server is usable
      and all servers are; a short walk along the ring when some are not; and
      when most of the ring belongs to unusable servers, a bisection of a ring
      restricted to the candidates, built once for each new candidate set.

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
        self._mask = 1
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
            # A ring entry is (point hash << shift) | server index, so bisecting
            # for ``position << shift`` finds the first point at or after it.
            index = bisect_left(ring, position << self._shift)
            if index == len(ring):
                index = 0
            owner = ring[index] & self._mask
            # Candidates keep configuration order, so while every server is
            # usable the owner sits at its own index, and when the only missing
            # ones come before it, that many places earlier; a name check
            # confirms either guess without building anything.
            name = self._names[owner]
            if owner < count:
                candidate = candidates[owner]
                if candidate.name == name:
                    return candidate
            guess = owner - (len(self._names) - count)
            if 0 <= guess < count:
                candidate = candidates[guess]
                if candidate.name == name:
                    return candidate
            chosen = self._walk(candidates, index, position)
            if chosen is not None:
                return chosen
        return candidates[position % count]

    def servers_changed(self) -> None:
        """Rebuild the ring from the servers given to the factory, with their current weights."""
        self._build()

    def _walk(self, candidates: Sequence[Candidate], index: int, position: int) -> Candidate | None:
        """The first candidate clockwise from ring entry ``index``; None if none has a point.

        Walks a few entries (enough when only some servers are missing), then
        falls back to a ring restricted to the candidates, so that a pick stays
        cheap even when most of the ring belongs to unusable servers.
        """
        by_name = {candidate.name: candidate for candidate in candidates}
        ring = self._ring
        names = self._names
        mask = self._mask
        size = len(ring)
        for _ in range(min(size, _WALK_LIMIT)):
            chosen = by_name.get(names[ring[index] & mask])
            if chosen is not None:
                return chosen
            index += 1
            if index == size:
                index = 0
        return self._pick_restricted(candidates, position)

    def _pick_restricted(self, candidates: Sequence[Candidate], position: int) -> Candidate | None:
        names = tuple(candidate.name for candidate in candidates)
        if names != self._sub_names:
            self._restrict(names)
        sub_ring = self._sub_ring
        if not sub_ring:
            return None
        index = bisect_left(sub_ring, position << self._shift)
        owner = sub_ring[index if index < len(sub_ring) else 0] & self._mask
        return candidates[self._sub_positions[owner]]

    def _restrict(self, names: tuple[str, ...]) -> None:
        """Cache the ring points of the servers named in ``names`` (a candidate list)."""
        ring_index = {name: index for index, name in enumerate(self._names)}
        positions = {ring_index[name]: position for position, name in enumerate(names) if name in ring_index}
        mask = self._mask
        # Filtering keeps the order, and skipping non-candidates' points is
        # exactly what walking the full ring clockwise does.
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
            _extend_points(points, server.name, wanted)
            ring.extend([(point << shift) | index for point in points[:wanted]])
        ring.sort()
        self._names = names
        self._shift = shift
        self._mask = (1 << shift) - 1
        self._ring = ring
        self._sub_names = ()
        self._sub_ring = []
        self._sub_positions = {}


def _extend_points(points: list[int], name: str, wanted: int) -> None:
    """Extend ``points``, the ring points of server ``name``, to at least ``wanted``.

    Point number n is always the same for a name, so a server with weight w
    has the first ``w * points_per_weight`` of one fixed sequence: raising its
    weight adds points and lowering it removes some, without moving the rest.
    One 64-byte digest yields 8 points.
    """
    block = len(points) // _POINTS_PER_DIGEST
    while len(points) < wanted:
        digest = blake2b(f"{name}\0{block}".encode(), digest_size=64, person=_POINT_PERSON)
        points.extend(_UNPACK_POINTS(digest.digest()))
        block += 1
