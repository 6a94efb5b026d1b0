"""Remote-MTA in bounces: the gateway whose reply decided a recipient's fate, or nothing.

The scheduler over a real spool and cut-through delivery, with the delivery
tests' fake gateways (:class:`test_delivery_scheduler.World`) given the
addresses ``10.0.0.1``, ``10.0.0.2``, ``10.0.0.3``; the bounces they send are
read back from what the gateways received.
"""

from __future__ import annotations

from typing import Any

import attrs
from test_delivery_bounce import parts, status_blocks, text_of
from test_delivery_scheduler import PERM, QUEUED, TEMP, World, accept, refuse_temporarily
from twisted.internet.defer import Deferred, fail, succeed

from relaybal.balance.backend import Backend
from relaybal.config import Address, BackendConfig
from relaybal.delivery.client import MissingExtension, SMTPReply, Transaction, TransactionResult
from relaybal.delivery.cutthrough import CutThroughSink
from relaybal.spool.testing import sample_envelope

OK = SMTPReply(250, "2.1.5", "Ok")
HOSTS = {"gw1": "10.0.0.1", "gw2": "10.0.0.2", "gw3": "10.0.0.3"}


def make_world(tmp_path: Any, names: tuple[str, ...] = ("gw1", "gw2", "gw3"), **backend: Any) -> World:
    """The delivery tests' world, its gateways at 10.0.0.N (the fake connector goes by port)."""
    world = World(tmp_path, names=names, **backend)
    servers = tuple(
        attrs.evolve(server, address=Address(HOSTS[server.name], server.address.port))
        for server in world.backend.config.servers
    )
    world.backend = Backend(BackendConfig(name="gateways", servers=servers, **backend), world.clock)
    return world


def refuse_b(txn: Transaction) -> Deferred[TransactionResult]:
    """Takes every recipient but those starting with ``b``, which it refuses for good."""
    replies = tuple(PERM if r.startswith("b") else OK for r in txn.recipients)
    return succeed(TransactionResult(recipients=replies, data=QUEUED))


def refuse_all_for_good(txn: Transaction) -> Deferred[TransactionResult]:
    if txn.sender == "":
        return accept(txn)
    return succeed(TransactionResult(recipients=tuple(PERM for _ in txn.recipients), data=None))


def but_bounces(gateway: Any) -> Any:
    """``gateway`` for messages, but every bounce (null sender) taken."""

    def answer(txn: Transaction) -> Deferred[TransactionResult]:
        return accept(txn) if txn.sender == "" else gateway(txn)

    return answer


def bounces(world: World) -> list[tuple[str, bytes]]:
    """(the gateway that took it, its raw message) for each bounce sent."""
    return [(server, world.bodies[txn.queue_id]) for server, txn in world.seen if txn.sender == ""]


def recipient_block(raw: bytes, address: str) -> dict[str, str]:
    (block,) = [b for b in status_blocks(raw)[1:] if b.get("Final-Recipient") == f"rfc822; {address}"]
    return block


def remote_mta_lines(raw: bytes) -> list[bytes]:
    return [line for line in raw.split(b"\r\n") if line.lower().startswith(b"remote-mta:")]


def human_text(raw: bytes) -> str:
    return " ".join(text_of(parts(raw)[0]).split())


# --------------------------------------------------------------------------- spooled delivery


def test_a_5xx_from_one_gateway_among_several_names_that_gateway(tmp_path: Any) -> None:
    world = make_world(tmp_path)
    world.gateways["gw2"] = refuse_b
    world.scheduler.start()
    env = sample_envelope(recipients=("a@example.org", "b@example.org"), received_at=world.clock.seconds())
    ids = world.queue(3, env)
    world.settle()
    assert not [q for q in ids if q in world.store]
    # Round robin: one message to each gateway; only gw2 refused b.
    assert sorted(server for server, txn in world.seen if txn.sender != "") == ["gw1", "gw2", "gw3"]
    ((_, raw),) = bounces(world)
    assert b"\r\nRemote-MTA: dns; 10.0.0.2\r\n" in raw
    assert remote_mta_lines(raw) == [b"Remote-MTA: dns; 10.0.0.2"]
    block = recipient_block(raw, "b@example.org")
    assert block["Remote-MTA"] == "dns; 10.0.0.2"
    assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 User unknown"
    assert block["Status"] == "5.1.1"
    assert "<b@example.org>: host 10.0.0.2 said: 550 5.1.1 User unknown" in human_text(raw)


def test_the_gateway_of_the_last_reply_after_a_4xx_elsewhere(tmp_path: Any) -> None:
    world = make_world(tmp_path, balance="first")
    world.gateways["gw1"] = but_bounces(refuse_temporarily)
    world.gateways["gw2"] = refuse_all_for_good
    world.scheduler.start()
    (queue_id,) = world.queue(1)
    world.settle()
    assert queue_id not in world.store
    assert [server for server, txn in world.seen if txn.sender != ""] == ["gw1", "gw2"]
    ((_, raw),) = bounces(world)
    assert remote_mta_lines(raw) == [b"Remote-MTA: dns; 10.0.0.2"]
    block = recipient_block(raw, "user@example.org")
    assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 User unknown"
    assert "host 10.0.0.1" not in human_text(raw)
    assert "host 10.0.0.2 said: 550 5.1.1 User unknown" in human_text(raw)


def test_the_last_reply_wins_across_rounds(tmp_path: Any) -> None:
    world = make_world(tmp_path, balance="first", names=("gw1", "gw2"))
    world.gateways = dict.fromkeys(world.gateways, but_bounces(refuse_temporarily))
    world.scheduler.start()
    (queue_id,) = world.queue(1)
    world.settle()
    assert queue_id in world.store  # deferred: gw1 then gw2 said 4xx
    world.gateways["gw1"] = refuse_all_for_good
    world.clock.advance(60)
    world.settle()
    assert queue_id not in world.store
    ((_, raw),) = bounces(world)
    assert remote_mta_lines(raw) == [b"Remote-MTA: dns; 10.0.0.1"]


def test_expiry_after_4xx_names_the_gateway_of_the_last_4xx(tmp_path: Any) -> None:
    world = make_world(tmp_path, balance="first", names=("gw1", "gw2"), max_attempts=2)
    world.gateways = dict.fromkeys(world.gateways, but_bounces(refuse_temporarily))
    world.scheduler.start()
    (queue_id,) = world.queue(1)
    world.settle()
    world.clock.advance(60)
    world.settle()
    assert queue_id not in world.store
    ((_, raw),) = bounces(world)
    assert remote_mta_lines(raw) == [b"Remote-MTA: dns; 10.0.0.2"]
    block = recipient_block(raw, "user@example.org")
    assert block["Diagnostic-Code"].startswith("smtp; 451 4.3.0 Try again later (delivery time expired")
    assert block["Status"] == "5.3.0"


def test_no_remote_mta_after_connection_failures_only(tmp_path: Any) -> None:
    world = make_world(tmp_path, max_queue_time=100.0)
    world.refuse_connect.update(world.gateways)
    world.scheduler.start()
    (queue_id,) = world.queue(1)
    world.settle()
    world.clock.advance(60)
    world.settle()
    assert queue_id in world.store
    world.clock.advance(120)
    world.settle()
    assert queue_id not in world.store and world.scheduler.stats.bounces_sent == 1
    assert not bounces(world)  # the bounce is queued, and waits for a gateway too
    world.refuse_connect.clear()
    world.clock.advance(60)
    world.settle()
    ((_, raw),) = bounces(world)
    assert remote_mta_lines(raw) == []
    block = recipient_block(raw, "user@example.org")
    assert "Remote-MTA" not in block
    assert "connection refused" in block["Diagnostic-Code"]
    assert "delivery time expired" in block["Diagnostic-Code"]
    assert " said:" not in human_text(raw)


def test_connection_failures_after_a_4xx_forget_the_gateway(tmp_path: Any) -> None:
    """Remote-MTA names the gateway of the reply the bounce quotes, and that is the last failure."""
    world = make_world(tmp_path, balance="first", names=("gw1", "gw2"), max_attempts=2)
    world.gateways = dict.fromkeys(world.gateways, but_bounces(refuse_temporarily))
    world.scheduler.start()
    (queue_id,) = world.queue(1)
    world.settle()
    world.refuse_connect.update(world.gateways)
    world.clock.advance(60)
    world.settle()
    assert queue_id not in world.store
    world.refuse_connect.clear()
    world.clock.advance(60)
    world.settle()
    ((_, raw),) = bounces(world)
    assert remote_mta_lines(raw) == []
    assert "connection refused" in recipient_block(raw, "user@example.org")["Diagnostic-Code"]


def test_no_remote_mta_for_an_extension_no_gateway_offers(tmp_path: Any) -> None:
    world = make_world(tmp_path)

    def lacks(txn: Transaction) -> Deferred[TransactionResult]:
        return accept(txn) if txn.sender == "" else fail(MissingExtension("SMTPUTF8"))

    world.gateways = dict.fromkeys(world.gateways, lacks)
    world.scheduler.start()
    (queue_id,) = world.queue(1)
    world.settle()
    assert queue_id not in world.store
    ((_, raw),) = bounces(world)
    assert remote_mta_lines(raw) == []
    assert recipient_block(raw, "user@example.org")["Status"] == "5.6.7"


def test_only_the_refused_recipients_carry_a_remote_mta(tmp_path: Any) -> None:
    """Two recipients of one message: one refused by gw2, one expired after connection failures."""
    world = make_world(tmp_path, balance="first", names=("gw1", "gw2"), max_attempts=1)
    world.refuse_connect.add("gw1")

    def answer(txn: Transaction) -> Deferred[TransactionResult]:
        if txn.sender == "":
            return accept(txn)
        replies = tuple(PERM if r.startswith("b") else TEMP for r in txn.recipients)
        return succeed(TransactionResult(recipients=replies, data=None))

    world.gateways["gw2"] = answer
    world.scheduler.start()
    env = sample_envelope(recipients=("b@example.org", "c@example.org"), received_at=world.clock.seconds())
    (queue_id,) = world.queue(1, env)
    world.settle()
    assert queue_id not in world.store
    ((_, raw),) = bounces(world)
    # c's last reply is gw2's 4xx (gw1 could not be reached before it): both name gw2.
    assert recipient_block(raw, "b@example.org")["Remote-MTA"] == "dns; 10.0.0.2"
    assert recipient_block(raw, "c@example.org")["Remote-MTA"] == "dns; 10.0.0.2"


# --------------------------------------------------------------------------- cut-through


def cut_through(world: World, recipients: tuple[str, ...]) -> tuple[CutThroughSink, Deferred[str]]:
    sink = CutThroughSink(world.pools, lambda frontend: world.backend, world.clock.seconds, "relay.test")
    writer = sink.begin(sample_envelope(recipients=recipients, received_at=world.clock.seconds()))
    writer.write(b"Subject: cut\r\n\r\nHello\r\n")
    d = writer.commit()
    world.settle()
    return sink, d


def test_cut_through_partial_success_bounce_names_the_refusing_gateway(tmp_path: Any) -> None:
    world = make_world(tmp_path, balance="first")
    world.refuse_connect.add("gw1")
    world.gateways["gw2"] = refuse_b
    sink, d = cut_through(world, ("a@example.org", "b@example.org"))
    answered: list[str] = []
    d.addCallback(answered.append)
    assert len(answered) == 1  # the client got its 250
    assert sink.bounces == 1
    ((_, raw),) = bounces(world)
    assert b"\r\nRemote-MTA: dns; 10.0.0.2\r\n" in raw
    assert remote_mta_lines(raw) == [b"Remote-MTA: dns; 10.0.0.2"]
    assert recipient_block(raw, "b@example.org")["Diagnostic-Code"] == "smtp; 550 5.1.1 User unknown"
    assert "<b@example.org>: host 10.0.0.2 said: 550 5.1.1 User unknown" in human_text(raw)


def test_cut_through_recipient_failing_everywhere_names_the_last_gateway(tmp_path: Any) -> None:
    world = make_world(tmp_path, balance="first")

    def take_a(txn: Transaction) -> Deferred[TransactionResult]:
        replies = tuple(OK if r.startswith("a") else TEMP for r in txn.recipients)
        return succeed(TransactionResult(recipients=replies, data=QUEUED))

    world.gateways = {"gw1": but_bounces(take_a), "gw2": refuse_temporarily, "gw3": refuse_temporarily}
    sink, _ = cut_through(world, ("a@example.org", "c@example.org"))
    assert sink.bounces == 1
    assert [server for server, txn in world.seen if txn.sender != ""] == ["gw1", "gw2", "gw3"]
    ((_, raw),) = bounces(world)
    assert remote_mta_lines(raw) == [b"Remote-MTA: dns; 10.0.0.3"]
    assert recipient_block(raw, "c@example.org")["Diagnostic-Code"] == "smtp; 451 4.3.0 Try again later"
