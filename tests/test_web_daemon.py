"""The real daemon's stats page, /stats.json and basic authentication, with real traffic."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from peers import SmtpSink, free_port, smtp_source, wait_until
from web_client import daemon_config, http_get, stats_json

from relaybal.smtp.auth import hash_password

pytestmark = pytest.mark.peers

Factory = Callable[..., Any]


def test_stats_json_and_page_follow_the_traffic(sink_factory: Factory, relaybal_factory: Factory) -> None:
    one: SmtpSink = sink_factory(dump=False)
    two: SmtpSink = sink_factory(dump=False)
    port, http_port, dead_port = free_port(), free_port(), free_port()
    relaybal_factory(
        daemon_config(
            port,
            http_port,
            [("one", one.port), ("two", two.port), ("dead", dead_port)],
            extra_servers='[[backend.mx.server]]\nname = "spare"\naddress = "127.0.0.1:9"\nstate = "maint"\n',
        ),
        wait_ports=[port, http_port],
    )

    def checked() -> bool:
        servers = {s["name"]: s for s in stats_json(http_port)["backends"][0]["servers"]}
        return servers["dead"]["state"] == "DOWN" and servers["one"]["check"]["status"] == "L7OK"

    wait_until(checked, 15, "the checks to find 'dead' down and 'one' up")
    done = smtp_source(port, sessions=2, messages=20, size=500, sender="a@client.test", rcpt="b@example.test")
    assert done.returncode == 0, done.stderr
    wait_until(
        lambda: stats_json(http_port)["frontends"][0]["sessions"]["current"] == 0, 10, "sessions to end"
    )
    data = stats_json(http_port)
    assert data["schema"] == 1
    assert data["relaybal"]["node"] == "lb.test" and data["relaybal"]["stopping"] is False
    [fe] = data["frontends"]
    assert (fe["name"], fe["mode"], fe["backend"], fe["status"]) == ("smtp", "splice", "mx", "OPEN")
    assert fe["sessions"]["total"] == 20 and fe["errors"] == 0
    assert fe["bytes"]["in"] > 20 * 500
    [be] = data["backends"]
    assert (be["name"], be["status"], be["balance"], be["check"]) == ("mx", "UP", "roundrobin", "smtp")
    assert be["sessions"]["total"] == 20
    servers = {s["name"]: s for s in be["servers"]}
    assert list(servers) == ["one", "two", "dead", "spare"]
    assert servers["one"]["sessions"]["total"] == servers["two"]["sessions"]["total"] == 10
    assert servers["one"]["bytes"]["in"] + servers["two"]["bytes"]["in"] == fe["bytes"]["in"]
    assert (servers["dead"]["state"], servers["dead"]["check"]["status"]) == ("DOWN", "L4CON")
    assert servers["dead"]["sessions"]["total"] == 0
    assert (servers["spare"]["state"], servers["spare"]["status"]) == ("MAINT", "MAINT")
    assert servers["one"]["check"]["code"] == 250 and servers["one"]["check"]["duration_ms"] is not None
    assert servers["one"]["traffic"]["interval_s"] == 10
    status, headers, body = http_get(http_port, "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in headers["content-security-policy"]
    page = body.decode()
    rows = dict(
        re.findall(
            r'<tr class="[\w-]+"><td class="name"[^>]*>(\w+)(?:<span[^>]*>\w+</span>)?</td><td>([^<]+)', page
        )
    )
    assert rows == {"one": "UP", "two": "UP", "dead": "DOWN", "spare": "MAINT"}
    assert http_get(http_port, "/nothing-here")[0] == 404


def test_basic_authentication(sink_factory: Factory, relaybal_factory: Factory, peer_dir: Path) -> None:
    sink: SmtpSink = sink_factory(dump=False)
    users = peer_dir / "admin-users"
    users.write_text(f"# stats page users\nops:{hash_password('s3cret', ln=4)}\n")
    port, http_port = free_port(), free_port()
    relaybal_factory(
        daemon_config(port, http_port, [("sink", sink.port)], admin_extra=f'http_users = "{users}"'),
        wait_ports=[port, http_port],
    )
    for path in ("/", "/stats.json", "/metrics"):
        status, headers, _ = http_get(http_port, path)
        assert status == 401 and headers["www-authenticate"] == 'basic realm="relaybal"', (path, headers)
        assert http_get(http_port, path, auth=("ops", "wrong"))[0] == 401
        assert http_get(http_port, path, auth=("nobody", "s3cret"))[0] == 401
        assert http_get(http_port, path, auth=("ops", "s3cret"))[0] == 200
    assert stats_json(http_port, auth=("ops", "s3cret"))["backends"][0]["servers"][0]["name"] == "sink"
