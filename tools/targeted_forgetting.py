#!/usr/bin/env python3
"""Targeted forgetting on MNIST-1D: does forgetting hurt the mislabeled examples more than the clean ones?

Runs `ticketlab forget --probe targeted --generations 0` (generation 0 only, watched by the probe) on MNIST-1D
with 10% random labels, 3 seeds, an MLP 300-100 trained with SGD (lr 0.1, momentum 0.9, batch 128) for 300
epochs, so that the mislabeled examples are memorised early and most probes see a network that has memorised
them (the methods note: before that, no probe can show the effect). Every 400 steps a copy is forgotten by
`random` (keep 50%, redraw) and `imp` (keep the top 30% rewound to init, zero the rest; the output layer forgets
half as much), and the accuracy of each group on its training labels is measured before and after.

Prints, per method and group, the accuracy drop averaged over every probe and seed (the measure of the slow test
in tests/test_forget.py, not redefined to agree with the paper), per seed too, and the final train accuracy on
the mislabeled examples. `--json`: the last line is the report as JSON. About 3-5 minutes on one core.

    .venv/bin/python tools/targeted_forgetting.py --out runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

SETTINGS = dict(dataset="mnist1d", model="mlp", widths=(300, 100), optimizer="sgd", lr=0.1, momentum=0.9,
                batch_size=128, steps="300ep", eval_every="400it", generations=0, random_labels=0.1,
                probe="targeted", probe_every="400it", methods=("random", "imp"), seeds=(0, 1, 2), workers=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", default=SETTINGS["steps"])
    parser.add_argument("--json", action="store_true", help="end with the report as one line of JSON")
    args = parser.parse_args(argv)

    import ticketlab
    from ticketlab.store import Run

    settings = {**SETTINGS, "seeds": tuple(int(s) for s in args.seeds.split(",")), "steps": args.steps,
                "data_dir": args.data_dir}
    results = ticketlab.forget(out=args.out, **settings)
    from ticketlab import spec as specs
    from ticketlab.experiments.forget import ForgetSpec

    spec = specs.from_mapping(ForgetSpec, settings)
    folder = Run.folder(args.out, spec)
    probes = json.loads((folder / "summary.json").read_text())["probe_drops"]
    import csv

    rows = list(csv.DictReader((folder / "probes.csv").open()))
    drops: dict = {}
    per_seed: dict = {}
    for d in probes:
        drops.setdefault(d["method"], {})[d["group"]] = d["drop"]
    for r in rows:
        drop = float(r["accuracy_before"]) - float(r["accuracy_after"])
        per_seed.setdefault(r["method"], {}).setdefault(r["group"], {}).setdefault(r["seed"], []).append(drop)
    memorised = statistics.fmean(r["train_accuracy_mislabeled"] for r in results)
    print(f"MNIST-1D, 10% random labels, seeds {args.seeds}, {args.steps}: final train accuracy on the mislabeled "
          f"examples {100 * memorised:.1f}%")
    print(f"{'method':>8} {'group':>11} {'mean drop':>10}   per seed")
    for method, groups in drops.items():
        for group, drop in groups.items():
            seeds = per_seed[method][group]
            print(f"{method:>8} {group:>11} {100 * drop:>9.2f}   "
                  + "  ".join(f"{s}: {100 * statistics.fmean(v):.2f}" for s, v in seeds.items()))
    report = {"train_accuracy_mislabeled": memorised, "drops": drops, "folder": str(folder)}
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
