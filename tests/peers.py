"""Real peer programs on loopback, for integration tests and benchmarks.

Everything here starts genuine programs (Postfix's ``smtp-sink``/``smtp-source``,
a private Postfix ``master``, HAProxy, ``twistd relaybal``) on 127.0.0.1 with
free ports, and never touches the machine's own configuration (``/etc/postfix``,
system services).  The recipes and the reasons behind each step are in
``/work/shared/design/testing-peers.md``.

This module does not import pytest at import time, so ``bench/`` scripts can use
it too; only :func:`require_program` and the root check import it lazily, to
skip (or, with ``RELAYBAL_REQUIRE_PEERS=1``, fail) a test whose peer is missing.
The pytest fixtures live in ``tests/conftest.py``.

Every started process is put in its own session (so it is the leader of its own
process group: Postfix's ``master`` kills its whole process group on SIGTERM,
which must not be the test runner's) and registered in a
:class:`PeerRegistry`, so that fixtures, and an ``atexit`` hook for scripts,
can stop whatever a failing test left behind.  Output goes to a log file, not a
pipe, so a chatty peer never blocks on a full pipe.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import smtplib
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import NoReturn, Self

import attrs

#: Set to ``1`` (as CI does) to turn a missing peer program into a failure
#: instead of a skip.
REQUIRE_PEERS_ENV = "RELAYBAL_REQUIRE_PEERS"

#: Where Debian/Ubuntu put programs that are not on an ordinary user's PATH.
EXTRA_PROGRAM_DIRS = ("/usr/sbin", "/sbin", "/usr/lib/postfix/sbin")

#: The package that provides each program, for the skip message.
_PACKAGE_OF = {
    "smtp-sink": "postfix",
    "smtp-source": "postfix",
    "master": "postfix",
    "post-install": "postfix",
    "postconf": "postfix",
    "haproxy": "haproxy",
    "swaks": "swaks",
    "socat": "socat",
}

# Polling interval of the condition waiters: they wait for a condition, they
# never assert on elapsed time, so a short interval only costs a little CPU.
_POLL_INTERVAL = 0.02

_LISTEN_STATE = "0A"  # TCP_LISTEN in /proc/net/tcp{,6}


# --------------------------------------------------------------------------
# Availability
# --------------------------------------------------------------------------


def peers_required() -> bool:
    """Whether a missing peer must fail the test rather than skip it."""
    return os.environ.get(REQUIRE_PEERS_ENV) == "1"


def unavailable(reason: str) -> NoReturn:
    """Skip the current test because of *reason*, or fail it when peers are required."""
    import pytest  # lazily, so that bench scripts need no pytest

    if peers_required():
        pytest.fail(f"{reason} (and {REQUIRE_PEERS_ENV}=1)", pytrace=False)
    pytest.skip(reason)


def find_program(name: str) -> str | None:
    """The path of program *name* on PATH or in :data:`EXTRA_PROGRAM_DIRS`, or ``None``."""
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *EXTRA_PROGRAM_DIRS])
    return shutil.which(name, path=search)


def require_program(name: str) -> str:
    """Return the path of program *name*; skip (or fail) the test when it is missing.

    The search covers PATH plus :data:`EXTRA_PROGRAM_DIRS`.  The skip message
    names the package to install.
    """
    path = find_program(name)
    if path is None:
        package = _PACKAGE_OF.get(name, name)
        unavailable(f"{name} not installed (apt-get install {package})")
    return path


def require_root(what: str) -> None:
    """Skip (or fail) the test unless it runs as root; *what* says who needs it."""
    if os.geteuid() != 0:
        unavailable(f"{what} needs root")


# --------------------------------------------------------------------------
# Ports and waiting
# --------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on *host* that was free a moment ago.

    The port is found by binding to port 0 and closing again, so another
    process may take it before the caller does; on loopback in a test run
    that is rare enough to accept.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


class PeerExitedError(RuntimeError):
    """A peer process exited while something was waiting for it."""


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = _POLL_INTERVAL
) -> None:
    """Poll *predicate* until it returns true.

    Raises ``AssertionError`` naming *what* when it is still false after
    *timeout* seconds.  The predicate is always tried at least once.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def _proc_net_address(host: str, family: int) -> str:
    # /proc/net/tcp prints each 32-bit word of the address with %08X in host
    # byte order, hence the native-order unpack.
    packed = socket.inet_pton(family, host)
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{word:08X}" for word in words)


def _listening_inodes(host: str, port: int) -> set[str] | None:
    """Inodes of the sockets listening on *host*:*port* per /proc/net, or None if unknown."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    wanted = _proc_net_address(host, family)
    suffix = f":{port:04X}"
    # A wildcard listener accepts connections for every address; an IPv6
    # wildcard takes IPv4 too unless IPV6_V6ONLY is set, which we accept as a
    # small imprecision.
    tables = {"/proc/net/tcp": {wanted, "0" * 8}, "/proc/net/tcp6": {"0" * 32}}
    if family == socket.AF_INET6:
        tables = {"/proc/net/tcp6": {wanted, "0" * 32}}
    seen_any_table = False
    inodes: set[str] = set()
    for table, addresses in tables.items():
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        seen_any_table = True
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN_STATE:
                continue
            local = fields[1]
            if local.endswith(suffix) and local[: -len(suffix)] in addresses:
                inodes.add(fields[9])
    return inodes if seen_any_table else None


def process_group_members(pgid: int, *, include_zombies: bool = False) -> list[int]:
    """The pids in process group *pgid*, from /proc (empty where /proc is missing).

    Zombies (exited, not yet reaped, holding nothing) are left out unless
    *include_zombies*.
    """
    members: list[int] = []
    try:
        entries = [entry.name for entry in os.scandir("/proc") if entry.name.isdigit()]
    except OSError:
        return members
    for pid in entries:
        try:
            stat_line = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # Fields after the parenthesised command name: state ppid pgrp …
        after = stat_line.rsplit(")", 1)[-1].split()
        if len(after) >= 3 and int(after[2]) == pgid and (include_zombies or after[0] != "Z"):
            members.append(int(pid))
    return members


def _socket_inodes_of_group(pgid: int) -> set[str] | None:
    inodes: set[str] = set()
    for pid in process_group_members(pgid):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except PermissionError:
            return None  # not ours to inspect: cannot tell
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    return inodes


def _can_connect(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def port_is_listening(
    host: str, port: int, *, connect: bool = False, owner_pgid: int | None = None
) -> bool:
    """Whether something accepts TCP connections on *host*:*port*.

    By default this reads the kernel's socket table (``/proc/net/tcp``) and
    makes no connection, so the check leaves no trace in the peer: a probe
    connection would show up as a session in Postfix's log and, on a relaybal
    splice listener, would even open a backend connection and shift the
    balancing sequence.  With ``connect=True``, or where ``/proc`` is not
    available, it connects and closes instead.

    With *owner_pgid* (and /proc), the listening socket must belong to a
    process of that process group: a peer that lost the race for a "free"
    port to another program does not count as listening.
    """
    if connect:
        return _can_connect(host, port)
    inodes = _listening_inodes(host, port)
    if inodes is None:
        return _can_connect(host, port)
    if not inodes or owner_pgid is None:
        return bool(inodes)
    owned = _socket_inodes_of_group(owner_pgid)
    return owned is None or bool(inodes & owned)


def wait_for_port(
    host: str,
    port: int,
    timeout: float = 20.0,
    proc: PeerProcess | subprocess.Popen[bytes] | None = None,
    *,
    connect: bool = False,
) -> None:
    """Wait until *host*:*port* accepts connections (see :func:`port_is_listening`).

    When *proc* is given, the listening socket must be its own (or its
    process group's); if *proc* exits first, raises :class:`PeerExitedError`
    with its captured output.  On timeout raises ``AssertionError`` (with
    *proc*'s output so far, if any).
    """
    owner = None if proc is None else proc.pid
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise PeerExitedError(
                f"{_describe(proc)} exited with status {proc.poll()} before "
                f"{host}:{port} was listening; its output:\n{_output_of(proc)}"
            )
        if port_is_listening(host, port, connect=connect, owner_pgid=owner):
            return
        if time.monotonic() >= deadline:
            taken = ""
            if owner is not None and port_is_listening(host, port):
                taken = " (another process listens on that port)"
            output = "" if proc is None else f"; output of {_describe(proc)}:\n{_output_of(proc)}"
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {host}:{port} to listen"
                f"{taken}{output}"
            )
        time.sleep(_POLL_INTERVAL)


def _describe(proc: PeerProcess | subprocess.Popen[bytes]) -> str:
    if isinstance(proc, PeerProcess):
        return proc.name
    return repr(proc.args)


def _output_of(proc: PeerProcess | subprocess.Popen[bytes]) -> str:
    if isinstance(proc, PeerProcess):
        return proc.log()
    if proc.stdout is None and proc.stderr is None:
        return "(output not captured)"
    try:
        out, err = proc.communicate(timeout=1.0)
    except subprocess.TimeoutExpired:
        return "(process still running)"
    return b"".join(part for part in (out, err) if part).decode(errors="replace")


# --------------------------------------------------------------------------
# Directories peers can use after dropping privileges
# --------------------------------------------------------------------------


def _check_traversable(path: Path) -> None:
    # smtp-sink writes as nobody and Postfix's daemons run as postfix, so every
    # ancestor must be searchable by others; pytest's tmp_path (mode 0700 under
    # /tmp/pytest-of-USER) is not, which is why peers get their own directory.
    for ancestor in [path, *path.parents]:
        mode = ancestor.stat().st_mode
        if not mode & stat.S_IXOTH:
            raise RuntimeError(
                f"{ancestor} is not searchable by other users (mode {stat.filemode(mode)}); "
                "peers that drop privileges (smtp-sink -u nobody, Postfix) cannot reach "
                f"{path}; set TMPDIR to a world-searchable directory"
            )


def make_peer_dir(prefix: str = "relaybal-peers-", base: Path | None = None) -> Path:
    """Create a fresh directory that unprivileged peers can traverse.

    The directory has mode 0755 and lives under *base* (default: the system
    temporary directory); every ancestor is checked to be searchable by
    others.  The caller removes it (:func:`shutil.rmtree`) when done.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base)).resolve()
    path.chmod(0o755)
    _check_traversable(path)
    return path


def ensure_dir(path: Path, mode: int = 0o755) -> Path:
    """Create *path* and its missing parents with *mode*, whatever the umask."""
    missing = [p for p in [path, *path.parents] if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        directory.chmod(mode)
    return path


def _chown_to(path: Path, user: str) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


# --------------------------------------------------------------------------
# Process bookkeeping
# --------------------------------------------------------------------------


class PeerRegistry:
    """The peer processes currently running, so that all can be stopped at once."""

    def __init__(self) -> None:
        self._peers: list[PeerProcess] = []

    def add(self, peer: PeerProcess) -> None:
        """Remember *peer* (idempotent)."""
        if peer not in self._peers:
            self._peers.append(peer)

    def discard(self, peer: PeerProcess) -> None:
        """Forget *peer* if it was remembered."""
        if peer in self._peers:
            self._peers.remove(peer)

    def running(self) -> list[PeerProcess]:
        """The remembered peers, oldest first."""
        return list(self._peers)

    def stop_all(self, timeout: float = 10.0) -> None:
        """Stop every remembered peer, newest first, even if some stops fail.

        Re-raises the first error after trying all of them.
        """
        errors: list[BaseException] = []
        for peer in reversed(self._peers):
            try:
                peer.stop(timeout)
            except Exception as error:  # stop the others regardless
                errors.append(error)
        self._peers.clear()
        if errors:
            raise errors[0]

    def kill_all(self) -> None:
        """SIGKILL every remembered peer's process group (for interpreter exit)."""
        for peer in reversed(self._peers):
            with contextlib.suppress(Exception):
                peer.kill()
        self._peers.clear()


#: The registry peers join unless given another; killed at interpreter exit.
default_registry = PeerRegistry()
atexit.register(default_registry.kill_all)


class PeerProcess:
    """One peer program run in its own session with its output in a log file.

    Subclasses build the command line and call :meth:`_spawn`.  Usable as a
    context manager: leaving the block calls :meth:`stop`.
    """

    def __init__(self, name: str, directory: Path, registry: PeerRegistry | None) -> None:
        self.name = name
        self.directory = Path(directory)
        ensure_dir(self.directory)
        self.log_path = self.directory / f"{name}.log"
        self._registry = default_registry if registry is None else registry
        self._popen: subprocess.Popen[bytes] | None = None
        self._argv: list[str] = []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} pid={self.pid} rc={self.returncode}>"

    # -- running ----------------------------------------------------------

    def _spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        if self._popen is not None and self._popen.poll() is None:
            raise RuntimeError(f"{self.name} is already running")
        self._argv = list(argv)
        with self.log_path.open("ab") as log:
            log.write(f"# {' '.join(argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=None if env is None else dict(env),
                cwd=cwd if cwd is not None else self.directory,
                start_new_session=True,
            )
        self._registry.add(self)

    @property
    def pid(self) -> int | None:
        """The process id, once started."""
        return None if self._popen is None else self._popen.pid

    @property
    def argv(self) -> list[str]:
        """The command line of the last start."""
        return list(self._argv)

    def poll(self) -> int | None:
        """The exit status if the process has exited, else ``None`` (also before start)."""
        return None if self._popen is None else self._popen.poll()

    @property
    def returncode(self) -> int | None:
        """The exit status, or ``None`` while running or before start."""
        return self.poll()

    @property
    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self._popen is not None and self._popen.poll() is None

    def log(self) -> str:
        """Everything the process wrote to stdout/stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, needle: str, timeout: float = 10.0) -> None:
        """Wait until *needle* appears in :meth:`log`; fail early if the process exits."""

        def seen() -> bool:
            if needle in self.log():
                return True
            if self._popen is not None and self._popen.poll() is not None:
                raise PeerExitedError(
                    f"{self.name} exited with status {self._popen.poll()} before logging "
                    f"{needle!r}; its output:\n{self.log()}"
                )
            return False

        wait_until(seen, timeout, f"{needle!r} in the log of {self.name}")

    def wait_for_port(self, port: int, host: str = "127.0.0.1", timeout: float = 20.0) -> None:
        """:func:`wait_for_port` with this process as the one that must not exit."""
        wait_for_port(host, port, timeout, proc=self)

    # -- stopping ---------------------------------------------------------

    def _signal_group(self, signum: signal.Signals) -> None:
        if self._popen is not None:
            # The process leads its own group (start_new_session), so the
            # group id is its pid; the group may outlive it (Postfix's
            # children) or be gone already.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._popen.pid, signum)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process, wait up to *timeout* s, then SIGKILL its group.

        Returns the exit status (``None`` if it was never started).  Any
        process left in its group afterwards is killed too.
        """
        popen = self._popen
        if popen is None:
            return None
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                popen.wait(5.0)
        self._signal_group(signal.SIGKILL)
        self._registry.discard(self)
        self._wait_group_gone()
        return popen.returncode

    def kill(self) -> int | None:
        """SIGKILL the whole process group at once and reap the process."""
        popen = self._popen
        if popen is None:
            return None
        self._signal_group(signal.SIGKILL)
        popen.wait(5.0)
        self._registry.discard(self)
        self._wait_group_gone()
        return popen.returncode

    def _wait_group_gone(self) -> None:
        # A surviving child (say a Postfix smtpd) could still hold the
        # listening socket and confuse the next test.
        assert self._popen is not None
        pgid = self._popen.pid
        wait_until(
            lambda: not process_group_members(pgid),
            5.0,
            f"the processes of {self.name} (group {pgid}) to exit",
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------
# smtp-sink
# --------------------------------------------------------------------------


@attrs.frozen
class DumpedMessage:
    """One message file written by ``smtp-sink -d``.

    ``records`` are the ``X-…`` lines smtp-sink writes before its own
    ``Received:`` header, in order, as (name, value) pairs.
    """

    path: Path
    records: tuple[tuple[str, str], ...]
    text: str

    @classmethod
    def read(cls, path: Path) -> DumpedMessage:
        """Parse *path*; a file still being written yields the records seen so far."""
        text = path.read_text(errors="replace")
        records: list[tuple[str, str]] = []
        for line in text.splitlines():
            if line.startswith("Received:"):
                break
            name, sep, value = line.partition(":")
            if sep and name.startswith("X-"):
                records.append((name, value.strip()))
        return cls(path=path, records=tuple(records), text=text)

    def values(self, name: str) -> list[str]:
        """The values of all records called *name* (case-insensitive), in order."""
        wanted = name.lower()
        return [value for key, value in self.records if key.lower() == wanted]

    @property
    def client_addr(self) -> str | None:
        """``X-Client-Addr``: the client address (or the XCLIENT ADDR)."""
        values = self.values("X-Client-Addr")
        return values[0] if values else None

    @property
    def mail_args(self) -> str | None:
        """``X-Mail-Args``: the arguments of MAIL FROM."""
        values = self.values("X-Mail-Args")
        return values[0] if values else None

    @property
    def rcpt_args(self) -> list[str]:
        """``X-Rcpt-Args``: the arguments of each RCPT TO, in order."""
        return self.values("X-Rcpt-Args")


class SmtpSink(PeerProcess):
    """``smtp-sink`` on 127.0.0.1, optionally dumping each message to a file.

    Starts in the constructor and waits until it listens.  With ``dump=True``
    it runs ``smtp-sink -d DIR/%M.``, one file per transaction, which is how
    tests count and identify deliveries.  *options* are extra smtp-sink
    options, e.g. ``["-Q", "CONNECT"]`` for a sink that answers 421 at once.
    As root it runs with ``-u nobody``, as smtp-sink requires.

    A dump file is created when DATA is accepted and completed at the final
    dot, so counts taken while a transaction is in progress include it; a
    message whose final reply was lost (``-q .`` or ``-Q .``) is dumped too.
    """

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        dump: bool = True,
        options: Sequence[str] = (),
        backlog: int = 1000,
        name: str = "smtp-sink",
        registry: PeerRegistry | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        super().__init__(name, directory, registry)
        self.host = "127.0.0.1"
        self.port = free_port(self.host) if port is None else port
        self.dump_dir: Path | None = None
        argv = [require_program("smtp-sink")]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]
        if dump:
            self.dump_dir = self.directory / "dump"
            ensure_dir(self.dump_dir)
            _chown_to(self.dump_dir, "nobody")
            argv += ["-d", f"{self.dump_dir}/%M."]
        argv += [*options, f"{self.host}:{self.port}", str(backlog)]
        self._spawn(argv)
        self.wait_for_port(self.port, self.host, start_timeout)

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the sink listens on."""
        return (self.host, self.port)

    def _require_dump(self) -> Path:
        if self.dump_dir is None:
            raise RuntimeError(f"{self.name} was started without dump=True")
        return self.dump_dir

    def message_files(self) -> list[Path]:
        """The dump files, oldest first (by modification time, then name)."""
        files = [path for path in self._require_dump().rglob("*") if path.is_file()]
        return sorted(files, key=lambda path: (path.stat().st_mtime_ns, path.name))

    def messages(self) -> list[DumpedMessage]:
        """The parsed dump files, oldest first."""
        return [DumpedMessage.read(path) for path in self.message_files()]

    def count(self) -> int:
        """How many messages were dumped (see the class note on in-progress ones)."""
        return len(self.message_files())

    def client_addrs(self) -> list[str]:
        """The ``X-Client-Addr`` value of each message, oldest first."""
        return [addr for message in self.messages() if (addr := message.client_addr)]

    def rcpt_args(self) -> list[str]:
        """All ``X-Rcpt-Args`` values of all messages, oldest message first."""
        return [arg for message in self.messages() for arg in message.rcpt_args]

    def wait_for_count(self, count: int, timeout: float = 10.0) -> None:
        """Wait until at least *count* messages were dumped."""
        wait_until(
            lambda: self.count() >= count, timeout, f"{count} messages in {self.name}"
        )


# --------------------------------------------------------------------------
# Clients: smtp-source and a one-message Python client
# --------------------------------------------------------------------------


def smtp_source(
    port: int,
    *,
    sessions: int,
    messages: int,
    size: int,
    reuse: bool = False,
    number_rcpts: bool = False,
    sender: str,
    rcpt: str,
    host: str = "127.0.0.1",
    options: Sequence[str] = (),
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``smtp-source`` against *host*:*port* and return its result.

    Runs ``smtp-source -s SESSIONS -m MESSAGES -l SIZE [-d] [-N] -f SENDER -t
    RCPT [OPTIONS] HOST:PORT`` with output captured as text; the caller
    asserts on ``returncode`` (non-zero on any unexpected reply).  ``reuse``
    (``-d``) sends all of a session's messages over one connection;
    ``number_rcpts`` (``-N``) prefixes each recipient with a sequence number
    (``1user@…``) so every message is identifiable in a sink's dump.  Other
    smtp-source options (``-r N`` recipients, ``-S subject``, ``-M helo``,
    ``-A`` don't abort, ``-w``/``-R`` delays, ``-c``) go in *options*.

    smtp-source cannot choose its source address (there is no bind option:
    ``-S`` is the subject); use :func:`send_one_message` for a client on
    ``127.0.0.N``.  Raises ``subprocess.TimeoutExpired`` (after killing it)
    when it runs longer than *timeout* seconds.
    """
    argv = [
        require_program("smtp-source"),
        "-s",
        str(sessions),
        "-m",
        str(messages),
        "-l",
        str(size),
    ]
    if reuse:
        argv.append("-d")
    if number_rcpts:
        argv.append("-N")
    argv += ["-f", sender, "-t", rcpt, *options, f"{host}:{port}"]
    return subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def smtp_source_rate(port: int, *, messages: int, reuse: bool, sessions: int = 50, size: int = 1024) -> float:
    """Messages per second of one ``smtp-source`` run, for benchmarks.

    Raises ``SystemExit`` with smtp-source's complaint on any unexpected reply:
    a benchmark that lost messages has no figure to give.
    """
    start = time.perf_counter()
    done = smtp_source(
        port, sessions=sessions, messages=messages, size=size, reuse=reuse,
        sender="bench@client.test", rcpt="user@example.test", timeout=600,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"smtp-source against port {port} failed: {done.stderr.strip()}")
    return messages / elapsed


@attrs.frozen
class SmtpReply:
    """One SMTP reply: its code and its text (lines joined with newlines)."""

    code: int
    text: str

    @classmethod
    def of(cls, reply: tuple[int, bytes]) -> SmtpReply:
        """From smtplib's ``(code, bytes)`` pair."""
        code, text = reply
        return cls(code, text.decode(errors="replace"))


@attrs.frozen
class SmtpTranscript:
    """The replies of one :func:`send_one_message` session, in order.

    A step that was not reached is ``None`` (or absent from ``rcpts``);
    ``disconnected`` tells that the server closed the connection early.
    """

    banner: SmtpReply | None
    ehlo: SmtpReply | None = None
    mail: SmtpReply | None = None
    rcpts: tuple[SmtpReply, ...] = ()
    data: SmtpReply | None = None
    disconnected: bool = False

    @property
    def accepted(self) -> bool:
        """Whether the message was accepted (final reply 250)."""
        return self.data is not None and self.data.code == 250


def send_one_message(
    port: int,
    *,
    source_address: tuple[str, int] = ("127.0.0.1", 0),
    sender: str = "sender@client.test",
    rcpts: Sequence[str] = ("rcpt@example.test",),
    message: bytes = b"Subject: relaybal test\r\n\r\nHello.\r\n",
    host: str = "127.0.0.1",
    helo: str = "client.test",
    timeout: float = 10.0,
) -> SmtpTranscript:
    """Send one message with smtplib from *source_address* and return every reply.

    Binding to ``127.0.0.N`` (any address in 127.0.0.0/8 works without set-up)
    is how a test tells the real client from relaybal's own address.  The
    session stops at the first reply that is not positive (and then QUITs);
    nothing is raised for SMTP errors, the caller asserts on the transcript.
    """
    client = smtplib.SMTP(local_hostname=helo, timeout=timeout, source_address=source_address)
    banner: SmtpReply | None = None
    steps: dict[str, SmtpReply] = {}
    rcpt_replies: list[SmtpReply] = []

    def finish(*, disconnected: bool = False) -> SmtpTranscript:
        if not disconnected:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                client.quit()
        client.close()
        return SmtpTranscript(
            banner=banner,
            ehlo=steps.get("ehlo"),
            mail=steps.get("mail"),
            rcpts=tuple(rcpt_replies),
            data=steps.get("data"),
            disconnected=disconnected,
        )

    try:
        banner = SmtpReply.of(client.connect(host, port))
        if banner.code != 220:
            return finish()
        steps["ehlo"] = SmtpReply.of(client.ehlo())
        if steps["ehlo"].code != 250:
            return finish()
        steps["mail"] = SmtpReply.of(client.mail(sender))
        if steps["mail"].code != 250:
            return finish()
        for rcpt in rcpts:
            rcpt_replies.append(SmtpReply.of(client.rcpt(rcpt)))
        if not any(reply.code in (250, 251) for reply in rcpt_replies):
            return finish()
        try:
            steps["data"] = SmtpReply.of(client.data(message))
        except smtplib.SMTPDataError as error:  # DATA itself refused (no 354)
            text = error.smtp_error
            if isinstance(text, bytes):
                text = text.decode(errors="replace")
            steps["data"] = SmtpReply(error.smtp_code, text)
        return finish()
    except smtplib.SMTPServerDisconnected:
        return finish(disconnected=True)


# --------------------------------------------------------------------------
# A private Postfix
# --------------------------------------------------------------------------

POSTFIX_DAEMON_DIRECTORY = Path("/usr/lib/postfix/sbin")

#: master.cf templates, the distribution's pristine copy first so that a
#: developer's local edits of /etc/postfix/master.cf do not leak in.
MASTER_CF_TEMPLATES = (
    Path("/usr/share/postfix/master.cf.dist"),
    Path("/etc/postfix/master.cf.proto"),
    Path("/etc/postfix/master.cf"),
)

_CHROOT_TYPES = {"unix", "fifo", "pass", "unix-dgram"}


def private_master_cf(template: str, port: int) -> str:
    """A master.cf for a private instance, derived from the system's *template*.

    Drops every ``inet`` service (with its continuation lines), switches
    chroot off for the others (a private queue directory cannot be a chroot
    jail), and adds one ``smtpd`` on *port*.
    """
    out: list[str] = []
    dropping = False
    for line in template.splitlines():
        if line[:1].isspace() and line.strip():  # continuation of the previous entry
            if not dropping:
                out.append(line)
            continue
        dropping = False
        fields = line.split()
        if not fields or fields[0].startswith("#") or len(fields) < 8:
            out.append(line)
            continue
        if fields[1] == "inet":
            dropping = True
            continue
        if fields[1] in _CHROOT_TYPES and fields[4] == "y":
            fields[4] = "n"
            out.append(" ".join(fields))
        else:
            out.append(line)
    out.append(f"{port} inet n - n - - smtpd")
    return "\n".join(out) + "\n"


class PrivatePostfix(PeerProcess):
    """A private Postfix instance whose ``smtpd`` listens on 127.0.0.1:PORT.

    It has its own config, queue and data directories under *directory*
    (which unprivileged users must be able to traverse, see
    :func:`make_peer_dir`), is run as ``master -c DIR -d -s`` in the
    foreground, and logs to a file through ``maillog_file = /dev/stdout``.
    The system's Postfix and ``/etc/postfix`` are only read (the master.cf
    template, ``meta_directory``), never changed.  *settings* are extra
    main.cf parameters, e.g. ``{"smtpd_upstream_proxy_protocol":
    "haproxy"}``; they override the base ones.  Needs root: :meth:`start`
    skips the test otherwise (fails under ``RELAYBAL_REQUIRE_PEERS=1``).

    Note that Postfix logs every connection, including the ones a test makes
    only to probe the port; :meth:`start` therefore waits without connecting.
    """

    def __init__(
        self,
        directory: Path,
        settings: Mapping[str, str] | None = None,
        *,
        port: int | None = None,
        name: str = "postfix",
        registry: PeerRegistry | None = None,
    ) -> None:
        super().__init__(name, directory, registry)
        self.host = "127.0.0.1"
        self.port = free_port(self.host) if port is None else port
        self.settings = dict(settings or {})
        self.conf_dir = self.directory / "conf"
        self.queue_dir = self.directory / "queue"
        self.data_dir = self.directory / "data"

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of the private smtpd."""
        return (self.host, self.port)

    def main_cf(self) -> str:
        """The main.cf text this instance runs with."""
        base = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "maillog_file": "/dev/stdout",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "myhostname": "gw.test",
            "alias_maps": "",
            "alias_database": "",
        }
        base.update(self.settings)
        return "".join(f"{key} = {value}\n" for key, value in base.items())

    def _write_config(self) -> None:
        for path in (self.conf_dir, self.queue_dir, self.data_dir):
            ensure_dir(path)
        # Postfix's daemons run as postfix: they must reach the queue and own data/.
        _check_traversable(self.directory)
        _chown_to(self.data_dir, "postfix")
        template = next((path for path in MASTER_CF_TEMPLATES if path.exists()), None)
        if template is None:
            unavailable("no Postfix master.cf template found (apt-get install postfix)")
        written = {
            self.conf_dir / "master.cf": private_master_cf(template.read_text(), self.port),
            self.conf_dir / "main.cf": self.main_cf(),
        }
        # Postfix distrusts a configuration file modified within the last
        # second or two (an editor may still be writing it) and sleeps 300 ms
        # per retry until it is old enough: ~2.5 s per start.  Backdating the
        # files avoids that wait.
        backdated = time.time() - 60
        for path, text in written.items():
            path.write_text(text)
            os.utime(path, (backdated, backdated))

    def _post_install(self) -> None:
        # Creates the queue's subdirectories with Postfix's owners and modes.
        result = subprocess.run(
            [
                str(POSTFIX_DAEMON_DIRECTORY / "post-install"),
                f"config_directory={self.conf_dir}",
                f"queue_directory={self.queue_dir}",
                f"data_directory={self.data_dir}",
                "meta_directory=/etc/postfix",
                f"daemon_directory={POSTFIX_DAEMON_DIRECTORY}",
                f"command_directory={Path(require_program('postconf')).parent}",
                "mail_owner=postfix",
                "setgid_group=postdrop",
                "create-missing",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"post-install failed with status {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )

    def start(self, timeout: float = 20.0) -> None:
        """Write the configuration, create the queue, start master, wait for the port.

        If master exits early (its first fatal errors go to syslog, which may
        not exist, so the log can be empty), the error says so.
        """
        require_root("a private Postfix instance")
        master = require_program("master")
        require_program("post-install")
        self._write_config()
        self._post_install()
        self._spawn([master, "-c", str(self.conf_dir), "-d", "-s"])
        try:
            self.wait_for_port(self.port, self.host, timeout)
        except PeerExitedError as error:
            raise PeerExitedError(
                f"{error}\n(Postfix logs errors before its log file is open to syslog "
                f"only; try `{master} -c {self.conf_dir} -d -s -v` under strace)"
            ) from None


# --------------------------------------------------------------------------
# HAProxy
# --------------------------------------------------------------------------


def haproxy_preamble(
    *,
    nbthread: int = 1,
    mode: str = "tcp",
    timeout_connect: str = "5s",
    timeout_client: str = "30s",
    timeout_server: str = "30s",
    maxconn: int | None = None,
    log_to_stderr: bool = False,
) -> str:
    """The ``global`` and ``defaults`` sections for a test HAProxy.

    ``nbthread 1`` by default (fair benchmarks against one relaybal
    process); no syslog.  Without *maxconn*, HAProxy derives it from the
    file-descriptor limit (asking for more than the limit allows is fatal).
    ``log_to_stderr=True`` logs each session to HAProxy's stderr (our log
    file) in TCP log format.
    """
    global_lines = [f"nbthread {nbthread}"]
    if maxconn is not None:
        global_lines.append(f"maxconn {maxconn}")
    defaults_lines = [
        f"mode {mode}",
        f"timeout connect {timeout_connect}",
        f"timeout client {timeout_client}",
        f"timeout server {timeout_server}",
    ]
    if log_to_stderr:
        global_lines.append("log stderr format raw daemon")
        defaults_lines += ["log global", "option tcplog"]
    return "".join(
        f"{section}\n" + "".join(f"    {line}\n" for line in lines) + "\n"
        for section, lines in (("global", global_lines), ("defaults", defaults_lines))
    )


def haproxy_tcp_listen(
    name: str,
    bind_port: int,
    servers: Iterable[tuple[str, int]],
    *,
    balance: str = "roundrobin",
    server_options: str = "",
) -> str:
    """A ``listen`` section forwarding 127.0.0.1:*bind_port* to *servers* in TCP mode.

    *server_options* is appended to every ``server`` line (e.g.
    ``"send-proxy-v2"`` or ``"check"``).
    """
    lines = [f"listen {name}", f"    bind 127.0.0.1:{bind_port}", f"    balance {balance}"]
    for index, (host, port) in enumerate(servers, start=1):
        lines.append(f"    server s{index} {host}:{port} {server_options}".rstrip())
    return "\n".join(lines) + "\n\n"


class HAProxy(PeerProcess):
    """``haproxy -db -f FILE`` in the foreground with the caller's configuration.

    *config* is the whole file (see :func:`haproxy_preamble` and
    :func:`haproxy_tcp_listen`); :meth:`start` waits for *wait_ports* on
    127.0.0.1.
    """

    def __init__(
        self,
        directory: Path,
        config: str,
        *,
        name: str = "haproxy",
        registry: PeerRegistry | None = None,
    ) -> None:
        super().__init__(name, directory, registry)
        self.config = config
        self.config_path = self.directory / f"{name}.cfg"

    def start(self, wait_ports: Sequence[int] = (), timeout: float = 10.0) -> None:
        """Write the configuration, start HAProxy and wait for *wait_ports*."""
        haproxy = require_program("haproxy")
        self.config_path.write_text(self.config)
        self._spawn([haproxy, "-db", "-f", str(self.config_path)])
        for port in wait_ports:
            self.wait_for_port(port, "127.0.0.1", timeout)


# --------------------------------------------------------------------------
# relaybal itself
# --------------------------------------------------------------------------


def twistd_path() -> str:
    """The ``twistd`` of the running interpreter's environment."""
    return str(Path(sys.executable).parent / "twistd")


class RelaybalDaemon(PeerProcess):
    """The real daemon: ``twistd -n --pidfile= relaybal -c FILE``.

    *config* is the TOML text, written to ``DIR/relaybal.toml``; stdout and
    stderr go to ``DIR/relaybal.log`` (:meth:`log`) with
    ``PYTHONUNBUFFERED=1``.  *extra_args* are appended to the plugin's
    arguments; *env* adds to (and overrides) the inherited environment.
    """

    def __init__(
        self,
        directory: Path,
        config: str,
        *,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        name: str = "relaybal",
        registry: PeerRegistry | None = None,
    ) -> None:
        super().__init__(name, directory, registry)
        self.config = config
        self.config_path = self.directory / f"{name}.toml"
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})

    def command(self) -> list[str]:
        """The command line :meth:`start` runs."""
        return [
            twistd_path(),
            "-n",
            "--pidfile=",
            "relaybal",
            "-c",
            str(self.config_path),
            *self.extra_args,
        ]

    def start(self, wait_ports: Sequence[int] = (), timeout: float = 20.0) -> None:
        """Write the config, start the daemon and wait for *wait_ports* on 127.0.0.1.

        Raises :class:`PeerExitedError` with the daemon's log if it exits first.
        """
        self.config_path.write_text(self.config)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        self._spawn(self.command(), env=env)
        for port in wait_ports:
            self.wait_for_port(port, "127.0.0.1", timeout)
