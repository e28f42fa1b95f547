import os
import sys
from pathlib import Path

import pytest
import torch

# One thread: the test machine has 2 cores and pytest may share them; small models gain nothing from more.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cli_env():
    """Environment for running `python -m ticketlab` in a subprocess."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture
def python():
    return sys.executable


@pytest.fixture
def run_cli(capsys):
    """`ticketlab ARGV` in this process (no interpreter start, torch already imported): (exit code, stdout,
    stderr). The real entry point in a subprocess is tested in test_cli.py."""
    from ticketlab import cli

    def run(*argv):
        code = cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run
