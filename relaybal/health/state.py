"""HAProxy's health model: check statuses, results, and the rise/fall counter.

No reactor and no I/O: a :class:`HealthCounter` is fed pass/fail outcomes and
says when the server it stands for goes UP or DOWN, and how long to wait
before the next check. The arithmetic is HAProxy's (``check.c``), so that
operators' intuitions and ``show servers state`` figures carry over:

* ``health`` runs from 0 to ``rise + fall - 1``; a server is UP at or above
  ``rise``, and a fully healthy one sits at the top;
* a failed check takes one point; when that leaves it below ``rise`` it drops
  straight to 0 and the server is DOWN; hence ``fall`` consecutive failures
  take a fully healthy server down;
* a passed check adds one point; reaching ``rise`` fills it to the top and the
  server is UP; hence ``rise`` consecutive successes bring a DOWN server up
  (a failure in between starts the count again);
* a server starts UP with ``health = rise`` ("up, but not proven"): the first
  failed check takes it down, the first passed one makes it fully healthy.
  Leaving maintenance starts it the same way.
"""

from __future__ import annotations

import attrs

# CHK_RES_* values (srv_check_result in ``show servers state``).
RESULT_UNKNOWN = 0
RESULT_NEUTRAL = 1
RESULT_FAILED = 2
RESULT_PASSED = 3
RESULT_CONDPASS = 4


@attrs.frozen
class CheckStatus:
    """One of HAProxy's check statuses (``HCHK_STATUS_*``)."""

    code: str
    """Short name shown in ``show stat`` (``L7OK``, ``L4CON``, …)."""
    number: int
    """HAProxy's numeric value, shown in ``show servers state``."""
    result: int
    """The ``CHK_RES_*`` value a check ending with this status has."""
    description: str
    """The words HAProxy logs as the reason (``Layer7 wrong status``)."""

    @property
    def reports_code(self) -> bool:
        """Whether a reply code goes with this status (HAProxy's L5-7 data statuses)."""
        return self.number >= 14


_STATUS_LIST = (
    CheckStatus("UNK", 0, RESULT_UNKNOWN, "Unknown"),
    CheckStatus("INI", 1, RESULT_UNKNOWN, "Initializing"),
    CheckStatus("HANA", 4, RESULT_FAILED, "Health analyze"),
    CheckStatus("SOCKERR", 5, RESULT_FAILED, "Socket error"),
    CheckStatus("L4OK", 6, RESULT_PASSED, "Layer4 check passed"),
    CheckStatus("L4TOUT", 7, RESULT_FAILED, "Layer4 timeout"),
    CheckStatus("L4CON", 8, RESULT_FAILED, "Layer4 connection problem"),
    CheckStatus("L6OK", 9, RESULT_PASSED, "Layer6 check passed"),
    CheckStatus("L6TOUT", 10, RESULT_FAILED, "Layer6 timeout"),
    CheckStatus("L6RSP", 11, RESULT_FAILED, "Layer6 invalid response"),
    CheckStatus("L7TOUT", 12, RESULT_FAILED, "Layer7 timeout"),
    CheckStatus("L7RSP", 13, RESULT_FAILED, "Layer7 invalid response"),
    CheckStatus("L7OK", 15, RESULT_PASSED, "Layer7 check passed"),
    CheckStatus("L7OKC", 16, RESULT_CONDPASS, "Layer7 check conditionally passed"),
    CheckStatus("L7STS", 17, RESULT_FAILED, "Layer7 wrong status"),
)

#: Every status by its short name.
STATUSES: dict[str, CheckStatus] = {status.code: status for status in _STATUS_LIST}


def _known_status(instance: object, attribute: object, value: str) -> None:
    if value not in STATUSES:
        raise ValueError(f"unknown check status {value!r} (known: {', '.join(STATUSES)})")


@attrs.frozen
class CheckResult:
    """The outcome of one check (active probe or passive observation)."""

    status: str = attrs.field(validator=_known_status)
    """Short status name, a key of :data:`STATUSES`."""
    info: str = ""
    """What the server said (its reply text) or what went wrong."""
    code: int | None = None
    """The SMTP reply code the verdict is based on, when there was one."""
    duration: float = 0.0
    """Seconds the check took."""
    cert_days: int | None = None
    """``starttls`` checks: whole days until the server's certificate expires."""

    @property
    def check_status(self) -> CheckStatus:
        return STATUSES[self.status]

    @property
    def passed(self) -> bool:
        return self.check_status.result in (RESULT_PASSED, RESULT_CONDPASS)

    def reason(self) -> str:
        """HAProxy's reason clause: ``reason: …, code: N, info: "…", check duration: Nms``."""
        status = self.check_status
        parts = [f"reason: {status.description}"]
        if self.code is not None and status.reports_code:
            parts.append(f"code: {self.code}")
        if self.info:
            parts.append('info: "' + self.info.replace('"', '\\"') + '"')
        parts.append(f"check duration: {int(self.duration * 1000)}ms")
        return ", ".join(parts)


@attrs.frozen
class Outcome:
    """What one recorded result did to a :class:`HealthCounter`."""

    changed: bool = False
    """The health counter moved."""
    went_up: bool = False
    went_down: bool = False


_NOTHING = Outcome()


@attrs.define
class HealthCounter:
    """HAProxy's rise/fall counter for one server (see the module docstring)."""

    rise: int
    fall: int
    health: int = 0
    up: bool = True
    failed_checks: int = 0
    """Failed results that took a point (HAProxy's ``chkfail``)."""
    down_transitions: int = 0
    """UP to DOWN transitions (HAProxy's ``chkdown``)."""

    @classmethod
    def starting(cls, rise: int, fall: int) -> HealthCounter:
        """A counter for a server that starts UP but unproven (``health = rise``)."""
        if rise < 1 or fall < 1:
            raise ValueError("rise and fall must be at least 1")
        return cls(rise=rise, fall=fall, health=rise, up=True)

    @property
    def maximum(self) -> int:
        return self.rise + self.fall - 1

    @property
    def fully_up(self) -> bool:
        return self.up and self.health == self.maximum

    def record(self, passed: bool) -> Outcome:
        """Apply one check result; say whether the server went UP or DOWN."""
        if passed:
            if self.health >= self.maximum:
                return _NOTHING
            self.health += 1
            if self.health >= self.rise:
                self.health = self.maximum
                if not self.up:
                    self.up = True
                    return Outcome(changed=True, went_up=True)
            return Outcome(changed=True)
        if self.health <= 0:
            return _NOTHING
        self.failed_checks += 1
        self.health -= 1
        if self.health < self.rise:
            self.health = 0
            if self.up:
                self.up = False
                self.down_transitions += 1
                return Outcome(changed=True, went_down=True)
        return Outcome(changed=True)

    def restore(self, points: int) -> Outcome:
        """Give back ``points`` taken by failures, without changing UP/DOWN (passive checks)."""
        if not self.up or points <= 0 or self.health >= self.maximum:
            return _NOTHING
        self.health = min(self.maximum, self.health + points)
        return Outcome(changed=True)

    def force(self, up: bool) -> Outcome:
        """Set the server fully UP or fully DOWN at once (``set server … health``)."""
        was_up = self.up
        self.up = up
        self.health = self.maximum if up else 0
        if up and not was_up:
            return Outcome(changed=True, went_up=True)
        if was_up and not up:
            self.down_transitions += 1
            return Outcome(changed=True, went_down=True)
        return Outcome(changed=True)

    def restart(self) -> None:
        """Start over as UP but unproven, as when leaving maintenance."""
        self.up = True
        self.health = self.rise

    def interval(self, inter: float, fastinter: float, downinter: float) -> float:
        """Seconds until the next check: ``inter`` when fully up, ``downinter`` when fully
        down, ``fastinter`` in between (while the state is changing)."""
        if self.up and self.health >= self.maximum:
            return inter
        if not self.up and self.health == 0:
            return downinter
        return fastinter

    def status_text(self) -> str:
        """``show stat``'s status: ``UP``, ``DOWN``, or ``UP 1/3`` (going down: points left
        before DOWN, of ``fall``), ``DOWN 1/2`` (going up: successes so far, of ``rise``)."""
        if self.up:
            if self.health >= self.maximum:
                return "UP"
            return f"UP {self.health - self.rise + 1}/{self.fall}"
        if self.health == 0:
            return "DOWN"
        return f"DOWN {self.health}/{self.rise}"
