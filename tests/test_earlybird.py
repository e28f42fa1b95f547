"""Early-bird tickets: mask distance, the FIFO test, real channel pruning, the search, `ticketlab earlybird`."""

import json
import subprocess

import pytest
import torch

from ticketlab import spec as specs
from ticketlab.errors import UserError
from ticketlab.experiments.common import Setup
from ticketlab.experiments.earlybird import EarlyBirdSpec, Search, run
from ticketlab.instruments import channel_prune
from ticketlab.instruments.mask_distance import EarlyBird, bn_layers, distance_matrix, global_mask, hamming, scores
from ticketlab.models import build
from ticketlab.sparse import Mask, prune
from ticketlab.sparse.count import kept_count, pruned_count
from ticketlab.train import fit


def random_masks(n, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(length, generator=g) < 0.5 for _ in range(n)]


# -------------------------------------------------------------------------------------------- distance
def test_hamming_is_a_normalised_metric():
    a, b, c = random_masks(3, 200)
    assert hamming(a, a) == 0.0
    assert hamming(a, b) == hamming(b, a) == int((a != b).sum()) / 200
    assert hamming(a, ~a) == 1.0
    assert hamming(a, c) <= hamming(a, b) + hamming(b, c)
    flipped = a.clone()
    flipped[:20] = ~flipped[:20]
    assert hamming(a, flipped) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        hamming(a, a[:10])
    m = distance_matrix([a, b, c])
    assert torch.allclose(m, torch.tensor([[hamming(x, y) for y in (a, b, c)] for x in (a, b, c)]), atol=1e-7)


def test_global_mask_prunes_exactly_the_smallest():
    values = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.35, 0.8, 0.4, 0.6])
    keep = global_mask(values, 0.3)
    assert int((~keep).sum()) == 3 and set((~keep).nonzero().squeeze(1).tolist()) == {1, 5, 3}
    ties = torch.tensor([0.3, 0.1, 0.3, 0.3])
    assert global_mask(ties, 0.5).tolist() == [False, False, True, True], "ties: the earlier position goes first"


@pytest.mark.parametrize("n, ratio, pruned", [(10, 0.25, 3), (5, 0.5, 3), (10, 0.05, 1), (4, 0.125, 1), (10, 0.3, 3),
                                              (75, 0.3, 23), (10, 0.04, 0), (7, 0.5, 4)])
def test_ratio_counts_follow_the_one_count_rule(n, ratio, pruned):
    """The count of a ratio is sparse.count's (a tie removes the channel), the same as pruning's: 0.25 of
    10 channels removes 3 (2.5 rounds up, not to the even 2), 0.5 of 5 removes 3."""
    values = torch.rand(n, generator=torch.Generator().manual_seed(n))
    assert int((~global_mask(values, ratio)).sum()) == pruned == pruned_count(n, ratio)
    assert n - int(prune({"w": values}, Mask({"w": torch.ones(n, dtype=torch.bool)}), {"w": ratio}, level=1)["w"].sum()) == pruned


def test_fifo_declares_the_early_bird_when_the_newest_is_close_to_all_older():
    base = random_masks(1, 100, seed=1)[0]

    def near(k):  # base with its first k entries flipped
        m = base.clone()
        m[:k] = ~m[:k]
        return m

    far = random_masks(4, 100, seed=2)
    eb = EarlyBird(window=5, epsilon=0.1)
    sequence = far + [near(8), near(4), near(2), near(1), base]
    found = [eb.push(m) for m in sequence]
    # at index 7 the FIFO still holds far[3] (~0.5 away); at index 8 it holds near(8..1) and base: within 0.08
    assert found.index(True) == 8
    # one older mask beyond epsilon is enough to block the test
    eb = EarlyBird(window=5, epsilon=0.1)
    for m in [near(15), near(1), near(1), near(1)]:
        assert not eb.push(m)
    assert not eb.push(base), "near(15) is 0.15 away from base"
    assert eb.push(base), "the FIFO dropped near(15)"


# ---------------------------------------------------------------------------------------- channel pruning
def trained_bn_net():
    m = build("mnist1d_cnn_bn", (40,), 10, seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i in (1, 2, 3):
            bn = getattr(m, f"bn{i}")
            bn.weight.copy_(torch.randn(25, generator=g))
            bn.bias.copy_(torch.randn(25, generator=g))
            bn.running_mean.copy_(torch.randn(25, generator=g))
            bn.running_var.copy_(torch.rand(25, generator=g) + 0.5)
    return m


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("empty_layer", [False, True])
def test_real_channel_pruning_equals_the_masked_network(mode, empty_layer):
    m = trained_bn_net()
    keep = global_mask(scores(m), 0.5)
    if empty_layer:
        keep[25:50] = False   # all of bn2
    per_layer = channel_prune.split(m, keep)
    channel_prune.mask_channels_(m, per_layer)
    small = channel_prune.prune_channels(m, per_layer)
    kept = [max(int(per_layer[f"bn{i}"].sum()), 1) for i in (1, 2, 3)]
    assert [getattr(small, f"conv{i}").out_channels for i in (1, 2, 3)] == kept
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in m.parameters())
    x = torch.randn(64, 40, generator=torch.Generator().manual_seed(1))
    getattr(m, mode)()
    getattr(small, mode)()
    with torch.no_grad():
        assert torch.allclose(small(x), m(x), atol=1e-5, rtol=1e-5)
    assert channel_prune.forward_flops(small, (40,)) < channel_prune.forward_flops(m, (40,))


@torch.no_grad()
def as_trained_bn(m, g):
    """BatchNorm scales, shifts and statistics away from their init, as after training."""
    for module in m.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.copy_(torch.randn(module.num_features, generator=g))
            module.bias.copy_(0.1 * torch.randn(module.num_features, generator=g))
            module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=g))
            module.running_var.copy_(torch.rand(module.num_features, generator=g) + 0.5)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_real_channel_pruning_of_vgg_equals_the_masked_network(mode):
    m = build("vgg11_bn", (3, 16, 16), 10, seed=0)
    g = torch.Generator().manual_seed(3)
    as_trained_bn(m, g)
    with torch.no_grad():
        for module in m.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.bias.copy_(0.1 * torch.randn(module.out_channels, generator=g))
    keep = global_mask(scores(m), 0.6)
    per_layer = channel_prune.split(m, keep)
    channel_prune.mask_channels_(m, per_layer)
    small = channel_prune.prune_channels(m, per_layer)
    widths = [layer.conv.out_channels for layer in small.layers if hasattr(layer, "conv")]
    assert widths == [max(int(k.sum()), 1) for k in per_layer.values()] and sum(widths) < sum(k.numel() for k in per_layer.values())
    x = torch.randn(8, 3, 16, 16, generator=g)
    getattr(m, mode)()
    getattr(small, mode)()
    with torch.no_grad():
        assert torch.allclose(small(x), m(x), atol=1e-4, rtol=1e-4)
    assert channel_prune.forward_flops(small, (3, 16, 16)) < channel_prune.forward_flops(m, (3, 16, 16))


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("name,shape", [("resnet20", (3, 16, 16)), ("resnet18", (3, 32, 32))])
def test_real_channel_pruning_of_resnets_prunes_inside_blocks_and_equals_the_masked_network(name, shape, mode):
    """A ResNet's channels are pruned only between a block's two convolutions (the others feed residual
    sums): the smaller network has those fewer channels, its stages intact, and computes the masked network."""
    m = build(name, shape, 10, seed=0)
    assert bn_layers(m) == [n for n, mod in m.named_modules() if n.endswith(".bn1") and n.count(".") == 2]
    g = torch.Generator().manual_seed(3)
    as_trained_bn(m, g)
    keep = global_mask(scores(m), 0.6)
    per_layer = channel_prune.split(m, keep)
    per_layer[bn_layers(m)[0]][:] = False   # a block losing every inner channel keeps one, at zero
    channel_prune.mask_channels_(m, per_layer)
    small = channel_prune.prune_channels(m, per_layer)
    assert channel_prune.resnet_inner(small) == [max(int(k.sum()), 1) for k in per_layer.values()]
    assert small.stages == m.stages and small.fc.in_features == m.fc.in_features
    x = torch.randn(4, *shape, generator=g)
    getattr(m, mode)()
    getattr(small, mode)()
    with torch.no_grad():
        expected = m(x)
        assert (small(x) - expected).abs().max() <= 1e-4 * max(1.0, float(expected.abs().max()))
    assert channel_prune.forward_flops(small, shape) < 0.7 * channel_prune.forward_flops(m, shape)


def test_forward_flops_by_hand_and_unsupported_models():
    m = build("mnist1d_cnn_bn", (40,), 10, seed=0)
    # output lengths 19, 10, 5
    assert channel_prune.forward_flops(m, (40,)) == 2 * (25 * 5 * 19 + 25 * 25 * 3 * 10 + 25 * 25 * 3 * 5 + 125 * 10)
    with pytest.raises(UserError, match="supports mnist1d_cnn_bn"):
        channel_prune.prune_channels(build("mlp", (40,), 10, seed=0), {})


# ----------------------------------------------------------------------------------------------- search
SMALL = dict(dataset="synthetic", model="mnist1d_cnn_bn", steps="10ep", batch_size=100, eval_every="5ep", lr=1e-2)


def test_search_penalty_is_the_l1_subgradient_and_state_round_trips():
    m = trained_bn_net()
    cb = Search(m, (0.5,), 6, penalty=0.25, epsilon=0.1, window=3, full=False)
    for g in cb.gammas:
        g.grad = torch.zeros_like(g)
    cb.after_backward(0, m)
    assert torch.equal(m.bn1.weight.grad, 0.25 * torch.sign(m.bn1.weight))
    for step in range(1, 19):
        stop = cb.after_step(step, m)   # unchanged weights: identical masks, early bird at epoch 3
    assert cb.found == {0.5: 3} and stop is True
    again = Search(m, (0.5,), 6, penalty=0.25, epsilon=0.1, window=3, full=False)
    again.load_state_dict(cb.state_dict())
    assert again.found == cb.found and len(again.masks[0.5]) == 3 and sorted(again.weights) == [1, 2, 3]


def test_earlybird_experiment_on_a_bn_net_stops_early_and_prunes_for_real(tmp_path):
    spec = specs.from_mapping(EarlyBirdSpec, {**SMALL, "prune_ratios": (0.3, 0.6), "eb_epsilon": 0.2})
    res = run(spec, out=tmp_path, progress=False)
    folder = tmp_path / f"earlybird-{specs.spec_hash(spec)}"
    summary = json.loads((folder / "summary.json").read_text())
    search = summary["search"]["0"]
    assert search["stopped_early"] and search["search_steps"] < 60
    r3, r6 = res.where(prune_ratio=0.3)[0], res.where(prune_ratio=0.6)[0]
    assert r3["eb_found"] and r3["channels_remaining"] == pytest.approx((75 - pruned_count(75, 0.3)) / 75)  # 52 of 75
    dense = sum(p.numel() for p in build("mnist1d_cnn_bn", (1, 16, 16), 10, seed=0).parameters())
    assert r6["parameters"] < r3["parameters"] < dense
    assert r6["forward_flops"] < r3["forward_flops"]
    assert 0 < r3["flops_vs_full"] < 1 and r3["test_accuracy"] > 0.5
    assert (folder / "mask_distance.png").read_bytes()[:4] == b"\x89PNG"
    assert run(spec, out=tmp_path, progress=False).rows == res.rows


def test_earlybird_without_batchnorm_uses_magnitude_masks(tmp_path):
    spec = specs.from_mapping(EarlyBirdSpec, {**SMALL, "model": "mlp", "widths": (16,), "prune_ratios": (0.5,),
                                              "eb_full_matrix": True, "eb_every_epoch": True, "steps": "6ep"})
    res = run(spec, out=tmp_path, progress=False)
    (row,) = res.rows
    total = 256 * 16 + 16 * 10
    assert row["weights_remaining"] == pytest.approx(kept_count(total, 0.5) / total)
    folder = tmp_path / f"earlybird-{specs.spec_hash(spec)}"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["search"]["0"]["search_steps"] == 36 and len(summary["mask_distance"]["0.5"]) == 6
    assert len((folder / "tickets_by_epoch.csv").read_text().splitlines()) == 1 + 6
    assert (folder / "tickets_by_epoch.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.heavy
def test_earlybird_results_do_not_depend_on_workers(tmp_path):
    """Each seed's search and the tickets drawn from it are units: with two worker processes the seeds run
    side by side, with the same numbers (timings aside). Epochs past an early-stopped search draw nothing."""
    import csv
    import ticketlab

    settings = dict(SMALL, model="mlp", widths=(16,), steps="6ep", prune_ratios=(0.3, 0.5), eb_window=3,
                    eb_epsilon=0.2, eb_every_epoch=True, seeds=(0, 1))
    timing = {"retrain_seconds", "time_vs_full"}

    def table(path):
        with open(path) as f:
            return [{k: v for k, v in row.items() if k not in timing} for row in csv.DictReader(f)]

    tables = []
    for workers in (1, 2):
        out = tmp_path / f"workers-{workers}"
        ticketlab.earlybird(**settings, workers=workers, out=str(out), progress=False)
        (folder,) = out.glob("earlybird-*")
        tables.append([table(folder / "results.csv"), table(folder / "tickets_by_epoch.csv")])
        searches = json.loads((folder / "summary.json").read_text())["search"]
    rows, by_epoch = tables[0]
    assert tables[0] == tables[1] and len(rows) == 2 * 2
    assert len(by_epoch) == sum(s["epochs_recorded"] for s in searches.values())


FAST = ["--dataset", "synthetic", "--steps", "5ep", "--batch-size", "200", "--eval-every", "5ep", "--no-progress"]
MLP = ["--model", "mlp", "--widths", "8"]


@pytest.mark.parametrize("args, message", [
    ([*MLP, "--steps", "2ep"], "the search needs at least --eb-window 5 epochs"),
    ([*MLP, "--prune-ratios", "0.5,1.5"], "--prune-ratios: must be in (0, 1)"),
    ([*MLP, "--eb-window", "1"], "--eb-window: must be >= 2"),
])
def test_cli_earlybird_bad_input(run_cli, tmp_path, args, message):
    out = tmp_path / "runs"
    code, stdout, stderr = run_cli("earlybird", *FAST, *args, "--out", out)
    assert code == 2 and stdout == ""
    assert len(stderr.strip().splitlines()) == 1 and message in stderr, stderr
    assert not out.exists()


@pytest.mark.heavy
def test_cli_earlybird_smoke(python, cli_env, tmp_path):
    r = subprocess.run([python, "-m", "ticketlab", "earlybird", *FAST, *MLP, "--prune-ratios", "0.5", "--out", str(tmp_path)],
                       env=cli_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (folder,) = tmp_path.glob("earlybird-*")
    assert "test_accuracy" in (folder / "results.csv").read_text().splitlines()[0]


@pytest.mark.slow
def test_mnist1d_cnn_bn_early_bird_emerges_early(tmp_path):
    from pathlib import Path

    data = Path(__file__).resolve().parents[1] / "data"
    spec = specs.from_mapping(EarlyBirdSpec, dict(data_dir=str(data), model="mnist1d_cnn_bn", steps="30ep", eval_every="10ep",
                                                  lr=1e-2, prune_ratios=(0.3, 0.5)))
    res = run(spec, out=tmp_path, progress=False)
    print("\nMNIST-1D early bird:", [(r["prune_ratio"], r["eb_epoch"], r["test_accuracy"], round(r["flops_vs_full"], 3)) for r in res])
    assert all(r["eb_found"] and r["eb_epoch"] <= 15 for r in res)
    assert res.where(prune_ratio=0.3)[0]["test_accuracy"] > 0.85
    assert all(r["flops_vs_full"] < 0.7 for r in res)


class Stop(Exception):
    pass


def test_search_killed_and_resumed_finds_the_same_early_bird(tmp_path):
    from ticketlab.store import Unit
    from ticketlab.train.fit import Checkpoints

    spec = specs.from_mapping(EarlyBirdSpec, {**SMALL, "eb_epsilon": 0.2})
    setup = Setup.prepare(spec)

    def search(unit, stop_at=None):
        model = setup.build_model(0)
        cb = Search(model, (0.3, 0.6), setup.iterations_per_epoch, penalty=1e-4, epsilon=0.2, window=5, full=False)

        def kill(step, m):
            if step == stop_at:
                raise Stop

        fitted = fit(model, setup.data, spec.train, seed=0, start=0, end=setup.total_steps, schedule=setup.schedule,
                     checkpoints=Checkpoints(unit, 6), callbacks=cb, on_step=kill)
        return cb, fitted, model

    whole, fitted, model = search(Unit(tmp_path / "a"))
    assert fitted.steps < setup.total_steps and all(e is not None for e in whole.found.values())
    with pytest.raises(Stop):
        search(Unit(tmp_path / "b"), stop_at=27)
    resumed, fitted2, model2 = search(Unit(tmp_path / "b"))
    assert resumed.found == whole.found and fitted2.steps == fitted.steps
    for r in whole.ratios:
        assert all(torch.equal(a, b) for a, b in zip(whole.masks[r], resumed.masks[r]))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))
