"""The configuration model: TOML in, frozen attrs objects out.

The contract is ``shared/design/config.md`` (mirrored in ``docs/configuration.rst``).
Loading never stops at the first problem: every problem is collected with its
dotted key path so an operator can fix a file in one pass.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TextIO, TypeVar

import attrs

T = TypeVar("T")
P = TypeVar("P")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MODES = ("splice", "relay")
BALANCE_ALGORITHMS = ("roundrobin", "static-rr", "leastconn", "first", "source", "random")
CHECK_KINDS = ("tcp", "banner", "smtp", "starttls")
ADMIN_STATES = ("ready", "drain", "maint")
SEND_PROXY = ("none", "v1", "v2")
DELIVERY = ("spool", "cut-through")
BACKEND_TLS = ("none", "opportunistic", "required")
BARE_NEWLINE = ("reject", "normalize")
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
AUTH_MECHANISMS = ("PLAIN", "LOGIN")
STICK_ON = ("src",)


# --------------------------------------------------------------------------- model


@attrs.frozen
class Address:
    """A server's host and port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@attrs.frozen
class SharedStateConfig:
    """``[global] shared_state``: the Redis server several relaybal processes share state through."""

    redis: str
    """``"tcp:HOST:PORT"`` or ``"unix:PATH"``."""
    key_prefix: str = "relaybal:"
    timeout: float = 0.2
    db: int = 0
    username: str | None = None
    password_file: str | None = None


@attrs.frozen
class GlobalConfig:
    state_dir: str = "/var/lib/relaybal"
    hostname: str = attrs.field(factory=socket.getfqdn)
    drain_timeout: float = 30.0
    shared_state: SharedStateConfig | None = None
    workers: int = 1


@attrs.frozen
class AdminConfig:
    socket: str | None = None
    http: str | None = None
    http_users: str | None = None


@attrs.frozen
class TLSServerConfig:
    certificate: str
    key: str
    min_version: str = "TLSv1.2"


@attrs.frozen
class AuthConfig:
    users: str
    mechanisms: tuple[str, ...] = AUTH_MECHANISMS


@attrs.frozen
class FrontendConfig:
    name: str
    mode: str
    listen: tuple[str, ...]
    backend: str
    accept_proxy: tuple[IPNetwork, ...] = ()
    proxy_timeout: float = 5.0
    maxconn: int = 10000
    maxconn_per_client: int = 0
    timeout_client: float = 300.0
    # relay mode
    hostname: str = ""
    banner: str = "ESMTP"
    max_message_size: int = 50 * 1024 * 1024
    max_recipients: int = 1000
    delivery: str = "spool"
    policies: tuple[str, ...] = ()
    tls: TLSServerConfig | None = None
    require_tls: bool = False
    auth: AuthConfig | None = None
    allow_plaintext_auth: bool = False
    bare_newline: str = "reject"
    timeout_data: float = 180.0
    timeout_session: float = 3600.0
    max_command_line: int = 2048
    max_line_length: int = 1000
    max_path_length: int = 256
    max_local_part: int = 64
    reverse_lookup: bool = False
    reverse_lookup_timeout: float = 5.0


@attrs.frozen
class CheckConfig:
    kind: str = "smtp"
    helo: str = ""
    interval: float = 2.0
    fastinter: float = 2.0
    downinter: float = 2.0
    timeout: float = 5.0
    rise: int = 2
    fall: int = 3
    observe: bool = True


@attrs.frozen
class StickConfig:
    on: str = "src"
    size: int = 10000
    expire: float = 1800.0


@attrs.frozen
class ServerConfig:
    name: str
    address: Address
    weight: int = 1
    backup: bool = False
    maxconn: int = 0
    slowstart: float = 0.0
    state: str = "ready"


@attrs.frozen
class BackendConfig:
    name: str
    servers: tuple[ServerConfig, ...]
    balance: str = "roundrobin"
    timeout_connect: float = 5.0
    timeout_server: float = 300.0
    timeout_queue: float = 5.0
    timeout_banner: float = 10.0
    retries: int = 3
    redispatch: bool = True
    verify_banner: bool = False
    send_proxy: str = "none"
    stick: StickConfig | None = None
    check: CheckConfig | None = None
    xclient: bool = False
    xforward: bool = False
    tls: str = "none"
    tls_verify: bool = True
    connections_per_server: int = 4
    max_attempts: int = 20
    max_queue_time: float = 5 * 86400.0
    retry_schedule: tuple[float, ...] = (60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0)


@attrs.frozen
class PolicyConfig:
    """A ``[policy.NAME]`` table: ``options`` are the plugin's own keys, ``settings`` what it made of them.

    ``default_action`` is a :class:`relaybal.policy.verdicts.Verdict` (None: the
    default, defer ``451 4.3.0``).
    """

    name: str
    plugin: str
    options: Mapping[str, Any] = attrs.field(factory=dict)
    timeout: float = 10.0
    default_action: Any = None
    settings: Any = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class Config:
    """A whole, validated configuration file."""

    source: str
    global_: GlobalConfig = attrs.field(factory=GlobalConfig)
    admin: AdminConfig = attrs.field(factory=AdminConfig)
    frontends: Mapping[str, FrontendConfig] = attrs.field(factory=dict)
    backends: Mapping[str, BackendConfig] = attrs.field(factory=dict)
    policies: Mapping[str, PolicyConfig] = attrs.field(factory=dict)


# --------------------------------------------------------------------------- errors


@attrs.frozen
class Problem:
    """One thing wrong with a file, at a dotted key path."""

    path: str
    message: str

    def format(self, source: str) -> str:
        text = f"{source}: {self.path}: {self.message}" if self.path else f"{source}: {self.message}"
        # One problem, one line: a line break (any control character) in a key or value is escaped.
        return _CONTROL_CHARS.sub(lambda m: repr(m.group())[1:-1], text)


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


class ConfigError(Exception):
    """The file was read but is not a valid configuration (exit status 1)."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [p.format(self.source) for p in self.problems]


class ConfigFileError(Exception):
    """The file cannot be read or is not TOML (exit status 2)."""


class _Bad(Exception):
    """A converter's complaint about one value."""


# --------------------------------------------------------------------------- value types

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^(\d+)([KMG]?)$")
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?$"
)


def _show(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    return repr(value)


def duration(value: object) -> float:
    """Seconds from ``"250ms"``, ``"5s"``, ``"1m"``, ``"2h"``, ``"1d"`` or a bare integer."""
    if isinstance(value, bool):
        raise _Bad(f'{_show(value)} is not a duration (expected e.g. "5s", "250ms", "1m")')
    if isinstance(value, int) and value >= 0:
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value.strip())
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise _Bad(f'{_show(value)} is not a duration (expected e.g. "5s", "250ms", "1m")')


def schedule(value: object) -> tuple[float, ...]:
    """A non-empty list of durations, each at least one second: ``["1m", "5m", "1h"]``."""
    if not isinstance(value, list) or not value:
        raise _Bad(f'{_show(value)} is not a retry schedule (expected a list of durations like ["1m", "1h"])')
    steps = tuple(duration(v) for v in value)
    if min(steps) < 1.0:
        raise _Bad(f"{_show(value)}: every step must be at least 1s")
    return steps


def size(value: object) -> int:
    """Bytes from ``"512"``, ``"64K"``, ``"50M"``, ``"1G"`` (binary multiples) or an integer."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        m = _SIZE.match(value.strip())
        if m:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    raise _Bad(f'{_show(value)} is not a size (expected e.g. "64K", "50M")')


def address(value: object) -> Address:
    """``host:port`` or ``[v6]:port``."""
    if not isinstance(value, str):
        raise _Bad(f"{_show(value)} is not an address (expected host:port)")
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise _Bad(f"{_show(value)} has no port (expected [IPv6]:port)")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _Bad(f"{_show(value)} has a bad IPv6 address (expected [IPv6]:port)") from None
    else:
        host, sep, port = value.rpartition(":")
        if not sep or not host:
            raise _Bad(f"{_show(value)} has no port (expected host:port)")
        if ":" in host:
            raise _Bad(f"{_show(value)}: write IPv6 addresses in brackets (expected [IPv6]:port)")
        if not _HOSTNAME.match(host):
            raise _Bad(f"{_show(value)} has a bad host name (expected host:port)")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise _Bad(f"{_show(value)} has a bad port (expected 1-65535)")
    return Address(host, int(port))


def network(value: object) -> IPNetwork:
    """``10.0.0.0/8``, ``192.0.2.7`` (a /32) or ``::1`` (a /128)."""
    if isinstance(value, str):
        try:
            return ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            pass
    raise _Bad(f'{_show(value)} is not a network (expected e.g. "10.0.0.0/8" or "::1")')


def endpoint(value: object) -> str:
    """A Twisted server endpoint string; checked by parsing it without listening."""
    if not isinstance(value, str) or ":" not in value:
        raise _Bad(
            f'{_show(value)} is not an endpoint (expected e.g. "tcp:2525:interface=127.0.0.1")'
        )
    from twisted.internet import endpoints, reactor

    kind = value.split(":", 1)[0]
    if kind == "systemd":
        # Building a systemd endpoint needs the inherited descriptors; only the syntax
        # is checked here.
        if not re.match(r"^systemd:domain=(INET6?|UNIX):index=\d+$", value):
            raise _Bad(
                f"{_show(value)} is not a systemd endpoint (expected systemd:domain=INET:index=0)"
            )
        return value
    try:
        endpoints.serverFromString(reactor, value)
    except Exception as e:  # the endpoint parsers raise a variety of types
        raise _Bad(
            f'{_show(value)} is not a valid endpoint: {e} (expected e.g. "tcp:25")'
        ) from None
    return value


def client_endpoint(value: object) -> str:
    """A Twisted client endpoint string, e.g. ``tcp:host=127.0.0.1:port=10040``."""
    if not isinstance(value, str) or ":" not in value:
        raise _Bad(
            f'{_show(value)} is not a client endpoint (expected e.g. "tcp:host=127.0.0.1:port=10040")'
        )
    from twisted.internet import endpoints, reactor

    try:
        endpoints.clientFromString(reactor, value)
    except Exception as e:
        raise _Bad(f"{_show(value)} is not a valid client endpoint: {e}") from None
    return value


def hostname(value: object) -> str:
    if isinstance(value, str) and _HOSTNAME.match(value):
        return value
    raise _Bad(f'{_show(value)} is not a host name (expected e.g. "mx.example.com")')


def text(value: object) -> str:
    if isinstance(value, str):
        return value
    raise _Bad(f"{_show(value)} is not a string")


def path_text(value: object) -> str:
    if isinstance(value, str) and value:
        return value
    raise _Bad(f"{_show(value)} is not a path")


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise _Bad(f"{_show(value)} is not a boolean (expected true or false)")


def integer(lo: int, hi: int | None = None) -> Callable[[object], int]:
    def convert(value: object) -> int:
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and value >= lo
            and (hi is None or value <= hi)
        ):
            return value
        expected = f"an integer {lo}-{hi}" if hi is not None else f"an integer >= {lo}"
        raise _Bad(f"{_show(value)} is out of range (expected {expected})")

    return convert


def choice(options: tuple[str, ...]) -> Callable[[object], str]:
    def convert(value: object) -> str:
        if isinstance(value, str) and value in options:
            return value
        raise _Bad(f"{_show(value)} is not allowed (expected one of: {', '.join(options)})")

    return convert


# --------------------------------------------------------------------------- reading


class TableReader(Generic[P]):
    """Reads one table of keys, collecting problems instead of raising.

    The shared core of the configuration's own reader and of the one
    plugins get for their options (:class:`relaybal.policy.options.OptionReader`):
    ``convert`` functions raise :attr:`bad` with what is wrong, and
    :meth:`problem` makes the recorded problem.
    """

    bad: type[Exception] = Exception

    def __init__(self, data: Mapping[str, Any], path: str, problems: list[P]) -> None:
        self.data = data
        self.path = path
        self.problems = problems
        self.used: set[str] = set()

    def problem(self, path: str, message: str) -> P:
        raise NotImplementedError

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path and key else (self.path or key)

    def error(self, key: str, message: str) -> None:
        """Record a problem at ``key`` (relative to this table)."""
        self.problems.append(self.problem(self.key_path(key), message))

    def has(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, convert: Callable[[object], T], default: T) -> T:
        """The converted value of ``key``, or ``default`` when it is absent or wrong (then recorded)."""
        self.used.add(key)
        if key not in self.data:
            return default
        try:
            return convert(self.data[key])
        except self.bad as e:
            self.error(key, str(e))
            return default

    def require(self, key: str, convert: Callable[[object], T], default: T) -> T:
        """As :meth:`get`, and a missing key is a problem (``is required``)."""
        if key not in self.data:
            self.used.add(key)
            self.error(key, "is required")
            return default
        return self.get(key, convert, default)

    def get_list(self, key: str, convert: Callable[[object], T]) -> tuple[T, ...] | None:
        """A list of converted values (bad items are recorded as ``key[i]``); None if absent."""
        self.used.add(key)
        if key not in self.data:
            return None
        raw = self.data[key]
        if not isinstance(raw, list):
            self.error(key, f"{_show(raw)} is not a list")
            return ()
        out: list[T] = []
        for i, item in enumerate(raw):
            try:
                out.append(convert(item))
            except self.bad as e:
                self.error(f"{key}[{i}]", str(e))
        return tuple(out)

    def items(self) -> Iterator[tuple[str, object]]:
        return iter(self.data.items())

    def finish(self, known: tuple[str, ...] = ()) -> None:
        """Record every key nobody asked for (``unknown key (known: ...)``)."""
        names = sorted(self.used | set(known))
        for key in self.data:
            if key not in self.used and key not in known:
                listed = ", ".join(names) if names else "none"
                self.error(key, f"unknown key (known: {listed})")


class _Reader(TableReader[Problem]):
    """Reads one TOML table of the configuration file."""

    bad = _Bad

    def __init__(self, problems: list[Problem], path: str, data: object) -> None:
        super().__init__(data if isinstance(data, dict) else {}, path, problems)
        self.ok = isinstance(data, dict)
        if not self.ok:
            self.error("", f"{_show(data)} is not a table")

    def problem(self, path: str, message: str) -> Problem:
        return Problem(path, message)

    def table(self, key: str) -> _Reader | None:
        self.used.add(key)
        if key not in self.data:
            return None
        return _Reader(self.problems, self.key_path(key), self.data[key])


def _name_ok(reader: _Reader, name: str) -> bool:
    if re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
        return True
    reader.error(name, "bad name (expected letters, digits, '_', '-', '.')")
    return False


def _read_global(r: _Reader) -> GlobalConfig:
    d = GlobalConfig(hostname="")
    shared = r.table("shared_state")
    g = GlobalConfig(
        state_dir=r.get("state_dir", path_text, d.state_dir),
        hostname=r.get("hostname", hostname, "") or socket.getfqdn(),
        drain_timeout=r.get("drain_timeout", duration, d.drain_timeout),
        workers=r.get("workers", integer(1, 64), d.workers),
        shared_state=_read_shared_state(shared) if shared is not None and shared.ok else None,
    )
    r.finish()
    return g


def redis_address(value: object) -> str:
    """``"tcp:HOST:PORT"`` (``[v6]`` in brackets) or ``"unix:/path"``: where a Redis server listens."""
    if isinstance(value, str):
        kind, _, rest = value.partition(":")
        if kind == "unix" and rest.startswith("/"):
            return value
        if kind == "tcp":
            try:
                address(rest)
            except _Bad:
                pass
            else:
                return value
    raise _Bad(f'{_show(value)} is not a Redis address (expected "tcp:HOST:PORT" or "unix:/PATH")')


def _read_shared_state(r: _Reader) -> SharedStateConfig:
    d = SharedStateConfig(redis="")
    s = SharedStateConfig(
        redis=r.require("redis", redis_address, ""),
        key_prefix=r.get("key_prefix", text, d.key_prefix),
        timeout=r.get("timeout", duration, d.timeout),
        db=r.get("db", integer(0, 65535), d.db),
        username=r.get("username", text, None),
        password_file=r.get("password_file", path_text, None),
    )
    if r.has("timeout") and not 0 < s.timeout <= 60:
        r.error("timeout", "must be greater than zero and at most 60s")
    r.finish()
    return s


def _read_admin(r: _Reader) -> AdminConfig:
    a = AdminConfig(
        socket=r.get("socket", path_text, None),
        http=r.get("http", endpoint, None),
        http_users=r.get("http_users", path_text, None),
    )
    if a.http_users is not None and a.http is None:
        r.error("http_users", "needs http (the users file protects the stats page)")
    r.finish()
    return a


def _read_frontend(name: str, r: _Reader, global_: GlobalConfig) -> FrontendConfig:
    d = FrontendConfig(name=name, mode="splice", listen=(), backend="")
    mode = r.require("mode", choice(MODES), "splice")
    listen = r.get_list("listen", endpoint)
    if listen is None:
        r.error("listen", "is required")
        listen = ()
    elif not listen and not any(p.path.startswith(r.key_path("listen")) for p in r.problems):
        r.error("listen", "is empty (expected at least one endpoint)")
    kw: dict[str, Any] = dict(
        name=name,
        mode=mode,
        listen=listen,
        backend=r.require("backend", text, ""),
        accept_proxy=r.get_list("accept_proxy", network) or (),
        proxy_timeout=r.get("proxy_timeout", duration, d.proxy_timeout),
        maxconn=r.get("maxconn", integer(1), d.maxconn),
        maxconn_per_client=r.get("maxconn_per_client", integer(0), d.maxconn_per_client),
        timeout_client=r.get("timeout_client", duration, d.timeout_client),
    )
    relay_keys = (
        "hostname", "banner", "max_message_size", "max_recipients", "delivery", "policies",
        "tls", "require_tls", "auth", "allow_plaintext_auth", "bare_newline",
        "timeout_data", "timeout_session", "max_command_line", "max_line_length",
        "max_path_length", "max_local_part", "reverse_lookup", "reverse_lookup_timeout",
    )  # fmt: skip
    if mode != "relay":
        for key in relay_keys:
            if r.has(key):
                r.used.add(key)
                r.error(key, f'only applies to mode = "relay" (this frontend is mode = "{mode}")')
        r.finish()
        return FrontendConfig(**kw)
    kw.update(
        hostname=r.get("hostname", hostname, "") or global_.hostname,
        banner=r.get("banner", text, d.banner),
        max_message_size=r.get("max_message_size", size, d.max_message_size),
        max_recipients=r.get("max_recipients", integer(1), d.max_recipients),
        delivery=r.get("delivery", choice(DELIVERY), d.delivery),
        policies=r.get_list("policies", text) or (),
        require_tls=r.get("require_tls", boolean, d.require_tls),
        allow_plaintext_auth=r.get("allow_plaintext_auth", boolean, d.allow_plaintext_auth),
        bare_newline=r.get("bare_newline", choice(BARE_NEWLINE), d.bare_newline),
        timeout_data=r.get("timeout_data", duration, d.timeout_data),
        timeout_session=r.get("timeout_session", duration, d.timeout_session),
        # RFC 5321 section 4.5.3.1: these are minimums a server must accept.
        max_command_line=r.get("max_command_line", integer(512, 1024 * 1024), d.max_command_line),
        max_line_length=r.get("max_line_length", size, d.max_line_length),
        max_path_length=r.get("max_path_length", integer(256, 4096), d.max_path_length),
        max_local_part=r.get("max_local_part", integer(64, 4096), d.max_local_part),
        reverse_lookup=r.get("reverse_lookup", boolean, d.reverse_lookup),
        reverse_lookup_timeout=r.get("reverse_lookup_timeout", duration, d.reverse_lookup_timeout),
    )
    for key in ("timeout_client", "timeout_data", "proxy_timeout", "reverse_lookup_timeout"):
        if r.has(key) and kw[key] <= 0:
            r.error(key, "must be greater than zero")
    # The DATA scanner holds at most one partial line; past 1M that stops being cheap.
    if not 1000 <= kw["max_line_length"] <= 1024 * 1024:
        r.error("max_line_length", "must be 1000 (RFC 5321's minimum) to 1M")
        kw["max_line_length"] = d.max_line_length
    tls = r.table("tls")
    if tls is not None and tls.ok:
        kw["tls"] = TLSServerConfig(
            certificate=tls.require("certificate", path_text, ""),
            key=tls.require("key", path_text, ""),
            min_version=tls.get("min_version", choice(TLS_VERSIONS), "TLSv1.2"),
        )
        tls.finish()
    auth = r.table("auth")
    if auth is not None and auth.ok:
        kw["auth"] = AuthConfig(
            users=auth.require("users", path_text, ""),
            mechanisms=auth.get_list("mechanisms", choice(AUTH_MECHANISMS)) or AUTH_MECHANISMS,
        )
        auth.finish()
    if kw["require_tls"] and "tls" not in kw:
        r.error(
            "require_tls", "needs a tls table (STARTTLS cannot be offered without a certificate)"
        )
    if "auth" in kw and "tls" not in kw and not kw["allow_plaintext_auth"]:
        r.error(
            "auth",
            "would never be offered: AUTH needs STARTTLS (a tls table) "
            "or allow_plaintext_auth = true",
        )
    r.finish()
    return FrontendConfig(**kw)


def _read_check(r: _Reader, global_: GlobalConfig) -> CheckConfig:
    d = CheckConfig()
    interval = r.get("interval", duration, d.interval)
    c = CheckConfig(
        kind=r.get("kind", choice(CHECK_KINDS), d.kind),
        helo=r.get("helo", hostname, "") or global_.hostname,
        interval=interval,
        fastinter=r.get("fastinter", duration, interval),
        downinter=r.get("downinter", duration, interval),
        timeout=r.get("timeout", duration, d.timeout),
        rise=r.get("rise", integer(1), d.rise),
        fall=r.get("fall", integer(1), d.fall),
        observe=r.get("observe", boolean, d.observe),
    )
    for key in ("interval", "fastinter", "downinter", "timeout"):
        if getattr(c, key) <= 0 and r.has(key):
            r.error(key, "must be greater than zero")
    r.finish()
    return c


def _read_server(r: _Reader) -> ServerConfig:
    d = ServerConfig(name="", address=Address("", 0))
    s = ServerConfig(
        name=r.require("name", text, ""),
        address=r.require("address", address, Address("", 0)),
        weight=r.get("weight", integer(0, 256), d.weight),
        backup=r.get("backup", boolean, d.backup),
        maxconn=r.get("maxconn", integer(0), d.maxconn),
        slowstart=r.get("slowstart", duration, d.slowstart),
        state=r.get("state", choice(ADMIN_STATES), d.state),
    )
    r.finish()
    return s


def _read_backend(name: str, r: _Reader, global_: GlobalConfig) -> BackendConfig:
    d = BackendConfig(name=name, servers=())
    timeout_connect = r.get("timeout_connect", duration, d.timeout_connect)
    kw: dict[str, Any] = dict(
        name=name,
        balance=r.get("balance", choice(BALANCE_ALGORITHMS), d.balance),
        timeout_connect=timeout_connect,
        timeout_server=r.get("timeout_server", duration, d.timeout_server),
        timeout_queue=r.get("timeout_queue", duration, timeout_connect),
        timeout_banner=r.get("timeout_banner", duration, d.timeout_banner),
        retries=r.get("retries", integer(0, 100), d.retries),
        redispatch=r.get("redispatch", boolean, d.redispatch),
        verify_banner=r.get("verify_banner", boolean, d.verify_banner),
        send_proxy=r.get("send_proxy", choice(SEND_PROXY), d.send_proxy),
        xclient=r.get("xclient", boolean, d.xclient),
        xforward=r.get("xforward", boolean, d.xforward),
        tls=r.get("tls", choice(BACKEND_TLS), d.tls),
        tls_verify=r.get("tls_verify", boolean, d.tls_verify),
        connections_per_server=r.get("connections_per_server", integer(1, 1000), 4),
        max_attempts=r.get("max_attempts", integer(1), d.max_attempts),
        max_queue_time=r.get("max_queue_time", duration, d.max_queue_time),
        retry_schedule=r.get("retry_schedule", schedule, d.retry_schedule),
    )
    stick = r.table("stick")
    if stick is not None and stick.ok:
        kw["stick"] = StickConfig(
            on=stick.get("on", choice(STICK_ON), "src"),
            size=stick.get("size", integer(1), 10000),
            expire=stick.get("expire", duration, 1800.0),
        )
        stick.finish()
    check = r.table("check")
    if check is not None and check.ok:
        kw["check"] = _read_check(check, global_)

    servers: list[ServerConfig] = []
    r.used.add("server")
    raw = r.data.get("server")
    if raw is None:
        r.error("server", "is required (expected at least one [[backend.NAME.server]])")
    elif not isinstance(raw, list) or not raw:
        r.error("server", "is not a list of tables (expected [[backend.NAME.server]] entries)")
    else:
        seen: set[str] = set()
        for i, entry in enumerate(raw):
            sr = _Reader(r.problems, r.key_path(f"server[{i}]"), entry)
            if not sr.ok:
                continue
            server = _read_server(sr)
            if server.name in seen:
                sr.error("name", f"{_show(server.name)} is used twice in this backend")
            seen.add(server.name)
            servers.append(server)
        if servers and not any(s.weight > 0 for s in servers):
            r.error("server", "every server has weight 0 (no server could take traffic)")
    kw["servers"] = tuple(servers)
    r.finish()
    return BackendConfig(**kw)


def _read_policy(name: str, r: _Reader) -> PolicyConfig:
    # Imported here: the policy package uses this module's converters.
    from relaybal.policy import discovery, verdicts
    from relaybal.policy import options as policy_options

    plugin = r.require("plugin", text, "")
    timeout = r.get("timeout", duration, 10.0)
    if r.has("timeout") and timeout <= 0:
        r.error("timeout", "must be greater than zero")
        timeout = 10.0

    def action(value: object) -> Any:
        try:
            return verdicts.parse_action(value)
        except ValueError as e:
            raise _Bad(str(e)) from None

    default_action = r.get("default_action", action, None)
    options = {k: v for k, v in r.items() if k not in ("plugin", "timeout", "default_action")}
    r.used.update(options)
    settings = None
    if plugin:
        # The plugin validates its own options; its problems are reported under policy.NAME.
        try:
            settings = discovery.parse_policy_options(plugin, options)
        except discovery.PluginNotFound as e:
            r.error("plugin", str(e))
        except policy_options.OptionsError as e:
            for problem in e.problems:
                r.error(problem.key, problem.message)
        except Exception as e:  # a plugin's own bug must not hide the rest of the report
            r.error("plugin", f"{_show(plugin)} failed to check its options: {e!r}")
    return PolicyConfig(
        name=name, plugin=plugin, options=options, timeout=timeout, default_action=default_action,
        settings=settings,
    )  # fmt: skip


def parse_config(data: Mapping[str, Any], source: str = "<config>") -> Config:
    """Validate a decoded TOML document; raise :class:`ConfigError` with every problem."""
    problems: list[Problem] = []
    top = _Reader(problems, "", dict(data))

    g = top.table("global")
    global_ = _read_global(g) if g is not None and g.ok else GlobalConfig()
    a = top.table("admin")
    admin = _read_admin(a) if a is not None and a.ok else AdminConfig()

    backends: dict[str, BackendConfig] = {}
    b = top.table("backend")
    if b is not None and b.ok:
        for name, _ in b.items():
            br = b.table(name)
            if br is not None and br.ok and _name_ok(b, name):
                backends[name] = _read_backend(name, br, global_)

    policies: dict[str, PolicyConfig] = {}
    p = top.table("policy")
    if p is not None and p.ok:
        for name, _ in p.items():
            pr = p.table(name)
            if pr is not None and pr.ok and _name_ok(p, name):
                policies[name] = _read_policy(name, pr)

    frontends: dict[str, FrontendConfig] = {}
    f = top.table("frontend")
    if f is None or (f.ok and not f.data):
        problems.append(Problem("frontend", "is required (expected at least one [frontend.NAME])"))
    elif f.ok:
        for name, _ in f.items():
            fr = f.table(name)
            if fr is None or not fr.ok or not _name_ok(f, name):
                continue
            fe = _read_frontend(name, fr, global_)
            frontends[name] = fe
            if isinstance(fr.data.get("backend"), str) and fe.backend not in backends:  # "" too
                known = ", ".join(sorted(backends)) or "none"
                fr.error("backend", f"no backend named {_show(fe.backend)} (known: {known})")
            for i, pol in enumerate(fe.policies):
                if pol not in policies:
                    known = ", ".join(sorted(policies)) or "none"
                    fr.error(f"policies[{i}]", f"no policy named {_show(pol)} (known: {known})")
    top.finish()
    _check_listeners(frontends, admin, problems)
    if problems:
        raise ConfigError(source, problems)
    return Config(
        source=source,
        global_=global_,
        admin=admin,
        frontends=frontends,
        backends=backends,
        policies=policies,
    )


def _check_listeners(
    frontends: Mapping[str, FrontendConfig], admin: AdminConfig, problems: list[Problem]
) -> None:
    """Two listeners on one endpoint would fail at start-up; say so now."""
    seen: dict[str, str] = {}
    places = [
        (f"frontend.{n}.listen[{i}]", e)
        for n, fe in frontends.items()
        for i, e in enumerate(fe.listen)
    ]
    if admin.http:
        places.append(("admin.http", admin.http))
    for path, ep in places:
        if re.match(r"^tcp6?:0(:|$)", ep):
            continue  # port 0: each gets a free port of its own
        if ep in seen:
            problems.append(Problem(path, f"{_show(ep)} is already used by {seen[ep]}"))
        else:
            seen[ep] = path


def load_config(path: str) -> Config:
    """Read and validate a file.

    Raises :class:`ConfigFileError` when the file cannot be read or is not TOML,
    :class:`ConfigError` when it is TOML but not a valid configuration.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigFileError(f"{path}: cannot read: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigFileError(f"{path}: not UTF-8 at byte {e.start}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigFileError(f"{path}: not valid TOML: {e}") from None
    return parse_config(data, path)


def load_or_report(path: str, stderr: TextIO | None = None) -> Config | int:
    """Load ``path``, or print every problem (one a line) and return the exit status.

    The status is 2 when the file cannot be read or is not TOML, 1 when it is
    not a valid configuration: the contract of ``relaybal check-config``.
    """
    err = stderr if stderr is not None else sys.stderr
    try:
        return load_config(path)
    except ConfigFileError as e:
        print(e, file=err)
        return 2
    except ConfigError as e:
        for line in e.lines():
            print(line, file=err)
        return 1
