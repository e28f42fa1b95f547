"""Run the independent trainings of an experiment on every core: a task graph, worker processes, and
stacked models inside each worker.

An experiment describes its work as tasks (hashable keys) with dependencies and a stacking group, and
provides an executor: an object built in each process from (spec, out) whose `execute(keys, stack,
max_batch, progress)` trains those tasks and returns {key: result row}. The scheduler hands ready tasks
to the workers, up to `max_batch` of one group at a time, and reports progress and finished tasks.

How many workers and how many stacked models (`plan_parallelism`) - measured on this kind of machine
(2 cores, torch CPU; design.md and the many-tickets issue):
- worker processes, one per core with one thread each, pay for every model on CPU (two 1-thread
  processes run LeNet-300-100 at ~1.24x one 2-thread process), once there is enough work to repay their
  start (~3 s each: importing torch and loading the data);
- stacking K models into batched matmuls pays on CPU only for small fully connected nets (MNIST-1D MLP:
  1.5-2.3x at K=8 on one thread; LeNet-300-100 and convnets: 0.4-1.0x), and for every model on a GPU;
  vmap's fixed cost per step makes a stack of 1-2 slower than plain models, so on CPU stacking starts at
  4 tasks per worker. Once on, every unit of the experiment trains stacked (a lone one as a stack of
  one), so a unit's numbers never depend on which units happened to run beside it;
- K and the number of workers are capped so that their models fit in a quarter of the machine's memory.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import queue as queue_module
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Hashable

import torch
from torch import nn

STACK_MAX_PARAMS_CPU = 200_000   # fully connected nets up to this size gain from stacking on CPU
STACK_LIMIT = 32
STACK_MIN_CPU = 4                # vmap's per-step overhead: K=1 runs ~3x slower than one plain model, K=8 ~2.3x faster than 8
WORKER_START_SECONDS = 3.0
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
                     input_numel: int, workers: int = 0, max_batch: int = 0) -> Parallelism:
    """Choose workers and K (0 = automatic) for `width` tasks that can run at once; see the module docstring."""
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
            if est_seconds < 4 * WORKER_START_SECONDS * workers:
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


# ------------------------------------------------------------------------------------------ workers
_EXECUTOR = None
_QUEUE = None


def _init_worker(factory: Callable, spec, out: str, progress_queue) -> None:
    global _EXECUTOR, _QUEUE
    _EXECUTOR = factory(spec, out)
    _QUEUE = progress_queue


def _run_in_worker(keys: list, stack: bool, max_batch: int) -> dict:
    last: dict = {}

    def progress(key, n):
        now = time.monotonic()
        if now - last.get(key, 0.0) > 0.25:
            last[key] = now
            _QUEUE.put((key, n))

    return _EXECUTOR.execute(keys, stack=stack, max_batch=max_batch, progress=progress)


@dataclass
class Task:
    key: Hashable
    deps: tuple = ()
    group: Hashable = None
    cost: int = 1


def run_tasks(tasks: list[Task], *, factory: Callable, spec, out: str, parallel: Parallelism,
              local_executor=None, on_start: Callable[[Hashable], None] | None = None,
              on_progress: Callable[[Hashable, int], None] | None = None,
              on_done: Callable[[Hashable, dict], None] | None = None) -> dict:
    """Run every task once its dependencies are done; returns {key: result}.

    With one worker everything runs in this process (`local_executor`, or one built by `factory`)."""
    by_key = {t.key: t for t in tasks}
    done: dict = {}
    pending = list(tasks)
    stack = parallel.max_batch > 1

    def ready() -> list[Task]:
        return [t for t in pending if all(d in done for d in t.deps)]

    def take(batch_size: int, idle: int = 1) -> list[Task]:
        """Up to `batch_size` ready tasks of one group, spread evenly over the `idle` workers."""
        candidates = ready()
        if not candidates:
            return []
        first = candidates[0]
        group = [t for t in candidates if t.group == first.group]
        chosen = group[:min(batch_size, math.ceil(len(group) / max(idle, 1)))]
        for t in chosen:
            pending.remove(t)
        return chosen

    def finish(results: dict) -> None:
        for key, row in results.items():
            done[key] = row
            if on_done:
                on_done(key, row)

    if parallel.workers <= 1:
        executor = local_executor or factory(spec, out)
        while pending:
            chosen = take(parallel.max_batch)
            if not chosen:
                raise RuntimeError("task graph has a cycle or a missing dependency")
            for t in chosen:
                on_start and on_start(t.key)
            finish(executor.execute([t.key for t in chosen], stack=stack, max_batch=parallel.max_batch,
                                    progress=on_progress or (lambda k, n: None)))
        return done

    ctx = mp.get_context("spawn")
    progress_queue = ctx.Queue()
    running: dict = {}
    with ProcessPoolExecutor(parallel.workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(factory, spec, out, progress_queue)) as pool:
        while pending or running:
            while len(running) < parallel.workers:
                chosen = take(parallel.max_batch, parallel.workers - len(running))
                if not chosen:
                    break
                for t in chosen:
                    on_start and on_start(t.key)
                running[pool.submit(_run_in_worker, [t.key for t in chosen], stack, parallel.max_batch)] = chosen
            if not running:
                raise RuntimeError("task graph has a cycle or a missing dependency")
            finished, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
            try:
                while True:
                    key, n = progress_queue.get_nowait()
                    if on_progress and key not in done:
                        on_progress(key, n)
            except queue_module.Empty:
                pass
            for future in finished:
                running.pop(future)
                finish(future.result())
    return done
