"""How many worker processes and how many stacked models (`plan_parallelism`).

Measured on this kind of machine (2 cores, torch CPU):
- worker processes, one per core with one thread each, pay for every model on CPU (two 1-thread
  processes run LeNet-300-100 at ~1.24x one 2-thread process), once there is enough work to repay their
  start: ~3 s each when spawned (importing torch and ticketlab, loading the data; Ray workers too),
  ~0.25 s when forked from this process (Linux, CPU: `executors.start_method`);
- stacking K models into batched matmuls pays on CPU only for small fully connected nets (MNIST-1D MLP,
  one thread, per model against one plain model: K=1 ~1.0x, 2 ~1.4x, 4 ~1.8x, 12 ~1.8-2.3x;
  LeNet-300-100 and convnets: 0.4-1.0x), and for every model on a GPU; on CPU stacking starts at 4 tasks
  per worker. Once on, every unit of the experiment trains stacked (a lone one as a stack of one), so a
  unit's numbers never depend on which units happened to run beside it;
- K and the number of workers are capped so that their models fit in a quarter of the machine's memory.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import nn

STACK_MAX_PARAMS_CPU = 200_000   # fully connected nets up to this size gain from stacking on CPU
STACK_LIMIT = 32
STACK_MIN_CPU = 4                # tasks per worker before stacking starts on CPU (2-3 would gain ~1.4x too since 2026-11-26)
WORKER_START_SECONDS = 3.0       # a spawned worker (or a Ray worker): a fresh interpreter imports torch, rebuilds the experiment
FORKED_WORKER_START_SECONDS = 0.25   # a forked worker inherits all of that
CPU_STEP_GFLOPS = 20.0           # a conservative rate for small nets on one core, for the work estimate


@dataclass(frozen=True)
class Parallelism:
    workers: int
    max_batch: int
    model_mb: float
    reason: str

    def describe(self) -> str:
        stacking = f"up to {self.max_batch} models stacked per step" if self.max_batch > 1 else "no stacking"
        return (f"parallel: {self.workers} worker process{'es' if self.workers > 1 else ''}"
                f"{' x 1 thread' if self.workers > 1 else ''}, {stacking} (est. {self.model_mb:.1f} MB per model; {self.reason})")


def _total_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _available_memory_bytes() -> int:
    """Memory this machine can give now (Linux: MemAvailable), else its total memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return _total_memory_bytes()


def check_model_fits(model: nn.Module, batch_size: int, input_numel: int, what: str) -> None:
    """Refuse (UserError) a model whose estimate (`model_bytes`) exceeds the memory available now; `model`
    may be on the meta device, so this is checked before the real one is built."""
    from ..errors import UserError

    need, have = model_bytes(model, batch_size, input_numel), _available_memory_bytes()
    if need > have:
        params = sum(p.numel() for p in model.parameters())
        raise UserError(f"{what}: one model needs about {need / 2**30:.1f} GiB ({params} parameters, with gradients, "
                        f"optimizer state and copies), more than the {have / 2**30:.1f} GiB of memory available; use a smaller model")


def model_bytes(model: nn.Module, batch_size: int, input_numel: int) -> int:
    """Weights, gradients, two optimizer moments, mask, start and best copies (~8x the parameters),
    plus a generous activation allowance (8 x the batch's inputs and the widest layer)."""
    params = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    widest = max((p.shape[0] for p in model.parameters() if p.dim() > 1), default=1)
    return 4 * (8 * params + 8 * batch_size * (input_numel + widest))


def stacks_well(model: nn.Module, device: torch.device) -> bool:
    if device.type != "cpu":
        return True
    layers = [m for m in model.modules() if len(list(m.children())) == 0 and list(m.parameters(recurse=False))]
    fully_connected = all(isinstance(m, nn.Linear) for m in layers)
    return fully_connected and sum(p.numel() for p in model.parameters()) <= STACK_MAX_PARAMS_CPU


def plan_parallelism(model: nn.Module, device: torch.device, *, width: int, total_steps: int, batch_size: int,
                     input_numel: int, workers: int = 0, max_batch: int = 0,
                     worker_start: float = WORKER_START_SECONDS) -> Parallelism:
    """Choose workers and K (0 = automatic) for `width` tasks that can run at once; see the module docstring.
    `worker_start`: seconds a worker takes to start (spawned or forked)."""
    per_model = model_bytes(model, batch_size, input_numel)
    budget = _total_memory_bytes() // 4
    params = sum(p.numel() for p in model.parameters())
    est_seconds = total_steps * (6 * params * batch_size / (CPU_STEP_GFLOPS * 1e9) + 3e-4)
    reasons = []
    if workers <= 0:
        if device.type != "cpu":
            workers = 1
            reasons.append("one process drives the GPU")
        else:
            cores = os.cpu_count() or 1
            workers = max(1, min(cores, width))
            if est_seconds < 4 * worker_start * workers:
                workers = 1
                reasons.append(f"~{est_seconds:.0f} s of work does not repay starting workers")
            else:
                reasons.append(f"{cores} cores, {width} tasks at once")
    if max_batch <= 0:
        per_worker = math.ceil(width / workers)
        if not stacks_well(model, device):
            max_batch = 1
            reasons.append("stacking does not pay for this model on CPU")
        elif per_worker < (STACK_MIN_CPU if device.type == "cpu" else 2):
            max_batch = 1
            reasons.append(f"{per_worker} task(s) per worker at once: too few to stack")
        else:
            max_batch = min(STACK_LIMIT, per_worker)
            reasons.append("small fully connected net: stacking pays" if device.type == "cpu" else "GPU: stacking pays")
    if not reasons:
        reasons.append("as given")
    max_batch = max(1, min(max_batch, budget // max(per_model * workers, 1)))
    workers = max(1, min(workers, budget // max(per_model * max_batch, 1)))
    return Parallelism(workers, max_batch, per_model / 2**20, "; ".join(reasons))
