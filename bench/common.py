"""Shared pieces of the benchmarks: the machine's matmul peak, MNIST-shaped tensors, timing."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def matmul_peak(threads: int, n: int = 1024, seconds: float = 1.0) -> float:
    """Achieved float32 GFLOP/s of an n x n matmul at `threads` threads: the machine's practical peak."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    for _ in range(3):
        torch.mm(a, b, out=c)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b, out=c)
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def mnist_shaped(n_train: int = 60000, n_test: int = 10000, seed: int = 0):
    """Random tensors shaped like normalised MNIST (the speed of a step does not depend on the pixels)."""
    from ticketlab.data import Dataset

    g = torch.Generator().manual_seed(seed)
    return Dataset("mnist_shaped", torch.randn(n_train, 1, 28, 28, generator=g), torch.randint(0, 10, (n_train,), generator=g),
                   torch.randn(n_test, 1, 28, 28, generator=g), torch.randint(0, 10, (n_test,), generator=g), 10)


def best_of(fn, repeats: int = 3) -> float:
    """Smallest wall time of `repeats` calls (the machine is shared: the minimum is the least disturbed)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def machine() -> str:
    return f"{os.cpu_count()} cores, torch {torch.__version__}"


ROOT = Path(__file__).resolve().parents[1]


def _busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat; 0 where there is none)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    import resource

    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


class OtherLoad:
    """How busy other processes kept the machine while a block ran: `cores` = their CPU seconds per wall
    second (0 = the machine was ours; 1 = one of the cores was taken by other work on average). Measured
    as all cores' busy time (/proc/stat) minus this process's and its finished children's CPU time, so
    children still running when the block ends (a Ray instance) count as other load."""

    def __enter__(self):
        self.wall, self.busy, self.own = time.perf_counter(), _busy_seconds(), _own_seconds()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.wall
        other = (_busy_seconds() - self.busy) - (_own_seconds() - self.own)
        self.cores = max(0.0, other) / wall if wall > 0 else 0.0
        return False


def cli_env() -> dict:
    """The environment of a `python -m ticketlab` subprocess that imports this checkout."""
    return {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def timed_cli(args: list[str], out: Path, results: str) -> tuple[float, list[dict], str, float]:
    """`ticketlab ARGS --out OUT` in a fresh process: (wall seconds, the rows of the results.json matched by
    `results` under OUT without their `seconds` timings, the 'parallel:' line, other load in cores)."""
    import json
    import subprocess

    cmd = [sys.executable, "-m", "ticketlab", *args, "--out", str(out), "--no-progress"]
    with OtherLoad() as load:
        start = time.perf_counter()
        done = subprocess.run(cmd, env=cli_env(), check=True, capture_output=True, text=True)
        wall = time.perf_counter() - start
    rows = json.loads(next(out.glob(results)).read_text())
    rows = [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    plan = next((line.strip() for line in done.stdout.splitlines() if line.strip().startswith("parallel:")), "?")
    return wall, rows, plan, load.cores

