"""The rise/fall counter and check results (pure logic, HAProxy's arithmetic)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaybal.health.state import STATUSES, CheckResult, HealthCounter


def test_a_new_server_is_up_but_falls_at_the_first_failure() -> None:
    """HAProxy starts servers UP with health = rise: one failed check takes them down."""
    counter = HealthCounter.starting(rise=2, fall=3)
    assert counter.up and counter.health == 2 and not counter.fully_up
    outcome = counter.record(False)
    assert outcome.went_down and not counter.up and counter.health == 0
    assert counter.down_transitions == 1 and counter.failed_checks == 1


def test_first_success_makes_a_new_server_fully_up_without_a_transition() -> None:
    counter = HealthCounter.starting(rise=2, fall=3)
    outcome = counter.record(True)
    assert outcome.changed and not outcome.went_up and not outcome.went_down
    assert counter.fully_up and counter.health == 4


def test_fall_consecutive_failures_take_a_healthy_server_down() -> None:
    counter = HealthCounter.starting(rise=2, fall=3)
    counter.record(True)
    assert [counter.record(False).went_down for _ in range(3)] == [False, False, True]
    assert not counter.up


def test_a_success_between_failures_restarts_the_fall_count() -> None:
    counter = HealthCounter.starting(rise=2, fall=3)
    counter.record(True)
    counter.record(False)
    counter.record(False)
    counter.record(True)  # back to full health
    assert counter.fully_up
    assert [counter.record(False).went_down for _ in range(3)] == [False, False, True]


def test_rise_consecutive_successes_bring_a_down_server_up() -> None:
    counter = HealthCounter.starting(rise=3, fall=2)
    counter.record(False)
    assert [counter.record(True).went_up for _ in range(3)] == [False, False, True]
    assert counter.fully_up


def test_a_failure_while_rising_starts_the_rise_count_again() -> None:
    counter = HealthCounter.starting(rise=3, fall=2)
    counter.record(False)
    counter.record(True)
    counter.record(True)
    assert counter.record(False).changed and counter.health == 0
    assert [counter.record(True).went_up for _ in range(3)] == [False, False, True]


def test_failures_of_a_down_server_change_nothing() -> None:
    counter = HealthCounter.starting(rise=2, fall=2)
    counter.record(False)
    before = counter.failed_checks
    outcome = counter.record(False)
    assert not outcome.changed and counter.failed_checks == before and counter.down_transitions == 1


def test_intervals_follow_haproxy_inter_fastinter_downinter() -> None:
    counter = HealthCounter.starting(rise=2, fall=3)
    assert counter.interval(10, 1, 30) == 1  # unproven: changing
    counter.record(True)
    assert counter.interval(10, 1, 30) == 10  # fully up
    counter.record(False)
    assert counter.interval(10, 1, 30) == 1  # going down
    counter.record(False)
    counter.record(False)
    assert counter.interval(10, 1, 30) == 30  # fully down
    counter.record(True)
    assert counter.interval(10, 1, 30) == 1  # coming up


def test_status_text_shows_progress_like_show_stat() -> None:
    counter = HealthCounter.starting(rise=2, fall=3)
    assert counter.status_text() == "UP 1/3"
    counter.record(True)
    assert counter.status_text() == "UP"
    counter.record(False)
    assert counter.status_text() == "UP 2/3"
    counter.record(False)
    counter.record(False)
    assert counter.status_text() == "DOWN"
    counter.record(True)
    assert counter.status_text() == "DOWN 1/2"


def test_force_and_restart() -> None:
    counter = HealthCounter.starting(rise=2, fall=3)
    assert counter.force(False).went_down and counter.health == 0
    assert counter.force(True).went_up and counter.fully_up
    assert not counter.force(True).went_up
    counter.record(False)
    counter.restart()
    assert counter.up and counter.health == counter.rise


def test_restore_gives_points_back_only_while_up() -> None:
    counter = HealthCounter.starting(rise=2, fall=3)
    counter.record(True)
    counter.record(False)
    counter.record(False)
    assert counter.restore(2).changed and counter.fully_up
    counter.force(False)
    assert not counter.restore(5).changed and counter.health == 0


def test_starting_rejects_zero() -> None:
    with pytest.raises(ValueError):
        HealthCounter.starting(0, 1)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 6),
    st.lists(st.booleans(), max_size=60),
)
def test_counter_matches_a_consecutive_run_model(rise: int, fall: int, results: list[bool]) -> None:
    """UP/DOWN changes exactly when `fall` failures (or `rise` successes) come in a row.

    Model: starting up-but-unproven (one failure away from down), a server goes
    down after `fall` consecutive failures once proven, up after `rise`
    consecutive successes while down; the health stays within 0..rise+fall-1.
    """
    counter = HealthCounter.starting(rise, fall)
    up = True
    proven = False
    run_fail = 0
    run_ok = 0
    for passed in results:
        outcome = counter.record(passed)
        if passed:
            run_ok += 1
            run_fail = 0
            if up:
                proven = True
            elif run_ok >= rise:
                up, proven = True, True
                assert outcome.went_up
        else:
            run_fail += 1
            run_ok = 0
            if up and (not proven or run_fail >= fall):
                up = False
                assert outcome.went_down
        assert counter.up == up
        assert 0 <= counter.health <= rise + fall - 1


def test_check_result_reason_reads_like_haproxy() -> None:
    result = CheckResult("L7STS", info='4.3.2 "busy"', code=421, duration=0.0123)
    assert result.reason() == (
        'reason: Layer7 wrong status, code: 421, info: "4.3.2 \\"busy\\"", check duration: 12ms'
    )
    assert not result.passed
    refused = CheckResult("L4CON", info="Connection refused", code=None)
    assert refused.reason() == (
        'reason: Layer4 connection problem, info: "Connection refused", check duration: 0ms'
    )
    # A reply code is shown only with the layer-7 data statuses.
    assert "code" not in CheckResult("L7TOUT", code=250).reason()
    assert CheckResult("L7OK", code=250).passed and CheckResult("L4OK").passed


def test_status_numbers_are_haproxys() -> None:
    assert {code: s.number for code, s in STATUSES.items()} == {
        "UNK": 0, "INI": 1, "HANA": 4, "SOCKERR": 5, "L4OK": 6, "L4TOUT": 7, "L4CON": 8,
        "L6OK": 9, "L6TOUT": 10, "L6RSP": 11, "L7TOUT": 12, "L7RSP": 13, "L7OK": 15,
        "L7OKC": 16, "L7STS": 17,
    }  # fmt: skip
    with pytest.raises(ValueError):
        CheckResult("L9OK")
