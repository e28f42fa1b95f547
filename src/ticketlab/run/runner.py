"""The unit runner: from experiments to finished run folders.

`run(Experiment class, spec)` builds (validates) the experiment, opens its run folder, puts its units (and
those of the experiments it builds on) into one task graph, and hands ready units to an executor: up to
`--max-batch` units of one stacking group at a time, as many batches as there are workers. As units
finish it prints the experiment's progress lines; at the end it writes every experiment's `results.csv`,
`results.json`, `summary.json` and plots. Run again, it reads finished units back and resumes the rest.
`run_many` does the same for many experiments at once (a sweep).
"""

from __future__ import annotations

import errno as _errno
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import UserError, os_fault
from ..report import tensorboard
from ..report.progress import Bars
from ..results import Results
from ..store import Run
from .executors import Inline, LocalProcesses, RayCluster, require_ray, start_method
from .execute import divergence_line
from .graph import CycleError, Graph, Task
from .lock import FolderLocks
from .plan import FORKED_WORKER_START_SECONDS, WORKER_START_SECONDS, plan_parallelism
from .work import Experiment, Report

POLL_SECONDS = 0.2


def run(cls, spec, *, out: str = "runs", force: bool = False, progress: bool | None = None,
        wait: bool = False) -> Results:
    """Run (or resume) one experiment; returns its tidy results. `wait`: if another command is writing
    its run folder, wait for it to end (else refuse at once)."""
    check_out(out)   # before the data is loaded
    require_extras(spec)
    return run_many([cls.build(spec)], out=out, force=force, progress=progress, wait=wait)[0]


def check_out(out: str | os.PathLike) -> None:
    """Refuse an `--out` that cannot be a folder (a file, a path under a file; UserError, exit 2) or that
    cannot be created (a read-only folder or file system: Fault, exit 3), before anything is computed.
    Writes nothing: a folder that exists is checked for real when its run folder's lock is taken."""
    path = Path(out).absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():   # a dangling link: mkdir would fail on it
            raise UserError(f"--out {out}: {existing} is a broken symbolic link; give a folder")
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == path else f"is under {existing}, which is a file"
        raise UserError(f"--out {out} {where}, not a folder; give a folder (it is created if missing)")
    if existing != path and not os.access(existing, os.W_OK | os.X_OK):
        readonly = hasattr(os, "statvfs") and os.statvfs(existing).f_flag & getattr(os, "ST_RDONLY", 1)
        errno_ = _errno.EROFS if readonly else _errno.EACCES
        raise os_fault(OSError(errno_, os.strerror(errno_), str(existing)))


def require_extras(spec) -> None:
    """Refuse (UserError, exit 2) an option whose optional package is missing, before anything runs."""
    if spec.train.tensorboard:
        from ..report.tensorboard import require
        require()


def flatten(experiments: list[Experiment]) -> list[Experiment]:
    """Every experiment with the ones it builds on first (each once)."""
    seen: dict[int, Experiment] = {}

    def visit(exp):
        for child in exp.children():
            visit(child)
        seen.setdefault(id(exp), exp)

    for exp in experiments:
        visit(exp)
    return list(seen.values())


def open_folders(experiments: list[Experiment], top: list[Experiment], out: str, force: bool) -> dict[str, Experiment]:
    """Open (or create) every run folder; `force` discards only the top-level experiments' folders. Two
    experiments with the same folder (the same spec) become one."""
    by_path: dict[str, Experiment] = {}
    for exp in experiments:
        folder = Run.open(out, exp.spec, force=force and any(exp is t for t in top))
        path = str(folder.path)
        if path in by_path:
            exp.attach(by_path[path].run, out)
            continue
        exp.attach(folder, out)
        by_path[path] = exp
    return by_path


def path_of(exp: Experiment) -> str:
    return str(exp.run.path)


def tasks_of(by_path: dict[str, Experiment]) -> list[Task]:
    out = []
    for path, exp in by_path.items():
        for w in exp.units():
            deps = tuple((path_of(d[0]), d[1]) if isinstance(d, tuple) and len(d) == 2 and isinstance(d[0], Experiment)
                         else (path, d) for d in w.deps)
            out.append(Task(path, w.key, deps, w.group, w.cost, w.label))
    return out


def run_many(experiments: list[Experiment], *, out: str = "runs", force: bool = False,
             progress: bool | None = None, wait: bool = False) -> list[Results]:
    """Run (or resume) several experiments in one task graph; returns each one's tidy results.

    Every run folder it writes is locked first (`lock.FolderLocks`, in sorted order) and stays locked
    until its report is written: a second command on one of them refuses (`Busy`), or waits (`wait`)."""
    check_out(out)
    out = str(Path(out).resolve())   # every worker (and Ray node) sees the same absolute path
    if experiments[0].spec.train.executor == "ray":
        require_ray()   # before the first folder is written
    require_extras(experiments[0].spec)
    flat = flatten(experiments)
    with FolderLocks([Run.folder(out, exp.spec) for exp in flat], wait=wait, announce=_announce) as locks:
        try:
            by_path = open_folders(flat, experiments, out, force)
        except OSError as e:
            raise os_fault(e) from None
        if force:
            locks.follow()   # --force replaced the folders, their .lock files with them
        return _run_open(experiments, by_path, progress)


def _announce(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _run_open(experiments: list[Experiment], by_path: dict[str, Experiment], progress: bool | None) -> list[Results]:
    """run_many, once its folders are open and locked."""
    graph = Graph(tasks_of(by_path))
    first = experiments[0]
    t = first.spec.train
    probe = first.probe()
    setup = first.setup
    total = sum(task.cost for task in graph.tasks.values())
    from ..train.optim import stacks

    alone = any(e.stack_limit == 1 for e in by_path.values()) or not stacks(t)
    limit = 1 if alone else t.max_batch
    forked = t.executor != "ray" and start_method(by_path.values()) == "fork"
    parallel = plan_parallelism(probe, setup.device, width=graph.width(), total_steps=total, batch_size=t.batch_size,
                                input_numel=math.prod(setup.data.input_shape), workers=t.workers, max_batch=limit,
                                worker_start=FORKED_WORKER_START_SECONDS if forked else WORKER_START_SECONDS)
    results: dict[str, dict] = {path: {} for path in by_path}
    board = tensorboard.Board(t.tensorboard) if t.tensorboard else None   # the only writer of its files
    executor = _executor(t, parallel, by_path)   # before the progress bars' thread: local workers may fork
    try:
        with Bars(progress) as bars:
            for exp in experiments:
                bars.print(f"run folder: {exp.run.path}")
            bars.print(parallel.describe() + ("" if executor.name != "ray" else f"; on Ray ({executor.slots} CPUs)"))
            for exp in by_path.values():
                for line in exp.header_lines():
                    bars.print(line)
            early = _drive(graph, executor, parallel, by_path, results, bars, total, board)
    finally:
        executor.close()
    reports = {path: future.result() for path, future in early.items()}
    for path, exp in by_path.items():
        if path not in reports:
            reports[path] = report(exp, results[path], board)
    diverged = divergence_line(by_path, results)
    if diverged:   # still exit 0: the other units' results stand
        print(diverged, file=sys.stderr, flush=True)
    return [Results(reports[path_of(exp)].rows) for exp in experiments]


def report(exp: Experiment, results: dict, board=None) -> Report:
    rep = exp.report(results)
    write_report(exp.run, rep)
    if board is not None:
        board.levels(exp, rep.rows)
    return rep


def _executor(t, parallel, by_path):
    if t.executor == "ray":
        return RayCluster({p: e.ref for p, e in by_path.items()}, parallel.workers, t.ray_address)
    if parallel.workers <= 1:
        return Inline(by_path)
    return LocalProcesses({p: e.ref for p, e in by_path.items()}, parallel.workers, by_path)


def _drive(graph: Graph, executor, parallel, by_path: dict, results: dict, bars: Bars, total: int, board=None) -> dict:
    """Run every task. An experiment whose last unit finishes while others still train is reported at once,
    on a thread of this process (one report at a time, while this loop keeps handing out tasks), so that a
    sweep's reports and plots are drawn while its workers train instead of one after another at the end
    (24 points: ~4 s). Not with Inline, which trains in this process. Returns {path: future of its Report}
    of those; the caller reports the others. `board`: where each unit's curves go as it arrives (--tensorboard)."""
    stack = parallel.max_batch > 1
    overall = bars.add(_title(by_path), total)
    bar_of: dict = {}
    shown: dict = {}
    left = {path: 0 for path in by_path}
    for task in graph.tasks.values():
        left[task.exp] += 1
    reporter = ThreadPoolExecutor(1, thread_name_prefix="ticketlab-report") if executor.name != "inline" else None
    early: dict = {}
    finished = False

    def advance(tid, n):
        before = shown.get(tid, 0)
        if n > before:
            bars.advance(overall, n - before)
            shown[tid] = n

    try:
        while not graph.finished:
            while executor.running() < executor.slots:
                chosen = graph.take(parallel.max_batch, executor.slots - executor.running())
                if not chosen:
                    break
                for task in chosen:
                    if task.cost > 1:
                        bar_of[task.id] = bars.add(f"  {task.label or _label(task)}", task.cost)
                executor.submit(chosen, chosen[0].exp, [task.key for task in chosen], stack, parallel.max_batch)
            if graph.stuck() or (not executor.running() and not graph.finished):
                raise CycleError("task graph has a cycle or a missing dependency")
            for batch, out in executor.collect(POLL_SECONDS):
                for task in batch:
                    result = out[task.key]
                    graph.finish(task.id)
                    results[task.exp][task.key] = result
                    if board is not None:
                        board.unit(by_path[task.exp], task.key)
                    advance(task.id, task.cost)
                    if task.id in bar_of:
                        bars.progress.remove_task(bar_of.pop(task.id))
                    for line in by_path[task.exp].progress_lines(task.key, result, results[task.exp]):
                        bars.print(line)
                    left[task.exp] -= 1
                    if not left[task.exp] and reporter is not None and not graph.finished:
                        early[task.exp] = reporter.submit(report, by_path[task.exp], results[task.exp], board)
            for tid, n in executor.progress():
                if tid in bar_of:
                    bars.set(bar_of[tid], n)
                advance(tid, n)
        finished = True
    finally:
        if reporter is not None:
            reporter.shutdown(wait=finished, cancel_futures=True)
    return early


def _title(by_path: dict) -> str:
    names = [Path(p).name for p in by_path]
    return names[0] if len(names) == 1 else f"{len(names)} runs"


def _label(task: Task) -> str:
    key = task.key if isinstance(task.key, tuple) else (task.key,)
    return " ".join(str(k) for k in key)


def write_report(run: Run, report: Report) -> None:
    run.write("results.csv", report.rows)
    run.write("results.json", report.rows)
    run.write("summary.json", report.summary)
    for name, payload in report.files.items():
        run.write(name, payload)
