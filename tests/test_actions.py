"""Mask actions (Zhou et al. 2019), Mask fill values (freeze_init) and the mask-aware percentile criteria."""

import pytest
import torch

from ticketlab import data as datasets
from ticketlab import models
from ticketlab import spec as specs
from ticketlab.errors import UserError
from ticketlab.experiments.lottery import LotterySpec
from ticketlab.sparse import Mask, prune, score
from ticketlab.sparse.actions import (MASK_ONE_ACTIONS, layer_sigma, mask_one, mask_zero, with_actions)
from ticketlab.train import Schedule, fit


def toy():
    """Two 'layers' with arange-like distinct values of both signs, a bias, and a half-kept mask."""
    g = torch.Generator().manual_seed(3)
    w1 = (torch.randperm(24, generator=g).float() - 11.5).view(4, 6) / 10
    w2 = (torch.randperm(10, generator=g).float() - 4.5).view(2, 5) / 7
    init = {"a.weight": w1, "b.weight": w2, "a.bias": torch.arange(4.0)}
    m1 = torch.zeros(24, dtype=torch.bool)
    m1[torch.randperm(24, generator=g)[:12]] = True
    m2 = torch.tensor([1, 0, 1, 1, 0, 1, 1, 0, 1, 0], dtype=torch.bool)
    return init, Mask({"a.weight": m1.view(4, 6), "b.weight": m2.view(2, 5)}, ["a.weight", "b.weight"])


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("action", MASK_ONE_ACTIONS)
def test_every_action_zeroes_pruned_keeps_biases_and_is_seeded(action):
    init, mask = toy()
    a = mask_one(action, init, mask, gen(1))
    assert torch.equal(a["a.bias"], init["a.bias"])
    for n in mask:
        assert (a[n][~mask[n]] == 0).all()
        assert (a[n][mask[n]] != 0).all()
    b = mask_one(action, init, mask, gen(1))
    assert all(torch.equal(a[n], b[n]) for n in a)
    if action not in ("rewind", "signed_constant"):
        c = mask_one(action, init, mask, gen(2))
        assert any(not torch.equal(a[n], c[n]) for n in mask), "another seed must draw differently"


def test_rewind_is_the_init_on_kept_positions():
    init, mask = toy()
    out = mask_one("rewind", init, mask, gen())
    for n in mask:
        assert torch.equal(out[n], init[n] * mask[n])


def test_reshuffle_permutes_only_the_kept_values():
    init, mask = toy()
    out = mask_one("reshuffle", init, mask, gen())
    for n in mask:
        kept = mask[n]
        assert torch.equal(out[n][kept].sort().values, init[n][kept].sort().values)
        assert not torch.equal(out[n][kept], init[n][kept])
    signed = mask_one("signed_reshuffle", init, mask, gen())
    for n in mask:
        kept = mask[n]
        assert torch.equal(torch.sign(signed[n][kept]), torch.sign(init[n][kept]))
        assert torch.equal(signed[n][kept].abs().sort().values, init[n][kept].abs().sort().values)


def test_reinit_draws_from_the_whole_layer():
    init, _ = toy()
    full = Mask({n: torch.ones_like(init[n], dtype=torch.bool) for n in ("a.weight", "b.weight")})
    out = mask_one("reinit", init, full, gen())
    for n in full:
        assert torch.equal(out[n].flatten().sort().values, init[n].flatten().sort().values)
        assert not torch.equal(out[n], init[n])
    _, mask = toy()
    part = mask_one("reinit", init, mask, gen())
    values = set(init["a.weight"].flatten().tolist())
    kept_values = part["a.weight"][mask["a.weight"]].tolist()
    assert set(kept_values) <= values and set(kept_values) != set(init["a.weight"][mask["a.weight"]].tolist())
    signed = mask_one("signed_reinit", init, mask, gen())
    for n in mask:
        assert torch.equal(torch.sign(signed[n][mask[n]]), torch.sign(init[n][mask[n]]))
        assert set(signed[n][mask[n]].abs().tolist()) <= set(init[n].abs().flatten().tolist())


def test_layer_sigma_of_hand_built_layers():
    # mean 5, squared deviations 9 1 1 1 0 0 4 16: population variance 32 / 8 = 4
    assert layer_sigma(torch.tensor([[2.0, 4.0, 4.0, 4.0], [5.0, 5.0, 7.0, 9.0]])) == 2.0
    assert layer_sigma(torch.tensor([-3.0, 3.0])) == 3.0      # population std: not sqrt(18) as with n - 1
    assert float(layer_sigma(torch.full((3, 3), 0.7))) == pytest.approx(0.0, abs=1e-6)


# toy()'s layers are the grids (-11.5 ... 11.5) / 10 and (-4.5 ... 4.5) / 7 in some order: a grid of n
# unit steps has population variance (n^2 - 1) / 12
TOY_SIGMA = {"a.weight": ((24 ** 2 - 1) / 12) ** 0.5 / 10, "b.weight": ((10 ** 2 - 1) / 12) ** 0.5 / 7}


def test_constants_are_the_layer_init_std_with_random_or_original_sign():
    init, mask = toy()
    sc = mask_one("signed_constant", init, mask, gen())
    c = mask_one("constant", init, mask, gen())
    for n in mask:
        kept = mask[n]
        assert float(layer_sigma(init[n])) == pytest.approx(TOY_SIGMA[n], rel=1e-6)
        assert torch.allclose(sc[n][kept], torch.sign(init[n][kept]) * TOY_SIGMA[n], rtol=1e-6, atol=0)
        assert torch.allclose(c[n][kept].abs(), torch.full((int(kept.sum()),), TOY_SIGMA[n]), rtol=1e-6, atol=0)
    signs = torch.cat([torch.sign(c[n][mask[n]]) for n in mask])
    orig = torch.cat([torch.sign(init[n][mask[n]]) for n in mask])
    assert (signs > 0).any() and (signs < 0).any() and not torch.equal(signs, orig)


@pytest.mark.parametrize("action", ["rewind", "signed_constant", "reshuffle"])
def test_rescaling_multiplies_kept_weights_by_numel_over_kept(action):
    init, mask = toy()
    plain = mask_one(action, init, mask, gen(4))
    scaled = mask_one(action, init, mask, gen(4), rescale=True)
    for n in mask:
        factor = mask[n].numel() / int(mask[n].sum())
        assert factor == {"a.weight": 2.0, "b.weight": 10 / 6}[n]
        assert torch.allclose(scaled[n], plain[n] * factor, rtol=0, atol=1e-7)
    assert torch.equal(scaled["a.bias"], init["a.bias"])


def test_mask_zero_actions_fill_values():
    init, mask = toy()
    final = {k: v * torch.where(torch.arange(v.numel()).view_as(v) % 2 == 0, 2.0, 0.5) for k, v in init.items()}
    assert mask_zero("zero", init, final, mask) is None
    frozen = mask_zero("freeze_init", init, final, mask)
    assert all(torch.equal(frozen[n], init[n]) for n in mask) and set(frozen) == set(mask)
    zm = mask_zero("freeze_init_zero_mask", init, final, mask)
    for n in mask:
        shrank = final[n].abs() < init[n].abs()
        assert shrank.any() and (~shrank).any()
        assert (zm[n][shrank] == 0).all() and torch.equal(zm[n][~shrank], init[n][~shrank])
    filled, start = with_actions(mask, init, final, "rewind", "freeze_init", gen())
    for n in mask:
        assert torch.equal(start[n], init[n])  # kept: rewound; pruned: frozen at init


def test_freeze_init_zero_mask_on_a_hand_built_layer():
    """0 where the weight shrank (|w_f| < |w_i|), else w_i: a weight whose magnitude stayed the same did not shrink."""
    init = {"w": torch.tensor([1.0, -2.0, 3.0, -4.0, 0.5])}
    final = {"w": torch.tensor([0.5, 2.0, -5.0, 2.0, -0.25])}
    mask = Mask({"w": torch.tensor([True, False, False, False, False])})
    assert mask_zero("freeze_init_zero_mask", init, final, mask)["w"].tolist() == [0.0, -2.0, 3.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="needs the final weights"):
        mask_zero("freeze_init_zero_mask", init, None, mask)


def test_signed_actions_give_a_zero_init_weight_no_sign_and_a_fully_pruned_layer_stays_zero():
    """sign(0) = 0: a kept weight whose init is exactly 0 starts at 0 under every signed action; rescaling a
    layer that keeps nothing leaves it all zero (numel / max(kept, 1), no 0 / 0)."""
    init = {"a": torch.tensor([0.0, 2.0, -1.0, 3.0]), "b": torch.tensor([1.0, -1.0])}
    mask = Mask({"a": torch.tensor([True, True, True, False]), "b": torch.tensor([False, False])}, ["a", "b"])
    for action in ("signed_constant", "signed_reinit", "signed_reshuffle"):
        for rescale in (False, True):
            start = mask_one(action, init, mask, gen(), rescale=rescale)
            assert start["a"][0] == 0.0 and start["a"][3] == 0.0, (action, rescale)
            assert start["b"].tolist() == [0.0, 0.0], (action, rescale)
            assert not torch.isnan(start["a"]).any()
    # signed_constant by hand: sigma = population std of (0, 2, -1, 3) = sqrt(3.5 - 1) = sqrt(2.5); x 4/3 rescaled
    sigma = 2.5 ** 0.5
    assert mask_one("signed_constant", init, mask, gen())["a"].tolist() == pytest.approx([0.0, sigma, -sigma, 0.0])
    assert mask_one("signed_constant", init, mask, gen(), rescale=True)["a"].tolist() == \
        pytest.approx([0.0, 4 / 3 * sigma, -4 / 3 * sigma, 0.0])


def test_unknown_actions_list_the_valid_names():
    init, mask = toy()
    with pytest.raises(UserError, match="unknown mask-1 action 'flip'; valid: constant, reinit"):
        mask_one("flip", init, mask, gen())
    with pytest.raises(UserError, match="unknown mask-0 action 'keep'; valid: freeze_init, freeze_init_zero_mask, zero"):
        mask_zero("keep", init, None, mask)


# ------------------------------------------------------------------------------------------- Mask fill
def test_apply_with_fill_writes_where_mask_w_fill_and_zero_path_is_unchanged():
    init, mask = toy()
    model = torch.nn.Module()
    model.a = torch.nn.Linear(6, 4)
    model.b = torch.nn.Linear(5, 2)
    w = {"a.weight": torch.randn(4, 6), "b.weight": torch.randn(2, 5)}
    with torch.no_grad():
        model.a.weight.copy_(w["a.weight"])
        model.b.weight.copy_(w["b.weight"])
    plain = Mask(mask.tensors, list(mask))
    assert plain.fill is None
    plain.apply_(model)
    assert torch.equal(model.a.weight, w["a.weight"] * mask["a.weight"])
    filled = Mask(mask.tensors, list(mask), fill={"a.weight": init["a.weight"]})  # b: no fill, zeroed
    with torch.no_grad():
        model.a.weight.copy_(w["a.weight"])
        model.b.weight.copy_(w["b.weight"])
    filled.apply_(model)
    assert torch.equal(model.a.weight, torch.where(mask["a.weight"], w["a.weight"], init["a.weight"]))
    assert torch.equal(model.b.weight, w["b.weight"] * mask["b.weight"])
    applied = filled.applied({"a.weight": w["a.weight"], "b.weight": w["b.weight"]})
    assert torch.equal(applied["a.weight"], model.a.weight) and torch.equal(applied["b.weight"], model.b.weight)
    with pytest.raises(UserError, match="shape"):
        Mask(mask.tensors, fill={"a.weight": torch.zeros(3)})


@pytest.mark.parametrize("optimizer,extra", [("sgd", dict(momentum=0.9, weight_decay=1e-2, lr=0.05)),
                                             ("adam", dict(lr=1e-2, weight_decay=1e-3))])
def test_freeze_init_keeps_pruned_weights_exactly_at_init_through_training(optimizer, extra):
    spec = specs.from_mapping(LotterySpec, dict(dataset="synthetic", model="mlp", widths=(16,), steps="40it",
                                                batch_size=50, eval_every="20it", optimizer=optimizer, **extra))
    data = datasets.load("synthetic", "data")
    model = models.build("mlp", data.input_shape, data.num_classes, seed=0, widths=(16,))
    names = models.prunable_names(model)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    g = gen(5)
    mask = Mask({n: torch.rand(init[n].shape, generator=g) < 0.5 for n in names}, names)
    filled, start = with_actions(mask, init, None, "rewind", "freeze_init", g)
    model.load_state_dict(start)
    fit(model, data, spec.train, seed=0, start=0, end=40, schedule=Schedule.from_spec(spec.train, 10), mask=filled)
    after = model.state_dict()
    for n in names:
        pruned, kept = ~mask[n], mask[n]
        assert torch.equal(after[n][pruned], init[n][pruned]), n
        assert not torch.equal(after[n][kept], init[n][kept]), "kept weights must train"


# ------------------------------------------------------------------------------------- criteria with mask
PERCENTILE = ["large_init_large_final", "small_init_small_final"]


@pytest.mark.parametrize("criterion", PERCENTILE)
def test_percentile_criteria_rank_among_kept_weights(criterion):
    """With a mask, the kept weights score as if the pruned ones were not there: exactly the scores of the
    kept weights on their own, whatever values the pruned positions hold; pruned positions are never
    candidates (-inf)."""
    g = gen(6)
    wi, wf = torch.randn(50, generator=g), torch.randn(50, generator=g)
    kept = torch.rand(50, generator=g) < 0.4
    wf = torch.where(kept, wf, torch.zeros_like(wf))  # pruned weights are zero after training
    masked = score(criterion, {"w": wi}, {"w": wf}, ["w"], gen(), mask={"w": kept})["w"]
    alone = score(criterion, {"w": wi[kept]}, {"w": wf[kept]}, ["w"], gen())["w"]
    assert torch.equal(masked[kept], alone)
    assert torch.isinf(masked[~kept]).all() and (masked[~kept] < 0).all()
    noise = torch.randn(50, generator=g) * 10
    other = score(criterion, {"w": torch.where(kept, wi, noise)}, {"w": torch.where(kept, wf, -noise)}, ["w"], gen(),
                  mask={"w": kept})["w"]
    assert torch.equal(other, masked), "the pruned weights' values do not move the kept weights' ranks"
    assert ((masked[kept] >= 0) & (masked[kept] <= 1)).all()


def test_shared_percentile_among_kept_weights_on_a_hand_built_layer():
    """Kept 0, 1, 2 with |w_i| = 6 17 3 and |w_f| = 11 10 14; pruned 3, 4 with |w_i| = 10 7 (w_f = 0).
    Keeping 1 of the 3: among the kept, the top 2 of |w_i| {0, 1} and of |w_f| {0, 2} meet in {0}. Ranked
    over the whole layer instead, the pruned 10 and 7 push weight 0's |w_i| into the bottom two and weight
    1 would be kept: the mask decides."""
    wi, wf = torch.tensor([6.0, 17.0, 3.0, 10.0, 7.0]), torch.tensor([11.0, 10.0, 14.0, 0.0, 0.0])
    mask = Mask({"w": torch.tensor([True, True, True, False, False])})
    masked = score("large_init_large_final", {"w": wi}, {"w": wf}, ["w"], gen(), mask=mask)
    assert prune(masked, mask, {"w": 2 / 3})["w"].tolist() == [True, False, False, False, False]
    whole = score("large_init_large_final", {"w": wi}, {"w": wf}, ["w"], gen())
    assert prune(whole, mask, {"w": 2 / 3})["w"].tolist() == [False, True, False, False, False]
