"""Run every benchmark once and print their figures (record the median and range of several runs in
BENCHMARKS.md). `python bench/run_all.py [NAME ...]` runs only the named ones (many, instruments, sweep,
cli, train_step, epoch, demo, lca, store, show, export, sparse_train, fop)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cli  # noqa: E402
from common import OtherLoad  # noqa: E402
import demo  # noqa: E402
import epoch  # noqa: E402
import export  # noqa: E402
import fop  # noqa: E402
import instruments  # noqa: E402
import lca  # noqa: E402
import many  # noqa: E402
import show  # noqa: E402
import sparse_train  # noqa: E402
import store  # noqa: E402
import sweep  # noqa: E402
import train_step  # noqa: E402

BENCHMARKS = {
    "many": many.main,
    "instruments": instruments.main,
    "sweep": sweep.main,
    "cli": cli.main,
    "train_step": train_step.main,
    "epoch": epoch.main,
    "demo": lambda: [demo.main(["--workers", "1", "--max-batch", "1"]), demo.main()],
    "lca": lambda: [lca.main([]), lca.main(["--threads", "2"])],
    "store": lambda: store.main([]),
    "show": lambda: show.main([]),
    "export": lambda: export.main([]),
    "sparse_train": sparse_train.main,
    "fop": fop.main,
}

if __name__ == "__main__":
    names = sys.argv[1:] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {', '.join(unknown)}; valid: {', '.join(BENCHMARKS)}")
    results = {}
    for name in names:
        with OtherLoad() as load:   # how busy other processes kept the machine meanwhile
            figures = BENCHMARKS[name]()
        results[name] = {"figures": figures, "other_load_cores": round(load.cores, 2)}
        print(f"[{name}: other processes used {load.cores:.2f} of the 2 cores meanwhile]")
    Path("bench/latest.json").write_text(json.dumps(results, indent=2) + "\n")
    print("figures written to bench/latest.json")
