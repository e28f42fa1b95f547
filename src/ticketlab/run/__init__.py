"""The engine under every experiment: units of work, the runner, executors and sweeps.

An experiment module declares its units (`Work`: key, dependencies, stacking group, cost) and how to
compute and summarise them (`Experiment`); `runner.run` does the rest: done/corrupt checks, atomic
commits, checkpoint clean-up, progress, parallelism over local worker processes or a Ray cluster, the
results files, and resume. A sweep (`sweep.py`) is many experiments whose units share one task graph.
"""

from .work import Experiment, Report, Work

__all__ = ["Experiment", "Report", "Work"]
