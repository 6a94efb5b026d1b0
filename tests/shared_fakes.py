"""A fake Redis for the shared-state unit tests: the few commands relaybal sends, on a fake clock.

It keeps strings with millisecond TTLs (``GET``, ``GETEX … PX``, ``SET … [NX]
PX``, ``DEL``, ``PING``) and can be switched between ``up`` (answers at
once), ``hang`` (never answers: a stopped or overloaded server) and
``down`` (every command fails as on a lost connection). Lua scripts are
answered by Python stand-ins a test registers in ``scripts`` (by SHA-1); the
real scripts run against a real ``redis-server`` in other tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from relaybal.shared.redis import IRedisClient, LuaScript, RedisReplyError


class LostConnection(Exception):
    """What a command gets when the connection to Redis is lost."""


@implementer(IRedisClient)
class FakeRedis:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.data: dict[str, tuple[str, float | None]] = {}
        self.mode = "up"
        self.sent: list[tuple[Any, ...]] = []
        self.hung: list[Deferred[Any]] = []
        self.closed = False
        self.scripts: dict[str, Callable[[list[str], list[str]], Any]] = {}

    def set_mode(self, mode: str) -> None:
        """``up``, ``hang`` or ``down``; leaving ``hang`` fails the unanswered commands (the
        client drops a connection that stopped answering)."""
        self.mode = mode
        if mode != "hang":
            hung, self.hung = self.hung, []
            for d in hung:
                d.errback(LostConnection("connection dropped"))

    def execute(self, *args: Any) -> Deferred[Any]:
        self.sent.append(args)
        if self.mode == "down":
            return fail(LostConnection("Lost connection"))
        if self.mode == "hang":
            d: Deferred[Any] = Deferred()
            self.hung.append(d)
            return d
        try:
            return succeed(self._run([str(a) for a in args]))
        except RedisReplyError as e:
            return fail(e)

    def eval(self, script: LuaScript, keys: Any, args: Any) -> Deferred[Any]:
        self.sent.append(("EVAL", script.sha1, *keys, *args))
        if self.mode == "down":
            return fail(LostConnection("Lost connection"))
        if self.mode == "hang":
            d: Deferred[Any] = Deferred()
            self.hung.append(d)
            return d
        stand_in = self.scripts.get(script.sha1)
        if stand_in is None:
            return fail(RedisReplyError("NOSCRIPT no such script"))
        return succeed(stand_in([str(k) for k in keys], [str(a) for a in args]))

    def close(self) -> Deferred[None]:
        self.closed = True
        return succeed(None)

    # -- the commands

    def _live(self, key: str) -> str | None:
        entry = self.data.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires is not None and expires <= self.clock.seconds():
            del self.data[key]
            return None
        return value

    def _px(self, words: list[str]) -> float | None:
        upper = [w.upper() for w in words]
        if "PX" in upper:
            return self.clock.seconds() + int(words[upper.index("PX") + 1]) / 1000
        return None

    def _run(self, args: list[str]) -> Any:
        command = args[0].upper()
        if command == "PING":
            return "PONG"
        if command == "GET":
            return self._live(args[1])
        if command == "GETEX":
            value = self._live(args[1])
            if value is not None:
                self.data[args[1]] = (value, self._px(args[2:]))
            return value
        if command == "SET":
            key, value, rest = args[1], args[2], args[3:]
            if "NX" in [w.upper() for w in rest] and self._live(key) is not None:
                return None
            self.data[key] = (value, self._px(rest))
            return "OK"
        if command == "DEL":
            return sum(1 for key in args[1:] if self.data.pop(key, None) is not None)
        raise RedisReplyError(f"ERR unknown command '{args[0]}'")

    def ttl_ms(self, key: str) -> float | None:
        entry = self.data.get(key)
        if entry is None or entry[1] is None:
            return None
        return (entry[1] - self.clock.seconds()) * 1000
