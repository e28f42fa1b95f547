"""Run every benchmark once and print their figures (record them in BENCHMARKS.md)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import demo  # noqa: E402
import epoch  # noqa: E402
import lca  # noqa: E402
import many  # noqa: E402
import train_step  # noqa: E402

results = [train_step.main(), epoch.main(), demo.main(["--workers", "1", "--max-batch", "1"]), demo.main(), many.main()]
lca.main()
Path("bench/latest.json").write_text(json.dumps(results, indent=2) + "\n")
print("figures written to bench/latest.json")
