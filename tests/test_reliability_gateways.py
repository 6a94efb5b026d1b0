"""Gateway faults: every message answered ``250`` ends delivered or bounced; none vanish.

relaybal's backend is a row of gateways, each failing its own way:

=============  ==========================================================  ===============
gateway        behaviour                                                   its dumps count
=============  ==========================================================  ===============
``ok``         ``smtp-sink``, accepts everything                           delivered
``soft-mail``  ``smtp-sink -r MAIL``: 4xx at MAIL                          (none made)
``drop-rcpt``  ``smtp-sink -Q RCPT``: 421 and disconnect at RCPT           (none made)
``soft-dot``   ``smtp-sink -r .``: 4xx after the final dot                 not delivered
``lost``       ``smtp-sink -q .``: disconnects after the dot, no reply     delivered, lossy
``tarpit``     ``smtp-sink -W .:1:50``: the reply to the dot takes 1 s+    delivered
``dies``       ``smtp-sink``, killed with SIGKILL mid-run, back 2 s later  delivered, lossy
``postfix``    a private Postfix: ``5xx`` at RCPT for messages whose       via ``relayed``
               number ends in 3, ``5xx`` after the dot (header_checks)
               for those ending in 7; relays the rest (and every bounce)
               to the sink ``relayed``
=============  ==========================================================  ===============

A bounce is a message from ``<>`` to the sender; the sender's domain is
deliverable like any other (every gateway takes it), so bounces land in the
same dump directories and name their message in ``Final-Recipient:``.
Duplicates are allowed only for messages (or bounces) a *lossy* gateway saw:
one that took the whole message and then lost its reply.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from peers import PrivatePostfix, RelaybalDaemon, SmtpSink, free_port, wait_until
from soak.common import (
    Arrivals,
    Load,
    crash_lines,
    duplicates,
    load_seconds,
    record,
    seeded_random,
    soaking,
)

SINK_FAULTS = {
    "ok": [],
    "soft-mail": ["-r", "MAIL"],
    "drop-rcpt": ["-Q", "RCPT"],
    "soft-dot": ["-r", "."],
    "lost": ["-q", "."],
    "tarpit": ["-W", ".:1:50"],
    "dies": [],
}
DELIVERING = ("ok", "lost", "tarpit", "dies")
LOSSY = ("lost", "dies")


def postfix_gateway(
    postfix_factory: Callable[..., PrivatePostfix], relayed: SmtpSink
) -> PrivatePostfix:
    """A Postfix that refuses some messages for good and relays the rest to *relayed*."""
    postfix = postfix_factory(start=False)
    rcpt_map = postfix.directory / "rcpt_access.regexp"
    rcpt_map.write_text("/^[0-9]*3user@example\\.test$/ REJECT 5.7.1 refused for this test\n")
    header_map = postfix.directory / "header_checks.regexp"
    header_map.write_text("/^Subject: message [0-9]*7$/ REJECT 5.7.1 refused after the dot for this test\n")
    for path in (rcpt_map, header_map):
        path.chmod(0o644)
    postfix.settings.update(
        {
            "smtpd_recipient_restrictions": (
                f"check_recipient_access regexp:{rcpt_map}, permit_mynetworks, reject"
            ),
            "header_checks": f"regexp:{header_map}",
            "nested_header_checks": "",
            "relayhost": f"[127.0.0.1]:{relayed.port}",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            # A deferred relay attempt is retried soon, not after the default minutes.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
        }
    )
    postfix.start()
    return postfix


def relay_config(peer_dir: Path, port: int, gateways: dict[str, int]) -> str:
    servers = "".join(
        f'[[backend.gw.server]]\nname = "{name}"\naddress = "127.0.0.1:{gw_port}"\n'
        for name, gw_port in gateways.items()
    )
    return f"""
[global]
state_dir = "{peer_dir}/state"
hostname = "relay.test"

[frontend.apps]
mode = "relay"
listen = ["tcp:{port}:interface=127.0.0.1"]
backend = "gw"

[backend.gw]
retry_schedule = ["1s"]
max_attempts = 100
{servers}"""


def test_every_message_ends_delivered_or_bounced(
    sink_factory: Callable[..., SmtpSink],
    postfix_factory: Callable[..., PrivatePostfix],
    relaybal_factory: Callable[..., RelaybalDaemon],
    peer_dir: Path,
) -> None:
    rng, seed = seeded_random("gateway-faults")
    sinks = {name: sink_factory(options=options) for name, options in SINK_FAULTS.items()}
    relayed = sink_factory()
    postfix = postfix_gateway(postfix_factory, relayed)
    gateways = {name: sink.port for name, sink in sinks.items()} | {"postfix": postfix.port}
    port = free_port()
    daemon = relaybal_factory(relay_config(peer_dir, port, gateways), wait_ports=[port])

    def dump_dir(sink: SmtpSink) -> Path:
        assert sink.dump_dir is not None
        return sink.dump_dir

    delivering = [dump_dir(sinks[name]) for name in DELIVERING] + [dump_dir(relayed)]
    lossy = [dump_dir(sinks[name]) for name in LOSSY]
    arrivals = Arrivals(delivering)
    duration = load_seconds(0.0)
    total = None if soaking() else 200
    # A steady load in a soak (about 8 messages/s): the faulty gateways deliver a few dozen a second.
    load = Load(port, senders=4, limit=None if total is None else total // 4, pause=0.5 if soaking() else 0.0)
    started = time.monotonic()
    load.start()
    # The "dies" gateway goes away (SIGKILL, mid-transaction at worst) and comes back on its port.
    wait_until(lambda: load.tally.snapshot()[1] >= 50, 60, "50 messages accepted")
    deaths = 0
    while True:
        dying = sinks["dies"]
        dying.kill()
        deaths += 1
        time.sleep(rng.uniform(0.5, 2.0))
        sinks["dies"] = sink_factory(port=dying.port)
        arrivals.add(dump_dir(sinks["dies"]))
        lossy.append(dump_dir(sinks["dies"]))
        if time.monotonic() - started >= duration:
            break
        time.sleep(rng.uniform(1.0, 10.0))
    if total is None:
        load.stop()
    else:
        for thread in load.threads:
            thread.join(120)
        load.stop()
    tally = load.tally
    answered = set(tally.accepted)

    def settled() -> bool:
        delivered, bounced = arrivals.delivered(), arrivals.bounced()
        return all(delivered[n] or bounced[n] for n in answered)

    wait_until(settled, 300 if soaking() else 120, "every accepted message delivered or bounced")
    # Give late duplicates (a retry already on its way) a moment to show before counting.
    time.sleep(1.0)
    delivered, bounced = arrivals.delivered(), arrivals.bounced()
    lossy_seen: Counter[int] = Counter()
    for dump in arrivals.dumps(lossy):
        lossy_seen.update(dump.numbers)
        lossy_seen.update(dump.bounce_of)
    unexplained = [n for n in answered if (delivered[n] > 1 or bounced[n] > 1) and not lossy_seen[n]]
    vanished = [n for n in answered if not delivered[n] and not bounced[n]]
    soft_dot = arrivals.delivered([dump_dir(sinks["soft-dot"])])
    record(
        "gateway-faults",
        seed=seed,
        seconds=round(time.monotonic() - started, 1),
        gateways=len(gateways),
        gateway_deaths=deaths,
        sent=tally.attempted,
        acknowledged=len(answered),
        delivered=sum(1 for n in answered if delivered[n]),
        bounced=sum(1 for n in answered if bounced[n]),
        delivered_and_bounced=sum(1 for n in answered if delivered[n] and bounced[n]),
        duplicated=duplicates(delivered) + duplicates(bounced),
        duplicates_after_lost_reply=sum(
            1 for n in answered if lossy_seen[n] and delivered[n] + bounced[n] > 1
        ),
        refused_after_dot_then_retried=len(soft_dot),
        lost=len(vanished),
    )
    assert not vanished
    assert not unexplained, f"duplicates without a lost reply: {sorted(unexplained)[:20]}"
    # A message is bounced only when a gateway refused it for good: both refusals came from Postfix.
    assert all(str(n)[-1] in "37" for n in answered if bounced[n]), sorted(n for n in answered if bounced[n])
    assert any(bounced[n] for n in answered), "no bounce at all: the 5xx gateway was never tried"
    assert not crash_lines(daemon.log()), crash_lines(daemon.log())[:5]
