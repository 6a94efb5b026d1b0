"""Every example configuration in etc/ loads, so the examples never rot."""

from __future__ import annotations

import pathlib

import pytest

from relaybal.config import load_config

ETC = pathlib.Path(__file__).parent.parent / "etc"
EXAMPLES = sorted(ETC.glob("*.toml"))


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads(path: pathlib.Path) -> None:
    config = load_config(str(path))
    assert config.frontends and config.backends
