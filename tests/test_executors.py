"""One engine under every experiment: each of the six experiments gives the same results.csv with one
process, with two worker processes, and on a local Ray instance that this test starts."""

import csv

import pytest
import ray

import ticketlab

TINY = dict(dataset="synthetic", model="mlp", widths=(16,), batch_size=50, eval_every="20it")
TIMING = {"seconds", "retrain_seconds", "time_vs_full", "search_seconds"}

CASES = {
    "lottery": dict(TINY, steps="40it", levels=1, seeds=(0, 1), controls=("random_reinit",)),
    "deconstruct": dict(TINY, steps="40it", levels=1, seeds=(0,), criterion=("large_final", "random"), untrained=("rewind",)),
    "supermask": dict(TINY, steps="40it", seeds=(0, 1)),
    "lca": dict(TINY, steps="12it", seeds=(0, 1)),
    "stability": dict(TINY, steps="40it", copy_steps=("0it", "20it"), ticket_levels=(0, 1), seeds=(0,), interpolation_points=5),
    "earlybird": dict(TINY, batch_size=200, eval_every="5ep", steps="6ep", prune_ratios=(0.3,), eb_window=3,
                      eb_epsilon=0.2, seeds=(0, 1)),
}


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance of two CPUs, started (and stopped) here; never an outside cluster."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def table(folder):
    with open(folder / "results.csv") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


@pytest.mark.heavy
@pytest.mark.parametrize("experiment", sorted(CASES))
def test_results_are_the_same_on_every_executor(tmp_path, experiment, local_ray):
    run = getattr(ticketlab, experiment)
    tables = {}
    for name, options in {"one process": dict(workers=1), "two workers": dict(workers=2),
                          "ray": dict(executor="ray", workers=2)}.items():
        out = tmp_path / name.replace(" ", "-")
        run(**CASES[experiment], **options, out=str(out), progress=False)
        (folder,) = out.glob(f"{experiment}-*")
        tables[name] = table(folder)
    assert tables["one process"], "the experiment wrote no rows"
    assert tables["two workers"] == tables["one process"]
    assert tables["ray"] == tables["one process"]
