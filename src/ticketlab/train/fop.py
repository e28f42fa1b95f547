"""FOP: first-order preconditioning via hypergradient descent (Moskovitz, Wang, Lan, Kapoor, Miconi, Yosinski,
Rawal 2019), on top of SGD (momentum, Nesterov, weight decay) or Adam.

The base optimizer gives each weight tensor its usual step Z_t (SGD: -lr * momentum buffer; Adam: the fused
kernel's step). FOP applies a learned preconditioner P = M M^T (positive semi-definite by construction) to it:

    theta_{t+1} = theta_t + Z_t P_t                                   (the step, preconditioned)
    dJ(theta_{t+1}) / dM_t = (Z_t^T G_{t+1} + G_{t+1}^T Z_t) M_t       (the hypergradient)
    M_{t+1} = M_t - rho * dJ(theta_{t+1}) / dM_t                      (hypergradient descent, rate rho = --fop-lr)

G_{t+1} is the gradient the next step computes anyway, so the preconditioner learns from first-order
information only: one step late, with no extra forward or backward pass (the paper's point). M starts at
the identity, so FOP starts as its base optimizer; with rho = 0 it stays there, and its numbers are the base
optimizer's bit for bit (a product with the identity is exact; the step is added with the base's own ops).

Where the preconditioner acts, per weight tensor (`side`; Z reshaped to rows of `side` entries):
  conv    W (out, in, *kernel): a (k x k) matrix over the kernel's k = prod(kernel) positions, shared by
          every (out, in) filter of the layer: the spatial preconditioning of convolutions that keeps FOP's
          cost small (a 3 x 3 kernel: 9 x 9).
  linear  W (out x in), by `linear` (--fop-linear):
          scalar  (default) a linear layer is a convolution with a 1-position kernel, so its spatial
                  preconditioner is 1 x 1: M = m, P = m^2, a learned scale of the layer's step. This is
                  hypergradient descent on a per-layer learning rate (Baydin et al. 2017), the method FOP
                  generalises; it costs one dot product per layer and step.
          input   an (in x in) matrix on the input side of every row's step (Z P), shared by the rows. Its
                  cost is O(out * in^2) per step: LeNet-300-100's first layer (784 x 784) makes a step ~14x
                  a plain one on a CPU (bench/fop.py).
          none    no preconditioner: the base optimizer's step.
  others  (biases, BatchNorm scales): no preconditioner, the base optimizer's step.

Our reading of the paper's structure (spatial matrices for convolutions; what it does for fully connected
layers in particular) could not be checked against its full text from this machine: see README's FOP section.

Masks: the loop re-applies a mask after every step (`ApplyMask`), so masked weights stay zero whatever P
mixes into their step. The hypergradient uses the full gradient (masked entries included): the optimizer
does not know the mask. Not stackable: the stacked engine (`train/stacked.py`) calls fused Adam directly
on stacked tensors, so FOP units train alone (`run_jobs` and the runner's plan say so).
"""

from __future__ import annotations

import math

import torch

from ..spec import FOP_LINEAR as LINEAR

BASES = ("sgd", "adam")


def side(p: torch.Tensor, linear: str = "scalar") -> int:
    """The size of `p`'s preconditioner (0: none): a convolution's kernel size; for a linear weight 1
    (`scalar`), its input width (`input`) or 0 (`none`)."""
    if p.dim() >= 3:
        return math.prod(p.shape[2:])
    if p.dim() == 2:
        return {"scalar": 1, "input": p.shape[1], "none": 0}[linear]
    return 0


class FOP(torch.optim.Optimizer):
    """FOP-SGD or FOP-Adam; see the module docstring. Its state per weight: the base optimizer's own
    (`momentum_buffer`; or `step`, `exp_avg`, `exp_avg_sq`), the preconditioner's factor `fop_m` (side x side)
    and the last unpreconditioned step `fop_step` (for the hypergradient): all tensors, so a checkpoint holds it.
    Every evaluation row of a unit trained with it holds `preconditioners()` (metrics.jsonl)."""

    def __init__(self, params, *, base: str, lr: float, fop_lr: float, linear: str = "scalar", momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        if base not in BASES:
            raise ValueError(f"FOP: unknown base optimizer {base!r}; valid: {', '.join(BASES)}")
        if linear not in LINEAR:
            raise ValueError(f"FOP: unknown linear-layer preconditioner {linear!r}; valid: {', '.join(LINEAR)}")
        defaults = dict(lr=lr, fop_lr=fop_lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        betas=tuple(betas), eps=eps)
        super().__init__(params, defaults)
        self.base, self.linear = base, linear

    def _sgd_step(self, p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> torch.Tensor:
        """SGD's direction d (the step is -lr * d), in torch.optim.SGD's own operations and order."""
        if group["weight_decay"]:
            grad = grad.add(p, alpha=group["weight_decay"])
        momentum = group["momentum"]
        if not momentum:
            return grad
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = torch.clone(grad).detach()
        else:
            buf.mul_(momentum).add_(grad)
        return grad.add(buf, alpha=momentum) if group["nesterov"] else buf

    def _adam(self, params: list, grads: list, targets: list, group: dict) -> None:
        """Adam's update of each target, in one call of the fused kernel the project's Adam uses (as
        `Adam(fused=True)` makes it): a target is the parameter itself, or a zeroed tensor that receives the
        step alone (what the kernel would add to the parameter)."""
        states = [self.state[p] for p in params]
        for p, state in zip(params, states):
            if "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["weight_decay"]:   # the kernel would add weight_decay * param to the gradient: the same op
            grads = [g.add(p, alpha=group["weight_decay"]) for p, g in zip(params, grads)]
        counts = [state["step"] for state in states]
        torch._foreach_add_(counts, 1)
        beta1, beta2 = group["betas"]
        torch._fused_adam_(targets, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [], counts,
                           amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=0.0,
                           eps=group["eps"], maximize=False, grad_scale=None, found_inf=None)

    @staticmethod
    def _precondition(u: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """u (n x k, k > 1) times P = M M^T, in the cheaper order."""
        n, k = u.shape
        return (u @ m) @ m.T if n < k else u @ (m @ m.T)

    @staticmethod
    def _hypergradient_step(m: torch.Tensor, z: torch.Tensor, g: torch.Tensor, rho: float) -> None:
        """M -= rho * (Z^T G + G^T Z) M, for the last step Z and this step's gradient G (both n x k)."""
        if m.shape[0] == 1:   # a scalar preconditioner: Z^T G is one dot product
            m.mul_(torch.dot(z.reshape(-1), g.reshape(-1)).mul_(-2 * rho).add_(1))
            return
        s = z.T @ g
        m.sub_((s + s.T) @ m, alpha=rho)

    def _apply(self, p: torch.Tensor, z: torch.Tensor, k: int, alpha: float) -> None:
        """p += alpha * z P: z is the base optimizer's direction (alpha * z its step). A 1 x 1 P is a scale,
        folded into alpha (exactly alpha while P is 1)."""
        m = self.state[p]["fop_m"]
        if k == 1:
            alpha *= m.item() ** 2
        else:
            z = self._precondition(z.reshape(-1, k), m).view_as(p)
        p.add_(z, alpha=alpha)

    @torch.no_grad()
    def preconditioners(self, names: dict) -> dict[str, dict[str, float | None]]:
        """What the learned preconditioners do, per preconditioned tensor (named by `names[p]`): `fop_scale`,
        the mean eigenvalue of P (trace / k: how much it scales the base's step; m^2 for a 1 x 1 P), and
        `fop_deviation`, ||P - I||_F / sqrt(k) (0 at the identity). Empty before the first step."""
        scale, deviation = {}, {}
        for group in self.param_groups:
            for p in group["params"]:
                m = self.state.get(p, {}).get("fop_m")
                if m is None:
                    continue
                k = m.shape[0]
                cond = m @ m.T
                off = cond - torch.eye(k, dtype=m.dtype, device=m.device)
                values = ((cond.trace() / k).item(), (off.norm() / math.sqrt(k)).item())
                scale[names[p]], deviation[names[p]] = (v if math.isfinite(v) else None for v in values)
        return {"fop_scale": scale, "fop_deviation": deviation} if scale else {}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            rho = group["fop_lr"]
            params = [p for p in group["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            sides = [side(p, self.linear) for p in params]
            for p, grad, k in zip(params, grads, sides):
                state = self.state[p]
                if not k:
                    continue
                if "fop_m" not in state:
                    state["fop_m"] = torch.eye(k, dtype=p.dtype, device=p.device)
                if rho and "fop_step" in state:   # hypergradient descent on M with this step's gradient
                    self._hypergradient_step(state["fop_m"], state["fop_step"].reshape(-1, k), grad.reshape(-1, k), rho)
            # Z_t, the base's step, lands in `fop_step`: one tensor per weight, reused step after step (a fresh
            # one each step would cost more than the arithmetic: new pages of memory)
            steps = {}
            for p, k in zip(params, sides):
                if k:
                    state = self.state[p]
                    if "fop_step" not in state:
                        state["fop_step"] = torch.zeros_like(p)
                    steps[p] = state["fop_step"]
            if self.base == "adam":
                for z in steps.values():
                    z.zero_()
                self._adam(params, grads, [steps.get(p, p) for p in params], group)   # no preconditioner: p itself
                for p, k in zip(params, sides):
                    if k:
                        self._apply(p, steps[p], k, 1.0)
                continue
            lr = group["lr"]
            for p, grad, k in zip(params, grads, sides):
                d = self._sgd_step(p, grad, self.state[p], group)
                if k:
                    if rho:   # Z, kept for the next hypergradient (unused while M is frozen)
                        torch.mul(d, -lr, out=steps[p])
                    self._apply(p, d, k, -lr)
                else:
                    p.add_(d, alpha=-lr)
        return loss
