"""Stick tables shared through Redis: ``stick on src`` holds across relaybal nodes.

One Redis string per entry, ``PREFIX stick:BACKEND:KEY`` → server name,
with the table's ``expire`` as its TTL (Redis forgets an entry exactly as
the local table would). Per splice connection:

1. before the server is chosen, ``GETEX key PX expire`` (one round trip, which
   also restarts the entry's TTL) brings the shared entry into the local
   table: an entry another node wrote wins over the local one; no shared
   entry removes the local one (it expired, or ``clear table`` ran on another
   node), unless it was recorded during an outage and is not reconciled yet;
2. :meth:`Backend.pick` chooses synchronously from the local table, as
   without sharing;
3. once connected, the entry is written with ``SET … PX`` unless step 1 saw
   that very server (then its TTL was already restarted).

When Redis does not answer within ``timeout`` the local table decides alone
(the choice may differ from the other nodes' until Redis is back), and every
entry recorded meanwhile is remembered; when the outage ends they are written
with ``SET … NX`` (an entry some node wrote since Redis came back is newer
and is kept), with the TTL they have left locally.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from zope.interface import implementer

from relaybal.balance.stick import IStickShare
from relaybal.shared.redis import FALLBACK, LuaScript, RedisLink

if TYPE_CHECKING:
    from relaybal.balance.backend import Backend

#: Prefetched entries waiting for their connection, per table (older ones are forgotten).
_MAX_FETCHED = 10000


@implementer(IStickShare)
class SharedStick:
    """The shared copy of one backend's stick table."""

    def __init__(self, link: RedisLink, prefix: str, backend: Backend) -> None:
        self.link = link
        self.prefix = f"{prefix}stick:{backend.name}:"
        self.backend = backend
        self._fetched: OrderedDict[bytes, str] = OrderedDict()
        self._dirty: OrderedDict[bytes, None] = OrderedDict()
        link.on_recovered.append(self.reconcile)

    def detach(self) -> None:
        """Stop reconciling for this backend (it left the configuration or the link changed)."""
        if self.reconcile in self.link.on_recovered:
            self.link.on_recovered.remove(self.reconcile)

    def redis_key(self, key: bytes) -> str:
        return self.prefix + key.decode("utf-8", "replace")

    def _ttl_ms(self) -> int:
        table = self.backend.stick
        return max(1, int((table.expire if table is not None else 1.0) * 1000))

    # -- IStickShare

    def prefetch(self, key: bytes) -> Deferred[None]:
        d = self.link.call("GETEX", self.redis_key(key), "PX", self._ttl_ms())
        return d.addCallback(self._fetched_entry, key)

    def _fetched_entry(self, reply: Any, key: bytes) -> None:
        table = self.backend.stick
        if reply is FALLBACK or table is None:
            return
        now = self.backend.clock.seconds()
        if reply is None:
            if key not in self._dirty:
                table.remove(key)
            return
        server = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
        self._dirty.pop(key, None)  # the shared entry is newer than an unreconciled local one
        table.record(key, server, now)
        fetched = self._fetched
        fetched[key] = server
        fetched.move_to_end(key)
        while len(fetched) > _MAX_FETCHED:
            fetched.popitem(last=False)

    def record(self, key: bytes, server: str) -> None:
        if self._fetched.pop(key, None) == server:
            return  # GETEX restarted its TTL already
        if self.link.down:
            self.link.stats.calls += 1
            self.link.stats.fallbacks += 1
            self._remember(key)
            return
        d = self.link.call("SET", self.redis_key(key), server, "PX", self._ttl_ms())
        d.addCallback(self._recorded, key)

    def _recorded(self, reply: Any, key: bytes) -> None:
        if reply is FALLBACK:
            self._remember(key)

    def _remember(self, key: bytes) -> None:
        dirty = self._dirty
        dirty[key] = None
        dirty.move_to_end(key)
        table = self.backend.stick
        limit = table.size if table is not None else _MAX_FETCHED
        while len(dirty) > limit:
            dirty.popitem(last=False)

    def forget(self, key: bytes | None) -> None:
        if key is not None:
            self._dirty.pop(key, None)
            self._fetched.pop(key, None)
            self.link.call("DEL", self.redis_key(key))
            return
        self._dirty.clear()
        self._fetched.clear()
        # One script removes every entry of this table (SCAN in batches, so Redis stays responsive).
        self.link.eval(_CLEAR, [], [glob_escape(self.prefix) + "*"])

    # -- after an outage

    @property
    def unreconciled(self) -> int:
        """Entries recorded during an outage and not yet written to Redis."""
        return len(self._dirty)

    def reconcile(self) -> Deferred[int]:
        """Write the entries recorded during the outage (``SET NX``, with the TTL they have left)."""
        table = self.backend.stick
        dirty, self._dirty = self._dirty, OrderedDict()
        if table is None or not dirty:
            return succeed(0)
        now = self.backend.clock.seconds()
        calls = []
        keys = []
        for entry in table.entries(now):
            if entry.key in dirty:
                ms = int(entry.expires_in * 1000)
                if ms > 0:
                    keys.append(entry.key)
                    rkey = self.redis_key(entry.key)
                    calls.append(self.link.call("SET", rkey, entry.server, "NX", "PX", ms))

        def count(replies: list[Any]) -> int:
            written = 0
            for key, reply in zip(keys, replies, strict=True):
                if reply is FALLBACK:
                    self._remember(key)  # Redis left again: next time
                elif reply is not None:
                    written += 1
            return written

        return gatherResults(calls).addCallback(count)


#: Deletes the keys matching ARGV[1]; returns how many.
_CLEAR_SOURCE = """
local cursor = "0"
local removed = 0
repeat
  local reply = redis.call("SCAN", cursor, "MATCH", ARGV[1], "COUNT", 1000)
  cursor = reply[1]
  for _, key in ipairs(reply[2]) do
    removed = removed + redis.call("DEL", key)
  end
until cursor == "0"
return removed
"""
_CLEAR = LuaScript(_CLEAR_SOURCE)


def glob_escape(text: str) -> str:
    """``text`` with Redis ``MATCH`` pattern characters made literal."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
