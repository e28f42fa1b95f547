"""Instruments over several seeds, `--workers 1` vs the automatic choice, each a fresh command-line
process (as a user runs them), timed in the same run:

- `ticketlab lca --seeds 0,1,2,3 --steps 1000it` (MNIST-1D MLP; 1000 instead of the default 1500
  iterations so that the one-process run stays under 2 minutes here);
- `ticketlab supermask --seeds 0,1,2,3` (MNIST-1D MLP, bernoulli, defaults).

Each seed is one unit; the automatic choice runs them on worker processes (no stacking: LCA watches one
model at a time, a supermask trains scores). Both runs must give identical results (every column of
results.json but the `seconds` timings); the script checks that. Goal: >= 1.7x on 2 cores.

A process's fixed costs (~3-4 s here: importing torch, ticketlab and matplotlib, sympy at the first model,
torch._dynamo at the first optimizer, the report's plots) are paid in both runs and weigh on the short
supermask run (~13 s), so the supermask comparison is also made in one process after a warm-up
(`engine only`: the units' own speed-up, as `bench/many.py` measures).

    .venv/bin/python bench/instruments.py [lca|supermask]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, cli_env, timed_cli

sys.path.insert(0, str(ROOT / "src"))

CASES = {
    "lca": ["lca", "--seeds", "0,1,2,3", "--steps", "1000it"],
    "supermask": ["supermask", "--seeds", "0,1,2,3"],
}


def run_cli(args: list[str], out: Path) -> tuple[float, list[dict], str, float]:
    """(wall seconds, results.json rows without timings, the 'parallel:' line, other load in cores)."""
    return timed_cli(args, out, "*/results.json")


def compare(name: str) -> dict:
    args = CASES[name]
    with tempfile.TemporaryDirectory() as tmp:
        seq, rows_seq, _, load_seq = run_cli([*args, "--workers", "1"], Path(tmp) / "seq")
        auto, rows_auto, plan, load_auto = run_cli(args, Path(tmp) / "auto")
    same = rows_seq == rows_auto and len(rows_seq) > 0
    print(f"{name} (ticketlab {' '.join(args)}): --workers 1 {seq:.1f} s, automatic {auto:.1f} s -> {seq / auto:.2f}x "
          f"(goal >= 1.7x); identical results: {same}; other load {load_seq:.2f} / {load_auto:.2f} cores\n  {plan}")
    return {"benchmark": "instruments", "name": name, "command": "ticketlab " + " ".join(args),
            "workers_1_s": round(seq, 1), "automatic_s": round(auto, 1), "speedup": round(seq / auto, 2),
            "identical": same, "plan": plan, "other_load_cores": [round(load_seq, 2), round(load_auto, 2)]}


def in_process(name: str) -> dict:
    """The same comparison in this process after a warm-up run (both runs without the fixed costs)."""
    import ticketlab

    run = getattr(ticketlab, name)
    settings = dict(seeds=(0, 1, 2, 3))
    with tempfile.TemporaryDirectory() as tmp:
        run(out=f"{tmp}/warm", seeds=(0,), steps="20it", eval_every="10it", workers=1)
        times, rows = {}, {}
        for label, extra in (("seq", {"workers": 1}), ("auto", {})):
            start = time.perf_counter()
            res = run(out=f"{tmp}/{label}", **settings, **extra)
            times[label] = time.perf_counter() - start
            rows[label] = [{k: v for k, v in r.items() if k != "seconds"} for r in res]
    same = rows["seq"] == rows["auto"]
    print(f"  {name}, engine only (one process, after a warm-up): --workers 1 {times['seq']:.1f} s, automatic "
          f"{times['auto']:.1f} s -> {times['seq'] / times['auto']:.2f}x; identical: {same}")
    return {"engine_workers_1_s": round(times["seq"], 1), "engine_automatic_s": round(times["auto"], 1),
            "engine_speedup": round(times["seq"] / times["auto"], 2), "engine_identical": same}


def main(names: list[str] | None = None) -> list[dict]:
    # fill the file cache with torch and ticketlab first, so that the first timed process is not the only cold one
    subprocess.run([sys.executable, "-c", "import torch, ticketlab.experiments.lca, ticketlab.experiments.supermask"],
                   env=cli_env(), check=True)
    out = []
    for name in names or list(CASES):
        result = compare(name)
        if name == "supermask":
            result.update(in_process(name))
        out.append(result)
    return out


if __name__ == "__main__":
    main(sys.argv[1:] or None)   # the engine-only run forks workers from this process: keep the __main__ guard
