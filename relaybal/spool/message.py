"""What the spool knows about a queued message: its envelope and each recipient's state.

These are plain values: the scheduler reads them with
:meth:`~relaybal.spool.store.SpoolStore.get` and hands new recipient states
back to :meth:`~relaybal.spool.store.SpoolStore.record`.
"""

from __future__ import annotations

import enum

import attrs

from relaybal.relay.interfaces import Envelope


class RecipientStatus(enum.Enum):
    """Where one recipient of a queued message stands."""

    #: Not tried yet.
    QUEUED = "queued"
    #: Tried and refused temporarily (4xx, lost connection); try again at ``next_attempt``.
    DEFERRED = "deferred"
    #: A gateway accepted it: done.
    DELIVERED = "delivered"
    #: Refused for good (5xx, too many attempts, too old): done, a bounce is owed.
    BOUNCED = "bounced"

    @property
    def final(self) -> bool:
        """Delivered or bounced: nothing more is to be done for this recipient."""
        return self in (RecipientStatus.DELIVERED, RecipientStatus.BOUNCED)


@attrs.frozen
class RecipientState:
    """One recipient's delivery state.

    ``attempts`` counts the delivery attempts made so far; ``next_attempt`` is
    the time (seconds since the epoch) before which a deferred recipient is not
    tried again (0 for a new one); ``reply`` is the last reply or error text.
    The helpers return the state after one more attempt.
    """

    status: RecipientStatus = RecipientStatus.QUEUED
    attempts: int = 0
    next_attempt: float = 0.0
    reply: str | None = None

    def delivered(self, reply: str | None = None) -> RecipientState:
        return RecipientState(RecipientStatus.DELIVERED, self.attempts + 1, 0.0, reply)

    def deferred(self, next_attempt: float, reply: str | None = None) -> RecipientState:
        return RecipientState(RecipientStatus.DEFERRED, self.attempts + 1, next_attempt, reply)

    def bounced(self, reply: str | None = None) -> RecipientState:
        return RecipientState(RecipientStatus.BOUNCED, self.attempts + 1, 0.0, reply)


@attrs.frozen
class QueuedMessage:
    """A committed message as the queue holds it (its body is read separately).

    ``recipients[i]`` is the state of ``envelope.recipients[i]``; ``size`` is
    the body's length in octets (the ``Received:`` header included);
    ``body_file`` is the name of its file under ``bodies/`` when the body is
    stored apart from the log (large messages), None when it is in the log.
    """

    queue_id: str
    envelope: Envelope
    recipients: tuple[RecipientState, ...]
    size: int
    body_file: str | None = None

    @property
    def pending(self) -> tuple[int, ...]:
        """Indexes of the recipients that still need a delivery attempt."""
        return tuple(i for i, r in enumerate(self.recipients) if not r.status.final)

    @property
    def finished(self) -> bool:
        """Every recipient is delivered or bounced (the scheduler may remove the message)."""
        return all(r.status.final for r in self.recipients)

    @property
    def next_attempt(self) -> float | None:
        """When the next pending recipient is due (0 = now), None when all are final."""
        due = [r.next_attempt for r in self.recipients if not r.status.final]
        return min(due) if due else None
