#!/usr/bin/env python3
"""A small mutation check: do the fast tests notice when the code under test is changed?

For each target module, find the places where one small change gives different behaviour (a mutant):

    comparison   <  <=  >  >=  ==  !=  is  is not  in  not in   ->  its negation, and < <-> <=, > <-> >=
    arithmetic   + <-> -    * <-> /    // -> /    % -> //        (also in `x += ...`)
    boolean      and <-> or,   `not x` -> `x`,   `-x` -> `x`
    constants    True <-> False,   0 <-> 1,   other ints n -> n + 1,   other floats x -> -x

(type annotations and f-strings are left alone: changing them changes no behaviour), apply one mutant at a
time, run the module's tests (`pytest -x -q -m "not slow"`, with a timeout per mutant) and count the mutant
*killed* when they fail (or time out) and *survived* when they pass. A survivor is a change no test notices.

The working tree is never touched: src/, tests/ and pyproject.toml are copied into a temporary folder
(data/ is linked) and the mutants are written there, each restored from the original in a `finally`; the
temporary folder is removed at the end. Other processes using the repository (benchmarks, the lead's
runs) see nothing. Run from the repository root with the project's interpreter:

    .venv/bin/python tools/mutate.py                          # every default module, up to 40 mutants each
    .venv/bin/python tools/mutate.py src/ticketlab/store.py --max 0      # all mutants of one module
    .venv/bin/python tools/mutate.py src/ticketlab/sparse/count.py --tests tests/test_sparse.py
    .venv/bin/python tools/mutate.py --list                   # the mutants, without running anything

`--max N` samples N mutants per module with a fixed `--seed` (0: all). Each mutant runs in a process forked
from one that has already imported torch (saves ~4 s of imports per mutant); `--spawn` starts a fresh
interpreter instead. Not part of CI: it takes minutes per module.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module -> the fast tests that cover it
TESTS: dict[str, list[str]] = {
    "src/ticketlab/sparse/prune.py": ["tests/test_sparse.py"],
    "src/ticketlab/sparse/mask.py": ["tests/test_sparse.py", "tests/test_actions.py"],
    "src/ticketlab/sparse/criteria.py": ["tests/test_sparse.py", "tests/test_actions.py"],
    "src/ticketlab/sparse/actions.py": ["tests/test_actions.py"],
    "src/ticketlab/sparse/count.py": ["tests/test_sparse.py"],
    "src/ticketlab/train/loop.py": ["tests/test_train_loop.py"],
    "src/ticketlab/store.py": ["tests/test_store.py"],
}

COMPARE_SWAPS = {
    ast.Lt: [ast.GtE, ast.LtE], ast.LtE: [ast.Gt, ast.Lt], ast.Gt: [ast.LtE, ast.GtE], ast.GtE: [ast.Lt, ast.Gt],
    ast.Eq: [ast.NotEq], ast.NotEq: [ast.Eq], ast.Is: [ast.IsNot], ast.IsNot: [ast.Is], ast.In: [ast.NotIn],
    ast.NotIn: [ast.In],
}
BINOP_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
               ast.Mod: ast.FloorDiv}
SYMBOL = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.Is: "is",
          ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in", ast.Add: "+", ast.Sub: "-", ast.Mult: "*",
          ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.And: "and", ast.Or: "or"}


@dataclass
class Mutant:
    module: str
    line: int
    col: int
    change: str      # e.g. "`<` -> `>=`"
    source: str      # the whole mutated file

    def label(self) -> str:
        return f"{self.module}:{self.line}:{self.col}  {self.change}"


# ------------------------------------------------------------------------------------------- finding sites
def _skipped_nodes(tree: ast.AST) -> set[int]:
    """ids of nodes inside annotations and f-strings (mutating them changes no behaviour)."""
    roots = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None:
            roots.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            roots.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            roots.append(node.annotation)
        elif isinstance(node, ast.JoinedStr):
            roots.append(node)
    return {id(n) for r in roots for n in ast.walk(r)}


def _variants(node: ast.AST) -> list[tuple[ast.AST, str]]:
    """(mutated copy of `node`, description) for each mutation of this node itself."""
    import copy

    out = []
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            for new in COMPARE_SWAPS.get(type(op), []):
                m = copy.deepcopy(node)
                m.ops[i] = new()
                which = f" (comparison {i + 1} of {len(node.ops)})" if len(node.ops) > 1 else ""
                out.append((m, f"`{SYMBOL[type(op)]}` -> `{SYMBOL[new]}`{which}"))
    elif isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in BINOP_SWAPS:
        new = BINOP_SWAPS[type(node.op)]
        m = copy.deepcopy(node)
        m.op = new()
        eq = "=" if isinstance(node, ast.AugAssign) else ""
        out.append((m, f"`{SYMBOL[type(node.op)]}{eq}` -> `{SYMBOL[new]}{eq}`"))
    elif isinstance(node, ast.BoolOp):
        new = ast.Or if isinstance(node.op, ast.And) else ast.And
        m = copy.deepcopy(node)
        m.op = new()
        out.append((m, f"`{SYMBOL[type(node.op)]}` -> `{SYMBOL[new]}`"))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        out.append((copy.deepcopy(node.operand), "`not x` -> `x`"))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and not isinstance(node.operand, ast.Constant):
        out.append((copy.deepcopy(node.operand), "`-x` -> `x`"))
    elif isinstance(node, ast.Constant) and not isinstance(node.value, (str, bytes)) and node.value is not None \
            and node.value is not Ellipsis:
        v = node.value
        if isinstance(v, bool):
            new = not v
        elif isinstance(v, int):
            new = 1 if v == 0 else 0 if v == 1 else v + 1
        elif isinstance(v, float):
            new = 1.0 if v == 0 else 0.0 if v == 1 else -v
        else:
            return out
        out.append((ast.Constant(new), f"`{v!r}` -> `{new!r}`"))
    return out


def _replace(source: str, node: ast.AST, new: ast.AST) -> str:
    """`source` with `node`'s text replaced by `new`, keeping every other line where it was (an expression
    is parenthesised and padded with newlines inside the parentheses; a statement stays on its lines)."""
    lines = io.StringIO(source, newline="\n").readlines()   # split at "\n" only, as ast counts lines
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))

    def offset(lineno, col):   # ast columns count UTF-8 bytes
        return starts[lineno - 1] + len(lines[lineno - 1].encode()[:col].decode())

    a, b = offset(node.lineno, node.col_offset), offset(node.end_lineno, node.end_col_offset)
    extra = node.end_lineno - node.lineno
    if isinstance(node, ast.stmt):
        text = ast.unparse(new)
        if extra:  # keep the line count: a statement's continuation lines become blank lines after it
            text += "\n" * extra
    else:
        text = "(" + ast.unparse(new) + "\n" * extra + ")"
    return source[:a] + text + source[b:]


def mutants_of(module: str, text: str) -> list[Mutant]:
    tree = ast.parse(text)
    skipped = _skipped_nodes(tree)
    original = ast.dump(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped or not hasattr(node, "lineno"):
            continue
        for new, change in _variants(node):
            source = _replace(text, node, new)
            try:
                if ast.dump(ast.parse(source)) == original:
                    continue
                compile(source, module, "exec")
            except SyntaxError:
                continue
            if source.count("\n") != text.count("\n"):
                continue   # a multi-line statement that would move later lines: rare, skipped
            found.append(Mutant(module, node.lineno, node.col_offset, change, source))
    found.sort(key=lambda m: (m.line, m.col, m.change))
    return found


# ------------------------------------------------------------------------------------------- running
def copy_tree(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    shutil.copytree(ROOT / "src", dest / "src", ignore=ignore)
    shutil.copytree(ROOT / "tests", dest / "tests", ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    if (ROOT / "data").exists():
        (dest / "data").symlink_to(ROOT / "data")


def pytest_args(tests: list[str]) -> list[str]:
    return [*tests, "-x", "-q", "-m", "not slow", "-p", "no:cacheprovider", "-p", "no:randomly"]


def run_tests(work: Path, tests: list[str], timeout: float, log: Path, spawn: bool) -> str:
    """'passed', 'failed' or 'timeout': the tests run in `work` against work/src."""
    env = os.environ   # PYTHONPATH and PYTHONDONTWRITEBYTECODE were set in main()
    with open(log, "wb") as out:
        if spawn:
            proc = subprocess.Popen([sys.executable, "-m", "pytest", *pytest_args(tests)], cwd=work, env=env,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            pid = proc.pid
        else:
            pid = os.fork()
            if pid == 0:   # the child: its own process group (so a timeout ends its subprocesses too)
                code = 3
                try:
                    os.setsid()
                    os.dup2(out.fileno(), 1)
                    os.dup2(out.fileno(), 2)
                    os.chdir(work)
                    sys.path.insert(0, str(work / "src"))
                    sys.dont_write_bytecode = True
                    import pytest
                    code = pytest.main(pytest_args(tests))
                finally:
                    os._exit(int(code))
        deadline = time.monotonic() + timeout
        finished = False
        try:
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    finished = True
                    code = os.waitstatus_to_exitcode(status)
                    return "passed" if code == 0 else "failed" if code == 1 else f"error {code}"
                if time.monotonic() > deadline:
                    return "timeout"
                time.sleep(0.05)
        finally:
            if not finished:   # timed out or interrupted (Ctrl-C): end the child and whatever it started
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                os.waitpid(pid, 0)


def check_module(module: str, tests: list[str], mutants: list[Mutant], work: Path, spawn: bool,
                 timeout: float | None, verbose: bool) -> dict:
    target = work / module
    original = target.read_bytes()
    log = work / "pytest.log"
    t0 = time.monotonic()
    outcome = run_tests(work, tests, 3600, log, spawn)
    if outcome != "passed":
        raise SystemExit(f"{module}: the tests do not pass without any mutant ({outcome}; {' '.join(tests)}):\n"
                         f"{log.read_text()[-3000:]}")
    baseline = time.monotonic() - t0
    limit = timeout or max(30.0, 3 * baseline)
    print(f"\n{module}: {len(mutants)} mutants, tests {' '.join(tests)} ({baseline:.1f}s unmutated, "
          f"timeout {limit:.0f}s)", flush=True)
    results = []
    for i, m in enumerate(mutants, 1):
        try:
            target.write_text(m.source)
            outcome = run_tests(work, tests, limit, log, spawn)
        finally:
            target.write_bytes(original)
        results.append((m, outcome))
        if verbose or outcome == "passed":
            print(f"  [{i}/{len(mutants)}] {'SURVIVED' if outcome == 'passed' else outcome:8}  line {m.line}:{m.col}: {m.change}",
                  flush=True)
    assert target.read_bytes() == original
    killed = sum(o != "passed" for _, o in results)
    return {"module": module, "tests": tests, "mutants": len(results), "killed": killed,
            "timeouts": sum(o == "timeout" for _, o in results),
            "errors": sum(o.startswith("error") for _, o in results),   # pytest stopped (e.g. a collection error)
            "score": killed / len(results) if results else None,
            "survived": [{"line": m.line, "col": m.col, "change": m.change} for m, o in results if o == "passed"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("modules", nargs="*", help="files under src/ (default: the modules of the TESTS table)")
    p.add_argument("--tests", nargs="+", help="test files (or pytest node ids) for every module given "
                                              "(default: the TESTS table)")
    p.add_argument("--max", type=int, default=40, help="mutants per module, sampled with --seed (0: all; default 40)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, help="seconds per mutant (default: max(30, 3 x the unmutated run))")
    p.add_argument("--list", action="store_true", help="list the (sampled) mutants and stop")
    p.add_argument("--spawn", action="store_true", help="a fresh interpreter per mutant instead of a fork")
    p.add_argument("--json", help="also write the report here")
    p.add_argument("-v", "--verbose", action="store_true", help="print every mutant's outcome")
    args = p.parse_args(argv)

    modules = [str(Path(m).resolve().relative_to(ROOT)) for m in args.modules] or list(TESTS)
    plan = []
    for module in modules:
        tests = args.tests or TESTS.get(module)
        if not tests:
            p.error(f"no tests known for {module}: give --tests")
        found = mutants_of(module, (ROOT / module).read_text())
        chosen = found if not args.max or len(found) <= args.max else \
            sorted(random.Random(f"{args.seed}:{module}").sample(found, args.max), key=lambda m: (m.line, m.col))
        plan.append((module, tests, chosen, len(found)))
    if args.list:
        for module, tests, chosen, total in plan:
            print(f"{module}: {len(chosen)} of {total} mutants")
            for m in chosen:
                print(f"  line {m.line}:{m.col}: {m.change}")
        return 0

    work = Path(tempfile.mkdtemp(prefix="ticketlab-mutate-"))
    os.environ["PYTHONPATH"] = str(work / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"   # no mutant's bytecode is ever cached
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    reports = []
    try:
        copy_tree(work)
        if not args.spawn:   # the heavy imports once, before forking; no torch op runs here (no threads yet)
            import torch  # noqa: F401
            torch.set_num_threads(1)
            import numpy  # noqa: F401
            import pytest  # noqa: F401
        for module, tests, chosen, total in plan:
            r = check_module(module, tests, chosen, work, args.spawn, args.timeout, args.verbose)
            r["sampled_from"] = total
            reports.append(r)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("\nmodule                                   killed  mutants  score   (timeouts, errors; of all mutants)")
    for r in reports:
        print(f"{r['module']:<40} {r['killed']:>6}  {r['mutants']:>7}  {100 * r['score']:5.1f}%  ({r['timeouts']}, "
              f"{r['errors']}; {r['sampled_from']})")
    if args.json:
        Path(args.json).write_text(json.dumps({"seed": args.seed, "max": args.max, "modules": reports}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
