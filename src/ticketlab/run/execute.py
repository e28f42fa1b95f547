"""Computing units in one process: the part of the runner that every executor runs (in this process, in
a local worker process, or in a Ray task).

For each unit: finished and intact -> read its result back; otherwise prepare it, train it (units that
train go through `run_jobs` together, stacked where the experiment's groups allow), then commit its files
atomically (the manifest last) and clear its checkpoints. Every step is idempotent, so running a unit twice
(a retried Ray task, a resumed run) gives the same files.

Divergence (one mechanism for every experiment): a training that diverged (`FitResult.diverged`) is
committed as diverged, with its metrics and a result from `Experiment.describe` and the fit, never through
the experiment's `finish` (no NaN weights are stored); a unit with a diverged dependency is committed as
diverged without being prepared. Both are done units, so a resume reads them back instead of retraining.
"""

from __future__ import annotations

import time
from typing import Callable

from ..io import CorruptFile
from ..results import is_diverged
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


DEPENDS = "depends on a diverged unit: "   # how a unit left out because of a dependency says so


def diverged_dependency(exp: Experiment, key) -> str | None:
    """Why unit `key` must not be computed: the reason naming the unit it depends on that diverged (for a
    chain, the first unit that did), or None."""
    for dep_exp, dep_key in exp.dependencies(key):
        unit = dep_exp.unit_of(dep_key)
        manifest = unit.manifest()   # not `is_done`, which would hash the dependency's weights once more
        if not manifest or not manifest.get("complete"):
            continue
        try:
            result = dep_exp.result_of(dep_key, unit)
        except CorruptFile:
            continue
        if is_diverged(result):
            reason = result.get("diverged_reason") or ""
            return reason if reason.startswith(DEPENDS) else DEPENDS + dep_exp.unit_name(dep_key)
    return None


def diverged_files(exp: Experiment, key, job, fitted, seconds: float) -> dict:
    """The files of a training that diverged: its metrics and a result that says so."""
    result = {**exp.describe(key, job), **fitted.summary(), "seconds": round(seconds, 3)}
    return {"metrics.jsonl": fitted.metrics, "result.json": result}


def divergence_line(by_path: dict, results: dict, shown: int = 4) -> str | None:
    """The line a run ends with when units diverged (None: none did): how many, and which (the units whose
    own training diverged first, then those left out because a dependency did)."""
    own, blocked, total = [], [], 0
    for path, exp in by_path.items():
        for key, result in results.get(path, {}).items():
            total += 1
            if is_diverged(result):
                reason = result.get("diverged_reason") or ""
                (blocked if reason.startswith(DEPENDS) else own).append(exp.unit_name(key))
    if not own and not blocked:
        return None
    names = own + blocked
    listed = ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
    why = ", ".join(part for part in (f"{len(own)} with a non-finite loss" if own else "",
                                      f"{len(blocked)} because a unit they depend on did" if blocked else "") if part)
    return (f"ticketlab: warning: {len(names)} of {total} units diverged ({why}): {listed}; "
            f"marked `diverged` in results.csv and left out of the means (a lower --lr may help)")


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
        reason = diverged_dependency(exp, key)
        if reason is not None:
            results[key] = commit(exp, key, {"result.json": {**exp.describe(key), "diverged": True,
                                                             "diverged_step": None, "diverged_reason": reason}})
            continue
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
            files = diverged_files(exp, job.key, job, f, seconds) if f.diverged else exp.finish(job.key, job, f, seconds)
            results[job.key] = commit(exp, job.key, files)
    return results
