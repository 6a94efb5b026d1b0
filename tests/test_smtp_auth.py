"""AUTH pieces: password hashes, the users file, the twisted.cred checker, SASL decoding, the CLI."""

from __future__ import annotations

import base64
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import pytest
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from relaybal.smtp import auth


def result_of(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred did not fire"
    return out[0]


class CountingRunner:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, check: Any) -> Deferred[Any]:
        self.calls += 1
        return succeed(check())


# ----------------------------------------------------------------------------- hashes


def test_scrypt_hash_round_trip() -> None:
    encoded = auth.hash_password("s3cret", ln=4)
    assert encoded.startswith("$scrypt$ln=4,r=8,p=1$")
    parsed = auth.PasswordHash.parse(encoded)
    assert parsed.verify(b"s3cret")
    assert not parsed.verify(b"s3cre")
    assert auth.hash_password("s3cret", ln=4) != encoded  # a fresh salt every time


def test_known_scrypt_vector() -> None:
    salt = b"0123456789abcdef"
    key = hashlib.scrypt(b"pw", salt=salt, n=16, r=8, p=1, dklen=32)
    text = f"$scrypt$ln=4,r=8,p=1${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"
    assert auth.PasswordHash.parse(text).verify(b"pw")


def test_pbkdf2_with_passlib_alphabet() -> None:
    salt = b"\xfb\xff\xfe" * 5
    key = hashlib.pbkdf2_hmac("sha256", b"pw", salt, 1000, 32)
    salt_text = base64.b64encode(salt).decode().replace("+", ".").rstrip("=")
    text = f"$pbkdf2-sha256$1000${salt_text}${base64.b64encode(key).decode()}"
    assert "." in salt_text
    parsed = auth.PasswordHash.parse(text)
    assert parsed.verify(b"pw") and not parsed.verify(b"px")


@pytest.mark.parametrize(
    "text",
    [
        "plain",
        "$md5$x$y$z",
        "$scrypt$ln=4,r=8$c2FsdA$a2V5",
        "$scrypt$ln=99,r=8,p=1$c2FsdA$a2V5",
        "$scrypt$ln=4,r=8,p=1$!!!$a2V5",
        "$scrypt$ln=4,r=8,p=1$$a2V5",
        "$pbkdf2-sha256$10$c2FsdA$a2V5",
        "$pbkdf2-sha256$many$c2FsdA$a2V5",
    ],
)
def test_malformed_hashes(text: str) -> None:
    with pytest.raises(ValueError):
        auth.PasswordHash.parse(text)


# ----------------------------------------------------------------------------- users file


def test_parse_users() -> None:
    h = auth.hash_password("a", ln=4)
    users = auth.parse_users(f"# comment\n\nalice:{h}\n  bob@example.com:{h}  \n")
    assert sorted(users) == ["alice", "bob@example.com"]
    for bad, message in [
        (f"alice {h}", "expected NAME:HASH"),
        ("alice:nothash", "user 'alice'"),
        (f"alice:{h}\nalice:{h}", "appears twice"),
        (f":{h}", "expected NAME:HASH"),
    ]:
        with pytest.raises(auth.UsersFileError, match=message):
            auth.parse_users(bad, "users")


def test_users_file_reloads_when_changed(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(f"alice:{auth.hash_password('a', ln=4)}\n")
    users = auth.UsersFile(str(path))
    assert users.lookup("alice") is not None and users.lookup("bob") is None
    path.write_text(f"bob:{auth.hash_password('b', ln=4)}\n")
    os.utime(path, ns=(1, 1))
    assert users.lookup("alice") is None and users.lookup("bob") is not None
    path.write_text("broken line\n")
    os.utime(path, ns=(2, 2))
    assert users.lookup("bob") is not None  # the last good contents stay
    assert users.error is not None and "expected NAME:HASH" in users.error


def test_users_file_errors(tmp_path: Path) -> None:
    with pytest.raises(auth.UsersFileError, match="cannot read"):
        auth.UsersFile(str(tmp_path / "missing"))


# ----------------------------------------------------------------------------- twisted.cred


class Table:
    def __init__(self, **passwords: str) -> None:
        self.entries = {n: auth.hash_password(p, ln=4) for n, p in passwords.items()}

    def lookup(self, name: str) -> tuple[str, auth.PasswordHash] | None:
        text = self.entries.get(name)
        return None if text is None else (text, auth.PasswordHash.parse(text))


def test_checker_accepts_and_caches() -> None:
    table = Table(alice="pw")
    runner = CountingRunner()
    checker = auth.UsersFileChecker(table, runner)
    assert result_of(checker.requestAvatarId(UsernamePassword(b"alice", b"pw"))) == b"alice"
    assert result_of(checker.requestAvatarId(UsernamePassword(b"alice", b"pw"))) == b"alice"
    assert runner.calls == 1  # the second login did not hash again
    bad = result_of(checker.requestAvatarId(UsernamePassword(b"alice", b"nope")))
    assert isinstance(bad, Failure) and bad.check(UnauthorizedLogin)
    assert runner.calls == 2  # a wrong password always pays the full price
    table.entries["alice"] = auth.hash_password("new", ln=4)
    bad = result_of(checker.requestAvatarId(UsernamePassword(b"alice", b"pw")))
    assert isinstance(bad, Failure)  # a changed entry drops the cached success


def test_checker_unknown_user_and_bad_names() -> None:
    runner = CountingRunner()
    checker = auth.UsersFileChecker(Table(), runner)
    unknown = result_of(checker.requestAvatarId(UsernamePassword(b"nobody", b"pw")))
    assert isinstance(unknown, Failure) and unknown.check(UnauthorizedLogin)
    assert runner.calls == 1  # some hashing happens anyway
    bad = result_of(checker.requestAvatarId(UsernamePassword(b"\xff", b"pw")))
    assert isinstance(bad, Failure) and bad.check(UnauthorizedLogin)


def test_login_through_the_portal() -> None:
    portal = auth.make_portal(Table(alice="pw"), CountingRunner())
    assert result_of(auth.login(portal, b"alice", b"pw")) == "alice"
    failed = result_of(auth.login(portal, b"alice", b"x"))
    assert isinstance(failed, Failure) and auth.failure_reason(failed) == "bad credentials"


def test_realm_only_serves_relay_users() -> None:
    realm = auth.RelayRealm()
    interface, avatar, logout = realm.requestAvatar(b"alice", None, auth.IRelayUser)
    assert interface is auth.IRelayUser and avatar == auth.RelayUser("alice")
    logout()
    with pytest.raises(NotImplementedError):
        realm.requestAvatar(b"alice", None)


# ----------------------------------------------------------------------------- SASL


def test_sasl_decoding() -> None:
    assert auth.decode_response(b"=") == b""
    assert auth.decode_response(b" AHUAcA== ") == b"\0u\0p"
    with pytest.raises(auth.SASLError):
        auth.decode_response(b"@@@")
    assert auth.parse_plain(b"\0u\0p") == (b"", b"u", b"p")
    assert auth.parse_plain(b"z\0u\0") == (b"z", b"u", b"")
    for bad in (b"u\0p", b"\0\0p", b"a\0b\0c\0d"):
        with pytest.raises(auth.SASLError):
            auth.parse_plain(bad)


# ----------------------------------------------------------------------------- the entry-making command


def test_main_prints_an_entry(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("hunter2\n"))
    monkeypatch.setattr(auth, "SCRYPT_LN", 4)
    assert auth.main(["alice", "--stdin"]) == 0
    line = capsys.readouterr().out.strip()
    users = auth.parse_users(line)
    assert users["alice"][1].verify(b"hunter2")
    assert auth.main(["a:b", "--stdin"]) == 2


def test_main_asks_twice(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    answers = iter(["one", "two"])
    monkeypatch.setattr(auth.getpass, "getpass", lambda prompt: next(answers))
    assert auth.main(["alice"]) == 1
    assert "differ" in capsys.readouterr().err


def test_the_documented_users_file_works() -> None:
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "relay.rst").read_text()
    block = text.split("    # relaybal users")[1].split("\n", 1)[1].split("\n\n")[0]
    users = auth.parse_users(block)
    assert users["alice"][1].verify(b"wonderland")
    assert users["app@example.com"][1].verify(b"looking-glass")
