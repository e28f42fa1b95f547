"""Many tickets at once: stacked models (train/stacked.py), worker processes (run/)."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from ticketlab import models, spec as specs
from ticketlab.data import load
from ticketlab.experiments.lottery import LotterySpec, run
from ticketlab.run.plan import plan_parallelism
from ticketlab.sparse import Mask
from ticketlab.store import Unit
from ticketlab.train import Schedule, fit
from ticketlab.train.fit import Checkpoints
from ticketlab.train.stacked import fit_stacked


def setup(model, optimizer, steps, widths=(32, 32)):
    data = load("synthetic")
    spec = specs.from_mapping(LotterySpec, {"dataset": "synthetic", "model": model, "widths": widths if model == "mlp" else None,
                                            "optimizer": optimizer, "lr": 0.05 if optimizer == "sgd" else 5e-3,
                                            "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 20,
                                            "steps": f"{steps}it", "eval_every": "50it"})
    make = lambda s: models.build(model, data.input_shape, 10, seed=s, widths=spec.model.widths)
    names = models.prunable_names(make(0))
    masks = [Mask({n: torch.rand(p.shape, generator=torch.Generator().manual_seed(10 + s)) > 0.3
                   for n, p in make(0).named_parameters() if n in names}, names) for s in range(3)]
    return data, spec, make, masks, Schedule.from_spec(spec.train, 30)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_each_stacked_model_matches_the_model_trained_alone(optimizer):
    data, spec, make, masks, schedule = setup("mlp", optimizer, 200)
    seeds = [0, 1, 2]
    alone = []
    for s, m in zip(seeds, masks):
        net = make(s)
        fit(net, data, spec.train, seed=s, start=0, end=200, schedule=schedule, mask=m)
        alone.append(net)
    stacked = [make(s) for s in seeds]
    results = fit_stacked(stacked, data, spec.train, seeds=seeds, start=0, end=200, schedule=schedule, masks=masks,
                          checkpoints=[Checkpoints() for _ in seeds])
    for a, b, m in zip(alone, stacked, masks):
        diff = max((x - y).abs().max().item() for x, y in zip(a.state_dict().values(), b.state_dict().values()))
        assert diff <= 1e-5
        # fully connected nets take the exact path: not merely close, bit-identical
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
        moved = max((x - y).abs().max().item() for x, y in zip(make(0).state_dict().values(), b.state_dict().values()))
        assert moved > 1e-2, "the models did train"
        for n, keep in m.tensors.items():
            assert torch.count_nonzero(dict(b.named_parameters())[n][~keep]) == 0
    assert len({r.final_loss for r in results}) == 3, "three different models, not one copied"


def test_batchnorm_models_stack_with_their_own_running_statistics():
    # Convnets go through vmap, whose conv gradients round differently (~1e-7 absolute): equal up to rounding,
    # which small-batch BatchNorm nets amplify quickly, so the comparison is after one step.
    data, spec, make, _, schedule = setup("resnet20", "sgd", 1)
    spec = specs.replace(spec, lr=0.01)
    schedule = Schedule.from_spec(spec.train, 30)
    seeds = [0, 1]
    alone = []
    for s in seeds:
        net = make(s)
        fit(net, data, spec.train, seed=s, start=0, end=1, schedule=schedule)
        alone.append(net)
    stacked = [make(s) for s in seeds]
    fit_stacked(stacked, data, spec.train, seeds=seeds, start=0, end=1, schedule=schedule, masks=[None, None],
                checkpoints=[Checkpoints(), Checkpoints()])
    for a, b in zip(alone, stacked):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert (x.float() - y.float()).abs().max() <= 1e-5, name
        assert dict(b.named_buffers())["bn.num_batches_tracked"] == 1
    mean = lambda net: dict(net.named_buffers())["bn.running_mean"]
    assert not torch.allclose(mean(stacked[0]), mean(stacked[1])), "each model keeps its own statistics"


def test_stacked_training_resumes_exactly_and_its_checkpoints_serve_a_lone_model(tmp_path):
    data, spec, make, masks, schedule = setup("mlp", "adam", 120)
    seeds = [0, 1]
    ref = [make(s) for s in seeds]
    fit_stacked(ref, data, spec.train, seeds=seeds, start=0, end=120, schedule=schedule, masks=masks[:2],
                checkpoints=[Checkpoints() for _ in seeds])
    units = [Unit(tmp_path / f"u{s}") for s in seeds]
    half = [make(s) for s in seeds]
    fit_stacked(half, data, spec.train, seeds=seeds, start=0, end=60, schedule=schedule, masks=masks[:2],
                checkpoints=[Checkpoints(u, every=60) for u in units])  # no checkpoint at the very end
    cks = [Checkpoints(u, every=30) for u in units]
    for u in units:  # as if killed at step 30: keep that checkpoint
        u.clear_checkpoint()
    fit_stacked([make(s) for s in seeds], data, spec.train, seeds=seeds, start=0, end=31, schedule=schedule,
                masks=masks[:2], checkpoints=cks)
    assert [c.resume_step() for c in cks] == [30, 30]
    resumed = [make(99) for _ in seeds]
    fit_stacked(resumed, data, spec.train, seeds=seeds, start=0, end=120, schedule=schedule, masks=masks[:2], checkpoints=cks)
    for a, b in zip(ref, resumed):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    alone = make(7)
    fit(alone, data, spec.train, seed=0, start=0, end=120, schedule=schedule, mask=masks[0],
        checkpoints=Checkpoints(units[0], every=30))
    diff = max((x - y).abs().max().item() for x, y in zip(alone.state_dict().values(), ref[0].state_dict().values()))
    assert diff <= 1e-5


def test_parallelism_rules():
    mlp = models.build("mnist1d_mlp", (40,), 10, seed=0)
    lenet = models.build("lenet_300_100", (1, 28, 28), 10, seed=0)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    many = dict(total_steps=10**6, batch_size=100, input_numel=40)
    p = plan_parallelism(mlp, cpu, width=24, **many)
    assert p.workers == min(os.cpu_count(), 24) and p.max_batch == min(32, -(-24 // p.workers))
    assert plan_parallelism(lenet, cpu, width=24, **many).max_batch == 1
    assert plan_parallelism(lenet, gpu, width=24, **many).max_batch > 1
    assert plan_parallelism(mlp, cpu, width=3, **many).max_batch == 1, "too few tasks per worker to stack"
    assert plan_parallelism(mlp, cpu, width=24, total_steps=100, batch_size=100, input_numel=40).workers == 1
    forced = plan_parallelism(mlp, cpu, width=24, workers=3, max_batch=5, **many)
    assert (forced.workers, forced.max_batch) == (3, 5) and "3 worker processes" in forced.describe()
    huge = plan_parallelism(models.build("vgg16_bn", (3, 32, 32), 10, seed=0), gpu, width=32, total_steps=10**6,
                            batch_size=4096, input_numel=3 * 32 * 32)
    from ticketlab.run.plan import _total_memory_bytes, model_bytes
    assert huge.max_batch * model_bytes(models.build("vgg16_bn", (3, 32, 32), 10, seed=0), 4096, 3072) <= _total_memory_bytes() // 4


SMALL = dict(dataset="synthetic", model="mlp", widths=(32, 32), steps="60it", batch_size=50, eval_every="20it",
             levels=2, lr=5e-3, seeds=(0, 1, 2))


@pytest.mark.heavy
def test_results_do_not_depend_on_workers_or_stacking(tmp_path):
    spec = specs.from_mapping(LotterySpec, SMALL)
    tables = {}
    for workers, batch in ((1, 1), (1, 4), (2, 1), (2, 3)):
        res = run(specs.replace(spec, workers=workers, max_batch=batch), out=tmp_path / f"w{workers}b{batch}")
        tables[(workers, batch)] = {(r["level"], r["arm"], r["seed"]): (r["test_accuracy"], r["weights_remaining"]) for r in res}
    ref = tables[(1, 1)]
    assert len(ref) == 3 * (1 + 3 + 3)
    for key, table in tables.items():
        assert table.keys() == ref.keys()
        for k, (acc, density) in table.items():
            assert abs(acc - ref[k][0]) <= 1e-4 and density == ref[k][1], (key, k)


@pytest.mark.heavy
def test_killed_parallel_stacked_run_resumes_identically(tmp_path, python, cli_env):
    args = ["--dataset", "synthetic", "--model", "mlp", "--widths", "256,256", "--steps", "500it", "--batch-size", "60",
            "--eval-every", "100it", "--checkpoint-every", "25it", "--levels", "1", "--seeds", "0,1,2,3",
            "--workers", "2", "--max-batch", "4", "--lr", "0.002", "--no-progress"]
    launch = lambda out: subprocess.Popen([python, "-m", "ticketlab", "lottery", *args, "--out", str(out)], env=cli_env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    ref = launch(tmp_path / "ref")
    assert ref.wait(timeout=600) == 0, ref.stderr.read().decode()
    out = tmp_path / "killed"
    proc = launch(out)
    deadline, killed = time.time() + 300, False
    while time.time() < deadline and proc.poll() is None:
        if list(out.glob("lottery-*/seed-*/level-01/*/checkpoint/MANIFEST.json")):
            os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: main process and workers
            killed = True
            break
        time.sleep(0.005)
    proc.wait()
    assert killed, "the run finished before it could be killed"
    resumed = launch(out)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()
    a, b = next((tmp_path / "ref").iterdir()), next(out.iterdir())
    units = sorted(p.parent.relative_to(a) for p in a.glob("seed-*/level-*/*/MANIFEST.json"))
    assert len(units) == 4 * 4
    for rel in units:
        for name in ("mask.safetensors", "final.safetensors", "metrics.jsonl"):
            assert (a / rel / name).read_bytes() == (b / rel / name).read_bytes(), (rel, name)


@pytest.mark.heavy
def test_workers_end_when_the_main_process_is_killed_alone(tmp_path, python, cli_env):
    """kill -9 of the main process only (not its group): its worker processes must not live on (they would
    wait forever, or keep writing into the run folder beside a resumed run)."""
    args = [python, "-m", "ticketlab", "lottery", "--dataset", "synthetic", "--model", "mlp", "--widths", "64",
            "--steps", "2000it", "--levels", "1", "--seeds", "0,1,2,3", "--workers", "2", "--out", str(tmp_path),
            "--no-progress"]
    proc = subprocess.Popen(args, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def children():
        found = []
        for entry in Path("/proc").iterdir():
            try:
                stat = (entry / "stat").read_text()
                if entry.name.isdigit() and int(stat[stat.rindex(")") + 2:].split()[1]) == proc.pid:
                    found.append(int(entry.name))
            except (OSError, ValueError):
                pass
        return found

    deadline = time.time() + 120
    while len(children()) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    workers = children()
    assert len(workers) >= 2 and proc.poll() is None, "the run should be training on two workers"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    alive = lambda: [w for w in workers if Path(f"/proc/{w}").exists() and "Z" not in
                     Path(f"/proc/{w}/stat").read_text().split(")")[1].split()[0:1]]
    while alive() and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(), "worker processes outlived the killed main process"
