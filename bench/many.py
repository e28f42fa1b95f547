"""Many tickets at once: a lottery experiment with 8 seeds, sequential (`--workers 1 --max-batch 1`)
vs the automatic choice of worker processes and stacking, timed in the same run.

- MNIST-1D MLP (40-100-100-10, the default), 3 levels, the two default controls: 8 x 10 trainings.
- LeNet-300-100 on MNIST-shaped IDX files (random pixels, written to a temporary folder), 2 levels,
  random_reinit control, 300 iterations per training: 8 x 5 trainings.
Both paths must give the same results; the script checks that too.
"""

from __future__ import annotations

import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import ticketlab  # noqa: E402


def write_mnist_like(folder: Path, n_train: int = 60000, n_test: int = 10000) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())


def timed(out: Path, **settings) -> tuple[float, list]:
    start = time.perf_counter()
    res = ticketlab.lottery(out=str(out), **settings)
    return time.perf_counter() - start, [(r["level"], r["arm"], r["seed"], r["test_accuracy"]) for r in res]


def compare(name: str, settings: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        seq, rows_seq = timed(Path(tmp) / "seq", workers=1, max_batch=1, **settings)
        auto, rows_auto = timed(Path(tmp) / "auto", **settings)
    same = rows_seq == rows_auto
    print(f"{name}: sequential {seq:.1f} s, automatic {auto:.1f} s -> {seq / auto:.2f}x; identical results: {same}")
    return {"name": name, "sequential_s": round(seq, 1), "automatic_s": round(auto, 1), "speedup": round(seq / auto, 2),
            "identical": same}


def main() -> list[dict]:
    seeds = tuple(range(8))
    out = [compare("MNIST-1D MLP lottery, 8 seeds, 3 levels", dict(seeds=seeds, levels=3))]
    with tempfile.TemporaryDirectory() as data:
        write_mnist_like(Path(data))
        out.append(compare("LeNet-300-100 (MNIST-shaped), 8 seeds, 2 levels, 300 it",
                           dict(seeds=seeds, levels=2, model="lenet_300_100", dataset="mnist", data_dir=data,
                                steps="300it", batch_size=60, lr=1.2e-3, controls=("random_reinit",), eval_every="300it")))
    return out


if __name__ == "__main__":
    main()
