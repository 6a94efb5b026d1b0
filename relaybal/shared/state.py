"""The process's shared state: one Redis link and what is shared through it.

Built by the service from ``[global] shared_state``; without that table
nothing here exists and every decision is node-local, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from relaybal.balance.backend import Backend
from relaybal.config import SharedStateConfig
from relaybal.shared.buckets import RedisBuckets
from relaybal.shared.redis import IRedisClient, LinkStatus, RedisLink, TxRedisClient
from relaybal.shared.stick import SharedStick

log = Logger(namespace="relaybal.shared")


class SharedStateError(Exception):
    """``shared_state`` cannot be set up (an unreadable password file)."""


def read_password(path: str) -> str:
    """The first line of ``path`` (the Redis password), or :class:`SharedStateError`."""
    try:
        with open(path, encoding="utf-8") as f:
            line = f.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        raise SharedStateError(f"global.shared_state.password_file: cannot read {path}: {e}") from None
    if not line:
        raise SharedStateError(f"global.shared_state.password_file: {path} is empty")
    return line


class SharedState:
    """A Redis link (:class:`~relaybal.shared.redis.RedisLink`) and the tables shared through it.

    ``client_factory`` makes the Redis client when :meth:`start` runs
    (default: a ``txredisapi`` connection to ``config.redis``); tests pass a
    fake. Keys all start with ``config.key_prefix``, so several relaybal
    clusters can share one Redis server (give each its own prefix).
    """

    def __init__(
        self,
        config: SharedStateConfig,
        reactor: Any,
        *,
        client_factory: Callable[[], IRedisClient] | None = None,
    ) -> None:
        self.config = config
        self.reactor = reactor
        password = read_password(config.password_file) if config.password_file else None
        timeout = config.timeout
        if client_factory is None:

            def client_factory() -> IRedisClient:
                return TxRedisClient(
                    reactor, config, password=password, reply_timeout=max(2.0, 10 * timeout)
                )

        self.link = RedisLink(_LazyClient(client_factory), reactor, timeout=timeout, where=config.redis)
        self.sticks: dict[str, SharedStick] = {}
        self.buckets = RedisBuckets(self.link, self.prefix)
        self.started = False

    @property
    def prefix(self) -> str:
        return self.config.key_prefix

    def start(self) -> None:
        if not self.started:
            self.started = True
            self.link.start()

    def stop(self) -> Deferred[None]:
        for stick in self.sticks.values():
            stick.detach()
        self.sticks.clear()
        self.buckets.detach()
        return self.link.stop()

    def attach(self, backends: Mapping[str, Backend]) -> None:
        """Share the stick table of each backend that has one (and stop sharing the others')."""
        for name in list(self.sticks):
            stick = self.sticks[name]
            if backends.get(name) is not stick.backend:
                stick.detach()
                del self.sticks[name]
        for name, backend in backends.items():
            if backend.config.stick is None:
                backend.stick_share = None
                continue
            shared = self.sticks.get(name)
            if shared is None:
                shared = self.sticks[name] = SharedStick(self.link, self.prefix, backend)
            backend.stick_share = shared

    def status(self) -> LinkStatus:
        return self.link.status()

    def describe(self) -> dict[str, Any]:
        """``shared_state`` in ``/stats.json``: the link's status and the unreconciled entries."""
        return {**self.status().as_dict(), "unreconciled": self.unreconciled()}

    def unreconciled(self) -> int:
        """Stick entries and rate-limit buckets changed during an outage and not yet written to Redis."""
        return sum(stick.unreconciled for stick in self.sticks.values()) + self.buckets.unreconciled


@implementer(IRedisClient)
class _LazyClient:
    """Makes the real client on first use (the service builds this before it may connect)."""

    def __init__(self, factory: Callable[[], IRedisClient]) -> None:
        self._factory = factory
        self._client: IRedisClient | None = None

    @property
    def client(self) -> IRedisClient:
        if self._client is None:
            self._client = self._factory()
        return self._client

    def execute(self, *args: Any) -> Deferred[Any]:
        return self.client.execute(*args)

    def eval(self, script: Any, keys: Any, args: Any) -> Deferred[Any]:
        return self.client.eval(script, keys, args)

    def close(self) -> Deferred[None]:
        if self._client is None:
            return succeed(None)
        return self._client.close()
