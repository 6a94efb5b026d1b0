"""Health-check probes on Twisted's fakes (no sockets), SMTP reply parsing, and check scheduling."""

from __future__ import annotations

from typing import Any

import pytest
from health_fakes import BUSY, PASS, REFUSED, make_backend
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import error
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from relaybal import proxyproto
from relaybal.balance.backend import Server
from relaybal.health import checks
from relaybal.health.checks import (
    BadReply,
    HealthChecker,
    HealthMonitor,
    ProbeSpec,
    Reply,
    ReplyReader,
    probe,
)
from relaybal.health.state import CheckResult

# --------------------------------------------------------------------------- replies


def test_reader_joins_multiline_replies_split_anywhere() -> None:
    reader = ReplyReader()
    stream = b"250-mx.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 \r\n221 2.0.0 Bye\n"
    replies: list[Reply] = []
    for i in range(len(stream)):
        replies += reader.feed(stream[i : i + 1])
    assert replies == [
        Reply(250, ("mx.test", "PIPELINING", "STARTTLS", "")),
        Reply(221, ("2.0.0 Bye",)),
    ]
    assert replies[0].has_extension("starttls") and not replies[0].has_extension("SIZE")
    assert replies[0].text == "mx.test" and replies[0].positive and not Reply(421, ()).positive


def test_reader_accepts_a_bare_code() -> None:
    assert ReplyReader().feed(b"220\r\n") == [Reply(220, ("",))]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"hello\r\n", "malformed reply line"),
        (b"22 short\r\n", "malformed reply line"),
        (b"220_x\r\n", "malformed reply line"),
        (b"250-a\r\n251 b\r\n", "reply code changed"),
        (b"250-" + b"x" * 70000, "reply too long"),
        (b"250-x\r\n" * 20000, "reply too long"),
    ],
)
def test_reader_rejects_what_is_not_a_reply(data: bytes, words: str) -> None:
    with pytest.raises(BadReply, match=words):
        ReplyReader().feed(data)


_TEXT = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=20)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    st.lists(st.tuples(st.integers(200, 599), st.lists(_TEXT, min_size=1, max_size=4)), max_size=5),
    st.lists(st.integers(0, 200), max_size=8),
)
def test_reader_round_trip(replies: list[tuple[int, list[str]]], cuts: list[int]) -> None:
    """Any sequence of replies, cut into any chunks, reads back as the same replies."""
    stream = b"".join(
        b"".join(
            f"{code}{'-' if i < len(lines) - 1 else ' '}{line}\r\n".encode()
            for i, line in enumerate(lines)
        )
        for code, lines in replies
    )
    reader = ReplyReader()
    got: list[Reply] = []
    start = 0
    for cut in sorted(set(cuts)):
        got += reader.feed(stream[start:cut])
        start = max(start, cut)
    got += reader.feed(stream[start:])
    assert got == [Reply(code, tuple(lines)) for code, lines in replies]


# --------------------------------------------------------------------------- probes


class TLSStringTransport(StringTransport):
    """A StringTransport that records startTLS and shows a peer certificate."""

    def __init__(self, not_after: bytes | None = b"20270101000000Z") -> None:
        super().__init__()
        self.tls_options: Any = None
        self.not_after = not_after

    def startTLS(self, options: Any) -> None:
        self.tls_options = options

    def getPeerCertificate(self) -> Any:
        if self.not_after is None:
            return None
        not_after = self.not_after

        class Certificate:
            def get_notAfter(self) -> bytes:
                return not_after

        return Certificate()


class Probe:
    """One probe run over a MemoryReactorClock, driven by the test as the server."""

    def __init__(
        self, kind: str = "smtp", send_proxy: str = "none", timeout: float = 5.0, now: float = 0.0
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(now)
        self.spec = ProbeSpec(
            kind=kind, host="10.0.0.1", port=25, helo="lb.test", timeout=timeout, send_proxy=send_proxy
        )
        self.results: list[CheckResult] = []
        probe(self.reactor, self.spec).addCallback(self.results.append)
        host, port, self.factory, self.connect_timeout, _ = self.reactor.tcpClients[0]
        assert (host, port) == ("10.0.0.1", 25)
        self.protocol: Any = None
        self.transport: StringTransport = StringTransport()

    def accept(self, transport: StringTransport | None = None) -> None:
        self.transport = transport if transport is not None else StringTransport()
        self.protocol = self.factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)

    def say(self, data: bytes) -> bytes:
        """The server sends ``data``; returns what the probe wrote in answer."""
        self.transport.clear()
        self.protocol.dataReceived(data)
        return self.transport.value()

    def close(self, reason: Failure | None = None) -> None:
        self.protocol.connectionLost(reason or Failure(error.ConnectionDone()))

    @property
    def result(self) -> CheckResult:
        assert len(self.results) == 1, self.results
        return self.results[0]


def test_tcp_check_passes_on_connect_and_closes() -> None:
    p = Probe("tcp")
    assert p.connect_timeout > p.spec.timeout  # our own timer decides, not connectTCP's
    p.accept()
    assert p.result.status == "L4OK" and p.result.passed
    assert p.transport.disconnecting and p.transport.value() == b""


def test_tcp_check_with_send_proxy_v2_sends_a_local_header_first() -> None:
    p = Probe("tcp", send_proxy="v2")
    p.accept()
    assert p.transport.value() == proxyproto.encode_v2(None, None, local=True)
    parsed = proxyproto.parse(p.transport.value())
    assert isinstance(parsed, proxyproto.Parsed) and parsed.header.command == "LOCAL"


def test_refused_is_l4con() -> None:
    p = Probe()
    p.factory.clientConnectionFailed(None, Failure(error.ConnectionRefusedError()))
    assert p.result == CheckResult("L4CON", info="Connection refused", duration=0.0)


def test_other_connect_errors_are_l4con_with_their_message() -> None:
    p = Probe()
    p.factory.clientConnectionFailed(None, Failure(error.NoRouteError()))
    assert p.result.status == "L4CON" and "No route" in p.result.info


def test_no_connection_in_time_is_l4tout() -> None:
    p = Probe(timeout=2.0)
    p.reactor.advance(1.9)
    assert p.results == []
    p.reactor.advance(0.1)
    assert p.result.status == "L4TOUT" and p.result.duration == pytest.approx(2.0)
    assert p.reactor.connectors[0].stoppedConnecting
    # The failure report that stopping causes adds nothing.
    p.factory.clientConnectionFailed(None, Failure(error.UserError()))
    assert len(p.results) == 1


def test_banner_check_quits_and_passes_on_220() -> None:
    p = Probe("banner", send_proxy="v1")
    p.accept()
    assert p.transport.value() == b"PROXY UNKNOWN\r\n"
    assert p.say(b"220 mx.test ESMTP\r\n") == b"QUIT\r\n"
    assert p.results == []  # the verdict waits for the reply to QUIT
    p.reactor.advance(0.25)
    p.say(b"221 2.0.0 Bye\r\n")
    assert p.result == CheckResult("L7OK", info="mx.test ESMTP", code=220, duration=0.25)
    assert p.transport.disconnecting


def test_banner_421_fails_with_its_code_and_text_even_if_the_server_hangs_up() -> None:
    p = Probe("banner")
    p.accept()
    assert p.say(b"421 4.3.2 Service not available\r\n") == b"QUIT\r\n"
    p.close()
    assert p.result.status == "L7STS" and p.result.code == 421
    assert p.result.info == "4.3.2 Service not available"


def test_smtp_check_full_conversation() -> None:
    p = Probe("smtp")
    p.accept()
    assert p.say(b"220-mx.test ESMTP\r\n220 welcome\r\n") == b"EHLO lb.test\r\n"
    assert p.say(b"250-mx.test\r\n250-PIPE") == b""
    assert p.say(b"LINING\r\n250 8BITMIME\r\n") == b"QUIT\r\n"
    p.say(b"221 Bye\r\n")
    assert p.result.status == "L7OK" and p.result.code == 250 and p.result.info == "mx.test"


def test_smtp_check_falls_back_to_helo_after_a_5xx_to_ehlo() -> None:
    p = Probe("smtp")
    p.accept()
    p.say(b"220 old.test\r\n")
    assert p.say(b"502 5.5.2 unrecognized\r\n") == b"HELO lb.test\r\n"
    assert p.say(b"250 old.test\r\n") == b"QUIT\r\n"
    p.say(b"221 bye\r\n")
    assert p.result.status == "L7OK" and p.result.code == 250


@pytest.mark.parametrize(
    ("script", "code"),
    [
        ([b"220 x\r\n", b"421 4.7.0 too busy\r\n"], 421),  # a 4xx to EHLO: no HELO
        ([b"220 x\r\n", b"500 no\r\n", b"554 go away\r\n"], 554),  # HELO refused too
        ([b"554 5.7.1 no service\r\n"], 554),
    ],
)
def test_smtp_check_fails_on_a_wrong_status_and_still_quits(script: list[bytes], code: int) -> None:
    p = Probe("smtp")
    p.accept()
    sent = b""
    for line in script:
        sent = p.say(line)
    assert sent == b"QUIT\r\n"
    p.say(b"221 bye\r\n")
    assert p.result.status == "L7STS" and p.result.code == code


def test_smtp_check_fails_when_quit_is_not_answered_2xx_or_at_all() -> None:
    p = Probe("smtp")
    p.accept()
    p.say(b"220 x\r\n")
    p.say(b"250 x\r\n")
    p.say(b"500 what\r\n")
    assert p.result.status == "L7STS" and p.result.info == "QUIT: what" and p.result.code == 500
    q = Probe("smtp")
    q.accept()
    q.say(b"220 x\r\n")
    q.say(b"250 x\r\n")
    q.close()
    assert q.result.status == "L7RSP" and "QUIT" in q.result.info


@pytest.mark.parametrize(
    ("script", "info"),
    [
        ([], "connection closed before the greeting"),
        ([b"220 x\r\n"], "connection closed before the reply to EHLO"),
    ],
)
def test_early_close_is_l7rsp(script: list[bytes], info: str) -> None:
    p = Probe("smtp")
    p.accept()
    for line in script:
        p.say(line)
    p.close()
    assert p.result == CheckResult("L7RSP", info=info)


def test_garbage_is_l7rsp_and_the_connection_is_dropped() -> None:
    p = Probe("smtp")
    p.accept()
    p.say(b"HTTP/1.1 400 Bad Request\r\n")
    assert p.result.status == "L7RSP" and "malformed" in p.result.info
    assert p.transport.disconnecting


def test_silence_after_connect_is_l7tout() -> None:
    p = Probe("smtp", timeout=3.0)
    p.accept()
    p.reactor.advance(3.0)
    assert p.result.status == "L7TOUT" and p.result.info == "no reply to greeting in time"


def test_timeout_after_a_failed_step_reports_that_step() -> None:
    p = Probe("smtp", timeout=3.0)
    p.accept()
    p.say(b"421 busy\r\n")
    p.reactor.advance(3.0)  # the server never answers QUIT
    assert p.result.status == "L7STS" and p.result.code == 421


def test_starttls_check_records_certificate_days() -> None:
    p = Probe("starttls", now=1798761600 - 30 * 86400 - 3600)  # 30 days and an hour before 2027-01-01
    transport = TLSStringTransport(not_after=b"20270101000000Z")
    p.accept(transport)
    p.say(b"220 mx.test ESMTP\r\n")
    assert p.say(b"250-mx.test\r\n250 STARTTLS\r\n") == b"STARTTLS\r\n"
    p.say(b"220 2.0.0 Ready to start TLS\r\n")
    assert transport.tls_options is not None
    transport.clear()
    p.protocol.handshakeCompleted()
    assert transport.value() == b"EHLO lb.test\r\n"
    assert p.say(b"250-mx.test\r\n250 SIZE 100\r\n") == b"QUIT\r\n"
    p.say(b"221 bye\r\n")
    assert p.result.status == "L7OK" and p.result.cert_days == 30
    assert p.result.info == "mx.test; TLS established; certificate expires in 30 days"


def test_starttls_check_reports_an_expired_certificate() -> None:
    p = Probe("starttls", now=1798761600 + 2 * 86400)
    transport = TLSStringTransport(not_after=b"20270101000000Z")
    p.accept(transport)
    p.say(b"220 x\r\n")
    p.say(b"250-x\r\n250 STARTTLS\r\n")
    p.say(b"220 go\r\n")
    p.protocol.handshakeCompleted()
    p.say(b"250 x\r\n")
    p.say(b"221 bye\r\n")
    assert p.result.cert_days == -2 and "expired 2 days ago" in p.result.info


def test_starttls_not_offered_is_l7rsp() -> None:
    p = Probe("starttls")
    p.accept()
    p.say(b"220 x\r\n")
    assert p.say(b"250-x\r\n250 PIPELINING\r\n") == b"QUIT\r\n"
    p.say(b"221 bye\r\n")
    assert p.result.status == "L7RSP" and p.result.info == "STARTTLS not offered"


def test_starttls_refused_is_l7sts() -> None:
    p = Probe("starttls")
    p.accept(TLSStringTransport())
    p.say(b"220 x\r\n")
    p.say(b"250-x\r\n250 STARTTLS\r\n")
    assert p.say(b"454 4.7.0 TLS not available\r\n") == b"QUIT\r\n"
    p.say(b"221 bye\r\n")
    assert p.result.status == "L7STS" and p.result.code == 454


def test_tls_handshake_failure_and_timeout_are_layer6() -> None:
    p = Probe("starttls")
    p.accept(TLSStringTransport())
    p.say(b"220 x\r\n")
    p.say(b"250-x\r\n250 STARTTLS\r\n")
    p.say(b"220 go\r\n")
    p.close(Failure(error.ConnectionLost("SSL routines: wrong version number")))
    assert p.result.status == "L6RSP" and "wrong version number" in p.result.info
    q = Probe("starttls", timeout=1.0)
    q.accept(TLSStringTransport())
    q.say(b"220 x\r\n")
    q.say(b"250-x\r\n250 STARTTLS\r\n")
    q.say(b"220 go\r\n")
    q.reactor.advance(1.0)
    assert q.result.status == "L6TOUT"


def test_probe_spec_comes_from_the_configuration() -> None:
    backend = make_backend(check={"kind": "banner", "helo": "probe.test", "timeout": "3s"}, send_proxy="v2")
    spec = ProbeSpec.for_server(backend.config, backend.config.check, backend.servers[1])  # type: ignore[arg-type]
    assert spec == ProbeSpec("banner", "10.0.0.2", 25, "probe.test", 3.0, "v2")


def test_client_tls_options_do_not_verify() -> None:
    options = checks.client_tls_options()
    assert options.verify is False


# --------------------------------------------------------------------------- scheduling


class FakeProber:
    """Hands out Deferreds the test fires; records the specs probed."""

    def __init__(self) -> None:
        self.pending: list[Deferred[CheckResult]] = []
        self.specs: list[ProbeSpec] = []

    def __call__(self, spec: ProbeSpec) -> Deferred[CheckResult]:
        d: Deferred[CheckResult] = Deferred()
        self.pending.append(d)
        self.specs.append(spec)
        return d

    def answer(self, result: CheckResult) -> None:
        self.pending.pop(0).callback(result)


def checker_for(
    check: dict[str, Any], clock: Clock | None = None
) -> tuple[HealthChecker, FakeProber, Server, Clock]:
    clock = clock if clock is not None else Clock()
    backend = make_backend([{"name": "a", "address": "10.0.0.1:25"}], check=check, clock=clock)
    prober = FakeProber()
    monitor = HealthMonitor([backend], clock, prober)
    monitor.start()
    clock.advance(0)
    server = backend.servers[0]
    return monitor.checkers[server], prober, server, clock


FAST = {"kind": "smtp", "interval": "10s", "fastinter": "1s", "downinter": "30s", "rise": 2, "fall": 2}


def test_checks_run_one_at_a_time_at_haproxys_intervals() -> None:
    checker, prober, server, clock = checker_for(FAST)
    assert len(prober.pending) == 1  # the first server is checked at once
    clock.advance(100)
    assert len(prober.pending) == 1  # nothing new while one is in flight
    prober.answer(PASS)  # fully up: next in `interval`
    clock.advance(9.9)
    assert prober.pending == []
    clock.advance(0.1)
    prober.answer(BUSY)  # changing: next in `fastinter`
    clock.advance(1)
    prober.answer(BUSY)  # down: next in `downinter`
    assert not server.up
    clock.advance(29.9)
    assert prober.pending == []
    clock.advance(0.1)
    prober.answer(PASS)  # rising: `fastinter`
    clock.advance(1)
    prober.answer(PASS)
    assert server.up and checker.checks_run == 5


def test_first_checks_are_spread_over_the_interval() -> None:
    clock = Clock()
    backend = make_backend(
        [{"name": n, "address": f"10.0.0.{i}:25"} for i, n in enumerate("abcd", 1)],
        check={"kind": "tcp", "interval": "4s"},
        clock=clock,
    )
    prober = FakeProber()
    HealthMonitor([backend], clock, prober).start()
    clock.advance(0)
    seen = []
    for _ in range(4):
        seen.append([spec.host for spec in prober.specs])
        clock.advance(1)
    assert seen == [["10.0.0.1"], ["10.0.0.1", "10.0.0.2"], ["10.0.0.1", "10.0.0.2", "10.0.0.3"],
                    ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]]  # fmt: skip


def test_maintenance_pauses_checks_and_ready_checks_at_once() -> None:
    checker, prober, server, clock = checker_for(FAST)
    prober.answer(PASS)
    server.set_admin_state("maint")
    clock.advance(100)
    assert prober.pending == [] and checker.timer is None
    server.set_admin_state("ready")
    clock.advance(0)
    assert len(prober.pending) == 1  # immediately
    prober.answer(BUSY)
    assert not server.up  # unproven after maintenance: one failure is enough


def test_a_result_arriving_in_maintenance_is_dropped() -> None:
    checker, prober, server, clock = checker_for(FAST)
    server.set_admin_state("maint")
    prober.answer(BUSY)
    assert server.last_check is None and server.health is not None and server.health.up
    assert checker.timer is None


def test_disabled_checks_stop_and_resume() -> None:
    checker, prober, server, clock = checker_for(FAST)
    prober.answer(PASS)
    server.set_checks_enabled(False)
    clock.advance(60)
    assert prober.pending == []
    server.set_checks_enabled(True)
    clock.advance(0)
    assert len(prober.pending) == 1


def test_a_passive_failure_brings_the_next_check_forward() -> None:
    checker, prober, server, clock = checker_for(FAST)
    prober.answer(PASS)  # next check due in 10 s
    clock.advance(2)
    server.record_failure("Connection refused")  # now changing: fastinter applies
    clock.advance(1)
    assert len(prober.pending) == 1


def test_a_crashing_prober_counts_as_a_socket_error() -> None:
    clock = Clock()
    backend = make_backend(check={"kind": "tcp", "rise": 1, "fall": 1}, clock=clock)

    def broken(spec: ProbeSpec) -> Deferred[CheckResult]:
        return fail(RuntimeError("boom"))

    HealthMonitor([backend], clock, broken).start()
    clock.advance(0)
    server = backend.servers[0]
    assert server.last_check is not None and server.last_check.status == "SOCKERR"
    assert not server.up


def test_monitor_stop_cancels_everything() -> None:
    clock = Clock()
    backend = make_backend(
        [{"name": "a", "address": "10.0.0.1:25", "slowstart": "10s"}],
        check={"kind": "tcp", "rise": 1, "fall": 1},
        clock=clock,
    )
    prober = FakeProber()
    monitor = HealthMonitor([backend], clock, prober)
    monitor.start()
    clock.advance(0)
    prober.answer(REFUSED)
    clock.advance(0.5)
    backend.servers[0].force_health(True)  # starts a slowstart ramp timer
    monitor.stop()
    assert clock.getDelayedCalls() == []
    clock.advance(100)
    assert prober.pending == []


def test_backends_without_a_check_get_no_checker() -> None:
    backend = make_backend()
    monitor = HealthMonitor([backend], Clock(), FakeProber())
    monitor.start()
    assert monitor.checkers == {}
