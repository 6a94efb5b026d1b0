"""Importers: other programs' configurations turned into relaybal's.

``relaybal import-haproxy`` (:func:`import_haproxy`) is the command-line side
of :mod:`relaybal.importer.haproxy`: it reads the file, translates it, checks
that the result loads as a relaybal configuration, and writes it.
"""

from __future__ import annotations

import tomllib
from typing import TextIO

from relaybal.config import ConfigError, parse_config
from relaybal.importer.haproxy import ImportProblem, Translation, translate

__all__ = ["EXIT_COMPLETE", "EXIT_PARTIAL", "EXIT_UNREADABLE", "ImportProblem", "Translation",
           "import_haproxy", "output_problems", "translate"]  # fmt: skip

#: Every line was translated and the output loads.
EXIT_COMPLETE = 0
#: The file could not be read (or the output could not be written).
EXIT_UNREADABLE = 2
#: Something was not translated, or the output does not load as it is.
EXIT_PARTIAL = 3


def output_problems(toml_text: str, name: str) -> list[str]:
    """What ``relaybal check-config`` would say about ``toml_text`` (empty when it loads)."""
    try:
        parse_config(tomllib.loads(toml_text), name)
    except ConfigError as e:
        return e.lines()
    return []


def import_haproxy(path: str, output: str | None, *, stdout: TextIO, stderr: TextIO) -> int:
    """``relaybal import-haproxy PATH [-o OUTPUT]``.

    Writes the relaybal TOML to ``output`` (or ``stdout``) and every problem to
    ``stderr`` as ``PATH:LINE: not translated: LINE (REASON)`` (or ``note:``).
    Returns :data:`EXIT_COMPLETE` when the translation is complete and loads,
    :data:`EXIT_PARTIAL` when it is partial or does not load yet, and
    :data:`EXIT_UNREADABLE` when ``path`` cannot be read.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        print(f"{path}: cannot read: {e.strerror}", file=stderr)
        return EXIT_UNREADABLE
    # HAProxy reads bytes; a stray non-UTF-8 byte (in a comment, typically) must not stop us.
    result = translate(raw.decode("utf-8", errors="replace"), source=path)
    for problem in result.problems:
        print(problem.format(path), file=stderr)
    load_problems = output_problems(result.toml, output or "<stdout>")
    for line in load_problems:
        print(line, file=stderr)
    if load_problems:
        print(f"{path}: the translation does not load as it is: complete it by hand", file=stderr)
    if output is None:
        stdout.write(result.toml)
    else:
        try:
            with open(output, "w", encoding="utf-8") as f:
                f.write(result.toml)
        except OSError as e:
            print(f"{output}: cannot write: {e.strerror}", file=stderr)
            return EXIT_UNREADABLE
    return EXIT_COMPLETE if result.complete and not load_problems else EXIT_PARTIAL
