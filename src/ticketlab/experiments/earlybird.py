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

Units (`EarlyBirdTickets`): `seed-<s>/search` (checkpointed; the masks travel in the checkpoints), then,
from the search's stored masks and weights, `seed-<s>/p-<p>` (a retrained ticket) and `seed-<s>/epoch-<e>`
(tickets drawn at every epoch, with `--eb-every-epoch`). Seeds are independent tasks.
"""

from __future__ import annotations

import statistics

import torch
from torch import nn

from .. import models
from ..errors import UserError
from ..instruments import channel_prune
from ..instruments.mask_distance import EarlyBird, bn_layers, distance_matrix, global_mask, scores
from ..report import plots
from ..results import Results, diverged_columns, diverged_count, is_diverged
from ..sparse import Mask
from ..store import Unit
from ..train.fit import Checkpoints
from ..train.jobs import Job
from ..run import Experiment, Report, Work, runner
from .common import Setup


from ..specs.earlybird import EarlyBirdOptions, EarlyBirdSpec  # noqa: F401 (torch-free, for the CLI)


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


# ----------------------------------------------------------------------------------------------- units
COLUMNS = ("seed", "prune_ratio", "eb_found", "eb_epoch", "channels_remaining", "weights_remaining", "parameters",
           "forward_flops", "test_accuracy", "search_steps", "flops_vs_full", "time_vs_full", "retrain_seconds")


class EarlyBirdTickets(Experiment):
    """Per seed: the search (`("search", s)`, one training of the dense network with the `Search` callback),
    then, from its stored masks and weights, one retrained ticket per ratio (`("p", s, p)`) and, with
    `--eb-every-epoch`, one per epoch (`("epoch", s, e)`, first ratio). Seeds are independent of each other;
    the tickets of a seed train side by side once its search is done. The epochs a search will record are
    known only once it ran: every epoch up to T has a unit, and one past the search's last epoch stores
    only that it drew no ticket."""

    name = "earlybird"
    metrics = ("test_accuracy", "flops_vs_full")

    def __init__(self, spec: EarlyBirdSpec, setup: Setup):
        super().__init__(spec, setup)
        probe = setup.new_model_like()
        if bn_layers(probe) and not isinstance(probe, tuple(channel_prune_classes())):
            raise UserError(f"--model {spec.model.model}: real channel pruning supports {', '.join(channel_prune.SUPPORTED)} "
                            f"among networks with BatchNorm (networks without BatchNorm use magnitude masks)")
        if setup.total_steps < setup.iterations_per_epoch * spec.earlybird.eb_window:
            raise UserError(f"--steps {spec.train.steps}: the search needs at least --eb-window {spec.earlybird.eb_window} epochs "
                            f"({setup.iterations_per_epoch * spec.earlybird.eb_window} iterations)")
        self.channels = bool(bn_layers(probe))   # tickets are smaller networks, each of its own shape
        self.epochs = setup.total_steps // setup.iterations_per_epoch
        self._searches: dict[int, Search] = {}
        self._drawn: dict = {}   # key -> what prepare knew of a ticket (epoch, kept channels), for finish

    def new_search(self, model: nn.Module) -> Search:
        o = self.spec.earlybird
        return Search(model, o.prune_ratios, self.setup.iterations_per_epoch, penalty=o.bn_penalty,
                      epsilon=o.eb_epsilon, window=o.eb_window, full=o.eb_full_matrix)

    def search_of(self, seed: int) -> Search:
        """A seed's finished search (masks, early birds, weights of every epoch), read back from its unit."""
        if seed not in self._searches:
            cb = self.new_search(self.setup.new_model_like())
            cb.load_state_dict(self.unit_of(("search", seed)).read("search.safetensors"))
            self._searches[seed] = cb
        return self._searches[seed]

    # ------------------------------------------------------------------------------------------ units
    def units(self) -> list[Work]:
        o, T = self.spec.earlybird, self.setup.total_steps
        group = None if self.channels else (0, T)
        out = []
        for seed in o.seeds:
            search = ("search", seed)
            out.append(Work(search, (), None, T, f"seed {seed} early-bird search"))
            out += [Work(("p", seed, r), (search,), group, T, f"seed {seed} p={r:g}") for r in o.prune_ratios]
            if o.eb_every_epoch:
                out += [Work(("epoch", seed, e), (search,), group, T, f"seed {seed} epoch {e}") for e in range(1, self.epochs + 1)]
        return out

    def unit_of(self, key) -> Unit:
        kind, seed, *rest = key
        name = "search" if kind == "search" else f"p-{rest[0]:g}" if kind == "p" else f"epoch-{rest[0]:03d}"
        return self.run.unit(f"seed-{seed}", name)

    def prepare(self, key):
        kind, seed, *rest = key
        setup = self.setup
        checkpoints = Checkpoints(self.unit_of(key), setup.step(self.spec.train.checkpoint_every))
        if kind == "search":
            model = setup.build_model(seed)
            return Job(key, model, seed, 0, setup.total_steps, setup.schedule, None, checkpoints,
                       callbacks=[self.new_search(model)])
        cb = self.search_of(seed)
        last = len(cb.masks[self.spec.earlybird.prune_ratios[0]])
        if kind == "p":
            r = rest[0]
            epoch = cb.found[r]
            use = epoch if epoch is not None else last
            extra = {"seed": seed, "prune_ratio": r, "eb_found": epoch is not None, "eb_epoch": use}
        else:
            r, use = self.spec.earlybird.prune_ratios[0], rest[0]
            if use > last:
                return {"result.json": {"seed": seed, "prune_ratio": r, "epoch": use, "drawn": False}}
            extra = {"seed": seed, "prune_ratio": r, "epoch": use}
        model, mask, info = draw_ticket(setup, cb.weights[use], cb.masks[r][use - 1])
        self._drawn[key] = {**extra, **info}
        return Job(key, model, seed, 0, setup.total_steps, setup.schedule, mask, checkpoints)

    def finish(self, key, job: Job, fitted, seconds: float) -> dict:
        model, mask = job.model, job.mask
        if key[0] == "search":
            (cb,) = job.callbacks
            o = self.spec.earlybird
            result = {"search_steps": fitted.steps, "search_seconds": round(seconds, 3),
                      "epochs_recorded": len(cb.masks[o.prune_ratios[0]]), "dense_accuracy": fitted.final_accuracy,
                      "dense_forward_flops": channel_prune.forward_flops(model, self.setup.data.input_shape),
                      "found": {str(r): cb.found[r] for r in o.prune_ratios},
                      "stopped_early": fitted.steps < self.setup.total_steps}
            return {"search.safetensors": cb.state_dict(), "metrics.jsonl": fitted.metrics, "result.json": result}
        result = {**self._drawn.pop(key), **fitted.summary(),
                  "parameters": sum(p.numel() for p in model.parameters()) - (mask.total() - mask.kept() if mask else 0),
                  "forward_flops": channel_prune.forward_flops(model, self.setup.data.input_shape),
                  "retrain_seconds": round(seconds, 3)}
        final = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return {"final.safetensors": final, "metrics.jsonl": fitted.metrics, "result.json": result}

    def describe(self, key, job=None) -> dict:
        kind, seed, *rest = key
        if kind == "search":
            return {"seed": seed}
        drawn = self._drawn.pop(key, None)
        if drawn is not None:
            return drawn
        if kind == "p":
            return {"seed": seed, "prune_ratio": rest[0], "eb_found": None, "eb_epoch": None}
        return {"seed": seed, "prune_ratio": self.spec.earlybird.prune_ratios[0], "epoch": rest[0]}

    # ----------------------------------------------------------------------------------------- report
    def row(self, seed: int, r: float, done: dict) -> dict:
        """A ticket's row: its result and its cost against full training + pruning + the same retraining."""
        info, res = done[("search", seed)], done[("p", seed, r)]
        if is_diverged(res):
            return {**res, "search_steps": None, "flops_vs_full": None, "time_vs_full": None, **diverged_columns(res)}
        T, batch = self.setup.total_steps, self.spec.train.batch_size
        dense_flops, per_step = info["dense_forward_flops"], info["search_seconds"] / max(info["search_steps"], 1)
        search_steps = res["eb_epoch"] * self.setup.iterations_per_epoch
        eb_flops = 3 * batch * (search_steps * dense_flops + T * res["forward_flops"])
        full_flops = 3 * batch * (T * dense_flops + T * res["forward_flops"])
        eb_time = per_step * search_steps + res["retrain_seconds"]
        full_time = per_step * T + res["retrain_seconds"]
        return {**res, "search_steps": search_steps, "flops_vs_full": eb_flops / full_flops, "time_vs_full": eb_time / full_time}

    def progress_lines(self, key, result: dict, done: dict) -> list[str]:
        if key[0] != "p":
            return []
        _, seed, r = key
        row = self.row(seed, r, done)
        if is_diverged(row):
            return [f"seed {seed} p={r:g}: diverged ({row.get('diverged_reason')})"]
        return [f"seed {seed} p={r:g}: early bird at epoch {row['eb_epoch']}{'' if row['eb_found'] else ' (not found: last epoch)'}, "
                f"retrained {100 * row['test_accuracy']:.2f}%, training FLOPs {row['flops_vs_full']:.2f}x "
                f"and time {row['time_vs_full']:.2f}x of full training + pruning"]

    def report(self, results: dict) -> Report:
        spec, o = self.spec, self.spec.earlybird
        seeds, ratios = list(o.seeds), o.prune_ratios
        table = Results([{**{k: row.get(k) for k in COLUMNS}, **diverged_columns(row)}
                         for s in seeds for row in (self.row(s, r, results) for r in ratios)])
        by_epoch = [results[("epoch", s, e)] for s in seeds for e in range(1, self.epochs + 1)
                    if o.eb_every_epoch and results[("epoch", s, e)].get("drawn", True)
                    and not is_diverged(results[("epoch", s, e)])]
        searches = {s: results[("search", s)] for s in seeds}
        healthy = [s for s in seeds if not is_diverged(searches[s])]   # the mask-distance plot needs a search's masks
        first = healthy[0] if healthy else seeds[0]
        cb = self.search_of(first) if healthy else None
        matrices = {f"p={r:g}": distance_matrix(cb.masks[r]).tolist() for r in ratios} if cb else {}

        def mean_of(column: str, r: float) -> float | None:   # over the tickets that did not diverge
            values = [x[column] for x in table.where(prune_ratio=r) if not is_diverged(x)]
            return statistics.fmean(values) if values else None

        summary = {"experiment": spec.experiment, "seeds": seeds, "diverged": diverged_count(table.rows),
                   "eb_epoch_by_ratio": {str(r): [searches[s].get("found", {}).get(str(r)) for s in seeds] for r in ratios},
                   "test_accuracy_by_ratio": {str(r): mean_of("test_accuracy", r) for r in ratios},
                   "flops_vs_full_by_ratio": {str(r): mean_of("flops_vs_full", r) for r in ratios},
                   "search": {str(s): searches[s] for s in seeds},
                   "mask_distance": {f"{r:g}": matrices[f"p={r:g}"] for r in ratios} if cb else {}}
        title = f"{spec.model.model} on {spec.data.dataset}"
        files = {"mask_distance.png": plots.mask_distance_matrix(
            matrices, f"{title}: mask distance between epochs (seed {first})", {f"p={r:g}": cb.found[r] for r in ratios})} if cb else {}
        if by_epoch:
            files["tickets_by_epoch.csv"] = by_epoch
            series = {}
            for s in seeds:
                rows = sorted((r for r in by_epoch if r["seed"] == s), key=lambda r: r["epoch"])
                series[f"seed {s}, p={ratios[0]:g}"] = ([r["epoch"] for r in rows], [r["test_accuracy"] for r in rows])
            info = searches[first]
            files["tickets_by_epoch.png"] = plots.ticket_accuracy_by_epoch(
                series, f"{title}: tickets drawn at each epoch", info.get("dense_accuracy") if info.get("stopped_early") is False else None)
        return Report(table.rows, summary, files)


def channel_prune_classes():
    from ..models.conv_bn import MNIST1DCNNBN
    from ..models.resnet import ImageNetResNet, ResNet
    from ..models.vgg import VGG
    return [MNIST1DCNNBN, VGG, ResNet, ImageNetResNet]


# ------------------------------------------------------------------------------------------------- run
def run(spec: EarlyBirdSpec, *, out: str = "runs", force: bool = False, progress: bool | None = None,
        wait: bool = False) -> Results:
    """Run (or resume) the early-bird experiment; returns one row per seed and pruning ratio."""
    return runner.run(EarlyBirdTickets, spec, out=out, force=force, progress=progress, wait=wait)


EXPERIMENT = EarlyBirdTickets   # what a sweep of this experiment runs
