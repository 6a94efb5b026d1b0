"""The ``ratelimit`` policy's token buckets, shared through Redis.

One Redis hash per bucket, ``PREFIX bucket:POLICY:KEYKIND:VALUE`` with the
fields ``tokens`` and ``ts``; every check is one Lua script (:data:`BUCKET`),
which Redis runs atomically: refill by the time elapsed, take a token if there
is one, store, set the key to expire once the bucket would be full again
(an absent key *is* a full bucket, so idle clients cost no memory). The time
is Redis's own (``TIME``), so the nodes' clocks do not need to agree.

When Redis does not answer within ``timeout`` (or is known to be away) the
node's own :class:`~relaybal.policy.builtin.ratelimit.MemoryBucketStore`
decides, and the tokens it gives out are remembered per bucket; when the
outage ends they are charged to the shared buckets (the same script, in
*charge* mode: the balance may go below zero, down to ``-burst``), so a
client that used the outage to send more than its share waits it off
afterwards. Checks Redis answers are mirrored in the local buckets, so a
node falling back starts from what it has seen rather than from full
buckets.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred, gatherResults, succeed
from zope.interface import implementer

from relaybal.policy.builtin.ratelimit import IBucketStore, MemoryBucketStore
from relaybal.shared.redis import FALLBACK, LuaScript, RedisLink

if TYPE_CHECKING:
    from relaybal.shared.state import SharedState

#: KEYS[1] the bucket; ARGV: refill per second, burst, cost, "1" to check (take cost tokens if
#: there are that many) or "0" to charge (take them anyway, down to -burst). Returns 1 if taken.
BUCKET = LuaScript(
    """
if redis.replicate_commands then redis.replicate_commands() end
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call("TIME")
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local saved = redis.call("HMGET", KEYS[1], "tokens", "ts")
local tokens = tonumber(saved[1])
local ts = tonumber(saved[2])
if tokens == nil or ts == nil then
  tokens = burst
elseif now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
end
local taken = 0
if ARGV[4] == "1" then
  if tokens >= cost then
    tokens = tokens - cost
    taken = 1
  end
else
  tokens = math.max(-burst, tokens - cost)
  taken = 1
end
redis.call("HSET", KEYS[1], "tokens", string.format("%.6f", tokens), "ts", string.format("%.6f", now))
redis.call("PEXPIRE", KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return taken
"""
)

#: Buckets whose local spending waits to be charged to Redis (oldest forgotten first).
MAX_DEBTS = 100_000


@attrs.define
class _Debt:
    tokens: int
    per_second: float
    burst: float


class RedisBuckets:
    """The buckets of one Redis link, with their node-local fallback (see the module's docstring)."""

    def __init__(self, link: RedisLink, prefix: str, max_keys: int = 100_000) -> None:
        self.link = link
        self.prefix = f"{prefix}bucket:"
        self.local = MemoryBucketStore(max_keys)
        self._debts: OrderedDict[str, _Debt] = OrderedDict()
        link.on_recovered.append(self.reconcile)

    def detach(self) -> None:
        if self.reconcile in self.link.on_recovered:
            self.link.on_recovered.remove(self.reconcile)

    @property
    def unreconciled(self) -> int:
        """Buckets with tokens given out during an outage and not yet charged to Redis."""
        return len(self._debts)

    def take(self, key: str, now: float, per_second: float, burst: float) -> bool | Deferred[bool]:
        link = self.link
        if link.down:
            link.stats.calls += 1
            link.stats.fallbacks += 1
            return self._take_locally(key, now, per_second, burst)
        d = link.eval(BUCKET, [self.prefix + key], [per_second, burst, 1, 1])
        return d.addCallback(self._answered, key, now, per_second, burst)

    def _answered(self, reply: Any, key: str, now: float, per_second: float, burst: float) -> bool:
        if reply is FALLBACK:
            return self._take_locally(key, now, per_second, burst)
        taken = bool(reply == 1)
        if taken:
            self.local.take(key, now, per_second, burst)  # the mirror: a later fallback starts from here
        return taken

    def _take_locally(self, key: str, now: float, per_second: float, burst: float) -> bool:
        taken = self.local.take(key, now, per_second, burst)
        if taken:
            debt = self._debts.get(key)
            if debt is None:
                self._debts[key] = _Debt(1, per_second, burst)
                while len(self._debts) > MAX_DEBTS:
                    self._debts.popitem(last=False)
            else:
                debt.tokens += 1
                self._debts.move_to_end(key)
        return taken

    def reconcile(self) -> Deferred[int]:
        """Charge the tokens given out during the outage to the shared buckets; how many buckets."""
        debts, self._debts = self._debts, OrderedDict()
        if not debts:
            return succeed(0)
        keys = list(debts)
        calls = [
            self.link.eval(BUCKET, [self.prefix + key], [debt.per_second, debt.burst, debt.tokens, 0])
            for key, debt in debts.items()
        ]

        def count(replies: list[Any]) -> int:
            charged = 0
            for key, reply in zip(keys, replies, strict=True):
                if reply is FALLBACK:
                    self._debts[key] = debts[key]  # away again: next time
                else:
                    charged += 1
            return charged

        return gatherResults(calls).addCallback(count)


@implementer(IBucketStore)
class SharedBucketStore:
    """The store the service gives ``ratelimit`` policies when ``[global] shared_state`` is set.

    It asks ``shared()`` at each check, so a reload that changes (or removes)
    ``shared_state`` applies to the policies already built: with no shared
    state the buckets live in this process's memory, as without this store.
    """

    def __init__(self, shared: Callable[[], SharedState | None], max_keys: int = 100_000) -> None:
        self.shared = shared
        self.memory = MemoryBucketStore(max_keys)

    def take(self, key: str, now: float, per_second: float, burst: float) -> bool | Deferred[bool]:
        state = self.shared()
        if state is None:
            return self.memory.take(key, now, per_second, burst)
        return state.buckets.take(key, now, per_second, burst)
