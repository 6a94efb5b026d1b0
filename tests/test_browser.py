"""The stats page in a real browser (headless Chromium) while mail flows through the daemon.

Mail flows through a splice frontend and a relay frontend (spool) with its
own gateways, so the page shows the relay panel and the gateways' message
table too. Chromium loads ``/`` from the running daemon, the test checks the rendered
DOM (every configured server with its status, the relay figures) and the browser's log (no
console message at all: the page has no script, and anything it tried to
load would be a Content-Security-Policy violation logged there), and saves
screenshots (desktop and phone sizes) in the test's peer directory
(``RELAYBAL_KEEP_PEER_DIRS=1`` keeps it). The screenshot's pixels are read
back to check that the status colours were painted.
"""

from __future__ import annotations

import re
import struct
import subprocess
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from peers import SmtpSink, free_port, require_program, smtp_source, wait_until
from web_client import daemon_config, stats_json

pytestmark = pytest.mark.peers

Factory = Callable[..., Any]

# The page's row colours (relaybal/admin/web.py): UP, DOWN, DRAIN, MAINT.
UP, DOWN, DRAIN, MAINT = (0xC0, 0xFF, 0xC0), (0xFF, 0x9C, 0x9C), (0xA8, 0xCD, 0xFC), (0xD6, 0xAA, 0x6E)


class Traffic(threading.Thread):
    """smtp-source batches against each of ``ports`` in turn until :meth:`stop`."""

    def __init__(self, *ports: int) -> None:
        super().__init__(daemon=True)
        self.ports = ports
        self.stopping = threading.Event()
        self.failures: list[str] = []
        self.sent = 0

    def run(self) -> None:
        while not self.stopping.is_set():
            for port in self.ports:
                done = smtp_source(
                    port, sessions=3, messages=30, size=2000, sender="a@client.test", rcpt="b@example.test"
                )
                if done.returncode != 0:
                    self.failures.append(done.stderr)
                self.sent += 30
            self.stopping.wait(0.2)

    def stop(self) -> None:
        self.stopping.set()
        self.join(60)


def chromium(url: str, user_data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            require_program("chromium"),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={user_data}",
            "--enable-logging=stderr",
            "--v=0",
            *extra,
            url,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def console_messages(stderr: str) -> list[str]:
    """What the page logged to its console (Chromium prints it as ``INFO:CONSOLE``) or threw."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGB(A) bytes of an 8-bit, non-interlaced PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0 and colour in (2, 6), (depth, colour, interlace)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, row = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for x in range(stride):
            left = row[x - channels] if x >= channels else 0
            up = previous[x]
            corner = previous[x - channels] if x >= channels else 0
            if kind == 1:
                row[x] = (row[x] + left) & 0xFF
            elif kind == 2:
                row[x] = (row[x] + up) & 0xFF
            elif kind == 3:
                row[x] = (row[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                predictor = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                row[x] = (row[x] + predictor) & 0xFF
        rows.append(bytes(row))
        previous = row
    return width, channels, rows


def colours_in(path: Path) -> set[tuple[int, int, int]]:
    width, channels, rows = png_pixels(path)
    seen: set[tuple[int, int, int]] = set()
    for row in rows[::3]:
        for x in range(0, width * channels, channels * 3):
            seen.add((row[x], row[x + 1], row[x + 2]))
    return seen


def test_the_stats_page_in_headless_chromium(
    sink_factory: Factory, relaybal_factory: Factory, peer_dir: Path
) -> None:
    require_program("chromium")
    one: SmtpSink = sink_factory(dump=False)
    two: SmtpSink = sink_factory(dump=False)
    port, relay_port, http_port, dead_port = free_port(), free_port(), free_port(), free_port()
    extra = (
        f'[[backend.mx.server]]\nname = "draining"\naddress = "127.0.0.1:{two.port}"\nstate = "drain"\n'
        '[[backend.mx.server]]\nname = "spare"\naddress = "127.0.0.1:9"\nbackup = true\nstate = "maint"\n'
        # A relay frontend storing into the spool, delivering to two gateways (the same sinks).
        f'[frontend.relay]\nmode = "relay"\nbackend = "gw"\n'
        f'listen = ["tcp:{relay_port}:interface=127.0.0.1"]\n'
        f'[backend.gw]\n[[backend.gw.server]]\nname = "gw1"\naddress = "127.0.0.1:{one.port}"\n'
        f'[[backend.gw.server]]\nname = "gw2"\naddress = "127.0.0.1:{two.port}"\n'
    )
    relaybal_factory(
        daemon_config(
            port,
            http_port,
            [("one", one.port), ("two", two.port), ("dead", dead_port)],
            extra_servers=extra,
            global_extra=f'state_dir = "{peer_dir}/state"',
        ),
        wait_ports=[port, relay_port, http_port],
    )
    expected = {
        "one": "UP", "two": "UP", "dead": "DOWN", "draining": "DRAIN", "spare": "MAINT",
        "gw1": "no check", "gw2": "no check",
    }  # fmt: skip
    traffic = Traffic(port, relay_port)
    traffic.start()
    try:

        def ready() -> bool:
            data = stats_json(http_port)
            servers = {s["name"]: s for b in data["backends"] for s in b["servers"]}
            return (
                {n: s["status"] for n, s in servers.items()} == expected
                and all(sum(servers[n]["traffic"]["sessions"]) > 0 for n in ("one", "two", "gw1", "gw2"))
                and data["relay"]["recipients"]["delivered"] > 0
            )

        # The graphs need one 10-second bucket with traffic in it.
        wait_until(ready, 40, "every status settled, a traffic bucket filled, relay mail delivered")
        url = f"http://127.0.0.1:{http_port}/"
        dom = chromium(url, peer_dir / "chromium-dom", "--dump-dom")
        shot = peer_dir / "stats-page.png"
        desktop = chromium(url, peer_dir / "chromium-shot", f"--screenshot={shot}", "--window-size=1280,900")
        phone_shot = peer_dir / "stats-page-phone.png"
        phone = chromium(
            url, peer_dir / "chromium-phone", f"--screenshot={phone_shot}", "--window-size=390,844"
        )
        # The whole page (down to the relay gateways' table and graphs), for people to look at.
        full_shot = peer_dir / "stats-page-full.png"
        full = chromium(
            url, peer_dir / "chromium-full", f"--screenshot={full_shot}", "--window-size=1280,2600"
        )
    finally:
        traffic.stop()
    assert not traffic.failures, traffic.failures[:1]
    for run in (dom, desktop, phone, full):
        assert run.returncode == 0, run.stderr[-2000:]
        assert console_messages(run.stderr) == [], console_messages(run.stderr)
    rows = dict(
        re.findall(
            r'<tr class="[\w-]+"><td class="name"[^>]*>(\w+)(?:<span[^>]*>\w+</span>)?</td><td>([^<]+)</td>',
            dom.stdout,
        )
    )
    assert rows == expected
    assert dom.stdout.count("<svg") == len(expected)
    assert "Frontend smtp" in dom.stdout and "Backend mx" in dom.stdout
    assert "Frontend relay" in dom.stdout and "Backend gw" in dom.stdout
    tiles = {label: int(n) for n, label in re.findall(r"<b>(\d+)</b><span>([^<]+)</span>", dom.stdout)}
    assert tiles["accepted"] > 0 and tiles["delivered"] > 0, tiles
    assert "in queue" in tiles
    gateways = re.findall(r'<td class="name gw">(\w+)</td><td class="n">(\d+)</td>', dom.stdout)
    assert [name for name, _ in gateways] == ["gw1", "gw2", "Backend"]
    assert int(gateways[-1][1]) > 0
    for path in (shot, phone_shot, full_shot):
        assert path.stat().st_size > 10_000
    painted = colours_in(shot)
    for colour in (UP, DOWN, DRAIN, MAINT):
        assert colour in painted, f"#{bytes(colour).hex()} not on the screenshot"
    width, _, rows_phone = png_pixels(phone_shot)
    assert (width, len(rows_phone)) == (390, 844)
