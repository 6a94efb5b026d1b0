"""Stick tables: expiry, LRU eviction (fake clock), and stickiness inside Backend.pick."""

from __future__ import annotations

from health_fakes import REFUSED, make_backend
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from relaybal.balance.stick import StickTable
from relaybal.health.state import CheckResult


def test_lookup_returns_what_was_recorded_until_it_expires() -> None:
    table = StickTable(size=10, expire=60)
    table.record(b"192.0.2.1", "a", now=0)
    assert table.lookup(b"192.0.2.1", now=59.9) == "a"
    assert table.lookup(b"192.0.2.1", now=60) is None
    assert len(table) == 0  # an expired entry is removed when met


def test_recording_again_restarts_the_expiry_and_may_change_the_server() -> None:
    table = StickTable(size=10, expire=60)
    table.record(b"k", "a", now=0)
    table.record(b"k", "b", now=50)
    assert table.lookup(b"k", now=100) == "b"
    assert table.lookup(b"k", now=110) is None


def test_full_table_evicts_the_least_recently_used() -> None:
    table = StickTable(size=3, expire=1000)
    for i, key in enumerate([b"1", b"2", b"3"]):
        table.record(key, "a", now=i)
    table.record(b"1", "a", now=10)  # 1 is used again: 2 is now the oldest
    table.record(b"4", "b", now=11)
    assert len(table) == 3 and table.evictions == 1
    assert table.lookup(b"2", now=12) is None
    assert [table.lookup(k, now=12) for k in (b"1", b"3", b"4")] == ["a", "a", "b"]


def test_lookups_do_not_change_eviction_order() -> None:
    table = StickTable(size=2, expire=1000)
    table.record(b"old", "a", now=0)
    table.record(b"new", "a", now=1)
    assert table.lookup(b"old", now=2) == "a"
    table.record(b"newest", "a", now=3)
    assert table.lookup(b"old", now=4) is None and table.lookup(b"new", now=4) == "a"


def test_expired_entries_are_purged_as_new_ones_arrive() -> None:
    table = StickTable(size=100, expire=10)
    for i in range(50):
        table.record(str(i).encode(), "a", now=i * 0.1)
    table.record(b"late", "a", now=12.05)  # entries recorded up to 2.05 have expired
    assert len(table) == 1 + 29
    assert table.entries(now=12.05)[0].key == b"21"


def test_entries_show_time_left_and_remove_clear() -> None:
    table = StickTable(size=10, expire=30)
    table.record(b"a-key", "a", now=0)
    table.record(b"b-key", "b", now=10)
    entries = table.entries(now=20)
    assert [(e.key, e.server, e.expires_in) for e in entries] == [(b"a-key", "a", 10), (b"b-key", "b", 20)]
    assert entries[0].serial != entries[1].serial
    assert table.remove(b"a-key") and not table.remove(b"a-key")
    assert table.clear() == 1 and len(table) == 0


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    st.integers(1, 8),
    st.lists(st.tuples(st.sampled_from([b"k1", b"k2", b"k3", b"k4", b"k5"]), st.floats(0, 5)), max_size=40),
)
def test_table_never_exceeds_its_size_and_never_returns_expired(
    size: int, steps: list[tuple[bytes, float]]
) -> None:
    table = StickTable(size=size, expire=7)
    now = 0.0
    last_use: dict[bytes, float] = {}
    for key, gap in steps:
        now += gap
        table.record(key, "s", now)
        last_use[key] = now
        assert len(table) <= size
        for other, used in last_use.items():
            if table.lookup(other, now) is not None:
                assert now - used < 7


def test_backend_keeps_a_client_on_its_server() -> None:
    backend = make_backend(stick={"size": 100, "expire": "30m"})
    first = backend.pick(b"192.0.2.7")
    assert first is not None
    backend.connected(first, b"192.0.2.7")
    # roundrobin alone would alternate; the stuck client stays.
    assert [backend.pick(b"192.0.2.7") for _ in range(4)] == [first] * 4
    assert backend.pick(b"198.51.100.1") is not first  # other clients are balanced as usual


def test_a_stuck_server_going_down_moves_its_clients_to_a_live_one() -> None:
    backend = make_backend(stick={"size": 100, "expire": "30m"}, check={"kind": "tcp"})
    a = backend.servers[0]
    backend.connected(a, b"client")
    assert backend.pick(b"client") is a
    a.check_done(REFUSED)
    moved = backend.pick(b"client")
    assert moved is backend.servers[1]
    backend.connected(moved, b"client")
    a.check_done(CheckResult("L4OK"))
    a.check_done(CheckResult("L4OK"))
    assert a.up
    assert backend.pick(b"client") is moved  # stays where it was moved


def test_drained_or_excluded_stuck_server_is_not_used() -> None:
    backend = make_backend(stick={"size": 100, "expire": "30m"})
    a, b = backend.servers
    backend.connected(a, b"client")
    assert backend.pick(b"client", exclude=[a]) is b  # a failed attempt redispatches
    a.set_admin_state("drain")
    assert backend.pick(b"client") is b


def test_stuck_to_a_backup_returns_to_actives_when_they_come_back() -> None:
    backend = make_backend(
        [
            {"name": "a", "address": "10.0.0.1:25"},
            {"name": "spare", "address": "10.0.0.9:25", "backup": True},
        ],
        stick={"size": 100, "expire": "30m"},
        check={"kind": "tcp"},
    )
    a, spare = backend.servers
    a.check_done(REFUSED)
    backend.connected(spare, b"client")
    assert backend.pick(b"client") is spare
    a.force_health(True)
    assert backend.pick(b"client") is a


def test_stick_entry_expires_on_the_backend_clock() -> None:
    clock = Clock()
    backend = make_backend(stick={"size": 100, "expire": "10s"}, clock=clock)
    a, b = backend.servers
    backend.connected(b, b"client")
    clock.advance(9)
    assert backend.pick(b"client") is b
    clock.advance(2)
    assert backend.stick is not None and backend.stick.lookup(b"client", clock.seconds()) is None


def test_full_stuck_server_lets_the_algorithm_choose() -> None:
    backend = make_backend(
        [{"name": "a", "address": "10.0.0.1:25", "maxconn": 1}, {"name": "b", "address": "10.0.0.2:25"}],
        stick={"size": 100, "expire": "30m"},
    )
    a, b = backend.servers
    backend.connected(a, b"client")
    a.acquire()
    assert backend.pick(b"client") is b
