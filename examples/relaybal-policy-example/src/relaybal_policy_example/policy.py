"""``sender-allowlist``: refuse MAIL FROM senders that are not in an allow-list file.

Options: ``file`` (required): one entry a line, ``user@example.com`` or
``@example.com`` (the whole domain), ``#`` comments; ``allow_null_sender``
(default ``true``): let bounces (``MAIL FROM:<>``) through.
"""

from __future__ import annotations

import os

import attrs

from relaybal.interfaces import VerdictResult
from relaybal.policy import (
    CONTINUE,
    OptionReader,
    PolicyBase,
    PolicyContext,
    PolicyEnvironment,
    PolicyPlugin,
    PolicySetupError,
    reject,
)
from relaybal.policy.options import boolean, path

NOT_LISTED = reject("Sender address rejected: not in the allow-list", "5.7.1", 550)


@attrs.frozen
class Settings:
    """What the options say, checked (``check-config`` calls :func:`read_options` only)."""

    file: str
    allow_null_sender: bool = True


def read_options(r: OptionReader) -> Settings:
    return Settings(
        file=r.require("file", path, ""),
        allow_null_sender=r.get("allow_null_sender", boolean, True),
    )


@attrs.frozen
class AllowList:
    """Listed addresses and domains, normalised (lower case)."""

    addresses: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str) -> AllowList:
        addresses: set[str] = set()
        domains: set[str] = set()
        for line in text.splitlines():
            entry = line.split("#", 1)[0].strip().lower()
            if entry.startswith("@"):
                domains.add(entry[1:])
            elif entry:
                addresses.add(entry)
        return cls(frozenset(addresses), frozenset(domains))

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, str):
            return False
        return address in self.addresses or address.rpartition("@")[2] in self.domains


class SenderAllowListPolicy(PolicyBase):
    """Refuses senders not in the file; no opinion about the others."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.allowed = AllowList()
        self._stamp: tuple[int, int] | None = None
        self.reload()

    def reload(self) -> None:
        """Read the file again if it changed (a failure keeps the previous list)."""
        try:
            info = os.stat(self.settings.file)
            stamp = (info.st_mtime_ns, info.st_size)
            if stamp == self._stamp:
                return
            with open(self.settings.file, encoding="utf-8") as f:
                self.allowed = AllowList.parse(f.read())
            self._stamp = stamp
        except OSError as e:
            if self._stamp is None:
                raise PolicySetupError(f"cannot read {self.settings.file}: {e.strerror}") from None

    def mail(self, context: PolicyContext) -> VerdictResult:
        sender = context.sender
        if sender is None:
            return CONTINUE
        if sender.is_null:
            return CONTINUE if self.settings.allow_null_sender else NOT_LISTED
        self.reload()
        return CONTINUE if sender.normalised in self.allowed else NOT_LISTED


def make_policy(settings: Settings, environment: PolicyEnvironment) -> SenderAllowListPolicy:
    return SenderAllowListPolicy(settings)


PLUGIN = PolicyPlugin(
    name="sender-allowlist",
    read_options=read_options,
    factory=make_policy,
    description="only senders listed in a file may send (550 5.7.1 for the others)",
)
