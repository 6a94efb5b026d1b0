"""``relaybal import-haproxy``: HAProxy configuration text in, relaybal TOML and problems out.

Pure tests of :mod:`relaybal.importer.haproxy` (and of the command's function,
with in-memory streams). Every translated configuration is read back with
``tomllib`` and validated with :func:`relaybal.config.parse_config`.
"""

from __future__ import annotations

import io
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaybal.config import Config, endpoint, parse_config
from relaybal.importer import EXIT_COMPLETE, EXIT_PARTIAL, EXIT_UNREADABLE, import_haproxy, output_problems
from relaybal.importer.haproxy import (
    NOT_TRANSLATED,
    NOTE,
    ImportProblem,
    LineSyntaxError,
    Translation,
    bind_endpoints,
    format_duration,
    haproxy_time_ms,
    parse_server_address,
    split_words,
    toml_comment,
    toml_key,
    toml_string,
    translate,
)

FIXTURES = Path(__file__).parent / "fixtures" / "haproxy"

TCP_DEFAULTS = """\
defaults
    mode tcp
    timeout connect 5s
    timeout client 1m
    timeout server 1m
"""


def load(text: str) -> tuple[Config, Translation]:
    """Translate ``text`` and load the result as relaybal does."""
    translation = translate(text)
    return parse_config(tomllib.loads(translation.toml), "out.toml"), translation


def listen_section(body: str, *, defaults: str = TCP_DEFAULTS, name: str = "smtp") -> str:
    return f"{defaults}\nlisten {name}\n    bind :25\n" + "".join(
        f"    {ln.strip()}\n" for ln in body.splitlines()
    )


def problems_at(translation: Translation, line: int, severity: str | None = None) -> list[ImportProblem]:
    return [
        p for p in translation.problems if p.line == line and (severity is None or p.severity == severity)
    ]


def line_of(text: str, needle: str) -> int:
    """1-based number of the first line of ``text`` starting with ``needle``, else containing it."""
    lines = list(enumerate(text.splitlines(), start=1))
    starting = [i for i, ln in lines if ln.strip().startswith(needle)]
    return starting[0] if starting else next(i for i, ln in lines if needle in ln)


def table_before(toml: str, needle: str) -> str:
    """The last table header above the first output line containing ``needle``."""
    header = ""
    for ln in toml.splitlines():
        if needle in ln:
            return header
        if ln.startswith("["):
            header = ln
    raise AssertionError(f"{needle!r} not in the output")


# --------------------------------------------------------------------------- lexing


def test_split_words_follows_haproxy_quoting() -> None:
    assert split_words('  tcp-check send "EHLO x\\r\\n"  ') == ["tcp-check", "send", "EHLO x\r\n"]
    assert split_words("tcp-check expect string +OK\\ POP3\\ ready") == [
        "tcp-check",
        "expect",
        "string",
        "+OK POP3 ready",
    ]
    assert split_words("stats auth 'a\\b c'") == ["stats", "auth", "a\\b c"]  # no escapes in single quotes
    assert split_words('x "a#b" c # a comment') == ["x", "a#b", "c"]
    assert split_words('x "" y') == ["x", "", "y"]
    assert split_words("x \\x41\\x2") == ["x", "A\\x2"]
    assert split_words("# only a comment") == []


def test_split_words_rejects_an_unterminated_quote() -> None:
    with pytest.raises(LineSyntaxError, match="unterminated"):
        split_words('tcp-check send "EHLO')


_WORD = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=0, max_size=12)


@given(st.lists(_WORD, min_size=1, max_size=6))
def test_split_words_reads_back_double_quoted_words(words: list[str]) -> None:
    quoted = " ".join('"' + w.replace("\\", "\\\\").replace('"', '\\"') + '"' for w in words)
    assert split_words(quoted) == words


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("word", "ms"),
    [("5000", 5000), ("250ms", 250), ("10s", 10_000), ("1m", 60_000), ("2h", 7_200_000), ("1d", 86_400_000),
     ("1500us", 2), ("1us", 1), ("0", 0)],
)  # fmt: skip
def test_haproxy_time_is_milliseconds_by_default(word: str, ms: int) -> None:
    assert haproxy_time_ms(word) == ms


@pytest.mark.parametrize("word", ["", "5 s", "1.5s", "-1", "10x", "s"])
def test_bad_haproxy_times_are_refused(word: str) -> None:
    assert haproxy_time_ms(word) is None


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "0s"), (250, "250ms"), (1500, "1500ms"), (5000, "5s"), (90_000, "90s"), (120_000, "2m"),
     (3_600_000, "1h"), (172_800_000, "2d")],
)  # fmt: skip
def test_durations_use_the_largest_exact_unit(ms: int, text: str) -> None:
    assert format_duration(ms) == text


@given(st.integers(min_value=0, max_value=10**12))
def test_formatted_durations_read_back_exactly(ms: int) -> None:
    from relaybal.config import duration

    assert round(duration(format_duration(ms)) * 1000) == ms


@given(st.text(st.characters(blacklist_categories=("Cs",))))
def test_toml_strings_and_keys_read_back_exactly(text: str) -> None:
    doc = tomllib.loads(f"{toml_key(text or 'k')} = {toml_string(text)}\n")
    assert doc == {text or "k": text}


@given(st.text(st.characters(blacklist_categories=("Cs",))))
def test_comments_never_break_the_document(text: str) -> None:
    assert tomllib.loads(toml_comment(text) + "\nk = 1\n") == {"k": 1}


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("bind", "endpoints"),
    [
        ("*:25", ["tcp:25"]),
        (":25", ["tcp:25"]),
        ("0.0.0.0:25", ["tcp:25"]),
        ("10.0.0.1:25", ["tcp:25:interface=10.0.0.1"]),
        ("ipv4@10.0.0.1:25", ["tcp:25:interface=10.0.0.1"]),
        ("localhost:2525", ["tcp:2525:interface=127.0.0.1"]),
        ("[::]:25", ["tcp6:25"]),
        (":::25", ["tcp6:25"]),
        ("ipv6@:25", ["tcp6:25"]),
        ("[2001:db8::1]:25", ["tcp6:25:interface=2001\\:db8\\:\\:1"]),
        ("2001:db8::1:25", ["tcp6:25:interface=2001\\:db8\\:\\:1"]),
        (":2525-2527", ["tcp:2525", "tcp:2526", "tcp:2527"]),
        (":25,10.0.0.2:587", ["tcp:25", "tcp:587:interface=10.0.0.2"]),
        ("/run/smtp.sock", ["unix:/run/smtp.sock"]),
        ("unix@/run/a:b.sock", ["unix:/run/a\\:b.sock"]),
    ],
)
def test_bind_addresses_become_twisted_endpoints(bind: str, endpoints: list[str]) -> None:
    got = [ep for ep, _ in bind_endpoints(bind)]
    assert got == endpoints
    for ep in got:
        assert endpoint(ep) == ep  # relaybal's own validation (Twisted's parser) accepts it


def test_ipv6_bind_is_escaped_in_the_toml() -> None:
    config, translation = load(
        f"{TCP_DEFAULTS}listen l\n    bind [2001:db8::1]:25\n    server a 192.0.2.1:25\n"
    )
    assert 'listen = ["tcp6:25:interface=2001\\\\:db8\\\\:\\\\:1"]' in translation.toml
    assert config.frontends["l"].listen == ("tcp6:25:interface=2001\\:db8\\:\\:1",)


@pytest.mark.parametrize(
    "bind",
    ["mail.example.com:25", "fd@3", "abns@x", "quic4@:443", ":", "10.0.0.1", ":1-100", ":0", "${ADDR}:25"],
)
def test_unsupported_bind_addresses_are_refused(bind: str) -> None:
    from relaybal.importer.haproxy import _AddressError

    with pytest.raises(_AddressError):
        bind_endpoints(bind)


@pytest.mark.parametrize(
    ("word", "host", "port"),
    [
        ("192.0.2.1:25", "192.0.2.1", 25),
        ("mx1.example.net:2525", "mx1.example.net", 2525),
        ("192.0.2.1", "192.0.2.1", None),
        ("[2001:db8::5]:25", "2001:db8::5", 25),
        ("2001:db8::5:25", "2001:db8::5", 25),
        ("ipv6@[::1]:25", "::1", 25),
        ("192.0.2.1:", "192.0.2.1", None),
    ],
)
def test_server_addresses(word: str, host: str, port: int | None) -> None:
    address = parse_server_address(word)
    assert (address.host, address.port) == (host, port)


@pytest.mark.parametrize("word", ["/run/x.sock", "unix@x", "192.0.2.1:+1", "192.0.2.1:25-26", "bad_host!:25"])
def test_unusable_server_addresses_are_refused(word: str) -> None:
    from relaybal.importer.haproxy import _AddressError

    with pytest.raises(_AddressError):
        parse_server_address(word)


# --------------------------------------------------------------------------- the seeds


def test_seed_000_listen_section() -> None:
    """seeds/000: roundrobin, smtpchk HELO, send-proxy, checks; no timeouts (notes)."""
    text = (FIXTURES / "seed000_listen.cfg").read_text()
    config, translation = load(text)
    assert translation.complete
    fe = config.frontends["smtp"]
    assert (fe.mode, fe.listen, fe.backend) == ("splice", ("tcp:25",), "smtp")
    be = config.backends["smtp"]
    assert be.balance == "roundrobin"
    assert be.send_proxy == "v1"
    assert be.redispatch is False  # no "option redispatch" in HAProxy
    assert be.retries == 4  # HAProxy's default retries 3, plus the first attempt
    assert be.check is not None
    assert (be.check.kind, be.check.helo, be.check.observe) == ("smtp", "mail.terlisten-consulting.de", False)
    assert [(s.name, str(s.address)) for s in be.servers] == [
        ("mail1", "192.0.2.10:25"),
        ("mail2", "192.0.2.11:25"),
    ]
    # HAProxy has no timeouts here (and warns); relaybal's defaults apply, with a note.
    notes = problems_at(translation, line_of(text, "listen smtp"), NOTE)
    assert any("timeout connect" in p.reason for p in notes) and any(
        "timeout client" in p.reason for p in notes
    )
    # "no option http-server-close" has no effect in mode tcp: nothing to say.
    assert not problems_at(translation, line_of(text, "http-server-close"))


SEED_000_VERBATIM = """\
 mode tcp
    no option http-server-close
    balance roundrobin
    option smtpchk HELO mail.terlisten-consulting.de
    server mail1 send-proxy check
    server mail2 send-proxy check
"""


def test_seed_000_verbatim_snippet_is_reported_not_guessed() -> None:
    """The snippet as printed on the page: no section, no addresses; nothing is made up."""
    translation = translate(SEED_000_VERBATIM)
    assert not translation.complete
    assert [p.line for p in translation.untranslated] == [1, 2, 3, 4, 5, 6]
    assert all(p.reason == "outside any section" for p in translation.untranslated)
    assert output_problems(translation.toml, "out.toml")  # no frontend: it does not load
    # Inside a section, the address-less servers are reported as such.
    inside = translate("listen smtp\n    bind :25\n" + SEED_000_VERBATIM)
    assert [p.reason for p in problems_at(inside, 7)] == ["the server has no address"]


def test_seed_003_active_passive() -> None:
    """seeds/003: tcp-check banner, backup, send-proxy, stick table, stats socket."""
    text = (FIXTURES / "seed003_active_passive.cfg").read_text()
    config, translation = load(text)
    assert config.admin.socket == "/var/run/haproxy/admin.sock"
    assert set(config.frontends) == {"smtp_inbound", "smtp_submission"}
    assert config.frontends["smtp_inbound"].listen == ("tcp:25",)
    assert config.frontends["smtp_inbound"].timeout_client == 60.0
    assert config.frontends["smtp_submission"].backend == "submission_servers"
    mail = config.backends["mail_servers"]
    assert (mail.timeout_connect, mail.timeout_server, mail.send_proxy) == (10.0, 60.0, "v1")
    assert mail.check is not None and mail.check.kind == "banner"
    assert mail.check.timeout == 2.0  # HAProxy: a check may take "inter" (2s) without "timeout check"
    assert [(s.name, s.backup) for s in mail.servers] == [("mail1", False), ("mail2", True)]
    sub = config.backends["submission_servers"]
    assert sub.timeout_server == 300.0 and sub.send_proxy == "none"
    assert sub.stick is not None
    assert (sub.stick.on, sub.stick.size, sub.stick.expire) == ("src", 10 * 1024, 1800.0)
    assert [str(s.address) for s in sub.servers] == ["192.168.1.10:587", "192.168.1.11:587"]
    # Only "stats timeout" is left over.
    assert [p.text for p in translation.untranslated] == ["stats timeout 30s"]
    assert (
        f"# haproxy.cfg:{line_of(text, 'stats timeout')}: not translated: stats timeout 30s"
        in translation.toml
    )


def test_seed_003_as_printed_repeats_sections() -> None:
    """The article repeats "backend mail_servers" for its send-proxy snippet: HAProxy refuses that."""
    text = (
        "backend mail_servers\n    server mail1 192.168.1.10:25 check\n"
        "backend mail_servers\n    mode tcp\n    server mail1 192.168.1.10:25 check send-proxy\n"
    )
    translation = translate(text)
    (problem,) = problems_at(translation, 3)
    assert "already declared at line 1" in problem.reason
    assert "#     server mail1 192.168.1.10:25 check send-proxy" in translation.toml  # kept, commented


# --------------------------------------------------------------------------- every keyword


def test_keywords_fixture_translates_completely() -> None:
    text = (FIXTURES / "keywords.cfg").read_text()
    config, translation = load(text)
    assert translation.complete, translation.untranslated
    assert config.admin.socket == "/run/haproxy/admin.sock"
    mx_in = config.frontends["mx_in"]
    assert mx_in.listen == (
        "tcp:25:interface=10.0.0.1",
        "tcp:2525",
        "tcp:2526:interface=127.0.0.1",
        "tcp6:25",
        "tcp6:2525:interface=2001\\:db8\\:\\:25",
    )
    assert (mx_in.backend, mx_in.maxconn, mx_in.timeout_client, mx_in.accept_proxy) == ("mx", 5000, 120.0, ())
    lb = config.frontends["from_balancers"]
    assert lb.backend == "mx"  # use_backend without a condition
    assert [str(n) for n in lb.accept_proxy] == ["0.0.0.0/0", "::/0"]
    mx = config.backends["mx"]
    assert (mx.balance, mx.timeout_connect, mx.timeout_server, mx.timeout_queue) == (
        "leastconn",
        5.0,
        90.0,
        20.0,
    )
    assert (mx.retries, mx.redispatch, mx.send_proxy) == (3, True, "v2")
    assert mx.check is not None
    check = mx.check
    assert (check.kind, check.helo, check.interval, check.fastinter, check.downinter) == (
        "smtp", "lb.example.com", 3.0, 1.0, 10.0,
    )  # fmt: skip
    assert (check.rise, check.fall, check.observe) == (3, 2, False)
    assert check.timeout == 7.0  # timeout check 4s + min(timeout connect 5s, inter 3s)
    servers = {s.name: s for s in mx.servers}
    assert (servers["mx1"].weight, servers["mx1"].maxconn, servers["mx1"].slowstart) == (3, 100, 30.0)
    assert servers["mx3"].state == "maint"
    assert servers["spare"].backup
    sub = config.backends["submission"]
    assert config.frontends["submission"].backend == "submission"
    assert (sub.balance, sub.send_proxy) == ("source", "v1")
    assert sub.check is not None and (sub.check.kind, sub.check.helo) == ("smtp", "check.example.com")
    assert sub.stick is not None and (sub.stick.size, sub.stick.expire) == (20 * 1024, 3600.0)
    relay = config.backends["relay_out"]
    assert (relay.balance, relay.redispatch, relay.retries, relay.check) == ("static-rr", False, 1, None)
    assert [s.weight for s in relay.servers] == [2, 1]
    assert config.backends["first_fit"].balance == "first"
    two = config.backends["two_choices"]
    assert two.balance == "random"
    assert str(two.servers[0].address) == "[2001:db8::41]:25"
    banner = config.backends["banner_only"]
    assert banner.check is not None and banner.check.kind == "banner"
    assert (banner.check.interval, banner.check.rise, banner.check.fall) == (0.5, 1, 1)
    # The one note: accept-proxy trusts every client, list the proxies instead.
    assert [p.line for p in translation.problems] == [line_of(text, "accept-proxy")]


def test_defaults_apply_until_the_next_defaults_and_from_picks_a_named_one() -> None:
    text = (FIXTURES / "defaults_inheritance.cfg").read_text()
    config, translation = load(text)
    checked = config.backends["checked"]  # first, unnamed defaults
    assert (checked.timeout_connect, checked.redispatch, checked.retries) == (3.0, False, 4)
    assert checked.check is not None and (checked.check.kind, checked.check.helo) == ("smtp", "localhost")
    assert config.frontends["inbound"].timeout_client == 30.0
    plain = config.backends["plain"]  # the last defaults: no smtpchk, retries 5, redispatch
    assert (plain.timeout_connect, plain.redispatch, plain.retries) == (7.0, True, 6)
    assert plain.check is not None and plain.check.kind == "tcp"
    named = config.backends["submission_servers"]  # from submission_base
    assert (named.timeout_connect, named.timeout_server, named.balance) == (4.0, 600.0, "leastconn")
    assert named.check is not None and named.check.interval == 5.0  # default-server inter 5s check
    assert config.frontends["submission"].timeout_client == 600.0
    # s4 has no-check: relaybal will check it anyway, which is worth a note only.
    assert translation.complete
    (note,) = translation.problems
    assert note.severity == NOTE and "no-check" in note.text


def test_untranslatable_fixture_reports_and_keeps_every_line() -> None:
    text = (FIXTURES / "untranslatable.cfg").read_text()
    config, translation = load(text)
    assert not translation.complete
    reported = {p.line for p in translation.untranslated}
    for needle in (
        "daemon", "user haproxy", "group haproxy", "maxconn 4096", "log /dev/log", "tune.bufsize",
        "dontlognull", "timeout tunnel", "frontend web", "backend www", "backend api",
        "acl blocked", "tcp-request connection", "use_backend quarantine", "balance hdr(host)",
        "ssl-hello-chk", "option tcpka", "source 192.0.2.200", "check inter 10s", "id 7",
        "server bk2", "stats auth", "peers mypeers",
    ):  # fmt: skip
        assert line_of(text, needle) in reported, needle
    # Every problem is a comment in the output, and skipped sections keep their lines.
    for problem in translation.problems:
        assert toml_comment(problem.format("haproxy.cfg")) in translation.toml
    assert "#     acl is_api path_beg /api" in translation.toml
    # What can be translated still is: the TCP frontend, its default backend, the stats page.
    assert config.frontends["smtp"].backend == "mx"
    assert set(config.frontends) == {"smtp"}
    assert config.admin.http == "tcp:8404:interface=127.0.0.1"
    mx = config.backends["mx"]
    assert mx.balance == "roundrobin" and mx.check is not None and mx.check.kind == "tcp"
    assert [p.severity for p in problems_at(translation, line_of(text, "timeout http-request"))] == [NOTE]


def test_problems_are_commented_in_the_table_they_belong_to() -> None:
    text = (FIXTURES / "untranslatable.cfg").read_text()
    toml = translate(text).toml
    assert table_before(toml, "not translated: acl blocked") == "[frontend.smtp]"
    assert table_before(toml, "not translated: option tcpka") == "[backend.mx]"
    assert (
        table_before(toml, "server bk2 192.0.2.9:25 backup (without option allbackups")
        == "[[backend.mx.server]]"
    )
    assert table_before(toml, "not translated: daemon") == "[admin]"


# --------------------------------------------------------------------------- keyword by keyword


def test_timeouts_follow_haproxys_units_and_sections() -> None:
    text = listen_section(
        "timeout connect 2500\ntimeout client 3m\ntimeout server 1h\ntimeout queue 30s\n"
        "server a 192.0.2.1:25",
        defaults="",
    )
    config, translation = load(text)
    be, fe = config.backends["smtp"], config.frontends["smtp"]
    assert (be.timeout_connect, be.timeout_server, be.timeout_queue, fe.timeout_client) == (
        2.5,
        3600.0,
        30.0,
        180.0,
    )
    assert 'timeout_connect = "2500ms"' in translation.toml
    assert translation.complete and not translation.problems


def test_frontend_and_backend_timeouts_in_the_wrong_section_are_reported() -> None:
    text = TCP_DEFAULTS + (
        "frontend f\n    bind :25\n    timeout server 10s\n    default_backend b\n"
        "backend b\n    timeout client 10s\n    server a 192.0.2.1:25\n"
    )
    translation = translate(text)
    assert [p.line for p in translation.untranslated] == [line_of(text, "timeout server 10s"),
                                                          line_of(text, "timeout client 10s")]  # fmt: skip


@pytest.mark.parametrize(
    ("haproxy", "attempts"), [("", 4), ("retries 0", 1), ("retries 5", 6), ("retries 100", 100)]
)
def test_retries_count_the_first_attempt_too(haproxy: str, attempts: int) -> None:
    config, _ = load(listen_section(f"{haproxy}\nserver a 192.0.2.1:25"))
    assert config.backends["smtp"].retries == attempts


def test_redispatch_defaults_off_as_in_haproxy_and_no_option_overrides_defaults() -> None:
    defaults = TCP_DEFAULTS + "    option redispatch\n"
    config, _ = load(listen_section("server a 192.0.2.1:25", defaults=defaults))
    assert config.backends["smtp"].redispatch is True
    config, _ = load(listen_section("no option redispatch\nserver a 192.0.2.1:25", defaults=defaults))
    assert config.backends["smtp"].redispatch is False
    config, _ = load(listen_section("server a 192.0.2.1:25"))
    assert config.backends["smtp"].redispatch is False


@pytest.mark.parametrize(
    ("haproxy", "relaybal", "complete"),
    [
        ("roundrobin", "roundrobin", True), ("static-rr", "static-rr", True),
        ("leastconn", "leastconn", True), ("first", "first", True), ("source", "source", True),
        ("random", "random", True),
        ("random(2)", "random", True), ("random(5)", "random", False), ("uri", "roundrobin", False),
        ("hash req.payload(0,10)", "roundrobin", False),
    ],
)  # fmt: skip
def test_balance_algorithms(haproxy: str, relaybal: str, complete: bool) -> None:
    config, translation = load(listen_section(f"balance {haproxy}\nserver a 192.0.2.1:25"))
    assert config.backends["smtp"].balance == relaybal
    assert translation.complete is complete


def test_server_parameters() -> None:
    config, translation = load(
        listen_section(
            "server a 192.0.2.1:25 weight 10 maxconn 50 slowstart 1m\n"
            "server b 192.0.2.2:25 weight 0\n"
            "server c 192.0.2.3:25 disabled\n"
            "server d 192.0.2.4:25 backup"
        )
    )
    servers = {s.name: s for s in config.backends["smtp"].servers}
    assert (servers["a"].weight, servers["a"].maxconn, servers["a"].slowstart) == (10, 50, 60.0)
    assert servers["b"].weight == 0
    assert servers["c"].state == "maint"
    assert servers["d"].backup and servers["d"].weight == 1
    assert translation.complete


def test_default_server_applies_to_later_servers_and_server_words_override_it() -> None:
    config, _ = load(
        listen_section(
            "default-server weight 5 maxconn 9 backup\nserver a 192.0.2.1:25 no-backup weight 7\n"
            "server b 192.0.2.2:25"
        )
    )
    servers = {s.name: s for s in config.backends["smtp"].servers}
    assert (servers["a"].weight, servers["a"].maxconn, servers["a"].backup) == (7, 9, False)
    assert (servers["b"].weight, servers["b"].backup) == (5, True)


@pytest.mark.parametrize(("words", "expected"), [("send-proxy", "v1"), ("send-proxy-v2", "v2"), ("", "none")])
def test_send_proxy_becomes_the_backends_send_proxy(words: str, expected: str) -> None:
    config, translation = load(
        listen_section(f"server a 192.0.2.1:25 {words}\nserver b 192.0.2.2:25 {words}")
    )
    assert config.backends["smtp"].send_proxy == expected
    assert translation.complete


def test_servers_disagreeing_on_send_proxy_are_reported() -> None:
    text = listen_section(
        "server a 192.0.2.1:25 send-proxy-v2\nserver b 192.0.2.2:25\nserver c 192.0.2.3:25 send-proxy"
    )
    config, translation = load(text)
    assert config.backends["smtp"].send_proxy == "v2"  # the first server's
    assert [p.line for p in translation.untranslated] == [
        line_of(text, "server b"),
        line_of(text, "server c"),
    ]
    assert "PROXY header" in translation.untranslated[0].reason


def test_unsupported_server_parameters_are_reported_and_the_server_kept() -> None:
    text = listen_section("server a 192.0.2.1:25 check ssl verify none id 3 foo")
    config, translation = load(text)
    assert [s.name for s in config.backends["smtp"].servers] == ["a"]
    reasons = [p.reason for p in problems_at(translation, line_of(text, "server a"), NOT_TRANSLATED)]
    assert len(reasons) == 4
    assert any('"ssl"' in r for r in reasons) and any('"verify none"' in r for r in reasons)
    assert any('"id 3"' in r for r in reasons) and any('"foo"' in r for r in reasons)


def test_without_check_there_is_no_check_table_even_with_smtpchk() -> None:
    text = listen_section("option smtpchk\nserver a 192.0.2.1:25")
    config, translation = load(text)
    assert config.backends["smtp"].check is None
    assert [p.severity for p in problems_at(translation, line_of(text, "smtpchk"))] == [NOTE]


@pytest.mark.parametrize(
    ("option", "kind", "helo"),
    [
        ("", "tcp", ""),
        ("option smtpchk", "smtp", "localhost"),
        ("option smtpchk HELO mx.example.org", "smtp", "mx.example.org"),
        ("option smtpchk EHLO lb.example.org", "smtp", "lb.example.org"),
        ("option tcp-check", "tcp", ""),
    ],
)
def test_check_kinds(option: str, kind: str, helo: str) -> None:
    config, translation = load(listen_section(f"{option}\nserver a 192.0.2.1:25 check"))
    check = config.backends["smtp"].check
    assert check is not None
    assert check.kind == kind
    if helo:
        assert check.helo == helo
    assert translation.complete


@pytest.mark.parametrize(
    ("rules", "kind", "helo"),
    [
        (['tcp-check expect string "220 "'], "banner", ""),
        (["tcp-check connect", "tcp-check expect rstring ^220"], "banner", ""),
        (["tcp-check connect port 25 linger", 'tcp-check expect string "220"', 'tcp-check send "QUIT\\r\\n"'],
         "banner", ""),
        (["tcp-check connect", 'tcp-check expect string "220 "', 'tcp-check send "EHLO lb.example.com\\r\\n"',
          'tcp-check expect string "250"', 'tcp-check send "QUIT\\r\\n"',
          'tcp-check expect string "221"'],
         "smtp", "lb.example.com"),
        (["tcp-check expect rstring ^220", "tcp-check send HELO\\ mx.test\\r\\n",
          "tcp-check expect rstring ^2..", 'tcp-check comment "just a comment"'], "smtp", "mx.test"),
        (["tcp-check connect"], "tcp", ""),
    ],
)  # fmt: skip
def test_tcp_check_sequences_that_are_smtp_checks(rules: list[str], kind: str, helo: str) -> None:
    config, translation = load(
        listen_section("option tcp-check\n" + "\n".join(rules) + "\nserver a 192.0.2.1:25 check")
    )
    check = config.backends["smtp"].check
    assert check is not None
    assert check.kind == kind
    if helo:
        assert check.helo == helo
    assert translation.complete, translation.untranslated


@pytest.mark.parametrize(
    "rules",
    [
        ['tcp-check expect string "+OK"'],
        ['tcp-check send "PING\\r\\n"', 'tcp-check expect string "+PONG"'],
        ['tcp-check send "EHLO x.test\\r\\n"', 'tcp-check expect string "250"'],  # no greeting first
        ["tcp-check connect port 25 ssl", 'tcp-check expect string "220 "'],
        ['tcp-check expect string "220 "', "tcp-check send-binary 0102"],
    ],
)
def test_other_tcp_check_sequences_fall_back_to_a_connect_check(rules: list[str]) -> None:
    text = listen_section("option tcp-check\n" + "\n".join(rules) + "\nserver a 192.0.2.1:25 check")
    config, translation = load(text)
    check = config.backends["smtp"].check
    assert check is not None and check.kind == "tcp"
    assert not translation.complete
    assert all("tcp-check" in p.text for p in translation.untranslated)


def test_tcp_check_rules_without_the_option_are_ignored_as_haproxy_does() -> None:
    text = listen_section('tcp-check expect string "220 "\nserver a 192.0.2.1:25 check')
    config, translation = load(text)
    check = config.backends["smtp"].check
    assert check is not None and check.kind == "tcp"
    assert [p.severity for p in translation.problems] == [NOTE]


def test_tcp_check_rules_of_the_section_replace_those_of_defaults() -> None:
    defaults = TCP_DEFAULTS + '    option tcp-check\n    tcp-check expect string "220 "\n'
    config, _ = load(listen_section("server a 192.0.2.1:25 check", defaults=defaults))
    assert config.backends["smtp"].check is not None and config.backends["smtp"].check.kind == "banner"
    own = 'tcp-check expect string "220 "\ntcp-check send "EHLO a.test\\r\\n"\ntcp-check expect string "250"'
    config, _ = load(listen_section(own + "\nserver a 192.0.2.1:25 check", defaults=defaults))
    assert config.backends["smtp"].check is not None and config.backends["smtp"].check.kind == "smtp"


def test_check_timing_parameters_and_timeout_check() -> None:
    config, _ = load(
        listen_section(
            "timeout check 3s\nserver a 192.0.2.1:25 check inter 10s fastinter 2s downinter 30s rise 4 fall 5"
        )
    )
    check = config.backends["smtp"].check
    assert check is not None
    assert (check.interval, check.fastinter, check.downinter, check.rise, check.fall) == (
        10.0,
        2.0,
        30.0,
        4,
        5,
    )
    assert check.timeout == 8.0  # timeout check 3s + min(timeout connect 5s, inter 10s)


def test_observe_layer4_keeps_relaybals_passive_check() -> None:
    config, _ = load(listen_section("server a 192.0.2.1:25 check observe layer4"))
    assert config.backends["smtp"].check is not None and config.backends["smtp"].check.observe is True


def test_servers_without_check_among_checked_ones_get_a_note() -> None:
    text = listen_section("server a 192.0.2.1:25 check\nserver b 192.0.2.2:25")
    config, translation = load(text)
    assert config.backends["smtp"].check is not None
    (note,) = translation.problems
    assert (note.line, note.severity) == (line_of(text, "server b"), NOTE)


def test_check_settings_that_differ_between_servers_are_reported() -> None:
    text = listen_section("server a 192.0.2.1:25 check inter 1s\nserver b 192.0.2.2:25 check inter 5s")
    config, translation = load(text)
    assert config.backends["smtp"].check is not None and config.backends["smtp"].check.interval == 1.0
    assert [p.line for p in translation.untranslated] == [line_of(text, "server b")]


def test_check_port_other_than_the_servers_is_reported() -> None:
    text = listen_section("server a 192.0.2.1:10025 check port 25\nserver b 192.0.2.2:25 check port 25")
    translation = translate(text)
    assert [p.line for p in translation.untranslated] == [line_of(text, "server a")]


def test_stick_table_and_stick_on_src() -> None:
    config, translation = load(
        listen_section("stick-table type ip size 1m expire 2h\nstick on src\nserver a 192.0.2.1:25")
    )
    stick = config.backends["smtp"].stick
    assert stick is not None and (stick.on, stick.size, stick.expire) == ("src", 1024 * 1024, 7200.0)
    assert translation.complete


@pytest.mark.parametrize(
    ("lines", "translated"),
    [
        ("stick-table type ip size 10k\nstick on src", True),  # no expire: reported, table kept
        ("stick-table type ip size 10k expire 1m peers lbs\nstick on src", True),
        ("stick-table type string size 10k expire 1m\nstick on src", False),
        ("stick-table type ip size 10k expire 1m", False),  # tracking only
        ("stick on src", False),
        ("stick-table type ip size 10k expire 1m\nstick on src if { src 10.0.0.0/8 }", False),
    ],
)
def test_stick_variants_that_are_not_exact(lines: str, translated: bool) -> None:
    config, translation = load(listen_section(f"{lines}\nserver a 192.0.2.1:25"))
    assert (config.backends["smtp"].stick is not None) is translated
    assert not translation.complete


def test_stats_socket_becomes_the_admin_socket() -> None:
    text = "global\n    stats socket /run/haproxy.sock mode 600 level operator\n" + listen_section(
        "server a 192.0.2.1:25"
    )
    config, translation = load(text)
    assert config.admin.socket == "/run/haproxy.sock"
    reasons = [p.reason for p in translation.untranslated]
    assert len(reasons) == 2 and "0660" in reasons[0] and "every command" in reasons[1]
    tcp = translate("global\n    stats socket ipv4@127.0.0.1:9999 level admin\n")
    assert "socket" not in tomllib.loads(tcp.toml).get("admin", {})
    assert not tcp.complete


def test_accept_proxy_trusts_every_network_like_haproxy_with_a_note() -> None:
    text = TCP_DEFAULTS + "listen l\n    bind :25 accept-proxy\n    server a 192.0.2.1:25\n"
    config, translation = load(text)
    assert [str(n) for n in config.frontends["l"].accept_proxy] == ["0.0.0.0/0", "::/0"]
    assert translation.complete
    (note,) = translation.problems
    assert note.severity == NOTE and "proxies' networks" in note.reason
    comment = translation.toml.split("accept_proxy =")[0].splitlines()[-3:]
    assert all(line.startswith("#") for line in comment) and "List the addresses" in comment[1]


def test_listeners_with_and_without_accept_proxy_become_two_frontends() -> None:
    text = TCP_DEFAULTS + "frontend in\n    bind :25\n    bind :10025 accept-proxy\n    default_backend b\n"
    text += "backend b\n    server a 192.0.2.1:25\n"
    config, translation = load(text)
    assert config.frontends["in"].listen == ("tcp:25",) and config.frontends["in"].accept_proxy == ()
    proxied = config.frontends["in-proxy"]
    assert proxied.listen == ("tcp:10025",) and proxied.accept_proxy and proxied.backend == "b"
    assert translation.complete


def test_bind_parameters() -> None:
    text = TCP_DEFAULTS + (
        "listen l\n    bind :25 backlog 512 name smtp transparent\n    bind /run/l.sock mode 600\n"
        "    bind :465 ssl crt /etc/ssl/x.pem\n    server a 192.0.2.1:25\n"
    )
    config, translation = load(text)
    assert config.frontends["l"].listen == ("tcp:25:backlog=512", "unix:/run/l.sock:mode=600")
    reasons = [p.reason for p in translation.untranslated]
    assert len(reasons) == 3
    assert '"name smtp"' in reasons[0] and '"transparent"' in reasons[1] and "TLS" in reasons[2]


def test_use_backend_without_condition_wins_and_conditions_are_reported() -> None:
    text = TCP_DEFAULTS + (
        "frontend f\n    bind :25\n    use_backend a if { src 10.0.0.0/8 }\n    use_backend b\n"
        "    use_backend a\n    default_backend a\n"
        "backend a\n    server x 192.0.2.1:25\nbackend b\n    server y 192.0.2.2:25\n"
    )
    config, translation = load(text)
    assert config.frontends["f"].backend == "b"
    assert [p.line for p in translation.untranslated] == [line_of(text, "use_backend a if")]
    notes = [p.line for p in translation.problems if p.severity == NOTE]
    assert notes == [text.splitlines().index("    use_backend a") + 1, line_of(text, "default_backend a")]


def test_default_backend_is_inherited_from_defaults() -> None:
    text = (
        TCP_DEFAULTS
        + "    default_backend mx\nfrontend f\n    bind :25\nbackend mx\n    server a 192.0.2.1:25\n"
    )
    config, _ = load(text)
    assert config.frontends["f"].backend == "mx"


def test_frontend_without_backend_is_not_translated() -> None:
    text = (
        TCP_DEFAULTS
        + "frontend f\n    bind :25\n    use_backend b if { src 10.0.0.1 }\n"
        + "backend b\n    server a 192.0.2.1:25\n"
    )
    translation = translate(text)
    assert "[frontend.f]" not in translation.toml
    assert any("no backend" in p.reason for p in translation.untranslated)


def test_http_sections_are_skipped_and_tcp_frontends_cannot_use_them() -> None:
    text = (
        "defaults\n    mode http\n    timeout connect 5s\n    timeout client 5s\n    timeout server 5s\n"
        "    option forwardfor\n"
        "frontend web\n    bind :80\n    default_backend www\n"
        "backend www\n    server w 192.0.2.1:80\n"
        "frontend smtp\n    mode tcp\n    bind :25\n    default_backend www\n"
        "listen smtp2\n    mode tcp\n    bind :26\n    server s 192.0.2.2:25\n"
    )
    config, translation = load(text)
    assert set(config.frontends) == {"smtp2"}
    untranslated = {p.line: p.reason for p in translation.untranslated}
    assert "mode http" in untranslated[7] and "mode http" in untranslated[10]
    assert untranslated[15] == "backend www: it is mode http"
    assert [p.severity for p in problems_at(translation, 6)] == [NOTE]  # option forwardfor: no effect in tcp


def test_port_less_servers_take_the_frontends_port() -> None:
    text = TCP_DEFAULTS + "listen l\n    bind :2525\n    server a 192.0.2.1\n"
    config, translation = load(text)
    assert str(config.backends["l"].servers[0].address) == "192.0.2.1:2525"
    assert translation.complete and translation.problems[0].severity == NOTE
    two_ports = (
        TCP_DEFAULTS + "listen l\n    bind :25,:587\n    server a 192.0.2.1\n    server b 192.0.2.2:25\n"
    )
    config, translation = load(two_ports)
    assert [s.name for s in config.backends["l"].servers] == ["b"]
    assert not translation.complete


def test_backend_without_usable_servers_takes_its_frontends_along() -> None:
    text = TCP_DEFAULTS + (
        "frontend f\n    bind :25\n    default_backend b\n"
        "backend b\n    server a /run/x.sock\n"
        "listen ok\n    bind :26\n    server c 192.0.2.3:25\n"
    )
    config, translation = load(text)
    assert set(config.frontends) == {"ok"} and set(config.backends) == {"ok"}
    assert (
        "# frontend f is not translated" in translation.toml
        and "# backend b is not translated" in translation.toml
    )


def test_names_relaybal_cannot_use_are_renamed_and_dots_quoted() -> None:
    text = (
        TCP_DEFAULTS
        + "listen smtp:in\n    bind :25\n    server a 192.0.2.1:25\nlisten mail.out\n    bind :26\n"
    )
    text += "    server b 192.0.2.2:25\n"
    config, translation = load(text)
    assert set(config.frontends) == {"smtp_in", "mail.out"}
    assert config.frontends["smtp_in"].backend == "smtp_in"
    assert '[backend."mail.out"]' in translation.toml
    assert translation.complete


def test_lines_haproxy_would_not_read_are_reported() -> None:
    text = 'global\n    log "/dev/log\n' + TCP_DEFAULTS + "listen l\n    bind :25\n    server a ${MX}:25\n"
    text += "    server b 192.0.2.1:25\n    .if defined(X)\n"
    translation = translate(text)
    reasons = {p.line: p.reason for p in translation.untranslated}
    assert "unterminated" in reasons[2]
    assert "environment variables" in reasons[line_of(text, "${MX}")]
    assert "conditional blocks" in reasons[line_of(text, ".if")]


def test_global_process_settings_name_the_twistd_option() -> None:
    translation = translate(
        "global\n    user haproxy\n    chroot /var/lib/haproxy\n    nbthread 4\n    nbthread 1\n"
    )
    reasons = [p.reason for p in translation.problems]
    assert "--uid" in reasons[0] and "--chroot" in reasons[1]
    assert [p.severity for p in translation.problems] == [NOT_TRANSLATED, NOT_TRANSLATED, NOTE]


# --------------------------------------------------------------------------- robustness


_KEYWORD_LINES = [
    "global", "defaults", "frontend f{n}", "backend b{n}", "listen l{n}", "peers p{n}", "defaults d{n}",
    "backend b{n} from d{n}", "mode tcp", "mode http", "bind :{port}", "bind 127.0.0.{n}:{port} accept-proxy",
    "bind [::1]:{port}", "default_backend b{n}", "use_backend b{n}", "use_backend l{n} if x",
    "server s{n} 192.0.2.{n}:25 check weight {n}", "server s{n} 192.0.2.{n} backup send-proxy",
    "server s{n} 192.0.2.{n}:25 send-proxy-v2 inter {n}s rise {n} fall 2 disabled", "server s{n}",
    "default-server check slowstart {n}s", "balance roundrobin", "balance source", "balance uri",
    "option smtpchk", "option smtpchk EHLO x{n}.test", "option tcp-check", 'tcp-check expect string "220 "',
    'tcp-check send "EHLO a.test\\r\\n"', "tcp-check expect string 250", "option redispatch",
    "no option redispatch", "retries {n}", "timeout connect {n}s", "timeout client {n}",
    "timeout server {n}m", "timeout queue {n}s", "timeout check {n}s",
    "stick-table type ip size {n}k expire {n}m", "stick on src",
    "stats socket /run/h{n}.sock", "stats enable", "maxconn {n}", "acl a src 1.2.3.4", "option httplog",
    'weird "unterminated', "log global", "log 127.0.0.1 local0", "option allbackups",
    "server-template s 3 x:25",
]  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(_KEYWORD_LINES), st.integers(1, 4), st.integers(2525, 2528)),
        min_size=0,
        max_size=30,
    )
)
def test_any_mix_of_keywords_gives_valid_toml_and_reports_every_problem(
    lines: list[tuple[str, int, int]],
) -> None:
    text = "\n".join(template.format(n=n, port=port) for template, n, port in lines) + "\n"
    translation = translate(text)
    doc = tomllib.loads(translation.toml)  # never invalid TOML
    assert all(0 <= p.line <= len(lines) for p in translation.problems)
    for problem in translation.problems:
        assert toml_comment(problem.format("haproxy.cfg")) in translation.toml
    assert translation.complete == (not translation.untranslated)
    if not output_problems(translation.toml, "out.toml"):
        assert doc.get("frontend")  # a loadable result has something to run


# --------------------------------------------------------------------------- the command


def run_import(path: str, output: str | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = import_haproxy(path, output, stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def test_command_complete_translation_to_stdout() -> None:
    path = str(FIXTURES / "seed000_listen.cfg")
    status, out, err = run_import(path)
    assert status == EXIT_COMPLETE
    assert parse_config(tomllib.loads(out)).frontends["smtp"].backend == "smtp"
    assert err.splitlines()[0].startswith(f"{path}:5: note: listen smtp (")


def test_command_partial_translation_to_a_file(tmp_path: Path) -> None:
    path = str(FIXTURES / "seed003_active_passive.cfg")
    target = tmp_path / "relaybal.toml"
    status, out, err = run_import(path, str(target))
    assert (status, out) == (EXIT_PARTIAL, "")
    assert err == f"{path}:8: not translated: stats timeout 30s (relaybal's runtime API closes idle " \
        "connections after a fixed 60s)\n"  # fmt: skip
    assert parse_config(tomllib.loads(target.read_text())).admin.socket == "/var/run/haproxy/admin.sock"


def test_command_unreadable_file(tmp_path: Path) -> None:
    status, out, err = run_import(str(tmp_path / "missing.cfg"))
    assert (status, out) == (EXIT_UNREADABLE, "")
    assert "missing.cfg: cannot read: No such file or directory" in err


def test_command_output_that_does_not_load_is_partial(tmp_path: Path) -> None:
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_bytes(b"backend b\n    server a 192.0.2.1:25 # caf\xe9\n")  # no frontend; a latin-1 byte
    status, out, err = run_import(str(cfg))
    assert status == EXIT_PARTIAL
    assert "<stdout>: frontend: is required" in err
    assert "does not load as it is" in err
    assert tomllib.loads(out)["backend"]["b"]["server"][0]["address"] == "192.0.2.1:25"


def test_cli_has_the_subcommand(tmp_path: Path, capsys: Any) -> None:
    from relaybal.cli import main

    target = tmp_path / "out.toml"
    assert main(["import-haproxy", str(FIXTURES / "keywords.cfg"), "-o", str(target)]) == EXIT_COMPLETE
    assert main(["check-config", str(target)]) == 0
    assert "valid" in capsys.readouterr().out


def test_listen_without_servers_is_only_a_frontend() -> None:
    text = (
        TCP_DEFAULTS
        + "listen in\n    bind :25\n    default_backend mx\nbackend mx\n    server a 192.0.2.1:25\n"
    )
    config, translation = load(text)
    assert config.frontends["in"].backend == "mx" and set(config.backends) == {"mx"}
    assert translation.complete and not translation.problems


def test_the_documented_example_is_what_the_command_writes() -> None:
    """docs/haproxy.rst shows the translation of the seed 003 fixture: keep it true."""
    page = (Path(__file__).parent.parent / "docs" / "haproxy.rst").read_text()
    example = page.split(".. code-block:: toml")[1].split("\n\n", 1)[1].split("\nThings worth")[0]
    shown = [line.strip() for line in example.splitlines() if line.strip()]
    written = translate((FIXTURES / "seed003_active_passive.cfg").read_text()).toml.splitlines()
    assert len(shown) > 15
    position = 0
    for line in shown:  # the shown lines appear in the output, in order
        position = written.index(line, position) + 1
