import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

import ticketlab
from ticketlab import spec as specs
from ticketlab.codec import identical
from ticketlab.errors import UserError
from ticketlab.experiments.lottery import LotterySpec, run
from ticketlab.store import Unit

SMALL = dict(dataset="synthetic", model="mlp", widths=(32, 32), steps="60it", batch_size=50, eval_every="20it",
             levels=3, lr=5e-3)


def small(**kw):
    return specs.from_mapping(LotterySpec, {**SMALL, **kw})


def unit(out, spec, seed, level, arm):
    return Unit(Path(out) / f"lottery-{specs.spec_hash(spec)}" / f"seed-{seed}" / f"level-{level:02d}" / arm)


@pytest.mark.parametrize("rewind", ["0it", "20it"])
def test_rewound_weights_at_every_level_equal_rewind_point_times_mask(tmp_path, rewind):
    spec = small(rewind=rewind, controls=())
    run(spec, out=tmp_path)
    dense = unit(tmp_path, spec, 0, 0, "ticket")
    init = dense.read("start.safetensors")
    point = dense.read("rewind.safetensors") if rewind != "0it" else init
    if rewind != "0it":
        assert not torch.equal(point["hidden.0.weight"], init["hidden.0.weight"]), "w_k is trained, not the init"
    densities = []
    for level in range(4):
        u = unit(tmp_path, spec, 0, level, "ticket")
        mask, start = u.read("mask.safetensors"), u.read("start.safetensors")
        for name, w in (init if level == 0 else point).items():
            expected = w * mask[name] if name in mask else w
            assert torch.equal(start[name], expected), (level, name)
        densities.append(u.read("result.json")["weights_remaining"])
        # stored by reference to the rewind point (level 0's init is the point itself, in full)
        source = u.manifest()["files"]["start.safetensors"].get("derived", {}).get("from")
        assert source == (None if level == 0 else f"../../level-00/ticket/{'start' if rewind == '0it' else 'rewind'}.safetensors")
    assert densities[0] == 1.0 and all(a > b for a, b in zip(densities, densities[1:]))


def test_the_dense_network_is_one_uninterrupted_training_whatever_the_rewind_point(tmp_path):
    """Level 0 is the dense network trained on [0, T) in one go; w_k is a snapshot taken during that
    training, so level 0's numbers (and weights) are the same for every --rewind, and w_k equals the
    weights of a run stopped at k."""
    finals, rows = [], []
    for rewind in ("0it", "20it", "40it"):
        spec = small(rewind=rewind, controls=(), levels=1, optimizer="sgd", lr=0.05)
        run(spec, out=tmp_path)
        dense = unit(tmp_path, spec, 0, 0, "ticket")
        finals.append(dense.read("final.safetensors"))
        rows.append({k: v for k, v in dense.read("result.json").items() if k != "seconds"})
        if rewind != "0it":
            stopped = small(steps=rewind, controls=(), levels=0, optimizer="sgd", lr=0.05)
            run(stopped, out=tmp_path / "stopped")
            w_k = unit(tmp_path / "stopped", stopped, 0, 0, "ticket").read("final.safetensors")
            snapshot = dense.read("rewind.safetensors")
            assert all(torch.equal(snapshot[k], w_k[k]) for k in w_k), rewind
    assert rows[0]["train_steps"] == 60
    assert rows[1] == rows[0] and rows[2] == rows[0]
    for other in finals[1:]:
        assert all(torch.equal(other[k], finals[0][k]) for k in finals[0])


def test_a_run_folder_of_the_two_piece_dense_training_is_refused(tmp_path, capsys):
    from ticketlab import cli

    spec = small(rewind="20it", controls=(), levels=1)
    folder = tmp_path / f"lottery-{specs.spec_hash(spec)}"
    (folder / "seed-0" / "pretrain").mkdir(parents=True)
    args = ["lottery", "--dataset", "synthetic", "--model", "mlp", "--widths", "32,32", "--steps", "60it", "--batch-size", "50",
            "--eval-every", "20it", "--levels", "1", "--rewind", "20it", "--controls", "none", "--out", str(tmp_path), "--no-progress"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "trained the dense network in two pieces" in err and "--force" in err
    assert cli.main(args + ["--force"]) == 0


def test_masks_are_nested_and_controls_use_the_ticket_mask(tmp_path):
    spec = small(controls=("random_reinit", "random_prune", "reshuffle"), levels=2)
    res = run(spec, out=tmp_path)
    assert {r["arm"] for r in res} == {"ticket", "random_reinit", "random_prune", "reshuffle"}
    m1 = unit(tmp_path, spec, 0, 1, "ticket").read("mask.safetensors")
    m2 = unit(tmp_path, spec, 0, 2, "ticket").read("mask.safetensors")
    assert all(not (m2[k] & ~m1[k]).any() for k in m1)
    init = unit(tmp_path, spec, 0, 0, "ticket").read("start.safetensors")
    reinit = unit(tmp_path, spec, 0, 2, "random_reinit")
    assert all(torch.equal(reinit.read("mask.safetensors")[k], m2[k]) for k in m2)
    assert not torch.equal(reinit.read("start.safetensors")["hidden.0.weight"], init["hidden.0.weight"] * m2["hidden.0.weight"])
    rp = unit(tmp_path, spec, 0, 2, "random_prune").read("mask.safetensors")
    assert all(int(rp[k].sum()) == int(m2[k].sum()) for k in m2) and any(not torch.equal(rp[k], m2[k]) for k in m2)
    sh = unit(tmp_path, spec, 0, 2, "reshuffle").read("start.safetensors")
    for k in m2:
        kept = init[k][m2[k]]
        assert torch.equal(sh[k][m2[k]].sort().values, kept.sort().values) and not torch.equal(sh[k][m2[k]], kept)


@pytest.mark.parametrize("mode", ["finetune", "lr-rewind"])
def test_finetune_and_lr_rewind_start_from_the_previous_level(tmp_path, mode):
    spec = small(retrain=mode, retrain_steps="20it", controls=(), levels=2)
    res = run(spec, out=tmp_path)
    prev_final = unit(tmp_path, spec, 0, 1, "ticket").read("final.safetensors")
    u = unit(tmp_path, spec, 0, 2, "ticket")
    mask, start = u.read("mask.safetensors"), u.read("start.safetensors")
    for k, w in prev_final.items():
        assert torch.equal(start[k], w * mask[k] if k in mask else w)
    assert u.manifest()["files"]["start.safetensors"]["derived"]["from"] == "../../level-01/ticket/final.safetensors"
    steps = {r["level"]: r["train_steps"] for r in res}
    assert steps == {0: 60, 1: 20, 2: 20}
    metrics = u.read("metrics.jsonl")
    expected_first = 60 if mode == "finetune" else 40
    assert metrics[0]["step"] == expected_first and metrics[-1]["step"] == expected_first + 20


def test_same_spec_gives_identical_numbers_and_another_seed_changes_them(tmp_path):
    spec = small(levels=2)
    a = run(spec, out=tmp_path / "a")
    b = run(spec, out=tmp_path / "b")
    key = lambda r: (r["level"], r["arm"], r["seed"], r["test_accuracy"], r["test_loss"], r["weights_remaining"])
    assert [key(r) for r in a] == [key(r) for r in b]
    c = run(specs.replace(spec, seeds=(1,)), out=tmp_path / "a")
    assert [r["test_loss"] for r in c] != [r["test_loss"] for r in a]


def test_python_api_returns_a_table_and_resumes(tmp_path):
    res = ticketlab.lottery(out=tmp_path, **{**SMALL, "levels": 1}, seeds=(0, 1))
    assert len(res) == 2 * (1 + 3)  # level 0: the dense ticket; level 1: ticket and two controls
    assert {"level", "weights_remaining", "arm", "seed", "test_accuracy"} <= set(res.columns)
    assert all(0 < r["weights_remaining"] <= 1 for r in res)
    summary = res.summary()
    assert {(s["level"], s["arm"]) for s in summary} == {(0, "ticket"), (1, "ticket"), (1, "random_reinit"), (1, "random_prune")}
    folder = tmp_path / f"lottery-{specs.spec_hash(specs.from_mapping(LotterySpec, {**SMALL, 'levels': 1}))}"
    csv_text = (folder / "results.csv").read_text().splitlines()
    assert csv_text[0].startswith("level,weights_remaining,arm,seed,test_accuracy") and len(csv_text) == 1 + len(res)
    assert (folder / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    # a second call finds everything done: same rows, no retraining (unit files untouched)
    stamp = (folder / "seed-1" / "level-01" / "ticket" / "final.safetensors").stat().st_mtime_ns
    again = ticketlab.lottery(out=tmp_path, **{**SMALL, "levels": 1}, seeds=(0, 1))
    assert [r["test_accuracy"] for r in again] == [r["test_accuracy"] for r in res]
    assert (folder / "seed-1" / "level-01" / "ticket" / "final.safetensors").stat().st_mtime_ns == stamp


def test_a_corrupt_unit_is_recomputed_not_used(tmp_path):
    spec = small(levels=1, controls=())
    first = run(spec, out=tmp_path)
    u = unit(tmp_path, spec, 0, 1, "ticket")
    path = u.path / "final.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    (u.path / "result.json").write_text(json.dumps({**u.read("result.json"), "test_accuracy": 1.5}))
    second = run(spec, out=tmp_path)
    assert [r["test_accuracy"] for r in second] == [r["test_accuracy"] for r in first]
    assert Unit(u.path).is_done()


def test_python_api_applies_and_validates_overrides_of_a_spec(tmp_path):
    """`ticketlab.lottery(spec, levels=2)`: the spec's settings, with the override on top (validated)."""
    spec = small(levels=1, controls=(), widths=(12,), steps="20it")
    res = ticketlab.lottery(spec, out=tmp_path, levels=2)
    assert sorted(r["level"] for r in res) == [0, 1, 2], "levels=2 was applied"
    assert spec.lottery.levels == 1, "the spec given is not changed"
    (folder,) = tmp_path.glob("lottery-*")
    record = json.loads((folder / "spec.json").read_text())
    assert record["spec"]["lottery"]["levels"] == 2
    assert record["non_default"]["widths"] == [12] and record["non_default"]["steps"] == "20it", "the rest is the spec's"
    final = Unit(folder / "seed-0" / "level-02" / "ticket").read("final.safetensors")
    assert final["hidden.0.weight"].shape == (12, 256)
    remaining = [r["weights_remaining"] for r in sorted(res, key=lambda r: r["level"])]
    assert remaining[0] == 1.0 and remaining[0] > remaining[1] > remaining[2] > 0.5
    for bad, message in [({"levels": -1}, "levels: must be >= 0, got -1"),
                         ({"levls": 2}, "unknown setting 'levls'"),
                         ({"levels": "two"}, "levels: expected an integer"),
                         ({"rewind": "20it"}, "is not before the end of training")]:
        with pytest.raises(UserError, match=message):
            ticketlab.lottery(spec, out=tmp_path / "bad", **bad)
    assert not (tmp_path / "bad").exists(), "bad overrides write nothing"


def test_a_corrupt_rewind_point_is_recomputed_not_used(tmp_path):
    """w_k lives in the dense network's unit (level 0) as rewind.safetensors. Truncated after a run (and with a
    later level gone, so the re-run must rewind again), level 0 is trained again, and the numbers and files are
    those of the first run."""
    spec = small(rewind="20it", levels=2, controls=("random_prune",))
    first = run(spec, out=tmp_path)
    dense = unit(tmp_path, spec, 0, 0, "ticket")
    w_k = (dense.path / "rewind.safetensors").read_bytes()
    level2 = unit(tmp_path, spec, 0, 2, "ticket")
    start2 = Unit(level2.path).read("start.safetensors")   # stored as a reference to w_k
    (dense.path / "rewind.safetensors").write_bytes(w_k[: len(w_k) // 2])
    assert not Unit(dense.path).is_done()
    assert not Unit(unit(tmp_path, spec, 0, 1, "ticket").path).is_done(), "its reference to w_k no longer holds"
    import shutil
    shutil.rmtree(level2.path)
    second = run(spec, out=tmp_path)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(second) == strip(first)
    assert Unit(dense.path).is_done() and (dense.path / "rewind.safetensors").read_bytes() == w_k
    again = Unit(level2.path).read("start.safetensors")
    assert again.keys() == start2.keys() and all(identical(again[k], start2[k]) for k in again), \
        "level 2 rewound to the recomputed w_k"


KILL_SPEC = ["--dataset", "synthetic", "--model", "mlp", "--widths", "256,256", "--steps", "900it", "--batch-size", "60",
             "--eval-every", "100it", "--checkpoint-every", "50it", "--levels", "2", "--controls", "random_reinit",
             "--lr", "0.002", "--no-progress"]


def _cli(python, env, out, *extra):
    return subprocess.Popen([python, "-m", "ticketlab", "lottery", *KILL_SPEC, "--out", str(out), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.heavy
def test_sigkill_mid_level_then_resume_is_bit_identical(tmp_path, python, cli_env):
    ref = _cli(python, cli_env, tmp_path / "ref")
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()
    ref_dir = next((tmp_path / "ref").iterdir())

    out = tmp_path / "killed"
    proc = _cli(python, cli_env, out)
    deadline = time.time() + 120
    killed_in = None
    while time.time() < deadline and proc.poll() is None:
        cks = list(out.glob("lottery-*/seed-0/level-01/*/checkpoint/MANIFEST.json"))
        if cks:
            proc.send_signal(signal.SIGKILL)
            killed_in = cks[0].parent.parent
            break
        time.sleep(0.005)
    proc.wait()
    assert killed_in is not None, "the run finished before it could be killed; make it longer"
    assert not Unit(killed_in).is_done(), "killed mid-level: that unit must be unfinished"
    resumed = _cli(python, cli_env, out)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    run_dir = next(out.iterdir())
    units = sorted(p.parent.relative_to(ref_dir) for p in ref_dir.glob("seed-*/level-*/*/MANIFEST.json"))
    assert len(units) == 5
    for rel in units:
        for name in ("mask.safetensors", "final.safetensors", "metrics.jsonl"):
            assert (ref_dir / rel / name).read_bytes() == (run_dir / rel / name).read_bytes(), (rel, name)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(json.loads((ref_dir / "results.json").read_text())) == strip(json.loads((run_dir / "results.json").read_text()))


def test_lca_flag_records_loss_change_allocation_for_every_unit(tmp_path):
    spec = small(levels=1, lca=True)
    res = run(spec, out=tmp_path)
    assert {"lca_relative_error", "lca_fraction_helped"} <= set(res.columns)
    for r in res:
        assert r["lca_relative_error"] < 1e-2 and 0 < r["lca_fraction_helped"] < 1
        u = unit(tmp_path, spec, 0, r["level"], r["arm"])
        steps = u.read("lca_steps.csv")
        assert len(steps) == 60 and u.read("lca_summary.json")["steps"] == 60
    plain = run(small(levels=1), out=tmp_path / "plain")
    assert [r["test_accuracy"] for r in plain] == [r["test_accuracy"] for r in res], "recording LCA does not change training"
