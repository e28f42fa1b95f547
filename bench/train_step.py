"""LeNet-300-100, batch 60, MNIST-shaped tensors: ticketlab's training path vs a bare PyTorch loop.

Ours: `ticketlab.train.fit` with a 20%-dense mask (in-place re-masking after each step), seeded batch
order, evaluation off. Bare: the same model, consecutive in-memory slices, no mask, the same optimizer
(`Adam(fused=True)`; plain `Adam` shown too). Achieved GFLOP/s = 6 x parameters x samples/s, against
the matmul peak measured in the same run at the same thread count.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F

from common import best_of, machine, matmul_peak, mnist_shaped

from ticketlab import models, spec as specs
from ticketlab.experiments.lottery import LotterySpec
from ticketlab.sparse import Mask
from ticketlab.train import Schedule, fit

STEPS = 1000
BATCH = 60


def bare_loop(model, data, optimizer):
    x, y = data.train_x, data.train_y
    n = len(y) // BATCH
    for i in range(STEPS):
        j = (i % n) * BATCH
        loss = F.cross_entropy(model(x[j:j + BATCH]), y[j:j + BATCH])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def ours(model, data, spec, mask):
    fit(model, data, spec.train, seed=0, start=0, end=STEPS, schedule=Schedule.from_spec(spec.train, 1000), mask=mask)


def measure(threads: int) -> dict:
    torch.set_num_threads(threads)
    data = mnist_shaped(n_test=60)  # evaluation is off: a token test set for fit's start/end evaluation
    peak = matmul_peak(threads)
    out = {"threads": threads, "matmul_peak_gflops": round(peak, 1)}
    for opt in ("sgd", "adam"):
        spec = specs.from_mapping(LotterySpec, {"model": "lenet_300_100", "optimizer": opt, "lr": 0.1 if opt == "sgd" else 1.2e-3,
                                                "batch_size": BATCH, "steps": f"{STEPS}it", "eval_every": f"{10 * STEPS}it"})
        model = models.build("lenet_300_100", data.input_shape, 10, seed=0)
        params = sum(p.numel() for p in model.parameters())
        names = models.prunable_names(model)
        g = torch.Generator().manual_seed(0)
        mask = Mask({n: torch.rand(p.shape, generator=g) < 0.2 for n, p in model.named_parameters() if n in names})
        make = (lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)) if opt == "sgd" else \
               (lambda m: torch.optim.Adam(m.parameters(), lr=1.2e-3, fused=True))
        # warm up both paths (first-model page faults, lazy imports)
        ours(models.build("lenet_300_100", data.input_shape, 10, seed=1), data, spec, mask)
        bare_loop(m := models.build("lenet_300_100", data.input_shape, 10, seed=1), data, make(m))
        t_ours = best_of(lambda: ours(models.build("lenet_300_100", data.input_shape, 10, seed=0), data, spec, mask))
        t_bare = best_of(lambda: bare_loop(m := models.build("lenet_300_100", data.input_shape, 10, seed=0), data, make(m)))
        gflops = 6 * params * BATCH * STEPS / t_ours / 1e9
        row = {"steps_per_s": round(STEPS / t_ours, 1), "bare_steps_per_s": round(STEPS / t_bare, 1),
               "overhead_vs_bare": round(t_ours / t_bare - 1, 3), "gflops": round(gflops, 1),
               "fraction_of_peak": round(gflops / peak, 3)}
        if opt == "adam":
            plain = lambda m: torch.optim.Adam(m.parameters(), lr=1.2e-3)
            t_plain = best_of(lambda: bare_loop(m := models.build("lenet_300_100", data.input_shape, 10, seed=0), data, plain(m)))
            row["bare_plain_adam_steps_per_s"] = round(STEPS / t_plain, 1)
        out[opt] = row
    return out


def main() -> dict:
    results = {"benchmark": "train_step", "machine": machine(), "runs": [measure(t) for t in (1, 2)]}
    for r in results["runs"]:
        for opt in ("sgd", "adam"):
            o = r[opt]
            print(f"{r['threads']} thread(s) {opt:4s}: ours {o['steps_per_s']:7.1f} steps/s, bare {o['bare_steps_per_s']:7.1f} "
                  f"-> overhead {100 * o['overhead_vs_bare']:+.1f}%; {o['gflops']:.1f} GFLOP/s = "
                  f"{100 * o['fraction_of_peak']:.0f}% of the {r['matmul_peak_gflops']:.0f} GFLOP/s matmul peak"
                  + (f"; bare plain Adam {o['bare_plain_adam_steps_per_s']} steps/s" if "bare_plain_adam_steps_per_s" in o else ""))
    return results


if __name__ == "__main__":
    out = main()
    if "--json" in sys.argv:
        json.dump(out, sys.stdout, indent=2)
