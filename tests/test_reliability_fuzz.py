"""Fuzzing suite, bounded for ``make test``: every target over its seed corpus, then hypothesis.

The targets (``tests/fuzz/targets.py``) are the SMTP command parser
(``smtp_command``), the DATA/BDAT scanner (``datascan``), the delivery
client's reply parser (``reply_parser``), the PROXY v1/v2 reader
(``proxy_header``), the config loader (``config``) and a whole relay
session on a fake clock (``smtp_session``). ``make fuzz`` runs the same
targets for ``FUZZ_SECONDS`` each with hypothesis and with atheris.

Here every test is derandomized with a fixed number of examples, so a run
is repeatable and its cost known (``EXAMPLES`` per target, more for the
cheap ones).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fuzz.strategies import CORPUS, corpus, inputs, mutated_config
from fuzz.targets import TARGETS, check_config_document
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from soak.common import choose, record

# Examples per target in make test (a soak multiplies them).
EXAMPLES = {
    "smtp_command": 1500,
    "datascan": 1000,
    "reply_parser": 1500,
    "proxy_header": 600,
    "config": 300,
    "smtp_session": 400,
}


def examples(count: int) -> settings:
    return settings(max_examples=choose(count, count * 20), derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip


def test_every_target_has_a_seed_corpus() -> None:
    assert sorted(path.name for path in CORPUS.iterdir() if path.is_dir()) == sorted(TARGETS)
    for name in TARGETS:
        assert len(corpus(name)) >= 5, name


@pytest.mark.parametrize(
    ("name", "path"),
    [(name, path) for name in sorted(TARGETS) for path in sorted((CORPUS / name).iterdir())],
    ids=lambda value: value.name if isinstance(value, Path) else value,
)
def test_the_seed_corpus_passes(name: str, path: Path) -> None:
    TARGETS[name](path.read_bytes())


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_fuzz(name: str) -> None:
    count = 0

    @examples(EXAMPLES[name])
    @given(data=inputs(name))
    def run(data: bytes) -> None:
        nonlocal count
        count += 1
        TARGETS[name](data)

    run()
    record(f"fuzz-{name}-hypothesis-bounded", inputs=count + len(corpus(name)))


def test_fuzz_config_documents() -> None:
    count = 0

    @examples(300)
    @given(document=mutated_config())
    def run(document: dict[str, Any]) -> None:
        nonlocal count
        count += 1
        check_config_document(document)

    run()
    record("fuzz-config-documents-hypothesis-bounded", inputs=count)


_local = st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\.[A-Za-z0-9-]{1,8}){0,2}", fullmatch=True)
_domain = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,10}[A-Za-z0-9])?(\.[A-Za-z]{2,6}){1,3}", fullmatch=True)
_PARAMS = ["SIZE=1000", "BODY=8BITMIME", "BODY=7BIT", "SMTPUTF8", "AUTH=<>", "AUTH=alice+2Bx", "RET=FULL"]
_params = st.lists(st.sampled_from(_PARAMS), max_size=3, unique=True)


def test_fuzz_well_formed_commands() -> None:
    count = 0

    @examples(500)
    @given(verb=st.sampled_from(["MAIL FROM:", "RCPT TO:", "mail from: ", "RCPT TO:  "]), local=_local,
           domain=_domain, params=_params, flags=st.integers(0, 255))  # fmt: skip
    def run(verb: str, local: str, domain: str, params: list[str], flags: int) -> None:
        nonlocal count
        count += 1
        line = f"{verb}<{local}@{domain}>" + "".join(f" {p}" for p in params)
        TARGETS["smtp_command"](line.encode() + bytes([flags]))

    run()
    record("fuzz-smtp_command-well-formed-hypothesis-bounded", inputs=count)
