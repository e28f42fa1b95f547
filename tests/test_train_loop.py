"""The one training loop: callbacks (order, state in checkpoints, stopping), Snapshot with both steppers
(and across an interruption), the checkpoint format of stacked training, and which jobs stack."""

import pytest
import torch
from interrupt import Stop, kill_at, state

from ticketlab import models
from ticketlab.data import load
from ticketlab.sparse import Mask
from ticketlab.store import Unit
from ticketlab.train import Callback, OnStep, Schedule, Snapshot, fit
from ticketlab.train import jobs as jobs_module
from ticketlab.train.fit import Checkpoints
from ticketlab.train.jobs import Job, run_jobs
from ticketlab.train.loop import train_loop
from ticketlab.train.stacked import fit_stacked


class Train:
    """What a TrainSpec gives the loop (only the fields it reads)."""
    optimizer, lr, momentum, nesterov, weight_decay = "adam", 5e-3, 0.9, False, 0.0
    batch_size, eval_batch_size, eval_every = 20, 1000, "5it"


DATA = load("synthetic")
SCHEDULE = Schedule(lr=5e-3, kind="constant", total=40)


def mlp(seed):
    return models.build("mlp", DATA.input_shape, DATA.num_classes, seed=seed, widths=(16, 16))


def bn_net(seed):
    return models.build("mnist1d_cnn_bn", DATA.input_shape, DATA.num_classes, seed=seed)


def random_mask(seed):
    net = mlp(0)
    names = models.prunable_names(net)
    g = torch.Generator().manual_seed(100 + seed)
    return Mask({n: torch.rand(p.shape, generator=g) > 0.4 for n, p in net.named_parameters() if n in names}, names)


def equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------- callbacks
class Log(Callback):
    def __init__(self, name, log, mask=None):
        self.name, self.log, self.mask = name, log, mask

    def on_start(self, step, model):
        self.log.append((self.name, "on_start", step))

    def before_step(self, step, model):
        self.log.append((self.name, "before_step", step))

    def after_backward(self, step, model):
        self.log.append((self.name, "after_backward", step))

    def after_step(self, step, model):
        self.log.append((self.name, "after_step", step))
        if self.mask is not None:   # the mask is applied before any caller's callback sees the update
            for n, keep in self.mask.tensors.items():
                assert torch.count_nonzero(dict(model.named_parameters())[n][~keep]) == 0

    def on_eval(self, step, row):
        self.log.append((self.name, "on_eval", step))

    def finish(self):
        self.log.append((self.name, "finish", None))


def test_callbacks_are_called_in_list_order_at_each_hook():
    log = []
    mask = random_mask(0)
    fit(mlp(0), DATA, Train, seed=0, start=0, end=6, schedule=SCHEDULE, mask=mask,
        callbacks=[Log("a", log, mask), Log("b", log, mask)])
    expected = [("a", "on_start", 0), ("b", "on_start", 0), ("a", "on_eval", 0), ("b", "on_eval", 0)]
    for step in range(6):
        expected += [(n, "before_step", step) for n in "ab"] + [(n, "after_backward", step) for n in "ab"]
        expected += [(n, "after_step", step + 1) for n in "ab"]
        if step + 1 in (5, 6):
            expected += [(n, "on_eval", step + 1) for n in "ab"]
    expected += [("a", "finish", None), ("b", "finish", None)]
    assert log == expected


def test_a_single_callback_is_the_same_as_a_list_of_one_and_stop_ends_training():
    class StopAt(Callback):
        def after_step(self, step, model):
            return step == 7

    a, b = mlp(0), mlp(0)
    ra = fit(a, DATA, Train, seed=0, start=0, end=20, schedule=SCHEDULE, callbacks=StopAt())
    rb = fit(b, DATA, Train, seed=0, start=0, end=20, schedule=SCHEDULE, callbacks=[StopAt()])
    assert ra.steps == rb.steps == 7 and ra.metrics[-1]["step"] == 7
    assert ra.metrics == rb.metrics and equal_states(state(a), state(b))
    c = mlp(0)
    fit(c, DATA, Train, seed=0, start=0, end=7, schedule=SCHEDULE)
    assert equal_states(state(a), state(c)), "stopping at 7 gives the weights of a run to 7"


class Counter(Callback):
    """A callback with state: the sum of the losses it saw at evaluations, and how many steps it saw."""

    def __init__(self, tag):
        self.tag, self.steps = tag, torch.zeros((), dtype=torch.long)

    def after_step(self, step, model):
        self.steps += 1

    def state_dict(self):
        return {f"{self.tag}.steps": self.steps.clone()}

    def load_state_dict(self, tensors):
        self.steps = tensors[f"{self.tag}.steps"].clone()


def test_callback_state_travels_in_checkpoints_with_one_or_several_callbacks(tmp_path):
    # one stateful callback: the `callback.` prefix of older checkpoints; several: `callback.<i>.`
    one = Unit(tmp_path / "one")
    with pytest.raises(Stop):
        fit(mlp(0), DATA, Train, seed=0, start=0, end=20, schedule=SCHEDULE, checkpoints=Checkpoints(one, 5),
            callbacks=[Counter("x"), kill_at(12)])
    tensors, st = one.load_checkpoint()
    assert st["step"] == 10 and int(tensors["callback.x.steps"]) == 10
    two = Unit(tmp_path / "two")
    with pytest.raises(Stop):
        fit(mlp(0), DATA, Train, seed=0, start=0, end=20, schedule=SCHEDULE, checkpoints=Checkpoints(two, 5),
            callbacks=[Counter("x"), Counter("y"), kill_at(12)])
    tensors, _ = two.load_checkpoint()
    assert int(tensors["callback.0.x.steps"]) == 10 and int(tensors["callback.1.y.steps"]) == 10
    assert not any(k.startswith("callback.x") for k in tensors)
    x, y = Counter("x"), Counter("y")
    fit(mlp(0), DATA, Train, seed=0, start=0, end=20, schedule=SCHEDULE, checkpoints=Checkpoints(two, 5), callbacks=[x, y])
    assert int(x.steps) == int(y.steps) == 20, "resumed at 10 with the state of 10 steps, then 10 more"


# ------------------------------------------------------------------------- the loop with a scripted stepper
class Scripted:
    """A stepper without a network, whose numbers are known in advance: model k's training loss at step s is
    s + 10 k (plus `noise` x a draw from torch's global RNG, as dropout would use it). It logs the loop's calls."""

    def __init__(self, k: int = 1, noise: float = 0.0):
        self.models = [torch.nn.Linear(1, 1) for _ in range(k)]   # what callbacks see
        self.device = torch.device("cpu")
        self.noise = noise
        self.calls: list[tuple] = []
        self.trained = torch.zeros(k, dtype=torch.float64)   # the "weights": the sum of the rates stepped with

    def train_mode(self):
        self.calls.append(("train_mode",))

    def forward_backward(self, step):
        k = len(self.models)
        loss = torch.tensor([step + 10.0 * i for i in range(k)], dtype=torch.float64)
        return loss + self.noise * torch.rand(k, dtype=torch.float64) if self.noise else loss

    def update(self, step, lr):
        self.calls.append(("update", step, lr))
        self.trained += lr

    def evaluate(self, step, lr):
        self.calls.append(("evaluate", step, lr))
        return [{"step": step, "test_loss": 100.0 - step - i, "test_accuracy": step / 100 + i / 1000, "lr": lr}
                for i in range(len(self.models))]

    def state(self):
        return [({"trained": self.trained[i:i + 1].clone()}, {"model": i}) for i in range(len(self.models))]

    def load_state(self, states):
        self.calls.append(("load_state", [meta for _, meta in states]))
        self.trained = torch.cat([t["trained"] for t, _ in states])

    def close(self):
        self.calls.append(("close",))


def rate(step):
    return step + 0.5


def scripted_run(stepper, *, start=0, end=7, eval_every=3, checkpoints=None, callbacks=None, rng_seed=None):
    k = len(stepper.models)
    return train_loop(stepper, callbacks or [[] for _ in range(k)], start=start, end=end, schedule=rate,
                      eval_every=eval_every, checkpoints=checkpoints or [Checkpoints() for _ in range(k)], rng_seed=rng_seed)


def test_the_loop_evaluates_averages_the_train_loss_and_steps_with_the_schedule():
    """Two models, [0, 7), eval every 3: evaluations at 0, 3, 6 and 7 (the end). train_loss is the mean of the
    losses since the previous evaluation (model 0: steps 0-2 -> 1, 3-5 -> 4, 6 -> 6; model 1: 10 more); each
    evaluation is told the rate of the last step taken (at the start: the first step's)."""
    stepper = Scripted(k=2)
    results = scripted_run(stepper)
    for i, result in enumerate(results):
        assert [r["step"] for r in result.metrics] == [0, 3, 6, 7]
        assert [r["train_loss"] for r in result.metrics] == [None, 1.0 + 10 * i, 4.0 + 10 * i, 6.0 + 10 * i]
        assert [r["lr"] for r in result.metrics] == [0.5, 2.5, 5.5, 6.5]
        assert result.steps == 7 and result.final_loss == 93.0 - i and result.final_accuracy == 0.07 + i / 1000
        assert result.best_step == 7 and result.early_stop_step == 7
    assert [c for c in stepper.calls if c[0] == "update"] == [("update", s, s + 0.5) for s in range(7)]
    assert stepper.calls[0] == ("evaluate", 0, 0.5) and stepper.calls[1] == ("train_mode",)
    assert stepper.calls[-1] == ("close",)
    assert torch.equal(stepper.trained, torch.full((2,), sum(s + 0.5 for s in range(7)), dtype=torch.float64))


def test_the_loop_from_a_later_start_and_with_eval_every_zero():
    """Started at 4 (a later level's window), the first evaluation is at 4 with the rate of step 4; eval_every 0
    means every step."""
    stepper = Scripted()
    (result,) = scripted_run(stepper, start=4, end=7, eval_every=0)
    assert [(r["step"], r["lr"], r["train_loss"]) for r in result.metrics] == [(4, 4.5, None), (5, 4.5, 4.0), (6, 5.5, 5.0),
                                                                               (7, 6.5, 6.0)]
    assert result.steps == 3


def test_the_loop_resumes_its_counters_running_loss_and_global_rng_exactly(tmp_path):
    """A stepper that draws from torch's global RNG (as dropout does), killed at step 5 with a checkpoint at 4 (one
    step after the evaluation at 3, so the running loss holds one step): resumed, every number equals the
    uninterrupted run's."""
    whole = scripted_run(Scripted(noise=1.0), end=8, rng_seed=7)[0].metrics
    unit = Unit(tmp_path / "u")

    class Kill:
        def after_step(self, step, model):
            if step == 5:
                raise Stop

    with pytest.raises(Stop):
        scripted_run(Scripted(noise=1.0), end=8, rng_seed=7, checkpoints=[Checkpoints(unit, 2)], callbacks=[[Kill()]])
    tensors, state = unit.load_checkpoint()
    assert state["step"] == 4 and state["count"] == 1 and len(state["metrics"]) == 2
    torch.manual_seed(12345)   # whatever the RNG holds now, the checkpoint's state is restored
    stepper = Scripted(noise=1.0)
    resumed = scripted_run(stepper, end=8, rng_seed=7, checkpoints=[Checkpoints(unit, 2)])[0].metrics
    assert resumed == whole
    assert stepper.calls[0] == ("load_state", [{"model": 0}]), "the stepper gets its own state back"
    assert [c[1] for c in stepper.calls if c[0] == "update"] == [4, 5, 6, 7]
    assert float(stepper.trained[0]) == sum(s + 0.5 for s in range(8))


def test_no_checkpoint_is_saved_at_the_last_step_and_models_must_resume_together(tmp_path):
    a, b = Unit(tmp_path / "a"), Unit(tmp_path / "b")
    scripted_run(Scripted(), end=8, checkpoints=[Checkpoints(a, 2)])
    assert a.load_checkpoint()[1]["step"] == 6, "saved at 2, 4, 6; at 8 the unit's files are written instead"
    with pytest.raises(ValueError, match="resume from the same step"):   # one model has a checkpoint, one has none
        scripted_run(Scripted(k=2), end=8, checkpoints=[Checkpoints(a, 2), Checkpoints(b, 2)])
    b.save_checkpoint({"trained": torch.zeros(1), "running_loss": torch.zeros((), dtype=torch.float64)},
                      {"step": 4, "count": 0, "metrics": [], "optimizer": {}})
    with pytest.raises(ValueError, match="resume from the same step"):   # both have one, at different steps
        scripted_run(Scripted(k=2), end=8, checkpoints=[Checkpoints(a, 2), Checkpoints(b, 2)])
    # the first model that has a unit keeps the clock for all: here the second
    c = Unit(tmp_path / "c")
    scripted_run(Scripted(k=2), end=8, checkpoints=[Checkpoints(), Checkpoints(c, 2)])
    assert c.load_checkpoint()[1]["step"] == 6
    with pytest.raises(ValueError, match="2 models, 1 callback lists"):
        train_loop(Scripted(k=2), [[]], start=0, end=1, schedule=rate, eval_every=1, checkpoints=[Checkpoints()] * 2)


# ------------------------------------------------------------------------------------ time-based checkpoints
class Clock:
    """A stand-in for the `time` module of train/checkpoint.py: the time is whatever the test sets."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def monotonic(self) -> float:
        return self.now


def test_time_based_checkpoints_are_due_at_an_evaluation_once_the_interval_has_passed(tmp_path, monkeypatch):
    from ticketlab.train import checkpoint as checkpoint_module

    clock = Clock()
    monkeypatch.setattr(checkpoint_module, "time", clock)
    seconds = checkpoint_module.CHECKPOINT_SECONDS
    assert seconds > 1
    ck = Checkpoints(Unit(tmp_path / "u"), every=0)
    assert not ck.due(5, at_eval=True), "no time has passed since the start"
    clock.now += seconds - 1
    assert not ck.due(5, at_eval=True)
    clock.now += 1
    assert not ck.due(7, at_eval=False), "time alone is not enough: only at an evaluation"
    assert ck.due(7, at_eval=True), "exactly the interval after the start"
    clock.now += 1000
    ck.save({"w": torch.zeros(1)}, {"step": 7})
    assert not ck.due(8, at_eval=True), "the interval starts again at the last save"
    clock.now += seconds
    assert ck.due(9, at_eval=True)
    # without a unit nothing is due; with `every` the step alone decides, whatever the clock says
    assert not Checkpoints(None, every=0).due(9, at_eval=True)
    assert not Checkpoints(None, every=3).due(9, at_eval=True)
    by_step = Checkpoints(Unit(tmp_path / "v"), every=3)
    assert by_step.due(9, at_eval=False) and not by_step.due(10, at_eval=True) and not by_step.due(11, at_eval=False)


@pytest.mark.parametrize("seconds_per_step, saved_at", [(0.0, None), (1.0, 10), (3.0, 15)])
def test_fit_saves_time_based_checkpoints_only_at_evaluations(tmp_path, monkeypatch, seconds_per_step, saved_at):
    """eval_every 5 on [0, 20), killed at step 18, clock = step x seconds_per_step, interval 10 s: a frozen clock
    never saves; 1 s a step saves at the evaluation of step 10; 3 s a step saves at 5, 10 and 15 (not at step 4,
    12 s in, which is no evaluation). Resumed, the run ends with the weights of an uninterrupted one."""
    from ticketlab.train import checkpoint as checkpoint_module

    clock = Clock(0.0)
    monkeypatch.setattr(checkpoint_module, "time", clock)
    monkeypatch.setattr(checkpoint_module, "CHECKPOINT_SECONDS", 10.0)
    tick = OnStep(lambda step, model: setattr(clock, "now", step * seconds_per_step))
    unit = Unit(tmp_path / "u")
    with pytest.raises(Stop):
        fit(mlp(0), DATA, Train, seed=0, start=0, end=20, schedule=SCHEDULE, checkpoints=Checkpoints(unit, 0),
            callbacks=[tick, kill_at(18)])
    loaded = unit.load_checkpoint()
    assert (loaded and loaded[1]["step"]) == saved_at
    resumed = mlp(0)
    fit(resumed, DATA, Train, seed=0, start=0, end=20, schedule=SCHEDULE, checkpoints=Checkpoints(unit, 0), callbacks=[tick])
    whole = mlp(0)
    fit(whole, DATA, Train, seed=0, start=0, end=20, schedule=SCHEDULE)
    assert equal_states(state(resumed), state(whole))


# ------------------------------------------------------------------------------------------------ Snapshot
def test_snapshot_alone_captures_start_middle_and_end_weights():
    mask = random_mask(0)
    model = mlp(0)
    snap = Snapshot({0, 7, 20})
    fit(model, DATA, Train, seed=0, start=0, end=20, schedule=SCHEDULE, mask=mask, callbacks=[snap])
    start = mlp(0)
    mask.apply_(start)
    assert equal_states(snap.weights[0], state(start)), "w_0: the start weights, masked"
    to7 = mlp(0)
    fit(to7, DATA, Train, seed=0, start=0, end=7, schedule=SCHEDULE, mask=mask)
    assert equal_states(snap.weights[7], state(to7))
    assert equal_states(snap.weights[20], state(model))
    assert snap.captured is snap.weights
    assert all(v.device.type == "cpu" for v in snap.weights[7].values())


def test_snapshot_of_stacked_mlps_equals_the_snapshot_of_each_alone():
    seeds, masks = [0, 1], [random_mask(0), random_mask(1)]
    snaps = [Snapshot({0, 9}) for _ in seeds]
    nets = [mlp(s) for s in seeds]
    fit_stacked(nets, DATA, Train, seeds=seeds, start=0, end=15, schedule=SCHEDULE, masks=masks,
                checkpoints=[Checkpoints(), Checkpoints()], callbacks=[[s] for s in snaps])
    for s, mask, snap in zip(seeds, masks, snaps):
        alone = Snapshot({0, 9})
        fit(mlp(s), DATA, Train, seed=s, start=0, end=15, schedule=SCHEDULE, mask=mask, callbacks=[alone])
        assert equal_states(snap.weights[0], alone.weights[0]) and equal_states(snap.weights[9], alone.weights[9])
    assert not torch.equal(snaps[0].weights[9]["fc.weight"], snaps[1].weights[9]["fc.weight"])


def test_snapshot_of_stacked_batchnorm_models_has_each_models_own_statistics():
    seeds = [0, 1]
    snaps = [Snapshot({3}) for _ in seeds]
    nets = [bn_net(s) for s in seeds]
    fit_stacked(nets, DATA, Train, seeds=seeds, start=0, end=5, schedule=SCHEDULE, masks=[None, None],
                checkpoints=[Checkpoints(), Checkpoints()], callbacks=[[s] for s in snaps])
    ref = [bn_net(s) for s in seeds]   # the same stack, stopped at 3
    fit_stacked(ref, DATA, Train, seeds=seeds, start=0, end=3, schedule=SCHEDULE, masks=[None, None],
                checkpoints=[Checkpoints(), Checkpoints()])
    for snap, r in zip(snaps, ref):
        assert equal_states(snap.weights[3], state(r))
        assert int(snap.weights[3]["bn1.num_batches_tracked"]) == 3
    mean = lambda w: w["bn1.running_mean"]
    assert not torch.equal(mean(snaps[0].weights[3]), mean(snaps[1].weights[3]))
    assert not torch.equal(mean(snaps[0].weights[3]), mean(state(bn_net(0)))), "the statistics moved"
    # after training the models hold their own buffers again, not views of a stacked tensor
    for n in nets:
        assert n.bn1.running_mean.untyped_storage().nbytes() == n.bn1.running_mean.numel() * 4


@pytest.mark.parametrize("stacked", [False, True])
def test_snapshot_survives_an_interruption(tmp_path, stacked):
    seeds, masks = [0, 1], [random_mask(0), random_mask(1)]

    def train(units, kill=None):
        snaps = [Snapshot({0, 7}) for _ in seeds]
        nets = [mlp(s) for s in seeds]
        cks = [Checkpoints(u, 5) for u in units]
        extra = [kill_at(kill)] if kill else []
        if stacked:
            fit_stacked(nets, DATA, Train, seeds=seeds, start=0, end=20, schedule=SCHEDULE, masks=masks,
                        checkpoints=cks, callbacks=[[snaps[0], *extra], [snaps[1]]])
        else:
            for s in seeds:
                fit(nets[s], DATA, Train, seed=s, start=0, end=20, schedule=SCHEDULE, mask=masks[s],
                    checkpoints=cks[s], callbacks=[snaps[s], *extra])
        return snaps, nets

    whole, whole_nets = train([Unit(tmp_path / "whole" / str(s)) for s in seeds])
    units = [Unit(tmp_path / "cut" / str(s)) for s in seeds]
    with pytest.raises(Stop):
        train(units, kill=12)
    assert units[0].load_checkpoint()[1]["step"] == 10
    resumed, resumed_nets = train(units)
    for a, b, na, nb in zip(whole, resumed, whole_nets, resumed_nets):
        assert sorted(b.weights) == [0, 7]
        assert equal_states(a.weights[0], b.weights[0]) and equal_states(a.weights[7], b.weights[7])
        assert equal_states(state(na), state(nb))


# ------------------------------------------------------------------------------------- checkpoint format
def test_stacked_and_lone_checkpoints_have_one_format(tmp_path):
    alone = Unit(tmp_path / "alone")
    fit(mlp(0), DATA, Train, seed=0, start=0, end=6, schedule=SCHEDULE, checkpoints=Checkpoints(alone, 5))
    units = [Unit(tmp_path / f"s{s}") for s in (0, 1)]
    fit_stacked([mlp(0), mlp(1)], DATA, Train, seeds=[0, 1], start=0, end=6, schedule=SCHEDULE, masks=[None, None],
                checkpoints=[Checkpoints(u, 5) for u in units])
    ta, sa = alone.load_checkpoint()
    for u in units:
        t, s = u.load_checkpoint()
        assert t.keys() == ta.keys() and s.keys() == sa.keys()
        assert s["optimizer"]["param_groups"][0]["params"] == sa["optimizer"]["param_groups"][0]["params"]
    assert "rng.cpu" in ta and "rng.cuda" not in ta, "on the CPU: the CPU generator only"
    assert torch.equal(units[0].load_checkpoint()[0]["model.fc.weight"], ta["model.fc.weight"])


# -------------------------------------------------------------------------------------------------- jobs
def test_jobs_with_stackable_callbacks_stack_and_others_run_alone(monkeypatch):
    calls = []
    real_fit, real_stacked = jobs_module.fit, jobs_module.fit_stacked
    monkeypatch.setattr(jobs_module, "fit", lambda *a, **k: calls.append("alone") or real_fit(*a, **k))
    monkeypatch.setattr(jobs_module, "fit_stacked", lambda models, *a, **k: calls.append(len(models)) or real_stacked(models, *a, **k))

    class Watcher(Callback):   # not declared stackable
        pass

    snaps = [Snapshot({4}), Snapshot({4})]
    jobs = [Job(0, mlp(0), 0, 0, 8, SCHEDULE, callbacks=[snaps[0]]), Job(1, mlp(1), 1, 0, 8, SCHEDULE, callbacks=snaps[1]),
            Job(2, mlp(2), 2, 0, 8, SCHEDULE, callbacks=[Watcher()]), Job(3, mlp(3), 3, 0, 8, SCHEDULE, callbacks=None)]
    seen = []
    results = run_jobs(jobs, DATA, Train, stack=True, progress=lambda key, n: seen.append((key, n)))
    assert sorted(calls, key=str) == [3, "alone"], "the Watcher's job alone, the other three stacked"
    assert [r.steps for r in results] == [8] * 4
    assert all(4 in s.weights for s in snaps)
    assert sorted(seen) == sorted((k, n) for k in range(4) for n in range(1, 9))
    assert Job(9, mlp(0), 0, 0, 1, SCHEDULE).callbacks == []
