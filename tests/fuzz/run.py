"""``make fuzz``: every fuzz target for a chosen time, with hypothesis and (if installed) atheris.

Usage: ``python tests/fuzz/run.py [--seconds N] [--engine hypothesis|atheris|both] [TARGET...]``
(``FUZZ_SECONDS`` and ``FUZZ_TARGETS`` give the defaults). Each target runs
``N`` seconds per engine; the number of inputs each one ran is printed (and,
with ``RELAYBAL_FIGURES=FILE``, appended there as JSON lines).

- hypothesis: batches of random examples (random bytes, seeds, mutated
  seeds: ``tests/fuzz/strategies.py``) until the time is up; a failure is
  shrunk, printed and saved under ``build/fuzz/crashes/``.
- atheris (libFuzzer, coverage-guided): one process per target, started with
  the seed corpus (``tests/fuzz/corpus/<target>/``, only read) and a work
  corpus in ``build/fuzz/corpus/<target>/`` that keeps what it found for the
  next run; crashes go to ``build/fuzz/crashes/``.

Exit status 1 if any target failed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from soak.common import record  # noqa: E402

from fuzz.strategies import CORPUS, inputs  # noqa: E402
from fuzz.targets import TARGETS  # noqa: E402

WORK = ROOT / "build" / "fuzz"
ATHERIS_MAIN = Path(__file__).resolve().parent / "atheris_main.py"


def run_hypothesis(name: str, seconds: float) -> tuple[int, str | None]:
    """Run *name* for *seconds*; (inputs run, failure text or None)."""
    target = TARGETS[name]
    count = 0
    deadline = time.monotonic() + seconds

    @settings(max_examples=500, deadline=None, database=None, phases=[Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(data=inputs(name))
    def batch(data: bytes) -> None:
        nonlocal count
        count += 1
        target(data)

    while time.monotonic() < deadline:
        try:
            batch()
        except Exception as e:  # a finding: hypothesis has shrunk it already
            blob = getattr(e, "__notes__", [])
            crashes = WORK / "crashes"
            crashes.mkdir(parents=True, exist_ok=True)
            text = f"{type(e).__name__}: {e}\n" + "\n".join(blob)
            digest = hashlib.sha1(text.encode()).hexdigest()[:12]
            (crashes / f"hypothesis-{name}-{digest}.txt").write_text(text)
            return count, text
    return count, None


def atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def run_atheris(name: str, seconds: float) -> tuple[int, str | None]:
    work = WORK / "corpus" / name
    crashes = WORK / "crashes"
    work.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    command = [
        sys.executable, str(ATHERIS_MAIN), name, f"-max_total_time={int(seconds)}", "-timeout=20",
        "-rss_limit_mb=4096", "-max_len=8192", f"-artifact_prefix={crashes}/atheris-{name}-",
        "-print_final_stats=1", str(work), str(CORPUS / name),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, check=False,
                          timeout=seconds + 300)  # fmt: skip
    log = done.stdout + done.stderr
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log) or re.findall(r"Done (\d+) runs", log)
    count = int(runs[-1]) if runs else 0
    if done.returncode != 0:
        return count, log[-4000:]
    return count, None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS", "60")))
    parser.add_argument("--engine", choices=["hypothesis", "atheris", "both"], default="both")
    parser.add_argument("targets", nargs="*", default=os.environ.get("FUZZ_TARGETS", "").split() or None)
    args = parser.parse_args()
    names = args.targets or sorted(TARGETS)
    unknown = set(names) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {sorted(unknown)} (known: {sorted(TARGETS)})")
    engines = ["hypothesis", "atheris"] if args.engine == "both" else [args.engine]
    if "atheris" in engines and not atheris_available():
        print("atheris is not installed (pip install atheris): hypothesis only", file=sys.stderr)
        engines.remove("atheris")
    failed = False
    rows = []
    for name in names:
        for engine in engines:
            started = time.monotonic()
            runner = run_hypothesis if engine == "hypothesis" else run_atheris
            count, failure = runner(name, args.seconds)
            elapsed = time.monotonic() - started
            rows.append((name, engine, count, elapsed, failure is None))
            verdict = "ok" if failure is None else "FAILED"
            print(f"{name:14} {engine:10} {count:>10} inputs in {elapsed:6.1f}s  {verdict}", flush=True)
            record(f"fuzz-{name}-{engine}", inputs=count, seconds=round(elapsed, 1), ok=failure is None)
            if failure is not None:
                failed = True
                print(failure, file=sys.stderr)
    print(f"total: {sum(r[2] for r in rows)} inputs, {sum(1 for r in rows if not r[4])} targets failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
