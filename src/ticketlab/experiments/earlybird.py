"""`ticketlab earlybird`: Early-Bird tickets (You et al. 2020, "Drawing Early-Bird Tickets").

Search: the dense network trains with an L1 penalty s * sum |gamma| on its BatchNorm scales (added to the
gradients, as Network Slimming does); at the end of every epoch a channel mask is cut from |gamma| with one
global threshold for every pruning ratio p at once (networks without BatchNorm: unstructured global
magnitude masks over the prunable weights, no penalty). The last `--eb-window` masks of each p sit in a
FIFO; an early bird is declared at the first epoch whose mask is within `--eb-epsilon` (normalised
Hamming distance) of each of the older ones. The search stops when every p has its early bird, unless
`--eb-full-matrix` (train to the end, recording every epoch's mask for the distance matrix).

Ticket: the network at its early-bird epoch, channels pruned for real (`mnist1d_cnn_bn`: a smaller dense
network, `ticketlab.instruments.channel_prune`; MLPs: the magnitude mask, kept by re-masking), retrained
for the whole training length from those weights. Cost, against full training of the dense network +
pruning + the same retraining: FLOPs (3 x forward FLOPs per sample x samples) and wall time (the search's
measured seconds per step scaled to the full length).

Units: `seed-<s>/search` (checkpointed; the masks travel in the checkpoints), `seed-<s>/p-<p>` (a retrained
ticket), `seed-<s>/epoch-<e>` (tickets drawn at every epoch, with `--eb-every-epoch`).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from .. import models
from ..errors import UserError
from ..instruments import channel_prune
from ..instruments.mask_distance import EarlyBird, bn_layers, distance_matrix, global_mask, scores
from ..io import CorruptFile
from ..report import plots
from ..report.progress import Bars
from ..results import Results
from ..sparse import Mask
from ..spec import Bool, DataSpec, Float, Int, ListOf, ModelSpec, TrainSpec, setting
from ..store import Run, Unit
from ..train import fit
from ..train.fit import Checkpoints
from .common import Setup


@dataclass(frozen=True)
class EarlyBirdOptions:
    """The early-bird search and the tickets it yields."""

    prune_ratios: tuple = setting((0.3, 0.5, 0.7), "fractions p of channels (or weights, without BatchNorm) pruned; several at once",
                                  ListOf(Float(0, 1, low_open=True, high_open=True), unique=True))
    bn_penalty: float = setting(1e-4, "L1 penalty s on the BatchNorm scales during the search (0: none)", Float(0))
    eb_epsilon: float = setting(0.1, "early bird when the newest mask is within this Hamming distance of each older one", Float(0, 1, low_open=True))
    eb_window: int = setting(5, "masks in the FIFO (the newest and window - 1 older ones)", Int(2))
    eb_full_matrix: bool = setting(False, "keep training the dense network to the end, recording every epoch's mask", Bool())
    eb_every_epoch: bool = setting(False, "also retrain the tickets drawn at every epoch (first ratio), for the accuracy-by-epoch plot", Bool())
    seeds: tuple = setting((0,), "replicates, e.g. 0,1,2 (each seed is kept in its own folder)", ListOf(Int(0), unique=True), hashed=False)


@dataclass(frozen=True)
class EarlyBirdSpec:
    experiment: ClassVar[str] = "earlybird"
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    earlybird: EarlyBirdOptions = field(default_factory=EarlyBirdOptions)


# ------------------------------------------------------------------------------------------------ search
class Search:
    """The `fit` callback of the search: L1 subgradient on the BatchNorm scales, a mask per ratio at every
    epoch's end, the FIFO test, and the weights of every epoch (tickets are drawn from them)."""

    def __init__(self, model: nn.Module, ratios: tuple[float, ...], iterations_per_epoch: int, *, penalty: float,
                 epsilon: float, window: int, full: bool):
        modules = dict(model.named_modules())
        self.gammas = [modules[n].weight for n in bn_layers(model)]
        self.ratios, self.ipe, self.penalty, self.full = ratios, iterations_per_epoch, penalty, full
        self.epsilon, self.window = epsilon, window
        self.reset()

    def reset(self) -> None:
        self.masks: dict[float, list[torch.Tensor]] = {r: [] for r in self.ratios}
        self.detectors = {r: EarlyBird(self.window, self.epsilon) for r in self.ratios}
        self.found: dict[float, int | None] = {r: None for r in self.ratios}
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def before_step(self, step: int, model: nn.Module) -> None:
        if not self.weights and step == 0:
            self.weights[0] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def after_backward(self, step: int, model: nn.Module) -> None:
        if self.penalty and self.gammas:
            with torch.no_grad():
                for g in self.gammas:
                    if g.grad is not None:
                        g.grad.add_(torch.sign(g), alpha=self.penalty)

    def after_step(self, step: int, model: nn.Module) -> bool:
        if step % self.ipe:
            return False
        epoch = step // self.ipe
        self.weights[epoch] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        values = scores(model)
        for r in self.ratios:
            mask = global_mask(values, r)
            self.masks[r].append(mask)
            if self.detectors[r].push(mask) and self.found[r] is None:
                self.found[r] = epoch
        return not self.full and all(e is not None for e in self.found.values())

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for i, r in enumerate(self.ratios):
            if self.masks[r]:
                out[f"masks.{i}"] = torch.stack(self.masks[r])
        for epoch, state in self.weights.items():
            out.update({f"w.{epoch}.{k}": v for k, v in state.items()})
        return out

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        self.reset()
        for key, v in tensors.items():
            if key.startswith("w."):
                _, epoch, name = key.split(".", 2)
                self.weights.setdefault(int(epoch), {})[name] = v
        for i, r in enumerate(self.ratios):
            for epoch, mask in enumerate(tensors.get(f"masks.{i}", torch.zeros(0, 0, dtype=torch.bool)).unbind(0), start=1):
                self.masks[r].append(mask)
                if self.detectors[r].push(mask) and self.found[r] is None:
                    self.found[r] = epoch


# ------------------------------------------------------------------------------------------------ tickets
def draw_ticket(setup: Setup, weights: dict, keep: torch.Tensor) -> tuple[nn.Module, Mask | None, dict]:
    """The ticket from the weights of some epoch and a flat mask: a smaller network (BatchNorm) or a masked one."""
    model = setup.new_model_like()
    model.load_state_dict(weights)
    if bn_layers(model):
        per_layer = channel_prune.split(model, keep)
        channel_prune.mask_channels_(model, per_layer)
        small = channel_prune.prune_channels(model, per_layer)
        kept = {n: int(k.sum()) for n, k in per_layer.items()}
        return small, None, {"channels_kept": kept, "channels_remaining": float(keep.float().mean())}
    names = models.prunable_names(model)
    params = dict(model.named_parameters())
    tensors, start = {}, 0
    for n in names:
        tensors[n] = keep[start:start + params[n].numel()].view_as(params[n])
        start += params[n].numel()
    mask = Mask(tensors, names)
    mask.apply_(model)
    return model, mask, {"weights_remaining": mask.density()}


def retrain(spec: EarlyBirdSpec, setup: Setup, unit: Unit, seed: int, weights: dict, keep: torch.Tensor, extra: dict) -> dict:
    if unit.is_done():
        try:
            return unit.read("result.json")
        except CorruptFile:
            pass
    model, mask, info = draw_ticket(setup, weights, keep)
    began = time.perf_counter()
    fitted = fit(model, setup.data, spec.train, seed=seed, start=0, end=setup.total_steps, schedule=setup.schedule,
                 mask=mask, checkpoints=Checkpoints(unit, setup.step(spec.train.checkpoint_every)))
    seconds = time.perf_counter() - began
    result = {**extra, **info, **fitted.summary(), "parameters": sum(p.numel() for p in model.parameters()) - (mask.total() - mask.kept() if mask else 0),
              "forward_flops": channel_prune.forward_flops(model, setup.data.input_shape), "retrain_seconds": round(seconds, 3)}
    unit.commit({"final.safetensors": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                 "metrics.jsonl": fitted.metrics, "result.json": result})
    unit.clear_checkpoint()
    return result


def search(spec: EarlyBirdSpec, setup: Setup, run_folder: Run, seed: int, bars: Bars) -> tuple[dict, Search]:
    o = spec.earlybird
    unit = run_folder.unit(f"seed-{seed}", "search")
    model = setup.build_model(seed)
    cb = Search(model, o.prune_ratios, setup.iterations_per_epoch, penalty=o.bn_penalty, epsilon=o.eb_epsilon,
                window=o.eb_window, full=o.eb_full_matrix)
    if unit.is_done():
        try:
            cb.load_state_dict(unit.read("search.safetensors"))
            return unit.read("result.json"), cb
        except CorruptFile:
            pass
    task = bars.add(f"seed {seed} early-bird search", setup.total_steps)
    began = time.perf_counter()
    fitted = fit(model, setup.data, spec.train, seed=seed, start=0, end=setup.total_steps, schedule=setup.schedule,
                 checkpoints=Checkpoints(unit, setup.step(spec.train.checkpoint_every)), callbacks=cb,
                 progress=lambda n: bars.set(task, n))
    bars.progress.remove_task(task)
    result = {"search_steps": fitted.steps, "search_seconds": round(time.perf_counter() - began, 3),
              "epochs_recorded": len(cb.masks[o.prune_ratios[0]]), "dense_accuracy": fitted.final_accuracy,
              "dense_forward_flops": channel_prune.forward_flops(model, setup.data.input_shape),
              "found": {str(r): cb.found[r] for r in o.prune_ratios}, "stopped_early": fitted.steps < setup.total_steps}
    unit.commit({"search.safetensors": cb.state_dict(), "metrics.jsonl": fitted.metrics, "result.json": result})
    unit.clear_checkpoint()
    return result, cb


# ------------------------------------------------------------------------------------------------- run
COLUMNS = ("seed", "prune_ratio", "eb_found", "eb_epoch", "channels_remaining", "weights_remaining", "parameters",
           "forward_flops", "test_accuracy", "search_steps", "flops_vs_full", "time_vs_full", "retrain_seconds")


def run(spec: EarlyBirdSpec, *, out: str = "runs", force: bool = False, progress: bool | None = None) -> Results:
    setup = Setup.prepare(spec)
    probe = setup.new_model_like()
    if bn_layers(probe) and not isinstance(probe, tuple(channel_prune_classes())):
        raise UserError(f"--model {spec.model.model}: real channel pruning supports {', '.join(channel_prune.SUPPORTED)} "
                        f"among networks with BatchNorm (networks without BatchNorm use magnitude masks)")
    if setup.total_steps < setup.iterations_per_epoch * spec.earlybird.eb_window:
        raise UserError(f"--steps {spec.train.steps}: the search needs at least --eb-window {spec.earlybird.eb_window} epochs "
                        f"({setup.iterations_per_epoch * spec.earlybird.eb_window} iterations)")
    run_folder = Run.open(out, spec, force=force)
    rows, by_epoch, searches = [], [], {}
    T, batch = setup.total_steps, spec.train.batch_size
    with Bars(progress) as bars:
        bars.print(f"run folder: {run_folder.path}")
        for seed in spec.earlybird.seeds:
            info, cb = search(spec, setup, run_folder, seed, bars)
            searches[seed] = (info, cb)
            dense_flops, last = info["dense_forward_flops"], info["epochs_recorded"]
            per_step = info["search_seconds"] / max(info["search_steps"], 1)
            for r in spec.earlybird.prune_ratios:
                epoch = cb.found[r]
                use = epoch if epoch is not None else last
                unit = run_folder.unit(f"seed-{seed}", f"p-{r:g}")
                res = retrain(spec, setup, unit, seed, cb.weights[use], cb.masks[r][use - 1],
                              {"seed": seed, "prune_ratio": r, "eb_found": epoch is not None, "eb_epoch": use})
                search_steps = use * setup.iterations_per_epoch
                eb_flops = 3 * batch * (search_steps * dense_flops + T * res["forward_flops"])
                full_flops = 3 * batch * (T * dense_flops + T * res["forward_flops"])
                eb_time = per_step * search_steps + res["retrain_seconds"]
                full_time = per_step * T + res["retrain_seconds"]
                rows.append({**res, "search_steps": search_steps, "flops_vs_full": eb_flops / full_flops,
                             "time_vs_full": eb_time / full_time})
                bars.print(f"seed {seed} p={r:g}: early bird at epoch {use}{'' if epoch is not None else ' (not found: last epoch)'}, "
                           f"retrained {100 * res['test_accuracy']:.2f}%, training FLOPs {rows[-1]['flops_vs_full']:.2f}x "
                           f"and time {rows[-1]['time_vs_full']:.2f}x of full training + pruning")
            if spec.earlybird.eb_every_epoch:
                r = spec.earlybird.prune_ratios[0]
                for epoch in range(1, last + 1):
                    unit = run_folder.unit(f"seed-{seed}", f"epoch-{epoch:03d}")
                    res = retrain(spec, setup, unit, seed, cb.weights[epoch], cb.masks[r][epoch - 1],
                                  {"seed": seed, "prune_ratio": r, "epoch": epoch})
                    by_epoch.append(res)
    results = Results([{k: r.get(k) for k in COLUMNS} for r in rows])
    write_outputs(run_folder, spec, results, searches, by_epoch)
    return results


def channel_prune_classes():
    from ..models.conv_bn import MNIST1DCNNBN
    from ..models.vgg import VGG
    return [MNIST1DCNNBN, VGG]


def write_outputs(run_folder: Run, spec: EarlyBirdSpec, results: Results, searches: dict, by_epoch: list[dict]) -> None:
    ratios = spec.earlybird.prune_ratios
    first = next(iter(searches))
    info, cb = searches[first]
    matrices = {f"p={r:g}": distance_matrix(cb.masks[r]).tolist() for r in ratios}
    summary = {"experiment": spec.experiment, "seeds": list(searches),
               "eb_epoch_by_ratio": {str(r): [searches[s][1].found[r] for s in searches] for r in ratios},
               "test_accuracy_by_ratio": {str(r): statistics.fmean(x["test_accuracy"] for x in results.where(prune_ratio=r))
                                          for r in ratios},
               "flops_vs_full_by_ratio": {str(r): statistics.fmean(x["flops_vs_full"] for x in results.where(prune_ratio=r))
                                          for r in ratios},
               "search": {str(s): searches[s][0] for s in searches},
               "mask_distance": {f"{r:g}": matrices[f"p={r:g}"] for r in ratios}}
    run_folder.write("results.csv", results.rows)
    run_folder.write("results.json", results.rows)
    run_folder.write("summary.json", summary)
    title = f"{spec.model.model} on {spec.data.dataset}"
    run_folder.write("mask_distance.png", plots.mask_distance_matrix(
        matrices, f"{title}: mask distance between epochs (seed {first})", {f"p={r:g}": cb.found[r] for r in ratios}))
    if by_epoch:
        run_folder.write("tickets_by_epoch.csv", by_epoch)
        series = {}
        for s in searches:
            rows = sorted((r for r in by_epoch if r["seed"] == s), key=lambda r: r["epoch"])
            series[f"seed {s}, p={ratios[0]:g}"] = ([r["epoch"] for r in rows], [r["test_accuracy"] for r in rows])
        run_folder.write("tickets_by_epoch.png", plots.ticket_accuracy_by_epoch(
            series, f"{title}: tickets drawn at each epoch", info["dense_accuracy"] if info["stopped_early"] is False else None))
