"""K networks of one architecture trained as one: the K-tickets-at-once engine.

The K models' parameters and buffers are stacked along a new leading axis and the architecture is run
once per step, each model on its own batch (its own seed's data order): fully connected nets through
`StackedLinear` (batched matmuls whose gradients equal a lone model's bit for bit, so a stacked MLP
trains exactly as it would alone), every other model through `torch.func.vmap(functional_call(...))`
(equal up to float rounding). The loss is the sum of the K models' mean losses, each computed by the
kernel a lone model uses (so the running train loss matches too), so each stacked parameter's gradient is
exactly its model's gradient, and one optimizer over the models' own tensors makes the same element-wise
updates as K optimizers (SGD with momentum, Adam). BatchNorm running statistics are stacked buffers,
one set per model; dropout draws independently per model (`randomness="different"`).

Per-step costs that would grow with K are paid once: each parameter name is one stacked leaf tensor
(the models' parameters are views of its rows while training), the K batches are one gather, and fused
Adam is called directly on the K models' tensors with one shared step counter. On one thread, 12
MNIST-1D MLPs stacked take 0.34 ms per model-step against 0.60 ms alone (was 0.45 ms).

The loop (`train/loop.py`) drives it like any stepper: checkpoints are written per model in exactly the
format `fit` uses, so a unit interrupted while stacked can be resumed alone and vice versa (the numbers
then differ by float rounding: bmm vs mm), and each model has its own callbacks (those that declare
themselves `stackable`), which see the model object: its parameters are the tensors trained (views of
the stacked leaves while training, with their gradients), and its BatchNorm buffers are views into the
stacked buffers while training, so `model.state_dict()` is that
model's current state.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from .. import seeding, steps
from ..data import Dataset
from ..data.batches import BatchOrder
from ..sparse import Mask
from .callbacks import assemble
from .checkpoint import Checkpoints, optimizer_from_flat, optimizer_to_flat
from .loop import FitResult, train_loop
from .optim import Schedule, make_optimizer
from .steppers import State, Stepper


class StackedLinear(torch.autograd.Function):
    """K linear layers at once, [K, B, in] -> [K, B, out], with the gradients a lone `nn.Linear` gets,
    bit for bit: the weight gradient is g^T x per model (autograd's own batched rule computes (x^T g)^T,
    which rounds differently; Adam amplifies that 1e-8 into visible differences within 200 steps)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        return grad_x, torch.bmm(grad.transpose(1, 2), x), grad.sum(1)


def mlp_layers(model: nn.Module) -> list[tuple[str, str]] | None:
    """(weight, bias) names of a ticketlab MLP (Linear+ReLU layers, then the output Linear), else None."""
    from ..models.mlp import MLP

    if type(model) is not MLP:
        return None
    return [(f"hidden.{i}.weight", f"hidden.{i}.bias") for i in range(len(model.hidden))] + [("fc.weight", "fc.bias")]


def _stacked_mlp(layers: list[tuple[str, str]]):
    def forward(params, buffers, x):  # x: [K, B, ...]
        h = x.flatten(2)
        for i, (w, b) in enumerate(layers):
            h = StackedLinear.apply(h, params[w], params[b])
            if i < len(layers) - 1:
                h = torch.relu(h)
        return h
    return forward



def _install_buffer(model: nn.Module, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Make `tensor` model's buffer `name`; returns the buffer it replaces."""
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    previous = module._buffers[leaf]
    module._buffers[leaf] = tensor
    return previous


class StackedStepper(Stepper):
    """K models of one architecture (same parameter and buffer names and shapes), each on its own seed's
    batches, trained in one step; see the module docstring.

    Each model's parameters stay its own leaf tensors; they are stacked for the forward pass and the
    gradients flow back to them, so the optimizer (one multi-tensor kernel over all K models) treats every
    model's tensors exactly as it would alone: a model's numbers do not depend on which or how many models
    it is stacked with."""

    def __init__(self, models: list[nn.Module], data: Dataset, train, *, seeds: list[int]):
        self.models = list(models)
        count = self.count = len(self.models)
        base = self.base = self.models[0]
        self.device = next(base.parameters()).device
        self.data, self.eval_batch_size = data, train.eval_batch_size
        self.label_smoothing = float(getattr(train, "label_smoothing", 0.0))
        self.names = [n for n, _ in base.named_parameters()]
        self.buffer_names = [n for n, _ in base.named_buffers()]
        self.orders = [BatchOrder(data, train.batch_size, s, augment=True) for s in seeds]
        self.iterations_per_epoch = self.orders[0].iterations_per_epoch
        self.own = [[dict(m.named_parameters())[n] for n in self.names] for m in self.models]
        self.per = len(self.names)
        self.leaves = [p for ps in self.own for p in ps]
        # One stacked leaf [K, ...] per parameter name, and each model's parameter becomes a view of its row
        # (`close` gives it its own storage again): the forward pass reads the stacked leaves without
        # stacking K tensors every step, the backward pass leaves one gradient per name (each model's
        # gradient is a view of its row), and the optimizer still updates each model's own tensors.
        with torch.no_grad():
            self.stacked = {}
            for j, n in enumerate(self.names):
                rows = [self.own[k][j] for k in range(count)]
                leaf = torch.stack([r.detach() for r in rows]).requires_grad_(rows[0].requires_grad)
                for k, r in enumerate(rows):
                    r.data = leaf.detach()[k]
                self.stacked[n] = leaf
        self.opt = make_optimizer(self.leaves, train, self.device)
        self._fused = None   # the fused-Adam fast path's tensor lists, built after the first step (`update`)
        # batches: one gather for all K models where the data has no augmentation (see `batches`)
        self._gather = all(o._augment_fn is None for o in self.orders)
        self._perm_epoch, self._perms = None, None
        self.buffers = {n: torch.stack([dict(m.named_buffers())[n].detach() for m in self.models])
                        for n in self.buffer_names}
        # the models' own buffers become views of their row of the stacked buffers (which the forward pass
        # updates in place), so a model's state dict, a checkpoint load and callbacks all see its own
        # statistics; `close` puts the original tensors back, holding the trained values
        self._originals = [{n: _install_buffer(m, n, self.buffers[n][k]) for n in self.buffer_names}
                           for k, m in enumerate(self.models)]

        layers = mlp_layers(base)
        if layers is not None:  # the exact and faster path for fully connected nets
            forward = _stacked_mlp(layers)
            self.forward = forward
            self.forward_shared = lambda p, b, x: forward(p, b, x.unsqueeze(0).expand(count, *x.shape))
        else:
            def call(p, b, x):
                return functional_call(base, (p, b), (x,))

            self.forward = vmap(call, in_dims=(0, 0, 0), randomness="different")
            self.forward_shared = vmap(call, in_dims=(0, 0, None), randomness="different")

    @staticmethod
    def per_model_loss(out: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """[K] mean losses, each computed exactly as a lone model's (the same kernel on its own rows, with the
        same label smoothing), so the gradients and the running train loss equal a lone model's bit for bit."""
        return torch.stack([F.cross_entropy(o, t, label_smoothing=label_smoothing) for o, t in zip(out.unbind(0), y.unbind(0))])

    def stacked_params(self) -> dict[str, torch.Tensor]:
        return self.stacked

    def train_mode(self) -> None:
        self.base.train()

    def batches(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x [K, B, ...] and y [K, B] of iteration `step`: model k's batch is row k (its own seed's order)."""
        if not self._gather:
            batches = [o.batch(step) for o in self.orders]
            return torch.stack([b[0] for b in batches]), torch.stack([b[1] for b in batches])
        order = self.orders[0]
        epoch, i = divmod(int(step), order.iterations_per_epoch)
        if epoch != self._perm_epoch:   # the K models' permutations of this epoch, [K, n]
            self._perms = torch.stack([o.permutation(epoch) for o in self.orders])
            self._perm_epoch = epoch
        idx = self._perms[:, i * order.batch_size:(i + 1) * order.batch_size]
        data = self.data
        x = data.train_x.index_select(0, idx.reshape(-1))
        y = data.train_y.index_select(0, idx.reshape(-1))
        return x.view(self.count, idx.shape[1], *x.shape[1:]), y.view(self.count, idx.shape[1])

    def forward_backward(self, step: int) -> torch.Tensor:
        x, y = self.batches(step)
        stacked = self.stacked
        out = self.forward(stacked, self.buffers, x)
        losses = self.per_model_loss(out, y, self.label_smoothing)  # [K]
        for p in stacked.values():
            p.grad = None
        losses.sum().backward()
        for j, n in enumerate(self.names):
            grad = stacked[n].grad
            if grad is not None:
                for own, row in zip(self.own, grad.unbind(0)):
                    own[j].grad = row
        return losses.detach()

    def update(self, step: int, lr: float) -> None:
        fast = self._fused
        if not fast:
            for g in self.opt.param_groups:
                g["lr"] = lr
            self.opt.step()
            if fast is None:
                self._fused = self._fused_lists()
            return
        # fused Adam without torch.optim's per-parameter Python work: the same kernel on the same tensors
        # with the same arguments as `opt.step()`; the K x P step counters (all equal) are views of one
        # tensor, counted up by one add instead of a foreach over K x P scalars (12 MLPs: 1.3 -> 0.4 ms a step)
        params, exp_avgs, exp_avg_sqs, steps, counter, kwargs = fast
        self.opt.param_groups[0]["lr"] = lr
        counter.add_(1)
        grads = [p.grad for p in params]
        torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=lr, **kwargs)

    def _fused_lists(self):
        """The fast path's lists for a plain fused Adam (one group, every parameter trained, equal step
        counts), else False (then `opt.step()` always)."""
        opt = self.opt
        if not (isinstance(opt, torch.optim.Adam) and hasattr(torch, "_fused_adam_") and len(opt.param_groups) == 1):
            return False
        g = opt.param_groups[0]
        if not g.get("fused") or g["amsgrad"] or g["maximize"] or g["capturable"] or g["differentiable"] \
                or g.get("decoupled_weight_decay") or getattr(opt, "grad_scale", None) is not None \
                or getattr(opt, "found_inf", None) is not None or torch.is_tensor(g["lr"]):
            return False
        params = list(g["params"])
        if any(p.grad is None or p not in opt.state for p in params):
            return False
        state = [opt.state[p] for p in params]
        steps = [s["step"] for s in state]
        if any(t.shape != () or t.dtype != steps[0].dtype or t.device != steps[0].device for t in steps) \
                or len({t.item() for t in steps}) != 1:
            return False
        counter = torch.stack(steps)
        for k, s in enumerate(state):
            s["step"] = counter[k]
        kwargs = dict(amsgrad=False, beta1=g["betas"][0], beta2=g["betas"][1], weight_decay=g["weight_decay"],
                      eps=g["eps"], maximize=False, grad_scale=None, found_inf=None)
        return params, [s["exp_avg"] for s in state], [s["exp_avg_sq"] for s in state], [s["step"] for s in state], counter, kwargs

    def evaluate(self, step: int, lr: float) -> list[dict]:
        count, data, bs = self.count, self.data, self.eval_batch_size
        self.base.eval()
        n = len(data.test_y)
        loss = torch.zeros(count, dtype=torch.float64, device=self.device)
        correct = torch.zeros(count, dtype=torch.long, device=self.device)
        with torch.no_grad():
            params = self.stacked_params()
            for i in range(0, n, bs):  # the chunks `evaluate` uses, for the same sums
                out = self.forward_shared(params, self.buffers, data.test_x[i:i + bs])  # [K, n, C]
                y = data.test_y[i:i + bs]
                for k in range(count):
                    loss[k] += F.cross_entropy(out[k], y, reduction="sum").double()
                correct += (out.argmax(2) == y).sum(1)
        self.base.train()
        return [{"step": step, "test_loss": loss[k].item() / n, "test_accuracy": correct[k].item() / n, "lr": lr}
                for k in range(count)]

    def state(self) -> list[State]:
        """Per model, its state dict and its slice of the optimizer, renumbered as a lone model's."""
        per = self.per
        opt_tensors, opt_meta = optimizer_to_flat(self.opt)
        groups = [{**g, "params": list(range(per))} for g in opt_meta["param_groups"]]
        out = []
        for k, model in enumerate(self.models):
            tensors = {f"model.{n}": v for n, v in model.state_dict().items()}
            scalars = {}
            for key, v in opt_tensors.items():
                _, pid, rest = key.split(".", 2)
                if k * per <= int(pid) < (k + 1) * per:
                    tensors[f"opt.{int(pid) - k * per}.{rest}"] = v.clone() if rest == "step" else v
            for key, v in opt_meta["scalars"].items():
                pid, rest = key.split(".", 1)
                if k * per <= int(pid) < (k + 1) * per:
                    scalars[f"{int(pid) - k * per}.{rest}"] = v
            out.append((tensors, {"param_groups": groups, "scalars": scalars}))
        return out

    def load_state(self, states: list[State]) -> None:
        per = self.per
        for model, (tensors, _) in zip(self.models, states):
            model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        flat: dict[str, torch.Tensor] = {}
        for k, (tensors, _) in enumerate(states):
            for key, v in tensors.items():
                if key.startswith("opt."):
                    _, pid, rest = key.split(".", 2)
                    flat[f"opt.{k * per + int(pid)}.{rest}"] = v.to(self.device) if v.dim() else v
        scalars = {f"{k * per + int(key.split('.', 1)[0])}.{key.split('.', 1)[1]}": v
                   for k, (_, meta) in enumerate(states) for key, v in meta["scalars"].items()}
        groups = [{**g, "params": list(range(self.count * per))} for g in states[0][1]["param_groups"]]
        optimizer_from_flat(self.opt, flat, {"param_groups": groups, "scalars": scalars})
        self._fused = None

    def close(self) -> None:
        with torch.no_grad():
            for p in self.leaves:   # each model's parameters get their own storage back
                p.data = p.data.clone()
                if p.grad is not None:
                    p.grad = p.grad.clone()
            for k, (model, originals) in enumerate(zip(self.models, self._originals)):
                for n, tensor in originals.items():
                    tensor.copy_(self.buffers[n][k])
                    _install_buffer(model, n, tensor)


def fit_stacked(models: list[nn.Module], data: Dataset, train, *, seeds: list[int], start: int, end: int,
                schedule: Schedule, masks: list[Mask | None], checkpoints: list[Checkpoints],
                progress: Callable[[int], None] | None = None, callbacks: list | None = None) -> list[FitResult]:
    """Train `models` (same architecture, same window [start, end)) together, in place; see `StackedStepper`.

    `callbacks[k]` (optional) is model k's list of (stackable) callbacks; `progress(n)` is called once per
    step. All models must resume from the same step."""
    stepper = StackedStepper(models, data, train, seeds=seeds)
    every = steps.resolve(train.eval_every, stepper.iterations_per_epoch)
    own = callbacks if callbacks is not None else [[] for _ in models]
    per_model = [assemble(mask, cbs, progress=progress if k == 0 else None, start=start)
                 for k, (mask, cbs) in enumerate(zip(masks, own))]
    return train_loop(stepper, per_model, start=start, end=end, schedule=schedule, eval_every=every,
                      checkpoints=checkpoints, rng_seed=seeding.derive_seed("fit", seeds[0], start))
