"""``stick = { on = "src", size, expire }``: which server each client address was sent to.

A bounded, expiring map from a client key (the address as bytes) to a server
name. No reactor: every call takes the current time, so a fake clock drives
the tests.

Each :meth:`StickTable.record` moves its entry to the young end and restarts
its expiry; entries are therefore kept in order of last use, which is also
the order in which they expire (the expiry delay is the same for all). That
makes both bounds cheap: when the table is full the least recently used
entry goes first, and expired entries are purged from the old end as new ones
are recorded, so the table never holds more than ``size`` entries and never
needs a timer.
"""

from __future__ import annotations

from collections import OrderedDict

import attrs
from twisted.internet.defer import Deferred
from zope.interface import Interface


class IStickShare(Interface):
    """A backend's stick table shared with other relaybal processes (``[global] shared_state``).

    The local :class:`StickTable` stays the one :meth:`Backend.pick` reads,
    synchronously; a share keeps it in step with the shared copy around each
    choice.
    """

    def prefetch(key: bytes) -> Deferred[None]:
        """Bring the shared entry for ``key`` into the local table; never fails, bounded in time."""

    def record(key: bytes, server: str) -> None:
        """``key`` now uses ``server`` (already recorded locally): share it."""

    def forget(key: bytes | None) -> None:
        """Remove ``key``'s shared entry (None: every entry of the table)."""


@attrs.frozen
class StickEntry:
    """One entry as shown by ``show table``."""

    key: bytes
    server: str
    expires_in: float
    """Seconds left before the entry expires."""
    serial: int
    """A number unique to this entry for the table's lifetime (shown as its id)."""


@attrs.define
class _Slot:
    server: str
    expires: float
    serial: int


class StickTable:
    """Client key → server name; at most ``size`` entries, each forgotten ``expire`` s after its last use.

    Promises:

    * :meth:`lookup` returns the server recorded for a key unless the entry
      has expired (an expired entry is removed, never returned);
    * :meth:`record` stores or refreshes an entry; when that makes the table
      exceed ``size``, the least recently recorded entries are evicted;
    * lookups do not change the order of eviction (only a recorded use does).
    """

    def __init__(self, size: int, expire: float) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self.expire = expire
        self._slots: OrderedDict[bytes, _Slot] = OrderedDict()
        self._serial = 0
        self.evictions = 0
        """Entries dropped because the table was full."""

    def __len__(self) -> int:
        return len(self._slots)

    def lookup(self, key: bytes, now: float) -> str | None:
        """The server recorded for ``key``, or None (never recorded, expired or evicted)."""
        slot = self._slots.get(key)
        if slot is None:
            return None
        if slot.expires <= now:
            del self._slots[key]
            return None
        return slot.server

    def record(self, key: bytes, server: str, now: float) -> None:
        """Remember that ``key`` uses ``server`` now; restart its expiry."""
        slots = self._slots
        slot = slots.get(key)
        expires = now + self.expire
        if slot is None:
            self._serial += 1
            slots[key] = _Slot(server, expires, self._serial)
        else:
            slot.server = server
            slot.expires = expires
            slots.move_to_end(key)
        self.purge(now)
        while len(slots) > self.size:
            slots.popitem(last=False)
            self.evictions += 1

    def purge(self, now: float) -> int:
        """Remove expired entries; return how many."""
        slots = self._slots
        removed = 0
        while slots:
            key, slot = next(iter(slots.items()))
            if slot.expires > now:
                break
            del slots[key]
            removed += 1
        return removed

    def remove(self, key: bytes) -> bool:
        """Forget ``key``; True if it was there."""
        return self._slots.pop(key, None) is not None

    def clear(self) -> int:
        """Forget every entry; return how many there were."""
        count = len(self._slots)
        self._slots.clear()
        return count

    def entries(self, now: float) -> list[StickEntry]:
        """The live entries, least recently used first (expired ones are purged first)."""
        self.purge(now)
        return [
            StickEntry(key, slot.server, slot.expires - now, slot.serial)
            for key, slot in self._slots.items()
        ]
