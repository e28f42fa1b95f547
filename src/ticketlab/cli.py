"""The `ticketlab` command: one subcommand per experiment, plus `show`.

Every setting of an experiment is a flag (from its spec declaration); `--config FILE.toml` takes the
same settings from a file, and flags given as well override it. Bad input prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from . import spec as specs
from .errors import UserError
from .io import CorruptFile
from .results import Results

EXPERIMENTS = {
    "lottery": ("ticketlab.experiments.lottery", "LotterySpec",
                "iterative magnitude pruning with rewinding / fine-tuning / LR rewinding, and random controls"),
    "deconstruct": ("ticketlab.experiments.deconstruct", "DeconstructSpec",
                    "Zhou et al.'s grid: mask criteria x mask-1 actions (x mask-0 action) x seeds, and untrained supermasks"),
    "supermask": ("ticketlab.experiments.supermask", "SupermaskSpec",
                  "learned supermasks on frozen random weights: bernoulli (Zhou et al.) or edge-popup (Ramanujan et al.)"),
    "lca": ("ticketlab.experiments.lca", "LCASpec",
            "Loss Change Allocation: the loss change of every step split over parameters, neurons and layers"),
    "stability": ("ticketlab.experiments.stability", "StabilitySpec",
                  "linear mode connectivity: error barrier between two copies trained from step k, dense and tickets"),
    "earlybird": ("ticketlab.experiments.earlybird", "EarlyBirdSpec",
                  "early-bird tickets: BatchNorm-scale channel masks, FIFO mask-distance test, real channel pruning"),
}


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise UserError(f"{self.prog}: {message}")


def _experiment(name: str):
    import importlib
    module_name, spec_name, _ = EXPERIMENTS[name]
    module = importlib.import_module(module_name)
    return module, getattr(module, spec_name)


def build_parser() -> Parser:
    parser = Parser(prog="ticketlab", allow_abbrev=False,
                    description="Find, train and understand sparse subnetworks (lottery tickets). "
                                "Runs go to --out/<experiment>-<hash>/ and resume when run again.")
    parser.add_argument("--version", action="version", version=f"ticketlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, (_, _, help_text) in EXPERIMENTS.items():
        _, spec_cls = _experiment(name)
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        p.add_argument("--config", metavar="FILE.toml", help="read settings from a TOML file (flags override it)")
        p.add_argument("--out", default="runs", metavar="DIR", help="parent folder of run folders (default: runs)")
        p.add_argument("--force", action="store_true", help="discard an existing run folder of this spec and recompute")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        specs.add_arguments(p, spec_cls)
    show = sub.add_parser("show", help="print the results of a run folder again", allow_abbrev=False,
                          description="Print the results of a run folder (results.csv, or the finished units of an unfinished run).")
    show.add_argument("run_dir", metavar="RUN_DIR")
    show.add_argument("--format", choices=("table", "csv", "json"), default="table",
                      help="table (mean ± std per level and arm), csv or json (tidy rows) (default: table)")
    return parser


def show(run_dir: str, fmt: str) -> None:
    from . import store

    run = store.open_existing(run_dir)
    try:
        rows = run.read("results.csv")
        partial = False
    except CorruptFile:
        rows, partial = [], True
        for f in sorted(Path(run_dir).rglob("result.json")):
            unit = store.Unit(f.parent)
            if unit.is_done():
                rows.append(unit.read("result.json"))
        if not rows:
            raise UserError(f"{run_dir}: no finished results yet (results.csv missing or corrupt, no finished units)")
    rows = [_typed(r) for r in rows]
    if fmt == "csv":
        sys.stdout.write(Results(rows).to_csv())
    elif fmt == "json":
        print(json.dumps(rows, indent=2))
    else:
        experiment = run.read("spec.json").get("experiment")
        module = _experiment(experiment)[0] if experiment in EXPERIMENTS else None
        print("\n".join(module.table(rows)) if hasattr(module, "table") else _aligned(rows))
    if partial and fmt == "table":
        print("(unfinished run: finished units only)")


def _aligned(rows: list[dict]) -> str:
    """Any tidy table as aligned text columns (numbers to 4 significant digits)."""
    columns = Results(rows).columns
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))
    table = [columns] + [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(line, widths)) for line in table)


def _typed(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        if isinstance(v, str):
            for cast in (int, float):
                try:
                    v = cast(v)
                    break
                except ValueError:
                    pass
        out[k] = v
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.command == "show":
            show(args.run_dir, args.format)
            return 0
        module, spec_cls = _experiment(args.command)
        spec = specs.from_arguments(spec_cls, args, args.config)
        module.run(spec, out=args.out, force=args.force, progress=False if args.no_progress else None)
        return 0
    except UserError as e:
        print(f"ticketlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ticketlab: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
