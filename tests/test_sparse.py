import math

import pytest
import torch

from ticketlab import models
from ticketlab.errors import UserError
from ticketlab.io import load_tensors, save_tensors
from ticketlab.instruments.mask_distance import global_mask
from ticketlab.sparse import CRITERIA, Mask, layer_fractions, prune, random_mask_like, score
from ticketlab.sparse.allocation import erk, erk_densities, per_layer, uniform
from ticketlab.sparse.count import kept_count, pruned_count, round_half_up
from ticketlab.sparse.schedule import level_density, level_kept
from ticketlab.sparse.structure import channel_mask
from ticketlab.sparse.supermask import top_k_mask


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


def test_mask_layer_order_is_the_order_given_then_the_rest_sorted():
    t = {n: torch.ones(2, dtype=torch.bool) for n in ("c", "a", "d", "b")}
    assert list(Mask(t, order=["d", "b", "c", "a"])) == ["d", "b", "c", "a"]
    assert list(Mask(t)) == ["a", "b", "c", "d"], "no order: sorted by name"
    # names of the order that the mask lacks are skipped; layers the order lacks follow, sorted
    assert list(Mask(t, order=["zz", "d", "b"])) == ["d", "b", "a", "c"]
    assert list(Mask(t, order=[])) == ["a", "b", "c", "d"]
    assert len(Mask(t, order=["d"])) == 4


def test_mask_counts_on_a_hand_built_mask():
    m = Mask({"w": torch.tensor([[1, 0, 1], [0, 0, 1]]), "v": torch.tensor([True, True])})
    assert m.kept() == 5 and m.total() == 8 and m.density() == 5 / 8
    assert m.layer_density() == {"v": 1.0, "w": 0.5}
    assert m.report() == [{"layer": "v", "shape": [2], "kept": 2, "total": 2, "density": 1.0},
                          {"layer": "w", "shape": [2, 3], "kept": 3, "total": 6, "density": 0.5}]
    assert m["w"].dtype == torch.bool
    assert Mask({}).density() == 0.0 and Mask({}).total() == 0
    assert m.equal(Mask({"v": torch.tensor([1, 1]), "w": torch.tensor([[1, 0, 1], [0, 0, 1]])}))
    assert not m.equal(Mask({"v": torch.tensor([1, 1]), "w": torch.tensor([[1, 0, 1], [0, 1, 1]])}))
    assert not m.equal(Mask({"w": m["w"]}))


def test_one_mask_applied_to_two_models_zeroes_each_models_own_weights():
    """apply_ caches the model's weights: a second model must get its own, not the first one's."""
    mask = Mask({"weight": torch.tensor([[True, False], [False, True]])},
                fill=None)
    first, second = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    for net, value in ((first, 3.0), (second, 5.0)):
        with torch.no_grad():
            net.weight.fill_(value)
    mask.apply_(first)
    mask.apply_(second)
    assert second.weight.tolist() == [[5.0, 0.0], [0.0, 5.0]]
    assert first.weight.tolist() == [[3.0, 0.0], [0.0, 3.0]]
    filled = Mask(mask.tensors, fill={"weight": torch.full((2, 2), -1.0)})
    for net in (first, second):
        with torch.no_grad():
            net.weight.fill_(2.0)
        filled.apply_(net)
        assert net.weight.tolist() == [[2.0, -1.0], [-1.0, 2.0]]


def test_mask_from_tensors_checks_names_and_shapes_against_the_model():
    net = torch.nn.Linear(3, 2)
    ok = {"weight": torch.ones(2, 3, dtype=torch.bool)}
    assert Mask.from_tensors(ok, net).kept() == 6 and Mask.from_tensors(ok).kept() == 6
    with pytest.raises(UserError, match="mask entry 'weight' \\(3, 2\\) does not match"):
        Mask.from_tensors({"weight": torch.ones(3, 2, dtype=torch.bool)}, net)
    with pytest.raises(UserError, match="mask entry 'fc.weight'"):
        Mask.from_tensors({"fc.weight": torch.ones(2, 3, dtype=torch.bool)}, net)
    with pytest.raises(UserError, match="mask fill for unknown layers nope"):
        Mask(ok, fill={"nope": torch.zeros(2, 3)})


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
        # without a level number the count is the count rule's, of the remaining weights
        plain = prune(scores, mask, fractions, generator=g)
        for n in names:
            assert before[n] - int(plain[n].sum()) == pruned_count(before[n], fractions[n])
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


# Hand-built weights with known answers: indices from the most to the least kept. Signs of w_i: + - + -,
# of w_f: + + - -, so the sign stayed at 0 and 3 and flipped at 1 and 2.
WI = torch.tensor([1.0, -2.0, 3.0, -0.5])
WF = torch.tensor([2.0, 1.0, -0.1, -4.0])
KEPT_ORDER = {
    "large_final": [3, 0, 1, 2],          # |w_f| = 2, 1, 0.1, 4
    "small_final": [2, 1, 0, 3],
    "large_init": [2, 1, 0, 3],           # |w_i| = 1, 2, 3, 0.5
    "small_init": [3, 0, 1, 2],
    "magnitude_increase": [3, 0, 1, 2],   # |w_f| - |w_i| = 1, -1, -2.9, 3.5
    "movement": [3, 2, 1, 0],             # |w_f - w_i| = 1, 3, 3.1, 3.5
}


@pytest.mark.parametrize("criterion", sorted(KEPT_ORDER))
def test_criteria_keep_the_weights_their_names_say(criterion):
    """Pruning k of the 4 weights by the criterion removes the k last of the hand-made order, for every k."""
    s = score(criterion, {"w": WI}, {"w": WF}, ["w"], torch.Generator().manual_seed(0))
    mask = Mask({"w": torch.ones(4, dtype=torch.bool)})
    for pruned in range(5):
        new = prune(s, mask, {"w": pruned / 4}, generator=torch.Generator().manual_seed(pruned))
        assert set(new["w"].nonzero().squeeze(1).tolist()) == set(KEPT_ORDER[criterion][:4 - pruned]), pruned


@pytest.mark.parametrize("base", sorted(KEPT_ORDER))
def test_sign_variants_prune_the_other_sign_first_and_keep_the_base_order(base):
    g = torch.Generator().manual_seed(0)
    for suffix, first_kept in (("_same_sign", {0, 3}), ("_diff_sign", {1, 2})):
        s = score(base + suffix, {"w": WI}, {"w": WF}, ["w"], g)["w"]
        # the other sign is pruned before any weight of the right sign ...
        assert set(s.argsort(descending=True)[:2].tolist()) == first_kept
        # ... and among the right sign the base criterion's order holds
        assert s.argsort(descending=True)[:2].tolist() == [i for i in KEPT_ORDER[base] if i in first_kept]


def test_percentile_ranks_on_hand_built_layers():
    """large_init_large_final with w_i = w_f scores each weight by its percentile rank of |w| in its layer:
    rank / (n - 1), so the smallest is 0 and the largest 1; equal magnitudes rank in the order of their
    positions (a stable sort); a layer of one weight ranks it 0 (not 0 / 0)."""
    def ranks(w):
        return score("large_init_large_final", {"w": w}, {"w": w}, ["w"], torch.Generator())["w"].tolist()

    assert ranks(torch.tensor([3.0, -1.0, 2.0, -5.0, 4.0])) == [0.5, 0.0, 0.25, 1.0, 0.75]
    assert ranks(torch.tensor([2.0, -2.0, 1.0, 2.0, -2.0])) == [0.25, 0.5, 0.0, 0.75, 1.0]
    ties = torch.ones(64)
    assert ranks(ties) == pytest.approx([i / 63 for i in range(64)])
    assert ranks(torch.tensor([7.0])) == [0.0]


def test_criteria_names_are_every_base_with_its_two_sign_variants():
    bases = {c for c in CRITERIA if not c.endswith(("_same_sign", "_diff_sign"))}
    assert set(KEPT_ORDER) | {"random", "large_init_large_final", "small_init_small_final"} == bases
    signed = bases - {"random"}   # a random score has no sign to compare
    assert set(CRITERIA) == bases | {b + s for b in signed for s in ("_same_sign", "_diff_sign")}
    assert len(set(CRITERIA)) == len(CRITERIA)


@pytest.mark.parametrize("criterion, kept", [("large_init_large_final", {1, 3}), ("small_init_small_final", {3, 4})])
def test_shared_percentile_rule_on_a_hand_built_layer(criterion, kept):
    """Zhou et al.: keep the weights whose |w_i| and |w_f| both clear one shared percentile. With |w_i| =
    5 4 1 3 2 and |w_f| = 1 4 5 3 2, keeping 2 of 5 takes the top 3 of each (the 40th percentile):
    {0, 1, 3} and {2, 1, 3} meet in {1, 3}, which neither large_init ({0, 1}) nor large_final ({2, 1})
    keeps. The bottom 3 of each, {2, 4, 3} and {0, 4, 3}, meet in {3, 4}."""
    wi, wf = torch.tensor([5.0, -4.0, 1.0, 3.0, -2.0]), torch.tensor([-1.0, 4.0, 5.0, 3.0, 2.0])
    s = score(criterion, {"w": wi}, {"w": wf}, ["w"], torch.Generator())
    new = prune(s, Mask({"w": torch.ones(5, dtype=torch.bool)}), {"w": 0.6}, level=1)
    assert set(new["w"].nonzero().squeeze(1).tolist()) == kept


@pytest.mark.parametrize("criterion", CRITERIA)
def test_scores_follow_the_weights_under_permutation(criterion):
    """Order invariance: permuting the weights permutes the scores (random: drawn per position)."""
    g = torch.Generator().manual_seed(2)
    wi, wf = torch.randn(40, generator=g), torch.randn(40, generator=g)
    perm = torch.randperm(40, generator=g)
    a = score(criterion, {"w": wi}, {"w": wf}, ["w"], torch.Generator().manual_seed(0))["w"]
    b = score(criterion, {"w": wi[perm]}, {"w": wf[perm]}, ["w"], torch.Generator().manual_seed(0))["w"]
    if criterion == "random":
        assert torch.equal(a, b), "the same draws whatever the weights"
    else:
        assert torch.equal(a[perm], b)


# ------------------------------------------------------------------------------------- the count rule
def test_count_rule_on_hand_built_values():
    # exact halves round half up on the pruned count, whichever way the caller asks
    assert [pruned_count(10, 0.25), kept_count(10, 0.75)] == [3, 7]
    assert [pruned_count(5, 0.5), kept_count(5, 0.5)] == [3, 2]
    assert [pruned_count(10, 0.05), kept_count(10, 0.95)] == [1, 9]
    assert [pruned_count(6, 0.25), pruned_count(4, 0.125), pruned_count(12, 0.875)] == [2, 1, 11]
    # float noise does not decide a tie: 1 - 0.9 = 0.0999..98, and 5 x that falls short of 0.5
    assert [pruned_count(5, 0.1), kept_count(5, 0.9)] == [1, 4]
    # away from ties: the nearest count
    assert [pruned_count(8, 0.3), pruned_count(8, 0.7), kept_count(8, 0.3), pruned_count(100, 0.2)] == [2, 6, 2, 20]
    assert [pruned_count(9, 0.0), pruned_count(9, 1.0), kept_count(9, 0.0), kept_count(9, 1.0), kept_count(0, 0.5)] == [0, 9, 0, 9, 0]
    assert [round_half_up(2.5), round_half_up(-0.5), round_half_up(2.4999)] == [3, 0, 2]
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError):
            pruned_count(10, bad)
        with pytest.raises(ValueError):
            kept_count(10, bad)


def test_kept_and_pruned_always_add_up():
    for n in range(0, 60):
        for i in range(0, 101):
            f = i / 100
            assert kept_count(n, 1 - f) + pruned_count(n, f) == n, (n, f)
            assert abs(pruned_count(n, f) - n * f) <= 0.5 + 1e-9


# (n, fraction pruned, pruned count): the one table every consumer must agree with. The tie rows
# (x.5) are where banker's rounding or rounding the kept count half up would disagree.
CASES = [(10, 0.25, 3), (5, 0.5, 3), (10, 0.05, 1), (5, 0.1, 1), (5, 0.9, 5), (7, 0.5, 4), (1, 0.5, 1), (6, 0.25, 2),
         (12, 0.875, 11), (8, 0.3, 2), (8, 0.7, 6), (100, 0.2, 20), (9, 0.0, 0), (9, 1.0, 9), (75, 0.3, 23)]


@pytest.mark.parametrize("n, fraction, expected", CASES)
def test_every_consumer_agrees_with_the_count_rule(n, fraction, expected):
    assert pruned_count(n, fraction) == expected and kept_count(n, 1 - fraction) == n - expected
    g = torch.Generator().manual_seed(n)
    values = torch.rand(n, generator=g)
    ones = Mask({"w": torch.ones(1, n, dtype=torch.bool)})
    fr = {"w": fraction}
    # IMP: the first level, and a one-off step without a level number
    if fraction > 0:
        assert n - int(prune({"w": values.view(1, n)}, ones, fr, level=1)["w"].sum()) == expected
        assert n - int(prune({"w": values.view(1, n)}, ones, fr)["w"].sum()) == expected
        assert level_kept(n, fraction, 1) == n - expected
    # global scope: two layers pooled share the count of their total
    if fraction > 0 and n >= 2:
        a, b = n // 2, n - n // 2
        two = Mask({"a": torch.ones(a, dtype=torch.bool), "b": torch.ones(b, dtype=torch.bool)})
        pooled = prune({"a": values[:a], "b": values[a:]}, two, {"a": fraction, "b": fraction}, scope="global",
                       global_fraction=fraction, level=1)
        assert n - pooled.kept() == expected
    # the random-pruning control keeps what the ticket keeps
    ticket = prune({"w": values.view(1, n)}, ones, fr, level=1) if fraction > 0 else ones
    assert int(random_mask_like(ticket, g)["w"].sum()) == n - expected
    # edge-popup's top-k at density 1 - fraction
    assert int(top_k_mask(values - 0.5, 1 - fraction).sum()) == n - expected
    # early-bird: the flat mask of a ratio, and the BatchNorm channel mask
    assert int((~global_mask(values, fraction)).sum()) == expected
    bn = torch.nn.BatchNorm1d(n)
    with torch.no_grad():
        bn.weight.copy_(values - 0.5)
    assert int((~channel_mask(torch.nn.Sequential(bn), fraction)).sum()) == expected
    # allocation: uniform and explicit per-layer densities
    assert uniform({"w": (1, n)}, 1 - fraction) == {"w": n - expected} == per_layer({"w": n}, {"w": 1 - fraction})


def test_channel_mask_prunes_the_smallest_gammas_across_layers():
    net = torch.nn.Sequential(torch.nn.BatchNorm1d(4), torch.nn.ReLU(), torch.nn.BatchNorm1d(3))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([0.9, -0.1, 0.5, 0.3]))
        net[2].weight.copy_(torch.tensor([-0.2, 0.8, 0.05]))
    # 0.5 of 7 = 3.5 -> 4 go: |gamma| 0.05, 0.1, 0.2, 0.3
    assert channel_mask(net, 0.5).tolist() == [True, False, True, False, False, True, False]


# ------------------------------------------------------------------------------------------ schedule
def test_level_schedule_is_geometric_in_the_count_rule():
    assert level_density(0.2, 0) == 1.0 and level_density(0.5, 3) == 0.125
    assert level_kept(1000, 0.2, 1) == 800 and level_kept(1000, 0.2, 2) == 640 and level_kept(1000, 0.2, 3) == 512
    assert level_kept(10, 0.25, 1) == 7            # 7.5: the tie goes to the pruned side
    assert level_kept(280, 0.25, 2) == 157         # 157.5
    with pytest.raises(ValueError):
        level_density(0.2, -1)


# ---------------------------------------------------------------------------------------- allocation
def test_erk_on_a_hand_built_two_layer_net():
    """a: linear 20 -> 10 (raw factor 30/200), b: linear 50 -> 40 (90/2000). At density 0.1 the 220 kept
    weights split as s * factor * size with s = 220 / (30 + 90): a keeps 55 of 200, b 165 of 2000."""
    shapes = {"a": (10, 20), "b": (40, 50)}
    d = erk_densities(shapes, 0.1)
    assert d["a"] / d["b"] == pytest.approx((20 + 10) / (20 * 10) / ((50 + 40) / (50 * 40)))
    assert d == pytest.approx({"a": 0.275, "b": 0.0825})
    assert erk(shapes, 0.1) == {"a": 55, "b": 165}
    # a conv: (c_out, c_in, k_h, k_w) = (8, 4, 3, 3), factor (8 + 4 + 3 + 3) / 288 = 1/16
    conv = erk_densities({"c": (8, 4, 3, 3), "a": (10, 20)}, 0.2)
    assert conv["a"] / conv["c"] == pytest.approx((30 / 200) / (1 / 16))


def test_erk_keeps_a_layer_dense_when_it_would_exceed_one_and_rescales_the_rest():
    """a (2 x 3, factor 5/6) would get density ~20 at total 0.5; it stays dense (6 kept) and b takes the
    rest of the 5003 target: 4997 of 10000."""
    counts = erk({"a": (2, 3), "b": (100, 100)}, 0.5)
    assert counts == {"a": 6, "b": 4997}
    assert erk_densities({"a": (2, 3), "b": (100, 100)}, 1.0) == {"a": 1.0, "b": 1.0}
    assert erk({"a": (2, 3), "b": (100, 100)}, 0.0) == {"a": 0, "b": 0}


def random_shapes(rng):
    shapes = {}
    for i in range(rng.randint(1, 6)):
        if rng.random() < 0.5:
            shapes[f"l{i}"] = (rng.randint(1, 300), rng.randint(1, 300))
        else:
            shapes[f"l{i}"] = (rng.randint(1, 64), rng.randint(1, 64), rng.choice((1, 3, 5)), rng.choice((1, 3)))
    return shapes


def test_erk_and_uniform_hit_the_target_on_random_networks():
    import random

    rng = random.Random(0)
    for _ in range(300):
        shapes = random_shapes(rng)
        density = rng.choice((0.01, 0.05, 0.1, 0.2, 0.5, 0.8, 0.95, rng.random()))
        sizes = {n: math.prod(s) for n, s in shapes.items()}
        target = density * sum(sizes.values())
        counts, dens = erk(shapes, density), erk_densities(shapes, density)
        assert all(0 <= counts[n] <= sizes[n] for n in shapes), "no layer above density 1"
        assert all(0.0 <= d <= 1.0 for d in dens.values())
        assert abs(sum(counts.values()) - target) <= len(shapes), (shapes, density)
        # the layers not kept dense follow the ERK factor
        sparse = [n for n in shapes if dens[n] < 1.0]
        for x in sparse:
            for y in sparse:
                fx, fy = sum(shapes[x]) / sizes[x], sum(shapes[y]) / sizes[y]
                assert dens[x] / max(dens[y], 1e-300) == pytest.approx(fx / fy) or dens[y] == 0
        # a dense layer's factor is at least any sparse layer's
        for x in (n for n in shapes if dens[n] == 1.0 and sparse):
            assert all(sum(shapes[x]) / sizes[x] >= sum(shapes[y]) / sizes[y] for y in sparse)
        flat = uniform(shapes, density)
        assert all(abs(flat[n] - density * sizes[n]) <= 1.0 for n in shapes)


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
