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
separately, in another process. `--steps 1000it` times a longer sweep (Ray's start-up is a fixed cost, so
its share depends on the sweep's length); `--no-sequential` leaves out the one-process run.

    .venv/bin/python bench/sweep.py [--steps 200it] [--no-ray] [--no-sequential]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from common import cli_env, timed_cli

SWEEP = textwrap.dedent("""\
    experiment = "lottery"

    [base]
    levels = 3
    steps = "{steps}"
    eval_every = "{eval_every}"

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
    return timed_cli(["sweep", str(file), *extra], out, "sweep-*/results.json")


def ray_start_up() -> dict:
    done = subprocess.run([sys.executable, "-c", RAY_START], env=cli_env(), check=True, capture_output=True, text=True)
    return {k: round(v, 2) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def main(with_ray: bool = True, steps: str = "200it", sequential: bool = True) -> dict:
    subprocess.run([sys.executable, "-c", "import torch, ticketlab.experiments.lottery"], env=cli_env(), check=True)
    iterations = int(steps.removesuffix("it"))
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "sweep.toml"
        file.write_text(SWEEP.format(steps=steps, eval_every=f"{max(1, iterations // 4)}it"))
        local, rows_local, plan, load_local = run_sweep(file, Path(tmp) / "local", [])
        result = {"benchmark": "sweep", "points": 24, "steps": steps, "rows": len(rows_local),
                  "local_s": round(local, 1), "plan": plan, "other_load_cores": {"local": round(load_local, 2)}}
        print(f"sweep of 24 points x {steps} ({len(rows_local)} rows): local {local:.1f} s; other load {load_local:.2f} cores\n  {plan}")
        if sequential:
            seq, rows_seq, _, load_seq = run_sweep(file, Path(tmp) / "seq", ["--workers", "1", "--max-batch", "1"])
            result.update(sequential_s=round(seq, 1), local_speedup=round(seq / local, 2),
                          identical_local=rows_seq == rows_local and len(rows_seq) > 0)
            result["other_load_cores"]["sequential"] = round(load_seq, 2)
            print(f"  sequential {seq:.1f} s -> local is {seq / local:.2f}x faster (goal >= 1.8x); identical: "
                  f"{result['identical_local']}; other load {load_seq:.2f} cores")
        if with_ray:
            ray, rows_ray, plan_ray, load_ray = run_sweep(file, Path(tmp) / "ray", ["--executor", "ray"])
            start = ray_start_up()
            result.update(ray_s=round(ray, 1), ray_vs_local=round(ray / local, 2), ray_plan=plan_ray,
                          identical_ray=rows_local == rows_ray and len(rows_ray) > 0, ray_start_up=start)
            result["other_load_cores"]["ray"] = round(load_ray, 2)
            print(f"  ray {ray:.1f} s = {ray / local:.2f}x local's time (goal <= 1.15); identical: {result['identical_ray']}; "
                  f"other load {load_ray:.2f} cores\n  {plan_ray}\n  Ray start-up alone: import {start['import_s']:.1f} s, "
                  f"init {start['init_s']:.1f} s, first tasks (fresh workers importing torch + ticketlab) "
                  f"{start['first_tasks_s']:.1f} s, shutdown {start['shutdown_s']:.1f} s")
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="200it", help="iterations per training, e.g. 200it (default) or 1000it")
    parser.add_argument("--no-ray", action="store_true", help="leave out the Ray executor")
    parser.add_argument("--no-sequential", action="store_true", help="leave out the one-process run")
    a = parser.parse_args()
    main(with_ray=not a.no_ray, steps=a.steps, sequential=not a.no_sequential)
