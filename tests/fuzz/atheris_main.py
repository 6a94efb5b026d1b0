"""atheris (libFuzzer) entry point: ``python atheris_main.py TARGET [libFuzzer options] [CORPUS_DIR...]``.

Run by ``tests/fuzz/run.py``; relaybal's modules are instrumented for
coverage. Any exception a target raises is a crash (libFuzzer saves the input).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["relaybal"]):
    from fuzz.targets import TARGETS


def main() -> None:
    name = sys.argv.pop(1)
    target = TARGETS[name]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
