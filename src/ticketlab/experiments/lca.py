"""`ticketlab lca`: train one network (dense, or a ticket given by `--mask`) and record its Loss Change
Allocation at every step (Lan, Liu, Zhou & Yosinski 2019; `ticketlab.instruments.lca`).

Each seed is one unit of the store (`seed-<s>/`, the class `LCA`): resumable (the recorder's records travel
in the fit's checkpoints), verified, skipped when done; seeds are independent and train side by side in
worker processes. The run folder gets `results.csv` (one row per seed and layer),
`summary.json` (`relative_error`, `fraction_helped`, per-layer totals, per-step error), and the plots
`lca_layers.png`, `lca_helped.png`, `lca_neurons.png`.
"""

from __future__ import annotations

import statistics

import torch

from .. import models, seeding
from ..errors import UserError
from ..instruments.lca import STEP_COLUMNS, LCARecorder
from ..io import CorruptFile, load_tensors
from ..report import plots
from ..results import Results, diverged_columns, is_diverged
from ..sparse import Mask
from ..store import Unit
from ..train.fit import Checkpoints
from ..train.jobs import Job
from ..run import Experiment, Report, Work, runner
from .common import Setup


from ..specs.lca import LCASettings, LCAOptions, LCASpec  # noqa: F401 (torch-free, for the CLI)


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


def heat_map_layer(settings: LCASettings, model, model_name: str) -> str:
    """The layer (module name) of the per-neuron heat map: `--lca-layer`, or the model's first; a name that
    is not a layer of the model is refused (by `lca` and by `lottery --lca true` alike)."""
    layers = [name.rsplit(".", 1)[0] for name, _ in model.named_parameters()]
    layer = settings.lca_layer or layers[0]
    if layer not in layers:
        raise UserError(f"--lca-layer {layer!r}: not a layer of {model_name}; valid: {', '.join(dict.fromkeys(layers))}")
    return layer


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


# ----------------------------------------------------------------------------------------------- units
class LCA(Experiment):
    """One unit per seed (`seed-<s>/`): the network (dense, or the `--mask` ticket) trained on [0, T) with
    the LCA recorder watching every step. The seeds are independent; LCA watches one model at a time, so
    nothing is stacked."""

    name = "lca"
    metrics = ("test_accuracy", "relative_error", "fraction_helped")
    stack_limit = 1

    def __init__(self, spec: LCASpec, setup: Setup):
        super().__init__(spec, setup)
        probe = setup.new_model_like()
        self.mask = load_mask(spec.options.mask, probe)
        self.layer = heat_map_layer(spec.lca, probe, spec.model.model)
        loss_set(spec.lca, setup)

    def units(self) -> list[Work]:
        return [Work(seed, cost=self.setup.total_steps, label=f"seed {seed} (LCA)") for seed in self.spec.options.seeds]

    def unit_of(self, seed) -> Unit:
        return self.run.unit(f"seed-{seed}")

    def prepare(self, seed) -> Job:
        setup, unit = self.setup, self.unit_of(seed)
        model = setup.build_model(seed)
        if self.mask is not None:
            self.mask.apply_(model)
        rec = recorder(self.spec.lca, setup, model, self.mask, unit)
        return Job(seed, model, seed, 0, setup.total_steps, setup.schedule, self.mask,
                   Checkpoints(unit, setup.step(self.spec.train.checkpoint_every)), callbacks=[rec])

    def finish(self, seed, job: Job, fitted, seconds: float) -> dict:
        (rec,) = job.callbacks
        if rec.stream_steps:
            rec.flush()
        files = recorder_files(rec)
        mask = self.mask
        result = {"seed": seed, **fitted.summary(), **files["lca_summary.json"],
                  "weights_remaining": mask.density() if mask else 1.0,
                  "gradient_evaluations": rec.probe.evaluations, "seconds": round(seconds, 3)}
        files.update({"final.safetensors": {k: v.detach().cpu() for k, v in job.model.state_dict().items()},
                      "metrics.jsonl": fitted.metrics, "result.json": result})
        if mask is not None:
            files["mask.safetensors"] = mask.to_tensors()
        return files   # the streamed parameters/ folder stays beside them

    # ----------------------------------------------------------------------------------------- report
    def describe(self, seed, job=None) -> dict:
        return {"seed": seed, "weights_remaining": self.mask.density() if self.mask else 1.0}

    def progress_lines(self, seed, result: dict, done: dict) -> list[str]:
        if is_diverged(result):
            return [f"seed {seed}: diverged ({result.get('diverged_reason')})"]
        return [f"seed {seed}: test accuracy {100 * result['test_accuracy']:.2f}%, "
                f"{100 * result['fraction_helped']:.1f}% of parameters help per step, "
                f"relative error {result['relative_error']:.2e}"]

    def report(self, results: dict) -> Report:
        spec, seeds = self.spec, list(self.spec.options.seeds)
        res = [results[s] for s in seeds]
        healthy = [s for s in seeds if not is_diverged(results[s])]   # a diverged seed stores no LCA
        lca = {s: self.unit_of(s).read("lca.safetensors") for s in healthy}
        layers = {s: self.unit_of(s).read("lca_layers.json") for s in healthy}
        rows = []
        for seed, result in zip(seeds, res):
            if seed not in layers:
                rows.append({"seed": seed, "layer": None, "lca": None, "hurts": None, "fraction_helped": None,
                             "relative_error": None, "test_accuracy": None, **diverged_columns(result)})
                continue
            for name in layers[seed]["layers"]:   # model order (JSON sorts the totals' keys)
                total = result["layer_totals"][name]
                rows.append({"seed": seed, "layer": name, "lca": total, "hurts": total > 0,
                             "fraction_helped": result["fraction_helped"], "relative_error": result["relative_error"],
                             "test_accuracy": result["test_accuracy"], **diverged_columns(result)})
        kept = [results[s] for s in healthy]
        mean = lambda column: statistics.fmean(r[column] for r in kept) if kept else None
        summary = {"experiment": spec.experiment, "seeds": seeds, "diverged": len(seeds) - len(healthy),
                   "relative_error": mean("relative_error"), "fraction_helped": mean("fraction_helped"),
                   "test_accuracy": mean("test_accuracy"), "by_seed": res}
        return Report(rows, summary, self.plots(healthy, lca, layers[healthy[0]]) if healthy else {})

    def plots(self, seeds: list, lca: dict, first_layers: dict) -> dict:
        spec, layer = self.spec, self.layer
        what = f"{spec.model.model} on {spec.data.dataset}" + (" (ticket)" if spec.options.mask else "")
        first = lca[seeds[0]]
        table, names, sizes = first["steps"], first_layers["layers"], first_layers["neurons"]
        steps = [int(s) for s in table[:, 0].tolist()]
        neurons = first["neurons"]
        bounds = torch.tensor([0, *sizes]).cumsum(0).tolist()
        by_layer = {n: neurons[:, bounds[i]:bounds[i + 1]].sum(1).tolist() for i, n in enumerate(names)}
        i = names.index(layer)
        return {"lca_layers.png": plots.lca_by_layer(steps, by_layer, f"{what}: LCA per layer (seed {seeds[0]})"),
                "lca_helped.png": plots.lca_fraction_helped(
                    steps, {f"seed {s}": lca[s]["steps"][:, 7].tolist() for s in seeds}, f"{what}: parameters helping"),
                "lca_neurons.png": plots.lca_neuron_heatmap(
                    neurons[:, bounds[i]:bounds[i + 1]].numpy(), layer, f"{what}: LCA per neuron of {layer} (seed {seeds[0]})")}


# ------------------------------------------------------------------------------------------------- run
def run(spec: LCASpec, *, out: str = "runs", force: bool = False, progress: bool | None = None,
        wait: bool = False) -> Results:
    """Run (or resume) the LCA experiment; returns one row per seed and layer."""
    return runner.run(LCA, spec, out=out, force=force, progress=progress, wait=wait)


EXPERIMENT = LCA   # what a sweep of this experiment runs
