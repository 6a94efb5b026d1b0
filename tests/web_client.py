"""Helpers for the tests that run the real daemon with ``[admin] http``: configs and HTTP requests."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def daemon_config(
    port: int,
    http_port: int,
    servers: Sequence[tuple[str, int]],
    *,
    extra_servers: str = "",
    check: str = 'check = { kind = "smtp", interval = "500ms" }',
    global_extra: str = "",
    admin_extra: str = "",
    backend_extra: str = "",
) -> str:
    """One splice frontend on 127.0.0.1:``port`` → backend ``mx`` with ``servers``; the stats page
    on 127.0.0.1:``http_port``."""
    lines = [
        "[global]",
        'hostname = "lb.test"',
        global_extra,
        "[admin]",
        f'http = "tcp:{http_port}:interface=127.0.0.1"',
        admin_extra,
        "[frontend.smtp]",
        'mode = "splice"',
        f'listen = ["tcp:{port}:interface=127.0.0.1"]',
        'backend = "mx"',
        "[backend.mx]",
        check,
        backend_extra,
    ]
    for name, server_port in servers:
        lines += ["[[backend.mx.server]]", f'name = "{name}"', f'address = "127.0.0.1:{server_port}"']
    return "\n".join(lines) + "\n" + extra_servers


def http_get(
    port: int, path: str = "/", auth: tuple[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    """GET ``path`` on 127.0.0.1:``port``: (status, lower-cased headers, body); errors are returned too."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def stats_json(port: int, auth: tuple[str, str] | None = None) -> dict[str, Any]:
    status, _, body = http_get(port, "/stats.json", auth)
    assert status == 200, (status, body[:200])
    data: dict[str, Any] = json.loads(body)
    return data


def metrics(
    port: int, auth: tuple[str, str] | None = None
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``/metrics``, parsed by prometheus_client: {(name, labels): value}."""
    status, headers, body = http_get(port, "/metrics", auth)
    assert status == 200, (status, body[:200])
    assert headers["content-type"].startswith("text/plain"), headers
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The value of one sample (KeyError naming what is missing)."""
    key = (name, frozenset(labels.items()))
    if key not in samples:
        raise KeyError(f"no sample {name}{labels}")
    return samples[key]
