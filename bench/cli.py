"""Start-up of the command line: wall time of `ticketlab --help`, `ticketlab lottery --help` and a bad
input (`ticketlab lottery --levels -1`: a one-line error, exit status 2), each a fresh process, median
of 9 after one warm-up. Goal: `ticketlab --help` < 0.5 s.

The command is the installed `ticketlab` script next to this Python (what a user types), else
`python -m ticketlab`.

    .venv/bin/python bench/cli.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from common import cli_env, median

REPEATS = 9


def command() -> list[str]:
    script = Path(sys.executable).with_name("ticketlab")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ticketlab"]


def timed(args: list[str], expect: int) -> tuple[float, float, float, str]:
    """(median, min, max) wall seconds of `ticketlab ARGS`, and the first line of its stderr."""
    cmd = command() + args
    times, err = [], ""
    for i in range(REPEATS + 1):
        start = time.perf_counter()
        done = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if done.returncode != expect:
            raise SystemExit(f"{' '.join(cmd)}: exit status {done.returncode}, expected {expect}\n{done.stderr}")
        err = (done.stderr.strip().splitlines() or [""])[-1]
        if i:   # the first run warms the file cache
            times.append(elapsed)
    return median(times), min(times), max(times), err


def main() -> dict:
    out = {"benchmark": "cli", "command": " ".join(Path(c).name for c in command()), "repeats": REPEATS, "cases": []}
    for label, args, expect, goal in (("ticketlab --help", ["--help"], 0, 0.5),
                                      ("ticketlab lottery --help", ["lottery", "--help"], 0, None),
                                      ("ticketlab lottery --levels -1 (bad input)", ["lottery", "--levels", "-1"], 2, None)):
        med, lo, hi, err = timed(args, expect)
        out["cases"].append({"case": label, "median_s": round(med, 3), "min_s": round(lo, 3), "max_s": round(hi, 3),
                             **({"message": err} if expect else {})})
        print(f"{label}: median {med:.3f} s (min {lo:.3f}, max {hi:.3f}, {REPEATS} runs)"
              + (f" (goal < {goal} s: {'met' if med < goal else 'NOT met'})" if goal else "")
              + (f"\n  -> {err}" if expect else ""))
    return out


if __name__ == "__main__":
    os.environ.setdefault("COLUMNS", "100")
    main()
