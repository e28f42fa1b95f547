"""Many tickets at once: a lottery experiment with 8 seeds, sequential (`--workers 1 --max-batch 1`)
vs the automatic choice of worker processes and stacking, timed in the same run.

- MNIST-1D MLP (40-100-100-10, the default), 3 levels, the two default controls: 8 x 10 trainings.
- LeNet-300-100 on MNIST-shaped IDX files (random pixels, written to a temporary folder), 2 levels,
  random_reinit control, 300 iterations per training: 8 x 5 trainings.
Both paths must give the same results; the script checks that too. Both run in this process after a
warm-up run (so neither pays the process's one-time costs: importing torch._dynamo at the first optimizer,
sympy at the first model, matplotlib's first figure); each figure also says how busy other processes kept
the machine meanwhile (`other load`, in cores).
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
from common import OtherLoad  # noqa: E402


def write_mnist_like(folder: Path, n_train: int = 60000, n_test: int = 10000) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())


def timed(out: Path, **settings) -> tuple[float, list, float]:
    with OtherLoad() as load:
        start = time.perf_counter()
        res = ticketlab.lottery(out=str(out), **settings)
        wall = time.perf_counter() - start
    return wall, [(r["level"], r["arm"], r["seed"], r["test_accuracy"], r["test_loss"], r["best_accuracy"]) for r in res], load.cores


def warm_up(settings: dict) -> None:
    """A tiny run of the same model and data: the process's one-time costs are paid before timing."""
    with tempfile.TemporaryDirectory() as tmp:
        small = {k: v for k, v in settings.items() if k not in ("seeds", "levels", "steps", "eval_every", "controls")}
        ticketlab.lottery(out=tmp, seeds=(0,), levels=1, steps="20it", eval_every="10it", workers=1, **small)


def compare(name: str, settings: dict) -> dict:
    warm_up(settings)
    with tempfile.TemporaryDirectory() as tmp:
        seq, rows_seq, load_seq = timed(Path(tmp) / "seq", workers=1, max_batch=1, **settings)
        auto, rows_auto, load_auto = timed(Path(tmp) / "auto", **settings)
    same = rows_seq == rows_auto
    print(f"{name}: sequential {seq:.1f} s, automatic {auto:.1f} s -> {seq / auto:.2f}x; identical results: {same}; "
          f"other load {load_seq:.2f} / {load_auto:.2f} cores")
    return {"name": name, "sequential_s": round(seq, 1), "automatic_s": round(auto, 1), "speedup": round(seq / auto, 2),
            "identical": same, "other_load_cores": [round(load_seq, 2), round(load_auto, 2)]}


def main(which: str = "all") -> list[dict]:
    seeds = tuple(range(8))
    out = [compare("MNIST-1D MLP lottery, 8 seeds, 3 levels", dict(seeds=seeds, levels=3))]
    if which == "mnist1d":
        return out
    with tempfile.TemporaryDirectory() as data:
        write_mnist_like(Path(data))
        out.append(compare("LeNet-300-100 (MNIST-shaped), 8 seeds, 2 levels, 300 it",
                           dict(seeds=seeds, levels=2, model="lenet_300_100", dataset="mnist", data_dir=data,
                                steps="300it", batch_size=60, lr=1.2e-3, controls=("random_reinit",), eval_every="300it")))
    return out


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "all")   # `mnist1d`: the first experiment only
