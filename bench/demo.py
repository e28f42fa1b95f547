"""Wall time and peak memory (RSS) of the default demo, `ticketlab lottery`, in a fresh process with a
fresh run folder (MNIST-1D already cached).

Peak RSS is the largest of the command's own high-water mark (VmHWM, read by the process itself as it
ends) and its worker processes' (ru_maxrss of its children). The kernel's ru_maxrss of a process started
with fork+exec also counts the RSS of the process that started it (Linux keeps the old address space's
high-water mark across exec), which is why this is not simply the benchmark's RUSAGE_CHILDREN (before
2026-11-26 the figure here was partly the benchmark process's own memory)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# `python -m ticketlab ARGS`, reporting its peak RSS on stderr as it ends
WRAPPER = """\
import resource, sys
from ticketlab.cli import main
try:
    code = main(sys.argv[1:])
finally:
    with open("/proc/self/status") as f:
        hwm = next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"PEAK_RSS_KB {max(hwm, children)}", file=sys.stderr)
sys.exit(code)
"""


def main(extra: list[str] | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-c", WRAPPER, "lottery", "--out", out, "--no-progress", *(extra or [])]
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - start
    kb = next((int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("PEAK_RSS_KB")), 0)
    rss_mb = kb / 1024
    result = {"benchmark": "demo", "command": " ".join(["ticketlab", "lottery", *(extra or [])]),
              "wall_seconds": round(wall, 1), "peak_rss_mb": round(rss_mb)}
    print(f"default demo ({result['command']}): {wall:.1f} s wall, peak RSS {rss_mb:.0f} MB (goal < 180 s)")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
