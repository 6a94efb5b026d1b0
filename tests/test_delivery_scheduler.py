"""The delivery scheduler over a real spool, with fake gateway connections and a fake clock.

Every spool job runs when the test says so (:class:`ManualOffloader`), the
clock is :class:`twisted.internet.task.Clock`, and each gateway is a
function that answers a transaction (or fails it) the way the test wants.
"""

from __future__ import annotations

import email
import email.policy
from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from relaybal.balance.backend import Backend
from relaybal.config import Address, BackendConfig, ServerConfig
from relaybal.delivery.client import (
    ClientSettings,
    DeliveryError,
    MissingExtension,
    SMTPReply,
    Transaction,
    TransactionResult,
)
from relaybal.delivery.pool import Gateways, delivery_error
from relaybal.delivery.queueadmin import act, message_lines, queue_lines
from relaybal.delivery.scheduler import HELD, Scheduler, backoff
from relaybal.relay.interfaces import Envelope
from relaybal.spool.message import RecipientStatus
from relaybal.spool.store import SpoolStore
from relaybal.spool.testing import ManualOffloader, sample_envelope

OK = SMTPReply(250, "2.1.5", "Ok")
QUEUED = SMTPReply(250, "2.0.0", "Ok: queued")
TEMP = SMTPReply(451, "4.3.0", "Try again later")
PERM = SMTPReply(550, "5.1.1", "User unknown")

Gateway = Callable[[Transaction], "Deferred[TransactionResult]"]


def accept(txn: Transaction) -> Deferred[TransactionResult]:
    return succeed(TransactionResult(recipients=tuple(OK for _ in txn.recipients), data=QUEUED))


def refuse_temporarily(txn: Transaction) -> Deferred[TransactionResult]:
    return succeed(TransactionResult(recipients=tuple(TEMP for _ in txn.recipients), data=None))


def lose_after_dot(txn: Transaction) -> Deferred[TransactionResult]:
    return fail(DeliveryError("connection lost after the final dot", after_dot=True, retry_elsewhere=True))


class FakeConnection:
    def __init__(self, world: World, server: str) -> None:
        self.world = world
        self.server = server
        self.usable = True
        self.on_lost: Any = None
        self.messages = 0
        self.bound: str | None = None  # the client an XCLIENT session is stuck with, if any

    def can_carry(self, client: Any) -> bool:
        return self.bound is None or (client is not None and client.addr == self.bound)

    def deliver(self, txn: Transaction) -> Deferred[TransactionResult]:
        self.world.seen.append((self.server, txn))
        source = txn.body()

        def read(data: bytes) -> Deferred[TransactionResult]:
            source.close()
            self.world.bodies[txn.queue_id] = data
            return self.world.gateways[self.server](txn)

        return source.read(10**8).addCallback(read)

    def quit(self) -> Deferred[None]:
        self.usable = False
        return succeed(None)

    def abort(self) -> None:
        self.usable = False


class World:
    """A spool, a backend of gateways, the scheduler, and what each gateway saw."""

    def __init__(
        self,
        tmp_path: Any,
        names: tuple[str, ...] = ("gw1", "gw2", "gw3"),
        weights: tuple[int, ...] | None = None,
        **backend: Any,
    ) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.offloader = ManualOffloader()
        path = str(tmp_path / "spool")
        self.store = SpoolStore.open(path, offloader=self.offloader, clock=self.clock.seconds)
        servers = tuple(
            ServerConfig(name=n, address=Address("127.0.0.1", 2500 + i), weight=weights[i] if weights else 1)
            for i, n in enumerate(names)
        )
        self.backend = Backend(BackendConfig(name="gateways", servers=servers, **backend), self.clock)
        self.gateways: dict[str, Gateway] = dict.fromkeys(names, accept)
        self.seen: list[tuple[str, Transaction]] = []
        self.bodies: dict[str, bytes] = {}
        self.connects: Counter[str] = Counter()
        self.refuse_connect: set[str] = set()

        def connector(host: str, port: int, settings: ClientSettings) -> Deferred[Any]:
            name = names[port - 2500]
            self.connects[name] += 1
            if name in self.refuse_connect:
                return fail(delivery_error("connection refused"))
            return succeed(FakeConnection(self, name))

        self.pools = Gateways(self.clock, hostname="relay.test", backends=lambda: {"gateways": self.backend},
                              connector=connector)  # fmt: skip
        self.scheduler = Scheduler(
            self.store,
            self.clock,
            hostname="relay.test",
            backend_for=lambda frontend: self.backend if frontend == "relay" else None,
            backends=lambda: {"gateways": self.backend},
            gateways=self.pools,
        )

    def queue(self, count: int = 1, envelope: Envelope | None = None, body: bytes | None = None) -> list[str]:
        ids: list[str] = []
        for n in range(count):
            env = envelope or sample_envelope(received_at=self.clock.seconds())
            writer = self.store.begin(env)
            writer.write(body if body is not None else b"Subject: test %d\r\n\r\nHello\r\n" % n)
            writer.commit().addCallback(ids.append)
        self.settle()
        assert len(ids) == count
        return ids

    def settle(self) -> None:
        """Run spool jobs and zero-delay calls until nothing is left to do."""
        for _ in range(10000):
            ran = self.offloader.run_all()
            self.clock.advance(0)
            if not ran and not self.offloader.jobs and not [c for c in self.clock.getDelayedCalls()
                                                             if c.getTime() <= self.clock.seconds()]:
                return
        raise AssertionError("did not settle")

    def delivered_to(self) -> Counter[str]:
        return Counter({s.name: self.pools.counters_of(s).messages for s in self.backend.servers})


@pytest.fixture
def world(tmp_path: Any) -> World:
    return World(tmp_path)


def test_equal_weights_spread_messages_exactly(world: World) -> None:
    world.scheduler.start()
    world.queue(300)
    world.settle()
    assert world.delivered_to() == {"gw1": 100, "gw2": 100, "gw3": 100}
    assert len(world.store) == 0
    assert world.scheduler.stats.delivered == 300


def test_weights_are_followed_exactly(tmp_path: Any) -> None:
    w = World(tmp_path, weights=(1, 2, 3))
    w.scheduler.start()
    w.queue(600)
    w.settle()
    assert w.delivered_to() == {"gw1": 100, "gw2": 200, "gw3": 300}


def test_connections_are_reused_and_bounded(world: World) -> None:
    world.scheduler.start()
    world.queue(90)
    world.settle()
    # One connection per gateway suffices when every transaction finishes at once.
    assert all(world.connects[name] <= 4 for name in ("gw1", "gw2", "gw3"))
    assert sum(world.connects.values()) < 90


def test_temporary_refusal_moves_to_another_gateway_at_once(world: World) -> None:
    world.gateways["gw2"] = refuse_temporarily
    world.scheduler.start()
    world.queue(30)
    world.settle()
    assert len(world.store) == 0
    assert world.delivered_to()["gw2"] == 0
    assert sum(world.delivered_to().values()) == 30
    assert world.pools.counters_of(world.backend.servers[1]).deferred == 10


def test_unreachable_gateway_moves_to_another(world: World) -> None:
    world.refuse_connect.add("gw1")
    world.scheduler.start()
    world.queue(30)
    world.settle()
    assert len(world.store) == 0
    assert world.delivered_to()["gw1"] == 0


def test_all_gateways_refusing_defers_with_backoff_then_delivers(world: World) -> None:
    for name in world.gateways:
        world.gateways[name] = refuse_temporarily
    world.scheduler.start()
    (queue_id,) = world.queue(1)
    world.settle()
    message = world.store.get(queue_id)
    assert message.recipients[0].status is RecipientStatus.DEFERRED
    assert message.recipients[0].attempts == 1
    assert message.recipients[0].next_attempt == world.clock.seconds() + 60
    assert world.scheduler.state_of(queue_id) == "deferred"
    # A round tried every gateway once (retries = 3 allows them all).
    assert [s for s, _ in world.seen] == ["gw1", "gw2", "gw3"] or len(world.seen) == 3
    world.gateways["gw1"] = accept
    world.clock.advance(59)
    world.settle()
    assert queue_id in world.store
    world.clock.advance(1)
    world.settle()
    assert queue_id not in world.store


def test_backoff_schedule_repeats_its_last_step() -> None:
    schedule = (60.0, 300.0)
    assert [backoff(schedule, n) for n in (1, 2, 3, 10)] == [60.0, 300.0, 300.0, 300.0]


def test_only_failed_recipients_are_retried(world: World) -> None:
    calls: list[tuple[str, ...]] = []

    def half(txn: Transaction) -> Deferred[TransactionResult]:
        calls.append(txn.recipients)
        replies = tuple(OK if r.startswith("a") else TEMP for r in txn.recipients)
        return succeed(TransactionResult(recipients=replies, data=QUEUED))

    for name in world.gateways:
        world.gateways[name] = half
    world.scheduler.start()
    env = sample_envelope(recipients=("a@example.org", "b@example.org"), received_at=world.clock.seconds())
    (queue_id,) = world.queue(1, env)
    world.settle()
    assert calls[0] == ("a@example.org", "b@example.org")
    assert all(c == ("b@example.org",) for c in calls[1:])
    states = world.store.get(queue_id).recipients
    assert states[0].status is RecipientStatus.DELIVERED
    assert states[1].status is RecipientStatus.DEFERRED


def _bounces(world: World) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(world.bodies[txn.queue_id], policy=email.policy.default)  # type: ignore[misc]
        for _, txn in world.seen
        if txn.sender == ""
    ]


def test_permanent_refusal_bounces_to_the_sender(world: World) -> None:
    def refuse_b(txn: Transaction) -> Deferred[TransactionResult]:
        replies = tuple(PERM if r.startswith("b") else OK for r in txn.recipients)
        return succeed(TransactionResult(recipients=replies, data=QUEUED))

    world.gateways = dict.fromkeys(world.gateways, refuse_b)
    world.scheduler.start()
    env = sample_envelope(recipients=("a@example.org", "b@example.org"), received_at=world.clock.seconds())
    (queue_id,) = world.queue(1, env)
    world.settle()
    assert queue_id not in world.store
    bounces = [txn for _, txn in world.seen if txn.sender == ""]
    assert len(bounces) == 1 and bounces[0].recipients == ("app@example.test",)
    (report,) = _bounces(world)
    assert report.get_content_type() == "multipart/report"
    assert "b@example.org" in report.as_string() and "5.1.1" in report.as_string()
    assert world.scheduler.stats.bounces_sent == 1


def test_no_bounce_for_a_null_sender(world: World) -> None:
    world.gateways = dict.fromkeys(
        world.gateways,
        lambda txn: succeed(TransactionResult(recipients=tuple(PERM for _ in txn.recipients), data=None)),
    )
    world.scheduler.start()
    (queue_id,) = world.queue(1, sample_envelope(sender="", received_at=world.clock.seconds()))
    world.settle()
    assert queue_id not in world.store
    assert world.scheduler.stats.bounces_sent == 0
    assert len(world.seen) == 1  # a 5xx is not tried elsewhere


def test_max_attempts_bounces(tmp_path: Any) -> None:
    w = World(tmp_path, max_attempts=2)
    w.gateways = dict.fromkeys(w.gateways, refuse_temporarily)
    w.scheduler.start()
    (queue_id,) = w.queue(1)
    w.settle()
    assert queue_id in w.store
    w.clock.advance(60)
    w.settle()
    assert queue_id not in w.store
    assert w.scheduler.stats.bounces_sent == 1
    assert w.scheduler.stats.bounced == 1


def test_max_queue_time_bounces(tmp_path: Any) -> None:
    w = World(tmp_path, max_queue_time=100.0)
    w.gateways = dict.fromkeys(w.gateways, refuse_temporarily)
    w.scheduler.start()
    (queue_id,) = w.queue(1)
    w.clock.advance(60)
    w.settle()
    assert queue_id in w.store
    w.clock.advance(120)
    w.settle()
    assert queue_id not in w.store and w.scheduler.stats.bounces_sent == 1


def test_loss_after_the_dot_is_retried_and_counted(world: World) -> None:
    world.gateways["gw1"] = lose_after_dot
    world.scheduler.start()
    world.queue(3)
    world.settle()
    assert len(world.store) == 0
    assert world.scheduler.stats.possible_duplicates == 1
    assert world.pools.counters_of(world.backend.servers[0]).possible_duplicates == 1


def test_missing_extension_everywhere_bounces_with_the_right_status(world: World) -> None:
    def lacks(txn: Transaction) -> Deferred[TransactionResult]:
        if txn.sender == "":
            return accept(txn)
        return fail(MissingExtension("SMTPUTF8"))

    world.gateways = dict.fromkeys(world.gateways, lacks)
    world.scheduler.start()
    (queue_id,) = world.queue(1)
    world.settle()
    assert queue_id not in world.store
    (report,) = _bounces(world)
    assert "5.6.7" in report.as_string()


def test_missing_extension_on_one_gateway_goes_to_another(world: World) -> None:
    def lacks(txn: Transaction) -> Deferred[TransactionResult]:
        return fail(MissingExtension("8BITMIME"))

    world.gateways["gw1"] = lacks
    world.scheduler.start()
    world.queue(6)
    world.settle()
    assert len(world.store) == 0 and world.delivered_to()["gw1"] == 0


def test_queue_found_at_start_is_delivered(world: World) -> None:
    ids = world.queue(5)
    assert len(world.store) == 5
    world.scheduler.start()
    world.settle()
    assert len(world.store) == 0 and {txn.queue_id for _, txn in world.seen} == set(ids)


def test_messages_wait_while_no_gateway_is_usable(world: World) -> None:
    for server in world.backend.servers:
        server.set_admin_state("maint")
    world.scheduler.start()
    (queue_id,) = world.queue(1)
    world.settle()
    assert queue_id in world.store and not world.seen
    assert world.store.get(queue_id).recipients[0].attempts == 0  # waiting is not an attempt
    world.backend.servers[2].set_admin_state("ready")
    world.settle()
    assert queue_id not in world.store and world.seen[0][0] == "gw3"


def test_hold_release_delete_and_flush(world: World) -> None:
    world.gateways = dict.fromkeys(world.gateways, refuse_temporarily)
    world.scheduler.start()
    a, b, c = world.queue(3)
    world.settle()
    assert {world.scheduler.state_of(q) for q in (a, b, c)} == {"deferred"}
    ok, _ = act(world.scheduler, "hold", [a])
    world.settle()
    assert ok and world.scheduler.state_of(a) == "held"
    assert world.store.get(a).recipients[0].next_attempt == HELD
    ok, text = act(world.scheduler, "delete", [b])
    world.settle()
    assert ok and b not in world.store and world.scheduler.stats.bounces_sent == 0
    world.gateways = dict.fromkeys(world.gateways, accept)
    ok, text = act(world.scheduler, "flush", [])
    world.settle()
    assert ok and text.startswith("1 ") and c not in world.store
    assert a in world.store  # held messages are not flushed
    world.clock.advance(10_000)
    world.settle()
    assert a in world.store
    ok, _ = act(world.scheduler, "release", [a])
    world.settle()
    assert ok and a not in world.store
    assert act(world.scheduler, "hold", ["NOSUCH"]) == (False, "No such message: NOSUCH.")


def test_queue_listing(world: World) -> None:
    world.gateways = dict.fromkeys(world.gateways, refuse_temporarily)
    world.scheduler.start()
    (queue_id,) = world.queue(1)
    world.settle()
    lines = queue_lines(world.scheduler, world.clock.seconds())
    assert lines[0].startswith("# queue_id ")
    fields = lines[1].split()
    assert fields[0] == queue_id and fields[1] == "deferred" and fields[4] == "<app@example.test>"
    assert len(fields) == len(lines[0].split()) - 1
    shown = message_lines(world.scheduler, queue_id)
    assert shown is not None
    assert any(line.startswith("recipient: <user@example.org> deferred") for line in shown)
    assert message_lines(world.scheduler, "NOSUCH") is None


def test_roundrobin_waits_for_the_chosen_gateway_then_skips_a_stalled_one(world: World) -> None:
    stuck: list[Deferred[TransactionResult]] = []

    def hang(txn: Transaction) -> Deferred[TransactionResult]:
        d: Deferred[TransactionResult] = Deferred()
        stuck.append(d)
        return d

    world.gateways["gw2"] = hang
    world.scheduler.start()
    world.queue(60)
    world.settle()
    pool = world.pools.pool(world.backend.servers[1])
    capacity = pool.capacity
    # One transaction runs on each of its connections, the rest of its share waits in its queue.
    assert len(stuck) == pool.size and pool.in_flight == capacity
    # Until gw2 counts as stalled the rotation waits for it: nothing passes it by.
    assert len(world.store) > 0
    world.clock.advance(world.scheduler.stall_after)
    world.settle()
    assert len(world.store) == capacity  # only those held by the stalled gateway remain
    while stuck:
        stuck.pop().callback(TransactionResult(recipients=(OK,), data=QUEUED))
        world.settle()
    assert len(world.store) == 0


def test_leastconn_prefers_the_gateway_with_fewest_in_flight(tmp_path: Any) -> None:
    w = World(tmp_path, balance="leastconn")
    slow: list[Deferred[TransactionResult]] = []

    def hang(txn: Transaction) -> Deferred[TransactionResult]:
        d: Deferred[TransactionResult] = Deferred()
        slow.append(d)
        return d

    w.gateways["gw1"] = hang
    w.scheduler.start()
    w.queue(60)
    w.settle()
    pool = w.pools.pool(w.backend.servers[0])
    # The hung gateway keeps what it was given; everything else goes to the gateways that finish.
    assert 1 <= len(slow) == pool.in_flight == len(w.store) <= pool.capacity
    assert w.delivered_to()["gw2"] + w.delivered_to()["gw3"] == 60 - pool.in_flight


def test_stop_waits_for_running_transactions(world: World) -> None:
    pending: list[Deferred[TransactionResult]] = []

    def hang(txn: Transaction) -> Deferred[TransactionResult]:
        d: Deferred[TransactionResult] = Deferred()
        pending.append(d)
        return d

    world.gateways = dict.fromkeys(world.gateways, hang)
    world.scheduler.start()
    world.queue(3)
    world.settle()
    stopped = world.scheduler.stop()
    world.settle()
    assert not stopped.called and len(pending) == 3
    for d in pending:
        d.callback(TransactionResult(recipients=(OK,), data=QUEUED))
    world.settle()
    assert stopped.called and len(world.store) == 0


def test_transaction_carries_the_envelope(world: World) -> None:
    world.scheduler.start()
    (queue_id,) = world.queue(1, body=b"Subject: x\r\n\r\n.dot line\r\n")
    world.settle()
    (_, txn), = world.seen
    assert txn.queue_id == queue_id and txn.sender == "app@example.test"
    assert txn.recipients == ("user@example.org",) and txn.body_type == "8BITMIME"
    assert txn.client is not None
    assert txn.client.addr == "192.0.2.10" and txn.client.helo == "app.example.test"
    assert txn.size == len(b"Subject: x\r\n\r\n.dot line\r\n")


def test_delivery_error_without_reply_is_temporary(world: World) -> None:
    def broken(txn: Transaction) -> Deferred[TransactionResult]:
        return fail(delivery_error("protocol error"))

    world.gateways = dict.fromkeys(world.gateways, broken)
    world.scheduler.start()
    (queue_id,) = world.queue(1)
    world.settle()
    assert world.store.get(queue_id).recipients[0].status is RecipientStatus.DEFERRED
    assert isinstance(delivery_error("x"), DeliveryError)


def test_a_connection_bound_to_one_client_is_not_given_another(tmp_path: Any) -> None:
    w = World(tmp_path, names=("gw1",), connections_per_server=1)
    conns: list[FakeConnection] = []

    def connector(host: str, port: int, settings: ClientSettings) -> Deferred[Any]:
        conn = FakeConnection(w, "gw1")
        conn.bound = "192.0.2.10" if not conns else None  # the first one is stuck with client .10
        conns.append(conn)
        return succeed(conn)

    w.pools.connector = connector
    w.scheduler.start()
    w.queue(1)
    other = sample_envelope(received_at=w.clock.seconds())
    other = Envelope(**{**attrs.asdict(other, recurse=False), "client": ("192.0.2.99", 1)})
    w.queue(1, other)
    w.settle()
    assert len(w.store) == 0
    # The pool (one connection allowed) closed the bound connection to open one for the other client.
    assert len(conns) == 2 and not conns[0].usable
    assert [txn.client.addr for _, txn in w.seen if txn.client is not None] == ["192.0.2.10", "192.0.2.99"]


def test_a_message_that_cannot_be_sent_bounces_instead_of_looping(world: World) -> None:
    def unsendable(txn: Transaction) -> Deferred[TransactionResult]:
        if txn.sender == "":
            return accept(txn)
        return fail(DeliveryError("control character in an address"))

    world.gateways = dict.fromkeys(world.gateways, unsendable)
    world.scheduler.start()
    (queue_id,) = world.queue(1)
    world.settle()
    assert queue_id not in world.store and world.scheduler.stats.bounces_sent == 1
