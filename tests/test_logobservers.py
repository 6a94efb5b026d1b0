"""relaybal's text log observer writes exactly what twistd's would."""

from __future__ import annotations

import io
from collections.abc import Callable

from twisted.logger import LogLevel, formatEventAsClassicLogText

from relaybal.logobservers import FastTextObserver


def event(**kw: object) -> dict[str, object]:
    return {
        "log_time": 1795440928.3235786,
        "log_level": LogLevel.info,
        "log_namespace": "relaybal.splice",
        **kw,
    }


def test_connection_lines_match_twisted_formatting() -> None:
    out = io.StringIO()
    observer = FastTextObserver(out)
    e = event(
        log_format="{line}", line="192.0.2.7:40000 [23/Nov/2026:13:58:01.123] smtp mx/a 0/1/2 3 4 -- 0/0/0/0"
    )
    observer(e)
    assert out.getvalue() == formatEventAsClassicLogText(e)


def test_other_events_use_twisted_formatting() -> None:
    out = io.StringIO()
    observer = FastTextObserver(out)
    events = [
        event(log_format="frontend {name} listening", name="smtp"),
        event(log_format="{line}", line="x", log_system="custom-system"),
        event(log_format="{a} and {b}", a=1, b=[2]),
    ]
    for e in events:
        observer(e)
    assert out.getvalue() == "".join(formatEventAsClassicLogText(e) or "" for e in events)


def test_lines_of_one_iteration_go_out_in_one_write() -> None:
    writes: list[str] = []

    class Out(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

    later: list[Callable[[], None]] = []

    def defer(flush: Callable[[], None]) -> bool:
        later.append(flush)
        return True

    observer = FastTextObserver(Out(), defer)
    for n in range(3):
        observer({"log_format": "{line}", "line": f"line {n}", "log_time": 0.0, "log_system": "t"})
    assert writes == [] and len(later) == 1  # one flush scheduled for the three lines
    later[0]()
    assert len(writes) == 1 and writes[0].count("\n") == 3
