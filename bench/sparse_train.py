"""Per-step cost of dynamic sparse training on LeNet-300-100 (batch 60, MNIST-shaped tensors, one thread):
RigL and SET against a plain masked step (`fit` with a 20%-dense mask), all measured in one run.

Each is `fit` on the same mask for STEPS steps, evaluation off:
  masked       ApplyMask only (the lottery's retraining step)
  set / rigl   the same plus `DynamicSparse`, a mask update every 100 steps (RigL's ImageNet setting) until
               the end: the amortised overhead per step
  .../every    a mask update after every step: the cost of one update (drop by magnitude, grow at random or
               by the dense gradient, optimizer-state reset, re-masking) is (t_every - t_masked) / STEPS

RigL's dense gradient costs nothing extra here: masks zero the weights after each step instead of masking
the gradients, so the backward pass already gives every weight its gradient; what RigL adds is the update.
Ratios are times divided by the masked time of the same run (best of 3 each).
"""

from __future__ import annotations

import json
import sys

import torch

from common import best_of, machine, mnist_shaped

from ticketlab import models, spec as specs
from ticketlab.experiments.lottery import LotterySpec
from ticketlab.sparse import Mask
from ticketlab.train import Schedule, fit
from ticketlab.train.sparse_callbacks import DynamicSparse, random_mask

STEPS = 500
BATCH = 60


def model():
    return models.build("lenet_300_100", (1, 28, 28), 10, seed=0)


def measure(optimizer: str) -> dict:
    data = mnist_shaped(n_test=60)
    spec = specs.from_mapping(LotterySpec, {"model": "lenet_300_100", "optimizer": optimizer,
                                            "lr": 0.1 if optimizer == "sgd" else 1.2e-3, "batch_size": BATCH,
                                            "steps": f"{STEPS}it", "eval_every": f"{10 * STEPS}it"})
    schedule = Schedule.from_spec(spec.train, 1000)
    probe = model()
    shapes = {n: tuple(p.shape) for n, p in probe.named_parameters() if n in models.prunable_names(probe)}
    start = random_mask(shapes, 0.2, "uniform", torch.Generator().manual_seed(0))

    def run(growth: str | None, every: int) -> None:
        mask = Mask({n: m.clone() for n, m in start.tensors.items()}, list(shapes))
        cbs = [DynamicSparse(mask, growth, every=every, end=STEPS, alpha=0.3)] if growth else []
        fit(model(), data, spec.train, seed=0, start=0, end=STEPS, schedule=schedule, mask=mask, callbacks=cbs)

    run(None, 1), run("rigl", 100)   # warm-up
    times = {"masked": best_of(lambda: run(None, 1))}
    for growth in ("set", "rigl"):
        times[growth] = best_of(lambda g=growth: run(g, 100))
        times[f"{growth}/every"] = best_of(lambda g=growth: run(g, 1))
    base = times["masked"]
    return {"ms_per_step": {k: round(1000 * t / STEPS, 3) for k, t in times.items()},
            "ratio_vs_masked": {k: round(t / base, 3) for k, t in times.items()},
            "ms_per_update": {g: round(1000 * (times[f"{g}/every"] - base) / (STEPS - 1), 3) for g in ("set", "rigl")}}


def main() -> dict:
    torch.set_num_threads(1)
    results = {"benchmark": "sparse_train", "machine": machine(), "steps": STEPS, "batch": BATCH, "density": 0.2,
               "runs": {opt: measure(opt) for opt in ("sgd", "adam")}}
    for opt, r in results["runs"].items():
        ms, ratio, upd = r["ms_per_step"], r["ratio_vs_masked"], r["ms_per_update"]
        print(f"{opt:4s}: masked {ms['masked']:.3f} ms/step; update every 100 steps: SET x{ratio['set']:.3f}, "
              f"RigL x{ratio['rigl']:.3f}; every step: SET x{ratio['set/every']:.2f}, RigL x{ratio['rigl/every']:.2f} "
              f"(one update: SET {upd['set']:.2f} ms, RigL {upd['rigl']:.2f} ms)")
    return results


if __name__ == "__main__":
    out = main()
    if "--json" in sys.argv:
        json.dump(out, sys.stdout, indent=2)
