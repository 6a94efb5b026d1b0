"""The runtime API's commands: parsing a line and running its commands, with no I/O.

A line holds one or more commands separated by ``;``; words are separated
by spaces or tabs; a backslash makes the next character literal (so ``\\;``
and ``\\ `` can appear in a value), as in HAProxy. Each command's answer is
its output lines followed by one empty line, the end-of-output marker; no
answer contains an empty line of its own.

Commands that change something answer nothing when they succeed (as HAProxy
does); every mistake gets exactly one line saying what is wrong. With
``set severity-output number`` (or ``string``) such message lines start with
``[3]: `` (or ``[err]: ``) for errors, which is how ``relaybal ctl`` tells
an error from a result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
from twisted.logger import Logger

from relaybal.admin import stats
from relaybal.admin.stats import ProcessView
from relaybal.balance.backend import MAINT, READY, Backend, Server
from relaybal.config import ADMIN_STATES
from relaybal.delivery import queueadmin
from relaybal.delivery.scheduler import Scheduler

log = Logger(namespace="relaybal.admin")

#: syslog severities, as ``set severity-output string`` names them.
SEVERITY_NAMES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
ERROR = 3
INFO = 6


@attrs.frozen
class Answer:
    """The output of one command: its lines, and for messages (not dumps) a severity."""

    lines: tuple[str, ...] = ()
    severity: int | None = None


def error(text: str) -> Answer:
    """A one-line error message."""
    return Answer((text,), ERROR)


@attrs.define
class CliSession:
    """Per-connection state: interactive mode, severity output, and whether to close."""

    interactive: bool = False
    severity_output: str = "none"
    closing: bool = False


def split_line(line: str) -> list[list[str]]:
    """The commands of one line, each as its words (empty commands dropped).

    ``;`` separates commands, spaces and tabs separate words, a backslash makes
    the next character part of the word (a trailing one is kept as is).
    """
    commands: list[list[str]] = []
    words: list[str] = []
    word: list[str] = []
    in_word = False
    escaped = False

    def end_word() -> None:
        nonlocal in_word
        if in_word:
            words.append("".join(word))
            word.clear()
            in_word = False

    for char in line:
        if escaped:
            word.append(char)
            in_word = True
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ";":
            end_word()
            if words:
                commands.append(list(words))
            words.clear()
        elif char in " \t":
            end_word()
        else:
            word.append(char)
            in_word = True
    if escaped:
        word.append("\\")
        in_word = True
    end_word()
    if words:
        commands.append(list(words))
    return commands


def format_answer(answer: Answer, session: CliSession) -> str:
    """The bytes-to-be of one answer: its lines and the empty end-of-output line."""
    lines = [line for line in answer.lines if line]
    if lines and answer.severity is not None and session.severity_output != "none":
        tag = (
            str(answer.severity)
            if session.severity_output == "number"
            else SEVERITY_NAMES[answer.severity]
        )
        lines[0] = f"[{tag}]: {lines[0]}"
    return "".join(line + "\n" for line in lines) + "\n"


Handler = Callable[["RuntimeCommands", list[str], CliSession], Answer]


@attrs.frozen
class _Command:
    words: tuple[str, ...]
    usage: str
    help: str
    handler: Handler
    changes: bool = False
    """Changes state (such commands are logged)."""


class RuntimeCommands:
    """Runs runtime-API commands against a :class:`~relaybal.admin.stats.ProcessView`.

    Promises: :meth:`execute_line` never raises (an unexpected exception in
    a command becomes an ``Internal error`` answer and is logged); state
    changes go through the servers' own methods, so they are logged and
    seen by the health checkers like any other change.
    """

    def __init__(
        self,
        view: ProcessView,
        reload: Callable[[], tuple[bool, Sequence[str]]] | None = None,
        queue: Callable[[], Scheduler | None] | None = None,
        on_change: Callable[[Sequence[str]], None] | None = None,
    ) -> None:
        self.view = view
        self._reload = reload
        """Reloads the configuration: (applied?, lines saying what changed or what is wrong)."""
        self._queue = queue
        """The delivery scheduler of the relay spool (None without one)."""
        self._on_change = on_change
        """Told the words of each command that changed something (the main process tells its workers)."""

    # -- entry points

    def execute_line(self, line: str, session: CliSession) -> str:
        """Run every command of ``line``; return their answers, each ended by an empty line.

        Stops after a command that closes the session (``quit``, leaving
        interactive mode with ``prompt``).
        """
        out: list[str] = []
        for words in split_line(line):
            answer = self.run(words, session)
            if session.closing and not answer.lines:
                break
            out.append(format_answer(answer, session))
            if session.closing:
                break
        return "".join(out)

    def run(self, words: Sequence[str], session: CliSession) -> Answer:
        """Run one command (its words); never raises."""
        command, args = self._lookup(words)
        if command is None:
            return error(f"Unknown command '{' '.join(words)}'; 'help' lists the commands.")
        try:
            answer = command.handler(self, args, session)
        except Exception as e:
            log.failure("runtime API command {command!r} failed", command=" ".join(words))
            return error(f"Internal error while running '{' '.join(command.words)}': {e}")
        if command.changes and answer.severity != ERROR:
            log.info("runtime API: {command}", command=" ".join(words))
            if self._on_change is not None:
                self._on_change(words)
        return answer

    def _lookup(self, words: Sequence[str]) -> tuple[_Command | None, list[str]]:
        for size in (3, 2, 1):
            key = tuple(words[:size])
            if len(key) == size and key in _BY_WORDS:
                return _BY_WORDS[key], list(words[size:])
        return None, []

    # -- helpers

    def _server(self, args: Sequence[str]) -> Server | Answer:
        """The server named ``backend/server`` by the first argument, or an error answer."""
        if not args or "/" not in args[0]:
            return error("Require 'backend/server'.")
        backend_name, _, server_name = args[0].partition("/")
        backend = self.view.backends.get(backend_name)
        if backend is None:
            return error("No such backend.")
        server = backend.server(server_name)
        if server is None:
            return error("No such server.")
        return server

    def _table(self, name: str) -> Backend | Answer:
        backend = self.view.backends.get(name)
        if backend is None or backend.stick is None:
            return error(f"No such table: '{name}' (tables are named after backends with a stick table).")
        return backend

    # -- commands

    def help(self, args: list[str], session: CliSession) -> Answer:
        matching = [c for c in COMMANDS if not args or list(c.words[: len(args)]) == args]
        if not matching:
            return error(f"No command starts with '{' '.join(args)}'; 'help' lists them all.")
        lines = ["The following commands are valid at this level:"]
        lines += [f"  {c.usage:<44}: {c.help}" for c in matching]
        return Answer(tuple(lines))

    def prompt(self, args: list[str], session: CliSession) -> Answer:
        session.interactive = not session.interactive
        if not session.interactive:
            session.closing = True
        return Answer()

    def quit(self, args: list[str], session: CliSession) -> Answer:
        session.closing = True
        return Answer()

    def show_info(self, args: list[str], session: CliSession) -> Answer:
        if args:
            return error("'show info' takes no arguments (only the plain format is supported).")
        return Answer(tuple(stats.show_info(self.view)))

    def show_stat(self, args: list[str], session: CliSession) -> Answer:
        if len(args) not in (0, 1, 3):
            return error("usage: show stat [{<iid>|<proxy>} [<type> <sid>]] (only CSV is supported)")
        proxy: int | None = None
        types = stats.STAT_FRONTEND | stats.STAT_BACKEND | stats.STAT_SERVER
        sid: int | None = None
        if args:
            ids = {**self.view.backend_ids(), **self.view.frontend_ids()}
            if args[0] in ids:
                proxy = ids[args[0]]
            elif args[0] == "-1":
                proxy = None
            elif args[0].isdigit() and int(args[0]) in ids.values():
                proxy = int(args[0])
            else:
                return error(f"No such proxy: '{args[0]}'.")
        if len(args) == 3:
            numbers = [_integer(text) for text in args[1:]]
            if numbers[0] is None or numbers[1] is None:
                return error("'show stat' expects numbers for <type> and <sid> (-1 for all).")
            if numbers[0] != -1:
                types = numbers[0]
            if numbers[1] != -1:
                sid = numbers[1]
        return Answer(tuple(stats.show_stat(self.view, proxy, types, sid)))

    def show_servers_state(self, args: list[str], session: CliSession) -> Answer:
        if len(args) > 1:
            return error("usage: show servers state [<backend>]")
        if args:
            backend = self.view.find_backend(args[0])
            if backend is None:
                return error("Can't find backend.")
            return Answer(tuple(stats.show_servers_state(self.view, [backend])))
        return Answer(tuple(stats.show_servers_state(self.view)))

    def show_backend(self, args: list[str], session: CliSession) -> Answer:
        return Answer(("# name", *self.view.backends))

    def show_table(self, args: list[str], session: CliSession) -> Answer:
        now = self.view.clock.seconds()
        if not args:
            lines = [
                stats.table_header(name, backend.stick)
                for name, backend in self.view.backends.items()
                if backend.stick is not None
            ]
            return Answer(tuple(lines))
        found = self._table(args[0])
        if isinstance(found, Answer):
            return found
        key = _key_filter(args[1:])
        if isinstance(key, Answer):
            return key
        return Answer(tuple(stats.show_table(found, now, key)))

    def clear_table(self, args: list[str], session: CliSession) -> Answer:
        if not args:
            return error("usage: clear table <table> [key <key>]")
        found = self._table(args[0])
        if isinstance(found, Answer):
            return found
        key = _key_filter(args[1:])
        if isinstance(key, Answer):
            return key
        assert found.stick is not None
        if key is None:
            found.stick.clear()
        else:
            found.stick.remove(key)
        if found.stick_share is not None:  # [global] shared_state: in Redis too, for every node
            found.stick_share.forget(key)
        return Answer()

    def set_server(self, args: list[str], session: CliSession) -> Answer:
        server = self._server(args)
        if isinstance(server, Answer):
            return server
        if len(args) < 2:
            return error("usage: set server <backend>/<server> state|weight|health <value>")
        what, values = args[1], args[2:]
        if what == "state":
            if len(values) != 1 or values[0] not in ADMIN_STATES:
                return error("'set server <srv> state' expects 'ready', 'drain' and 'maint'.")
            server.set_admin_state(values[0])
            return Answer()
        if what == "weight":
            return self._set_weight(server, values)
        if what == "health":
            if len(values) != 1 or values[0] not in ("up", "down"):
                return error("'set server <srv> health' expects 'up' or 'down'.")
            server.force_health(values[0] == "up")
            return Answer()
        return error("'set server <srv>' only supports 'state', 'weight' and 'health'.")

    def set_weight(self, args: list[str], session: CliSession) -> Answer:
        server = self._server(args)
        if isinstance(server, Answer):
            return server
        return self._set_weight(server, args[1:])

    def _set_weight(self, server: Server, values: Sequence[str]) -> Answer:
        if len(values) != 1:
            return error("Require <weight> or <weight%>.")
        weight = parse_weight(values[0], server.config.weight)
        if isinstance(weight, str):
            return error(weight)
        server.set_weight(weight)
        return Answer()

    def get_weight(self, args: list[str], session: CliSession) -> Answer:
        server = self._server(args)
        if isinstance(server, Answer):
            return server
        return Answer((f"{server.weight} (initial {server.config.weight})",))

    def enable_server(self, args: list[str], session: CliSession) -> Answer:
        server = self._server(args)
        if isinstance(server, Answer):
            return server
        server.set_admin_state(READY)
        return Answer()

    def disable_server(self, args: list[str], session: CliSession) -> Answer:
        server = self._server(args)
        if isinstance(server, Answer):
            return server
        server.set_admin_state(MAINT)
        return Answer()

    def enable_health(self, args: list[str], session: CliSession) -> Answer:
        return self._checks(args, True)

    def disable_health(self, args: list[str], session: CliSession) -> Answer:
        return self._checks(args, False)

    def _checks(self, args: list[str], enabled: bool) -> Answer:
        server = self._server(args)
        if isinstance(server, Answer):
            return server
        if server.health is None:
            return error("Health checks are not configured on this server.")
        server.set_checks_enabled(enabled)
        return Answer()

    def reload(self, args: list[str], session: CliSession) -> Answer:
        if args:
            return error("'reload' takes no arguments.")
        if self._reload is None:
            return error("This process cannot reload its configuration.")
        applied, lines = self._reload()
        if not applied:
            return Answer(("Reload refused; the running configuration is unchanged:", *lines), ERROR)
        return Answer(tuple(lines) or ("Reloaded.",), INFO)

    # -- the relay queue

    def _scheduler(self) -> Scheduler | Answer:
        scheduler = self._queue() if self._queue is not None else None
        if scheduler is None:
            return error("No queue: no relay frontend with delivery = \"spool\" is running.")
        return scheduler

    def show_queue(self, args: list[str], session: CliSession) -> Answer:
        scheduler = self._scheduler()
        if isinstance(scheduler, Answer):
            return scheduler
        return Answer(tuple(queueadmin.queue_lines(scheduler, self.view.clock.seconds())))

    def show_message(self, args: list[str], session: CliSession) -> Answer:
        scheduler = self._scheduler()
        if isinstance(scheduler, Answer):
            return scheduler
        if len(args) != 1:
            return error("Require a queue ID.")
        lines = queueadmin.message_lines(scheduler, args[0])
        return Answer(tuple(lines)) if lines is not None else error(f"No such message: {args[0]}.")

    def _queue_action(self, action: str, args: list[str]) -> Answer:
        scheduler = self._scheduler()
        if isinstance(scheduler, Answer):
            return scheduler
        ok, text = queueadmin.act(scheduler, action, args)
        return Answer((text,), INFO if ok else ERROR)

    def flush_queue(self, args: list[str], session: CliSession) -> Answer:
        return self._queue_action("flush", args)

    def hold_message(self, args: list[str], session: CliSession) -> Answer:
        return self._queue_action("hold", args)

    def release_message(self, args: list[str], session: CliSession) -> Answer:
        return self._queue_action("release", args)

    def delete_message(self, args: list[str], session: CliSession) -> Answer:
        return self._queue_action("delete", args)

    def set_severity_output(self, args: list[str], session: CliSession) -> Answer:
        if len(args) != 1 or args[0] not in ("none", "number", "string"):
            return error("one of 'none', 'number', 'string' is expected")
        session.severity_output = args[0]
        return Answer()


def _integer(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _key_filter(args: Sequence[str]) -> bytes | Answer | None:
    """None (no filter), the key of ``key <key>``, or an error."""
    if not args:
        return None
    if len(args) == 2 and args[0] == "key":
        return args[1].encode()
    return error("Only a 'key <key>' filter is supported.")


def parse_weight(text: str, initial: int) -> int | str:
    """A weight from ``N`` (0-256) or ``N%`` (of the initial weight), or an error message."""
    relative = text.endswith("%")
    digits = text[:-1] if relative else text
    if not digits.isdigit():
        return "Require <weight> or <weight%>."
    value = int(digits)
    if relative:
        weight = initial * value // 100
        if weight > 256:
            return "Relative weight too large."
        return weight
    if value > 256:
        return "Absolute weight can only be between 0 and 256 inclusive."
    return value


COMMANDS: tuple[_Command, ...] = (
    _Command(("help",), "help [<command>]", "list matching or all commands", RuntimeCommands.help),
    _Command(("prompt",), "prompt", "toggle interactive mode with prompt", RuntimeCommands.prompt),
    _Command(("quit",), "quit", "disconnect", RuntimeCommands.quit),
    _Command(
        ("show", "info"), "show info", "report information about the running process",
        RuntimeCommands.show_info,
    ),
    _Command(
        ("show", "stat"), "show stat [{<iid>|<proxy>} [<type> <sid>]]",
        "report counters for each frontend, backend and server (CSV)", RuntimeCommands.show_stat,
    ),
    _Command(
        ("show", "servers", "state"), "show servers state [<backend>]",
        "dump volatile server information (all or for a single backend)",
        RuntimeCommands.show_servers_state,
    ),
    _Command(
        ("show", "backend"), "show backend", "list backends in the current running config",
        RuntimeCommands.show_backend,
    ),
    _Command(
        ("show", "table"), "show table [<table> [key <key>]]",
        "report table usage stats or dump this table's contents", RuntimeCommands.show_table,
    ),
    _Command(
        ("clear", "table"), "clear table <table> [key <key>]",
        "remove an entry, or all entries, from a stick table", RuntimeCommands.clear_table, True,
    ),
    _Command(
        ("set", "server"), "set server <bk>/<srv> state ready|drain|maint",
        "change a server's administrative state", RuntimeCommands.set_server, True,
    ),
    _Command(
        ("set", "server"), "set server <bk>/<srv> weight <w>[%]",
        "change a server's weight (0-256, or % of the initial)", RuntimeCommands.set_server, True,
    ),
    _Command(
        ("set", "server"), "set server <bk>/<srv> health up|down",
        "force a server's health", RuntimeCommands.set_server, True,
    ),
    _Command(
        ("set", "weight"), "set weight <bk>/<srv> <w>[%]",
        "change a server's weight (same as 'set server ... weight')", RuntimeCommands.set_weight, True,
    ),
    _Command(
        ("get", "weight"), "get weight <bk>/<srv>", "report a server's current and initial weight",
        RuntimeCommands.get_weight,
    ),
    _Command(
        ("enable", "server"), "enable server <bk>/<srv>",
        "make a server ready (leave maint or drain)", RuntimeCommands.enable_server, True,
    ),
    _Command(
        ("disable", "server"), "disable server <bk>/<srv>", "put a server in maintenance",
        RuntimeCommands.disable_server, True,
    ),
    _Command(
        ("enable", "health"), "enable health <bk>/<srv>", "resume a server's active checks",
        RuntimeCommands.enable_health, True,
    ),
    _Command(
        ("disable", "health"), "disable health <bk>/<srv>", "pause a server's active checks",
        RuntimeCommands.disable_health, True,
    ),
    _Command(
        ("reload",), "reload", "re-read the configuration file and apply it (as SIGHUP does)",
        RuntimeCommands.reload, True,
    ),
    _Command(
        ("show", "queue"), "show queue", "list the relay queue (one message per line)",
        RuntimeCommands.show_queue,
    ),
    _Command(
        ("show", "message"), "show message <queue_id>", "report a queued message's envelope and recipients",
        RuntimeCommands.show_message,
    ),
    _Command(
        ("flush", "queue"), "flush queue [<queue_id>...]", "deliver deferred messages (all, or these) now",
        RuntimeCommands.flush_queue, True,
    ),
    _Command(
        ("hold", "message"), "hold message <queue_id>...", "keep messages from delivery until released",
        RuntimeCommands.hold_message, True,
    ),
    _Command(
        ("release", "message"), "release message <queue_id>...", "deliver held messages again, now",
        RuntimeCommands.release_message, True,
    ),
    _Command(
        ("delete", "message"), "delete message <queue_id>...", "remove messages without delivery or bounce",
        RuntimeCommands.delete_message, True,
    ),
    _Command(
        ("set", "severity-output"), "set severity-output [none|number|string]",
        "set presence of severity level in feedback information",
        RuntimeCommands.set_severity_output,
    ),
)  # fmt: skip

_BY_WORDS: dict[tuple[str, ...], _Command] = {}
for _command in COMMANDS:
    _BY_WORDS.setdefault(_command.words, _command)
