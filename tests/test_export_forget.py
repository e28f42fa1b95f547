"""`ticketlab export` of a forget run: knowledge evolution's kels fit hypothesis as a slim dense network
(`export.kels_network`), read back by `ticketlab.load_ticket`, and as ONNX."""

import math
from pathlib import Path

import pytest
import torch

import ticketlab
from ticketlab import models
from ticketlab import spec as specs
from ticketlab.export import kels_network
from ticketlab.store import Unit

RATE = 0.6
FORGET = {"dataset": "synthetic", "model": "mlp", "widths": (16, 16), "steps": "20it", "batch_size": 50,
          "eval_every": "20it", "generations": 2, "lr": 5e-3, "methods": ("ke", "random"), "split_mode": "kels",
          "split_rate": RATE}


def forget_run(out, **kw):
    from ticketlab.experiments.forget import ForgetSpec, run

    spec = specs.from_mapping(ForgetSpec, {**FORGET, **kw})
    run(spec, out=out, progress=False)
    return Path(out) / f"forget-{specs.spec_hash(spec)}"


@pytest.fixture(scope="module")
def ke_run(tmp_path_factory):
    """A tiny forget run: mlp 256-16-16-10, ke (kels, r = 0.6) and random, two relearning generations."""
    return forget_run(tmp_path_factory.mktemp("runs"))


def zeroed_full_network(run_dir: Path, generation: int):
    """The full network of ke's `generation` with every weight and bias outside the fit hypothesis zeroed."""
    unit = Unit(run_dir / "seed-0" / "ke" / f"gen-{generation:02d}")
    final, keep = unit.read("final.safetensors"), unit.read("keep.safetensors")
    net = models.build("mlp", (1, 16, 16), 10, seed=0, widths=(16, 16))
    net.load_state_dict({k: v * keep[k] if k in keep else v for k, v in final.items()})
    full = models.build("mlp", (1, 16, 16), 10, seed=0, widths=(16, 16))
    full.load_state_dict(final)
    return net.eval(), full.eval(), unit


@pytest.mark.parametrize("generation", [1, 2])
def test_slim_network_is_the_fit_hypothesis_alone(ke_run, tmp_path, run_cli, generation):
    out = tmp_path / "slim.safetensors"
    code, stdout, err = run_cli("export", ke_run, "--seed", 0, "--method", "ke", "--generation", generation, "--out", out)
    assert code == 0, err
    assert "kels fit hypothesis: a slim mlp (widths 10,10)" in stdout and "check: load_ticket" in stdout
    ticket = ticketlab.load_ticket(out)
    width = math.ceil(RATE * 16)
    assert [m.out_features for m in ticket.model.hidden] == [width, width] and ticket.model.fc.in_features == width
    assert ticket.model.hidden[0].in_features == 256 and ticket.model.fc.out_features == 10   # all inputs, all classes
    info = ticket.info
    assert info["model"]["widths"] == [width, width] and info["full_model"]["widths"] == [16, 16]
    assert info["method"] == "ke" and info["generation"] == generation and info["split_rate"] == RATE
    assert info["normalization"]["dataset"] == "synthetic" and info["sparse"] == {}
    assert info["parameters"] == sum(p.numel() for p in ticket.model.parameters())
    from ticketlab.data import load

    x = load("synthetic").test_x
    zeroed, full, unit = zeroed_full_network(ke_run, generation)
    with torch.no_grad():
        slim_out = ticket(x)
        assert (slim_out - zeroed(x)).abs().max() <= 1e-5          # exact: the kept sub-network alone
        assert (slim_out - full(x)).abs().max() > 1e-3             # not the full network: the dropped units contribute
        assert (ticket.predict(x * info["normalization"]["divide"]) - slim_out).abs().max() <= 1e-5
    assert info["test_accuracy"] == unit.read("result.json")["test_accuracy"]
    assert info["fit_test_accuracy"] == pytest.approx(float((slim_out.argmax(1) == load("synthetic").test_y).float().mean()))
    assert out.stat().st_size < (unit.path / "final.safetensors").stat().st_size
    dense_bytes = sum(v.numel() * 4 for v in full.state_dict().values())
    assert out.stat().st_size < dense_bytes
    assert info["parameters"] == (256 + 1) * width + (width + 1) * width + (width + 1) * 10   # the slim layers alone


def test_onnx_export_of_the_slim_network(ke_run, tmp_path, run_cli):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnxruntime as ort

    out = tmp_path / "slim.onnx"
    code, stdout, err = run_cli("export", ke_run, "--seed", 0, "--generation", 2, "--format", "onnx", "--out", out)
    assert code == 0, err
    assert "onnxruntime check: max |difference|" in stdout
    from ticketlab.data import load

    x = load("synthetic").test_x[:50]
    zeroed, _, _ = zeroed_full_network(ke_run, 2)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        assert (got - zeroed(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("argv,message", [
    (("--method", "random", "--generation", 1), "only ke"),
    (("--method", "llf", "--generation", 1), "only ke"),
    (("--generation", 3), "ke generations there: 0, 1, 2"),
    ((), "give --generation G"),
    (("--generation", -1), "generations are 0 or more"),
    (("--generation", 1, "--level", 1), "not --level"),
    (("--seed", 5, "--generation", 1), "no seed 5"),
])
def test_bad_selection_is_one_line_exit_2(ke_run, tmp_path, run_cli, argv, message):
    argv = argv if "--seed" in argv else ("--seed", 0, *argv)
    code, _, err = run_cli("export", ke_run, *argv, "--out", tmp_path / "x.safetensors")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.safetensors").exists()


def test_wels_is_refused_in_one_line(tmp_path, run_cli):
    run_dir = forget_run(tmp_path / "runs", split_mode="wels", generations=1, methods=("ke",))
    code, _, err = run_cli("export", run_dir, "--seed", 0, "--generation", 1, "--out", tmp_path / "x.safetensors")
    assert code == 2 and "--split-mode wels" in err and "no slim network" in err and len(err.strip().splitlines()) == 1


def _trained_like(name, shape):
    net = models.build(name, shape, 10, seed=1)
    g = torch.Generator().manual_seed(0)
    state = {k: (v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v)
             for k, v in net.state_dict().items()}
    return net, {k: (v.abs() + 0.5 if "running_var" in k else v) for k, v in state.items()}


@pytest.mark.parametrize("name,shape,dims", [
    ("mnist1d_cnn", (40,), {"channels": [18, 18, 18]}),
    ("mnist1d_cnn_bn", (1, 40), {"channels": [18, 18, 18]}),
    ("conv2", (3, 8, 8), {"filters": [45, 45], "hidden": [180, 180]}),
    ("lenet_300_100", (1, 28, 28), {"widths": [210, 70]}),
])
def test_conv_and_bn_networks_slim_to_fewer_channels(name, shape, dims):
    """kels on conv nets (BatchNorm included) gives fewer channels, and a Linear after a flatten keeps the kept
    channels' features; the slim network equals the zeroed full network (float rounding only)."""
    full, state = _trained_like(name, shape)
    entry = {"name": name, "input_shape": list(shape), "num_classes": 10, "widths": None, "init": "kaiming_normal"}
    slim, slim_entry, zeroed, _ = kels_network(entry, state, 0.7)
    assert {k: slim_entry[k] for k in dims} == dims
    x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = zeroed(x)
        assert (slim(x) - expected).abs().max() <= 1e-5 * max(1.0, float(expected.abs().max()))
    assert sum(p.numel() for p in slim.parameters()) < 0.7 * sum(p.numel() for p in full.parameters())


@pytest.mark.parametrize("name,shape,stages", [("resnet20", (3, 8, 8), [12, 23, 45]), ("resnet18", (3, 16, 16), [45, 90, 180, 359])])
def test_resnets_slim_to_narrower_stages(name, shape, stages):
    """A ResNet's kels fit hypothesis is the same ResNet with narrower stages (ceil(0.7 f): 16/32/64 -> 12/23/45,
    uneven); its residual sums add kept channels to kept channels, so it equals the zeroed full network."""
    full, state = _trained_like(name, shape)
    entry = {"name": name, "input_shape": list(shape), "num_classes": 10, "widths": None, "init": "kaiming_normal"}
    slim, slim_entry, zeroed, _ = kels_network(entry, state, 0.7)
    assert slim_entry["stages"] == stages
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = zeroed(x)
        assert (slim(x) - expected).abs().max() <= 1e-5 * max(1.0, float(expected.abs().max()))
        full.load_state_dict(state)
        assert (full.eval()(x) - expected).abs().max() > 1e-3   # the dropped channels did contribute
    assert sum(p.numel() for p in slim.parameters()) < 0.6 * sum(p.numel() for p in full.parameters())
    from ticketlab.export import build_network
    rebuilt = build_network(slim_entry)   # what load_ticket builds from the file's metadata
    assert [tuple(t.shape) for t in rebuilt.state_dict().values()] == [tuple(t.shape) for t in slim.state_dict().values()]


def test_a_model_without_a_slim_form_is_refused_in_one_line():
    from ticketlab.errors import UserError

    entry = {"name": "lenet_5", "input_shape": [3, 8, 8], "num_classes": 10, "widths": None, "init": "kaiming_normal"}
    with pytest.raises(UserError, match="no slim network .* lenet_5; supported: .*resnet20"):
        kels_network(entry, {}, 0.8)
