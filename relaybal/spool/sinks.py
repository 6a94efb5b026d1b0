"""Sinks a relay frontend holds in the daemon.

The spool is opened in ``startService`` (after twistd drops privileges, so its
files belong to the user relaybal runs as), but frontends are built before
that: :class:`SpoolSink` stands in for the store until it is open.
"""

from __future__ import annotations

from zope.interface import implementer

from relaybal.relay.interfaces import Envelope, IMessageSink, IMessageWriter, SinkError
from relaybal.smtp.wire import Reply
from relaybal.spool.store import SpoolStore


@implementer(IMessageSink)
class SpoolSink:
    """Hands messages to the spool once it is open; until then ``451 4.3.0``."""

    def __init__(self) -> None:
        self.store: SpoolStore | None = None

    def begin(self, envelope: Envelope) -> IMessageWriter:
        if self.store is None:
            raise SinkError(Reply(451, "4.3.0", "Spool not available, try again later"))
        return self.store.begin(envelope)


@implementer(IMessageSink)
class UnavailableSink:
    """Refuses every message with a temporary error naming what is missing."""

    def __init__(self, what: str) -> None:
        self.reply = Reply(451, "4.3.0", f"{what} is not available in this version, try again later")

    def begin(self, envelope: Envelope) -> IMessageWriter:
        raise SinkError(self.reply)
