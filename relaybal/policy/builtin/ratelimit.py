"""``ratelimit``: a token bucket per key; past it, MAIL gets ``450 4.7.1``.

``key`` chooses what is counted: ``client_address`` (default),
``sasl_username`` or ``sender`` (the normalised envelope sender; ``<>`` is
one key). ``rate = "100/m"`` refills the bucket at 100 tokens a minute and
``burst`` (default: the rate's count) is its size; every MAIL transaction
takes one token. A session without the key (no AUTH for ``sasl_username``)
gets no opinion.

Memory is bounded: at most ``max_keys`` buckets are kept, the least recently
used one is forgotten first (a forgotten key starts again with a full
bucket). Buckets live behind :class:`IBucketStore`, so a shared store (Redis,
for several relaybal processes) can replace :class:`MemoryBucketStore`
without touching the policy: given one as the environment's
``bucket_store``, the policy uses it with keys prefixed ``POLICY:KEYKIND:``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from zope.interface import Interface, implementer

from relaybal.interfaces import VerdictResult
from relaybal.policy.context import PolicyContext, PolicyEnvironment
from relaybal.policy.options import OptionReader, Rate, choice, integer, rate
from relaybal.policy.plugin import PolicyBase, PolicyPlugin
from relaybal.policy.verdicts import CONTINUE, Verdict, defer

KEYS = ("client_address", "sasl_username", "sender")
EXCEEDED = defer("Error: rate limit exceeded, try again later", "4.7.1", 450)


class IBucketStore(Interface):
    """Where token buckets live (in memory now; a shared store later)."""

    def take(key: str, now: float, per_second: float, burst: float) -> bool | Deferred[bool]:
        """Take one token from ``key``'s bucket (created full); False if it has none.

        The bucket refills at ``per_second`` tokens a second up to ``burst``.
        """


@implementer(IBucketStore)
class MemoryBucketStore:
    """Buckets in a dict, at most ``max_keys`` of them (least recently used forgotten first)."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float, per_second: float, burst: float) -> bool:
        buckets = self._buckets
        entry = buckets.get(key)
        if entry is None:
            tokens = burst
            if len(buckets) >= self.max_keys:
                buckets.popitem(last=False)
        else:
            tokens, updated = entry
            tokens = min(burst, tokens + max(0.0, now - updated) * per_second)
            buckets.move_to_end(key)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        buckets[key] = (tokens, now)
        return allowed


@attrs.frozen
class RateLimitSettings:
    key: str
    rate: Rate
    burst: int
    max_keys: int = 100_000


def read_options(r: OptionReader) -> RateLimitSettings:
    the_rate = r.require("rate", rate, Rate(1, 1.0))
    return RateLimitSettings(
        key=r.get("key", choice(KEYS), "client_address"),
        rate=the_rate,
        burst=r.get("burst", integer(1), the_rate.count),
        max_keys=r.get("max_keys", integer(1), 100_000),
    )


class RateLimitPolicy(PolicyBase):
    """Defers MAIL once a key's bucket is empty."""

    def __init__(
        self, settings: RateLimitSettings, reactor: Any, store: IBucketStore, prefix: str = ""
    ) -> None:
        self.settings = settings
        self.reactor = reactor
        self.store = store
        self.prefix = prefix

    def key_of(self, context: PolicyContext) -> str | None:
        kind = self.settings.key
        if kind == "client_address":
            return context.client_address
        if kind == "sasl_username":
            return context.sasl_username
        sender = context.sender
        if sender is None:
            return None
        return sender.normalised if not sender.is_null else "<>"

    def mail(self, context: PolicyContext) -> VerdictResult:
        value = self.key_of(context)
        if value is None:
            return CONTINUE
        s = self.settings
        allowed = self.store.take(f"{self.prefix}{value}", self.reactor.seconds(), s.rate.per_second, s.burst)
        if isinstance(allowed, Deferred):
            return allowed.addCallback(_verdict)
        return _verdict(allowed)


def _verdict(allowed: bool) -> Verdict:
    return CONTINUE if allowed else EXCEEDED


def make_policy(settings: RateLimitSettings, environment: PolicyEnvironment) -> RateLimitPolicy:
    shared = environment.bucket_store
    if shared is not None:
        # Keys name the policy: two ratelimit policies never share a bucket by accident.
        prefix = f"{environment.policy}:{settings.key}:"
        return RateLimitPolicy(settings, environment.reactor, shared, prefix=prefix)
    return RateLimitPolicy(settings, environment.reactor, MemoryBucketStore(settings.max_keys))


PLUGIN = PolicyPlugin(
    name="ratelimit",
    read_options=read_options,
    factory=make_policy,
    description="a token bucket per client address, user or sender; 450 4.7.1 when it is empty",
)
