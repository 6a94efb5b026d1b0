"""The documentation is part of the feature: every page must build without errors."""

from __future__ import annotations

import pathlib

import docutils.core
import docutils.utils
import pytest

ROOT = pathlib.Path(__file__).parent.parent
PAGES = [ROOT / "README.rst", ROOT / "bench" / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_builds_cleanly(page: pathlib.Path) -> None:
    messages: list[str] = []

    def collect(msg: docutils.nodes.system_message) -> None:  # type: ignore[name-defined]
        if msg["level"] >= docutils.utils.Reporter.WARNING_LEVEL:
            messages.append(msg.astext())

    doctree = docutils.core.publish_doctree(
        page.read_text(), settings_overrides={"report_level": 5, "halt_level": 5}
    )
    for msg in doctree.findall(docutils.nodes.system_message):  # type: ignore[attr-defined]
        collect(msg)
    assert messages == []


def test_readme_shows_the_two_commands_first() -> None:
    text = (ROOT / "README.rst").read_text()
    commands = [line.split("#")[0].strip() for line in text.splitlines() if line.startswith("    make ")]
    assert commands[:2] == ["make demo", "make test"]


def test_every_config_key_is_documented() -> None:
    """Each attribute of the config model appears in the reference."""
    import attrs

    from relaybal import config

    reference = (ROOT / "docs" / "configuration.rst").read_text()
    models = [
        config.GlobalConfig, config.AdminConfig, config.FrontendConfig, config.BackendConfig,
        config.CheckConfig, config.ServerConfig, config.StickConfig,
    ]  # fmt: skip
    missing = [
        f"{m.__name__}.{f.name}"
        for m in models
        for f in attrs.fields(m)
        if f.name not in ("name", "servers") and f"``{f.name}``" not in reference
    ]
    assert missing == []
