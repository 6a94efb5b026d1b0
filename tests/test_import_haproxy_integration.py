"""``relaybal import-haproxy`` end to end: the translated file behaves like the HAProxy original.

One HAProxy configuration (a weighted round robin over two smtp-sinks plus a
backup, with SMTP health checks) runs in the real HAProxy against one set of
sinks, and its translation runs in the real ``twistd relaybal`` against another
set. Both must pick the same server for each message of the same sequence, and
send to the backup only once the active servers are down. The ``relaybal``
console script is exercised on the seed fixtures as well (exit status, stderr,
``check-config`` on the written file).

Missing peers skip these tests locally and fail them under
``RELAYBAL_REQUIRE_PEERS=1`` (CI).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from peers import HAProxy, SmtpSink, free_port, require_program, send_one_message, wait_until

from relaybal.importer import translate

pytestmark = pytest.mark.peers

Factory = Callable[..., Any]

FIXTURES = Path(__file__).parent / "fixtures" / "haproxy"


def original(port: int, light: int, heavy: int, spare: int, *, heavy_weight: int = 3) -> str:
    """The HAProxy configuration both programs run (only the ports differ)."""
    return f"""\
global
    nbthread 1

defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout check 2s
    option redispatch

listen smtp
    bind 127.0.0.1:{port}
    balance roundrobin
    option smtpchk EHLO lb.test
    default-server inter 200ms rise 1 fall 2
    server light 127.0.0.1:{light} weight 1 check
    server heavy 127.0.0.1:{heavy} weight {heavy_weight} check
    server spare 127.0.0.1:{spare} check backup
"""


def chosen_servers(port: int, sinks: dict[str, SmtpSink], count: int, first: int = 0) -> list[str]:
    """Send ``count`` messages one after the other; the name of the sink each one reached."""
    sequence: list[str] = []
    for n in range(first, first + count):
        before = {name: sink.count() for name, sink in sinks.items()}
        transcript = send_one_message(port, rcpts=[f"m{n}@example.test"])
        assert transcript.accepted, transcript
        total = sum(before.values()) + 1
        wait_until(
            lambda total=total: sum(s.count() for s in sinks.values()) == total, 10, f"message {n} at a sink"
        )
        (name,) = [name for name, sink in sinks.items() if sink.count() > before[name]]
        sequence.append(name)
    return sequence


def three_sinks(sink_factory: Factory) -> dict[str, SmtpSink]:
    return {name: sink_factory() for name in ("light", "heavy", "spare")}


def run_scenario(
    port: int, sinks: dict[str, SmtpSink], wait_down: Callable[[Sequence[str]], None]
) -> tuple[list[str], list[str]]:
    """Twelve messages with every server up, then six with the active ones killed."""
    before = chosen_servers(port, sinks, 12)
    for name in ("light", "heavy"):
        sinks[name].kill()
    wait_down(["light", "heavy"])
    after = chosen_servers(port, sinks, 6, first=12)
    return before, after


@pytest.mark.parametrize("heavy_weight", [1, 3])
def test_translated_config_picks_the_same_servers_as_haproxy(
    heavy_weight: int, sink_factory: Factory, haproxy_factory: Factory, relaybal_factory: Factory
) -> None:
    # HAProxy, the original.
    ha_sinks = three_sinks(sink_factory)
    ha_port = free_port()
    haproxy: HAProxy = haproxy_factory(
        original(ha_port, *(s.port for s in ha_sinks.values()), heavy_weight=heavy_weight),
        wait_ports=[ha_port],
    )

    def haproxy_marks_down(names: Sequence[str]) -> None:
        # HAProxy needs its checks to see the servers down before it uses the backup.
        for name in names:
            haproxy.wait_for_log(f"smtp/{name} is DOWN", timeout=20)

    ha_before, ha_after = run_scenario(ha_port, ha_sinks, haproxy_marks_down)

    # relaybal, running the translation of the same file.
    rb_sinks = three_sinks(sink_factory)
    rb_port = free_port()
    translation = translate(
        original(rb_port, *(s.port for s in rb_sinks.values()), heavy_weight=heavy_weight)
    )
    assert translation.complete, translation.problems
    relaybal_factory(translation.toml, wait_ports=[rb_port])
    # relaybal does not have to wait: a refused connection is redispatched at once.
    rb_before, rb_after = run_scenario(rb_port, rb_sinks, lambda names: None)

    # Every server up: the same weighted rotation (per cycle, light once and heavy
    # heavy_weight times, in the same order); with equal weights the very same servers,
    # with unequal ones relaybal may start at another point of the cycle. No backup.
    period = 1 + heavy_weight
    cycle = ha_before[:period]
    assert sorted(cycle) == ["heavy"] * heavy_weight + ["light"], ha_before
    assert ha_before == cycle * (len(ha_before) // period), ha_before
    offset = rotation_of(rb_before, cycle)
    assert offset is not None, (rb_before, ha_before)
    if heavy_weight == 1:
        assert rb_before == ha_before
    # Active servers down: both send everything to the backup.
    assert ha_after == rb_after == ["spare"] * 6


def rotation_of(sequence: Sequence[str], cycle: Sequence[str]) -> int | None:
    """The offset at which ``sequence`` follows ``cycle`` over and over, or None."""
    for offset in range(len(cycle)):
        if all(name == cycle[(i + offset) % len(cycle)] for i, name in enumerate(sequence)):
            return offset
    return None


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaybal.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("*.cfg")))
def test_fixture_is_valid_for_haproxy_and_its_translation_for_check_config(
    fixture: str, tmp_path: Path
) -> None:
    """Each fixture is a configuration HAProxy accepts; its translation passes check-config."""
    haproxy = require_program("haproxy")
    checked = subprocess.run(
        [haproxy, "-c", "-f", str(FIXTURES / fixture)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    output = tmp_path / "relaybal.toml"
    done = run_cli("import-haproxy", str(FIXTURES / fixture), "-o", str(output))
    assert done.returncode in (0, 3), done.stderr
    assert done.stdout == ""
    check = run_cli("check-config", str(output))
    assert check.returncode == 0, check.stderr
    assert "valid" in check.stdout
