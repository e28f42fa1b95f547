"""The referential game (Zhou et al. 2022's compositional-language experiment): topographic similarity,
the forgetting schedules, determinism and resumption."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ticketlab import spec as specs
from ticketlab.errors import UserError
from ticketlab.games import referential as game
from ticketlab.specs.referential import GameOptions, ReferentialSpec
from ticketlab.store import Unit

SMALL = GameOptions(game_steps=60, game_eval_every=20, game_checkpoint_every=20, reset_every=20, forget_every=20)


# ------------------------------------------------------------------------------------ topographic similarity
def test_compositional_code_has_topographic_similarity_one():
    meanings = game.attributes(8, 4).numpy()
    messages = meanings.copy()                       # symbol 1 names the colour, symbol 2 the shape
    assert game.topographic_similarity(meanings, messages) == pytest.approx(1.0)
    perm_c, perm_s = np.random.default_rng(0).permutation(8), np.random.default_rng(1).permutation(4)
    renamed = np.stack([perm_c[meanings[:, 0]], perm_s[meanings[:, 1]]], 1)   # any renaming of the symbols
    assert game.topographic_similarity(meanings, renamed) == pytest.approx(1.0)
    swapped = renamed[:, ::-1]                       # the order of the symbols does not matter either
    assert game.topographic_similarity(meanings, swapped) == pytest.approx(1.0)


def test_random_code_has_topographic_similarity_near_zero():
    meanings = game.attributes(8, 4).numpy()
    rng = np.random.default_rng(0)
    values = [game.topographic_similarity(meanings, rng.integers(0, 8, (32, 2))) for _ in range(50)]
    assert abs(np.mean(values)) < 0.03
    assert max(abs(v) for v in values) < 0.25


def test_holistic_permuted_code_is_not_compositional():
    """Each object its own unique message, but assigned at random (a permutation of the compositional
    code over objects): about no topographic similarity."""
    meanings = game.attributes(8, 4).numpy()
    values = [game.topographic_similarity(meanings, meanings[np.random.default_rng(s).permutation(32)]) for s in range(20)]
    assert abs(np.mean(values)) < 0.05
    # relabelling the objects on both sides alike changes nothing
    p = np.random.default_rng(3).permutation(32)
    messages = np.random.default_rng(4).integers(0, 8, (32, 2))
    assert game.topographic_similarity(meanings[p], messages[p]) == pytest.approx(game.topographic_similarity(meanings, messages))


def test_spearman_with_ties_matches_the_definition():
    assert list(game.ranks([3, 1, 3, 2])) == [2.5, 0.0, 2.5, 1.0]
    x, y = [1, 2, 2, 3, 5], [2, 1, 4, 4, 9]
    rx, ry = game.ranks(x), game.ranks(y)
    assert game.spearman(x, y) == pytest.approx(np.corrcoef(rx, ry)[0, 1])
    assert game.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert game.spearman([1, 2, 3], [5, 5, 5]) == 0.0   # constant: no correlation


# --------------------------------------------------------------------------------------------- forgetting
def _params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def test_partial_forget_keeps_exactly_the_masked_weights_bit_for_bit():
    team = game.new_team(SMALL, 0)
    masks = game.keep_masks(team.sender, 0.1)
    init = _params(team.sender)
    for name, p in init.items():   # the mask: round(10%) of each tensor, the largest at init
        m = masks[name]
        assert int(m.sum()) == round(0.1 * p.numel())
        if 0 < m.sum() < p.numel():
            assert p.abs()[m].min() >= p.abs()[~m].max()
    with torch.no_grad():   # pretend training moved every weight
        for p in team.sender.parameters():
            p.add_(0.5)
    before = _params(team.sender)
    game.forget(team.sender, masks, seed=123)
    after = _params(team.sender)
    for name in before:
        m = masks[name]
        assert torch.equal(after[name][m], before[name][m])
        assert (after[name][~m] != before[name][~m]).all()
    # the kept set is the same at every forgetting: the next one keeps the same entries
    game.forget(team.sender, masks, seed=124)
    again = _params(team.sender)
    for name in after:
        assert torch.equal(again[name][masks[name]], after[name][masks[name]])
        assert (again[name][~masks[name]] != after[name][~masks[name]]).all()


def test_intervention_schedules():
    o = dataclasses.replace(SMALL, reset_every=6, forget_every=3)
    team = game.new_team(o, 0)
    masks = {"sender": game.keep_masks(team.sender, o.forget_keep), "receiver": game.keep_masks(team.receiver, o.forget_keep)}
    s0, r0 = _params(team.sender), _params(team.receiver)
    assert game.intervene("receiver-reset", team, 3, o, 0, masks) is None
    assert game.intervene("receiver-reset", team, 6, o, 0, masks) == "receiver reset"
    s1, r1 = _params(team.sender), _params(team.receiver)
    assert all(torch.equal(s0[n], s1[n]) for n in s0)            # the sender untouched
    assert all((r0[n] != r1[n]).all() for n in r0)               # the receiver redrawn
    assert game.intervene("none", team, 6, o, 0, masks) is None
    assert game.intervene("partial-forget", team, 3, o, 0, masks) == "partial forget"
    s2, r2 = _params(team.sender), _params(team.receiver)
    for before, after, ms in ((s1, s2, masks["sender"]), (r1, r2, masks["receiver"])):
        for n in before:
            assert torch.equal(before[n][ms[n]], after[n][ms[n]])
            assert (before[n][~ms[n]] != after[n][~ms[n]]).all()


def test_games_have_distinct_candidates_with_the_target_among_them():
    g = torch.Generator().manual_seed(0)
    targets, shown, position = game.sample_games(32, 200, 5, g)
    assert torch.equal(shown[torch.arange(200), position], targets)
    assert all(len(set(row)) == 5 for row in shown.tolist())
    assert len(set(position.tolist())) == 5   # the target is not always in one place


# ----------------------------------------------------------------------------------- determinism, resume
def test_same_seed_same_numbers_and_arms_share_the_start():
    a, sa = game.train_game(SMALL, 3, "partial-forget")
    b, sb = game.train_game(SMALL, 3, "partial-forget")
    assert a == b and sa == sb
    c, _ = game.train_game(SMALL, 3, "none")
    assert a[0] == {**c[0], "arm": "partial-forget"}                  # the same agents at initialisation
    assert a[1] == {**c[1], "arm": "partial-forget", "intervention": "partial forget"}   # and until the first forgetting
    assert a[2] != {**c[2], "arm": "partial-forget", "intervention": "partial forget"}
    d, _ = game.train_game(SMALL, 4, "partial-forget")
    assert d != a
    assert [r["step"] for r in a] == [0, 20, 40, 60]


class Stop(Exception):
    pass


@pytest.mark.parametrize("arm", ["receiver-reset", "partial-forget"])
def test_resume_after_an_interruption_gives_identical_numbers(tmp_path, arm):
    whole, summary = game.train_game(SMALL, 1, arm)
    unit = Unit(tmp_path / "unit")

    def interrupt(step):
        if step == 40:
            raise Stop

    with pytest.raises(Stop):
        game.train_game(SMALL, 1, arm, progress=interrupt, checkpoint=unit)
    assert unit.load_checkpoint()[1]["step"] == 40
    resumed, resumed_summary = game.train_game(SMALL, 1, arm, checkpoint=unit)
    assert resumed == whole and resumed_summary == summary


# ----------------------------------------------------------------------------------------------- spec, run
def test_spec_names_do_not_collide_and_bad_input_is_refused():
    names = [s.name for s in specs.settings_of(ReferentialSpec)]
    assert len(names) == len(set(names))
    with pytest.raises(UserError, match="only 4 objects"):
        specs.build(ReferentialSpec, {"colours": 2, "shapes": 2, "candidates": 5})
    with pytest.raises(UserError):
        specs.from_mapping(ReferentialSpec, {"game_arms": "none,bogus"})


@pytest.mark.slow
def test_experiment_writes_results_plot_and_table(tmp_path):
    from ticketlab.experiments.referential import run
    from ticketlab.report.tables import referential

    spec = specs.build(ReferentialSpec, {"game_steps": 40, "game_eval_every": 20, "reset_every": 20, "forget_every": 20,
                                         "seeds": (0, 1), "workers": 1})
    res = run(spec, out=str(tmp_path), progress=False)
    assert len(res) == 3 * 2 * 3   # arms x seeds x measures (0, 20, 40)
    folder = next(tmp_path.glob("referential-*"))
    assert (folder / "topographic_similarity.png").read_bytes()[:4] == b"\x89PNG"
    lines = referential(res.rows)
    assert len(lines) == 2 + 3 and "partial-forget" in lines[-1]
    # run again: every unit is read back, the same rows
    again = run(spec, out=str(tmp_path), progress=False)
    assert again.rows == res.rows
    # the numbers are train_game's own
    rows, _ = game.train_game(spec.game, 1, "receiver-reset")
    assert [r for r in res.rows if r["arm"] == "receiver-reset" and r["seed"] == 1] == rows


def test_forget_spec_carries_the_game_and_its_task():
    from ticketlab.specs.forget import ForgetSpec

    names = [s.name for s in specs.settings_of(ForgetSpec)]
    assert len(names) == len(set(names))   # the game's settings sit beside forget's without a clash
    spec = specs.build(ForgetSpec, {"task": "referential-game", "game_steps": 100, "seeds": (0, 1)})
    from ticketlab.experiments.referential import game_options, seeds_of

    assert game_options(spec).game_steps == 100 and seeds_of(spec) == (0, 1)
    with pytest.raises(UserError, match="unknown task"):
        specs.from_mapping(ForgetSpec, {"task": "translate"})


KILL_GAME = ["--task", "referential-game", "--game-steps", "1200", "--game-eval-every", "300",
             "--game-checkpoint-every", "100", "--game-arms", "partial-forget", "--forget-every", "300",
             "--seeds", "0", "--workers", "1", "--no-progress"]


def _game_cli(python, env, out):
    import subprocess

    return subprocess.Popen([python, "-m", "ticketlab", "forget", *KILL_GAME, "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.heavy
def test_sigkill_mid_game_then_resume_gives_identical_numbers(tmp_path, python, cli_env):
    import json
    import signal
    import time

    ref = _game_cli(python, cli_env, tmp_path / "ref")
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()
    ref_dir = next((tmp_path / "ref").iterdir())
    out = tmp_path / "killed"
    proc = _game_cli(python, cli_env, out)
    deadline, killed = time.time() + 120, False
    while time.time() < deadline and proc.poll() is None:
        manifests = list(out.glob("forget-*/seed-0/partial-forget/checkpoint/MANIFEST.json"))
        if manifests and json.loads(manifests[0].read_text())["step"] >= 400:
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.01)
    proc.wait()
    assert killed, "the game finished before it could be killed; make it longer"
    resumed = _game_cli(python, cli_env, out)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    run_dir = next(out.iterdir())
    assert (ref_dir / "results.csv").read_bytes() == (run_dir / "results.csv").read_bytes()
    rel = "seed-0/partial-forget/curve.jsonl"
    assert (ref_dir / rel).read_bytes() == (run_dir / rel).read_bytes()


@pytest.mark.parametrize("argv, ignored", [
    (["--task", "referential-game", "--lr", "0.1"], "--lr"),
    (["--task", "referential-game", "--methods", "llf", "--dataset", "synthetic"], "--dataset"),
    (["--game-steps", "100"], "--game-steps"),
])
def test_a_setting_of_the_other_task_is_refused_not_ignored(tmp_path, run_cli, argv, ignored):
    code, out, err = run_cli("forget", *argv, "--out", tmp_path / "out")
    assert code == 2 and len(err.strip().splitlines()) == 1 and ignored in err
    assert not (tmp_path / "out").exists()
