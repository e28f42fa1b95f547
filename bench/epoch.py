"""One epoch of LeNet-300-100 on MNIST-shaped data (60,000 samples, batch 60, SGD) including the
evaluation on the 10,000-sample test set, through ticketlab's fit. OpenLTH needs ~3.8 s here (measured earlier on this machine)."""

from __future__ import annotations

import json
import sys

import torch

import train_step
from common import best_of, machine, mnist_shaped

from ticketlab import models, spec as specs
from ticketlab.experiments.lottery import LotterySpec
from ticketlab.train import Schedule, evaluate, fit


def measure(threads: int) -> dict:
    torch.set_num_threads(threads)
    data = mnist_shaped()
    spec = specs.from_mapping(LotterySpec, {"model": "lenet_300_100", "optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "batch_size": 60,
                                            "steps": "1ep", "eval_every": "1ep"})
    run = lambda: fit(models.build("lenet_300_100", data.input_shape, 10, seed=0), data, spec.train, seed=0, start=0,
                      end=1000, schedule=Schedule.from_spec(spec.train, 1000))
    run()  # warm-up
    model = models.build("lenet_300_100", data.input_shape, 10, seed=0)
    bare = lambda: (train_step.bare_loop(model, data, torch.optim.SGD(model.parameters(), lr=0.1)),
                    evaluate(model, data.test_x, data.test_y))
    bare()
    return {"threads": threads, "epoch_seconds": round(best_of(run), 3), "bare_epoch_seconds": round(best_of(bare), 3)}


def main() -> dict:
    results = {"benchmark": "epoch", "machine": machine(), "runs": [measure(t) for t in (1, 2)]}
    for r in results["runs"]:
        print(f"{r['threads']} thread(s): one LeNet-300-100 epoch (60k samples, batch 60) + test evaluation: "
              f"{r['epoch_seconds']:.2f} s; a bare PyTorch loop (slices, no mask, no seeded order) {r['bare_epoch_seconds']:.2f} s "
              f"(OpenLTH ~3.8 s; goal < 1 s)")
    return results


if __name__ == "__main__":
    out = main()
    if "--json" in sys.argv:
        json.dump(out, sys.stdout, indent=2)
