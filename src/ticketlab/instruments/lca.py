"""Loss Change Allocation (Lan, Liu, Zhou & Yosinski 2019).

The loss change of one training step is split over the parameters by the path integral along the straight
line theta(s) = theta_t + s * d, d = theta_{t+1} - theta_t:

    L(theta_{t+1}) - L(theta_t) = sum_i integral_0^1 dL/dtheta_i(theta(s)) ds * d_i  =:  sum_i LCA_{t,i}

The integral is taken by composite Simpson's rule on n intervals (weights [1, 4, 2, ..., 4, 1] / 3n, the
paper's "RK4" for n = 2: (g_0 + 4 g_1/2 + g_1) / 6). n doubles (up to `max_points`) while
|sum_i LCA - (L(t+1) - L(t))| exceeds `tolerance`; every gradient already evaluated is reused, and the
end-point gradient of step t is the start-point gradient of step t + 1, so a step at n = 2 costs two
gradient evaluations. L is the unregularised cross-entropy over the whole training set (or a fixed
subset), in evaluation mode. Negative LCA = the parameter helped.

Pruned weights stay exactly zero (the mask is applied after each update), so their d_i, and hence
their LCA, is zero. Networks with BatchNorm: the running statistics are not parameters; the probe uses
those of theta_{t+1} along the path, and the effect of their change shows up in the approximation error.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

STEP_COLUMNS = ("step", "loss_before", "loss_after", "loss_change", "lca_sum", "error", "points", "fraction_helped")


def simpson_weights(n: int, dtype=torch.float64) -> torch.Tensor:
    """Composite Simpson weights over n (even) intervals of [0, 1], normalised to sum to 1."""
    if n < 2 or n % 2:
        raise ValueError(f"Simpson's rule needs an even number of intervals >= 2, got {n}")
    c = torch.full((n + 1,), 2.0, dtype=dtype)
    c[1::2] = 4.0
    c[0] = c[-1] = 1.0
    return c / (3.0 * n)


@dataclass
class PathResult:
    lca: torch.Tensor          # per-parameter LCA (flat, float32)
    points: int                # Simpson intervals n used
    loss_change: float         # L(theta_{t+1}) - L(theta_t)
    lca_sum: float             # sum_i LCA_i (float64 accumulation)
    error: float               # |lca_sum - loss_change|
    evaluations: int           # gradient evaluations made for this step (end points excluded)


Gradient = Callable[[torch.Tensor], tuple[float, torch.Tensor]]


def path_lca(gradient: Gradient, theta0: torch.Tensor, theta1: torch.Tensor, g0: torch.Tensor, g1: torch.Tensor,
             loss0: float, loss1: float, *, points: int = 2, max_points: int = 32,
             tolerance: float = 1e-3) -> PathResult:
    """LCA of one step. `gradient(theta) -> (loss, grad)` is called only at interior points; the end points'
    gradients and losses are given (they are shared with the neighbouring steps)."""
    d = theta1 - theta0
    grid = max(max_points, points)
    known: dict[int, torch.Tensor] = {0: g0, grid: g1}   # position on a grid of `grid` intervals -> gradient
    dots: dict[int, float] = {}
    change = loss1 - loss0
    evaluations = 0
    n = points
    while True:
        stride = grid // n
        for j in range(n + 1):
            pos = j * stride
            if pos not in known:
                _, known[pos] = gradient(theta0 + (pos / grid) * d)
                evaluations += 1
            if pos not in dots:
                dots[pos] = float(torch.dot(known[pos].double(), d.double()))
        c = simpson_weights(n)
        total = sum(float(c[j]) * dots[j * stride] for j in range(n + 1))
        error = abs(total - change)
        if error <= tolerance or 2 * n > max_points:
            break
        n *= 2
    k = torch.zeros_like(d)
    for j in range(n + 1):
        k.add_(known[j * stride], alpha=float(c[j]))
    return PathResult(k.mul_(d), n, change, total, error, evaluations)


class FlatProbe:
    """`theta (flat) -> (loss, gradient (flat))` of a copy of a model, in evaluation mode, over fixed data.

    The copy's parameters are views into one flat tensor, so loading theta is one copy and the gradient is
    gathered into one flat tensor without concatenation."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 10000):
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.params = list(self.model.parameters())
        self.names = [n for n, _ in self.model.named_parameters()]
        self.numels = [p.numel() for p in self.params]
        device = self.params[0].device
        self.flat = torch.zeros(sum(self.numels), device=device)
        self.grad = torch.zeros_like(self.flat)
        self.grad_views = []
        offset = 0
        for p, n in zip(self.params, self.numels):
            p.data = self.flat[offset:offset + n].view_as(p)
            self.grad_views.append(self.grad[offset:offset + n].view_as(p))
            offset += n
        self.x, self.y, self.chunk = x, y, max(int(chunk), 1)
        self.evaluations = 0

    def offsets(self) -> dict[str, tuple[int, int]]:
        out, offset = {}, 0
        for name, n in zip(self.names, self.numels):
            out[name] = (offset, offset + n)
            offset += n
        return out

    @staticmethod
    def flatten(model: nn.Module) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def sync_buffers(self, model: nn.Module) -> None:
        with torch.no_grad():
            for mine, theirs in zip(self.model.buffers(), model.buffers()):
                mine.copy_(theirs)

    def __call__(self, theta: torch.Tensor) -> tuple[float, torch.Tensor]:
        with torch.no_grad():
            self.flat.copy_(theta)
        self.grad.zero_()
        n = len(self.y)
        total = 0.0
        for i in range(0, n, self.chunk):
            loss = F.cross_entropy(self.model(self.x[i:i + self.chunk]), self.y[i:i + self.chunk], reduction="sum") / n
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
            torch._foreach_add_(self.grad_views, [g if g is not None else torch.zeros_like(v)
                                                  for g, v in zip(grads, self.grad_views)])
            total += float(loss.detach().double())
        self.evaluations += 1
        return total, self.grad.clone()


def neuron_index(model: nn.Module) -> tuple[torch.Tensor, list[str], list[int]]:
    """For each parameter element (flat, in `parameters()` order) the id of its neuron / channel: the
    index along the parameter's first axis within its module (input axes and bias summed into it).
    Returns (index, layer names, neurons per layer)."""
    layers: list[str] = []
    sizes: list[int] = []
    first: dict[str, int] = {}
    parts = []
    for name, p in model.named_parameters():
        module = name.rsplit(".", 1)[0] if "." in name else ""
        out = p.shape[0] if p.dim() else 1
        if module not in first:
            first[module] = sum(sizes)
            layers.append(module)
            sizes.append(out)
        elif out != sizes[layers.index(module)]:
            raise ValueError(f"parameter {name} has {out} rows, its module has {sizes[layers.index(module)]} neurons")
        rows = torch.arange(out) + first[module]
        parts.append(rows.repeat_interleave(p.numel() // max(out, 1)) if p.dim() else rows)
    return torch.cat(parts), layers, sizes


class LCARecorder:
    """A `fit` callback recording LCA at every step: per step, per layer, per neuron, and per parameter
    summed over training. Its records are checkpointed with the fit (state_dict / load_state_dict), and
    the end-point gradient it caches is recomputed on resume, so a resumed run records the same LCA."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, mask=None, points: int = 2,
                 max_points: int = 32, tolerance: float = 1e-3, chunk: int = 10000,
                 stream: Callable[[int, int, torch.Tensor], None] | None = None, stream_steps: int = 0):
        self.probe = FlatProbe(model, x, y, chunk)
        self.points, self.max_points, self.tolerance = points, max_points, tolerance
        index, self.layers, self.neurons = neuron_index(self.probe.model)
        self.index = index.to(self.probe.flat.device)
        self.layer_of_neuron = torch.repeat_interleave(torch.arange(len(self.layers)), torch.tensor(self.neurons))
        alive = torch.ones_like(self.probe.flat, dtype=torch.bool)
        if mask is not None:
            offsets = self.probe.offsets()
            for name in mask:
                a, b = offsets[name]
                alive[a:b] = mask[name].reshape(-1).to(alive.device)
        self.alive = alive
        self.alive_count = int(alive.sum())
        self.steps: list[list[float]] = []
        self.neuron_rows: list[torch.Tensor] = []
        self.param_total = torch.zeros_like(self.probe.flat, dtype=torch.float64)
        self._start: tuple[torch.Tensor, float, torch.Tensor] | None = None   # (theta_t, L_t, g_t)
        # per-parameter LCA of every step, handed to `stream(first_step, last_step, [steps, P])` in chunks
        self.stream, self.stream_steps = stream, stream_steps if stream is not None else 0
        self.buffer: list[torch.Tensor] = []
        self.interior_evaluations = 0

    # -------------------------------------------------------------------------------------- callback
    def before_step(self, step: int, model: nn.Module) -> None:
        if self._start is None:
            theta = self.probe.flatten(model)
            self.probe.sync_buffers(model)
            loss, grad = self.probe(theta)
            self._start = (theta, loss, grad)

    def after_step(self, step: int, model: nn.Module) -> None:
        theta0, loss0, g0 = self._start
        theta1 = self.probe.flatten(model)
        self.probe.sync_buffers(model)
        loss1, g1 = self.probe(theta1)
        r = path_lca(self.probe, theta0, theta1, g0, g1, loss0, loss1, points=self.points,
                     max_points=self.max_points, tolerance=self.tolerance)
        self.interior_evaluations += r.evaluations
        helped = int(((r.lca < 0) & self.alive).sum())
        self.steps.append([step, loss0, loss1, r.loss_change, r.lca_sum, r.error, r.points,
                           helped / max(self.alive_count, 1)])
        self.neuron_rows.append(torch.zeros(sum(self.neurons), dtype=torch.float64, device=r.lca.device)
                                .index_add_(0, self.index, r.lca.double()).cpu())
        self.param_total.add_(r.lca)
        self._start = (theta1, loss1, g1)
        if self.stream_steps:
            self.buffer.append(r.lca.cpu())
            if len(self.buffer) == self.stream_steps:
                self.flush()

    def flush(self) -> None:
        """Hand the buffered per-parameter rows to `stream` (called when a chunk fills, and at the end)."""
        if self.buffer:
            last = int(self.steps[-1][0])
            self.stream(last - len(self.buffer) + 1, last, torch.stack(self.buffer))
            self.buffer = []

    # ------------------------------------------------------------------------------------- results
    def step_table(self) -> torch.Tensor:
        return torch.tensor(self.steps, dtype=torch.float64).reshape(-1, len(STEP_COLUMNS))

    def neuron_table(self) -> torch.Tensor:
        """[steps, neurons] LCA per neuron / channel per step."""
        if not self.neuron_rows:
            return torch.zeros(0, sum(self.neurons), dtype=torch.float64)
        return torch.stack(self.neuron_rows)

    def layer_table(self) -> torch.Tensor:
        """[steps, layers] LCA per layer per step."""
        per_neuron = self.neuron_table()
        return torch.zeros(per_neuron.shape[0], len(self.layers), dtype=torch.float64).index_add_(
            1, self.layer_of_neuron, per_neuron)

    def parameter_totals(self) -> dict[str, torch.Tensor]:
        """Per-parameter LCA summed over the recorded steps, shaped like the parameters."""
        return {name: self.param_total[a:b].view_as(p).float().cpu()
                for (name, (a, b)), p in zip(self.probe.offsets().items(), self.probe.params)}

    def summary(self) -> dict:
        t = self.step_table()
        if not len(t):
            return {"steps": 0}
        change, lca = float(t[:, 3].sum()), float(t[:, 4].sum())
        return {"steps": len(t), "true_loss_change": change, "lca_total": lca,
                "relative_error": abs(lca - change) / abs(change) if change else float("nan"),
                "max_step_error": float(t[:, 5].max()), "mean_step_error": float(t[:, 5].mean()),
                "fraction_helped": float(t[:, 7].mean()),
                "steps_over_tolerance": int((t[:, 5] > self.tolerance).sum()),
                "mean_points": float(t[:, 6].mean()),
                "layer_totals": dict(zip(self.layers, self.layer_table().sum(0).tolist()))}

    # ---------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {"lca.steps": self.step_table(), "lca.neurons": self.neuron_table(),
               "lca.param_total": self.param_total.cpu()}
        if self.stream_steps:
            out["lca.buffer"] = torch.stack(self.buffer) if self.buffer else torch.zeros(0, self.param_total.numel())
        return out

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        self.steps = tensors["lca.steps"].tolist()
        self.neuron_rows = list(tensors["lca.neurons"].unbind(0))
        self.param_total = tensors["lca.param_total"].to(self.probe.flat.device).clone()
        self.buffer = list(tensors["lca.buffer"].unbind(0)) if self.stream_steps and "lca.buffer" in tensors else []
        self._start = None   # recomputed from the restored weights at the next before_step
