"""One line per measured target, collected by ``bench/run_all.py`` into ``make bench``'s final table."""

from __future__ import annotations

PREFIX = "SUMMARY\t"


def summary(what: str, relaybal: str, peer: str, result: str, target: str) -> None:
    """Print a summary line: what was measured, relaybal's and the peer's figures, the result, the target."""
    print(PREFIX + "\t".join((what, relaybal, peer, result, target)), flush=True)
