"""Executors: where units run. All of them run `execute.execute` on batches of units and report back.

- `Inline`: in this process, one batch after another (`--workers 1`).
- `LocalProcesses`: worker processes on this machine (one thread each), the default. On Linux with the
  experiments on the CPU they are forked from this process, before any other thread starts: a worker
  then starts in ~0.1 s with torch, the data and the experiments already there, instead of ~4-5 s
  (importing torch and ticketlab, loading the data, rebuilding the experiment); elsewhere (macOS,
  Windows, a GPU: CUDA cannot be used after a fork) they are spawned.
- `RayCluster`: Ray tasks (`--executor ray`), on a cluster at `--ray-address` or on a local Ray instance
  started here. A unit is idempotent (its store manifest), so Ray's task retries after a lost worker are
  safe: the retried task resumes the unit from its last checkpoint or reads it back if it was committed.
  Every node must see `--out` (a shared file system).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_module
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from ..errors import UserError
from .execute import execute, experiment_from, forget, remember

PROGRESS_INTERVAL = 0.25


class Inline:
    """Runs each batch in this process when it is collected."""

    name = "inline"

    def __init__(self, experiments: dict):
        self.experiments = experiments   # path -> Experiment (this process's instances)
        self.queue: list = []
        self._progress: list = []
        self.slots = 1

    def submit(self, batch, exp_path: str, keys: list, stack: bool, max_batch: int) -> None:
        self.queue.append((batch, exp_path, keys, stack, max_batch))

    def collect(self, timeout: float) -> list:
        if not self.queue:
            return []
        batch, exp_path, keys, stack, max_batch = self.queue.pop(0)
        out = execute(self.experiments[exp_path], keys, stack=stack, max_batch=max_batch,
                      progress=lambda key, n: self._progress.append(((exp_path, key), n)))
        return [(batch, out)]

    def progress(self) -> list:
        out, self._progress = self._progress, []
        return out

    def running(self) -> int:
        return len(self.queue)

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------------- local processes
_QUEUE = None


def _init_worker(progress_queue, parent: int) -> None:
    global _QUEUE
    _QUEUE = progress_queue
    die_with_parent(parent)


def die_with_parent(parent: int) -> None:
    """End this worker as soon as the main process is gone (kill -9 of the main alone): a forked worker
    holds both ends of the pool's pipes, so it would never see them close and would wait forever, or
    worse, keep training and writing into the run folder beside a resumed run. Linux: the kernel sends
    SIGKILL when the parent dies (PR_SET_PDEATHSIG); everywhere: a watchdog thread polls the parent."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:   # died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="ticketlab-parent-watch").start()


def _run_in_worker(ref: tuple, exp_path: str, keys: list, stack: bool, max_batch: int) -> dict:
    last: dict = {}

    def progress(key, n):
        now = time.monotonic()
        if now - last.get(key, 0.0) > PROGRESS_INTERVAL:
            last[key] = now
            _QUEUE.put(((exp_path, key), n))

    return execute(experiment_from(ref), keys, stack=stack, max_batch=max_batch, progress=progress)


def start_method(experiments) -> str:
    """fork on Linux when every experiment runs on the CPU and CUDA is not initialised; else spawn."""
    import torch

    on_cpu = all(getattr(getattr(e, "setup", None), "device", None) is not None and e.setup.device.type == "cpu"
                 for e in experiments)
    # a fork copies only the calling thread: with other threads alive (Ray's client in this process, a
    # notebook's kernel threads, an intra-op pool of --threads N) a lock one of them holds would stay held
    # in the child forever
    if sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods() and on_cpu \
            and not torch.cuda.is_initialized() and threading.active_count() == 1 and torch.get_num_threads() == 1:
        return "fork"
    return "spawn"


class LocalProcesses:
    name = "local"

    def __init__(self, refs: dict, workers: int, experiments: dict | None = None):
        """`refs`: path -> the experiment's ref; `experiments`: path -> this process's attached instances,
        which forked workers inherit. Create it before other threads start (progress bars): forked
        workers start at once, here."""
        self.refs = refs
        self.method = start_method((experiments or {}).values()) if experiments else "spawn"
        ctx = mp.get_context(self.method)
        self._queue = ctx.Queue()
        self.pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                        initargs=(self._queue, os.getpid()))
        self.futures: dict = {}
        self.slots = workers
        if self.method == "fork":
            keys = [remember(exp) for exp in experiments.values()]
            try:
                self.pool.submit(os.getpid).result()   # forks every worker now, while this process has one thread
            finally:
                for key in keys:   # the workers have them; this process does not keep them past the run
                    forget(key)

    def submit(self, batch, exp_path: str, keys: list, stack: bool, max_batch: int) -> None:
        self.futures[self.pool.submit(_run_in_worker, self.refs[exp_path], exp_path, keys, stack, max_batch)] = batch

    def collect(self, timeout: float) -> list:
        finished, _ = wait(list(self.futures), timeout=timeout, return_when=FIRST_COMPLETED)
        return [(self.futures.pop(f), f.result()) for f in finished]

    def progress(self) -> list:
        out = []
        try:
            while True:
                out.append(self._queue.get_nowait())
        except queue_module.Empty:
            return out

    def running(self) -> int:
        return len(self.futures)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------------------- Ray
RAY_RETRIES = 3


def _ray_task(ref: tuple, keys: list, stack: bool, max_batch: int) -> dict:
    return execute(experiment_from(ref), keys, stack=stack, max_batch=max_batch)


def require_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'ticketlab[ray]' (or pip install ray)") from None
    return ray


class RayCluster:
    name = "ray"

    def __init__(self, refs: dict, workers: int, address: str = ""):
        ray = require_ray()
        self.ray, self.refs = ray, refs
        self.started = not ray.is_initialized()
        if self.started:
            options = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
            try:
                if address:
                    ray.init(address=address, **options)
                else:
                    # A local instance of our own; never joins a cluster found in the environment.
                    os.environ.pop("RAY_ADDRESS", None)
                    ray.init(num_cpus=workers, **options)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise UserError(f"--executor ray: cannot start or reach Ray{' at ' + address if address else ''} ({e})") from None
        cpus = int(ray.cluster_resources().get("CPU", workers))
        self.slots = max(1, min(workers, cpus) if not address else cpus)
        self.remote = ray.remote(num_cpus=1, max_retries=RAY_RETRIES)(_ray_task)
        self.pending: dict = {}

    def submit(self, batch, exp_path: str, keys: list, stack: bool, max_batch: int) -> None:
        self.pending[self.remote.remote(self.refs[exp_path], keys, stack, max_batch)] = batch

    def collect(self, timeout: float) -> list:
        if not self.pending:
            return []
        ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=timeout)
        out = []
        for r in ready:
            batch = self.pending.pop(r)
            try:
                out.append((batch, self.ray.get(r)))
            except self.ray.exceptions.RayTaskError as e:
                # the task's own exception, as a local worker process would raise it: a fault of the
                # machine (a full disk, say) is then the CLI's one line, not Ray's wrapped traceback
                if isinstance(getattr(e, "cause", None), Exception):
                    raise e.cause from None
                raise
        return out

    def progress(self) -> list:
        return []

    def running(self) -> int:
        return len(self.pending)

    def close(self) -> None:
        for r in self.pending:
            self.ray.cancel(r, force=True)
        if self.started:
            self.ray.shutdown()
