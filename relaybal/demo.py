"""``relaybal demo``: the main job on built-in defaults, with nothing else installed.

Starts five of relaybal's own SMTP sinks and the real relaybal service with two
frontends: a splice frontend balancing **connections** over two servers, and a
relay frontend that stores each message in a durable spool (in a temporary
directory) and spreads **messages** over three gateways. It sends a burst of
mail through each with a progress bar, prints how many connections and
messages each server took, and keeps running with its stats page until
Ctrl-C (or exits after the tables with ``--once``).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any, TextIO

from twisted.internet import defer, endpoints, task
from twisted.internet.protocol import ClientFactory
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.protocols.basic import LineOnlyReceiver

from relaybal.config import parse_config
from relaybal.service import RelaybalService
from relaybal.smtp.sink import SinkFactory

CONCURRENCY = 20


class _DemoClient(LineOnlyReceiver):
    """Sends one message per connection, in lock step, and reports the outcome."""

    SCRIPT = (
        (b"220", b"EHLO demo.invalid"),
        (b"250", b"MAIL FROM:<app@demo.invalid>"),
        (b"250", b"RCPT TO:<user@demo.invalid>"),
        (b"250", b"DATA"),
        (b"354", b"Subject: relaybal demo\r\n\r\nHello from relaybal demo.\r\n."),
        (b"250", b"QUIT"),
    )

    def __init__(self, done: Callable[[bool], None]) -> None:
        self.step = 0
        self.done = done
        self.ok = False

    def lineReceived(self, line: bytes) -> None:
        if line[3:4] == b"-":
            return  # continuation of a multi-line reply
        if self.step >= len(self.SCRIPT):
            self.ok = line.startswith(b"221")
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        expected, command = self.SCRIPT[self.step]
        if not line.startswith(expected):
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.step += 1
        self.transport.write(command + b"\r\n")  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        self.done(self.ok)


class _DemoClientFactory(ClientFactory):
    noisy = False

    def __init__(self, done: Callable[[bool], None]) -> None:
        self._done = done

    def buildProtocol(self, addr: Any) -> _DemoClient:
        return _DemoClient(self._done)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self._done(False)


def _bar(done: int, total: int, out: TextIO, width: int = 40) -> None:
    """Redraw the progress bar when it changes (on a terminal), or once at the end."""
    filled = width * done // total
    if done != total and (not out.isatty() or (filled == width * (done - 1) // total and done % 10)):
        return
    out.write(f"\r  sending [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    out.flush()


def send_burst(reactor: Any, port: int, messages: int, out: TextIO) -> defer.Deferred[int]:
    """Send ``messages`` messages, one connection each; fire with the number accepted."""
    result: defer.Deferred[int] = defer.Deferred()
    state = {"started": 0, "finished": 0, "ok": 0}

    def start_one() -> None:
        state["started"] += 1
        reactor.connectTCP("127.0.0.1", port, _DemoClientFactory(finished), timeout=10)

    def finished(ok: bool) -> None:
        state["finished"] += 1
        state["ok"] += ok
        _bar(state["finished"], messages, out)
        if state["started"] < messages:
            start_one()
        elif state["finished"] == messages:
            out.write("\n")
            result.callback(state["ok"])

    for _ in range(min(CONCURRENCY, messages)):
        start_one()
    return result


def demo_config(sink_ports: list[int], gateway_ports: list[int], state_dir: str) -> dict[str, Any]:
    """The demo's configuration.

    A splice frontend over two equal servers (banner checked), a relay frontend
    (durable spool in ``state_dir``) over three equal gateways, and the stats
    page on a free loopback port.
    """
    return {
        "global": {"hostname": "relaybal-demo.invalid", "state_dir": state_dir},
        "admin": {"http": "tcp:0:interface=127.0.0.1"},
        "frontend": {
            "demo": {
                "mode": "splice",
                "listen": ["tcp:0:interface=127.0.0.1"],
                "backend": "sinks",
            },
            "apps": {
                "mode": "relay",
                "listen": ["tcp:0:interface=127.0.0.1"],
                "backend": "gateways",
            },
        },
        "backend": {
            "sinks": {
                "balance": "roundrobin",
                "verify_banner": True,
                "server": [
                    {"name": f"sink{i + 1}", "address": f"127.0.0.1:{p}"}
                    for i, p in enumerate(sink_ports)
                ],
            },
            "gateways": {
                "balance": "roundrobin",
                "check": {"kind": "smtp", "interval": "1s"},
                "server": [
                    {"name": f"gw{i + 1}", "address": f"127.0.0.1:{p}"}
                    for i, p in enumerate(gateway_ports)
                ],
            },
        },
    }


def gateway_table(service: RelaybalService, gateways: list[SinkFactory]) -> str:
    """Messages per gateway: what the scheduler delivered, and what each gateway received."""
    backend = service.backends["gateways"]
    counters = [service.gateways.counters_of(server) for server in backend.servers]
    total = sum(c.messages for c in counters) or 1
    rows = [
        f"  {'gateway':<8} {'address':<18} {'weight':>6} {'messages':>8} {'share':>7} "
        f"{'bytes':>8} {'messages at gateway':>19}"
    ]
    for server, counter, sink in zip(backend.servers, counters, gateways, strict=True):
        rows.append(
            f"  {server.name:<8} {server.config.address!s:<18} {server.weight:>6} {counter.messages:>8} "
            f"{100 * counter.messages / total:>6.1f}% {counter.bytes:>8} {sink.messages:>19}"
        )
    return "\n".join(rows)


async def _delivered(reactor: Any, service: RelaybalService, gateways: list[SinkFactory], count: int) -> bool:
    """Wait (at most 30 s) until the spool is empty and the gateways hold ``count`` messages."""
    for _ in range(600):
        spool = service.spool
        if spool is not None and len(spool) == 0 and sum(g.messages for g in gateways) >= count:
            return True
        await task.deferLater(reactor, 0.05, lambda: None)
    return False


def table(service: RelaybalService, sinks: list[SinkFactory]) -> str:
    backend = service.backends["sinks"]
    total = sum(s.total for s in backend.servers) or 1
    rows = [
        f"  {'server':<8} {'address':<18} {'weight':>6} {'connections':>11} {'share':>7} "
        f"{'messages at server':>18}"
    ]
    for server, sink in zip(backend.servers, sinks, strict=True):
        rows.append(
            f"  {server.name:<8} {server.config.address!s:<18} {server.weight:>6} "
            f"{server.total:>11} {100 * server.total / total:>6.1f}% {sink.messages:>18}"
        )
    return "\n".join(rows)


async def _listen(reactor: Any, factories: list[SinkFactory]) -> list[int]:
    ports = []
    for factory in factories:
        port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        ports.append(port.getHost().port)
    return ports


async def _demo(reactor: Any, once: bool, messages: int, out: TextIO) -> int:
    sinks = [SinkFactory(f"sink{i + 1}.invalid") for i in range(2)]
    gateways = [SinkFactory(f"gw{i + 1}.invalid") for i in range(3)]
    sink_ports = await _listen(reactor, sinks)
    gateway_ports = await _listen(reactor, gateways)
    logdir = tempfile.mkdtemp(prefix="relaybal-demo-")
    config = parse_config(demo_config(sink_ports, gateway_ports, os.path.join(logdir, "state")), "<demo>")
    logpath = os.path.join(logdir, "relaybal.log")
    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(open(logpath, "a", encoding="utf-8"))],  # noqa: SIM115
        redirectStandardIO=False,
    )
    service = RelaybalService(config, reactor)
    service.privilegedStartService()
    service.startService()
    port = service.frontends["demo"].ports[0].getHost().port  # type: ignore[attr-defined]
    out.write(
        f"relaybal demo: splice frontend on 127.0.0.1:{port} → "
        f"sink1 127.0.0.1:{sink_ports[0]}, sink2 127.0.0.1:{sink_ports[1]} (roundrobin)\n"
    )
    ok = await send_burst(reactor, port, messages, out)
    out.write(f"  {ok} of {messages} messages accepted\n\n{table(service, sinks)}\n\n")
    out.write(f"  connection log (HAProxy tcplog style): {logpath}\n\n")

    relay_port = service.frontends["apps"].ports[0].getHost().port  # type: ignore[attr-defined]
    out.write(
        f"relaybal demo: relay frontend on 127.0.0.1:{relay_port} → spool → "
        + ", ".join(f"gw{i + 1} 127.0.0.1:{p}" for i, p in enumerate(gateway_ports))
        + " (roundrobin over messages)\n"
    )
    relayed = await send_burst(reactor, relay_port, messages, out)
    delivered = await _delivered(reactor, service, gateways, relayed)
    out.write(
        f"  {relayed} of {messages} messages accepted (each answered 250 once on disk), "
        f"{'all' if delivered else 'NOT all'} delivered\n\n{gateway_table(service, gateways)}\n\n"
    )
    http = service.admin_ports.get("http")
    if http is not None:
        web = http.getHost().port  # type: ignore[attr-defined]
        out.write(f"  stats page: http://127.0.0.1:{web}/  (also /stats.json, /metrics)\n")
    if not once:
        out.write(
            f"relaybal keeps running: try `swaks --server 127.0.0.1:{relay_port} --to you@example.com`"
            f" (relay) or port {port} (splice). Ctrl-C stops it.\n"
        )
        await defer.Deferred()  # until Ctrl-C stops the reactor
    await defer.maybeDeferred(service.stopService)
    return 0 if ok == messages and relayed == messages and delivered else 1


def run_demo(once: bool = False, messages: int = 200, out: TextIO | None = None) -> int:
    stream = out if out is not None else sys.stdout
    codes: list[int] = []

    def main(reactor: Any) -> defer.Deferred[None]:
        d = defer.ensureDeferred(_demo(reactor, once, messages, stream))
        d.addCallback(codes.append)
        return d.addCallback(lambda _: None)

    try:
        task.react(main)
    except SystemExit as e:
        if codes:
            return codes[0]
        return int(e.code or 0)
    return codes[0] if codes else 1
