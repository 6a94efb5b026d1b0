"""Crash suite: ``kill -9`` relaybal at random moments of a steady relay load, restart it each time.

Python senders (numbered recipients, reused connections) → ``twistd relaybal``
(spool) → three ``smtp-sink``\\ s. After the last restart every message that
was answered ``250`` must reach a sink; the duplicates (a message delivered
again because its outcome was not yet on disk when the process died) are
counted and reported, as are the messages whose reply the kill swallowed.

``make test`` kills 3 times; ``make soak`` keeps the load up for
``RELAYBAL_SOAK_SECONDS`` (default 120) and kills at least
``RELAYBAL_SOAK_KILLS`` (default 12) times, some of them while the daemon is
still starting (recovering its spool).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from peers import RelaybalDaemon, SmtpSink, free_port, wait_until
from soak.common import (
    Arrivals,
    Load,
    choose,
    crash_lines,
    duplicates,
    gateways_toml,
    load_seconds,
    record,
    seeded_random,
    soaking,
)


def relay_config(peer_dir: Path, port: int, sinks: list[SmtpSink]) -> str:
    return f"""
[global]
state_dir = "{peer_dir}/state"
hostname = "relay.test"

[frontend.apps]
mode = "relay"
listen = ["tcp:{port}:interface=127.0.0.1"]
backend = "gw"

{gateways_toml([s.port for s in sinks], options='retry_schedule = ["1s"]')}
"""


def test_kill_9_at_random_moments_loses_nothing_answered_250(
    sink_factory: Callable[..., SmtpSink],
    relaybal_factory: Callable[..., RelaybalDaemon],
    peer_dir: Path,
) -> None:
    rng, seed = seeded_random("crash")
    kills_wanted = choose(3, int(os.environ.get("RELAYBAL_SOAK_KILLS", "12")))
    duration = load_seconds(0.0)
    sinks = [sink_factory() for _ in range(3)]
    arrivals = Arrivals(s.dump_dir for s in sinks if s.dump_dir is not None)
    port = free_port()
    daemon = relaybal_factory(relay_config(peer_dir, port, sinks), wait_ports=[port])
    load = Load(port, senders=6)
    load.start()
    kills = early_kills = 0
    started = time.monotonic()
    try:
        while kills < kills_wanted or time.monotonic() - started < duration:
            # A random moment under load: some messages accepted since the last restart, then a pause.
            wanted = load.tally.snapshot()[1] + 5
            wait_until(lambda n=wanted: load.tally.snapshot()[1] > n, 60, "acceptances after the restart")
            time.sleep(rng.uniform(0.05, 1.5))
            daemon.kill()  # SIGKILL: no drain, no flush
            kills += 1
            if soaking() and rng.random() < 0.25:
                # Killed again while it starts up: the spool's recovery is interrupted.
                daemon.start()
                time.sleep(rng.uniform(0.0, 0.6))
                daemon.kill()
                kills += 1
                early_kills += 1
            daemon.start([port])
    finally:
        load.stop()
    tally = load.tally
    answered = set(tally.accepted)
    wait_until(lambda: answered <= set(arrivals.delivered()), 180 if soaking() else 90,
               "every message answered 250 at a sink")  # fmt: skip
    seen = arrivals.delivered()
    lost = answered - set(seen)
    assert not lost, f"answered 250 but never delivered: {sorted(lost)[:20]}"
    refused_but_delivered = set(tally.refused) & set(seen)
    record(
        "crash",
        seed=seed,
        seconds=round(time.monotonic() - started, 1),
        kills=kills,
        kills_during_startup=early_kills,
        sent=tally.attempted,
        acknowledged=len(answered),
        refused=len(tally.refused),
        reply_lost=len(tally.unknown),
        reply_lost_delivered=len(tally.unknown & set(seen)),
        delivered=len(answered & set(seen)),
        duplicated=duplicates(seen),
        lost=len(lost),
        refused_but_delivered=len(refused_but_delivered),
    )
    # A message refused with a 4xx/5xx was not taken: it must not turn up later.
    assert not refused_but_delivered, sorted(refused_but_delivered)[:20]
    assert kills >= kills_wanted
    assert not crash_lines(daemon.log()), crash_lines(daemon.log())[:5]
