"""Pruning at initialisation (`ticketlab prune-at-init`): each method's defining property, the exact counts of
every allocation, the controls, bad input, resume and the comparison with a lottery run."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ticketlab import names, spec as specs
from ticketlab.errors import UserError
from ticketlab.experiments.prune_at_init import PruneAtInit, PruneAtInitSpec, run
from ticketlab.sparse import Mask, kept_count
from ticketlab.sparse import allocation, at_init
from ticketlab.sparse.at_init import Context, prune_at_init
from ticketlab.store import Unit

SMALL = dict(dataset="synthetic", model="mlp", widths=(32, 32), steps="40it", batch_size=50, eval_every="20it", lr=5e-3)


def small(**kw):
    return specs.from_mapping(PruneAtInitSpec, {**SMALL, **kw})


def folder(out, spec) -> Path:
    return Path(out) / f"prune-at-init-{specs.spec_hash(spec)}"


def unit(out, spec, method, arm, density, seed=0) -> Unit:
    return Unit(folder(out, spec) / f"seed-{seed}" / method / f"density-{density:g}" / arm)


def tiny(bias=True, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8, bias=bias), nn.ReLU(), nn.Linear(8, 5, bias=bias), nn.ReLU(),
                         nn.Linear(5, 3, bias=bias)).to(dtype)


def weights_of(net):
    return [n for n, p in net.named_parameters() if n.endswith("weight")]


def batches(n=2, size=7, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 6, generator=g, dtype=dtype), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def test_registry_names_match():
    assert names.PRUNE_AT_INIT_METHODS == at_init.METHODS
    assert names.ALLOCATIONS == allocation.ALLOCATIONS


# ----------------------------------------------------------------------------------------------- SNIP
def test_snip_scores_are_abs_gradient_times_weight_computed_two_ways():
    net = tiny()
    mask = Mask.ones(net, weights_of(net))
    data = batches()
    scores = at_init.snip(net, mask, Context((6,), lambda: data))
    # torch.func: the gradient of the summed batch losses as a function of the parameters, then |g * w|
    params = {k: v.detach() for k, v in net.named_parameters()}
    loss = lambda p: sum(F.cross_entropy(torch.func.functional_call(net, p, (x,)), y) for x, y in data)
    grads = torch.func.grad(loss)(params)
    for n in mask:
        assert torch.allclose(scores[n], (grads[n] * params[n]).abs(), rtol=1e-5, atol=1e-8), n
    # and one entry by a central finite difference (float64)
    net64 = tiny(dtype=torch.float64)
    data64 = batches(dtype=torch.float64)
    s64 = at_init.snip(net64, Mask.ones(net64, weights_of(net64)), Context((6,), lambda: data64))
    w = net64[2].weight
    eps, (i, j) = 1e-6, (3, 4)
    with torch.no_grad():
        total = lambda: sum(F.cross_entropy(net64(x), y) for x, y in data64).item()
        w[i, j] += eps
        up = total()
        w[i, j] -= 2 * eps
        down = total()
        w[i, j] += eps
    assert abs(s64["2.weight"][i, j].item() - abs((up - down) / (2 * eps) * w[i, j].item())) < 1e-6


def test_scoring_leaves_the_model_unchanged_and_scores_the_masked_network():
    net = tiny()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    mask = Mask.ones(net, weights_of(net))
    mask.tensors["2.weight"][0] = False
    for method in at_init.METHODS:
        at_init.SCORERS[method](net, mask, Context((6,), lambda: batches()))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    scores = at_init.snip(net, mask, Context((6,), lambda: batches()))
    assert torch.all(scores["2.weight"][0] == 0), "pruned weights are zero in the scored network"


# -------------------------------------------------------------------------------------------- SynFlow
def test_synflow_conserves_synaptic_flow_and_uses_no_data():
    net = tiny(bias=False)
    names_ = weights_of(net)
    mask = Mask.ones(net, names_)
    mask.tensors["2.weight"][1, :3] = False   # holds with a mask too (the masked network's flow)

    def no_data():
        raise AssertionError("SynFlow touched the data")

    scores = at_init.synflow(net, mask, Context((6,), no_data))
    with torch.no_grad():   # R: the sum of the outputs of the |w| network (masked) on an all-ones input
        x = torch.ones(1, 6, dtype=torch.float64)
        for layer in net:
            if isinstance(layer, nn.Linear):
                x = x @ (layer.weight.double().abs() * mask[f"{list(net).index(layer)}.weight"]).T
        flow = x.sum().item()
    sums = [scores[n].double().sum().item() for n in names_]
    for s in sums:
        assert s == pytest.approx(flow, rel=1e-5)
    # the whole iterative method (100 rounds) never calls for data either
    out = prune_at_init("synflow", net, Mask.ones(net, names_), 0.1, lambda d: allocation.targets("global", {
        n: tuple(p.shape) for n, p in net.named_parameters() if n in names_}, d), Context((6,), no_data))
    assert out.kept() == kept_count(sum(p.numel() for n, p in net.named_parameters() if n in names_), 0.1)


def test_synflow_in_the_experiment_never_reads_a_batch(tmp_path, monkeypatch):
    from ticketlab.experiments import prune_at_init as module

    exp = PruneAtInit.build(small(methods=("synflow", "magnitude", "random")))

    class Raising:
        def __init__(self, *a, **k):
            raise AssertionError("a data-free method built a data loader")

    monkeypatch.setattr(module, "BatchOrder", Raising)
    w = exp.scoring_weights(0)
    for method in ("synflow", "magnitude", "random"):
        assert exp.method_mask(method, 0.2, 0, w).density() == pytest.approx(0.2, abs=1e-3)
    with pytest.raises(AssertionError, match="data-free"):   # the check works: snip does read batches
        exp.method_mask("snip", 0.2, 0, w)


# ---------------------------------------------------------------------------------------------- GraSP
def test_grasp_scores_match_a_direct_hessian_gradient_product():
    net = tiny(dtype=torch.float64)
    names_ = weights_of(net)
    mask = Mask.ones(net, names_)
    data = batches(n=3, dtype=torch.float64)
    T = 7.0   # a small temperature keeps the curvature large enough to compare
    scores = at_init.grasp(net, mask, Context((6,), lambda: data), temperature=T)
    params = {k: v.detach() for k, v in net.named_parameters()}
    shapes = [params[n].shape for n in names_]
    sizes = [params[n].numel() for n in names_]
    theta = torch.cat([params[n].flatten() for n in names_])

    def loss(flat):
        p = dict(params)
        for n, piece, shape in zip(names_, flat.split(sizes), shapes):
            p[n] = piece.view(shape)
        return sum(F.cross_entropy(torch.func.functional_call(net, p, (x,)) / T, y) for x, y in data)

    g = torch.autograd.functional.jacobian(loss, theta)
    H = torch.autograd.functional.hessian(loss, theta)
    expected = (theta * (H @ g)).split(sizes)   # -S(-theta) = theta * Hg: higher kept
    for n, e in zip(names_, expected):
        assert torch.allclose(scores[n].double(), e.view_as(params[n]), rtol=1e-4, atol=1e-9 * e.abs().max().item()), n
    # GraSP removes the highest S(-theta) = -theta * Hg, i.e. keeps the lowest (at its temperature, 200)
    kept = prune_at_init("grasp", net, mask, 0.3, lambda d: allocation.targets("global", {n: tuple(s) for n, s in zip(names_, shapes)}, d),
                         Context((6,), lambda: data))
    kept_flat = torch.cat([kept[n].flatten() for n in names_])
    scores200 = at_init.grasp(net, mask, Context((6,), lambda: data))
    s = -torch.cat([scores200[n].flatten() for n in names_]).double()
    assert s[kept_flat].max() <= s[~kept_flat].min()


# ------------------------------------------------------------------------------------------- densities
SHAPES = {"a.weight": (100, 40), "b.weight": (100, 100), "c.weight": (10, 100)}


@pytest.mark.parametrize("density", [0.2, 0.05, 0.013, 0.5])
@pytest.mark.parametrize("how", allocation.ALLOCATIONS)
def test_every_allocation_keeps_its_count_rule_counts(how, density):
    fractions = {"a.weight": 0.2, "b.weight": 0.2, "c.weight": 0.1}
    pools = allocation.targets(how, SHAPES, density, fractions)
    size = lambda n: SHAPES[n][0] * SHAPES[n][1]
    total = sum(map(size, SHAPES))
    if how == "global":
        assert pools == [(tuple(SHAPES), kept_count(total, density))]
    else:
        per = {names_[0]: c for names_, c in pools}
        layer_d = {"uniform": {n: density for n in SHAPES}, "erk": allocation.erk_densities(SHAPES, density),
                   "layerwise": allocation.rate_densities(SHAPES, fractions, density)}[how]
        assert per == {n: kept_count(size(n), layer_d[n]) for n in SHAPES}
        assert abs(sum(per.values()) - density * total) <= len(SHAPES)   # within one weight per layer
    # and the masks the methods make keep exactly those counts
    g = torch.Generator().manual_seed(0)
    mask = Mask({n: torch.ones(s, dtype=torch.bool) for n, s in SHAPES.items()}, list(SHAPES))
    scores = {n: torch.rand(s, generator=g) for n, s in SHAPES.items()}
    from ticketlab.sparse.prune import keep_top
    out = keep_top(scores, mask, pools, g)
    for names_, count in pools:
        assert sum(int(out[n].sum()) for n in names_) == count


def test_layerwise_allocation_at_an_imp_level_is_that_level():
    fractions = {"a.weight": 0.2, "b.weight": 0.2, "c.weight": 0.1}
    for level in (3, 7, 14):
        size = {n: s[0] * s[1] for n, s in SHAPES.items()}
        density = sum(size[n] * (1 - fractions[n]) ** level for n in SHAPES) / sum(size.values())
        got = allocation.rate_densities(SHAPES, fractions, density)
        for n in SHAPES:
            assert got[n] == pytest.approx((1 - fractions[n]) ** level, rel=1e-9)


def test_layerwise_density_out_of_reach_is_refused():
    with pytest.raises(UserError, match="out of reach"):
        allocation.rate_densities(SHAPES, {"a.weight": 0.2, "b.weight": 0.2, "c.weight": 0.0}, 0.01)


def test_iterative_rounds_end_at_the_exact_count_and_follow_the_exponential_schedule():
    net = tiny()
    names_ = weights_of(net)
    shapes = {n: tuple(p.shape) for n, p in net.named_parameters() if n in names_}
    seen = []

    def counts(d):
        seen.append(d)
        return allocation.targets("uniform", shapes, d)

    mask = prune_at_init("snip", net, Mask.ones(net, names_), 0.1, counts, Context((6,), lambda: batches()), iterations=4)
    assert seen == pytest.approx([0.1 ** (i / 4) for i in range(1, 5)])
    assert {n: int(mask[n].sum()) for n in names_} == {n: kept_count(torch.Size(s).numel(), 0.1) for n, s in shapes.items()}


# --------------------------------------------------------------------------------- the experiment
def test_run_controls_and_exact_density(tmp_path):
    spec = small(methods=("snip", "synflow", "random"), densities=(0.2, 0.05), iterations=None)
    res = run(spec, out=tmp_path)
    rows = list(res)
    assert {(r["method"], r["arm"]) for r in rows} == {("dense", "dense"), ("random", "pruned")} | {
        (m, a) for m in ("snip", "synflow") for a in ("pruned", "reshuffle", "reinit")}
    for r in rows:
        assert {"weights_remaining", "test_accuracy", "seed", "arm"} <= set(r)
        if r["method"] != "dense":
            u = unit(tmp_path, spec, r["method"], r["arm"], r["density"])
            mask = u.read("mask.safetensors")
            n = sum(m.numel() for m in mask.values())
            assert sum(int(m.sum()) for m in mask.values()) == kept_count(n, r["density"])   # global: exact
            assert r["weights_remaining"] == kept_count(n, r["density"]) / n
    for method in ("snip", "synflow"):
        for d in (0.2, 0.05):
            pruned, shuffled, reinit = (unit(tmp_path, spec, method, a, d) for a in ("pruned", "reshuffle", "reinit"))
            m0, m1, m2 = (u.read("mask.safetensors") for u in (pruned, shuffled, reinit))
            s0, s1, s2 = (u.read("start.safetensors") for u in (pruned, shuffled, reinit))
            init = s0   # the pruned start is the init times its mask
            for n in m0:
                assert int(m1[n].sum()) == int(m0[n].sum()), "reshuffle keeps each layer's count"
                assert torch.equal(m2[n], m0[n]), "reinit keeps the mask"
            assert any(not torch.equal(m1[n], m0[n]) for n in m0), "reshuffle moves the kept positions"
            for n in m0:
                # reshuffle: the same init weights under the permuted mask; reinit: other weights under the same mask
                dense_init = unit(tmp_path, spec, method, "pruned", d).read("start.safetensors")[n]
                assert torch.equal(s1[n][m1[n] & m0[n]], dense_init[m1[n] & m0[n]])
                assert not torch.equal(s2[n][m0[n]], init[n][m0[n]])
                assert torch.all(s1[n][~m1[n]] == 0) and torch.all(s2[n][~m2[n]] == 0)
    # the table and the plot
    run_dir = folder(tmp_path, spec)
    assert (run_dir / "accuracy.png").stat().st_size > 1000
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["iterations"] == {"snip": 1, "synflow": 100, "random": 1}


def test_resume_after_interruption_recomputes_only_the_missing_units(tmp_path):
    spec = small(methods=("snip", "grasp"), densities=(0.1,), controls=("reinit",))
    first = run(spec, out=tmp_path)
    keep = unit(tmp_path, spec, "snip", "pruned", 0.1)
    stamp = (keep.path / "MANIFEST.json").stat().st_mtime_ns
    lost = [unit(tmp_path, spec, "grasp", a, 0.1) for a in ("pruned", "reinit")]
    import shutil
    for u in lost:   # as if killed before these units committed
        shutil.rmtree(u.path)
    second = run(spec, out=tmp_path)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "score_seconds")} for r in rows]
    assert strip(second) == strip(first)
    assert (keep.path / "MANIFEST.json").stat().st_mtime_ns == stamp, "finished units are read back, not retrained"
    assert all(u.is_done() for u in lost)


def test_rewind_scores_and_starts_at_w_k(tmp_path):
    spec = small(methods=("magnitude",), densities=(0.3,), controls=(), rewind="20it")
    run(spec, out=tmp_path)
    dense = Unit(folder(tmp_path, spec) / "seed-0" / "dense")
    w_k = dense.read("rewind.safetensors")
    u = unit(tmp_path, spec, "magnitude", "pruned", 0.3)
    mask, start = u.read("mask.safetensors"), u.read("start.safetensors")
    for n, m in mask.items():
        assert torch.equal(start[n], w_k[n] * m)
    allw = torch.cat([w_k[n].abs().flatten() for n in mask])
    kept = torch.cat([mask[n].flatten() for n in mask])
    assert allw[kept].min() >= allw[~kept].max(), "magnitude at w_k keeps the largest |w_k|"
    assert u.read("result.json")["train_steps"] == 20


def test_compare_puts_imp_tickets_beside_the_methods(tmp_path, run_cli):
    from ticketlab.experiments.lottery import LotterySpec, run as lottery

    lot = specs.from_mapping(LotterySpec, {**SMALL, "levels": 3, "controls": (), "prune_fraction": 0.5,
                                           "output_prune_fraction": 0.5})
    lottery(lot, out=tmp_path)
    lot_dir = tmp_path / f"lottery-{specs.spec_hash(lot)}"
    spec = small(methods=("random",), densities=(0.5, 0.15), compare=str(lot_dir))
    rows = list(run(spec, out=tmp_path))
    imp = [r for r in rows if r["method"] == "imp"]
    assert sorted({r["level"] for r in imp}) == [0, 1, 2, 3]
    summary = json.loads((folder(tmp_path, spec) / "summary.json").read_text())
    assert summary["compare"]["nearest_level"] == {"0.5": 1, "0.15": 3}
    code, out, err = run_cli("show", folder(tmp_path, spec))
    assert code == 0 and "imp" in out and "level 1, 50.00%" in out and "level 3, 12.50%" in out, out
    with pytest.raises(UserError, match="not a ticketlab run folder|a prune-at-init run folder"):
        run(small(methods=("random",), compare=str(tmp_path)), out=tmp_path)
    with pytest.raises(UserError, match="a prune-at-init run folder"):
        run(small(methods=("random",), compare=str(folder(tmp_path, spec))), out=tmp_path)


def test_unknown_method_is_one_line_with_the_valid_ones(run_cli):
    code, out, err = run_cli("prune-at-init", "--methods", "snip,obd")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "unknown method 'obd'" in lines[0]
    for m in names.PRUNE_AT_INIT_METHODS:
        assert m in lines[0]


def test_bad_settings_are_refused_before_anything_runs(run_cli, tmp_path):
    code, _, err = run_cli("prune-at-init", "--densities", "0.2,1.5", "--out", tmp_path)
    assert code == 2 and "densities" in err
    code, _, err = run_cli("prune-at-init", "--prune-fraction", "0.3", "--out", tmp_path)
    assert code == 2 and "layerwise" in err
    code, _, err = run_cli("prune-at-init", "--allocation", "nope", "--out", tmp_path)
    assert code == 2 and "erk" in err
    assert not any(tmp_path.iterdir())
