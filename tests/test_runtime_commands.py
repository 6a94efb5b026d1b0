"""Every runtime-API command, run against backends on a fake clock (no sockets)."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from health_fakes import BUSY, PASS, REFUSED, LogCapture, config_of
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from relaybal.admin import commands as commands_module
from relaybal.admin.commands import (
    COMMANDS,
    ERROR,
    CliSession,
    RuntimeCommands,
    split_line,
)
from relaybal.admin.stats import SERVERS_STATE_FIELDS, STAT_COLUMNS, ProcessView
from relaybal.balance.backend import Backend
from relaybal.splice.frontend import SpliceFrontend


@attrs.define
class FakeFrontend:
    """Stands for a frontend of another kind (only some figures)."""

    current: int = 2
    total: int = 40


class Runtime:
    """Two backends ("mx" with checks and a stick table, "relays" without), two frontends."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        config = config_of(
            [
                {"name": "a", "address": "10.0.0.1:25", "weight": 2},
                {"name": "b", "address": "10.0.0.2:2525", "slowstart": "60s"},
                {"name": "spare", "address": "mx9.example.net:25", "backup": True, "state": "maint"},
            ],
            check={"kind": "smtp", "rise": 2, "fall": 3},
            backend={"stick": {"size": 50, "expire": "10m"}},
        )
        self.mx = Backend(config.backends["mx"], self.clock)
        relay_config = config_of([{"name": "gw1", "address": "10.0.1.1:25"}]).backends["mx"]
        self.relays = Backend(attrs.evolve(relay_config, name="relays"), self.clock)
        self.splice = SpliceFrontend(config.frontends["smtp"], self.mx, MemoryReactorClock(), "lb.test")
        self.view = ProcessView(
            {"mx": self.mx, "relays": self.relays},
            {"smtp": self.splice, "other": FakeFrontend()},
            self.clock,
            hostname="lb.test",
            pid=4242,
            version="9.9",
        )
        self.commands = RuntimeCommands(self.view)
        self.session = CliSession()

    def __call__(self, line: str) -> str:
        return self.commands.execute_line(line, self.session)

    def lines(self, line: str) -> list[str]:
        out = self(line)
        assert out.endswith("\n"), repr(out)
        return out[:-1].splitlines() if out != "\n" else []


@pytest.fixture
def rt() -> Runtime:
    return Runtime()


@pytest.fixture
def health_log(monkeypatch: pytest.MonkeyPatch) -> LogCapture:
    return LogCapture.install(monkeypatch)


# --------------------------------------------------------------------------- line syntax


def test_split_line_commands_words_and_escapes() -> None:
    assert split_line("show info;show  stat\t-1 4 -1 ;; ") == [
        ["show", "info"],
        ["show", "stat", "-1", "4", "-1"],
    ]
    assert split_line(r"clear table mx key a\;b\ c\\") == [["clear", "table", "mx", "key", "a;b c\\"]]
    assert split_line("x\\") == [["x\\"]]
    assert split_line("  ") == []


_WORD = st.text(st.characters(codec="utf-8", exclude_characters="\n\r"), min_size=1, max_size=8)


def _escape(word: str) -> str:
    return "".join("\\" + c if c in "\\; \t" else c for c in word)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.lists(st.lists(_WORD, min_size=1, max_size=4), max_size=4))
def test_split_line_round_trips_escaped_words(commands: list[list[str]]) -> None:
    line = ";".join(" ".join(_escape(w) for w in words) for words in commands)
    assert split_line(line) == commands


def test_each_command_answer_ends_with_one_empty_line(rt: Runtime) -> None:
    out = rt("show backend;get weight mx/a")
    assert out == "# name\nmx\nrelays\n\n2 (initial 2)\n\n"


def test_a_command_that_changes_nothing_answers_just_the_end_marker(rt: Runtime) -> None:
    assert rt("set server mx/a state ready") == "\n"


# --------------------------------------------------------------------------- help, prompt, quit


def test_help_lists_every_command(rt: Runtime) -> None:
    lines = rt.lines("help")
    assert lines[0] == "The following commands are valid at this level:"
    assert len(lines) == 1 + len(COMMANDS)
    assert any(line.startswith("  set server <bk>/<srv> state ready|drain|maint") for line in lines)
    shown = rt.lines("help show")
    assert len(shown) > 3 and all(line.startswith("  show ") for line in shown[1:])


def test_help_for_nothing_is_an_error(rt: Runtime) -> None:
    assert rt.lines("help frobnicate") == ["No command starts with 'frobnicate'; 'help' lists them all."]


def test_prompt_and_quit_drive_the_session(rt: Runtime) -> None:
    assert rt("prompt") == "\n" and rt.session.interactive and not rt.session.closing
    assert rt("quit; show info") == "" and rt.session.closing
    other = CliSession(interactive=True)
    assert rt.commands.execute_line("prompt", other) == "" and other.closing


# --------------------------------------------------------------------------- show info, show stat


def test_show_info(rt: Runtime) -> None:
    rt.clock.advance(3725)
    rt.splice.current = 3
    rt.splice.total = 10
    info = dict(line.split(": ", 1) for line in rt.lines("show info"))
    assert info["Name"] == "relaybal" and info["Version"] == "9.9" and info["Pid"] == "4242"
    assert info["Uptime"] == "0d 1h02m05s" and info["Uptime_sec"] == "3725"
    assert info["CurrConns"] == "5" and info["CumConns"] == "50" and info["Maxconn"] == "10000"
    assert info["node"] == "lb.test" and info["Start_time_sec"] == "1000000"
    assert rt.lines("show info json") == [
        "'show info' takes no arguments (only the plain format is supported)."
    ]


def stat_rows(rt: Runtime, line: str = "show stat") -> list[dict[str, str]]:
    lines = rt.lines(line)
    header = lines[0]
    assert header == "# " + ",".join(STAT_COLUMNS) + ","
    rows = []
    for text in lines[1:]:
        assert text.endswith(",")
        cells = text.split(",")[:-1]
        assert len(cells) == len(STAT_COLUMNS)
        rows.append(dict(zip(STAT_COLUMNS, cells, strict=True)))
    return rows


def test_show_stat_rows_and_haproxy_columns(rt: Runtime) -> None:
    a, b, spare = rt.mx.servers
    a.check_done(PASS)
    b.check_done(BUSY)
    a.acquire()
    rt.splice.current = 1
    rows = stat_rows(rt)
    assert [(r["pxname"], r["svname"]) for r in rows] == [
        ("smtp", "FRONTEND"), ("other", "FRONTEND"),
        ("mx", "a"), ("mx", "b"), ("mx", "spare"), ("mx", "BACKEND"),
        ("relays", "gw1"), ("relays", "BACKEND"),
    ]  # fmt: skip
    fe, other, ra, rb, rs, rbe = rows[:6]
    assert fe["status"] == "OPEN" and fe["type"] == "0" and fe["slim"] == "10000" and fe["scur"] == "1"
    assert other["stot"] == "40" and other["iid"] == "4"
    assert ra["status"] == "UP" and ra["check_status"] == "L7OK" and ra["check_code"] == "250"
    assert ra["last_chk"] == "mx ESMTP" and ra["check_desc"] == "Layer7 check passed"
    assert ra["weight"] == "2" and ra["scur"] == "1" and ra["act"] == "1" and ra["bck"] == "0"
    assert ra["check_rise"] == "2" and ra["check_fall"] == "3" and ra["check_health"] == "4"
    assert ra["addr"] == "10.0.0.1:25" and ra["iid"] == "1" and ra["sid"] == "1" and ra["type"] == "2"
    assert rb["status"] == "DOWN" and rb["check_status"] == "L7STS" and rb["check_code"] == "421"
    assert rb["chkfail"] == "1" and rb["chkdown"] == "1" and rb["last_chk"] == "4.3.2 busy"
    assert rs["status"] == "MAINT" and rs["bck"] == "1" and rs["check_status"] == ""
    assert (
        rbe["status"] == "UP" and rbe["act"] == "1" and rbe["weight"] == "2" and rbe["algo"] == "roundrobin"
    )
    assert rbe["scur"] == "1" and rbe["type"] == "1"


def test_show_stat_status_words(rt: Runtime) -> None:
    a, b, _ = rt.mx.servers
    a.check_done(PASS)
    a.check_done(BUSY)
    b.set_admin_state("drain")
    rows = {r["svname"]: r for r in stat_rows(rt, "show stat mx")}
    assert rows["a"]["status"] == "UP 2/3" and rows["b"]["status"] == "DRAIN" and rows["b"]["weight"] == "0"
    relay = {r["svname"]: r for r in stat_rows(rt, "show stat relays")}
    assert relay["gw1"]["status"] == "no check"
    b.set_admin_state("ready")
    rt.clock.advance(1)
    b.check_done(REFUSED)
    b.check_done(PASS)
    rows = {r["svname"]: r for r in stat_rows(rt, "show stat mx")}
    assert rows["b"]["status"] == "DOWN 1/2"
    b.set_weight(10)
    b.check_done(PASS)
    rt.clock.advance(30)
    rows = {r["svname"]: r for r in stat_rows(rt, "show stat mx")}
    assert rows["b"]["throttle"] == "50" and rows["b"]["weight"] == "5" and rows["b"]["uweight"] == "10"


def test_show_stat_filters(rt: Runtime) -> None:
    assert [r["svname"] for r in stat_rows(rt, "show stat relays")] == ["gw1", "BACKEND"]
    assert [r["svname"] for r in stat_rows(rt, "show stat 1 4 2")] == ["b"]
    assert [r["svname"] for r in stat_rows(rt, "show stat -1 3 -1")] == [
        "FRONTEND", "FRONTEND", "BACKEND", "BACKEND",
    ]  # fmt: skip
    assert [r["pxname"] for r in stat_rows(rt, "show stat smtp")] == ["smtp"]
    assert rt.lines("show stat nope") == ["No such proxy: 'nope'."]
    assert rt.lines("show stat mx x y") == ["'show stat' expects numbers for <type> and <sid> (-1 for all)."]
    assert len(rt.lines("show stat mx typed")) == 1


# --------------------------------------------------------------------------- show servers state


def state_rows(rt: Runtime, line: str = "show servers state") -> dict[str, dict[str, str]]:
    lines = rt.lines(line)
    assert lines[0] == "1"
    assert lines[1] == "# " + " ".join(SERVERS_STATE_FIELDS)
    rows = {}
    for text in lines[2:]:
        fields = text.split(" ")
        assert len(fields) == len(SERVERS_STATE_FIELDS)
        row = dict(zip(SERVERS_STATE_FIELDS, fields, strict=True))
        rows[row["srv_name"]] = row
    return rows


def test_show_servers_state_fields(rt: Runtime) -> None:
    a, b, spare = rt.mx.servers
    a.check_done(PASS)
    rt.clock.advance(7)
    b.check_done(BUSY)
    b.set_weight(5)
    rows = state_rows(rt)
    assert list(rows) == ["a", "b", "spare", "gw1"]
    ra, rb, rs, rg = rows["a"], rows["b"], rows["spare"], rows["gw1"]
    assert [ra[k] for k in ("be_id", "be_name", "srv_id", "srv_addr", "srv_port")] == [
        "1",
        "mx",
        "1",
        "10.0.0.1",
        "25",
    ]
    assert (ra["srv_op_state"], ra["srv_admin_state"], ra["srv_uweight"], ra["srv_iweight"]) == (
        "2",
        "0",
        "2",
        "2",
    )
    assert ra["srv_time_since_last_change"] == "7"
    checks = ("srv_check_status", "srv_check_result", "srv_check_health", "srv_check_state")
    assert [ra[k] for k in checks] == ["15", "3", "4", "6"]
    assert (rb["srv_op_state"], rb["srv_check_status"], rb["srv_check_result"], rb["srv_check_health"]) == (
        "0", "17", "2", "0",
    )  # fmt: skip
    assert (rb["srv_uweight"], rb["srv_iweight"], rb["srv_time_since_last_change"]) == ("5", "1", "0")
    # Configured maintenance: forced + configured bits; checks paused; a host name is the FQDN.
    assert (rs["srv_admin_state"], rs["srv_check_state"], rs["srv_check_status"]) == ("5", "14", "1")
    assert (rs["srv_addr"], rs["srv_fqdn"]) == ("mx9.example.net", "mx9.example.net")
    assert (rg["be_id"], rg["be_name"], rg["srv_check_state"], rg["srv_fqdn"]) == ("2", "relays", "0", "-")
    b.set_admin_state("drain")
    spare.set_admin_state("maint")  # changed at run time: only the forced bit
    rows = state_rows(rt, "show servers state mx")
    assert rows["b"]["srv_admin_state"] == "8" and rows["spare"]["srv_admin_state"] == "1"
    assert list(state_rows(rt, "show servers state 2")) == ["gw1"]


def test_show_servers_state_starting_during_slowstart(rt: Runtime) -> None:
    b = rt.mx.servers[1]
    b.check_done(REFUSED)
    b.check_done(PASS)
    b.check_done(PASS)
    assert state_rows(rt)["b"]["srv_op_state"] == "1"
    rt.clock.advance(60)
    assert state_rows(rt)["b"]["srv_op_state"] == "2"


def test_show_servers_state_errors(rt: Runtime) -> None:
    assert rt.lines("show servers state nope") == ["Can't find backend."]
    assert rt.lines("show servers state mx relays") == ["usage: show servers state [<backend>]"]


def test_show_backend(rt: Runtime) -> None:
    assert rt.lines("show backend") == ["# name", "mx", "relays"]


# --------------------------------------------------------------------------- tables


def test_show_and_clear_table(rt: Runtime) -> None:
    a, b, _ = rt.mx.servers
    rt.mx.connected(a, b"192.0.2.7")
    rt.clock.advance(60)
    rt.mx.connected(b, b"198.51.100.1")
    assert rt.lines("show table") == ["# table: mx, type: ip, size:50, used:2"]
    assert rt.lines("show table mx") == [
        "# table: mx, type: ip, size:50, used:2",
        "0x1: key=192.0.2.7 use=0 exp=540000 server_id=1 server_key=a",
        "0x2: key=198.51.100.1 use=0 exp=600000 server_id=2 server_key=b",
    ]
    assert rt.lines("show table mx key 198.51.100.1")[1:] == [
        "0x2: key=198.51.100.1 use=0 exp=600000 server_id=2 server_key=b"
    ]
    assert rt("clear table mx key 192.0.2.7") == "\n"
    assert rt.lines("show table mx")[0] == "# table: mx, type: ip, size:50, used:1"
    assert rt("clear table mx") == "\n"
    assert rt.lines("show table mx") == ["# table: mx, type: ip, size:50, used:0"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "show table relays",
            "No such table: 'relays' (tables are named after backends with a stick table).",
        ),
        ("show table nope", "No such table: 'nope' (tables are named after backends with a stick table)."),
        ("show table mx data.gpc0 gt 0", "Only a 'key <key>' filter is supported."),
        ("clear table", "usage: clear table <table> [key <key>]"),
        ("clear table mx key", "Only a 'key <key>' filter is supported."),
    ],
)
def test_table_errors(rt: Runtime, line: str, message: str) -> None:
    assert rt.lines(line) == [message]


# --------------------------------------------------------------------------- set server & co


def test_set_server_state(rt: Runtime, health_log: LogCapture) -> None:
    a = rt.mx.servers[0]
    assert rt("set server mx/a state drain") == "\n"
    assert a.admin_state == "drain" and rt.mx.pick(None) is not a
    assert rt("set server mx/a state maint") == "\n" and not a.up
    assert rt("set server mx/a state ready") == "\n" and a.usable
    assert [line.split(".")[0] for line in health_log.lines()] == [
        "Server mx/a enters drain state",
        "Server mx/a is going DOWN for maintenance",
        "Server mx/a is UP/READY (leaving forced maintenance)",
    ]


def test_set_server_weight(rt: Runtime) -> None:
    a = rt.mx.servers[0]
    assert rt("set server mx/a weight 10") == "\n" and a.weight == 10
    assert rt("set server mx/a weight 50%") == "\n" and a.weight == 1  # of the initial 2
    assert rt("set weight mx/a 0") == "\n" and a.weight == 0 and not a.usable
    assert rt.lines("get weight mx/a") == ["0 (initial 2)"]
    assert rt("set weight mx/a 100%") == "\n" and a.weight == 2


def test_set_server_health(rt: Runtime) -> None:
    a = rt.mx.servers[0]
    assert rt("set server mx/a health down") == "\n" and not a.up
    assert rt("set server mx/a health up") == "\n" and a.up and a.health is not None and a.health.fully_up


def test_enable_disable_server_and_health(rt: Runtime) -> None:
    a = rt.mx.servers[0]
    rt("set server mx/a state drain")
    assert rt("disable server mx/a") == "\n" and a.admin_state == "maint"
    assert rt("enable server mx/a") == "\n" and a.admin_state == "ready"
    assert rt("disable health mx/a") == "\n" and not a.checks_enabled
    assert rt("enable health mx/a") == "\n" and a.checks_enabled


def test_state_changes_are_logged_as_runtime_commands(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.logger import Logger, formatEvent

    events: list[dict[str, Any]] = []
    monkeypatch.setattr(commands_module, "log", Logger(observer=events.append))
    rt("set server mx/a state drain; show info; set server mx/a state bogus")
    assert [formatEvent(e) for e in events] == ["runtime API: set server mx/a state drain"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("bogus", "Unknown command 'bogus'; 'help' lists the commands."),
        ("show", "Unknown command 'show'; 'help' lists the commands."),
        ("set server", "Require 'backend/server'."),
        ("set server mx", "Require 'backend/server'."),
        ("set server nope/a state drain", "No such backend."),
        ("set server mx/nope state drain", "No such server."),
        ("set server mx/a", "usage: set server <backend>/<server> state|weight|health <value>"),
        ("set server mx/a state", "'set server <srv> state' expects 'ready', 'drain' and 'maint'."),
        ("set server mx/a state sleep", "'set server <srv> state' expects 'ready', 'drain' and 'maint'."),
        ("set server mx/a weight", "Require <weight> or <weight%>."),
        ("set server mx/a weight heavy", "Require <weight> or <weight%>."),
        ("set server mx/a weight -1", "Require <weight> or <weight%>."),
        ("set server mx/a weight 257", "Absolute weight can only be between 0 and 256 inclusive."),
        ("set server mx/a weight 20000%", "Relative weight too large."),
        ("set server mx/a health maybe", "'set server <srv> health' expects 'up' or 'down'."),
        ("set server mx/a addr 10.0.0.9", "'set server <srv>' only supports 'state', 'weight' and 'health'."),
        ("set weight mx/a", "Require <weight> or <weight%>."),
        ("get weight mx", "Require 'backend/server'."),
        ("enable server", "Require 'backend/server'."),
        ("disable server mx/zz", "No such server."),
        ("enable health relays/gw1", "Health checks are not configured on this server."),
        ("disable health nope/x", "No such backend."),
        ("set severity-output loud", "one of 'none', 'number', 'string' is expected"),
    ],
)
def test_mistakes_get_one_clear_error_line(rt: Runtime, line: str, message: str) -> None:
    before = [(s.admin_state, s.weight, s.up) for s in rt.mx.servers]
    [words] = split_line(line)
    answer = rt.commands.run(words, rt.session)
    assert answer.lines == (message,) and answer.severity == ERROR
    assert rt.lines(line) == [message]
    assert [(s.admin_state, s.weight, s.up) for s in rt.mx.servers] == before


def test_severity_output_prefixes_messages_not_dumps(rt: Runtime) -> None:
    assert rt("set severity-output number;set server mx/nope state drain;show backend") == (
        "\n[3]: No such server.\n\n# name\nmx\nrelays\n\n"
    )
    assert (
        rt("set severity-output string;bogus")
        == "\n[err]: Unknown command 'bogus'; 'help' lists the commands.\n\n"
    )
    assert rt("set severity-output none;bogus").endswith(
        "\nUnknown command 'bogus'; 'help' lists the commands.\n\n"
    )


def test_a_crashing_command_is_one_error_and_is_logged(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[dict[str, Any]] = []
    from twisted.logger import Logger

    monkeypatch.setattr(commands_module, "log", Logger(observer=events.append))

    def boom(self: Any) -> list[str]:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ProcessView, "backend_ids", boom)
    assert rt.lines("show servers state") == [
        "Internal error while running 'show servers state': disk on fire"
    ]
    assert events and events[0]["log_failure"].check(RuntimeError)
    assert rt.lines("show backend") == ["# name", "mx", "relays"]  # the next command works
