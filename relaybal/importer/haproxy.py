"""Translate an HAProxy configuration into a relaybal one.

:func:`translate` is pure: HAProxy configuration text in, a :class:`Translation`
out (relaybal TOML text plus the list of problems met on the way). It reads
``global``, ``defaults`` (with HAProxy's inheritance: a ``defaults`` section
applies to the proxies after it, up to the next one, or to those naming it with
``from``), ``frontend``, ``backend`` and ``listen`` sections, and writes an
equivalent relaybal configuration for everything relaybal supports. Every line
it cannot carry over is reported as *not translated* and kept in the output as
a comment near the table it would have belonged to; lines that are translated
but deserve the operator's attention (``accept-proxy``, a missing HAProxy
timeout) are reported as *notes*. The translation is complete when nothing was
left untranslated.

The keyword-by-keyword mapping, with the differences between the two programs,
is documented in ``docs/haproxy.rst``.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Iterable, Sequence

import attrs

#: Severity of a problem that makes the translation partial.
NOT_TRANSLATED = "not translated"
#: Severity of a problem that only asks the operator to look (the translation stays complete).
NOTE = "note"

PROXY_SECTIONS = ("frontend", "backend", "listen")
SECTION_KEYWORDS = frozenset(
    {
        "global",
        "defaults",
        "frontend",
        "backend",
        "listen",
        "peers",
        "resolvers",
        "userlist",
        "mailers",
        "program",
        "http-errors",
        "ring",
        "cache",
        "fcgi-app",
        "log-forward",
        "crt-store",
        "traces",
        "acme",
        "dynamic-update",
    }
)

#: HAProxy's implicit health-check interval (``inter``), in milliseconds.
DEFAULT_INTER_MS = 2000
#: HAProxy's ``retries`` when none is set.
DEFAULT_RETRIES = 3
#: relaybal's upper bound for ``retries``.
MAX_RETRIES = 100
#: What ``accept-proxy`` becomes: HAProxy reads a PROXY header from every client.
EVERY_NETWORK = ("0.0.0.0/0", "::/0")
#: Widest port range a ``bind`` may expand into.
MAX_PORT_RANGE = 64


# --------------------------------------------------------------------------- results


@attrs.frozen
class ImportProblem:
    """One line (or the file as a whole, ``line == 0``) that needs the operator."""

    line: int
    text: str
    """The HAProxy line as written (stripped)."""
    reason: str
    severity: str = NOT_TRANSLATED
    """:data:`NOT_TRANSLATED` or :data:`NOTE`."""

    def format(self, source: str) -> str:
        """``SOURCE:LINE: not translated: TEXT (REASON)``, as printed on stderr."""
        where = f"{source}:{self.line}" if self.line else source
        what = f"{self.text} ({self.reason})" if self.text else self.reason
        return f"{where}: {self.severity}: {what}"


@attrs.frozen
class Translation:
    """The relaybal TOML text and the problems met while translating, in line order."""

    toml: str
    problems: tuple[ImportProblem, ...]

    @property
    def complete(self) -> bool:
        """Whether every line was translated (notes allowed)."""
        return not any(p.severity == NOT_TRANSLATED for p in self.problems)

    @property
    def untranslated(self) -> tuple[ImportProblem, ...]:
        return tuple(p for p in self.problems if p.severity == NOT_TRANSLATED)


# --------------------------------------------------------------------------- lexing


class LineSyntaxError(ValueError):
    """A line HAProxy itself would not parse (an unterminated quote)."""


_ESCAPES = {" ": " ", "\\": "\\", '"': '"', "'": "'", "#": "#", "$": "$", "r": "\r", "n": "\n", "t": "\t"}


def split_words(line: str) -> list[str]:
    """Split one configuration line into words the way HAProxy does.

    Words are separated by blanks; ``"..."`` quotes (with backslash escapes)
    and ``'...'`` quotes (without) group blanks into a word; outside quotes a
    backslash escapes the next character (``\\ ``, ``\\r``, ``\\n``, ``\\t``,
    ``\\xHH``) and ``#`` starts a comment. Environment variables are not
    expanded. Raises :class:`LineSyntaxError` on an unterminated quote.
    """
    words: list[str] = []
    current: list[str] = []
    in_word = False
    quote = ""
    i = 0
    while i < len(line):
        c = line[i]
        if quote == "'":
            if c == "'":
                quote = ""
            else:
                current.append(c)
            i += 1
            continue
        if c == "\\" and i + 1 < len(line):
            nxt = line[i + 1]
            in_word = True
            if nxt in _ESCAPES:
                current.append(_ESCAPES[nxt])
                i += 2
                continue
            if nxt == "x" and re.fullmatch(r"[0-9A-Fa-f]{2}", line[i + 2 : i + 4]):
                current.append(chr(int(line[i + 2 : i + 4], 16)))
                i += 4
                continue
            current.append(c)
            i += 1
            continue
        if quote == '"':
            if c == '"':
                quote = ""
            else:
                current.append(c)
            i += 1
            continue
        if c in "\"'":
            quote = c
            in_word = True
        elif c == "#":
            break
        elif c.isspace():
            if in_word:
                words.append("".join(current))
                current = []
                in_word = False
        else:
            current.append(c)
            in_word = True
        i += 1
    if quote:
        raise LineSyntaxError(f"unterminated {quote} quote")
    if in_word:
        words.append("".join(current))
    return words


@attrs.define
class _Line:
    number: int
    raw: str
    words: list[str]

    @property
    def text(self) -> str:
        return self.raw.strip()


@attrs.define
class _Section:
    kind: str
    name: str
    header: _Line
    lines: list[_Line] = attrs.field(factory=list)
    bad_lines: list[tuple[_Line, str]] = attrs.field(factory=list)


# --------------------------------------------------------------------------- values


_TIME = re.compile(r"^(\d+)(us|ms|s|m|h|d)?$")
_TIME_MS = {"us": 0.001, "ms": 1, None: 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def haproxy_time_ms(word: str) -> int | None:
    """Milliseconds from HAProxy's time format (a bare number is milliseconds); None if invalid."""
    m = _TIME.match(word)
    if not m:
        return None
    ms = int(m.group(1)) * _TIME_MS[m.group(2)]
    return max(1, round(ms + 0.4999)) if 0 < ms < 1 else int(ms + 0.9999)


def format_duration(ms: int) -> str:
    """A relaybal duration string for ``ms`` milliseconds, in the largest exact unit."""
    if ms == 0:
        return "0s"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _integer(word: str, lo: int, hi: int | None = None) -> int | None:
    if not re.fullmatch(r"\d+", word):
        return None
    value = int(word)
    return value if value >= lo and (hi is None or value <= hi) else None


def _haproxy_size(word: str) -> int | None:
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", word)
    if not m:
        return None
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]


_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?$")


def _is_hostname(word: str) -> bool:
    return bool(_HOSTNAME.match(word))


def _endpoint_escape(text: str) -> str:
    # Twisted endpoint strings use ':' and '=' as separators; a backslash escapes them.
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


# --------------------------------------------------------------------------- TOML


TomlScalar = str | int | bool
TomlValue = TomlScalar | list[str] | dict[str, TomlScalar]


def toml_string(text: str) -> str:
    """A TOML basic string holding ``text`` exactly."""
    out = ['"']
    for c in text:
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def toml_key(key: str) -> str:
    """A bare key when TOML allows one, a quoted one otherwise."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_string(key)


def toml_value(value: TomlValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_string(v) for v in value) + "]"
    return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"


def toml_comment(text: str) -> str:
    """One ``# ...`` line; control characters (not allowed in TOML comments) are shown escaped."""
    clean = "".join(
        c if c == "\t" or (ord(c) >= 0x20 and ord(c) != 0x7F) else f"\\x{ord(c):02x}" for c in text
    )
    return f"# {clean}".rstrip()


# --------------------------------------------------------------------------- settings


@attrs.define
class _ServerParams:
    """The ``server``/``default-server`` parameters relaybal understands."""

    weight: int | None = None
    backup: bool = False
    maxconn: int | None = None
    slowstart: int | None = None
    disabled: bool = False
    send_proxy: str = "none"
    check: bool = False
    inter: int | None = None
    fastinter: int | None = None
    downinter: int | None = None
    rise: int | None = None
    fall: int | None = None
    check_port: int | None = None
    observe: bool = False
    check_send_proxy: bool = False

    def check_signature(self) -> tuple[object, ...]:
        return (self.inter, self.fastinter, self.downinter, self.rise, self.fall, self.observe)


@attrs.define
class _Settings:
    """What a ``defaults`` section passes on (and what a proxy builds on)."""

    mode: str = "tcp"
    balance: _Line | None = None
    timeouts: dict[str, tuple[int, _Line]] = attrs.field(factory=dict)
    retries: tuple[int, _Line] | None = None
    redispatch: bool = False
    allbackups: bool = False
    maxconn: tuple[int, _Line] | None = None
    check_option: _Line | None = None
    tcp_checks: list[_Line] = attrs.field(factory=list)
    tcp_checks_inherited: bool = True
    default_server: _ServerParams = attrs.field(factory=_ServerParams)
    default_backend: tuple[str, _Line] | None = None

    def inherit(self) -> _Settings:
        copied = copy.deepcopy(self)
        copied.tcp_checks_inherited = True
        return copied


# Keywords valid in HAProxy's sections (d = defaults, f = frontend, b = backend).
_WHERE = {
    "bind": "f", "default_backend": "df", "use_backend": "f", "maxconn": "df",
    "balance": "db", "server": "b", "default-server": "db", "retries": "db",
    "tcp-check": "db", "stick-table": "fb", "stick": "b", "hash-type": "db",
    "fullconn": "db", "server-template": "b", "stats": "dfb",
}  # fmt: skip
_FRONTEND_TIMEOUTS = ("client",)
_BACKEND_TIMEOUTS = ("connect", "server", "queue", "check")
_FRONTEND_KEYWORDS = frozenset({"bind", "default_backend", "use_backend", "maxconn", "acl", "tcp-request"})

# Options that only matter to HTTP proxies: harmless in a TCP one.
_HTTP_OPTIONS = frozenset(
    {
        "httplog", "http-server-close", "httpclose", "http-keep-alive", "forwardfor",
        "http-buffer-request", "originalto", "http-pretend-keepalive", "http-no-delay",
        "http-use-proxy-header", "http-ignore-probes", "http-restrict-req-hdr-names",
        "accept-invalid-http-request", "accept-invalid-http-response", "checkcache", "forceclose",
        "h1-case-adjust-bogus-client", "h1-case-adjust-bogus-server", "http-use-htx", "http_proxy",
        "http-tunnel",
    }
)  # fmt: skip
_HTTP_TIMEOUTS = frozenset({"http-request", "http-keep-alive", "tarpit"})
_OTHER_CHECKS = frozenset(
    {
        "httpchk", "ssl-hello-chk", "mysql-check", "pgsql-check", "redis-check", "ldap-check",
        "spop-check", "external-check",
    }
)  # fmt: skip

_GLOBAL_REASONS = {
    "daemon": "twistd runs in the background unless given -n; under systemd use -n",
    "master-worker": "twistd runs one process",
    "user": "give twistd --uid, which drops privileges after opening the listeners",
    "group": "give twistd --gid, which drops privileges after opening the listeners",
    "uid": "give twistd --uid",
    "gid": "give twistd --gid",
    "chroot": "give twistd --chroot, or use systemd's RootDirectory=",
    "pidfile": "give twistd --pidfile",
    "log": "relaybal logs through twistd: give it --syslog or --logfile",
    "maxconn": "relaybal limits connections per frontend: maxconn in [frontend.NAME], default 10000",
    "ulimit-n": "raise the file-descriptor limit in the service manager: systemd LimitNOFILE=",
}

# server/default-server parameters relaybal cannot express, with their argument count and reason.
_SERVER_UNSUPPORTED: dict[str, tuple[int, str]] = {
    "ssl": (0, "relaybal does not encrypt connections to servers in splice mode"),
    "check-ssl": (0, 'relaybal\'s checks do not use implicit TLS; check kind "starttls" uses STARTTLS'),
    "send-proxy-v2-ssl": (0, "relaybal's PROXY v2 header carries no TLS information"),
    "send-proxy-v2-ssl-cn": (0, "relaybal's PROXY v2 header carries no TLS information"),
    "proxy-v2-options": (1, "relaybal's PROXY v2 header carries no extra TLVs"),
    "agent-check": (0, "relaybal has no agent checks"),
    "no-agent-check": (0, "relaybal has no agent checks"),
    "agent-port": (1, "relaybal has no agent checks"),
    "agent-inter": (1, "relaybal has no agent checks"),
    "agent-addr": (1, "relaybal has no agent checks"),
    "agent-send": (1, "relaybal has no agent checks"),
    "addr": (1, "relaybal checks the server's own address"),
    "id": (1, "relaybal has no numeric server ids: servers keep their file order"),
    "cookie": (1, "cookies are HTTP persistence"),
    "source": (1, "relaybal connects from the system's default source address"),
    "usesrc": (1, "relaybal connects from the system's default source address"),
    "minconn": (1, "relaybal has no dynamic maxconn, fullconn or minconn"),
    "maxqueue": (1, "relaybal bounds the queue by time, timeout_queue, not by length"),
    "track": (1, "relaybal has no tracked checks"),
    "on-error": (1, "relaybal's passive check, check.observe, has fixed rules"),
    "on-marked-down": (1, "relaybal has no actions on state changes"),
    "on-marked-up": (1, "relaybal has no actions on state changes"),
    "error-limit": (1, "relaybal's passive check, check.observe, has fixed rules"),
    "resolvers": (1, "relaybal resolves server names with the system resolver"),
    "resolve-prefer": (1, "relaybal resolves server names with the system resolver"),
    "resolve-net": (1, "relaybal resolves server names with the system resolver"),
    "resolve-opts": (1, "relaybal resolves server names with the system resolver"),
    "init-addr": (1, "relaybal resolves server names with the system resolver"),
    "redir": (1, "HTTP redirection"),
    "namespace": (1, "relaybal has no network namespaces"),
    "tfo": (0, "relaybal does not use TCP Fast Open"),
    "non-stick": (0, "relaybal has no per-server stickiness exception"),
    "stick": (0, "relaybal has no per-server stickiness exception"),
    "check-send-proxy": (0, "relaybal's checks send a PROXY header only with the backend's send_proxy"),
    "check-via-socks4": (0, "relaybal has no SOCKS4"),
    "socks4": (1, "relaybal has no SOCKS4"),
}
for _tls_word in (
    "verify", "ca-file", "crt", "crl-file", "sni", "alpn", "npn", "ciphers", "ciphersuites",
    "check-sni", "check-alpn", "ssl-min-ver", "ssl-max-ver", "curves", "sigalgs",
    "client-sigalgs", "verifyhost",
):  # fmt: skip
    _SERVER_UNSUPPORTED[_tls_word] = (1, "relaybal does not encrypt connections to servers in splice mode")
for _tls_flag in (
    "allow-0rtt", "no-ssl-reuse", "ssl-reuse", "no-sslv3", "no-tlsv10", "no-tlsv11", "no-tlsv12",
    "no-tlsv13", "force-sslv3", "force-tlsv10", "force-tlsv11", "force-tlsv12", "force-tlsv13",
    "no-ssl", "no-verifyhost", "no-tls-tickets", "tls-tickets", "no-send-proxy-v2-ssl",
    "no-send-proxy-v2-ssl-cn", "no-check-ssl",
):  # fmt: skip
    _SERVER_UNSUPPORTED[_tls_flag] = (0, "relaybal does not encrypt connections to servers in splice mode")
for _pool_word in (
    "pool-max-conn",
    "pool-purge-delay",
    "pool-low-conn",
    "max-reuse",
    "tcp-ut",
    "log-proto",
    "check-proto",
    "proto",
    "ws",
    "shard",
    "hash-key",
    "init-state",
    "weight-ratio",
):
    _SERVER_UNSUPPORTED[_pool_word] = (1, "no relaybal equivalent")

_SERVER_KEYWORDS = frozenset(
    {
        "weight",
        "backup",
        "no-backup",
        "maxconn",
        "slowstart",
        "disabled",
        "enabled",
        "send-proxy",
        "send-proxy-v2",
        "no-send-proxy",
        "no-send-proxy-v2",
        "check",
        "no-check",
        "inter",
        "fastinter",
        "downinter",
        "rise",
        "fall",
        "port",
        "observe",
    }
    | set(_SERVER_UNSUPPORTED)
)


def parse_server_params(words: Sequence[str], params: _ServerParams) -> list[tuple[str, str]]:
    """Apply ``server``/``default-server`` parameters to ``params``.

    Returns the parameters left out, as ``(words as written, reason)`` pairs.
    """
    dropped: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        word = words[i]
        arg = words[i + 1] if i + 1 < len(words) else None
        consumed = 1
        if word in ("weight", "maxconn", "rise", "fall", "port"):
            consumed = 2
            limits = {"weight": (0, 256), "maxconn": (0, None), "rise": (1, None), "fall": (1, None)}
            lo, hi = limits.get(word, (1, 65535))
            value = _integer(arg, lo, hi) if arg is not None else None
            if value is None:
                dropped.append((f"{word} {arg or ''}".strip(), "not a valid number"))
            elif word == "port":
                params.check_port = value
            else:
                setattr(params, word, value)
        elif word in ("slowstart", "inter", "fastinter", "downinter"):
            consumed = 2
            ms = haproxy_time_ms(arg) if arg is not None else None
            if ms is None or (ms == 0 and word != "slowstart"):
                dropped.append((f"{word} {arg or ''}".strip(), "not a valid time"))
            else:
                setattr(params, word, ms)
        elif word in ("backup", "no-backup"):
            params.backup = word == "backup"
        elif word in ("disabled", "enabled"):
            params.disabled = word == "disabled"
        elif word in ("check", "no-check"):
            params.check = word == "check"
        elif word in ("send-proxy", "send-proxy-v2"):
            params.send_proxy = "v1" if word == "send-proxy" else "v2"
        elif word in ("no-send-proxy", "no-send-proxy-v2"):
            params.send_proxy = "none"
        elif word == "observe":
            consumed = 2
            if arg == "layer4":
                params.observe = True
            elif arg == "none":
                params.observe = False
            else:
                dropped.append(
                    (f"observe {arg or ''}".strip(), "relaybal observes connections (layer4) only")
                )
        elif word in _SERVER_UNSUPPORTED:
            consumed = 1 + _SERVER_UNSUPPORTED[word][0]
            if word == "check-send-proxy":
                params.check_send_proxy = True
            else:
                dropped.append((" ".join(words[i : i + consumed]), _SERVER_UNSUPPORTED[word][1]))
        else:
            dropped.append((word, "not a server parameter the importer knows"))
        i += consumed
    return dropped


# --------------------------------------------------------------------------- addresses


@attrs.frozen
class _ServerAddress:
    host: str
    port: int | None

    def render(self, port: int) -> str:
        return f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}"


class _AddressError(ValueError):
    pass


def parse_server_address(word: str) -> _ServerAddress:
    """Host and optional port of a ``server`` line's address (``host``, ``host:port``, ``[v6]:port``)."""
    family = ""
    if "@" in word:
        prefix, _, rest = word.partition("@")
        if prefix not in ("ipv4", "ipv6"):
            raise _AddressError(f"{prefix}@ addresses have no relaybal equivalent (servers are host:port)")
        family, word = prefix, rest
    if word.startswith("/"):
        raise _AddressError("UNIX socket servers have no relaybal equivalent (servers are host:port)")
    if "${" in word:
        raise _AddressError("environment variables are not expanded: write the address")
    host, port_text = word, ""
    if word.startswith("["):
        inner, sep, after = word[1:].partition("]")
        if not sep or (after and not after.startswith(":")):
            raise _AddressError("bad bracketed IPv6 address")
        host, port_text = inner, after[1:]
    elif word.count(":") == 1:
        host, _, port_text = word.partition(":")
    elif word.count(":") > 1:
        # HAProxy: for IPv6 the port is the number after the last colon.
        head, _, tail = word.rpartition(":")
        if _is_ipv6(head) and re.fullmatch(r"\d*", tail):
            host, port_text = head, tail
        elif _is_ipv6(word):
            host, port_text = word, ""
        else:
            raise _AddressError("not an address")
    if not host:
        raise _AddressError("no host")
    if family == "ipv6" and not _is_ipv6(host):
        raise _AddressError("ipv6@ needs an IPv6 address")
    if ":" in host and not _is_ipv6(host):
        raise _AddressError("bad IPv6 address")
    if ":" not in host and not _is_hostname(host):
        raise _AddressError("bad host name")
    if port_text == "":
        return _ServerAddress(host, None)
    if not re.fullmatch(r"\d+", port_text) or not 0 < int(port_text) < 65536:
        raise _AddressError(f"port {port_text!r} is not a single port (offsets and ranges: no equivalent)")
    return _ServerAddress(host, int(port_text))


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def bind_endpoints(word: str, extra: str = "") -> list[tuple[str, int | None]]:
    """Twisted endpoint strings for one comma-separated ``bind`` address list.

    Returns ``(endpoint, port)`` pairs (``port`` None for UNIX sockets); ``extra``
    (``:backlog=N`` and the like) is appended to each. Raises ``_AddressError``.
    """
    out: list[tuple[str, int | None]] = []
    for part in word.split(","):
        if not part:
            continue
        item = part
        if "${" in item:
            raise _AddressError("environment variables are not expanded: write the address")
        family = ""
        if "@" in item:
            prefix, _, rest = item.partition("@")
            if prefix not in ("ipv4", "ipv6", "unix"):
                raise _AddressError(f"{prefix}@ listeners have no relaybal equivalent")
            family, item = prefix, rest
        if family == "unix" or item.startswith("/"):
            out.append((f"unix:{_endpoint_escape(item)}{extra}", None))
            continue
        if item.startswith("["):
            host, sep, after = item[1:].partition("]:")
            if not sep:
                raise _AddressError("bad bracketed IPv6 address")
            ports = after
        else:
            host, sep, ports = item.rpartition(":")
            if not sep:
                raise _AddressError("no port")
        if host == "*":
            host = ""
        if host == "localhost":
            host = "127.0.0.1"
        six = family == "ipv6" or ":" in host
        if six and host and not _is_ipv6(host):
            raise _AddressError(f"{host!r} is not an IPv6 address")
        if not six and host and not _is_ipv4(host):
            raise _AddressError(f"{host!r} is a host name: bind to an IP address")
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", ports)
        if not m:
            raise _AddressError(f"bad port {ports!r}")
        first = int(m.group(1))
        last = int(m.group(2) or first)
        if not 0 < first <= last < 65536:
            raise _AddressError(f"bad port {ports!r}")
        if last - first >= MAX_PORT_RANGE:
            raise _AddressError(f"port range {ports} is wider than {MAX_PORT_RANGE} ports")
        for port in range(first, last + 1):
            if six:
                iface = "" if host in ("", "::") else f":interface={_endpoint_escape(host)}"
                out.append((f"tcp6:{port}{iface}{extra}", port))
            else:
                iface = "" if host in ("", "0.0.0.0") else f":interface={host}"
                out.append((f"tcp:{port}{iface}{extra}", port))
    if not out:
        raise _AddressError("no address")
    return out


# --------------------------------------------------------------------------- output model


Entry = tuple[str, TomlValue, str]
"""A key, its value and a trailing comment (empty for none)."""


@attrs.define(eq=False)
class _Out:
    """A place in the output: the problems found for it become comments there."""

    problems: list[ImportProblem] = attrs.field(factory=list)


@attrs.define(eq=False)
class _ServerOut(_Out):
    name: str = ""
    address: _ServerAddress = _ServerAddress("", None)
    params: _ServerParams = attrs.field(factory=_ServerParams)
    line: _Line | None = None
    usable: bool = True


@attrs.define(eq=False)
class _BackendOut(_Out):
    name: str = ""
    header: _Line | None = None
    entries: list[Entry] = attrs.field(factory=list)
    servers: list[_ServerOut] = attrs.field(factory=list)
    usable: bool = True


@attrs.define(eq=False)
class _FrontendOut(_Out):
    name: str = ""
    header: _Line | None = None
    listen: list[tuple[str, int | None]] = attrs.field(factory=list)
    accept_proxy: bool = False
    target: tuple[str, _Line] | None = None
    backend: str = ""
    entries: list[Entry] = attrs.field(factory=list)
    usable: bool = True


@attrs.define(eq=False)
class _Block(_Out):
    """One HAProxy section's place in the output, in file order."""

    section: _Section | None = None
    title: str = ""
    frontends: list[_FrontendOut] = attrs.field(factory=list)
    backend: _BackendOut | None = None
    skipped: bool = False
    is_global: bool = False


@attrs.define
class _Bind:
    line: _Line
    endpoints: list[tuple[str, int | None]]
    accept_proxy: bool


@attrs.define
class _ServerLine:
    line: _Line
    name: str
    address: _ServerAddress
    params: _ServerParams
    dropped: list[tuple[str, str]]


# --------------------------------------------------------------------------- translator


class _Translator:
    """Reads the sections in order, builds the output model, renders it."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.text = text
        self.problems: list[ImportProblem] = []
        self.blocks: list[_Block] = []
        self.head = _Block()
        self.admin: dict[str, tuple[str, _Line]] = {}
        self.defaults: dict[str, _Settings] = {}
        self.current_defaults = _Settings()
        self.backends: dict[str, _BackendOut] = {}  # by HAProxy name
        self.http_backends: set[str] = set()
        self.frontend_names: set[str] = set()
        self.backend_names: set[str] = set()
        self.seen_proxies: dict[tuple[str, str], int] = {}

    # -- problems

    def report(
        self,
        place: _Out,
        line: _Line | None,
        reason: str,
        severity: str = NOT_TRANSLATED,
    ) -> None:
        problem = ImportProblem(line.number if line else 0, line.text if line else "", reason, severity)
        place.problems.append(problem)
        self.problems.append(problem)

    def discard(self, problems: Iterable[ImportProblem]) -> None:
        for problem in problems:
            for i, known in enumerate(self.problems):
                if known is problem:
                    del self.problems[i]
                    break

    def unique_name(self, name: str, taken: set[str], place: _Out, line: _Line) -> str:
        clean = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        if not re.match(r"[A-Za-z0-9]", clean):
            clean = "x" + clean
        candidate, n = clean, 2
        while candidate in taken:
            candidate, n = f"{clean}-{n}", n + 1
        if candidate != name:
            self.report(place, line, f'named "{candidate}" in relaybal', NOTE)
        taken.add(candidate)
        return candidate

    # -- reading

    def sections(self) -> list[_Section]:
        sections: list[_Section] = []
        current: _Section | None = None
        for number, raw in enumerate(self.text.splitlines(), start=1):
            try:
                words = split_words(raw)
            except LineSyntaxError as e:
                if current is None:
                    self.report(self.head, _Line(number, raw, []), str(e))
                else:
                    current.bad_lines.append((_Line(number, raw, []), str(e)))
                continue
            if not words:
                continue
            line = _Line(number, raw, words)
            if words[0] in SECTION_KEYWORDS:
                current = _Section(words[0], words[1] if len(words) > 1 else "", line)
                sections.append(current)
            elif current is None:
                self.report(self.head, line, "outside any section")
            elif words[0].startswith("."):
                current.bad_lines.append((line, "conditional blocks are not evaluated: resolve them first"))
            elif any("${" in w for w in words):
                current.bad_lines.append((line, "environment variables are not expanded: write the values"))
            else:
                current.lines.append(line)
        return sections

    def run(self) -> Translation:
        for section in self.sections():
            block = _Block(section=section, title=" ".join(section.header.words[:2]))
            self.blocks.append(block)
            for line, reason in section.bad_lines:
                self.report(block, line, reason)
            if section.kind == "global":
                block.is_global = True
                self.global_section(section, block)
            elif section.kind == "defaults":
                self.defaults_section(section, block)
            elif section.kind in PROXY_SECTIONS:
                self.proxy_section(section, block)
            else:
                block.skipped = True
                self.report(block, section.header, f"{section.kind} sections have no relaybal equivalent")
        self.resolve()
        toml = self.render()
        self.problems.sort(key=lambda p: p.line)
        return Translation(toml, tuple(self.problems))

    # -- global

    def global_section(self, section: _Section, block: _Block) -> None:
        for line in section.lines:
            w = line.words
            if w[:2] == ["stats", "socket"] and len(w) >= 3:
                self.stats_socket(block, line)
            elif w[0] == "stats":
                reason = {
                    "timeout": "relaybal's runtime API closes idle connections after a fixed 60s",
                    "maxconn": "relaybal's runtime API has no connection limit",
                }.get(w[1] if len(w) > 1 else "", "no relaybal equivalent")
                self.report(block, line, reason)
            elif w[0] in ("nbproc", "nbthread"):
                if w[1:] != ["1"]:  # one process, one thread: what relaybal is anyway
                    self.report(block, line, "relaybal runs one process with one reactor thread", NOTE)
            else:
                self.report(block, line, _GLOBAL_REASONS.get(w[0], "no relaybal equivalent"))

    def stats_socket(self, block: _Block, line: _Line) -> None:
        w = line.words
        path = w[2].removeprefix("unix@")
        if not path.startswith("/"):
            self.report(block, line, "relaybal's runtime API listens on a UNIX socket path only")
            return
        if "socket" in self.admin:
            self.report(block, line, "relaybal has one runtime API socket: the first one was translated")
            return
        self.admin["socket"] = (path, line)
        rest = w[3:]
        i = 0
        while i < len(rest):
            word, arg = rest[i], rest[i + 1] if i + 1 < len(rest) else ""
            if (word == "mode" and arg.lstrip("0") == "660") or (word == "level" and arg == "admin"):
                i += 2
                continue
            if word in ("mode", "level", "user", "group", "uid", "gid", "expose-fd", "process", "maxconn"):
                reason = {
                    "mode": "relaybal creates the socket with mode 0660",
                    "level": "relaybal's runtime API accepts every command on its socket",
                    "expose-fd": "relaybal does not pass listeners between processes",
                    "process": "relaybal runs one process",
                    "maxconn": "relaybal's runtime API has no connection limit",
                }.get(word, "relaybal creates the socket as the user it runs as")
                self.report(block, line, f'socket translated, "{word} {arg}" not: {reason}')
                i += 2
            else:
                self.report(block, line, f'socket translated, "{word}" not: no relaybal equivalent')
                i += 1

    # -- defaults

    def base_settings(self, section: _Section, block: _Block) -> _Settings:
        words = section.header.words
        if len(words) >= 4 and words[2] == "from":
            if words[3] in self.defaults:
                return self.defaults[words[3]].inherit()
            self.report(block, section.header, f'no defaults section named "{words[3]}" before it')
        elif len(words) > 2 and not (section.kind == "listen" and len(words) == 3):
            self.report(block, section.header, "unexpected words after the name")
        if section.kind == "defaults":
            return _Settings()  # HAProxy: a defaults section starts from the documented defaults
        return self.current_defaults.inherit()

    def defaults_section(self, section: _Section, block: _Block) -> None:
        settings = self.base_settings(section, block)
        for line in section.lines:
            if not self.setting_line(settings, line, block, "d"):
                self.report(block, line, _proxy_keyword_reason(line.words[0]))
        self.current_defaults = settings
        if section.name:
            self.defaults[section.name] = settings

    def setting_line(self, s: _Settings, line: _Line, place: _Out, where: str) -> bool:
        """Apply a line that defaults sections and proxies share; False when it is not one."""
        w = line.words
        negated = w[0] == "no"
        if negated:
            w = w[1:]
        kw = w[0] if w else ""
        allowed = _WHERE.get(kw)
        if allowed is not None and not set(where) & set(allowed):
            section = {"d": "defaults", "f": "frontend", "b": "backend"}[where]
            self.report(place, line, f"HAProxy does not use {kw} in a {section} section")
            return True
        if negated and kw != "option":
            self.report(place, line, "no relaybal equivalent")
            return True
        if kw == "mode" and len(w) == 2:
            s.mode = w[1]
            if w[1] not in ("tcp", "http"):
                self.report(place, line, f"mode {w[1]} has no relaybal equivalent")
        elif kw == "balance" and len(w) >= 2:
            s.balance = line
        elif kw == "timeout" and len(w) == 3:
            self.timeout_line(s, line, place, where)
        elif kw == "retries" and len(w) == 2:
            value = _integer(w[1], 0)
            if value is None:
                self.report(place, line, "not a number")
            else:
                s.retries = (value, line)
        elif kw == "maxconn" and len(w) == 2:
            value = _integer(w[1], 1)
            if value is None:
                self.report(place, line, "not a number >= 1")
            else:
                s.maxconn = (value, line)
        elif kw == "default_backend" and len(w) == 2:
            s.default_backend = (w[1], line)
        elif kw == "default-server":
            for text, reason in parse_server_params(w[1:], s.default_server):
                self.report(place, line, f'parameter "{text}" not translated: {reason}')
        elif kw == "tcp-check" and len(w) >= 2:
            if s.tcp_checks_inherited:
                s.tcp_checks = []
                s.tcp_checks_inherited = False
            s.tcp_checks.append(line)
        elif kw == "hash-type":
            pass  # relaybal's "source" is always a consistent hash
        elif kw == "log" and w[1:] == ["global"]:
            pass  # relaybal logs wherever twistd sends its log
        elif kw == "option" and len(w) >= 2:
            self.option_line(s, line, place, negated)
        else:
            return False
        return True

    def timeout_line(self, s: _Settings, line: _Line, place: _Out, where: str) -> None:
        which, value = line.words[1], line.words[2]
        ms = haproxy_time_ms(value)
        if which in _HTTP_TIMEOUTS:
            self.report(place, line, "HTTP only: no effect in mode tcp", NOTE)
        elif which not in _FRONTEND_TIMEOUTS + _BACKEND_TIMEOUTS:
            reason = {
                "tunnel": "relaybal applies timeout_client and timeout_server by turn for the whole session",
                "client-fin": "relaybal has no half-closed timeouts",
                "server-fin": "relaybal has no half-closed timeouts",
            }.get(which, "no relaybal equivalent")
            self.report(place, line, reason)
        elif ms is None:
            self.report(place, line, f'"{value}" is not an HAProxy time')
        elif which in _FRONTEND_TIMEOUTS and where == "b":
            self.report(place, line, "HAProxy does not use timeout client in a backend section")
        elif which in _BACKEND_TIMEOUTS and where == "f":
            self.report(place, line, f"HAProxy does not use timeout {which} in a frontend section")
        else:
            s.timeouts[which] = (ms, line)

    def option_line(self, s: _Settings, line: _Line, place: _Out, negated: bool) -> None:
        words = line.words[2:] if negated else line.words[1:]
        name, args = words[0], words[1:]
        if name == "redispatch":
            s.redispatch = not negated
            if args and not negated:
                if args[0] == "0":
                    s.redispatch = False
                else:
                    self.report(
                        place, line, "relaybal redispatches at every retry (option redispatch 1)", NOTE
                    )
        elif name == "allbackups":
            s.allbackups = not negated
        elif name == "tcplog" and not negated:
            pass  # relaybal always writes one HAProxy-style tcplog line per connection
        elif name in _HTTP_OPTIONS:
            if not negated:
                self.report(place, line, "HTTP only: no effect in mode tcp", NOTE)
        elif name in ("smtpchk", "tcp-check") or name in _OTHER_CHECKS:
            s.check_option = None if negated else line
        elif negated:
            self.report(place, line, "no relaybal equivalent")
        else:
            self.report(place, line, _OPTION_REASONS.get(name, "no relaybal equivalent"))

    # -- proxies

    def proxy_section(self, section: _Section, block: _Block) -> None:
        if section.kind == "listen":
            keys = [("frontend", section.name), ("backend", section.name)]
        else:
            keys = [(section.kind, section.name)]
        for key in keys:
            if key in self.seen_proxies:
                block.skipped = True
                self.report(
                    block,
                    section.header,
                    f"a {key[0]} named {section.name} is already declared at line "
                    f"{self.seen_proxies[key]} (HAProxy refuses this): merge the two sections",
                )
                return
        if not section.name:
            block.skipped = True
            self.report(block, section.header, "a proxy needs a name")
            return
        for key in keys:
            self.seen_proxies[key] = section.header.number
        proxy = _Proxy(self, section, block, self.base_settings(section, block))
        proxy.read()
        proxy.finish()

    # -- references

    def resolve(self) -> None:
        frontends = [fe for block in self.blocks for fe in block.frontends if fe.usable]
        for fe in frontends:
            assert fe.target is not None
            name, line = fe.target
            be = self.backends.get(name)
            if be is None:
                why = "it is mode http" if name in self.http_backends else "no such tcp backend"
                self.report(fe, line, f"backend {name}: {why}")
                fe.usable = False
            else:
                fe.backend = be.name
        for be_name, be in self.backends.items():
            users = [fe for fe in frontends if fe.usable and fe.target and fe.target[0] == be_name]
            ports = {port for fe in users for _, port in fe.listen if port is not None}
            for sv in be.servers:
                if sv.address.port is not None:
                    continue
                if len(ports) == 1:
                    port = next(iter(ports))
                    sv.address = _ServerAddress(sv.address.host, port)
                    self.report(
                        sv,
                        sv.line,
                        f"no port: HAProxy connects to the port the client connected to, {port}",
                        NOTE,
                    )
                else:
                    sv.usable = False
                    self.report(
                        sv,
                        sv.line,
                        "no port (HAProxy uses the port the client connected to) and "
                        + (
                            f"the frontends using this backend listen on {len(ports)} ports"
                            if ports
                            else "no frontend uses this backend"
                        )
                        + ": write the port",
                    )
            if not any(sv.usable for sv in be.servers):
                be.usable = False
                self.report(be, be.header, "no server relaybal can use: the backend is not translated")
            elif not any(sv.usable and sv.params.weight != 0 for sv in be.servers):
                be.usable = False
                self.report(be, be.header, "every server has weight 0, which relaybal refuses")
            if not be.usable:
                for fe in users:
                    fe.usable = False
                    assert fe.target is not None
                    self.report(fe, fe.target[1], f"backend {be_name} is not translated")

    # -- rendering

    def render(self) -> str:
        out: list[str] = []
        untranslated = sorted({p.line for p in self.problems if p.severity == NOT_TRANSLATED})
        out.append(
            toml_comment(
                f"relaybal configuration translated from {self.source} by `relaybal import-haproxy`."
            )
        )
        if untranslated:
            out.append(toml_comment(f"PARTIAL: {len(untranslated)} line(s) not translated; each is kept"))
            out.append(toml_comment('below as a comment saying "not translated", where it would belong.'))
        else:
            out.append(toml_comment("Complete: every setting was translated (read the notes, if any)."))
        out.append(toml_comment("Check it with: relaybal check-config FILE"))
        out.extend(self.problem_comments(self.head))
        has_global = any(b.is_global for b in self.blocks)
        if not has_global:
            out.extend(self.admin_table())
        for block in self.blocks:
            out.append("")
            assert block.section is not None
            out.append(toml_comment(f"{self.source}:{block.section.header.number}: {block.title}"))
            if block.is_global and block is next(b for b in self.blocks if b.is_global):
                out.extend(self.admin_table())
            if block.section.kind == "defaults":
                out.append(toml_comment("(written into each frontend and backend it applies to)"))
            out.extend(self.problem_comments(block))
            if block.skipped:
                out.extend(toml_comment("    " + line.raw.strip()) for line in block.section.lines)
                continue
            for fe in block.frontends:
                out.extend(self.frontend_table(fe))
            if block.backend is not None:
                if block.frontends:
                    out.append("")
                out.extend(self.backend_table(block.backend))
        return "\n".join(out) + "\n"

    def problem_comments(self, place: _Out) -> list[str]:
        ordered = sorted(place.problems, key=lambda p: p.line)
        return [toml_comment(p.format(self.source)) for p in ordered]

    def admin_table(self) -> list[str]:
        if not self.admin:
            return []
        lines = ["[admin]"]
        for key in ("socket", "http"):
            if key in self.admin:
                value, line = self.admin[key]
                lines.append(f"{key} = {toml_value(value)}  # {self.source}:{line.number}")
        return lines

    def entry_lines(self, entries: Sequence[Entry]) -> list[str]:
        return [f"{toml_key(k)} = {toml_value(v)}" + (f"  # {c}" if c else "") for k, v, c in entries]

    def frontend_table(self, fe: _FrontendOut) -> list[str]:
        if not fe.usable:
            return [toml_comment(f"frontend {fe.name} is not translated"), *self.problem_comments(fe)]
        lines = [f"[frontend.{toml_key(fe.name)}]"]
        entries: list[Entry] = [
            ("mode", "splice", ""),
            ("listen", [ep for ep, _ in fe.listen], ""),
            ("backend", fe.backend, ""),
        ]
        lines += self.entry_lines(entries)
        if fe.accept_proxy:
            lines.append(
                toml_comment("HAProxy's accept-proxy reads a PROXY header from every client; relaybal")
            )
            lines.append(
                toml_comment("reads it only from these networks. List the addresses of the proxies in")
            )
            lines.append(toml_comment("front of relaybal instead of every network."))
            lines += self.entry_lines([("accept_proxy", list(EVERY_NETWORK), "")])
        lines += self.entry_lines(fe.entries)
        lines += self.problem_comments(fe)
        return lines

    def backend_table(self, be: _BackendOut) -> list[str]:
        if not be.usable:
            lines = [toml_comment(f"backend {be.name} is not translated"), *self.problem_comments(be)]
            return lines + [c for sv in be.servers for c in self.problem_comments(sv)]
        lines = [f"[backend.{toml_key(be.name)}]", *self.entry_lines(be.entries), *self.problem_comments(be)]
        for sv in be.servers:
            lines.append("")
            if not sv.usable:
                lines.append(toml_comment(f"server {sv.name} is not translated"))
                lines += self.problem_comments(sv)
                continue
            assert sv.address.port is not None
            p = sv.params
            entries: list[Entry] = [
                ("name", sv.name, ""),
                ("address", sv.address.render(sv.address.port), ""),
            ]
            if p.weight is not None:
                entries.append(("weight", p.weight, ""))
            if p.backup:
                entries.append(("backup", True, ""))
            if p.maxconn:
                entries.append(("maxconn", p.maxconn, ""))
            if p.slowstart:
                entries.append(("slowstart", format_duration(p.slowstart), ""))
            if p.disabled:
                entries.append(("state", "maint", "HAProxy: disabled"))
            lines.append(f"[[backend.{toml_key(be.name)}.server]]")
            lines += self.entry_lines(entries)
            lines += self.problem_comments(sv)
        return lines


class _Proxy:
    """One frontend, backend or listen section being translated."""

    def __init__(self, tr: _Translator, section: _Section, block: _Block, settings: _Settings) -> None:
        self.tr = tr
        self.section = section
        self.block = block
        self.s = settings
        self.kind = section.kind
        self.where = {"frontend": "f", "backend": "b", "listen": "fb"}[section.kind]
        self.binds: list[_Bind] = []
        self.use_backends: list[tuple[str, bool, _Line]] = []
        self.servers: list[_ServerLine] = []
        self.stick_table: _Line | None = None
        self.stick_rule: _Line | None = None
        self.stats_lines: list[_Line] = []
        self.fe = _Out()  # problems of the frontend table, until it exists
        self.be = _Out()  # problems of the backend table, until it exists
        if self.kind == "listen" and len(section.header.words) == 3:
            # HAProxy 1.x also accepted "listen NAME ADDRESS:PORT".
            self.bind_line(
                _Line(section.header.number, section.header.raw, ["bind", section.header.words[2]])
            )

    def own(self, line: _Line) -> bool:
        return any(line is own for own in self.section.lines)

    def place(self, line: _Line) -> _Out:
        w = line.words
        if self.kind == "frontend":
            return self.fe
        if self.kind == "listen" and (w[0] in _FRONTEND_KEYWORDS or w[:2] == ["timeout", "client"]):
            return self.fe
        return self.be

    def read(self) -> None:
        tr = self.tr
        for line in self.section.lines:
            place = self.place(line)
            w = line.words
            kw = w[0]
            if tr.setting_line(self.s, line, place, self.where):
                continue
            if kw == "bind" and len(w) >= 2:
                self.bind_line(line)
            elif kw == "use_backend" and len(w) >= 2:
                if len(w) > 2 and w[2] not in ("if", "unless"):
                    tr.report(place, line, "unexpected words after the backend name")
                elif "%[" in w[1]:
                    tr.report(place, line, "dynamic backend names have no relaybal equivalent")
                else:
                    self.use_backends.append((w[1], len(w) > 2, line))
            elif kw == "server" and len(w) >= 2:
                self.server_line(line)
            elif kw == "stick-table":
                if self.kind == "frontend":
                    tr.report(place, line, "tracking tables have no relaybal equivalent")
                else:
                    self.stick_table = line
            elif kw == "stick":
                if w[1:] == ["on", "src"]:
                    self.stick_rule = line
                else:
                    tr.report(
                        place, line, 'only "stick on src" (no table, no condition) has a relaybal equivalent'
                    )
            elif kw == "stats":
                self.stats_lines.append(line)
            elif kw == "enabled":
                pass
            else:
                tr.report(
                    place,
                    line,
                    _proxy_keyword_reason(kw),
                    NOTE if kw in ("description", "id") else NOT_TRANSLATED,
                )

    def bind_line(self, line: _Line) -> None:
        w = line.words
        accept_proxy = False
        extra = ""
        dropped: list[str] = []
        i = 2
        while i < len(w):
            word = w[i]
            arg = w[i + 1] if i + 1 < len(w) else ""
            if word == "accept-proxy":
                accept_proxy = True
            elif word == "backlog" and _integer(arg, 1) is not None:
                extra += f":backlog={arg}"
                i += 1
            elif word == "mode" and re.fullmatch(r"0?[0-7]{3}", arg):
                extra += f":mode={arg[-3:]}"
                i += 1
            elif word in ("ssl", "crt", "crt-list", "ca-file", "verify", "alpn"):
                self.tr.report(
                    self.fe, line, "HAProxy terminates TLS here; relaybal would splice the TLS bytes"
                )
                return
            elif word in _BIND_VALUE_PARAMS:
                dropped.append(f"{word} {arg}")
                i += 1
            else:
                dropped.append(word)
            i += 1
        try:
            endpoints = bind_endpoints(w[1], extra)
        except _AddressError as e:
            self.tr.report(self.fe, line, str(e))
            return
        for text in dropped:
            self.tr.report(self.fe, line, f'listener translated, "{text}" not: no relaybal equivalent')
        self.binds.append(_Bind(line, endpoints, accept_proxy))

    def server_line(self, line: _Line) -> None:
        w = line.words
        if len(w) < 3 or w[2] in _SERVER_KEYWORDS:
            self.tr.report(self.be, line, "the server has no address")
            return
        try:
            address = parse_server_address(w[2])
        except _AddressError as e:
            self.tr.report(self.be, line, str(e))
            return
        params = copy.deepcopy(self.s.default_server)
        dropped = parse_server_params(w[3:], params)
        self.servers.append(_ServerLine(line, w[1], address, params, dropped))

    # -- results

    def finish(self) -> None:
        tr = self.tr
        if self.s.mode != "tcp":
            tr.discard(self.fe.problems + self.be.problems)
            if self.s.mode == "http" and self.kind != "backend" and not self.servers and self.is_stats_page():
                self.stats_page()
                return
            self.block.skipped = True
            if self.kind != "frontend":
                tr.http_backends.add(self.section.name)
            if self.s.mode == "http":
                tr.report(self.block, self.section.header, "mode http: relaybal balances SMTP, not HTTP")
            else:
                tr.report(self.block, self.section.header, f"mode {self.s.mode}: no relaybal equivalent")
            return
        for line in self.stats_lines:
            tr.report(self.place(line), line, "HAProxy serves its stats page in mode http only")
        # A listen section without servers is only a frontend (it switches to another backend).
        if self.kind == "backend" or (self.kind == "listen" and self.servers):
            be = self.backend_out()
            self.block.backend = be
            tr.backends[self.section.name] = be
        else:
            self.fe.problems.extend(self.be.problems)
        if self.kind in ("frontend", "listen"):
            self.block.frontends = self.frontend_outs()

    def is_stats_page(self) -> bool:
        return any(ln.words[1:2] in (["enable"], ["uri"]) for ln in self.stats_lines)

    def stats_page(self) -> None:
        tr = self.tr
        block = self.block
        block.title += " (stats page)"
        if not self.binds:
            tr.report(block, self.section.header, "the stats page has no bind line")
            return
        if "http" in tr.admin:
            tr.report(block, self.section.header, "relaybal has one stats page: the first one was translated")
            return
        endpoint = self.binds[0].endpoints[0][0]
        tr.admin["http"] = (endpoint, self.binds[0].line)
        tr.report(block, self.binds[0].line, f"translated as [admin] http = {toml_string(endpoint)}", NOTE)
        for bind in self.binds:
            if len(bind.endpoints) > 1 or bind is not self.binds[0]:
                tr.report(block, bind.line, f"relaybal's stats page listens on one endpoint, {endpoint}")
        for line in self.section.lines:
            w = line.words
            if w[0] in ("bind", "mode", "enabled") or w[:2] in (["stats", "enable"], ["log", "global"]):
                continue
            if w[0] == "timeout" or w[:2] == ["option", "httplog"]:
                continue  # the page's own HTTP settings
            arg = w[1] if len(w) > 1 and w[0] == "stats" else ""
            if arg == "uri":
                tr.report(block, line, "relaybal serves the page at /, with /metrics and /stats.json", NOTE)
            elif arg in ("auth", "admin", "http-request"):
                tr.report(
                    block, line, "relaybal's stats page has no access control: keep it on a private address"
                )
            elif arg in ("refresh", "realm", "hide-version", "show-legends", "show-node", "show-desc"):
                tr.report(block, line, "relaybal's stats page has no such setting", NOTE)
            else:
                tr.report(block, line, "no relaybal equivalent")

    def backend_out(self) -> _BackendOut:
        tr = self.tr
        s = self.s
        header = self.section.header
        be = _BackendOut(
            name=tr.unique_name(self.section.name, tr.backend_names, self.be, header), header=header
        )
        be.problems.extend(self.be.problems)
        be.entries.append(("balance", self.balance(be), ""))
        missing: list[str] = []
        for which, default in (("connect", "5s"), ("server", "5m"), ("queue", "")):
            value = s.timeouts.get(which)
            if value is not None:
                be.entries.append((f"timeout_{which}", format_duration(value[0]), ""))
            elif default:
                missing.append(f"timeout {which} (relaybal: {default})")
        if missing:
            tr.report(be, header, f"no {' nor '.join(missing)}: HAProxy would wait forever, and warns", NOTE)
        retries = s.retries[0] if s.retries else DEFAULT_RETRIES
        if s.retries and retries + 1 > MAX_RETRIES:
            tr.report(be, s.retries[1], f"relaybal makes at most {MAX_RETRIES} attempts")
        be.entries.append(
            (
                "retries",
                min(retries + 1, MAX_RETRIES),
                f"HAProxy's retries {retries}: the first attempt + {retries}",
            )
        )
        be.entries.append(
            ("redispatch", s.redispatch, "" if s.redispatch else "HAProxy: no option redispatch")
        )
        for sl in self.servers:
            out = _ServerOut(name=sl.name, address=sl.address, params=sl.params, line=sl.line)
            for text, reason in sl.dropped:
                tr.report(out, sl.line, f'server translated, "{text}" not: {reason}')
            be.servers.append(out)
        if not self.servers:
            return be
        self.server_consistency(be)
        stick = self.stick(be)
        if stick is not None:
            be.entries.append(("stick", stick, ""))
        check = self.check(be)
        if check is not None:
            be.entries.append(("check", check, ""))
        return be

    def balance(self, be: _BackendOut) -> str:
        line = self.s.balance
        if line is None:
            return "roundrobin"
        w = line.words[1:]
        if w[0] in ("roundrobin", "static-rr", "leastconn", "first", "source") and len(w) == 1:
            return w[0]
        if w in (["random"], ["random(2)"]):
            return "random"
        if w[0].startswith("random("):
            self.tr.report(
                be, line, 'relaybal\'s "random" draws two servers and keeps the better, as random(2)'
            )
            return "random"
        self.tr.report(be, line, 'no relaybal equivalent: balance = "roundrobin" instead')
        return "roundrobin"

    def server_consistency(self, be: _BackendOut) -> None:
        tr = self.tr
        first = be.servers[0]
        proxy = first.params.send_proxy
        if proxy != "none":
            be.entries.append(("send_proxy", proxy, ""))
        for sv in be.servers:
            if sv.params.send_proxy != proxy:
                tr.report(
                    sv,
                    sv.line,
                    "relaybal sends the same PROXY header to every server of a backend: "
                    f'send_proxy = "{proxy}", as for {first.name}',
                )
            if sv.params.check_send_proxy and sv.params.send_proxy == "none":
                tr.report(
                    sv, sv.line, "relaybal's checks send a PROXY header only with the backend's send_proxy"
                )
        backups = [sv for sv in be.servers if sv.params.backup]
        if len(backups) > 1 and not self.s.allbackups:
            for sv in backups[1:]:
                tr.report(
                    sv,
                    sv.line,
                    "without option allbackups HAProxy sends to the first usable backup only; "
                    "relaybal shares the load among all usable backups",
                )

    def stick(self, be: _BackendOut) -> dict[str, TomlScalar] | None:
        tr = self.tr
        table, rule = self.stick_table, self.stick_rule
        if table is None:
            if rule is not None:
                tr.report(be, rule, "no stick-table in this section")
            return None
        if rule is None:
            tr.report(be, table, 'no "stick on src" uses it (tracking tables have no relaybal equivalent)')
            return None
        w = table.words[1:]
        out: dict[str, TomlScalar] = {"on": "src"}
        expire: int | None = None
        problems: list[str] = []
        i = 0
        while i < len(w):
            word, arg = w[i], w[i + 1] if i + 1 < len(w) else ""
            i += 2
            if word == "type":
                if arg not in ("ip", "ipv6"):
                    tr.report(be, table, f"type {arg}: relaybal's table holds client addresses only")
                    return None
            elif word == "size":
                size = _haproxy_size(arg)
                if size is None or size < 1:
                    problems.append(f'"size {arg}" is not a size')
                else:
                    out["size"] = size
            elif word == "expire":
                expire = haproxy_time_ms(arg)
                if expire is None:
                    problems.append(f'"expire {arg}" is not a time')
            elif word in ("peers", "store", "srvkey", "write-to", "len"):
                problems.append(f'"{word} {arg}" not: no relaybal equivalent')
            else:
                problems.append(f'"{word}" not: no relaybal equivalent')
                i -= 1
        if expire is None:
            problems.append(
                "but HAProxy keeps entries until the table is full and relaybal expires them (30m)"
            )
        else:
            out["expire"] = format_duration(expire)
        for problem in problems:
            tr.report(be, table, f"table translated, {problem}")
        return out

    def check(self, be: _BackendOut) -> dict[str, TomlScalar] | None:
        tr = self.tr
        s = self.s
        checked = [sv for sv in be.servers if sv.params.check]
        if not checked:
            if s.check_option is not None and self.own(s.check_option):
                tr.report(be, s.check_option, 'no server has "check": HAProxy runs no checks either', NOTE)
            return None
        first = checked[0]
        for sv in be.servers:
            if not sv.params.check:
                tr.report(
                    sv,
                    sv.line,
                    f'no "check", unlike {first.name}: relaybal checks every server of a backend',
                    NOTE,
                )
            elif sv is not first and sv.params.check_signature() != first.params.check_signature():
                tr.report(
                    sv,
                    sv.line,
                    f"relaybal has one set of check settings per backend: {first.name}'s are used",
                )
        kind, helo = self.check_kind(be)
        out: dict[str, TomlScalar] = {"kind": kind}
        if helo:
            out["helo"] = helo
        p = first.params
        inter = p.inter or DEFAULT_INTER_MS
        for key, value in (("interval", p.inter), ("fastinter", p.fastinter), ("downinter", p.downinter)):
            if value:
                out[key] = format_duration(value)
        if p.rise:
            out["rise"] = p.rise
        if p.fall:
            out["fall"] = p.fall
        # HAProxy: without "timeout check" a check may take "inter"; with it, the connection
        # may take min(timeout connect, inter) and the reply "timeout check".
        check_timeout = s.timeouts.get("check")
        connect = s.timeouts.get("connect")
        timeout = inter
        if check_timeout is not None:
            timeout = check_timeout[0] + (min(connect[0], inter) if connect else inter)
        out["timeout"] = format_duration(timeout)
        out["observe"] = p.observe
        for sv in checked:
            port = sv.params.check_port
            if port is not None and port != sv.address.port:
                tr.report(sv, sv.line, f"check port {port}: relaybal checks the server's own port")
        return out

    def check_kind(self, be: _BackendOut) -> tuple[str, str]:
        tr = self.tr
        option = self.s.check_option
        if option is None:
            for line in self.s.tcp_checks:
                if self.own(line):
                    tr.report(be, line, "HAProxy ignores tcp-check rules without option tcp-check", NOTE)
            return "tcp", ""
        name = option.words[1] if option.words[0] == "option" else option.words[2]
        if name == "smtpchk":
            args = option.words[2:]
            helo = args[1] if len(args) >= 2 and args[0].upper() in ("HELO", "EHLO") else "localhost"
            if not _is_hostname(helo):
                tr.report(be, option, f'"{helo}" is not a host name relaybal accepts for check.helo')
                return "smtp", ""
            return "smtp", helo
        if name == "tcp-check":
            return self.tcp_check_kind(be)
        tr.report(
            be, option, 'relaybal checks SMTP servers: a TCP connect check (kind "tcp") is used instead'
        )
        return "tcp", ""

    def tcp_check_kind(self, be: _BackendOut) -> tuple[str, str]:
        """Recognise the tcp-check sequences that amount to a banner or an EHLO check."""
        tr = self.tr
        steps: list[str] = []
        helo = ""
        unsupported: list[tuple[_Line, str]] = []
        rules = [(line, _strip_comment(line.words[1:])) for line in self.s.tcp_checks]
        rules = [(line, words) for line, words in rules if words]
        for line, words in rules:
            verb = words[0]
            if verb == "connect":
                params = words[1:]
                if params[:1] == ["port"] and len(params) >= 2 and _integer(params[1], 1, 65535):
                    port = int(params[1])
                    for sv in be.servers:
                        if sv.params.check and sv.address.port not in (None, port):
                            tr.report(
                                sv,
                                sv.line,
                                f"tcp-check connects to port {port}: relaybal checks the server's own port",
                            )
                    params = params[2:]
                params = [p for p in params if p not in ("linger", "default")]
                if params:
                    unsupported.append((line, f'"{" ".join(params)}" has no relaybal equivalent'))
                steps.append("connect")
            elif verb == "expect" and len(words) == 3 and words[1] in ("string", "rstring"):
                code = _expected_code(words[1], words[2])
                if code is None:
                    unsupported.append((line, "relaybal expects a 220 greeting and 2xx replies"))
                steps.append(f"expect:{code}")
            elif verb == "send" and len(words) == 2:
                m = re.fullmatch(r"(EHLO|HELO|QUIT)(?: (\S+))?\r?\n", words[1], re.IGNORECASE)
                if m is None:
                    unsupported.append((line, "relaybal's checks send EHLO and QUIT only"))
                    steps.append("send:?")
                elif m.group(1).upper() == "QUIT":
                    steps.append("send:QUIT")
                else:
                    helo = m.group(2) or ""
                    steps.append("send:EHLO")
            else:
                unsupported.append((line, "no relaybal equivalent"))
                steps.append("?")
        shape = " ".join(steps[1:] if steps[:1] == ["connect"] else steps)
        kind = ""
        if shape in ("", "send:QUIT"):
            kind = "tcp"
        elif re.fullmatch(r"expect:220( send:QUIT( expect:2xx)?)?", shape):
            kind = "banner"
        elif re.fullmatch(r"expect:220 send:EHLO expect:2xx( send:QUIT( expect:2xx)?)?", shape):
            kind = "smtp"
        if not kind or unsupported:
            if not unsupported:
                unsupported = [
                    (line, "the sequence is neither a greeting nor an EHLO check") for line, _ in rules
                ]
            for line, reason in unsupported:
                tr.report(be, line, f'{reason}: the check is a TCP connect (kind "tcp") instead')
            return "tcp", ""
        if kind == "smtp" and not _is_hostname(helo):
            tr.report(be, rules[0][0], f'"{helo}" is not a host name relaybal accepts for check.helo')
            return "smtp", ""
        return kind, helo

    def frontend_outs(self) -> list[_FrontendOut]:
        tr = self.tr
        s = self.s
        header = self.section.header
        target = self.frontend_target()
        if not self.binds:
            out = _FrontendOut(name=self.section.name, header=header, usable=False)
            out.problems.extend(self.fe.problems)
            tr.report(out, header, "no bind line: HAProxy listens on nothing here either", NOTE)
            return [out]
        plain = [b for b in self.binds if not b.accept_proxy]
        proxied = [b for b in self.binds if b.accept_proxy]
        groups = [g for g in (plain, proxied) if g]
        outs: list[_FrontendOut] = []
        for group in groups:
            accept_proxy = group[0].accept_proxy
            base = f"{self.section.name}-proxy" if accept_proxy and len(groups) > 1 else self.section.name
            out = _FrontendOut(name=tr.unique_name(base, tr.frontend_names, self.fe, header), header=header)
            if not outs:
                out.problems.extend(self.fe.problems)
            out.listen = [ep for b in group for ep in b.endpoints]
            out.accept_proxy = accept_proxy
            if len(groups) > 1:
                tr.report(
                    out,
                    group[0].line,
                    f"listeners {'with' if accept_proxy else 'without'} accept-proxy go "
                    f"to frontend {out.name} (relaybal sets accept_proxy per frontend)",
                    NOTE,
                )
            if accept_proxy:
                for b in group:
                    tr.report(
                        out,
                        b.line,
                        "accept_proxy lists every network, as HAProxy trusts every client: "
                        "list the proxies' networks instead",
                        NOTE,
                    )
            out.target = target
            out.usable = target is not None
            client = s.timeouts.get("client")
            if client:
                out.entries.append(("timeout_client", format_duration(client[0]), ""))
            elif not outs:
                tr.report(
                    out,
                    header,
                    "no timeout client (relaybal: 5m): HAProxy would wait forever, and warns",
                    NOTE,
                )
            if s.maxconn:
                out.entries.append(("maxconn", s.maxconn[0], ""))
            outs.append(out)
        if target is None:
            tr.report(outs[0], header, "no backend: no default_backend nor use_backend without condition")
        return outs

    def frontend_target(self) -> tuple[str, _Line] | None:
        tr = self.tr
        target: tuple[str, _Line] | None = None
        for name, conditional, line in self.use_backends:
            if target is not None:
                tr.report(
                    self.fe, line, f"never used: the use_backend before it always picks {target[0]}", NOTE
                )
            elif conditional:
                tr.report(self.fe, line, "conditions have no relaybal equivalent: a frontend has one backend")
            else:
                target = (name, line)
        default = self.s.default_backend
        own_default = default is not None and self.own(default[1])
        if self.kind == "listen" and self.servers and target is None:
            if default is not None and own_default:
                tr.report(self.fe, default[1], "relaybal uses this listen section's own servers")
            return (self.section.name, self.section.header)
        if target is not None:
            if default is not None and own_default:
                tr.report(self.fe, default[1], f"never used: use_backend always picks {target[0]}", NOTE)
            return target
        return default


_BIND_VALUE_PARAMS = frozenset(
    {
        "name",
        "id",
        "process",
        "thread",
        "interface",
        "nice",
        "maxconn",
        "user",
        "group",
        "uid",
        "gid",
        "namespace",
        "level",
        "severity-output",
        "tcp-ut",
        "mss",
        "shards",
        "label",
    }
)

_OPTION_REASONS = {
    "dontlognull": "relaybal logs every connection",
    "dontlog-normal": "relaybal logs every connection",
    "logasap": "relaybal logs a connection when it ends",
    "tcpka": "relaybal does not set TCP keep-alive",
    "clitcpka": "relaybal does not set TCP keep-alive",
    "srvtcpka": "relaybal does not set TCP keep-alive",
    "log-health-checks": "relaybal logs each server state change, not each check",
    "splice-auto": "kernel splicing: relaybal copies the data itself",
    "splice-request": "kernel splicing: relaybal copies the data itself",
    "splice-response": "kernel splicing: relaybal copies the data itself",
    "transparent": "relaybal has no transparent proxying",
    "persist": "relaybal never sends to a down server",
    "abortonclose": "relaybal has no such setting",
    "nolinger": "relaybal closes connections normally",
    "socket-stats": "relaybal keeps statistics per frontend",
}


def _proxy_keyword_reason(kw: str) -> str:
    return {
        "acl": "relaybal has no ACLs",
        "tcp-request": "tcp-request rules have no relaybal equivalent",
        "tcp-response": "tcp-response rules have no relaybal equivalent",
        "http-request": "HTTP rules have no relaybal equivalent",
        "http-response": "HTTP rules have no relaybal equivalent",
        "http-after-response": "HTTP rules have no relaybal equivalent",
        "disabled": "the proxy is disabled in HAProxy; relaybal would run it",
        "server-template": "relaybal servers are listed one by one",
        "log": "relaybal logs through twistd: give it --syslog or --logfile",
        "log-format": "relaybal writes a fixed HAProxy tcplog-style line",
        "description": "relaybal keeps no description (this comment keeps it)",
        "id": "relaybal has no numeric proxy ids",
        "fullconn": "relaybal has no dynamic maxconn, fullconn or minconn",
        "bind": "HAProxy does not use bind here",
        "server": "HAProxy does not use server here",
        "stick-table": "HAProxy does not use stick-table in defaults",
    }.get(kw, "no relaybal equivalent")


def _strip_comment(words: list[str]) -> list[str]:
    """A tcp-check rule's words without ``comment <msg>``; empty for a comment-only rule."""
    if words[:1] == ["comment"]:
        return []
    out = list(words)
    if "comment" in out[:-1]:
        at = out.index("comment")
        del out[at : at + 2]
    return out


def _expected_code(match: str, pattern: str) -> str | None:
    """``220`` for a greeting expectation, ``2xx`` for a positive reply, None for anything else."""
    if match == "string":
        if re.fullmatch(r"220[ -]?", pattern):
            return "220"
        if re.fullmatch(r"2\d\d[ -]?", pattern):
            return "2xx"
        return None
    body = pattern.removeprefix("^")
    if re.fullmatch(r"220( |\[ -\]|\[- \])?", body):
        return "220"
    if re.fullmatch(r"(2\d\d|2\.\.|2\[0-9\]\{2\}|2\[0-9\]\[0-9\]|2\\d\{2\}|2\\d\\d)( |\[ -\]|\[- \])?", body):
        return "2xx"
    return None


def translate(text: str, source: str = "haproxy.cfg") -> Translation:
    """Translate HAProxy configuration ``text``; ``source`` names it in comments and problems.

    Never raises for bad input: everything it cannot translate becomes a
    problem (and a comment in the output).
    """
    return _Translator(text, source).run()
