"""``sender-domains`` and ``recipient-domains``: decisions on an envelope address's domain.

``domains`` entries match a domain exactly (``"example.com"``) or, with a
leading dot, any of its subdomains (``".example.com"``); comparison is on the
normalised domain (lower case, IDNA A-labels).

- ``recipient-domains`` PERMITs a recipient whose domain matches (mail *to*
  these domains may be relayed by anyone: the Postfix ``relay_domains``
  idea); otherwise no opinion.
- ``sender-domains`` REJECTs (``553 5.7.1``) a MAIL FROM whose domain does not
  match; otherwise no opinion. It never allows relaying: a sender address is
  whatever the client writes. The null sender ``<>`` passes unless
  ``allow_null_sender = false``.
"""

from __future__ import annotations

import attrs

from relaybal.interfaces import VerdictResult
from relaybal.policy.context import PolicyContext, PolicyEnvironment
from relaybal.policy.options import OptionReader, boolean, domain
from relaybal.policy.plugin import PolicyBase, PolicyPlugin
from relaybal.policy.verdicts import CONTINUE, PERMIT, reject

SENDER_REFUSED = reject("Sender address rejected: domain not allowed", "5.7.1", 553)
NULL_SENDER_REFUSED = reject("Sender address rejected: null sender not allowed", "5.7.1", 553)


@attrs.frozen
class DomainList:
    """Exact domains and parent domains (for ``.example.com`` entries)."""

    exact: frozenset[str] = frozenset()
    parents: tuple[str, ...] = ()

    @classmethod
    def of(cls, entries: tuple[str, ...]) -> DomainList:
        return cls(
            frozenset(e for e in entries if not e.startswith(".")),
            tuple(e for e in entries if e.startswith(".")),
        )

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str) or not name:
            return False
        return name in self.exact or name.endswith(self.parents)


@attrs.frozen
class DomainSettings:
    domains: DomainList
    allow_null_sender: bool = True


def _read_domains(r: OptionReader) -> DomainList:
    entries = r.get_list("domains", domain)
    if entries is None:
        r.error("domains", 'is required (expected a list of domains, e.g. ["example.com", ".example.com"])')
    elif not entries and not any(p.key.startswith(r.key_path("domains")) for p in r.problems):
        r.error("domains", "is empty (expected at least one domain)")
    return DomainList.of(entries or ())


def read_recipient_options(r: OptionReader) -> DomainSettings:
    return DomainSettings(_read_domains(r))


def read_sender_options(r: OptionReader) -> DomainSettings:
    domains = _read_domains(r)
    return DomainSettings(domains, r.get("allow_null_sender", boolean, True))


class RecipientDomainsPolicy(PolicyBase):
    """Permit relaying to the listed domains."""

    def __init__(self, settings: DomainSettings) -> None:
        self.domains = settings.domains

    def rcpt(self, context: PolicyContext) -> VerdictResult:
        recipient = context.recipient
        if recipient is not None and recipient.destination in self.domains:
            return PERMIT
        return CONTINUE


class SenderDomainsPolicy(PolicyBase):
    """Refuse senders outside the listed domains."""

    def __init__(self, settings: DomainSettings) -> None:
        self.domains = settings.domains
        self.allow_null_sender = settings.allow_null_sender

    def mail(self, context: PolicyContext) -> VerdictResult:
        sender = context.sender
        if sender is None:
            return CONTINUE
        if sender.is_null:
            return CONTINUE if self.allow_null_sender else NULL_SENDER_REFUSED
        return CONTINUE if sender.destination in self.domains else SENDER_REFUSED


def make_recipient_policy(settings: DomainSettings, environment: PolicyEnvironment) -> RecipientDomainsPolicy:
    return RecipientDomainsPolicy(settings)


def make_sender_policy(settings: DomainSettings, environment: PolicyEnvironment) -> SenderDomainsPolicy:
    return SenderDomainsPolicy(settings)


RECIPIENT_PLUGIN = PolicyPlugin(
    name="recipient-domains",
    read_options=read_recipient_options,
    factory=make_recipient_policy,
    description="anyone may relay to the listed recipient domains",
)
SENDER_PLUGIN = PolicyPlugin(
    name="sender-domains",
    read_options=read_sender_options,
    factory=make_sender_policy,
    description="senders outside the listed domains are refused at MAIL",
)
