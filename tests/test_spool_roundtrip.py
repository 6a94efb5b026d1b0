"""Round trips through the spool and its format: what is read back is what was written."""

from __future__ import annotations

import itertools
import os
import random
import tempfile
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relaybal.relay.interfaces import Envelope, TLSInfo
from relaybal.smtp.wire import Mailbox
from relaybal.spool import RecipientState, RecipientStatus, SpoolStore
from relaybal.spool import format as fmt
from relaybal.spool.message import QueuedMessage
from relaybal.spool.testing import ManualOffloader

# Nothing here depends on a real disk's durability: a RAM-backed directory keeps it quick.
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None

# Any text, lone surrogates included (a surrogate-escaped HELO argument, say).
text = st.text(st.characters(exclude_categories=()), max_size=40)
mailboxes = st.builds(Mailbox, text, text)
envelopes = st.builds(
    Envelope,
    sender=mailboxes,
    recipients=st.lists(mailboxes, min_size=1, max_size=5).map(tuple),
    mail_params=st.dictionaries(text, st.none() | text, max_size=4),
    smtputf8=st.booleans(),
    body_type=st.sampled_from(["7BIT", "8BITMIME", "BINARYMIME"]),
    frontend=text,
    client=st.none() | st.tuples(text, st.integers(0, 65535)),
    helo=st.none() | text,
    tls=st.none() | st.builds(TLSInfo, text, text, st.integers(0, 4096)),
    user=st.none() | text,
    received_at=st.floats(allow_nan=False),
)
states = st.builds(
    RecipientState,
    st.sampled_from(list(RecipientStatus)),
    st.integers(0, 1000),
    st.floats(allow_nan=False),
    st.none() | text,
)


@given(envelopes, st.lists(states, min_size=5, max_size=5), st.binary(max_size=300), st.integers(0, 10**6))
def test_a_message_record_decodes_to_what_was_encoded(
    envelope: Envelope, recipient_states: list[RecipientState], body: bytes, size_extra: int
) -> None:
    recipients = tuple(recipient_states[: len(envelope.recipients)])
    message = QueuedMessage("4ZQ7KXB2M1", envelope, recipients, len(body))
    record, body_at = fmt.encode_message(message, body)
    assert record[body_at:] == body
    decoded, body_start = fmt.decode_message(record[fmt.RECORD_HEADER_SIZE :])
    assert decoded == message and body_start + fmt.RECORD_HEADER_SIZE == body_at
    external = QueuedMessage("4ZQ7KXB2M1", envelope, recipients, size_extra, "4ZQ7KXB2M1")
    assert fmt.decode_message(fmt.encode_message(external)[0][fmt.RECORD_HEADER_SIZE :])[0] == external


@given(st.dictionaries(st.integers(0, 50), states, max_size=5))
def test_a_state_record_decodes_to_what_was_encoded(updates: dict[int, RecipientState]) -> None:
    record = fmt.encode_state("4ZQ7KXB2M1", updates)
    assert fmt.decode_state(record[fmt.RECORD_HEADER_SIZE :]) == ("4ZQ7KXB2M1", updates)


def chunked(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    return [body[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(envelopes, st.binary(max_size=3000), st.lists(st.integers(0, 10**6), max_size=12)),
        min_size=1,
        max_size=6,
    ),
    st.integers(0, 2**32),
)
def test_messages_read_back_as_written_before_and_after_a_restart(
    messages: list[tuple[Envelope, bytes, list[int]]], seed: int
) -> None:
    """Random envelopes, bodies (some past the inline limit) and chunkings, jobs run in random order."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(dir=SCRATCH) as directory:
        pool = ManualOffloader()
        store = SpoolStore.open(
            directory, offloader=pool, inline_limit=1000, spill_chunk=300, max_buffered=1200,
            segment_size=4096,
        )  # fmt: skip
        committed: dict[str, tuple[Envelope, bytes]] = {}
        for envelope, body, cuts in messages:
            writer = store.begin(envelope)
            for piece in chunked(body, cuts):
                writer.write(piece)
                while pool.jobs and rng.random() < 0.5:
                    pool.run_one_of(rng)
            writer.commit().addCallback(lambda q, e=envelope, b=body: committed.__setitem__(q, (e, b)))
        while pool.jobs:
            pool.run_one_of(rng)
        assert len(committed) == len(messages)

        def check(store: SpoolStore, pool: ManualOffloader) -> None:
            assert [m.queue_id for m in store.messages()] == sorted(committed)
            for queue_id, (envelope, body) in committed.items():
                assert store.get(queue_id).envelope == envelope
                out: list[Any] = []
                store.read_body(queue_id).addBoth(out.append)
                pool.run_all()
                assert out == [body]

        check(store, pool)
        store.kill()
        pool = ManualOffloader()
        check(SpoolStore.open(directory, offloader=pool), pool)
