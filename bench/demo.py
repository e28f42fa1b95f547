"""Wall time and peak memory (RSS) of the default demo, `ticketlab lottery`, in a fresh process with a
fresh run folder (MNIST-1D already cached)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(extra: list[str] | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "ticketlab", "lottery", "--out", out, "--no-progress", *(extra or [])]
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = {"benchmark": "demo", "command": " ".join(["ticketlab", "lottery", *(extra or [])]),
              "wall_seconds": round(wall, 1), "peak_rss_mb": round(rss_mb)}
    print(f"default demo ({result['command']}): {wall:.1f} s wall, peak RSS {rss_mb:.0f} MB (goal < 180 s)")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
