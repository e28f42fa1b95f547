"""Computing units in one process: the part of the runner that every executor runs (in this process, in
a local worker process, or in a Ray task).

For each unit: finished and intact -> read its result back; otherwise prepare it, train it (units that
train go through `run_jobs` together, stacked where the experiment's groups allow), then commit its files
atomically (the manifest last) and clear its checkpoints. Every step is idempotent, so running a unit twice
(a retried Ray task, a resumed run) gives the same files.
"""

from __future__ import annotations

import time
from typing import Callable

from ..io import CorruptFile
from ..train.jobs import Job, run_jobs
from .work import Experiment

_EXPERIMENTS: dict[tuple, Experiment] = {}


def _cache_key(ref: tuple) -> tuple:
    from ..spec import spec_hash

    cls, spec, out = ref
    return (cls.__module__, cls.__qualname__, spec_hash(spec), repr(spec), out)


def experiment_from(ref: tuple) -> Experiment:
    """This process's instance of the experiment `ref` = (class, spec, out), built once and kept."""
    from ..store import Run

    cache_key = _cache_key(ref)
    exp = _EXPERIMENTS.get(cache_key)
    if exp is None:
        cls, spec, out = ref
        exp = cls.build(spec)
        exp.attach(Run.open(out, spec), out)
        _EXPERIMENTS[cache_key] = exp
    return exp


def remember(exp: Experiment) -> tuple | None:
    """Make an attached experiment this process's instance of its `ref` (workers forked while it is there
    inherit it and skip rebuilding it: no data loading, no model probes). Returns its key, for `forget`
    (None: an instance was already there)."""
    key = _cache_key(exp.ref)
    if key in _EXPERIMENTS:
        return None
    _EXPERIMENTS[key] = exp
    return key


def forget(key: tuple | None) -> None:
    _EXPERIMENTS.pop(key, None)


def commit(exp: Experiment, key, files: dict) -> dict:
    unit = exp.unit_of(key)
    unit.commit(files)
    unit.clear_checkpoint()
    return files["result.json"]


def execute(exp: Experiment, keys: list, *, stack: bool, max_batch: int = 0,
            progress: Callable | None = None) -> dict:
    """Compute (or read back) the units `keys` of `exp`; {key: result}."""
    progress = progress or (lambda key, n: None)
    results, jobs = {}, []
    for key in keys:
        unit = exp.unit_of(key)
        if unit.is_done():
            try:
                results[key] = exp.result_of(key, unit)
                continue
            except CorruptFile:
                pass
        made = exp.prepare(key)
        if isinstance(made, Job):
            made.key = key
            jobs.append(made)
        elif isinstance(made, dict):
            results[key] = commit(exp, key, made)
        else:
            results[key] = commit(exp, key, made(lambda n, k=key: progress(k, n)))
    if jobs:
        began = time.perf_counter()
        fitted = run_jobs(jobs, exp.setup.data, exp.train_settings(), stack=stack, max_batch=max_batch, progress=progress)
        seconds = (time.perf_counter() - began) / len(jobs)
        for job, f in zip(jobs, fitted):
            results[job.key] = commit(exp, job.key, exp.finish(job.key, job, f, seconds))
    return results
