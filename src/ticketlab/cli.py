"""The `ticketlab` command: one subcommand per experiment, plus `show`.

Every setting of an experiment is a flag (from its spec declaration); `--config FILE.toml` takes the
same settings from a file, and flags given as well override it.

Exit codes: 0 done; 2 bad input (a bad flag or setting, an `--out` that is a file, a run folder another
command is writing); 3 a fault of the machine or its files (no permission, a read-only file system, a full
disk, a file of a run folder that cannot be trusted); 130 interrupted; 1 a bug (the traceback, and a line
asking to report it). Every expected failure is one line, `ticketlab: error: ...`, naming the path and
what to do.

Start-up is kept free of torch: the subcommands are a table (`COMMANDS`), `ticketlab --help` lists it
without importing anything, only the subcommand being parsed gets its flags (an experiment's flags come
from its torch-free spec class in `ticketlab.specs`), and the experiment module, which imports torch, is
imported only when the experiment actually runs. `show` reads run folders without torch too.

Adding a subcommand: put a `Command(help, arguments, action)` into `COMMANDS`. `arguments(parser)` adds
its flags (import what it needs inside: it is called only when that subcommand is parsed, or for
`build_parser()`); `action(args)` does the work and returns the exit code (or None for 0); raise
`UserError` for bad input. An experiment is one `experiment(...)` line.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, NamedTuple

from . import __version__
from .errors import UserError


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise UserError(f"{self.prog}: {message}")


class Command(NamedTuple):  # NamedTuple, not a dataclass: importing dataclasses costs ~20 ms
    """One subcommand: its help line, how its flags are added, and what it does."""

    help: str
    arguments: Callable[[Parser], None]
    action: Callable[[argparse.Namespace], int | None]
    description: str | None = None  # of `ticketlab NAME --help` (default: the help line)


class Experiment(NamedTuple):
    """Where an experiment lives: its spec class (torch-free, `module:Class`) and its run module (torch)."""

    name: str
    spec: str
    module: str
    help: str

    def spec_class(self) -> type:
        module, _, cls = self.spec.partition(":")
        return getattr(importlib.import_module(module), cls)

    def run_module(self):
        return importlib.import_module(self.module)


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment("lottery", "ticketlab.specs.lottery:LotterySpec", "ticketlab.experiments.lottery",
               "iterative magnitude pruning with rewinding / fine-tuning / LR rewinding, and random controls"),
    Experiment("deconstruct", "ticketlab.specs.deconstruct:DeconstructSpec", "ticketlab.experiments.deconstruct",
               "Zhou et al.'s grid: mask criteria x mask-1 actions (x mask-0 action) x seeds, and untrained supermasks"),
    Experiment("supermask", "ticketlab.specs.supermask:SupermaskSpec", "ticketlab.experiments.supermask",
               "learned supermasks on frozen random weights: bernoulli (Zhou et al.) or edge-popup (Ramanujan et al.)"),
    Experiment("lca", "ticketlab.specs.lca:LCASpec", "ticketlab.experiments.lca",
               "Loss Change Allocation: the loss change of every step split over parameters, neurons and layers"),
    Experiment("stability", "ticketlab.specs.stability:StabilitySpec", "ticketlab.experiments.stability",
               "linear mode connectivity: error barrier between two copies trained from step k, dense and tickets"),
    Experiment("earlybird", "ticketlab.specs.earlybird:EarlyBirdSpec", "ticketlab.experiments.earlybird",
               "early-bird tickets: BatchNorm-scale channel masks, FIFO mask-distance test, real channel pruning"),
    Experiment("forget", "ticketlab.specs.forget:ForgetSpec", "ticketlab.experiments.forget",
               "forget and relearn: generations of later-layer forgetting, knowledge evolution, random or IMP-style "
               "forgetting against a long training; targeted-forgetting probes"),
    Experiment("lr-range", "ticketlab.specs.lr_range:LRRangeSpec", "ticketlab.experiments.lr_range",
               "LR range test (Smith 2017): the rate rises over a short training, loss vs rate, the suggested range"),
    Experiment("prune-at-init", "ticketlab.specs.prune_at_init:PruneAtInitSpec", "ticketlab.experiments.prune_at_init",
               "pruning at initialisation: SNIP, GraSP, SynFlow, random, magnitude, with reshuffle / reinit controls, "
               "beside IMP tickets (--compare RUN)"),
    Experiment("referential", "ticketlab.specs.referential:ReferentialSpec", "ticketlab.experiments.referential",
               "the referential game alone (sender/receiver, topographic similarity) with and without forgetting; "
               "also `forget --task referential-game`"),
    Experiment("sparse-train", "ticketlab.specs.sparse_train:SparseTrainSpec", "ticketlab.experiments.sparse_train",
               "pruning during training: gradual magnitude pruning (gmp), SET and RigL at given final densities"),
)}


def _experiment(name: str):
    """`(run module, spec class)` of an experiment; imports the run module, so torch."""
    e = EXPERIMENTS[name]
    return e.run_module(), e.spec_class()


# ------------------------------------------------------------------------------------------ experiments
def add_run_arguments(parser: Parser) -> None:
    """The flags every experiment run takes besides its settings."""
    parser.add_argument("--config", metavar="FILE.toml",
                        help="read settings from a TOML file of at most 1 MiB, flat or under their tables ([train], ...), with "
                             "TOML types (levels = 2, not \"2\"); flags override it")
    parser.add_argument("--preset", metavar="NAME",
                        help="start from a paper's settings (`ticketlab presets` lists them); --config and flags override "
                             "them, and the run folder depends only on the settings the command ends with")
    parser.add_argument("--out", default="runs", metavar="DIR", help="parent folder of run folders (default: runs)")
    parser.add_argument("--force", action="store_true", help="discard an existing run folder of this spec and recompute")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--wait", action="store_true",
                        help="if another command is writing the same run folder, wait for it to end (default: refuse at once)")


def experiment_command(e: Experiment) -> Command:
    def arguments(parser: Parser) -> None:
        from . import spec as specs

        add_run_arguments(parser)
        specs.add_arguments(parser, e.spec_class())

    def action(args: argparse.Namespace) -> int:
        from . import spec as specs

        spec = specs.from_arguments(e.spec_class(), args, args.config)  # validated before torch is imported
        e.run_module().run(spec, out=args.out, force=args.force, progress=False if args.no_progress else None,
                           wait=args.wait)
        return 0

    return Command(e.help, arguments, action)


# ------------------------------------------------------------------------------------------------- show
SHOW_HELP = "print the results of a run folder again"


def show_arguments(parser: Parser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table",
                        help="table (mean ± std per level and arm), csv or json (tidy rows) (default: table)")


def show(run_dir: str, fmt: str) -> None:
    import json
    from pathlib import Path

    from . import store
    from .io import CorruptFile, finite
    from .report import gather
    from .report.tables import TABLES
    from .results import Results

    run = store.open_existing(run_dir)
    try:
        record = run.read("spec.json")
    except CorruptFile:
        record = None
    points = record.get("points") if isinstance(record, dict) and record.get("experiment") == "sweep" else None
    if isinstance(points, list) and not (Path(run_dir) / "results.csv").exists():
        rows, partial = gather.sweep_rows(Path(run_dir), points)   # a sweep still running (or killed)
    else:
        rows, partial = gather.run_rows(Path(run_dir))
    if not rows:
        raise UserError(f"{run_dir}: no finished results yet (results.csv missing or corrupt, no finished units)")
    rows = _typed(rows)
    if fmt == "csv":
        sys.stdout.write(Results(rows).to_csv())
    elif fmt == "json":
        print(json.dumps(finite(rows), indent=2, allow_nan=False))   # strict JSON: a "nan" cell becomes null
    else:
        try:
            experiment = run.read("spec.json").get("experiment")
        except CorruptFile as e:   # edited by hand, say: the rows are still checked, only the table's layout is lost
            if not partial:   # (an unfinished run says so below)
                print(f"ticketlab: note: {e}; plain columns shown (the run's command, run again, rewrites it)", file=sys.stderr)
            experiment = None
        except AttributeError:
            experiment = None
        table = TABLES.get(experiment)
        lines = None
        if table:
            try:
                lines = table(rows)
            except (KeyError, TypeError, ValueError):
                if not partial:
                    raise
                lines = None   # units' rows lack columns the experiment's table needs: plain columns instead
        print("\n".join(lines) if lines is not None else _aligned(rows))
    if partial:
        note = "(unfinished run: finished units only)"
        if fmt == "table":
            print(note)
        else:   # csv and json stay machine-readable
            print(f"ticketlab: {note}", file=sys.stderr)


def _aligned(rows: list[dict]) -> str:
    """Any tidy table as aligned text columns (numbers to 4 significant digits); the `diverged` column reads
    "diverged" for a unit that diverged (its numbers are empty) and is blank otherwise."""
    from .results import Results, is_diverged

    columns = [c for c in Results(rows).columns if not any(isinstance(r.get(c), (list, dict)) for r in rows)]
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))
    table = [columns] + [[("diverged" if is_diverged(r) else "") if c == "diverged" else cell(r.get(c)) for c in columns]
                         for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(line, widths)) for line in table)


def _typed(rows: list[dict]) -> list[dict]:
    """The rows with every text cell that is a number as that number (an int, else a float); other cells as
    they are. Each distinct text is converted once: a sweep's 100,000 rows repeat most of their cells."""
    numbers: dict[str, object] = {}

    def number(text: str):
        for cast in (int, float):
            try:
                return cast(text)
            except ValueError:
                pass
        return text

    def typed(v):
        if not isinstance(v, str):
            return v
        out = numbers.get(v, numbers)   # the dict itself: not seen yet
        if out is numbers:
            out = numbers[v] = number(v)
        return out

    return [{k: typed(v) for k, v in row.items()} for row in rows]


# ------------------------------------------------------------------------------------------------ sweep
SWEEP_HELP = "run one experiment over a grid of settings: every point a run folder, all units in one task graph"
SWEEP_DESCRIPTION = (SWEEP_HELP + ". SWEEP.toml names `experiment`, its [base] settings and the axes: [grid] "
                     "(every combination) and [zip] (lists of equal length, taken together); see examples/. Setting flags "
                     "after the file (--seeds 0,1 --data-dir D --executor ray ...) override [base] for every point; "
                     "[base] (or the top of the file) may name a preset = \"NAME\", under its settings, and --preset "
                     "NAME after the file replaces it.")


def sweep_arguments(parser: Parser) -> None:
    parser.add_argument("file", metavar="SWEEP.toml")
    parser.add_argument("settings", nargs=argparse.REMAINDER, metavar="--SETTING VALUE",
                        help="the experiment's setting flags, and --out DIR (default: runs), --force, --no-progress, --wait")


def sweep_overrides(words: list[str], spec_cls) -> tuple[dict, dict]:
    """(runner options, {setting: text}) from the words after the sweep file."""
    from . import spec as specs

    by_flag = {s.flag: s.name for s in specs.settings_of(spec_cls)}
    options, settings, i = {"out": "runs", "force": False, "no_progress": False, "wait": False, "preset": None}, {}, 0
    while i < len(words):
        word = words[i]
        flag, eq, value = word.partition("=")
        if flag in ("--force", "--no-progress", "--wait") and not eq:
            options[flag[2:].replace("-", "_")] = True
            i += 1
            continue
        if not flag.startswith("--") or (flag not in ("--out", "--preset") and flag not in by_flag):
            raise UserError(f"sweep: unknown option {word!r}; valid: --out, --preset, --force, --no-progress, --wait, "
                            f"{', '.join(sorted(by_flag))}")
        if not eq:
            if i + 1 >= len(words):
                raise UserError(f"sweep: {flag} needs a value")
            value, i = words[i + 1], i + 1
        i += 1
        if flag in ("--out", "--preset"):
            options[flag[2:]] = value
        else:
            settings[by_flag[flag]] = value
    return options, settings


def sweep_action(args: argparse.Namespace) -> int:
    from .run import sweep as sweeps

    doc_experiment = sweeps.read_file(args.file).get("experiment")
    if doc_experiment not in EXPERIMENTS:
        raise UserError(f"{args.file}: experiment = {doc_experiment!r} is not an experiment; valid: {', '.join(sorted(EXPERIMENTS))}")
    options, settings = sweep_overrides(args.settings, EXPERIMENTS[doc_experiment].spec_class())
    sweep = sweeps.load(args.file, {doc_experiment: EXPERIMENTS[doc_experiment].spec_class()}, settings,
                        preset=options["preset"])
    results, folder = sweeps.run(sweep, out=options["out"], force=options["force"],
                                 progress=False if options["no_progress"] else None, wait=options["wait"])
    print(f"sweep folder: {folder} ({len(sweep.points)} points, {len(results)} rows)")
    return 0


# ----------------------------------------------------------------------------------------------- report
REPORT_HELP = "one self-contained HTML page of every figure of run or sweep folders (several: overlaid to compare)"
REPORT_DESCRIPTION = (REPORT_HELP + ". The page opens with a summary table, then each experiment's figures (accuracy "
                      "vs weights remaining with spread bands, training curves per level, per-layer sparsity, LCA, "
                      "error barriers, early-bird mask distances, sweep curves per axis, ...); several runs share axes, "
                      "the legend naming the settings in which they differ. Figures are embedded: the file opens "
                      "without a network. An unfinished run shows its finished units and says what is missing.")


def report_arguments(parser: Parser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="a run folder (runs/lottery-<hash>) or a sweep folder; several to compare")
    parser.add_argument("--out", default="report.html", metavar="FILE", help="the HTML file to write (default: report.html)")


def report_action(args: argparse.Namespace) -> int:
    from .report import html

    target = html.write(args.paths, args.out)
    print(f"report: {target}")
    return 0


# ----------------------------------------------------------------------------------------------- export
EXPORT_HELP = ("write one ticket of a lottery or early-bird run, or a forget run's ke fit hypothesis (slim network), "
               "as a compact file (safetensors, CSR weights) or as ONNX")
EXPORT_DESCRIPTION = (EXPORT_HELP + ". safetensors: per pruned layer only the kept weights and their indices (CSR), the "
                      "other tensors as they are, and metadata (model and its arguments, the data set's normalisation, "
                      "run hash, seed, level, arm, density); read it with ticketlab.load_ticket(FILE). An early-bird "
                      "ticket of a network with BatchNorm is the smaller dense network, and so is the kels fit hypothesis of a "
                      "forget run's ke generation (--method ke --generation G: the kept units alone, i.e. the full "
                      "network with its non-kept weights zeroed, not the full network). onnx: the dense (or smaller) "
                      "network, checked with onnxruntime on the run's test set (pip install 'ticketlab[export]').")


def export_arguments(parser: Parser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="a lottery, earlybird or forget run folder")
    parser.add_argument("--seed", type=int, required=True, help="the seed of the ticket")
    parser.add_argument("--level", type=int, help="lottery runs: the pruning level (0 = the dense network)")
    parser.add_argument("--arm", default="ticket", help="lottery runs: ticket (default) or a control (random_reinit, ...)")
    parser.add_argument("--ratio", type=float, metavar="P", help="early-bird runs: the prune ratio of the ticket")
    parser.add_argument("--method", metavar="M", help="forget runs: ke (default; the only method whose kept part, "
                        "--split-mode kels, is a slim network)")
    parser.add_argument("--generation", type=int, metavar="G", help="forget runs: the generation whose final weights give "
                        "the fit hypothesis (0 = the plain training)")
    parser.add_argument("--format", choices=("safetensors", "onnx"), default="safetensors",
                        help="safetensors (compact, CSR weights; default) or onnx (dense weights)")
    parser.add_argument("--out", metavar="FILE", help="the file to write (default: <run folder>-seed-S-level-LL-<arm>.<format> here; "
                        "forget: ...-seed-S-ke-gen-GG.<format>)")
    parser.add_argument("--data-dir", metavar="DIR", help="the data folder, if not the run's --data-dir (the test set checks the file)")
    parser.add_argument("--check-samples", type=int, default=0, metavar="N",
                        help="check the file on the first N test samples only (default 0: the whole test set)")


def export_action(args: argparse.Namespace) -> int:
    if args.level is not None and args.level < 0:
        raise UserError(f"--level {args.level}: levels are 0 or more")
    if args.generation is not None and args.generation < 0:
        raise UserError(f"--generation {args.generation}: generations are 0 or more")
    if args.check_samples < 0:
        raise UserError(f"--check-samples {args.check_samples}: must be 0 (all) or more")
    from .export import ONNX_TOLERANCE, export

    r = export(args.run_dir, seed=args.seed, level=args.level, arm=args.arm, ratio=args.ratio, fmt=args.format,
               out=args.out, data_dir=args.data_dir, check_samples=args.check_samples, method=args.method,
               generation=args.generation)
    if "widths" in r:
        slim = "; ".join(f"{k} {','.join(str(v) for v in vs)}" for k, vs in r["widths"].items())
        print(f"kels fit hypothesis: a slim {r['model']} ({slim}); it equals the full network with its non-kept weights "
              f"zeroed within {r['max_difference_fit']:.3g} on {r['samples']} test inputs (not the full network itself)")
    print(f"exported {r['what']} of {args.run_dir} ({r['model']} on {r['dataset']}, {100 * r['density']:.3g}% weights "
          f"remaining) to {r['file']}: {r['bytes'] / 1e3:.1f} kB (the unpruned network in float32: {r['dense_bytes'] / 1e3:.1f} kB)")
    if r["format"] == "onnx":
        print(f"onnxruntime check: max |difference| to PyTorch {r['max_difference']:.3g} over {r['samples']} test inputs "
              f"(limit {ONNX_TOLERANCE:g})")
    else:
        sparse = f", {r['max_difference_sparse']:.3g} with sparse=True" if "max_difference_sparse" in r else ""
        print(f"check: load_ticket({r['file']}) gives the run's network's outputs on {r['samples']} test inputs "
              f"within {r['max_difference']:.3g}{sparse}")
    return 0


# --------------------------------------------------------------------------------------------- presets
PRESETS_HELP = "list the paper presets (--preset NAME): their settings, source and the published figure"


def presets_action(args: argparse.Namespace) -> int:
    from . import presets

    print(presets.listing())
    return 0


# --------------------------------------------------------------------------------------------- the table
COMMANDS: dict[str, Command] = {
    **{name: experiment_command(e) for name, e in EXPERIMENTS.items()},
    "sweep": Command(SWEEP_HELP, sweep_arguments, sweep_action, SWEEP_DESCRIPTION),
    "presets": Command(PRESETS_HELP, lambda parser: None, presets_action),
    "export": Command(EXPORT_HELP, export_arguments, export_action, EXPORT_DESCRIPTION),
    "show": Command(SHOW_HELP, show_arguments, lambda args: show(args.run_dir, args.format),
                    "Print the results of a run folder (results.csv, or the finished units of an unfinished run)."),
    "report": Command(REPORT_HELP, report_arguments, report_action, REPORT_DESCRIPTION),
}


# ------------------------------------------------------------------------------------------------ parser
def build_parser(commands=None) -> Parser:
    """The parser; only the subcommands in `commands` get their flags (None: all of them). Every
    subcommand is listed in `ticketlab --help` either way."""
    parser = Parser(prog="ticketlab", allow_abbrev=False,
                    description="Find, train and understand sparse subnetworks (lottery tickets). "
                                "Runs go to --out/<experiment>-<hash>/ and resume when run again.")
    parser.add_argument("--version", action="version", version=f"ticketlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.description or command.help, allow_abbrev=False)
        if commands is None or name in commands:
            command.arguments(p)
    return parser


def _command_in(argv: list[str]) -> str | None:
    """The subcommand named on a command line: its first word that is not an option (the top-level
    options take no values)."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word
    return None


EXIT_OK, EXIT_BUG, EXIT_INPUT, EXIT_FAULT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
REPORT_BUG = ("ticketlab: this is a bug in ticketlab, not a problem with your input: please report it with the "
              "command and the traceback above")


def main(argv: list[str] | None = None) -> int:
    """The command; returns the exit code (see the module's docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser(commands={_command_in(argv)})
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_INPUT
        return COMMANDS[args.command].action(args) or EXIT_OK
    except UserError as e:
        return _error(e, EXIT_INPUT)
    except KeyboardInterrupt:
        print("ticketlab: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception as e:
        return _failure(e)


def _error(message, code: int) -> int:
    text = str(message) or type(message).__name__
    if "\n" in text or "\r" in text:
        text = " ".join(text.split())   # one line, whatever the message holds
    print(f"ticketlab: error: {text}", file=sys.stderr)
    return code


def _failure(e: Exception) -> int:
    """An exception other than bad input: a fault of the machine or of a file (one line, exit 3), else a bug
    (the traceback and a line asking to report it, exit 1)."""
    from .errors import Fault, os_fault

    if isinstance(e, Fault):
        return _error(e, EXIT_FAULT)
    if isinstance(e, OSError) and _is_fault(e):
        return _error(os_fault(e), EXIT_FAULT)
    io = sys.modules.get("ticketlab.io")   # raised only once it is imported (importing it costs safetensors)
    if io is not None and isinstance(e, io.CorruptFile):
        return _error(f"{e}; this file cannot be trusted and was not used: delete it (or its run folder) and run "
                      f"the same command again to recompute it, or rerun with --force", EXIT_FAULT)
    import traceback

    traceback.print_exc()
    print(REPORT_BUG, file=sys.stderr)
    return EXIT_BUG


def _is_fault(e: OSError) -> bool:
    """An OSError of the machine or of a path the user gave (a full disk, no permission, a read-only file
    system, a file where a folder belongs), as opposed to one a bug causes (a missing file it expected)."""
    import errno

    if isinstance(e, (PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError)):
        return True
    return errno.errorcode.get(e.errno or 0) in {
        "ENOSPC", "EDQUOT", "EROFS", "EFBIG", "EIO", "ENAMETOOLONG", "ELOOP", "EMFILE", "ENFILE", "ENOLCK",
        "ESTALE", "EXDEV", "ENXIO", "ENODEV", "EBUSY", "ETXTBSY", "ENOMEM"}


if __name__ == "__main__":
    sys.exit(main())
