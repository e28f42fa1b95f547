"""Where the time of a parallel run goes: the automatic path of `bench/many.py`'s MNIST-1D experiment (8
seeds, 3 levels) with a timestamp at the start and end of every batch in the worker processes (wall and CPU
time of the worker), so that start-up, idle workers at the ends of the task graph and slow batches show.
Not a benchmark with a goal: a diagnostic (it is how the 2026-11-26 start-up and stacking fixes were found).

    .venv/bin/python bench/timeline.py [--seeds 8] [--levels 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import ticketlab  # noqa: E402
from ticketlab.run import executors  # noqa: E402


def timed_batch(ref, exp_path, keys, stack, max_batch):
    """What a worker runs for a batch, with its start and end times (runs in the worker process)."""
    start, cpu = time.time(), time.process_time()
    out = executors._run_in_worker(ref, exp_path, keys, stack, max_batch)
    return {"__timeline__": (os.getpid(), start, time.time(), time.process_time() - cpu, [str(k) for k in keys])}, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--levels", type=int, default=3)
    args = ap.parse_args()
    rows = []
    original_submit, original_collect = executors.LocalProcesses.submit, executors.LocalProcesses.collect

    def submit(self, batch, exp_path, keys, stack, max_batch):
        self.futures[self.pool.submit(timed_batch, self.refs[exp_path], exp_path, keys, stack, max_batch)] = batch

    def collect(self, timeout):
        out = []
        for batch, (stamp, result) in original_collect(self, timeout):
            rows.append(stamp["__timeline__"])
            out.append((batch, result))
        return out

    executors.LocalProcesses.submit, executors.LocalProcesses.collect = submit, collect
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.time()
            ticketlab.lottery(out=tmp, seeds=tuple(range(args.seeds)), levels=args.levels, progress=False)
            total = time.time() - t0
    finally:
        executors.LocalProcesses.submit, executors.LocalProcesses.collect = original_submit, original_collect
    if not rows:
        print(f"{total:.1f} s; the run used no worker processes (the plan chose one process)")
        return
    print(f"total {total:.1f} s; per batch (seconds from the start of the run):")
    for pid, start, end, cpu, keys in sorted(rows, key=lambda r: r[1]):
        print(f"  worker {pid}: {start - t0:6.2f} -> {end - t0:6.2f} ({end - start:5.2f} s wall, {cpu:5.2f} s CPU) "
              f"{len(keys):2d} unit(s) from {keys[0]}")
    first = min(r[1] for r in rows) - t0
    last = max(r[2] for r in rows) - t0
    for pid in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == pid]
        busy = sum(r[2] - r[1] for r in mine)
        print(f"  worker {pid}: busy {busy:.1f} s of {last - first:.1f} s, done {last - (max(r[2] for r in mine) - t0):.1f} s "
              f"before the last worker")
    print(f"  first batch started {first:.2f} s after the run began; the run ended {total - last:.2f} s after the last batch")


if __name__ == "__main__":
    main()
