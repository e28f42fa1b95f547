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
