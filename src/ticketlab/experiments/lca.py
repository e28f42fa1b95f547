"""`ticketlab lca`: train one network (dense, or a ticket given by `--mask`) and record its Loss Change
Allocation at every step (Lan, Liu, Zhou & Yosinski 2019; `ticketlab.instruments.lca`).

Each seed is one unit of the store (`seed-<s>/`): resumable (the recorder's records travel in the fit's
checkpoints), verified, skipped when done. The run folder gets `results.csv` (one row per seed and layer),
`summary.json` (`relative_error`, `fraction_helped`, per-layer totals, per-step error), and the plots
`lca_layers.png`, `lca_helped.png`, `lca_neurons.png`.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .. import models, seeding
from ..errors import UserError
from ..instruments.lca import STEP_COLUMNS, LCARecorder
from ..io import CorruptFile, load_tensors
from ..report import plots
from ..report.progress import Bars
from ..results import Results
from ..sparse import Mask
from ..spec import DataSpec, Float, Int, ListOf, ModelSpec, Text, TrainSpec, setting
from ..store import Run, Unit
from ..train import fit
from ..train.fit import Checkpoints
from .common import Setup


@dataclass(frozen=True)
class LCASettings:
    """How Loss Change Allocation is measured (Lan et al. 2019)."""

    lca_points: int = setting(2, "Simpson intervals n of the path integral to start with (even; 2 = the paper's RK4)", Int(2))
    lca_max_points: int = setting(32, "largest n the adaptive doubling may reach (n = --lca-points: no doubling)", Int(2))
    lca_tolerance: float = setting(1e-3, "n doubles while |sum of LCA - true loss change| of a step exceeds this", Float(0, None, low_open=True))
    lca_subset: int = setting(0, "measure the loss on this many training samples (a fixed seeded subset; 0: the full training set)", Int(0))
    lca_parameter_chunk: int = setting(0, "also stream the per-parameter LCA of every step to disk, in files of this many steps (0: per-parameter totals only)", Int(0))
    lca_layer: str = setting("", "layer (module name) of the per-neuron heat map (default: the first)", Text(), hashed=False)

    def check(self) -> None:
        for name, n in (("--lca-points", self.lca_points), ("--lca-max-points", self.lca_max_points)):
            if n not in (2, 4, 8, 16, 32, 64, 128):
                raise UserError(f"{name} {n}: must be a power of two from 2 to 128 (Simpson's rule, doubled adaptively)")
        if self.lca_max_points < self.lca_points:
            raise UserError(f"--lca-max-points {self.lca_max_points} is below --lca-points {self.lca_points}")


@dataclass(frozen=True)
class LCAOptions:
    """What is trained: a dense network or a ticket from a lottery run."""

    mask: str = setting("", "a ticket's mask.safetensors (e.g. RUN_DIR/seed-0/level-05/ticket/mask.safetensors); empty: dense", Text())
    seeds: tuple = setting((0,), "replicates, e.g. 0,1,2 (each seed is kept in its own folder)", ListOf(Int(0), unique=True), hashed=False)


@dataclass(frozen=True)
class LCASpec:
    experiment: ClassVar[str] = "lca"
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    lca: LCASettings = field(default_factory=LCASettings)
    options: LCAOptions = field(default_factory=LCAOptions)

    def validate(self) -> None:
        self.lca.check()


# ------------------------------------------------------------------------------------------ shared pieces
def loss_set(settings: LCASettings, setup: Setup) -> tuple[torch.Tensor, torch.Tensor]:
    """The training samples the LCA loss is measured on: all of them, or a fixed seeded subset."""
    x, y = setup.data.train_x, setup.data.train_y
    if settings.lca_subset:
        if settings.lca_subset > len(y):
            raise UserError(f"--lca-subset {settings.lca_subset} is larger than the training set ({len(y)} samples)")
        idx = torch.randperm(len(y), generator=seeding.generator("lca/subset", settings.lca_subset))[:settings.lca_subset]
        idx = idx.sort().values.to(x.device)
        x, y = x.index_select(0, idx), y.index_select(0, idx)
    return x, y


def recorder(settings: LCASettings, setup: Setup, model, mask: Mask | None = None, unit: Unit | None = None) -> LCARecorder:
    """The `fit` callback recording LCA for `model` (what `--lca` on any training run attaches). With
    `--lca-parameter-chunk` and a unit, per-parameter rows go to `<unit>/parameters/steps-<a>-<b>.safetensors`
    (`lca`: [steps, parameters] in `parameters()` order, and `step`: the step numbers)."""
    x, y = loss_set(settings, setup)
    stream = None
    if settings.lca_parameter_chunk and unit is not None:
        target = unit.unit("parameters")

        def stream(first: int, last: int, rows: torch.Tensor) -> None:
            target.write(f"steps-{first:07d}-{last:07d}.safetensors", {"lca": rows, "step": torch.arange(first, last + 1)})

    return LCARecorder(model, x, y, mask=mask, points=settings.lca_points, max_points=settings.lca_max_points,
                       tolerance=settings.lca_tolerance, chunk=setup.spec.train.eval_batch_size,
                       stream=stream, stream_steps=settings.lca_parameter_chunk)


def recorder_files(rec: LCARecorder) -> dict:
    """The files a unit stores for a recorder: tensors, the per-step table and the summary."""
    table = rec.step_table()
    steps = [dict(zip(STEP_COLUMNS, row)) for row in table.tolist()]
    for row, layer_row in zip(steps, rec.layer_table().tolist()):
        row["step"], row["points"] = int(row["step"]), int(row["points"])
        row.update({f"lca[{name}]": v for name, v in zip(rec.layers, layer_row)})
    tensors = {"steps": table, "neurons": rec.neuron_table(),
               **{f"total.{k}": v for k, v in rec.parameter_totals().items()}}
    return {"lca.safetensors": tensors, "lca_steps.csv": steps,
            "lca_layers.json": {"layers": rec.layers, "neurons": rec.neurons}, "lca_summary.json": rec.summary()}


def load_mask(path: str, model) -> Mask | None:
    if not path:
        return None
    try:
        tensors = load_tensors(path)
    except CorruptFile as e:
        raise UserError(f"--mask: {e} (expected a ticket's mask.safetensors)") from None
    prunable = models.prunable_names(model)
    unknown = sorted(set(tensors) - set(prunable))
    if unknown:
        raise UserError(f"--mask {path}: entries {', '.join(unknown)} are not prunable weights of this model; valid: {', '.join(prunable)}")
    return Mask(Mask.from_tensors(tensors, model).tensors, prunable)


# ------------------------------------------------------------------------------------------------- run
def run(spec: LCASpec, *, out: str = "runs", force: bool = False, progress: bool | None = None) -> Results:
    setup = Setup.prepare(spec)
    probe = setup.new_model_like()
    mask = load_mask(spec.options.mask, probe)
    layers = [name.rsplit(".", 1)[0] for name, _ in probe.named_parameters()]
    layer = spec.lca.lca_layer or layers[0]
    if layer not in layers:
        raise UserError(f"--lca-layer {layer!r}: not a layer of {spec.model.model}; valid: {', '.join(dict.fromkeys(layers))}")
    loss_set(spec.lca, setup)
    run_folder = Run.open(out, spec, force=force)
    rows, per_seed = [], {}
    with Bars(progress) as bars:
        bars.print(f"run folder: {run_folder.path}")
        for seed in spec.options.seeds:
            per_seed[seed] = train_seed(spec, setup, run_folder, seed, mask, bars)
            result = per_seed[seed]["result"]
            bars.print(f"seed {seed}: test accuracy {100 * result['test_accuracy']:.2f}%, "
                       f"{100 * result['fraction_helped']:.1f}% of parameters help per step, "
                       f"relative error {result['relative_error']:.2e}")
            for name in per_seed[seed]["layers"]["layers"]:   # model order (JSON sorts the totals' keys)
                total = result["layer_totals"][name]
                rows.append({"seed": seed, "layer": name, "lca": total, "hurts": total > 0,
                             "fraction_helped": result["fraction_helped"], "relative_error": result["relative_error"],
                             "test_accuracy": result["test_accuracy"]})
    results = Results(rows)
    write_outputs(run_folder, spec, results, per_seed, layer)
    return results


def train_seed(spec: LCASpec, setup: Setup, run_folder: Run, seed: int, mask: Mask | None, bars: Bars) -> dict:
    unit = run_folder.unit(f"seed-{seed}")
    if unit.is_done():
        try:
            return {"result": unit.read("result.json"), "lca": unit.read("lca.safetensors"),
                    "layers": unit.read("lca_layers.json")}
        except CorruptFile:
            pass
    model = setup.build_model(seed)
    if mask is not None:
        mask.apply_(model)
    rec = recorder(spec.lca, setup, model, mask, unit)
    task = bars.add(f"seed {seed} (LCA)", setup.total_steps)
    began = time.perf_counter()
    fitted = fit(model, setup.data, spec.train, seed=seed, start=0, end=setup.total_steps, schedule=setup.schedule,
                 mask=mask, checkpoints=Checkpoints(unit, setup.step(spec.train.checkpoint_every)),
                 progress=lambda n: bars.set(task, n), callbacks=rec)
    bars.progress.remove_task(task)
    if rec.stream_steps:
        rec.flush()
    files = recorder_files(rec)
    summary = files["lca_summary.json"]
    result = {"seed": seed, **fitted.summary(), **summary, "weights_remaining": mask.density() if mask else 1.0,
              "gradient_evaluations": rec.probe.evaluations, "seconds": round(time.perf_counter() - began, 3)}
    files.update({"final.safetensors": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                  "metrics.jsonl": fitted.metrics, "result.json": result})
    if mask is not None:
        files["mask.safetensors"] = mask.to_tensors()
    unit.commit(files, clear=False)   # keeps the streamed parameters/ folder
    unit.clear_checkpoint()
    return {"result": result, "lca": files["lca.safetensors"], "layers": files["lca_layers.json"]}


def write_outputs(run_folder: Run, spec: LCASpec, results: Results, per_seed: dict, layer: str) -> None:
    seeds = list(per_seed)
    res = [per_seed[s]["result"] for s in seeds]
    what = f"{spec.model.model} on {spec.data.dataset}" + (" (ticket)" if spec.options.mask else "")
    summary = {"experiment": spec.experiment, "seeds": seeds,
               "relative_error": statistics.fmean(r["relative_error"] for r in res),
               "fraction_helped": statistics.fmean(r["fraction_helped"] for r in res),
               "test_accuracy": statistics.fmean(r["test_accuracy"] for r in res),
               "by_seed": res}
    run_folder.write("results.csv", results.rows)
    run_folder.write("results.json", results.rows)
    run_folder.write("summary.json", summary)
    first = per_seed[seeds[0]]
    table, names, sizes = first["lca"]["steps"], first["layers"]["layers"], first["layers"]["neurons"]
    steps = [int(s) for s in table[:, 0].tolist()]
    neurons = first["lca"]["neurons"]
    bounds = torch.tensor([0, *sizes]).cumsum(0).tolist()
    by_layer = {n: neurons[:, bounds[i]:bounds[i + 1]].sum(1).tolist() for i, n in enumerate(names)}
    run_folder.write("lca_layers.png", plots.lca_by_layer(steps, by_layer, f"{what}: LCA per layer (seed {seeds[0]})"))
    run_folder.write("lca_helped.png", plots.lca_fraction_helped(
        steps, {f"seed {s}": per_seed[s]["lca"]["steps"][:, 7].tolist() for s in seeds}, f"{what}: parameters helping"))
    i = names.index(layer)
    run_folder.write("lca_neurons.png", plots.lca_neuron_heatmap(
        neurons[:, bounds[i]:bounds[i + 1]].numpy(), layer, f"{what}: LCA per neuron of {layer} (seed {seeds[0]})"))
