"""K networks of one architecture trained as one: the K-tickets-at-once engine.

The K models' parameters and buffers are stacked along a new leading axis and the architecture is run
once per step, each model on its own batch (its own seed's data order): fully connected nets through
`StackedLinear` (batched matmuls whose gradients equal a lone model's bit for bit, so a stacked MLP
trains exactly as it would alone), every other model through `torch.func.vmap(functional_call(...))`
(equal up to float rounding). The loss is the sum of the K models' mean losses, so each stacked parameter's gradient is
exactly its model's gradient, and one optimizer over the stacked tensors makes the same element-wise
updates as K optimizers (SGD with momentum, Adam). BatchNorm running statistics are stacked buffers,
one set per model; dropout draws independently per model (`randomness="different"`).

Checkpoints are written per model in exactly the format `fit` uses, so a unit interrupted while stacked
can be resumed alone and vice versa (the numbers then differ by float rounding: bmm vs mm).
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
from .fit import Checkpoints, FitResult, optimizer_from_flat, optimizer_to_flat
from .optim import Schedule, make_optimizer


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


def fit_stacked(models: list[nn.Module], data: Dataset, train, *, seeds: list[int], start: int, end: int,
                schedule: Schedule, masks: list[Mask | None], checkpoints: list[Checkpoints],
                progress: Callable[[int], None] | None = None) -> list[FitResult]:
    """Train `models` (same architecture, same window [start, end)) together, in place.

    Each model's parameters stay its own leaf tensors; they are stacked for the forward pass and the
    gradients flow back to them, so the optimizer (one multi-tensor kernel over all K models) treats every
    model's tensors exactly as it would alone: a model's numbers do not depend on which or how many models
    it is stacked with. All models must resume from the same step."""
    count = len(models)
    base = models[0]
    device = next(base.parameters()).device
    names = [n for n, _ in base.named_parameters()]
    buffer_names = [n for n, _ in base.named_buffers()]
    orders = [BatchOrder(data, train.batch_size, s, augment=True) for s in seeds]
    every = max(steps.resolve(train.eval_every, orders[0].iterations_per_epoch), 1)
    torch.manual_seed(seeding.derive_seed("fit", seeds[0], start))

    resumed = [c.load() for c in checkpoints]
    if any(r is not None for r in resumed):
        if any(r is None for r in resumed) or len({r[1]["step"] for r in resumed}) != 1:
            raise ValueError("fit_stacked: models must resume from the same step (group them by checkpoint step)")
        for m, (tensors, _) in zip(models, resumed):
            m.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})

    own = [[dict(m.named_parameters())[n] for n in names] for m in models]
    buffers = {n: torch.stack([dict(m.named_buffers())[n].detach() for m in models]) for n in buffer_names}
    per = len(names)
    opt = make_optimizer([p for ps in own for p in ps], train, device)
    running = torch.zeros(count, dtype=torch.float64, device=device)
    counted = 0
    step = start
    metrics: list[list[dict]] = [[] for _ in models]
    if resumed[0] is not None:
        flat: dict[str, torch.Tensor] = {}
        for k, (tensors, _) in enumerate(resumed):
            for key, v in tensors.items():
                if key.startswith("opt."):
                    _, pid, rest = key.split(".", 2)
                    flat[f"opt.{k * per + int(pid)}.{rest}"] = v.to(device) if v.dim() else v
        meta = resumed[0][1]["optimizer"]
        scalars = {f"{k * per + int(key.split('.', 1)[0])}.{key.split('.', 1)[1]}": v
                   for k, r in enumerate(resumed) for key, v in r[1]["optimizer"]["scalars"].items()}
        groups = [{**g, "params": list(range(count * per))} for g in meta["param_groups"]]
        optimizer_from_flat(opt, flat, {"param_groups": groups, "scalars": scalars})
        torch.set_rng_state(resumed[0][0]["rng.cpu"])
        running = torch.stack([r[0]["running_loss"] for r in resumed]).to(device)
        counted, step = resumed[0][1]["count"], resumed[0][1]["step"]
        metrics = [r[1]["metrics"] for r in resumed]

    def apply_masks() -> None:
        # each model's own parameters, by its own mask: exactly what `fit` does (fill values included)
        for model, mask in zip(models, masks):
            if mask is not None:
                mask.apply_(model)

    def stacked_params() -> dict[str, torch.Tensor]:
        return {n: torch.stack([own[k][j] for k in range(count)]) for j, n in enumerate(names)}

    layers = mlp_layers(base)
    if layers is not None:  # the exact and faster path for fully connected nets
        forward = _stacked_mlp(layers)
        forward_shared = lambda p, b, x: forward(p, b, x.unsqueeze(0).expand(count, *x.shape))
    else:
        def call(p, b, x):
            return functional_call(base, (p, b), (x,))

        forward = vmap(call, in_dims=(0, 0, 0), randomness="different")
        forward_shared = vmap(call, in_dims=(0, 0, None), randomness="different")
    per_model_loss = vmap(F.cross_entropy)  # per model exactly the gradient of a lone model's mean loss

    def record(at: int) -> None:
        nonlocal counted
        base.eval()
        n = len(data.test_y)
        loss = torch.zeros(count, dtype=torch.float64, device=device)
        correct = torch.zeros(count, dtype=torch.long, device=device)
        with torch.no_grad():
            params = stacked_params()
            for i in range(0, n, train.eval_batch_size):  # the chunks `evaluate` uses, for the same sums
                out = forward_shared(params, buffers, data.test_x[i:i + train.eval_batch_size])  # [K, n, C]
                y = data.test_y[i:i + train.eval_batch_size]
                for k in range(count):
                    loss[k] += F.cross_entropy(out[k], y, reduction="sum").double()
                correct += (out.argmax(2) == y).sum(1)
        base.train()
        for k in range(count):
            metrics[k].append({"step": at, "test_loss": loss[k].item() / n, "test_accuracy": correct[k].item() / n,
                               "lr": schedule(max(at - 1, start)),
                               "train_loss": (running[k] / counted).item() if counted else None})
        running.zero_()
        counted = 0

    def snapshot() -> None:
        opt_tensors, opt_meta = optimizer_to_flat(opt)
        for k, ck in enumerate(checkpoints):
            tensors = {f"model.{n}": own[k][j].detach() for j, n in enumerate(names)}
            tensors.update({f"model.{n}": buffers[n][k] for n in buffer_names})
            scalars = {}
            for key, v in opt_tensors.items():
                _, pid, rest = key.split(".", 2)
                if k * per <= int(pid) < (k + 1) * per:
                    tensors[f"opt.{int(pid) - k * per}.{rest}"] = v
            for key, v in opt_meta["scalars"].items():
                pid, rest = key.split(".", 1)
                if k * per <= int(pid) < (k + 1) * per:
                    scalars[f"{int(pid) - k * per}.{rest}"] = v
            groups = [{**g, "params": list(range(per))} for g in opt_meta["param_groups"]]
            tensors["rng.cpu"] = torch.get_rng_state()
            tensors["running_loss"] = running[k]
            ck.save(tensors, {"step": step, "count": counted, "metrics": metrics[k],
                              "optimizer": {"param_groups": groups, "scalars": scalars}})

    apply_masks()
    if not metrics[0]:
        record(start)
    base.train()
    leaves = [p for ps in own for p in ps]
    while step < end:
        batches = [o.batch(step) for o in orders]
        x = torch.stack([b[0] for b in batches])
        y = torch.stack([b[1] for b in batches])
        out = forward(stacked_params(), buffers, x)
        losses = per_model_loss(out, y)  # [K]
        for p in leaves:
            p.grad = None
        losses.sum().backward()
        lr = schedule(step)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        apply_masks()
        running += losses.detach()
        counted += 1
        step += 1
        at_eval = step % every == 0 or step == end
        if at_eval:
            record(step)
        if step < end and checkpoints[0].due(step, at_eval):
            snapshot()
        if progress is not None:
            progress(step - start)

    with torch.no_grad():
        for k, m in enumerate(models):
            own_buffers = dict(m.named_buffers())
            for n in buffer_names:
                own_buffers[n].copy_(buffers[n][k])
    return [FitResult.from_metrics(mk, end - start) for mk in metrics]
