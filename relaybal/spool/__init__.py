"""The durable spool: accepted messages on stable storage until they are delivered.

:class:`~relaybal.spool.store.SpoolStore` is the public face (an
``IMessageSink`` for relay frontends with ``delivery = "spool"``, and the
queue a scheduler works from); :mod:`relaybal.spool.testing` has fakes for
tests.
"""

from relaybal.spool.message import QueuedMessage, RecipientState, RecipientStatus
from relaybal.spool.store import BodyReader, CachedBodyReader, SpoolLocked, SpoolStore, SpoolWriter

__all__ = [
    "BodyReader",
    "CachedBodyReader",
    "QueuedMessage",
    "RecipientState",
    "RecipientStatus",
    "SpoolLocked",
    "SpoolStore",
    "SpoolWriter",
]
