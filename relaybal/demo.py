"""``relaybal demo``: the main job on built-in defaults, with nothing else installed.

Starts two of relaybal's own SMTP sinks, the real relaybal service in splice mode
in front of them, sends a burst of mail through it with a progress bar, prints how
many connections each server took, and keeps running until Ctrl-C (or exits after
the table with ``--once``).
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


def demo_config(sink_ports: list[int]) -> dict[str, Any]:
    """The demo's configuration: one splice frontend, two equal servers, banner checked."""
    return {
        "global": {"hostname": "relaybal-demo.invalid", "state_dir": tempfile.gettempdir()},
        "frontend": {
            "demo": {
                "mode": "splice",
                "listen": ["tcp:0:interface=127.0.0.1"],
                "backend": "sinks",
            }
        },
        "backend": {
            "sinks": {
                "balance": "roundrobin",
                "verify_banner": True,
                "server": [
                    {"name": f"sink{i + 1}", "address": f"127.0.0.1:{p}"}
                    for i, p in enumerate(sink_ports)
                ],
            }
        },
    }


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


async def _demo(reactor: Any, once: bool, messages: int, out: TextIO) -> int:
    sinks = [SinkFactory(f"sink{i + 1}.invalid") for i in range(2)]
    sink_ports = []
    for sink in sinks:
        port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(sink)
        sink_ports.append(port.getHost().port)
    config = parse_config(demo_config(sink_ports), "<demo>")
    logdir = tempfile.mkdtemp(prefix="relaybal-demo-")
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
    out.write(f"  connection log (HAProxy tcplog style): {logpath}\n")
    if not once:
        out.write(
            f"relaybal keeps running: try `swaks --server 127.0.0.1:{port} --to you@example.com`."
            " Ctrl-C stops it.\n"
        )
        await defer.Deferred()  # until Ctrl-C stops the reactor
    await defer.maybeDeferred(service.stopService)
    return 0 if ok == messages else 1


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
