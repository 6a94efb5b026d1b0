"""A relay frontend draining (SIGTERM): new clients hear 421 4.3.2, transactions in progress finish."""

from __future__ import annotations

from relaybal.relay.testing import RelayHarness


def test_new_clients_are_told_the_service_is_shutting_down() -> None:
    harness = RelayHarness()
    harness.frontend.begin_drain()
    client = harness.connect()
    replies = client.replies()
    assert len(replies) == 1 and replies[0].startswith(b"421 4.3.2 ")
    assert client.closed
    client.lose()
    assert harness.frontend.current == 0


def test_an_idle_session_is_closed_and_one_in_a_transaction_finishes_first() -> None:
    harness = RelayHarness()
    idle = harness.connect()
    idle.send(b"EHLO client.test\r\n")
    busy = harness.connect()
    busy.send(b"EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\n")
    assert busy.codes() == [220, 250, 250, 250]
    harness.frontend.begin_drain()
    assert idle.closed and idle.codes()[-1] == 421
    assert not busy.closed
    busy.send(b"DATA\r\n")
    busy.send(b"Subject: last one\r\n\r\nbody\r\n.\r\n")
    assert busy.codes() == [354, 250]
    assert len(harness.sink.messages) == 1
    busy.send(b"MAIL FROM:<a@client.test>\r\n")
    assert busy.codes() == [421] and busy.closed


def test_quit_still_says_goodbye_while_draining() -> None:
    harness = RelayHarness()
    client = harness.connect()
    client.send(b"EHLO client.test\r\nMAIL FROM:<a@client.test>\r\n")
    harness.frontend.begin_drain()
    client.send(b"RSET\r\nQUIT\r\n")
    assert client.codes()[-2:] == [250, 221]


def test_reply_bytes_are_counted_for_the_stats() -> None:
    harness = RelayHarness()
    client = harness.connect()
    client.send(b"EHLO client.test\r\nQUIT\r\n")
    sent = client.output()
    assert harness.frontend.bytes_out == len(sent) > 0
