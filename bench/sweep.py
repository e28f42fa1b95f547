"""A 24-point sweep of the lottery experiment on MNIST-1D, `ticketlab sweep FILE.toml`, three ways, each a
fresh command-line process, timed in the same run:

- sequential: `--workers 1 --max-batch 1` (this process, one unit after another);
- local: the automatic choice (worker processes on this machine, stacking where it pays);
- ray: `--executor ray` (a local Ray instance of 2 CPUs, started by the run itself).

The grid: random_labels 0, 0.1, 0.2 x prune_fraction 0.2, 0.5 x lr 1e-3, 2e-3, 5e-3, 1e-2 = 24 points,
each 1 seed x 3 levels x (ticket + 2 controls) = 10 units of 200 iterations (240 trainings). All three
must give identical results (the sweep's results.json, `seconds` timings aside); the script checks that.
Goals: local >= 1.8x sequential; ray no more than 15% slower than local. Ray's own start-up (import ray,
start the instance, first tasks in fresh workers that import torch and ticketlab, shutdown) is timed
separately, in another process.

    .venv/bin/python bench/sweep.py [--no-ray]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from common import OtherLoad, cli_env

SWEEP = textwrap.dedent("""\
    experiment = "lottery"

    [base]
    levels = 3
    steps = "200it"
    eval_every = "50it"

    [grid]
    random_labels = [0.0, 0.1, 0.2]
    prune_fraction = [0.2, 0.5]
    lr = [1e-3, 2e-3, 5e-3, 1e-2]
    """)

RAY_START = textwrap.dedent("""\
    import json, time
    t0 = time.perf_counter()
    import ray
    t1 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    t2 = time.perf_counter()

    @ray.remote(num_cpus=1)
    def warm():
        import torch, ticketlab.run.execute, ticketlab.experiments.lottery  # what a unit's task imports first
        return 0

    ray.get([warm.remote(), warm.remote()])
    t3 = time.perf_counter()
    ray.shutdown()
    t4 = time.perf_counter()
    print(json.dumps({"import_s": t1 - t0, "init_s": t2 - t1, "first_tasks_s": t3 - t2, "shutdown_s": t4 - t3}))
    """)


def run_sweep(file: Path, out: Path, extra: list[str]) -> tuple[float, list[dict], str, float]:
    """(wall seconds, the sweep's rows without timings, the 'parallel:' line, other load in cores)."""
    cmd = [sys.executable, "-m", "ticketlab", "sweep", str(file), "--out", str(out), "--no-progress", *extra]
    with OtherLoad() as load:
        start = time.perf_counter()
        done = subprocess.run(cmd, env=cli_env(), check=True, capture_output=True, text=True)
        wall = time.perf_counter() - start
    rows = json.loads(next(out.glob("sweep-*/results.json")).read_text())
    rows = [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    plan = next((line.strip() for line in done.stdout.splitlines() if line.strip().startswith("parallel:")), "?")
    return wall, rows, plan, load.cores


def ray_start_up() -> dict:
    done = subprocess.run([sys.executable, "-c", RAY_START], env=cli_env(), check=True, capture_output=True, text=True)
    return {k: round(v, 2) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def main(with_ray: bool = True) -> dict:
    subprocess.run([sys.executable, "-c", "import torch, ticketlab.experiments.lottery"], env=cli_env(), check=True)
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "sweep.toml"
        file.write_text(SWEEP)
        seq, rows_seq, _, load_seq = run_sweep(file, Path(tmp) / "seq", ["--workers", "1", "--max-batch", "1"])
        local, rows_local, plan, load_local = run_sweep(file, Path(tmp) / "local", [])
        result = {"benchmark": "sweep", "points": 24, "rows": len(rows_seq), "sequential_s": round(seq, 1),
                  "local_s": round(local, 1), "local_speedup": round(seq / local, 2), "plan": plan,
                  "identical_local": rows_seq == rows_local and len(rows_seq) > 0,
                  "other_load_cores": [round(load_seq, 2), round(load_local, 2)]}
        print(f"sweep of 24 points ({len(rows_seq)} rows): sequential {seq:.1f} s, local {local:.1f} s -> {seq / local:.2f}x "
              f"(goal >= 1.8x); identical: {result['identical_local']}; other load {load_seq:.2f} / {load_local:.2f} cores"
              f"\n  {plan}")
        if with_ray:
            ray, rows_ray, plan_ray, load_ray = run_sweep(file, Path(tmp) / "ray", ["--executor", "ray"])
            start = ray_start_up()
            result.update(ray_s=round(ray, 1), ray_vs_local=round(ray / local, 2), ray_plan=plan_ray,
                          identical_ray=rows_seq == rows_ray, ray_start_up=start)
            result["other_load_cores"].append(round(load_ray, 2))
            print(f"  ray {ray:.1f} s = {ray / local:.2f}x local's time (goal <= 1.15); identical: {result['identical_ray']}; "
                  f"other load {load_ray:.2f} cores\n  {plan_ray}\n  Ray start-up alone: import {start['import_s']:.1f} s, "
                  f"init {start['init_s']:.1f} s, first tasks (fresh workers importing torch + ticketlab) "
                  f"{start['first_tasks_s']:.1f} s, shutdown {start['shutdown_s']:.1f} s")
    return result


if __name__ == "__main__":
    main(with_ray="--no-ray" not in sys.argv)
