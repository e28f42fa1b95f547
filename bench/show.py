"""`ticketlab show` over 10,000 synthetic run folders, each a fresh process, median of 3 calls:

- a finished sweep of 10,000 lottery points (the sweep folder's results.csv: 100,000 rows);
- the same sweep unfinished (no sweep results.csv: the rows are gathered from the 10,000 run folders),
  the first call without the rows index (`rows-index.json`, built by that call), then with it;
- one unfinished run folder of 10,000 finished units (no results.csv), without and with the index.

The folders hold what the commands write (spec.json, results.csv or result.json, MANIFEST.json with sizes
and SHA-256 hashes), made here without the fsync of every file. Goal: < 2 s.

    .venv/bin/python bench/show.py [--points 10000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cli_env

from ticketlab.io import sha256_bytes, to_json
from ticketlab.store import MANIFEST, encode


def write_unit(folder: Path, files: dict, complete: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name, payload in files.items():
        data = encode(name, payload)
        (folder / name).write_bytes(data)
        entries[name] = {"size": len(data), "sha256": sha256_bytes(data)}
    (folder / MANIFEST).write_text(to_json({"format": 1, "complete": complete, "files": entries}))


def row(level: int, arm: str, point: int) -> dict:
    return {"level": level, "weights_remaining": 0.8 ** level, "arm": arm, "seed": 0,
            "test_accuracy": 0.5 + 0.0001 * point, "best_accuracy": 0.6, "train_steps": 1500, "seconds": 1.0}


def make(root: Path, points: int) -> tuple[Path, Path]:
    """(the sweep folder, one run folder with `points` units)."""
    index, all_rows = [], []
    for p in range(points):
        name = f"lottery-{p:010x}"
        rows = [row(level, arm, p) for level in range(4) for arm in (["ticket"] if level == 0 else ["ticket", "random_reinit", "random_prune"])]
        write_unit(root / name, {"spec.json": {"experiment": "lottery", "spec": {"lr": p}}, "results.csv": rows}, complete=False)
        index.append({"lr": p, "run": name})
        all_rows += [{"lr": p, **r} for r in rows]
    sweep = root / "sweep-lottery-synthetic"
    write_unit(sweep, {"spec.json": {"experiment": "sweep", "of": "lottery", "axes": ["lr"], "points": index},
                       "results.csv": all_rows}, complete=False)
    big = root / "lottery-many-units"
    write_unit(big, {"spec.json": {"experiment": "lottery", "spec": {}}}, complete=False)
    for u in range(points):
        write_unit(big / f"seed-{u}" / "level-00" / "ticket", {"result.json": row(0, "ticket", u)})
    return sweep, big


def show(folder: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ticketlab", "show", str(folder), "--format", "csv"], env=cli_env(),
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def timed(folder: Path, *, index: bool) -> float:
    """Median of 3 calls; `index` False: the rows index removed before each call."""
    times = []
    for _ in range(3):
        if not index:
            (folder / "rows-index.json").unlink(missing_ok=True)
        times.append(show(folder))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=10000)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        sweep, big = make(Path(tmp), args.points)
        print(f"made {args.points} run folders and a run of {args.points} units in {time.perf_counter() - start:.0f} s")
        out = {"benchmark": "show", "points": args.points, "finished_sweep_s": timed(sweep, index=True)}
        (sweep / "results.csv").unlink()
        out["unfinished_sweep_cold_s"] = timed(sweep, index=False)
        show(sweep)
        out["unfinished_sweep_indexed_s"] = timed(sweep, index=True)
        out["unfinished_run_cold_s"] = timed(big, index=False)
        show(big)
        out["unfinished_run_indexed_s"] = timed(big, index=True)
    for k, v in out.items():
        if k.endswith("_s"):
            print(f"  {k[:-2].replace('_', ' ')}: {v:.2f} s")
    print("goal: < 2 s")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
