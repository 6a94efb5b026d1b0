"""Commit messages to a spool in a loop, printing each acknowledgement, until killed.

Run by ``tests/test_spool_crash.py``, which kills it with SIGKILL at random
points and then checks the spool. Usage::

    python tests/spool_crasher.py SPOOL_DIR SEED

Prints ``ready N`` once the spool is open (N messages recovered), then one
line per acknowledgement, flushed at once: ``C QUEUEID TAG SIZE`` when a
commit fired (the body is :func:`body_for` ``(TAG, SIZE)``) and
``R QUEUEID`` when a removal fired (``r QUEUEID`` says one is starting). Eight writers run concurrently, so
commits share flushes as they do in the daemon; some bodies are large enough
to go to their own files, and small segments make compaction run.
"""

from __future__ import annotations

import os
import random
import sys

from twisted.internet import defer, reactor
from twisted.python.failure import Failure

from relaybal.spool import SpoolStore
from relaybal.spool.testing import sample_envelope

WRITERS = 8


def body_for(tag: str, size: int) -> bytes:
    return random.Random(tag).randbytes(size)


async def writer(store: SpoolStore, seed: str, number: int, acked: list[str], rng: random.Random) -> None:
    n = 0
    while True:
        n += 1
        tag = f"{seed}-{number}-{n}"
        size = rng.randint(20_000, 150_000) if rng.random() < 0.05 else rng.randint(100, 3000)
        body = body_for(tag, size)
        message = store.begin(sample_envelope(recipients=("a@x.test", "b@y.test")))
        position = 0
        while position < size:
            step = rng.randint(1, 9000)
            message.write(body[position : position + step])
            position += step
        queue_id = await message.commit()
        print(f"C {queue_id} {tag} {size}", flush=True)
        acked.append(queue_id)
        roll = rng.random()
        if roll < 0.25 and acked:
            victim = acked.pop(rng.randrange(len(acked)))
            print(f"r {victim}", flush=True)
            await store.remove(victim)
            print(f"R {victim}", flush=True)
        elif roll < 0.4 and acked:
            target = acked[rng.randrange(len(acked))]
            state = store.get(target).recipients[0].deferred(reactor.seconds() + 600, "451 4.3.0 later")
            await store.record(target, {0: state})


def fatal(failure: Failure) -> None:
    failure.printTraceback(file=sys.stderr)
    os._exit(1)  # a broken stdout pipe included: the test reads what was printed before


def main(directory: str, seed: str) -> None:
    store = SpoolStore.open(
        directory, reactor=reactor, segment_size=128 * 1024,
        inline_limit=16 * 1024, spill_chunk=8 * 1024, max_buffered=64 * 1024,
    )  # fmt: skip
    print(f"ready {len(store)}", flush=True)
    acked = [m.queue_id for m in store.messages()]
    rng = random.Random(seed)
    for number in range(WRITERS):
        d = defer.ensureDeferred(writer(store, seed, number, acked, random.Random(rng.random())))
        d.addErrback(fatal)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
