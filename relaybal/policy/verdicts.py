"""What a relay policy answers: a :class:`Verdict`.

Five kinds decide (or decline to):

=================  ===========================================================
``CONTINUE``       no opinion: the next policy is asked
``PERMIT``         accept (and, before RCPT, allow relaying; see ``docs/plugins.rst``)
``REJECT``         refuse with a ``5xx`` reply
``DEFER``          refuse with a ``4xx`` reply (the client retries later)
``DISCONNECT``     ``421`` and the connection is closed
=================  ===========================================================

and two are *conditional*, as in Postfix's access(5): ``DEFER_IF_PERMIT``
(defer if the stage would otherwise end in acceptance; greylisting) and
``DEFER_IF_REJECT`` (defer instead of a later rejection). They decide nothing
by themselves: the next policy is asked.

Every refusal carries a reply with an RFC 3463 enhanced status code whose
class matches the reply code; a :class:`Verdict` that breaks this cannot be
made (:class:`ValueError`).
"""

from __future__ import annotations

import enum
import re
from typing import Final

import attrs

from relaybal.smtp.wire import Reply

__all__ = [
    "CONTINUE",
    "DEFAULT_ACTION",
    "PERMIT",
    "Kind",
    "Verdict",
    "defer",
    "defer_if_permit",
    "defer_if_reject",
    "disconnect",
    "parse_action",
    "reject",
]

_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$")


class Kind(enum.Enum):
    """The kind of a :class:`Verdict`."""

    CONTINUE = "continue"
    PERMIT = "permit"
    REJECT = "reject"
    DEFER = "defer"
    DISCONNECT = "disconnect"
    DEFER_IF_PERMIT = "defer_if_permit"
    DEFER_IF_REJECT = "defer_if_reject"


#: Kinds that end the asking at a stage.
DECISIVE: Final = frozenset({Kind.PERMIT, Kind.REJECT, Kind.DEFER, Kind.DISCONNECT})


def _check_reply(verdict: Verdict, attribute: attrs.Attribute[Reply | None], value: Reply | None) -> None:
    kind = verdict.kind
    if kind in (Kind.CONTINUE, Kind.PERMIT):
        if value is not None:
            raise ValueError(f"a {kind.value} verdict carries no reply")
        return
    if not isinstance(value, Reply):
        raise ValueError(f"a {kind.value} verdict needs a Reply, not {value!r}")
    m = _STATUS.match(value.status)
    if m is None:
        raise ValueError(f"{value.status!r} is not an enhanced status code (expected e.g. 5.7.1)")
    if m.group(1) != str(value.code)[0]:
        raise ValueError(f"status {value.status} does not match reply code {value.code}")
    if "\r" in value.text or "\n" in value.text:
        raise ValueError("reply text must be one line")
    if kind is Kind.REJECT and not 500 <= value.code <= 559:
        raise ValueError(f"a reject verdict needs a 5xx reply, not {value.code}")
    if kind in (Kind.DEFER, Kind.DEFER_IF_PERMIT, Kind.DEFER_IF_REJECT) and not (
        400 <= value.code <= 459 and value.code != 421
    ):
        raise ValueError(f"a {kind.value} verdict needs a 4xx reply other than 421, not {value.code}")
    if kind is Kind.DISCONNECT and value.code != 421:
        raise ValueError(f"a disconnect verdict needs a 421 reply, not {value.code}")


@attrs.frozen
class Verdict:
    """One policy's answer at one stage. Make them with the module's constructors."""

    kind: Kind
    reply: Reply | None = attrs.field(default=None, validator=_check_reply)

    @property
    def decisive(self) -> bool:
        """Whether it ends the asking at its stage (PERMIT, REJECT, DEFER, DISCONNECT)."""
        return self.kind in DECISIVE

    def __str__(self) -> str:
        if self.reply is None:
            return self.kind.value.upper()
        return f"{self.kind.value.upper()} {self.reply.code} {self.reply.status} {self.reply.text}"


#: No opinion: ask the next policy.
CONTINUE: Final = Verdict(Kind.CONTINUE)
#: Accept; before RCPT, also allow relaying for the session or transaction.
PERMIT: Final = Verdict(Kind.PERMIT)


def reject(text: str = "Access denied", status: str = "5.7.1", code: int = 554) -> Verdict:
    """Refuse for good (``5xx``)."""
    return Verdict(Kind.REJECT, Reply(code, status, text))


def defer(text: str = "Try again later", status: str = "4.7.1", code: int = 450) -> Verdict:
    """Refuse for now (``4xx``, not 421); the client retries."""
    return Verdict(Kind.DEFER, Reply(code, status, text))


def disconnect(text: str = "Closing connection", status: str = "4.7.0") -> Verdict:
    """``421`` and close the connection."""
    return Verdict(Kind.DISCONNECT, Reply(421, status, text))


def defer_if_permit(text: str = "Try again later", status: str = "4.7.1", code: int = 450) -> Verdict:
    """Defer with this reply if the stage would otherwise end in acceptance (greylisting)."""
    return Verdict(Kind.DEFER_IF_PERMIT, Reply(code, status, text))


def defer_if_reject(text: str = "Try again later", status: str = "4.7.1", code: int = 450) -> Verdict:
    """Defer with this reply if the stage would otherwise end in a rejection."""
    return Verdict(Kind.DEFER_IF_REJECT, Reply(code, status, text))


#: What a policy that fails (raises, times out, answers garbage) yields unless configured otherwise.
DEFAULT_ACTION: Final = defer("Error: policy unavailable, try again later", "4.3.0", 451)

_REPLY_TEXT = re.compile(r"^([245]\d\d)(?:\s+([245]\.\d{1,3}\.\d{1,3}))?(?:\s+(.*))?$")


def parse_reply(value: str, default_text: str) -> Reply | None:
    """``"450 4.7.1 text"``, ``"450 text"`` or ``"450"`` as a Reply (None if it is not one).

    A missing enhanced status code becomes ``X.7.1`` (as Postfix does for
    access(5) replies); a missing text becomes ``default_text``.
    """
    m = _REPLY_TEXT.match(value.strip())
    if m is None:
        return None
    code = int(m.group(1))
    status = m.group(2) or f"{m.group(1)[0]}.7.1"
    if status[0] != m.group(1)[0]:
        return None
    return Reply(code, status, (m.group(3) or default_text).strip())


def parse_action(value: object) -> Verdict:
    """A ``default_action`` setting as a verdict; raises ValueError with the expectation.

    Accepted: ``"defer"`` (``451 4.3.0``), ``"reject"`` (``554 5.7.1``),
    ``"disconnect"`` (``421 4.3.0``), ``"continue"`` (no opinion), or a reply
    such as ``"450 4.7.1 Try later"`` / ``"550 5.7.1 No"`` / ``"421 4.3.2 Bye"``.
    Never a permit: a failing policy must not open the relay.
    """
    expected = 'expected "defer", "reject", "disconnect", "continue" or a reply like "450 4.7.1 text"'
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an action ({expected})")
    word = value.strip().lower()
    if word == "defer":
        return DEFAULT_ACTION
    if word == "reject":
        return reject("Error: policy refused", "5.7.1")
    if word == "disconnect":
        return disconnect("Error: policy unavailable", "4.3.0")
    if word in ("continue", "dunno"):
        return CONTINUE
    if word in ("permit", "ok"):
        raise ValueError(f'"{value}" is not allowed: a failing policy never permits ({expected})')
    reply = parse_reply(value, "Error: policy refused")
    if reply is None:
        raise ValueError(f'"{value}" is not an action ({expected})')
    try:
        if reply.code == 421:
            return Verdict(Kind.DISCONNECT, reply)
        if reply.code >= 500:
            return Verdict(Kind.REJECT, reply)
        if reply.code >= 400:
            return Verdict(Kind.DEFER, reply)
    except ValueError as e:
        raise ValueError(f'"{value}": {e} ({expected})') from None
    raise ValueError(f'"{value}" is not a refusal ({expected})')
