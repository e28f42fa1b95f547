"""Several trainings of one architecture at once: alone one after another, or stacked (train/stacked.py).

A `Job` is one network to train on a window [start, end) with its own seed (data order), mask,
checkpoints and callbacks. `run_jobs` trains a list of them; with `stack=True` it groups the jobs that can
share a step (same window, schedule and resume point, and only stackable callbacks) and trains each group
as one stacked model, even a group of one, so that a unit's numbers never depend on which other units it
happened to run beside.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from ..data import Dataset
from ..sparse import Mask
from .callbacks import Progress, as_list
from .fit import Checkpoints, FitResult, fit
from .optim import Schedule, stacks
from .stacked import fit_stacked


@dataclass
class Job:
    key: Any
    model: nn.Module
    seed: int
    start: int
    end: int
    schedule: Schedule
    mask: Mask | None = None
    checkpoints: Checkpoints = field(default_factory=Checkpoints)
    start_weights: dict | None = None   # what the job started from, for the caller to store
    callbacks: Any = field(default_factory=list)   # callbacks watching this training (a list; one or None also accepted)

    def callback_list(self) -> list:
        return as_list(self.callbacks)

    def stackable(self) -> bool:
        """Whether every callback may run on a stacked model (else the job trains alone)."""
        return all(getattr(cb, "stackable", False) for cb in self.callback_list())

    def group(self) -> tuple:
        """Jobs with equal groups can be trained as one stacked model."""
        resume = self.checkpoints.resume_step()
        return (self.start if resume is None else resume, self.end, self.schedule, self.mask is None)


def run_jobs(jobs: list[Job], data: Dataset, train, *, stack: bool, max_batch: int = 0,
             progress: Callable[[Any, int], None] | None = None) -> list[FitResult]:
    """Train every job (in place); results in the order of `jobs`. `progress(key, n)`: n iterations done."""
    results: dict[int, FitResult] = {}
    groups: dict[tuple, list[int]] = {}
    stack = stack and stacks(train)
    for i, job in enumerate(jobs):
        if stack and job.stackable():
            groups.setdefault(job.group(), []).append(i)
            continue
        results[i] = fit(job.model, data, train, seed=job.seed, start=job.start, end=job.end, schedule=job.schedule,
                         mask=job.mask, checkpoints=job.checkpoints, callbacks=job.callback_list(),
                         progress=(lambda n, k=job.key: progress(k, n)) if progress else None)
    for members in groups.values():
        size = max_batch or len(members)
        for at in range(0, len(members), size):
            chunk = [jobs[i] for i in members[at:at + size]]
            cbs = [j.callback_list() + ([Progress(lambda n, k=j.key: progress(k, n), j.start)] if progress else []) for j in chunk]
            fitted = fit_stacked([j.model for j in chunk], data, train, seeds=[j.seed for j in chunk],
                                 start=chunk[0].start, end=chunk[0].end, schedule=chunk[0].schedule,
                                 masks=[j.mask for j in chunk], checkpoints=[j.checkpoints for j in chunk],
                                 callbacks=cbs)
            for i, f in zip(members[at:at + size], fitted):
                results[i] = f
    return [results[i] for i in range(len(jobs))]
