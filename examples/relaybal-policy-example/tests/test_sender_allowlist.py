"""Tests of the sender-allowlist policy: the policy alone, and found by name in a chain."""

from __future__ import annotations

from pathlib import Path

import pytest
from relaybal_policy_example import AllowList, SenderAllowListPolicy, Settings

from relaybal.config import ConfigError
from relaybal.policy import CONTINUE
from relaybal.policy.plugin import PolicySetupError
from relaybal.testing import ChainRunner, make_context, verdict_of


@pytest.fixture
def senders(tmp_path: Path) -> Path:
    path = tmp_path / "senders"
    path.write_text("# who may send\napp@example.com\n@apps.example.org  # the whole domain\n")
    return path


def test_the_file_format() -> None:
    allowed = AllowList.parse("A@Example.COM\n\n# x\n@Dom.test\n")
    assert "a@example.com" in allowed
    assert "anyone@dom.test" in allowed
    assert "b@example.com" not in allowed


@pytest.mark.parametrize(
    ("sender", "accepted"),
    [
        ("app@example.com", True),
        ("APP@Example.com", True),
        ("batch@apps.example.org", True),
        ("other@example.com", False),
        ("app@example.com.evil.test", False),
        ("", True),  # bounces pass by default
    ],
)
def test_policy_alone(senders: Path, sender: str, accepted: bool) -> None:
    policy = SenderAllowListPolicy(Settings(str(senders)))
    verdict = verdict_of(policy.mail(make_context("mail", sender=sender)))
    if accepted:
        assert verdict == CONTINUE
    else:
        assert verdict.reply.code == 550 and verdict.reply.status == "5.7.1"


def test_the_file_is_read_again_when_it_changes(senders: Path) -> None:
    policy = SenderAllowListPolicy(Settings(str(senders)))
    context = make_context("mail", sender="new@example.com")
    assert verdict_of(policy.mail(context)) != CONTINUE
    senders.write_text("new@example.com\nand-a-longer-line@example.com\n")
    assert verdict_of(policy.mail(context)) == CONTINUE


def test_a_missing_file_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(PolicySetupError, match="cannot read"):
        SenderAllowListPolicy(Settings(str(tmp_path / "missing")))


def test_found_by_name_in_a_chain(senders: Path) -> None:
    runner = ChainRunner.from_config(
        {
            "senders": {"plugin": "sender-allowlist", "file": str(senders)},
            "local": {"plugin": "networks", "allow": ["192.0.2.0/24"]},
        }
    )
    session = runner.session(client="192.0.2.7")
    assert session.connect().accepted and session.helo().accepted
    assert session.mail("intruder@example.com").code == 550
    assert session.mail("app@example.com").accepted
    assert session.rcpt("someone@example.net").accepted


def test_options_are_checked_like_the_rest_of_the_file() -> None:
    with pytest.raises(ConfigError) as info:
        ChainRunner.from_config({"senders": {"plugin": "sender-allowlist", "allow_null_sender": "yes"}})
    assert info.value.lines() == [
        "<config>: policy.senders.file: is required",
        '<config>: policy.senders.allow_null_sender: "yes" is not a boolean (expected true or false)',
    ]


def test_through_the_smtp_server(senders: Path) -> None:
    runner = ChainRunner.from_config({"senders": {"plugin": "sender-allowlist", "file": str(senders)}})
    client = runner.harness().connect("192.0.2.7")
    client.send(b"EHLO client.test\r\nMAIL FROM:<intruder@example.com>\r\nMAIL FROM:<app@example.com>\r\n")
    assert client.replies()[-2:] == [
        b"550 5.7.1 Sender address rejected: not in the allow-list",
        b"250 2.1.0 Ok",
    ]
