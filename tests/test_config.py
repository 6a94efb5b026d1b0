"""Configuration loading: the contract's names, defaults, and every error at once."""

from __future__ import annotations

import ipaddress
import pathlib
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaybal import cli
from relaybal.config import (
    Address,
    ConfigError,
    ConfigFileError,
    duration,
    load_config,
    parse_config,
    size,
)

MINIMAL = {
    "frontend": {"smtp": {"mode": "splice", "listen": ["tcp:2525"], "backend": "mx"}},
    "backend": {"mx": {"server": [{"name": "a", "address": "127.0.0.1:25"}]}},
}


def problems(data: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "f.toml")
    return info.value.lines()


def test_minimal_defaults() -> None:
    c = parse_config(MINIMAL, "f.toml")
    fe = c.frontends["smtp"]
    assert fe.maxconn == 10000 and fe.timeout_client == 300.0 and fe.proxy_timeout == 5.0
    be = c.backends["mx"]
    assert be.balance == "roundrobin" and be.retries == 3 and be.redispatch is True
    assert be.send_proxy == "none" and be.verify_banner is False and be.timeout_connect == 5.0
    assert be.timeout_queue == be.timeout_connect
    s = be.servers[0]
    assert s.address == Address("127.0.0.1", 25) and s.weight == 1 and s.state == "ready"
    assert c.global_.state_dir == "/var/lib/relaybal" and c.global_.hostname


def test_contract_example_loads() -> None:
    """The example at the end of shared/design/config.md, verbatim."""
    text = pathlib.Path(__file__).parent.parent.joinpath("etc", "contract-example.toml")
    c = load_config(str(text))
    assert c.backends["mail_servers"].servers[1].backup is True
    assert c.backends["mail_servers"].check is not None
    assert c.backends["mail_servers"].check.helo == "lb.example.com"
    assert c.frontends["apps"].policies == ("internal",)
    assert c.policies["internal"].options == {"allow": ["10.0.0.0/8"]}
    assert c.admin.http == "tcp:8025:interface=127.0.0.1"


def test_every_error_at_once_with_paths() -> None:
    data = {
        "frontend": {
            "inbound": {"mode": "splice", "listen": ["tcp:25"], "backend": "mxx", "bogus": 1},
        },
        "backend": {
            "mx": {
                "balance": "fastest",
                "server": [
                    {"name": "a", "address": "10.0.0.1:25"},
                    {"name": "b", "address": "10.0.0.1"},
                    {"name": "a", "address": "10.0.0.2:25", "weight": 300},
                ],
            }
        },
    }
    lines = problems(data)
    assert 'f.toml: frontend.inbound.backend: no backend named "mxx" (known: mx)' in lines
    assert 'f.toml: backend.mx.server[1].address: "10.0.0.1" has no port (expected host:port)' in lines
    assert any(line.startswith("f.toml: frontend.inbound.bogus: unknown key") for line in lines)
    assert any(line.startswith('f.toml: backend.mx.balance: "fastest" is not allowed') for line in lines)
    assert any("backend.mx.server[2].weight: 300 is out of range" in line for line in lines)
    assert any('backend.mx.server[2].name: "a" is used twice' in line for line in lines)
    assert len(lines) == 6


@pytest.mark.parametrize(
    ("patch", "path", "fragment"),
    [
        ({"mode": "tcp"}, "frontend.smtp.mode", "expected one of: splice, relay"),
        ({"listen": "tcp:25"}, "frontend.smtp.listen", "is not a list"),
        ({"listen": []}, "frontend.smtp.listen", "is empty"),
        ({"listen": ["nonsense"]}, "frontend.smtp.listen[0]", "not an endpoint"),
        ({"listen": ["tcp:notaport"]}, "frontend.smtp.listen[0]", "not a valid endpoint"),
        ({"accept_proxy": ["10.0.0.0/33"]}, "frontend.smtp.accept_proxy[0]", "not a network"),
        ({"proxy_timeout": "5 parsecs"}, "frontend.smtp.proxy_timeout", "not a duration"),
        ({"maxconn": 0}, "frontend.smtp.maxconn", "out of range"),
        ({"banner": "hi"}, "frontend.smtp.banner", 'only applies to mode = "relay"'),
    ],
)
def test_frontend_errors(patch: dict[str, object], path: str, fragment: str) -> None:
    data = {**MINIMAL, "frontend": {"smtp": {**MINIMAL["frontend"]["smtp"], **patch}}}  # type: ignore[dict-item]
    lines = problems(data)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"f.toml: {path}: ") and fragment in lines[0], lines


@pytest.mark.parametrize(
    ("patch", "path", "fragment"),
    [
        ({"send_proxy": "v3"}, "backend.mx.send_proxy", "none, v1, v2"),
        ({"retries": -1}, "backend.mx.retries", "out of range"),
        ({"redispatch": "yes"}, "backend.mx.redispatch", "not a boolean"),
        ({"check": {"kind": "http"}}, "backend.mx.check.kind", "tcp, banner, smtp, starttls"),
        ({"check": {"rise": 0}}, "backend.mx.check.rise", "out of range"),
        ({"stick": {"on": "dst"}}, "backend.mx.stick.on", "expected one of: src"),
        ({"server": []}, "backend.mx.server", "not a list of tables"),
        ({"server": [{"address": "a.example:25"}]}, "backend.mx.server[0].name", "is required"),
        (
            {"server": [{"name": "a", "address": "[::1]"}]},
            "backend.mx.server[0].address",
            "no port",
        ),
        (
            {"server": [{"name": "a", "address": "h:70000"}]},
            "backend.mx.server[0].address",
            "bad port",
        ),
        (
            {"server": [{"name": "a", "address": "h:25", "weight": 0}]},
            "backend.mx.server",
            "weight 0",
        ),
        (
            {"server": [{"name": "a", "address": "h:25", "state": "up"}]},
            "backend.mx.server[0].state",
            "ready, drain, maint",
        ),
    ],
)
def test_backend_errors(patch: dict[str, object], path: str, fragment: str) -> None:
    data = {**MINIMAL, "backend": {"mx": {**MINIMAL["backend"]["mx"], **patch}}}  # type: ignore[dict-item]
    lines = problems(data)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"f.toml: {path}: ") and fragment in lines[0], lines


def test_required_sections() -> None:
    assert problems({}) == ["f.toml: frontend: is required (expected at least one [frontend.NAME])"]
    lines = problems({"frontend": {"x": {}}, "surprise": {}})
    assert "f.toml: frontend.x.mode: is required" in lines
    assert "f.toml: frontend.x.listen: is required" in lines
    assert "f.toml: frontend.x.backend: is required" in lines
    assert any(line.startswith("f.toml: surprise: unknown key") for line in lines)


def test_duplicate_listener() -> None:
    data = {
        **MINIMAL,
        "frontend": {
            "a": {"mode": "splice", "listen": ["tcp:2525"], "backend": "mx"},
            "b": {"mode": "splice", "listen": ["tcp:2525"], "backend": "mx"},
        },
    }
    assert problems(data) == [
        'f.toml: frontend.b.listen[0]: "tcp:2525" is already used by frontend.a.listen[0]'
    ]


def test_relay_frontend_keys() -> None:
    data = {
        **MINIMAL,
        "frontend": {
            "apps": {
                "mode": "relay", "listen": ["tcp:2526"], "backend": "mx",
                "max_message_size": "10M", "policies": ["nope"], "require_tls": True,
            }
        },
    }  # fmt: skip
    lines = problems(data)
    assert 'f.toml: frontend.apps.policies[0]: no policy named "nope" (known: none)' in lines
    assert any("frontend.apps.require_tls: needs a tls table" in line for line in lines)


def test_networks_and_addresses() -> None:
    data = {
        **MINIMAL,
        "frontend": {
            "smtp": {
                **MINIMAL["frontend"]["smtp"],
                "accept_proxy": ["10.0.0.0/8", "::1", "192.0.2.7"],
            }
        },
    }  # type: ignore[dict-item]
    fe = parse_config(data).frontends["smtp"]
    assert fe.accept_proxy == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("192.0.2.7/32"),
    )
    data = {
        **MINIMAL,
        "backend": {
            "mx": {
                "server": [
                    {"name": "v6", "address": "[2001:db8::5]:25"},
                    {"name": "h", "address": "gw1.example.net:2525"},
                ]
            }
        },
    }
    servers = parse_config(data).backends["mx"].servers
    assert servers[0].address == Address("2001:db8::5", 25) and str(servers[0].address) == "[2001:db8::5]:25"
    assert servers[1].address == Address("gw1.example.net", 2525)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("1m", 60.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        (7, 7.0),
        ("1.5s", 1.5),
    ],
)
def test_duration(text: object, seconds: float) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "n"), [("512", 512), ("64K", 65536), ("50M", 50 << 20), ("1G", 1 << 30), (10, 10)]
)
def test_size(text: object, n: int) -> None:
    assert size(text) == n


@settings(max_examples=300)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=20))  # fmt: skip
def test_arbitrary_documents_never_crash(doc: object) -> None:
    """Any TOML-shaped document is either a config or a list of located problems."""
    data = {"frontend": doc} if not isinstance(doc, dict) else doc
    try:
        parse_config(data, "f.toml")
    except ConfigError as e:
        assert e.problems and all(line.startswith("f.toml: ") for line in e.lines())


def test_load_errors(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigFileError, match="cannot read"):
        load_config(str(missing))
    bad = tmp_path / "bad.toml"
    bad.write_text("[frontend\nx = 1\n")
    with pytest.raises(ConfigFileError, match=r"not valid TOML: .*line 1, column"):
        load_config(str(bad))
    assert cli.main(["check-config", str(missing)]) == 2
    assert cli.main(["check-config", str(bad)]) == 2
    invalid = tmp_path / "invalid.toml"
    invalid.write_text(
        textwrap.dedent("""
        [frontend.a]
        mode = "splice"
        listen = ["tcp:2525"]
        backend = "nope"
    """)
    )
    assert cli.main(["check-config", str(invalid)]) == 1
    err = capsys.readouterr().err
    assert f'{invalid}: frontend.a.backend: no backend named "nope" (known: none)' in err
    good = tmp_path / "good.toml"
    good.write_text(
        invalid.read_text().replace('"nope"', '"mx"')
        + '[[backend.mx.server]]\nname = "a"\naddress = "127.0.0.1:25"\n'
    )
    assert cli.main(["check-config", str(good)]) == 0
