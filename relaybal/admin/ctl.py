"""``relaybal ctl``: send one command line to the runtime-API socket and print the answer.

Plain blocking sockets, no reactor: it is a short-lived command-line client.

By default the answer is made readable: ``show servers state`` and ``show
table`` become aligned tables, ``show stat``'s CSV becomes a table of the
columns that have a value, and error messages go to stderr with exit status
1. To tell an error from a result, the command is sent after ``set
severity-output number``, so that messages carry their severity. ``--raw``
sends the line as given and prints exactly what the socket answered, as
``socat`` would.
"""

from __future__ import annotations

import csv
import re
import socket
from collections.abc import Sequence
from typing import TextIO

#: Messages with a severity at or below this (syslog numbering: 3 = err) are errors.
ERROR_SEVERITY = 3

_SEVERITY_PREFIX = re.compile(r"^\[(\d)\]: ")
_TABLE_ENTRY = re.compile(r"^(0x[0-9a-fA-F]+): (.*)$")


class CtlError(Exception):
    """The socket could not be reached or answered badly."""


def query(path: str, line: str, timeout: float = 10.0) -> str:
    """Send ``line`` to the UNIX socket ``path``; return all it answered until it closed."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(line.encode("utf-8") + b"\n")
            chunks: list[bytes] = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    except TimeoutError:
        raise CtlError(f"{path}: no complete answer within {timeout:g}s") from None
    except OSError as e:
        raise CtlError(f"{path}: {e.strerror or e}") from None
    return b"".join(chunks).decode("utf-8", "replace")


def split_blocks(answer: str) -> list[list[str]]:
    """The answer of each command: lines up to each empty end-of-output line.

    A last block cut short (no empty line, e.g. the connection closed) is kept.
    """
    blocks: list[list[str]] = []
    current: list[str] = []
    lines = answer.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the text ends with a newline
    for line in lines:
        if line == "":
            blocks.append(current)
            current = []
        else:
            current.append(line)
    if current:
        blocks.append(current)
    return blocks


def align(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows of cells as left-aligned columns separated by two spaces."""
    if not rows:
        return []
    widths = [max(len(row[i]) if i < len(row) else 0 for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]


def readable(block: Sequence[str]) -> list[str]:
    """One command's answer, made readable (tables aligned, empty CSV columns left out)."""
    if not block:
        return []
    first = block[0]
    if first.startswith("# pxname,"):
        return _csv_table(block)
    if first == "1" and len(block) > 1 and block[1].startswith("# be_id "):
        header = block[1][2:].split()
        return align([header, *(line.split() for line in block[2:])])
    if first.startswith("# queue_id "):
        return align([first[2:].split(), *(line.split() for line in block[1:])])
    if first.startswith("# table:") and len(block) > 1:
        return [first, *_entries_table(block[1:])]
    return list(block)


def _csv_table(block: Sequence[str]) -> list[str]:
    # Every line ends with a comma: drop the empty last cell it makes.
    parsed = [
        cells[:-1] if cells and cells[-1] == "" else cells for cells in csv.reader([block[0][2:], *block[1:]])
    ]
    header, rows = parsed[0], parsed[1:]
    rows = [row + [""] * (len(header) - len(row)) for row in rows]
    keep = [i for i in range(len(header)) if i < 2 or any(row[i] for row in rows)]
    return align([[header[i] for i in keep], *([row[i] for i in keep] for row in rows)])


def _entries_table(lines: Sequence[str]) -> list[str]:
    names: list[str] = ["id"]
    parsed: list[dict[str, str]] = []
    for line in lines:
        match = _TABLE_ENTRY.match(line)
        if match is None:
            return list(lines)
        entry = {"id": match.group(1)}
        for pair in match.group(2).split():
            name, _, value = pair.partition("=")
            entry[name] = value
            if name not in names:
                names.append(name)
        parsed.append(entry)
    return align([names, *([entry.get(name, "") for name in names] for entry in parsed)])


def run_ctl(path: str, words: Sequence[str], *, raw: bool, timeout: float, out: TextIO, err: TextIO) -> int:
    """Send ``words`` (joined by spaces) and print the answer; return the exit status.

    0: answered; 1: the answer is an error message; 2: the socket could not be used.
    """
    command = " ".join(words)
    try:
        answer = query(path, command if raw else "set severity-output number;" + command, timeout)
    except CtlError as e:
        print(f"relaybal ctl: {e}", file=err)
        return 2
    if raw:
        out.write(answer)
        return 0
    status = 0
    for block in split_blocks(answer)[1:]:
        lines = block
        match = _SEVERITY_PREFIX.match(block[0]) if block else None
        if match is not None:
            lines = [block[0][match.end() :], *block[1:]]
            if int(match.group(1)) <= ERROR_SEVERITY:
                status = 1
                for line in lines:
                    print(line, file=err)
                continue
        for line in readable(lines):
            print(line, file=out)
    return status
