"""``dnsbl``: refuse clients listed in DNS blocklists (``twisted.names``).

For a client ``192.0.2.7`` and zone ``zen.example.org`` the A record of
``7.2.0.192.zen.example.org`` is looked up (IPv6: nibbles, RFC 5782); any
answer in ``127.0.0.0/8`` lists the client, except ``127.255.255.0/24``,
which blocklists use for errors ("query refused"). A zone table may give
``match``: the answers that count (e.g. ``["127.0.0.2", "127.0.0.4"]``).

``zones`` entries are zone names or tables ``{ zone = "...", timeout = "2s",
match = [...] }``; ``timeout`` (default ``"2s"``) bounds each zone's lookup.
``servers`` (``["127.0.0.1:53"]``) names the DNS servers to ask instead of
``/etc/resolv.conf``'s (a local caching resolver: public resolvers are often
refused by blocklists).
All zones are asked at once. A zone that fails or times out counts as not
listing the client (logged): a broken blocklist must not stop all mail.
Answers are cached for their TTL (a miss for ``negative_ttl``, default
``"5m"``), at most ``cache_size`` of them.

Decided at ``stage`` (``"mail"`` by default; ``"connect"``, ``"helo"`` or
``"rcpt"``), and skipped for a client that an earlier stage already allowed
to relay (authenticated users on listed dial-up addresses) unless
``check_permitted = true``. A listed client gets ``554 5.7.1 Service
unavailable; client [ADDR] blocked using ZONE``.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.names import dns
from twisted.names.error import DomainError
from twisted.python.failure import Failure

from relaybal import config as _config
from relaybal.interfaces import VerdictResult
from relaybal.policy.context import PolicyContext, PolicyEnvironment
from relaybal.policy.options import (
    OptionReader,
    OptionValueError,
    boolean,
    choice,
    integer,
    positive_duration,
)
from relaybal.policy.plugin import PolicyBase, PolicyPlugin
from relaybal.policy.verdicts import CONTINUE, Verdict, reject

STAGES = ("connect", "helo", "mail", "rcpt")
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
ERROR_CODES = ipaddress.ip_network("127.255.255.0/24")


@attrs.frozen
class Zone:
    zone: str
    timeout: float = 2.0
    match: frozenset[str] | None = None

    def lists(self, answers: tuple[str, ...]) -> bool:
        """Whether these A answers list the client."""
        for answer in answers:
            if self.match is not None:
                if answer in self.match:
                    return True
                continue
            try:
                ip = ipaddress.IPv4Address(answer)
            except ValueError:
                continue
            if ip in LOOPBACK and ip not in ERROR_CODES:
                return True
        return False


@attrs.frozen
class DnsblSettings:
    zones: tuple[Zone, ...]
    servers: tuple[tuple[str, int], ...] = ()
    stage: str = "mail"
    check_permitted: bool = False
    negative_ttl: float = 300.0
    cache_size: int = 10_000


def _show(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _zone_name(value: object) -> str:
    if isinstance(value, str):
        name = value.strip().rstrip(".").lower()
        labels = name.split(".")
        if len(labels) >= 2 and all(label and len(label) < 64 for label in labels) and name.isascii():
            return name
    raise OptionValueError(f"{_show(value)} is not a DNS zone (expected e.g. \"zen.spamhaus.org\")")


def _ipv4(value: object) -> str:
    try:
        return str(ipaddress.IPv4Address(str(value)))
    except ValueError:
        raise OptionValueError(f'{_show(value)} is not an IPv4 address (expected e.g. "127.0.0.2")') from None


def _server(value: object) -> tuple[str, int]:
    try:
        address = _config.address(value)
    except _config._Bad as e:
        raise OptionValueError(str(e)) from None
    return address.host, address.port


def read_options(r: OptionReader) -> DnsblSettings:
    zones: list[Zone] = []
    raw = r.raw("zones")
    if raw is None:
        r.error("zones", 'is required (expected a list of zones, e.g. ["zen.spamhaus.org"])')
    elif not isinstance(raw, list) or not raw:
        r.error("zones", "is not a list of zones (expected at least one)")
    else:
        for i, item in enumerate(raw):
            if isinstance(item, str):
                try:
                    zones.append(Zone(_zone_name(item)))
                except OptionValueError as e:
                    r.error(f"zones[{i}]", str(e))
                continue
            z = r.sub(f"zones[{i}]", item)
            if z is None:
                continue
            name = z.require("zone", _zone_name, "")
            timeout = z.get("timeout", positive_duration, 2.0)
            match = z.get_list("match", _ipv4)
            z.finish()
            if name:
                zones.append(Zone(name, timeout, frozenset(match) if match is not None else None))
    servers = r.get_list("servers", _server) or ()
    return DnsblSettings(
        zones=tuple(zones),
        servers=servers,
        stage=r.get("stage", choice(STAGES), "mail"),
        check_permitted=r.get("check_permitted", boolean, False),
        negative_ttl=r.get("negative_ttl", positive_duration, 300.0),
        cache_size=r.get("cache_size", integer(1), 10_000),
    )


def query_name(client: str, zone: str) -> str | None:
    """``7.2.0.192.zone`` for ``192.0.2.7`` (nibbles for IPv6); None for a non-IP client."""
    try:
        ip = ipaddress.ip_address(client.split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    pointer = ip.reverse_pointer
    suffix = ".in-addr.arpa" if ip.version == 4 else ".ip6.arpa"
    return f"{pointer[: -len(suffix)]}.{zone}"


class DnsblCache:
    """``(zone, client) -> (answers, expiry)``, least recently used forgotten first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[str, str], tuple[tuple[str, ...], float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[str, str], now: float) -> tuple[str, ...] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        answers, expiry = entry
        if expiry <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return answers

    def put(self, key: tuple[str, str], answers: tuple[str, ...], expiry: float) -> None:
        if key not in self._entries and len(self._entries) >= self.size:
            self._entries.popitem(last=False)
        self._entries[key] = (answers, expiry)
        self._entries.move_to_end(key)


class DnsblPolicy(PolicyBase):
    """Rejects clients any configured zone lists."""

    def __init__(self, settings: DnsblSettings, reactor: Any, resolver: Any, log: Logger) -> None:
        self.settings = settings
        self.reactor = reactor
        self.resolver = resolver
        self.log = log
        self.cache = DnsblCache(settings.cache_size)
        self.hooks = frozenset({settings.stage})

    def check(self, context: PolicyContext) -> VerdictResult:
        client = context.client_address
        if client is None or (context.relay_permitted and not self.settings.check_permitted):
            return CONTINUE
        now = self.reactor.seconds()
        pending: list[Deferred[tuple[Zone, tuple[str, ...]]]] = []
        for zone in self.settings.zones:
            cached = self.cache.get((zone.zone, client), now)
            if cached is not None:
                if zone.lists(cached):
                    return self._listed(client, zone)
                continue
            name = query_name(client, zone.zone)
            if name is None:
                return CONTINUE
            pending.append(self._lookup(zone, client, name))
        if not pending:
            return CONTINUE

        def decide(results: list[tuple[bool, Any]]) -> Verdict:
            for ok, value in results:
                if ok and value[0].lists(value[1]):
                    return self._listed(client, value[0])
            return CONTINUE

        return DeferredList(pending, consumeErrors=True).addCallback(decide)

    def _lookup(self, zone: Zone, client: str, name: str) -> Deferred[tuple[Zone, tuple[str, ...]]]:
        d: Deferred[Any] = self.resolver.lookupAddress(name, timeout=(zone.timeout,))
        d.addTimeout(zone.timeout, self.reactor)

        def found(result: Any) -> tuple[Zone, tuple[str, ...]]:
            answers_rr = result[0]
            answers: list[str] = []
            ttl: float | None = None
            for rr in answers_rr:
                if rr.type == dns.A:
                    answers.append(rr.payload.dottedQuad())
                    ttl = rr.ttl if ttl is None else min(ttl, rr.ttl)
            expiry_in = float(ttl) if ttl is not None else self.settings.negative_ttl
            self.cache.put((zone.zone, client), tuple(answers), self.reactor.seconds() + max(1.0, expiry_in))
            return zone, tuple(answers)

        def failed(failure: Failure) -> tuple[Zone, tuple[str, ...]]:
            if failure.check(DomainError):  # NXDOMAIN: not listed
                self.cache.put((zone.zone, client), (), self.reactor.seconds() + self.settings.negative_ttl)
            else:
                self.log.warn(
                    "dnsbl {zone}: lookup of {name} failed ({error}): not listed",
                    zone=zone.zone, name=name, error=failure.getErrorMessage() or repr(failure.value),
                )  # fmt: skip
            return zone, ()

        return d.addCallbacks(found, failed)

    def _listed(self, client: str, zone: Zone) -> Verdict:
        return reject(f"Service unavailable; client [{client}] blocked using {zone.zone}", "5.7.1", 554)

    def connect(self, context: PolicyContext) -> VerdictResult:
        return self.check(context)

    def helo(self, context: PolicyContext) -> VerdictResult:
        return self.check(context)

    def mail(self, context: PolicyContext) -> VerdictResult:
        return self.check(context)

    def rcpt(self, context: PolicyContext) -> VerdictResult:
        return self.check(context)


def make_policy(settings: DnsblSettings, environment: PolicyEnvironment) -> DnsblPolicy:
    resolver = environment.resolver
    if resolver is None:
        from twisted.names import client

        if settings.servers:
            resolver = client.Resolver(servers=list(settings.servers), reactor=environment.reactor)
        else:
            resolver = client.Resolver(resolv="/etc/resolv.conf", reactor=environment.reactor)
    return DnsblPolicy(settings, environment.reactor, resolver, environment.log)


PLUGIN = PolicyPlugin(
    name="dnsbl",
    read_options=read_options,
    factory=make_policy,
    description="refuses clients listed in DNS blocklists",
)
