"""The ``relaybal`` console script."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from relaybal import __version__
from relaybal.config import ConfigError, ConfigFileError, load_config


def check_config(path: str) -> int:
    """Validate a file: 0 valid, 1 invalid (every problem printed), 2 unreadable or not TOML."""
    try:
        config = load_config(path)
    except ConfigFileError as e:
        print(e, file=sys.stderr)
        return 2
    except ConfigError as e:
        for line in e.lines():
            print(line, file=sys.stderr)
        return 1
    print(
        f"{path}: valid ({len(config.frontends)} frontends, {len(config.backends)} backends, "
        f"{len(config.policies)} policies)"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relaybal", description="SMTP relay balancer")
    parser.add_argument("--version", action="version", version=f"relaybal {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("check-config", help="validate a configuration file")
    p.add_argument("file")
    p = sub.add_parser("demo", help="run relaybal in front of two local sinks and send mail")
    p.add_argument("--once", action="store_true", help="exit after the table")
    p.add_argument("--messages", type=int, default=200, help="messages to send (default 200)")
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return check_config(args.file)
    if args.command == "demo":
        from relaybal.demo import run_demo

        return run_demo(once=args.once, messages=args.messages)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
