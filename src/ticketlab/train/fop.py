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
optimizer's bit for bit (a matmul with the identity is exact; the step is added with the base's own ops).

Where the preconditioner acts, per weight tensor (`side`):
  linear  W (out x in): an (in x in) matrix on the input side of every row's step (Z P);
  conv    W (out, in, *kernel): a (k x k) matrix over the kernel's spatial positions (k = prod(kernel)),
          shared by every (out, in) filter of the layer: the paper's spatial preconditioning of
          convolutions (the step reshaped to (out * in) x k);
  others  (biases, BatchNorm scales): no preconditioner, the base optimizer's step.

Masks: the loop re-applies a mask after every step (`ApplyMask`), so masked weights stay zero whatever P
mixes into their step. The hypergradient uses the full gradient (masked entries included): the optimizer
does not know the mask. Not stackable: the stacked engine (`train/stacked.py`) calls fused Adam directly
on stacked tensors, so FOP units train alone (`run_jobs` and the runner's plan say so).

Cost: a linear layer's input-side matrices cost O(out * in^2 + in^3) per step (LeNet-300-100's fc1: 784 x
784), far more than its forward and backward pass on a CPU; a convolution's k x k matrix is cheap.
"""

from __future__ import annotations

import math

import torch

BASES = ("sgd", "adam")


def side(p: torch.Tensor) -> int:
    """The size of `p`'s preconditioner (0: none): a linear weight's input width, a convolution's kernel size."""
    if p.dim() == 2:
        return p.shape[1]
    if p.dim() >= 3:
        return math.prod(p.shape[2:])
    return 0


class FOP(torch.optim.Optimizer):
    """FOP-SGD or FOP-Adam; see the module docstring. Its state per weight: the base optimizer's own
    (`momentum_buffer`; or `step`, `exp_avg`, `exp_avg_sq`), the preconditioner's factor `fop_m` and the
    last unpreconditioned step `fop_step` (for the hypergradient): all tensors, so a checkpoint holds it."""

    def __init__(self, params, *, base: str, lr: float, fop_lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if base not in BASES:
            raise ValueError(f"FOP: unknown base optimizer {base!r}; valid: {', '.join(BASES)}")
        defaults = dict(lr=lr, fop_lr=fop_lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        betas=tuple(betas), eps=eps)
        super().__init__(params, defaults)
        self.base = base

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

    def _adam_step(self, p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> torch.Tensor:
        """Adam's step itself (the fused kernel the project's Adam uses, run on a zero tensor): what
        `Adam(fused=True)` would add to `p`."""
        if "step" not in state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["weight_decay"]:   # the kernel would add weight_decay * param to the gradient: the same op
            grad = grad.add(p, alpha=group["weight_decay"])
        step = torch.zeros_like(p)
        state["step"].add_(1)
        beta1, beta2 = group["betas"]
        torch._fused_adam_([step], [grad], [state["exp_avg"]], [state["exp_avg_sq"]], [], [state["step"]],
                           amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=0.0,
                           eps=group["eps"], maximize=False, grad_scale=None, found_inf=None)
        return step

    @staticmethod
    def _precondition(u: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """u (n x k) times P = M M^T, in the cheaper order."""
        n, k = u.shape
        return (u @ m) @ m.T if n < k else u @ (m @ m.T)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            rho = group["fop_lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad, state = p.grad, self.state[p]
                k = side(p)
                if k and "fop_m" not in state:
                    state["fop_m"] = torch.eye(k, dtype=p.dtype, device=p.device)
                if k and rho and "fop_step" in state:   # hypergradient descent on M with this step's gradient
                    z, g, m = state["fop_step"].reshape(-1, k), grad.reshape(-1, k), state["fop_m"]
                    s = z.T @ g
                    m.sub_((s + s.T) @ m, alpha=rho)
                if self.base == "adam":
                    z = self._adam_step(p, grad, state, group)   # a fresh tensor: kept as it is
                    if k:
                        if rho:
                            state["fop_step"] = z
                        z = self._precondition(z.reshape(-1, k), state["fop_m"]).view_as(p)
                    p.add_(z)
                    continue
                d = self._sgd_step(p, grad, state, group)
                if k:
                    if rho:
                        state["fop_step"] = d.mul(-group["lr"])
                    d = self._precondition(d.reshape(-1, k), state["fop_m"]).view_as(p)
                p.add_(d, alpha=-group["lr"])
        return loss
