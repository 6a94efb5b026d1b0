"""SMTP AUTH (RFC 4954) for relay frontends: a users file, ``twisted.cred``, SASL PLAIN and LOGIN.

Users file
    One user a line, ``NAME:HASH``; blank lines and lines starting with ``#``
    are ignored. ``NAME`` is printable UTF-8 without spaces or ``:``.
    ``HASH`` is one of

    - ``$scrypt$ln=14,r=8,p=1$SALT$KEY`` — :func:`hashlib.scrypt` with
      N = 2**ln, the key 32 bytes (what :func:`hash_password` writes);
    - ``$pbkdf2-sha256$ROUNDS$SALT$KEY`` — PBKDF2-HMAC-SHA256, 32-byte key;

    with ``SALT`` and ``KEY`` in base64 (standard alphabet, ``=`` padding
    optional; passlib's ``.`` for ``+`` is accepted too). Create entries with
    ``python -m relaybal.smtp.auth NAME`` (asks for the password).

    The file is re-read when its modification time or size changes.

Password checks are slow on purpose (scrypt: tens of milliseconds), so they
run in a small thread pool of their own, off the reactor thread. A successful
check is remembered (as an HMAC of the password under a per-process key, never
the password) until the user's entry changes, so a client that logs in for
every message pays the price once.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import getpass
import hashlib
import hmac
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import attrs
from twisted.cred import credentials, error, portal
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

T = TypeVar("T")

#: Runs a blocking function somewhere and gives its result (a thread pool in the daemon).
Runner = Callable[[Callable[[], T]], "Deferred[T]"]

SCRYPT_LN = 14
SCRYPT_R = 8
SCRYPT_P = 1
KEY_LENGTH = 32


class UsersFileError(Exception):
    """The users file cannot be read or has a malformed line."""


# --------------------------------------------------------------------------- hashes


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    text = text.replace(".", "+")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_password(password: str, salt: bytes | None = None, ln: int | None = None) -> str:
    """A ``$scrypt$`` entry for ``password`` (a fresh random salt unless one is given).

    ``ln`` is log2 of scrypt's cost N (default :data:`SCRYPT_LN`: 16 MiB, tens of ms).
    """
    salt = os.urandom(16) if salt is None else salt
    ln = SCRYPT_LN if ln is None else ln
    key = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=2**ln, r=SCRYPT_R, p=SCRYPT_P, dklen=KEY_LENGTH,
        maxmem=256 * 1024 * 1024,
    )  # fmt: skip
    return f"$scrypt$ln={ln},r={SCRYPT_R},p={SCRYPT_P}${_b64(salt)}${_b64(key)}"


@attrs.frozen
class PasswordHash:
    """A parsed users-file hash."""

    scheme: str
    params: tuple[int, ...]
    salt: bytes
    key: bytes

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        """Parse a ``$scrypt$`` or ``$pbkdf2-sha256$`` hash; ValueError if malformed."""
        parts = text.split("$")
        if len(parts) != 5 or parts[0]:
            raise ValueError("expected $scheme$parameters$salt$key")
        _, scheme, params, salt, key = parts
        try:
            salt_bytes, key_bytes = _unb64(salt), _unb64(key)
        except (binascii.Error, ValueError):
            raise ValueError("salt or key is not base64") from None
        if not salt_bytes or not key_bytes:
            raise ValueError("empty salt or key")
        if scheme == "scrypt":
            fields = dict(item.partition("=")[::2] for item in params.split(","))
            if sorted(fields) != ["ln", "p", "r"] or not all(v.isdigit() for v in fields.values()):
                raise ValueError("scrypt parameters must be ln=N,r=N,p=N")
            ln, r, p = int(fields["ln"]), int(fields["r"]), int(fields["p"])
            if not (1 <= ln <= 24 and 1 <= r <= 64 and 1 <= p <= 16):
                raise ValueError("scrypt parameters out of range")
            return cls("scrypt", (ln, r, p), salt_bytes, key_bytes)
        if scheme == "pbkdf2-sha256":
            if not params.isdigit() or not 1000 <= int(params) <= 10_000_000:
                raise ValueError("pbkdf2-sha256 rounds must be 1000-10000000")
            return cls("pbkdf2-sha256", (int(params),), salt_bytes, key_bytes)
        raise ValueError(f"unknown scheme {scheme!r} (expected scrypt or pbkdf2-sha256)")

    def verify(self, password: bytes) -> bool:
        """Whether ``password`` matches (slow: run it off the reactor thread)."""
        if self.scheme == "scrypt":
            ln, r, p = self.params
            key = hashlib.scrypt(
                password, salt=self.salt, n=2**ln, r=r, p=p, dklen=len(self.key),
                maxmem=256 * 1024 * 1024,
            )  # fmt: skip
        else:
            key = hashlib.pbkdf2_hmac("sha256", password, self.salt, self.params[0], len(self.key))
        return hmac.compare_digest(key, self.key)


# --------------------------------------------------------------------------- the users file


def parse_users(text: str, source: str = "<users>") -> dict[str, tuple[str, PasswordHash]]:
    """``{name: (hash text, parsed hash)}`` from users-file text; UsersFileError on a bad line."""
    users: dict[str, tuple[str, PasswordHash]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, encoded = line.partition(":")
        if not sep or not name or not name.isprintable() or " " in name:
            raise UsersFileError(f"{source}:{number}: expected NAME:HASH")
        try:
            parsed = PasswordHash.parse(encoded)
        except ValueError as e:
            raise UsersFileError(f"{source}:{number}: user {name!r}: {e}") from None
        if name in users:
            raise UsersFileError(f"{source}:{number}: user {name!r} appears twice")
        users[name] = (encoded, parsed)
    return users


class UsersFile:
    """A users file, re-read when it changes on disk.

    The constructor reads it once and raises :class:`UsersFileError` if that
    fails; a later failed re-read keeps the previous contents (and ``error``
    says why).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.error: str | None = None
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, tuple[str, PasswordHash]] = {}
        self._load()

    def _load(self) -> None:
        try:
            st = os.stat(self.path)
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise UsersFileError(f"{self.path}: cannot read: {e}") from None
        self._users = parse_users(text, self.path)
        self._stamp = (st.st_mtime_ns, st.st_size)

    def lookup(self, name: str) -> tuple[str, PasswordHash] | None:
        """The entry of ``name`` (re-reading the file first if it changed)."""
        try:
            st = os.stat(self.path)
            if (st.st_mtime_ns, st.st_size) != self._stamp:
                self._load()
                self.error = None
        except (OSError, UsersFileError) as e:
            self.error = str(e)
        return self._users.get(name)


# --------------------------------------------------------------------------- twisted.cred


class UserLookup(Protocol):
    """What the checker needs of a users table (:class:`UsersFile` in the daemon)."""

    def lookup(self, name: str) -> tuple[str, PasswordHash] | None:
        """``(hash text, parsed hash)`` of ``name``, or None."""


@implementer(ICredentialsChecker)
class UsersFileChecker:
    """Checks ``IUsernamePassword`` credentials against a :class:`UsersFile`.

    The avatar ID is the user name (UTF-8 bytes). ``run`` executes the slow
    hash check (``deferToThreadPool`` in the daemon; a synchronous runner in
    tests).
    """

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, users: UserLookup, run: Runner[bool]) -> None:
        self.users = users
        self.run = run
        self._secret = os.urandom(32)
        self._verified: dict[str, tuple[str, bytes]] = {}

    def requestAvatarId(self, creds: Any) -> Deferred[bytes | tuple[()]]:
        try:
            name: str = creds.username.decode("utf-8")
            password = bytes(creds.password)
        except (AttributeError, UnicodeDecodeError):
            return fail(error.UnauthorizedLogin())
        entry = self.users.lookup(name)
        if entry is None:
            # Same work for an unknown user, so timing does not reveal which names exist.
            dummy = PasswordHash("pbkdf2-sha256", (1000,), b"relaybal", b"\0" * 32)
            d = self.run(lambda: dummy.verify(password))
            return d.addCallback(lambda _: _unauthorized())
        encoded, parsed = entry
        mac = hmac.new(self._secret, password, "sha256").digest()
        cached = self._verified.get(name)
        if cached is not None and cached[0] == encoded and hmac.compare_digest(cached[1], mac):
            return succeed(name.encode("utf-8"))

        def checked(ok: bool) -> bytes | tuple[()]:
            if not ok:
                return _unauthorized()
            self._verified[name] = (encoded, mac)
            return name.encode("utf-8")

        return self.run(lambda: parsed.verify(password)).addCallback(checked)


def _unauthorized() -> bytes:
    raise error.UnauthorizedLogin()


class IRelayUser(Interface):
    """The avatar of an authenticated SMTP client: its user name."""


@attrs.frozen
class RelayUser:
    """An authenticated client."""

    name: str


@implementer(portal.IRealm)
class RelayRealm:
    """Turns an avatar ID (the user name) into a :class:`RelayUser`."""

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple[Any, Any, Any]:
        if IRelayUser not in interfaces:
            raise NotImplementedError("only IRelayUser avatars")
        name = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else str(avatarId)
        return IRelayUser, RelayUser(name), lambda: None


def make_portal(users: UserLookup, run: Runner[bool]) -> portal.Portal:
    """A portal that authenticates against ``users``."""
    return portal.Portal(RelayRealm(), [UsersFileChecker(users, run)])


def login(p: portal.Portal, username: bytes, password: bytes) -> Deferred[str]:
    """Fire with the user name, or fail with ``UnauthorizedLogin``."""
    d = p.login(credentials.UsernamePassword(username, password), None, IRelayUser)

    def avatar(result: tuple[Any, object, Any]) -> str:
        user = result[1]
        assert isinstance(user, RelayUser)
        return user.name

    return d.addCallback(avatar)


# --------------------------------------------------------------------------- SASL


class SASLError(Exception):
    """A malformed SASL response."""


def decode_response(line: bytes) -> bytes:
    """The base64 payload of an AUTH response line (``=`` is an empty response)."""
    line = line.strip()
    if line == b"=":
        return b""
    try:
        return base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        raise SASLError("invalid base64") from None


def parse_plain(message: bytes) -> tuple[bytes, bytes, bytes]:
    """``(authzid, authcid, password)`` of a PLAIN response (RFC 4616)."""
    parts = message.split(b"\0")
    if len(parts) != 3 or not parts[1]:
        raise SASLError("malformed PLAIN response")
    return parts[0], parts[1], parts[2]


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m relaybal.smtp.auth NAME``: print a users-file line for NAME."""
    parser = argparse.ArgumentParser(
        prog="python -m relaybal.smtp.auth", description="Print a relaybal users-file entry."
    )
    parser.add_argument("name")
    parser.add_argument("--stdin", action="store_true", help="read the password from standard input")
    args = parser.parse_args(argv)
    if ":" in args.name or " " in args.name or not args.name.isprintable():
        print("the name must be printable, without spaces or ':'", file=sys.stderr)
        return 2
    if args.stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("the passwords differ", file=sys.stderr)
            return 1
    print(f"{args.name}:{hash_password(password)}")
    return 0


def failure_reason(f: Failure) -> str:
    """Why a login failed, for the log."""
    return "bad credentials" if f.check(error.UnauthorizedLogin) else f.getErrorMessage()


if __name__ == "__main__":
    sys.exit(main())
