"""Reading a plugin's own options, with errors that name the key.

A plugin's ``read_options`` gets an :class:`OptionReader` over the keys of its
``[policy.NAME]`` table (all but ``plugin``, ``timeout`` and
``default_action``) and returns whatever settings object it likes::

    def read_options(r: OptionReader) -> Settings:
        return Settings(rate=r.require("rate", rate, None), burst=r.get("burst", integer(1), 0))

Problems are collected, not raised one by one: when the function returns,
:class:`~relaybal.policy.plugin.PolicyPlugin` reports unknown keys and raises
:class:`OptionsError` with all of them, and ``relaybal check-config`` prints
each as ``FILE: policy.NAME.KEY: message``.

Converters take the raw TOML value and return the converted one or raise
:class:`OptionValueError` whose text says what is wrong and what was expected,
e.g. ``"100 per minute" is not a rate (expected N/s|m|h)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs

from relaybal import config as _config
from relaybal.policy.address import normalise_domain
from relaybal.policy.verdicts import Verdict, parse_action

T = TypeVar("T")

__all__ = [
    "OptionProblem",
    "OptionReader",
    "OptionValueError",
    "OptionsError",
    "Rate",
    "action",
    "boolean",
    "choice",
    "client_endpoint",
    "domain",
    "duration",
    "integer",
    "network",
    "path",
    "positive_duration",
    "rate",
    "text",
]


class OptionValueError(ValueError):
    """A converter's complaint about one value (the message says what was expected)."""


@attrs.frozen
class OptionProblem:
    """One problem with a plugin option: its key (dotted, relative to the policy table) and what is wrong."""

    key: str
    message: str


class OptionsError(Exception):
    """A plugin's options are not valid; ``problems`` lists every one."""

    def __init__(self, problems: list[OptionProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p.key}: {p.message}" if p.key else p.message for p in problems))


def _show(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    return repr(value)


class OptionReader(_config.TableReader[OptionProblem]):
    """Reads one table of options, collecting problems instead of raising.

    ``path`` is the dotted prefix of the keys (``""`` for the policy table
    itself, ``"zones[2]"`` for a nested one, see :meth:`sub`). ``get``,
    ``require``, ``get_list``, ``has``, ``items``, ``error`` and ``finish``
    work as for the configuration file itself
    (:class:`relaybal.config.TableReader`); converters raise
    :class:`OptionValueError`.
    """

    bad = OptionValueError

    def __init__(
        self, data: Mapping[str, Any], path: str = "", problems: list[OptionProblem] | None = None
    ) -> None:
        super().__init__(data, path, problems if problems is not None else [])

    def problem(self, path: str, message: str) -> OptionProblem:
        return OptionProblem(path, message)

    def sub(self, key: str, data: object) -> OptionReader | None:
        """A reader for a nested table at ``key`` (e.g. ``"zones[1]"``); None (recorded) if not a table."""
        if not isinstance(data, Mapping):
            self.error(key, f"{_show(data)} is not a table")
            return None
        return OptionReader(data, self.key_path(key), self.problems)

    def raw(self, key: str) -> object:
        """The unconverted value of ``key`` (None if absent), marking it as known."""
        self.used.add(key)
        return self.data.get(key)



# --------------------------------------------------------------------------- converters


def _wrap(convert: Callable[[object], T]) -> Callable[[object], T]:
    def converted(value: object) -> T:
        try:
            return convert(value)
        except _config._Bad as e:
            raise OptionValueError(str(e)) from None

    return converted


#: ``"250ms"``, ``"5s"``, ``"1m"``, ``"2h"``, ``"1d"`` or a bare integer (seconds), as elsewhere in the file.
duration = _wrap(_config.duration)
#: A Twisted network (``"10.0.0.0/8"``, ``"192.0.2.7"``, ``"::1"``).
network = _wrap(_config.network)
#: A Twisted client endpoint string (``"tcp:host=127.0.0.1:port=10023"``, ``"unix:path=/run/x"``).
client_endpoint = _wrap(_config.client_endpoint)
#: ``true`` or ``false``.
boolean = _wrap(_config.boolean)
#: Any string.
text = _wrap(_config.text)
#: A non-empty string naming a file (not opened here).
path = _wrap(_config.path_text)


def positive_duration(value: object) -> float:
    """A :func:`duration` greater than zero."""
    seconds = duration(value)
    if seconds <= 0:
        raise OptionValueError(f"{_show(value)} must be greater than zero")
    return seconds


def integer(lo: int, hi: int | None = None) -> Callable[[object], int]:
    """An integer converter for ``lo``..``hi`` (inclusive; no upper bound without ``hi``)."""
    return _wrap(_config.integer(lo, hi))


def choice(options: tuple[str, ...]) -> Callable[[object], str]:
    """One of ``options``."""
    return _wrap(_config.choice(options))


_DOMAIN = re.compile(r"^\.?(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_-]{1,63})*$")


def domain(value: object) -> str:
    """A domain (normalised as addresses are); a leading dot (``".example.com"``) means its subdomains."""
    if isinstance(value, str):
        dot = "." if value.startswith(".") else ""
        name = dot + normalise_domain(value[len(dot) :])
        if _DOMAIN.match(name):
            return name
    raise OptionValueError(f'{_show(value)} is not a domain (expected e.g. "example.com" or ".example.com")')


def action(value: object) -> Verdict:
    """A refusal or ``"continue"`` (see :func:`relaybal.policy.verdicts.parse_action`)."""
    try:
        return parse_action(value)
    except ValueError as e:
        raise OptionValueError(str(e)) from None


@attrs.frozen
class Rate:
    """``count`` events per ``period`` seconds."""

    count: int
    period: float

    @property
    def per_second(self) -> float:
        return self.count / self.period

    def __str__(self) -> str:
        return f"{self.count}/{self.period:g}s"


_RATE = re.compile(r"^(\d+)\s*/\s*(\d*)\s*(s|m|h)$")
_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def rate(value: object) -> Rate:
    """``"100/m"`` (per minute), ``"10/s"``, ``"1000/h"``, or with a multiple: ``"3/2s"``, ``"500/10m"``."""
    if isinstance(value, str):
        m = _RATE.match(value.strip())
        if m is not None:
            count = int(m.group(1))
            multiple = int(m.group(2)) if m.group(2) else 1
            if count > 0 and multiple > 0:
                return Rate(count, multiple * _RATE_UNITS[m.group(3)])
    raise OptionValueError(f"{_show(value)} is not a rate (expected N/s|m|h)")
