"""Mail addresses as policies see them: the real destination, and whether the client tried to route.

The server's parser (:func:`relaybal.smtp.wire.parse_path_and_params`)
already drops RFC 5321 source routes (``<@relay:user@other>`` is
``user@other``, and relaybal sends it on as that), so what is left to catch
is routing hidden in the local part, which a gateway further on might honour:

- the percent hack: ``user%other@relay`` (``relay`` may deliver to ``other``);
- bang paths: ``other!user@relay`` (UUCP style);
- quoted local parts containing ``@``: ``"user@other"@relay``;

and address literals (``user@[192.0.2.1]``), which name a host instead of a
domain. :func:`mail_address` tells each of these apart; the policy chain
refuses such recipients before any policy is asked (see ``docs/plugins.rst``),
so an allow-list of domains only ever sees real destination domains.
"""

from __future__ import annotations

import functools
import re
from typing import Final

import attrs

from relaybal.smtp.wire import Mailbox

__all__ = ["MailAddress", "dequote_local_part", "mail_address", "normalise_domain"]

PERCENT_HACK: Final = "percent hack"
BANG_PATH: Final = "bang path"
QUOTED_AT: Final = "quoted local part with @"

_ESCAPE = re.compile(r"\\(.)")


def dequote_local_part(local: str) -> str:
    """A local part without its quotes and backslash escapes (``"a\\"b"`` is ``a"b``)."""
    if len(local) >= 2 and local[0] == '"' and local[-1] == '"':
        return _ESCAPE.sub(r"\1", local[1:-1])
    return local


def normalise_domain(domain: str) -> str:
    """A domain in the form policies compare: lower case, no trailing dot, IDNA A-labels.

    Address literals keep their brackets (``[192.0.2.1]``, ``[ipv6:2001:db8::1]``).
    A name that IDNA cannot encode is only lower-cased (it then matches no
    configured ASCII domain).
    """
    d = domain.strip().rstrip(".")
    if d.startswith("["):
        return d.lower()
    if d.isascii():
        return d.lower()
    try:
        return d.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return d.lower()


@attrs.frozen
class MailAddress:
    """An envelope address: as written, and what it means.

    ``local`` and ``domain`` are as the client wrote them (quotes kept);
    ``destination`` is the normalised domain the message goes to
    (:func:`normalise_domain`), ``""`` for the null sender ``<>`` and for a bare
    ``<Postmaster>``. ``routing`` names sender-specified routing in the local
    part (``"percent hack"``, ``"bang path"``, ``"quoted local part with @"``)
    or is None; ``literal`` tells an address literal.
    """

    local: str
    domain: str
    destination: str
    routing: str | None = None
    literal: bool = False

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}" if self.domain else self.local

    @property
    def is_null(self) -> bool:
        """The null sender ``<>``."""
        return not self.local and not self.domain

    @property
    def normalised(self) -> str:
        """``local@destination`` with the local part dequoted and lower-cased (for keys and lists)."""
        local = dequote_local_part(self.local).lower()
        return f"{local}@{self.destination}" if self.destination else local


@functools.lru_cache(maxsize=8192)
def mail_address(mailbox: Mailbox) -> MailAddress:
    """What ``mailbox`` means (cached: the same address is seen at every stage)."""
    local = mailbox.local
    plain = dequote_local_part(local)
    routing: str | None = None
    if "@" in plain:
        routing = QUOTED_AT
    elif "%" in plain:
        routing = PERCENT_HACK
    elif "!" in plain:
        routing = BANG_PATH
    return MailAddress(
        local=local,
        domain=mailbox.domain,
        destination=normalise_domain(mailbox.domain) if mailbox.domain else "",
        routing=routing,
        literal=mailbox.domain.startswith("["),
    )
