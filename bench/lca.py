"""Loss Change Allocation: wall time of training with the LCA recorder vs the minimum it needs, and vs plain
training, all measured in one run (MNIST-1D MLP 40-100-100-10, batch 100, full 4000-sample training set).

minimum = plain training + the recorder's full-set gradient evaluations, each timed on its own (a loop of
the same number of evaluations at the same weights). ratio = LCA run / minimum (goal: <= 1.3);
overhead = LCA run / plain training. 1 thread (the stablest figure on this shared machine).

    .venv/bin/python bench/lca.py [--steps 300] [--threads 1] [--dataset mnist1d|synthetic]
"""

from __future__ import annotations

import argparse
import time

import torch

from common import machine

from ticketlab import spec as specs
from ticketlab.experiments.common import Setup
from ticketlab.experiments.lca import LCASpec, recorder
from ticketlab.train import fit


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dataset", default="mnist1d")
    ap.add_argument("--data-dir", default="data")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = specs.from_mapping(LCASpec, dict(dataset=args.dataset, data_dir=args.data_dir, model="mnist1d_mlp" if args.dataset == "mnist1d" else "mlp",
                                            steps=f"{args.steps}it", eval_every=f"{args.steps}it"))
    setup = Setup.prepare(spec)

    def plain() -> float:
        model = setup.build_model(0)
        t = time.perf_counter()
        fit(model, setup.data, spec.train, seed=0, start=0, end=args.steps, schedule=setup.schedule)
        return time.perf_counter() - t

    def with_lca():
        model = setup.build_model(0)
        rec = recorder(spec.lca, setup, model)
        t = time.perf_counter()
        fit(model, setup.data, spec.train, seed=0, start=0, end=args.steps, schedule=setup.schedule, callbacks=rec)
        return time.perf_counter() - t, rec, model

    plain()  # warm-up (page faults of the first model run slow)
    times_plain, times_lca = [], []
    for _ in range(3):   # interleaved, best of 3: the machine is shared
        times_plain.append(plain())
        elapsed, rec, model = with_lca()
        times_lca.append(elapsed)
    evaluations = rec.probe.evaluations
    theta = rec.probe.flatten(model)
    grad_times = []
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(evaluations):
            rec.probe(theta)
        grad_times.append(time.perf_counter() - t)
    t_plain, t_lca, t_grads = min(times_plain), min(times_lca), min(grad_times)
    minimum = t_plain + t_grads
    s = rec.summary()
    print(f"machine: {machine()}, threads {args.threads}; {args.dataset}, {args.steps} steps, "
          f"{len(setup.data.train_y)} training samples, {rec.probe.flat.numel()} parameters")
    print(f"gradient evaluations: {evaluations} ({evaluations / args.steps:.2f} per step; mean Simpson n {s['mean_points']:.2f})")
    print(f"plain training      {t_plain:8.3f} s  ({1e3 * t_plain / args.steps:.2f} ms/step)")
    print(f"gradient evals only {t_grads:8.3f} s  ({1e3 * t_grads / evaluations:.2f} ms each)")
    print(f"minimum             {minimum:8.3f} s")
    print(f"training with LCA   {t_lca:8.3f} s")
    print(f"ratio LCA / minimum         {t_lca / minimum:.3f}  (goal <= 1.3)")
    print(f"overhead LCA / plain train  {t_lca / t_plain:.2f}x")
    print(f"relative error {s['relative_error']:.2e}, fraction helped {s['fraction_helped']:.3f}")
    return {"benchmark": "lca", "threads": args.threads, "steps": args.steps, "plain_s": round(t_plain, 3),
            "gradients_s": round(t_grads, 3), "lca_s": round(t_lca, 3), "ratio_to_minimum": round(t_lca / minimum, 3),
            "overhead_vs_plain": round(t_lca / t_plain, 2)}


if __name__ == "__main__":
    main()
