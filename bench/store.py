"""Bytes and read/write time of one lottery unit of LeNet-300-100, as `Unit.commit` writes it, at 100 / 20 /
10 / 1.4% of the weights remaining: compact files (masks as packed bits, weights as their nonzero values,
derivable start weights by reference) vs the dense files of the previous format (the same commit path
with the compact encoding switched off), measured in the same run.

The unit holds what a lottery ticket writes: mask, start (the rewind point times the mask), final weights
(a trained-like copy of the init times the mask), metrics.jsonl, sparsity.json, result.json. Masks are
layer-wise magnitude masks, the output layer pruned at half the rate as in the lottery defaults.
Goal: <= 0.4 MB per unit at 10% (was 2.4 MB), and reading and writing no slower than before.

    .venv/bin/python bench/store.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

from common import machine

from ticketlab import codec, models
from ticketlab.sparse.mask import Mask
from ticketlab.store import Derived, Unit

DENSITIES = (1.0, 0.2, 0.1, 0.014)


def unit_files(density: float) -> tuple[dict, Mask, dict]:
    model = models.build("lenet_300_100", (1, 28, 28), 10, seed=0)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    final = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in init.items()}
    names = [k for k in init if k.endswith("weight")]
    masks = {}
    for i, k in enumerate(names):
        d = density if i < len(names) - 1 else 1 - (1 - density) / 2
        w = final[k].abs().reshape(-1)
        keep = max(1, round(d * w.numel()))
        m = torch.zeros(w.numel(), dtype=torch.bool)
        m[torch.topk(w, keep).indices] = True
        masks[k] = m.reshape(final[k].shape)
    mask = Mask(masks, order=names)
    metrics = [{"step": s, "loss": 0.1, "test_accuracy": 0.9} for s in range(0, 800, 100)]
    files = {"mask.safetensors": mask.to_tensors(), "start.safetensors": mask.applied(init),
             "final.safetensors": mask.applied(final), "metrics.jsonl": metrics,
             "sparsity.json": mask.report(), "result.json": {"density": mask.density(), "test_accuracy": 0.9}}
    return files, mask, init


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(density: float, repeats: int, compact: bool) -> dict:
    files, mask, init = unit_files(density)
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(codec, "ENABLED", compact):
        source = Unit(Path(tmp) / "level-00" / "ticket")
        source.commit({"start.safetensors": init})
        unit = Unit(Path(tmp) / "level-03" / "ticket")
        if compact:
            files = {**files, "start.safetensors": Derived(source, "start.safetensors", "mask.safetensors",
                                                           files["start.safetensors"])}
        writes, reads = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            unit.commit(files)
            writes.append(time.perf_counter() - start)
            fresh = Unit(unit.path)
            start = time.perf_counter()
            back = {n: fresh.read(n) for n in ("mask.safetensors", "start.safetensors", "final.safetensors")}
            reads.append(time.perf_counter() - start)
        for n in ("mask.safetensors", "final.safetensors"):
            want = files[n]
            assert all(torch.equal(back[n][k], want[k]) for k in want), n
        assert all(torch.equal(back["start.safetensors"][k], mask.applied(init)[k]) for k in init)
        size = folder_bytes(unit.path)
    return {"bytes": size, "write_ms": 1000 * statistics.median(writes), "read_ms": 1000 * statistics.median(reads)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    print(f"one LeNet-300-100 lottery unit ({machine()}), medians of {args.repeats} writes and reads")
    print(f"{'remaining':>9}  {'before MB':>9}  {'after MB':>8}  {'ratio':>6}  {'write ms before/after':>22}  {'read ms before/after':>21}")
    for d in DENSITIES:
        before = measure(d, args.repeats, compact=False)
        after = measure(d, args.repeats, compact=True)
        row = {"remaining": d, "before_mb": before["bytes"] / 1e6, "after_mb": after["bytes"] / 1e6,
               "write_ms": [before["write_ms"], after["write_ms"]], "read_ms": [before["read_ms"], after["read_ms"]]}
        rows.append(row)
        print(f"{100 * d:8.1f}%  {row['before_mb']:9.3f}  {row['after_mb']:8.3f}  {row['before_mb'] / row['after_mb']:5.1f}x  "
              f"{before['write_ms']:10.2f} / {after['write_ms']:<9.2f}  {before['read_ms']:10.2f} / {after['read_ms']:<8.2f}")
    at10 = next(r for r in rows if r["remaining"] == 0.1)
    print(f"goal: <= 0.4 MB at 10% remaining: {at10['after_mb']:.3f} MB ({'met' if at10['after_mb'] <= 0.4 else 'NOT met'})")
    return {"benchmark": "store", "rows": rows}


if __name__ == "__main__":
    main()
