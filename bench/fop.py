"""FOP's time per step vs its base optimizer: LeNet-300-100, batch 60, MNIST-shaped random tensors, through
`ticketlab.train.fit` (no mask, evaluation off), one thread. Both timed in the same run; the ratio is the
overhead (goal of issue 12: <= 1.3x, the paper's "minimal overhead").

FOP's linear-layer preconditioners are input-side (in x in): fc1's is 784 x 784, so its step costs
O(out * in^2 + in^3) multiply-adds, more than the layer's forward and backward pass at batch 60.
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


def per_step(optimizer: str, data) -> float:
    base = optimizer.removeprefix("fop-")
    spec = specs.from_mapping(LotterySpec, {"model": "lenet_300_100", "optimizer": optimizer, "lr": 0.1 if base == "sgd" else 1.2e-3,
                                            "batch_size": BATCH, "steps": f"{STEPS}it", "eval_every": f"{10 * STEPS}it"})
    run = lambda: fit(models.build("lenet_300_100", data.input_shape, 10, seed=0), data, spec.train, seed=0, start=0,
                      end=STEPS, schedule=Schedule.from_spec(spec.train, 1000))
    run()   # warm-up
    return best_of(run, 3) / STEPS


def main() -> dict:
    torch.set_num_threads(1)
    data = mnist_shaped(n_test=60)
    out = {"machine": machine(), "threads": 1, "steps": STEPS, "batch": BATCH}
    for base in ("sgd", "adam"):
        plain, fop = per_step(base, data), per_step(f"fop-{base}", data)
        out[base] = {"base_ms": round(1e3 * plain, 3), "fop_ms": round(1e3 * fop, 3), "ratio": round(fop / plain, 2)}
    return out


if __name__ == "__main__":
    result = main()
    json.dump(result, sys.stdout, indent=2)
    print()
