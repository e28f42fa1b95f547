"""The task graph of one or many experiments: which units are ready, and which go out together."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable


@dataclass(frozen=True)
class Task:
    """A unit in the graph: `exp` names its experiment (the run folder's path), `key` the unit in it."""

    exp: str
    key: Hashable
    deps: tuple = ()        # ids (exp, key) of other tasks
    group: Hashable = None  # equal non-None groups of one experiment may be stacked
    cost: int = 1
    label: str = ""

    @property
    def id(self) -> tuple:
        return (self.exp, self.key)


class CycleError(RuntimeError):
    pass


class Graph:
    """Hands out ready tasks, up to `batch` of one stacking group at a time, spread over idle workers."""

    def __init__(self, tasks: list[Task]):
        self.tasks = {t.id: t for t in tasks}
        if len(self.tasks) != len(tasks):
            raise ValueError("task graph: two tasks have the same id")
        for t in tasks:
            missing = [d for d in t.deps if d not in self.tasks]
            if missing:
                raise CycleError(f"task {t.id} depends on unknown task(s) {missing}")
        self.pending = list(tasks)
        self.done: set = set()
        self.running: set = set()
        self._check_acyclic()

    def _check_acyclic(self) -> None:
        state: dict = {}
        for start in self.tasks:
            stack = [(start, iter(self.tasks[start].deps))]
            if state.get(start) == 2:
                continue
            state[start] = 1
            while stack:
                node, deps = stack[-1]
                nxt = next(deps, None)
                if nxt is None:
                    state[node] = 2
                    stack.pop()
                elif state.get(nxt) == 1:
                    raise CycleError(f"task graph has a cycle through {nxt}")
                elif state.get(nxt) is None:
                    state[nxt] = 1
                    stack.append((nxt, iter(self.tasks[nxt].deps)))

    def width(self) -> int:
        """Tasks that can run at once at the widest point: the largest layer by dependency depth."""
        depth: dict = {}

        def of(tid):
            if tid not in depth:
                depth[tid] = 1 + max((of(d) for d in self.tasks[tid].deps), default=-1)
            return depth[tid]

        layers: dict[int, int] = {}
        for tid in self.tasks:
            layers[of(tid)] = layers.get(of(tid), 0) + 1
        return max(layers.values(), default=1)

    def ready(self) -> list[Task]:
        return [t for t in self.pending if all(d in self.done for d in t.deps)]

    def take(self, batch: int, idle: int = 1) -> list[Task]:
        """Up to `batch` ready tasks of one group (ungrouped tasks go alone), spread evenly over `idle` workers."""
        candidates = self.ready()
        if not candidates:
            return []
        first = candidates[0]
        if first.group is None:
            chosen = [first]
        else:
            same = [t for t in candidates if t.exp == first.exp and t.group == first.group]
            chosen = same[:max(1, min(batch, math.ceil(len(same) / max(idle, 1))))]
        for t in chosen:
            self.pending.remove(t)
            self.running.add(t.id)
        return chosen

    def finish(self, tid) -> None:
        self.running.discard(tid)
        self.done.add(tid)

    def requeue(self, tasks: list[Task]) -> None:
        """Tasks whose worker died: back to the front of the queue."""
        for t in tasks:
            self.running.discard(t.id)
        self.pending[:0] = tasks

    @property
    def finished(self) -> bool:
        return not self.pending and not self.running

    def stuck(self) -> bool:
        return bool(self.pending) and not self.running and not self.ready()
