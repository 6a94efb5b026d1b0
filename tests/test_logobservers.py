"""relaybal's text log observer writes exactly what twistd's would."""

from __future__ import annotations

import io

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
