"""FOP's time per step vs its base optimizer, through `ticketlab.train.fit` (no mask, evaluation off), one
thread, MNIST-shaped random tensors, batch 60: LeNet-300-100 (the goal of issue 12: <= 1.3x, the paper's
"minimal overhead") and Conv-2 (3 x 3 convolutions, then 12544-256-256-10 linear layers; fewer steps). All timed in the same run;
the ratio is the overhead.

Per model, FOP with its default linear-layer preconditioner (`--fop-linear scalar`: 1 x 1); for LeNet-300-100
also with the input-side one (`input`: in x in; fc1's 784 x 784 costs O(out * in^2) multiply-adds per step;
Conv-2's first linear layer, 12544 x 12544, is left out: minutes per run).
"""

from __future__ import annotations

import json
import sys

import torch

from common import best_of, machine, mnist_shaped

from ticketlab import models, spec as specs
from ticketlab.experiments.lottery import LotterySpec
from ticketlab.train import Schedule, fit

STEPS = 100
BATCH = 60


def per_step(model: str, optimizer: str, data, **fop) -> float:
    steps = STEPS if model == "lenet_300_100" else STEPS // 5
    base = optimizer.removeprefix("fop-")
    spec = specs.from_mapping(LotterySpec, {"model": model, "optimizer": optimizer, "lr": 0.1 if base == "sgd" else 1.2e-3,
                                            "batch_size": BATCH, "steps": f"{steps}it", "eval_every": f"{10 * steps}it", **fop})
    run = lambda: fit(models.build(model, data.input_shape, 10, seed=0), data, spec.train, seed=0, start=0,
                      end=steps, schedule=Schedule.from_spec(spec.train, 1000))
    run()   # warm-up
    return best_of(run, 3) / steps


def main() -> dict:
    torch.set_num_threads(1)
    data = mnist_shaped(n_test=60)
    out = {"machine": machine(), "threads": 1, "steps": STEPS, "batch": BATCH}
    for model in ("lenet_300_100", "conv2"):
        for base in ("sgd", "adam"):
            plain = per_step(model, base, data)
            row = {"base_ms": round(1e3 * plain, 3)}
            for linear in ("scalar", "input") if model == "lenet_300_100" else ("scalar",):   # conv2's fc1: 12544 x 12544
                fop = per_step(model, f"fop-{base}", data, fop_linear=linear)
                row[f"fop_{linear}_ms"], row[f"ratio_{linear}"] = round(1e3 * fop, 3), round(fop / plain, 2)
            out[f"{model}/{base}"] = row
    return out


if __name__ == "__main__":
    result = main()
    json.dump(result, sys.stdout, indent=2)
    print()
