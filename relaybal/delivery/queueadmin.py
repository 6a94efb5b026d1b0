"""Queue administration: what ``show queue`` and friends print and do.

Used by the runtime API (``show queue``, ``show message``, ``flush queue``,
``hold message``, ``release message``, ``delete message``) and so by
``relaybal queue list|show|flush|hold|release|delete``.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaybal.delivery.scheduler import Scheduler
from relaybal.spool.message import QueuedMessage

log = Logger()

QUEUE_HEADER = "# queue_id state size age sender recipients pending next_attempt last_reply"


def _when(t: float) -> str:
    if t in (0.0, float("inf")):
        return "-" if t == 0.0 else "held"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _token(text: str | None) -> str:
    """A field without spaces (the runtime API's lists are space-separated)."""
    if not text:
        return "-"
    return text.replace(" ", "_").replace("\n", "_")


def _sender(message: QueuedMessage) -> str:
    return f"<{message.envelope.sender}>" if str(message.envelope.sender) else "<>"


def queue_lines(scheduler: Scheduler, now: float) -> list[str]:
    """One line per queued message, oldest first (``show queue``)."""
    lines = [QUEUE_HEADER]
    for message in scheduler.store.messages():
        pending = message.pending
        last = next(
            (message.recipients[i].reply for i in pending if message.recipients[i].reply),
            None,
        )
        due = message.next_attempt
        lines.append(
            " ".join(
                (
                    message.queue_id,
                    scheduler.state_of(message.queue_id),
                    str(message.size),
                    f"{max(0, int(now - message.envelope.received_at))}s",
                    _token(_sender(message)),
                    str(len(message.recipients)),
                    str(len(pending)),
                    _when(due) if due is not None else "-",
                    _token(last),
                )
            )
        )
    return lines


def message_lines(scheduler: Scheduler, queue_id: str) -> list[str] | None:
    """Everything known about one message (``show message``), None if it is not queued."""
    if queue_id not in scheduler.store:
        return None
    message = scheduler.store.get(queue_id)
    env = message.envelope
    client = f"{env.client[0]}:{env.client[1]}" if env.client is not None else "local"
    lines = [
        f"queue_id: {message.queue_id}",
        f"state: {scheduler.state_of(queue_id)}",
        f"frontend: {env.frontend}",
        f"received: {_when(env.received_at)}",
        f"size: {message.size}",
        f"client: {client}",
        f"helo: {env.helo or '-'}",
        f"user: {env.user or '-'}",
        f"sender: {_sender(message)}",
        f"body: {env.body_type}{' SMTPUTF8' if env.smtputf8 else ''}",
    ]
    for rcpt, state in zip(env.recipients, message.recipients, strict=True):
        lines.append(
            f"recipient: <{rcpt}> {state.status.value} attempts={state.attempts} "
            f"next={_when(state.next_attempt)} reply={state.reply or '-'}"
        )
    return lines


def _logged(d: Deferred[None], what: str) -> None:
    def failed(failure: Failure) -> None:
        log.failure("queue administration: {what} could not be stored", failure, what=what)

    d.addErrback(failed)


def act(scheduler: Scheduler, action: str, ids: Sequence[str]) -> tuple[bool, str]:
    """``hold``, ``release``, ``delete`` or ``flush`` the messages ``ids`` (flush: all when empty).

    Returns (ok, what to say).
    """
    if action == "flush":
        if not ids:
            count = scheduler.flush()
            return True, f"{count} deferred message(s) scheduled for delivery now."
        count = 0
        for queue_id in ids:
            if queue_id not in scheduler.store:
                return False, f"No such message: {queue_id}."
            count += scheduler.flush(queue_id)
        return True, f"{count} message(s) scheduled for delivery now."
    if not ids:
        return False, f"'{action}' needs a queue ID."
    missing = [q for q in ids if q not in scheduler.store]
    if missing:
        return False, f"No such message: {', '.join(missing)}."
    for queue_id in ids:
        if action == "hold":
            _logged(scheduler.hold(queue_id), f"hold {queue_id}")
        elif action == "release":
            _logged(scheduler.release(queue_id), f"release {queue_id}")
        elif action == "delete":
            _logged(scheduler.delete(queue_id), f"delete {queue_id}")
        else:
            return False, f"Unknown action '{action}'."
    done = {"hold": "held", "release": "released", "delete": "deleted"}[action]
    return True, f"{len(ids)} message(s) {done}."
