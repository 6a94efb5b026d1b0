"""The ``relaybal`` console script."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from relaybal import __version__
from relaybal.config import load_or_report


def check_config(path: str) -> int:
    """Validate a file: 0 valid, 1 invalid (every problem printed), 2 unreadable or not TOML.

    A policy plugin module that fails to import is a one-line warning on
    stderr; it makes the file invalid only if a policy names a plugin that is
    then not found.
    """
    from twisted.logger import ILogObserver, globalLogPublisher
    from zope.interface import provider

    from relaybal.policy.discovery import IMPORT_ERROR_KEY, PluginImportError

    @provider(ILogObserver)
    def warn(event: Mapping[str, Any]) -> None:
        error = event.get(IMPORT_ERROR_KEY)
        if isinstance(error, PluginImportError):
            print(f"warning: {error.warning()}", file=sys.stderr)

    globalLogPublisher.addObserver(warn)
    try:
        config = load_or_report(path)
    finally:
        globalLogPublisher.removeObserver(warn)
    if isinstance(config, int):
        return config
    print(
        f"{path}: valid ({len(config.frontends)} frontends, {len(config.backends)} backends, "
        f"{len(config.policies)} policies)"
    )
    return 0


def ctl(config_path: str, socket_path: str | None, words: Sequence[str], raw: bool, timeout: float) -> int:
    """``relaybal ctl``: the socket from ``--socket`` or the config's ``[admin] socket``."""
    from relaybal.admin.ctl import run_ctl

    if socket_path is None:
        config = load_or_report(config_path)
        if isinstance(config, int):
            return 2
        socket_path = config.admin.socket
        if socket_path is None:
            print(
                f"{config_path}: admin.socket is not set (set it, or give --socket PATH)",
                file=sys.stderr,
            )
            return 2
    return run_ctl(socket_path, words, raw=raw, timeout=timeout, out=sys.stdout, err=sys.stderr)


#: ``relaybal queue ACTION`` → the runtime API command it sends.
QUEUE_ACTIONS = {
    "list": ("show", "queue"),
    "show": ("show", "message"),
    "flush": ("flush", "queue"),
    "hold": ("hold", "message"),
    "release": ("release", "message"),
    "delete": ("delete", "message"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relaybal", description="SMTP relay balancer")
    parser.add_argument("--version", action="version", version=f"relaybal {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("check-config", help="validate a configuration file")
    p.add_argument("file")
    p = sub.add_parser("demo", help="run relaybal in front of two local sinks and send mail")
    p.add_argument("--once", action="store_true", help="exit after the table")
    p.add_argument("--messages", type=int, default=200, help="messages to send (default 200)")
    p = sub.add_parser(
        "ctl",
        help="send a command to the runtime API socket and print the answer",
        description="Send COMMAND (e.g. 'show servers state', 'set server mx/mail1 state drain') "
        "to the runtime API socket and print the answer; 'help' lists the commands.",
    )
    p.add_argument(
        "-c", "--config", default="/etc/relaybal/relaybal.toml",
        help="read the socket path from this file's [admin] socket (default %(default)s)",
    )  # fmt: skip
    p.add_argument("--socket", help="path of the socket (instead of reading the config)")
    p.add_argument("--raw", action="store_true", help="print the exact answer, as socat would")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
    p.add_argument("words", nargs="+", metavar="COMMAND")
    p = sub.add_parser(
        "queue",
        help="list and manage the relay queue through the runtime API socket",
        description="list: every queued message; show ID: one message's envelope and recipients; "
        "flush [ID...]: deliver deferred messages now; hold ID...: keep them from delivery; "
        "release ID...: deliver held ones again; delete ID...: remove without delivery or bounce. "
        "Offline, with the daemon stopped (docs/scaling.rst): export [ID...] -o FILE [--remove]: "
        "write the queued messages (pending recipients only) to a portable archive, and with --remove "
        "drop them from this spool; import FILE...: load archives into this node's spool.",
    )
    p.add_argument(
        "-c", "--config", default="/etc/relaybal/relaybal.toml",
        help="read the socket path from this file's [admin] socket, export/import: its state_dir "
        "(default %(default)s)",
    )  # fmt: skip
    p.add_argument("--socket", help="path of the socket (instead of reading the config)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
    p.add_argument("--spool", help="export/import: the spool directory (default: state_dir/spool of -c)")
    p.add_argument("-o", "--output", help="export: the archive to write (.tar, .tar.gz; - for stdout)")
    p.add_argument("--remove", action="store_true", help="export: then drop the exported messages")
    p.add_argument("--frontend", help="import: deliver through this relay frontend's backend")
    p.add_argument("action", choices=sorted([*QUEUE_ACTIONS, "export", "import"]))
    p.add_argument("ids", nargs="*", metavar="ID", help="queue IDs (import: archive files)")
    p = sub.add_parser(
        "import-haproxy",
        help="translate an HAProxy configuration into a relaybal one",
        description="Translate HAProxy's configuration (global, defaults, frontend, backend, listen) "
        "into relaybal TOML. What cannot be translated is listed on stderr and kept as comments. "
        "Exit status: 0 complete, 3 partial (or the output does not load yet), 2 unreadable file.",
    )
    p.add_argument("file", help="the haproxy.cfg to read")
    p.add_argument("-o", "--output", metavar="FILE", help="write the TOML here (default: stdout)")
    args, extra = parser.parse_known_args(argv)
    if extra:
        # "queue ACTION -c FILE ID..." : argparse stops filling ID after an option; take the rest.
        if args.command != "queue" or any(word.startswith("-") for word in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.ids = [*args.ids, *extra]
    if args.command == "import-haproxy":
        from relaybal.importer import import_haproxy

        return import_haproxy(args.file, args.output, stdout=sys.stdout, stderr=sys.stderr)
    if args.command == "ctl":
        return ctl(args.config, args.socket, args.words, args.raw, args.timeout)
    if args.command == "queue" and args.action in ("export", "import"):
        from relaybal.spool import export

        if args.action == "export":
            return export.export_command(args.config, args.spool, args.output, args.ids, args.remove)
        return export.import_command(args.config, args.spool, args.ids, args.frontend)
    if args.command == "queue":
        if args.action in ("show", "hold", "release", "delete") and not args.ids:
            parser.error(f"queue {args.action} needs at least one queue ID")
        if args.action == "list" and args.ids:
            parser.error("queue list takes no queue ID")
        return ctl(args.config, args.socket, [*QUEUE_ACTIONS[args.action], *args.ids], False, args.timeout)
    if args.command == "check-config":
        return check_config(args.file)
    if args.command == "demo":
        from relaybal.demo import run_demo

        return run_demo(once=args.once, messages=args.messages)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
