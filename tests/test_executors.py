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


@pytest.mark.heavy
def test_a_fault_in_a_ray_task_reaches_the_command_as_itself(local_ray):
    """An exception of a unit on Ray (a full disk, say) is raised in the main process as the worker raised it,
    as with local worker processes: the CLI prints its one line (exit 3), not Ray's wrapped traceback."""
    from ticketlab.errors import Fault
    from ticketlab.run.executors import RayCluster

    def full_disk(ref, keys, stack, max_batch):
        raise Fault("/runs/lottery-x/seed-0: no space left on device")

    cluster = RayCluster({"exp": None}, workers=1)
    cluster.remote = ray.remote(num_cpus=1, max_retries=0)(full_disk)
    cluster.submit("batch", "exp", ["key"], False, 1)
    with pytest.raises(Fault) as caught:
        while not cluster.collect(5.0):
            pass
    assert type(caught.value) is Fault and str(caught.value) == "/runs/lottery-x/seed-0: no space left on device"
    cluster.close()
