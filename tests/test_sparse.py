import math

import pytest
import torch

from ticketlab import models
from ticketlab.errors import UserError
from ticketlab.io import load_tensors, save_tensors
from ticketlab.sparse import CRITERIA, Mask, layer_fractions, prune, random_mask_like, score
from ticketlab.sparse.prune import round_half_up


def lenet():
    return models.build("lenet_300_100", (1, 28, 28), 10, seed=0)


def test_mask_ones_density_and_round_trip(tmp_path):
    model = lenet()
    names = models.prunable_names(model)
    mask = Mask.ones(model, names)
    assert mask.density() == 1.0 and mask.total() == 784 * 300 + 300 * 100 + 100 * 10
    save_tensors(tmp_path / "m.safetensors", mask.to_tensors())
    back = Mask(load_tensors(tmp_path / "m.safetensors"))
    assert back.equal(mask)
    assert all(t.dtype == torch.bool for t in back.tensors.values())


def test_each_level_removes_round_fraction_of_remaining_to_within_one_weight():
    g = torch.Generator().manual_seed(0)
    model = lenet()
    names = models.prunable_names(model)
    fractions = layer_fractions(names, models.output_name(model), 0.2, 0.1)
    mask = Mask.ones(model, names)
    weights = dict(model.named_parameters())
    for level in range(1, 16):
        before = {n: int(mask[n].sum()) for n in names}
        scores = {n: torch.randn(weights[n].shape, generator=g) for n in names}
        new = prune(scores, mask, fractions, level=level, generator=g)
        for n in names:
            assert abs(before[n] - int(new[n].sum()) - fractions[n] * before[n]) < 1.0
        # without a level number the count is round(f * remaining) exactly
        plain = prune(scores, mask, fractions, generator=g)
        for n in names:
            assert before[n] - int(plain[n].sum()) == round_half_up(fractions[n] * before[n])
            assert not (new[n] & ~mask[n]).any(), "pruned weights never come back"
        mask = new


def test_density_after_L_levels_is_geometric_within_one_weight():
    model = lenet()
    names = models.prunable_names(model)
    out = models.output_name(model)
    fractions = layer_fractions(names, out, 0.2, 0.1)
    mask = Mask.ones(model, names)
    g = torch.Generator().manual_seed(1)
    for level in range(1, 31):
        scores = {n: torch.rand(mask[n].shape, generator=g) for n in names}
        mask = prune(scores, mask, fractions, level=level, generator=g)
        for n in names:
            expected = mask[n].numel() * (1 - fractions[n]) ** level
            assert abs(int(mask[n].sum()) - expected) <= 1.0, (n, level, int(mask[n].sum()), expected)


def test_magnitude_pruning_keeps_the_largest_and_breaks_ties_reproducibly():
    w = torch.tensor([[0.1, -5.0, 0.3, 2.0], [1.0, 1.0, 1.0, 1.0]])
    mask = Mask({"w": torch.ones_like(w, dtype=torch.bool)})
    scores = score("large_final", {"w": w}, {"w": w}, ["w"], torch.Generator())
    new = prune(scores, mask, {"w": 0.25}, generator=torch.Generator().manual_seed(0))
    assert int(new["w"].sum()) == 6
    assert not new["w"][0, 0] and not new["w"][0, 2], "the two smallest magnitudes go first"
    ties = torch.ones(1, 100)
    tie_mask = Mask({"w": torch.ones_like(ties, dtype=torch.bool)})
    picks = [prune({"w": ties}, tie_mask, {"w": 0.5}, generator=torch.Generator().manual_seed(s))["w"] for s in (0, 0, 1)]
    assert torch.equal(picks[0], picks[1]) and not torch.equal(picks[0], picks[2])


def test_already_pruned_weights_do_not_count_as_remaining():
    w = torch.arange(1.0, 11.0).view(1, 10)
    mask = Mask({"w": torch.tensor([[False] * 5 + [True] * 5])})
    new = prune({"w": w}, mask, {"w": 0.4})
    assert new["w"].tolist() == [[False] * 7 + [True] * 3]


def test_global_pruning_pools_layers_and_output_keeps_its_own_rate():
    a = torch.arange(1.0, 101.0).view(10, 10)          # small magnitudes
    b = torch.arange(1000.0, 1100.0).view(10, 10)      # large magnitudes
    o = torch.arange(1.0, 11.0).view(1, 10)
    mask = Mask({k: torch.ones_like(v, dtype=torch.bool) for k, v in {"a": a, "b": b, "o": o}.items()})
    fr = {"a": 0.2, "b": 0.2, "o": 0.1}
    new = prune({"a": a, "b": b, "o": o}, mask, fr, scope="global", global_fraction=0.2, level=1)
    assert int(new["a"].sum()) == 60 and int(new["b"].sum()) == 100, "the 40 pruned come from the small layer"
    assert int(new["o"].sum()) == 9
    layerwise = prune({"a": a, "b": b, "o": o}, mask, fr)
    assert int(layerwise["a"].sum()) == 80 and int(layerwise["b"].sum()) == 80


def test_layer_fractions_output_and_overrides():
    names = ["l1.weight", "l2.weight", "fc.weight"]
    f = layer_fractions(names, "fc.weight", 0.2, 0.0, {"l2.weight": 0.5})
    assert f == {"l1.weight": 0.2, "l2.weight": 0.5, "fc.weight": 0.0}
    with pytest.raises(UserError, match="prunable layers: l1.weight"):
        layer_fractions(names, "fc.weight", 0.2, 0.1, {"nope": 0.3})
    mask = Mask({n: torch.ones(4, 4, dtype=torch.bool) for n in names})
    new = prune({n: torch.rand(4, 4) for n in names}, mask, f)
    assert int(new["fc.weight"].sum()) == 16, "fraction 0 excludes the output layer"


def test_random_mask_has_the_same_per_layer_counts():
    mask = Mask({"a": torch.rand(30, 30) > 0.7, "b": torch.rand(5, 50) > 0.2})
    r = random_mask_like(mask, torch.Generator().manual_seed(0))
    assert {n: int(r[n].sum()) for n in r} == {n: int(mask[n].sum()) for n in mask}
    assert not r.equal(mask)


def test_criteria_follow_their_definitions():
    wi = torch.tensor([1.0, -2.0, 3.0, -0.5])
    wf = torch.tensor([2.0, 1.0, -0.1, -4.0])
    g = torch.Generator().manual_seed(0)
    s = lambda c: score(c, {"w": wi}, {"w": wf}, ["w"], g)["w"]
    assert torch.equal(s("large_final"), wf.abs())
    assert torch.equal(s("small_init"), -wi.abs())
    assert torch.equal(s("movement"), (wf - wi).abs())
    assert torch.equal(s("magnitude_increase"), wf.abs() - wi.abs())
    same = s("large_final_same_sign")
    assert same[0] == 2.0 and same[3] == 4.0 and same[1] == -math.inf and same[2] == -math.inf
    diff = s("large_final_diff_sign")
    assert diff[1] == 1.0 and diff[0] == -math.inf
    assert "random" in CRITERIA and len(CRITERIA) == 9 + 16


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_masked_weights_stay_exactly_zero_through_training(optimizer):
    from ticketlab import spec as specs
    from ticketlab.data import load
    from ticketlab.experiments.lottery import LotterySpec
    from ticketlab.train import Schedule, fit

    data = load("synthetic")
    spec = specs.from_mapping(LotterySpec, {"optimizer": optimizer, "lr": 0.05 if optimizer == "sgd" else 1e-2,
                                            "momentum": 0.9, "nesterov": optimizer == "sgd", "weight_decay": 1e-3,
                                            "batch_size": 50, "steps": "60it", "eval_every": "30it"})
    model = models.build("mlp", data.input_shape, 10, seed=0, widths=(32,))
    names = models.prunable_names(model)
    mask = Mask({n: torch.rand(p.shape, generator=torch.Generator().manual_seed(3)) > 0.5
                 for n, p in model.named_parameters() if n in names})
    fit(model, data, spec.train, seed=0, start=0, end=60, schedule=Schedule.from_spec(spec.train, 12), mask=mask)
    params = dict(model.named_parameters())
    for n in names:
        assert torch.count_nonzero(params[n][~mask[n]]) == 0
        assert torch.count_nonzero(params[n][mask[n]]) == int(mask[n].sum()), "kept weights do train"
