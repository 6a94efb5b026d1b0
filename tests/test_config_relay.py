"""Relay-mode configuration keys added for the receiving side: timeouts and RFC 5321 limits."""

from __future__ import annotations

from typing import Any

import pytest

from relaybal.config import ConfigError, FrontendConfig, parse_config
from relaybal.relay.testing import relay_config_dict


def relay(**keys: Any) -> FrontendConfig:
    return parse_config(relay_config_dict(**keys), "f.toml").frontends["relay"]


def problems(**keys: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(relay_config_dict(**keys), "f.toml")
    return info.value.lines()


def test_defaults() -> None:
    fe = relay()
    assert fe.timeout_client == 300.0 and fe.timeout_data == 180.0 and fe.timeout_session == 3600.0
    assert fe.max_command_line == 2048 and fe.max_line_length == 1000
    assert fe.max_path_length == 256 and fe.max_local_part == 64
    assert fe.max_recipients == 1000 and fe.max_message_size == 50 * 1024 * 1024


def test_values() -> None:
    fe = relay(
        timeout_data="30s", timeout_session="0", max_command_line=4096, max_line_length="64K",
        max_path_length=512, max_local_part=128,
    )  # fmt: skip
    assert fe.timeout_data == 30.0 and fe.timeout_session == 0.0
    assert fe.max_command_line == 4096 and fe.max_line_length == 65536
    assert fe.max_path_length == 512 and fe.max_local_part == 128


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("max_command_line", 511, "511 is out of range (expected an integer 512-1048576)"),
        ("max_line_length", 999, "must be 1000 (RFC 5321's minimum) to 1M"),
        ("max_line_length", "2M", "must be 1000 (RFC 5321's minimum) to 1M"),
        ("max_path_length", 100, "100 is out of range (expected an integer 256-4096)"),
        ("max_local_part", 63, "63 is out of range (expected an integer 64-4096)"),
        ("timeout_data", "soon", '"soon" is not a duration'),
        ("timeout_data", "0s", "must be greater than zero"),
        ("timeout_client", 0, "must be greater than zero"),
    ],
)
def test_bad_values(key: str, value: object, message: str) -> None:
    (line,) = problems(**{key: value})
    assert line.startswith(f"f.toml: frontend.relay.{key}: ") and message in line


def test_relay_keys_are_refused_on_splice_frontends() -> None:
    data = relay_config_dict()
    data["frontend"]["relay"].update(mode="splice", timeout_data="1m", max_line_length=2000)
    del data["frontend"]["relay"]["hostname"]
    with pytest.raises(ConfigError) as info:
        parse_config(data, "f.toml")
    why = 'only applies to mode = "relay" (this frontend is mode = "splice")'
    assert sorted(info.value.lines()) == [
        f"f.toml: frontend.relay.max_line_length: {why}",
        f"f.toml: frontend.relay.timeout_data: {why}",
    ]


def test_auth_needs_tls_or_plaintext_permission() -> None:
    (line,) = problems(auth={"users": "/etc/relaybal/users"})
    assert line == (
        "f.toml: frontend.relay.auth: would never be offered: AUTH needs STARTTLS (a tls table) "
        "or allow_plaintext_auth = true"
    )
    assert relay(auth={"users": "u"}, allow_plaintext_auth=True).auth is not None
    fe = relay(auth={"users": "u", "mechanisms": ["PLAIN"]}, tls={"certificate": "c", "key": "k"})
    assert fe.auth is not None and fe.auth.mechanisms == ("PLAIN",)
