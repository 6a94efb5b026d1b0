"""A backend's servers under checks, passive observation, admin states, weights and slowstart.

Everything runs on a fake clock; log lines are captured and compared with
HAProxy's wording.
"""

from __future__ import annotations

import collections

import pytest
from health_fakes import BUSY, PASS, REFUSED, LogCapture, make_backend
from twisted.internet.task import Clock

from relaybal.balance.backend import Server, ServerEvent
from relaybal.health.state import CheckResult

CHECK = {"kind": "smtp", "rise": 2, "fall": 3, "interval": "2s"}


@pytest.fixture
def health_log(monkeypatch: pytest.MonkeyPatch) -> LogCapture:
    return LogCapture.install(monkeypatch)


def picks(backend: object, count: int, key: bytes | None = None) -> list[str]:
    chosen = []
    for _ in range(count):
        server = backend.pick(key)  # type: ignore[attr-defined]
        chosen.append(server.name if server is not None else "-")
    return chosen


def test_failing_checks_mark_down_once_with_haproxys_words(health_log: LogCapture) -> None:
    backend = make_backend(check=CHECK)
    a = backend.servers[0]
    a.check_done(PASS)  # proven: now it takes `fall` failures
    a.check_done(BUSY)
    a.check_done(BUSY)
    assert a.up and a.usable
    a.check_done(BUSY)
    assert not a.up and not a.usable
    a.check_done(BUSY)  # already down: nothing new
    down = [line for line in health_log.lines() if " is DOWN" in line]
    assert down == [
        'Server mx/a is DOWN, reason: Layer7 wrong status, code: 421, info: "4.3.2 busy", '
        "check duration: 5ms. 1 active and 0 backup servers left. 0 sessions active, "
        "0 requeued, 0 remaining in queue."
    ]
    # The failed checks before it were logged as HAProxy does, with the progress.
    assert health_log.lines()[:2] == [
        'Health check for server mx/a failed, reason: Layer7 wrong status, code: 421, info: "4.3.2 busy", '
        "check duration: 5ms, status: 2/3 UP.",
        'Health check for server mx/a failed, reason: Layer7 wrong status, code: 421, info: "4.3.2 busy", '
        "check duration: 5ms, status: 1/3 UP.",
    ]
    assert health_log.levels() == ["warn", "warn", "warn"]
    assert set(picks(backend, 4)) == {"b"}  # traffic moved away


def test_rise_passes_bring_it_back_up_logged_once(health_log: LogCapture) -> None:
    backend = make_backend(check=CHECK)
    a = backend.servers[0]
    a.check_done(REFUSED)
    health_log.clear()
    a.check_done(PASS)
    assert not a.up
    a.check_done(PASS)
    assert a.up and a.usable
    a.check_done(PASS)
    assert health_log.lines() == [
        'Health check for server mx/a succeeded, reason: Layer7 check passed, code: 250, info: "mx ESMTP", '
        "check duration: 2ms, status: 1/2 DOWN.",
        'Server mx/a is UP, reason: Layer7 check passed, code: 250, info: "mx ESMTP", check duration: 2ms. '
        "2 active and 0 backup servers online. 0 sessions requeued, 0 total in queue.",
    ]
    assert set(picks(backend, 4)) == {"a", "b"}


def test_last_active_server_down_runs_on_backup_and_says_so(health_log: LogCapture) -> None:
    backend = make_backend(
        [
            {"name": "a", "address": "10.0.0.1:25"},
            {"name": "spare", "address": "10.0.0.9:25", "backup": True},
        ],
        check=CHECK,
    )
    backend.servers[0].check_done(REFUSED)
    assert health_log.lines()[0].endswith(
        "0 active and 1 backup servers left. Running on backup. 0 sessions active, 0 requeued, "
        "0 remaining in queue."
    )
    assert picks(backend, 2) == ["spare", "spare"]
    health_log.clear()
    backend.servers[1].check_done(REFUSED)
    assert health_log.lines()[0].startswith("Backup Server mx/spare is DOWN")
    assert health_log.lines()[-1] == "backend mx has no server available!"
    assert health_log.levels()[-1] == "error"
    assert not backend.available and backend.down_transitions == 1
    assert backend.pick() is None


def test_backend_downtime_is_counted(health_log: LogCapture) -> None:
    clock = Clock()
    backend = make_backend([{"name": "a", "address": "10.0.0.1:25"}], check=CHECK, clock=clock)
    a = backend.servers[0]
    a.check_done(REFUSED)
    clock.advance(30)
    assert backend.total_downtime() == 30 and a.total_downtime() == 30
    a.check_done(PASS)
    a.check_done(PASS)
    clock.advance(10)
    assert backend.available and backend.total_downtime() == 30 and a.total_downtime() == 30


def test_without_a_check_a_server_is_never_marked_down() -> None:
    backend = make_backend()
    a = backend.servers[0]
    assert a.health is None
    for _ in range(10):
        a.record_failure("Connection refused")
    a.check_done(BUSY)
    assert a.up and a.failures == 10


def test_passive_observation_counts_consecutive_failures(health_log: LogCapture) -> None:
    backend = make_backend(check=CHECK)
    a = backend.servers[0]
    a.check_done(PASS)
    a.record_failure("Connection refused")
    a.record_failure("Connection refused")
    assert a.up and a.health is not None and a.health.health == 2
    a.record_failure("Connection refused")
    assert not a.up
    assert a.last_check is not None and a.last_check.status == "HANA"
    assert health_log.lines()[-1].startswith(
        'Server mx/a is DOWN, reason: Health analyze, info: "3 consecutive connection failures, '
        'last: Connection refused"'
    )


def test_a_real_success_ends_a_run_of_failures() -> None:
    backend = make_backend(check=CHECK)
    a = backend.servers[0]
    a.check_done(PASS)
    for _ in range(5):
        a.record_failure()
        a.record_failure()
        backend.connected(a, None)  # a success in between: the run starts again
    assert a.up and a.health is not None and a.health.fully_up and a.failures == 10


def test_a_real_success_does_not_undo_failed_checks() -> None:
    """Traffic that connects must not keep up a server whose checks fail (e.g. 421 at the banner)."""
    backend = make_backend(check=CHECK)
    a = backend.servers[0]
    a.check_done(PASS)
    a.check_done(BUSY)
    backend.connected(a, None)
    a.check_done(BUSY)
    backend.connected(a, None)
    a.check_done(BUSY)
    assert not a.up


def test_observe_false_ignores_real_failures() -> None:
    backend = make_backend(check={**CHECK, "observe": False})
    a = backend.servers[0]
    for _ in range(5):
        a.record_failure()
    assert a.up and a.failures == 5


def test_drain_takes_no_new_traffic_but_keeps_the_old(health_log: LogCapture) -> None:
    backend = make_backend(check=CHECK)
    a = backend.servers[0]
    a.check_done(PASS)
    a.acquire()  # an open connection
    assert a.set_admin_state("drain")
    assert not a.set_admin_state("drain")
    assert set(picks(backend, 4)) == {"b"}
    assert a.load == 1 and a.up  # still up, still serving what it has
    a.check_done(BUSY)  # checks go on while draining
    assert a.health is not None and a.health.status_text() == "UP 2/3"
    a.release()
    assert health_log.lines()[0] == (
        "Server mx/a enters drain state. 1 active and 0 backup servers left. 1 sessions active, "
        "0 requeued, 0 remaining in queue."
    )
    a.check_done(PASS)
    a.set_admin_state("ready")
    assert health_log.lines()[-1] == "Server mx/a is UP/READY (leaving forced drain)."
    assert set(picks(backend, 4)) == {"a", "b"}


def test_maint_stops_traffic_and_checks_and_restarts_unproven(health_log: LogCapture) -> None:
    backend = make_backend(check=CHECK)
    a = backend.servers[0]
    a.check_done(PASS)
    a.set_admin_state("maint")
    assert not a.up and not a.usable
    assert health_log.lines()[-1].startswith("Server mx/a is going DOWN for maintenance. 1 active")
    a.check_done(BUSY)  # ignored in maintenance
    assert a.health is not None and a.health.fully_up
    a.set_admin_state("ready")
    assert a.up and a.health.health == a.health.rise  # unproven: one failure takes it down
    assert health_log.lines()[-1] == "Server mx/a is UP/READY (leaving forced maintenance)."
    a.check_done(BUSY)
    assert not a.up


def test_maint_of_a_down_server_is_worded_differently(health_log: LogCapture) -> None:
    backend = make_backend(check=CHECK)
    a = backend.servers[0]
    a.check_done(REFUSED)
    a.set_admin_state("maint")
    assert health_log.lines()[-1] == "Server mx/a was DOWN and now enters maintenance."


def test_configured_maint_starts_out_of_service() -> None:
    backend = make_backend(
        [{"name": "a", "address": "10.0.0.1:25", "state": "maint"}, {"name": "b", "address": "10.0.0.2:25"}]
    )
    a = backend.servers[0]
    assert not a.up and a.admin_from_config
    assert set(picks(backend, 3)) == {"b"}
    a.set_admin_state("ready")
    assert a.up and not a.admin_from_config
    with pytest.raises(ValueError):
        a.set_admin_state("sleeping")


def test_runtime_weight_changes_the_share(health_log: LogCapture) -> None:
    backend = make_backend()
    a = backend.servers[0]
    assert a.set_weight(3)
    assert not a.set_weight(3)
    counts = collections.Counter(picks(backend, 400))
    assert counts == {"a": 300, "b": 100}
    assert health_log.lines() == ["Server mx/a weight changed from 1 to 3."]
    a.set_weight(0)
    assert not a.usable and set(picks(backend, 4)) == {"b"}
    with pytest.raises(ValueError):
        a.set_weight(257)


def test_weight_change_rebuilds_the_hash_ring() -> None:
    backend = make_backend(balance="source")
    keys = [f"192.0.2.{i}".encode() for i in range(1, 255)] + [
        f"198.51.100.{i}".encode() for i in range(1, 255)
    ]

    def share_of_a() -> int:
        return sum(1 for key in keys if backend.pick(key).name == "a")  # type: ignore[union-attr]

    before = share_of_a()
    backend.servers[0].set_weight(9)
    after = share_of_a()
    assert before < len(keys) * 0.65 and after > len(keys) * 0.8, (before, after)


def test_slowstart_ramps_after_coming_up_not_at_start() -> None:
    clock = Clock()
    clock.advance(1000)
    backend = make_backend(
        [{"name": "a", "address": "10.0.0.1:25", "weight": 10, "slowstart": "10s"}],
        check=CHECK,
        clock=clock,
    )
    a = backend.servers[0]
    assert a.effective_weight == 10 and not a.ramping  # no slowstart at start-up
    a.check_done(REFUSED)
    clock.advance(5)
    a.check_done(PASS)
    a.check_done(PASS)
    assert a.up and a.ramping
    weights = []
    for _ in range(6):
        weights.append(a.effective_weight)
        clock.advance(2)
    assert weights == [1, 2, 4, 6, 8, 10]
    assert not a.ramping


def test_slowstart_after_maintenance_and_hash_ring_follows_the_ramp() -> None:
    clock = Clock()
    backend = make_backend(
        [
            {"name": "a", "address": "10.0.0.1:25", "weight": 10, "slowstart": "20s"},
            {"name": "b", "address": "10.0.0.2:25", "weight": 10},
        ],
        clock=clock,
        balance="source",
    )
    keys = [f"203.0.113.{i}".encode() for i in range(1, 255)]
    a = backend.servers[0]

    def share_of_a() -> int:
        return sum(1 for key in keys if backend.pick(key).name == "a")  # type: ignore[union-attr]

    a.set_admin_state("maint")
    clock.advance(60)
    a.set_admin_state("ready")
    assert a.ramping
    early = share_of_a()
    clock.advance(10)  # the backend re-reads weights in steps while ramping
    middle = share_of_a()
    clock.advance(10)
    late = share_of_a()
    assert early < 30 < middle < late, (early, middle, late)
    assert not clock.getDelayedCalls()  # the ramp steps stop by themselves


def test_force_health_and_disable_checks(health_log: LogCapture) -> None:
    backend = make_backend(check=CHECK)
    a = backend.servers[0]
    assert a.force_health(False) and not a.up
    assert health_log.lines()[-1].startswith("Server mx/a is DOWN, forced by the runtime API.")
    assert not a.force_health(False)
    assert a.force_health(True) and a.up and a.health is not None and a.health.fully_up
    assert a.set_checks_enabled(False) and not a.set_checks_enabled(False)
    assert health_log.lines()[-1] == "Health checks for server mx/a disabled."
    # Without a check table the forced state simply holds.
    plain = make_backend().servers[0]
    plain.force_health(False)
    assert not plain.up


def test_subscribers_see_every_change() -> None:
    backend = make_backend(check=CHECK)
    seen: list[tuple[str, str]] = []

    def listener(server: Server, event: ServerEvent) -> None:
        seen.append((server.name, event.kind))

    backend.subscribe(listener)
    a = backend.servers[0]
    a.check_done(BUSY)
    a.set_admin_state("drain")
    a.set_weight(2)
    backend.servers[1].check_done(CheckResult("L7OK", code=250))
    backend.unsubscribe(listener)
    a.set_admin_state("ready")
    assert seen == [("a", "down"), ("a", "drain"), ("a", "weight"), ("b", "health")]


def test_starttls_result_records_certificate_days() -> None:
    backend = make_backend(check={**CHECK, "kind": "starttls"})
    a = backend.servers[0]
    a.check_done(CheckResult("L7OK", code=250, cert_days=42))
    assert a.cert_days == 42
    a.check_done(CheckResult("L7OK", code=250))
    assert a.cert_days == 42  # a check without TLS details keeps the last known figure
