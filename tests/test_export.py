"""`ticketlab export` and `ticketlab.load_ticket`: compact ticket files, their normalisation, ONNX."""

import gzip
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ticketlab
from ticketlab import models
from ticketlab import spec as specs
from ticketlab.export import load_ticket as _load
from ticketlab.export import normalization, normalize, write_ticket
from ticketlab.io import CorruptFile
from ticketlab.store import Unit

LOTTERY = dict(dataset="synthetic", model="mlp", widths=(32, 16), steps="30it", batch_size=50, eval_every="30it",
               levels=2, prune_fraction=0.8, output_prune_fraction=0.8, controls=("random_reinit",), workers=1)


@pytest.fixture(scope="module")
def lottery_run(tmp_path_factory):
    """A tiny lottery run: level 2 keeps 4% of the weights."""
    from ticketlab.experiments.lottery import LotterySpec, run

    out = tmp_path_factory.mktemp("runs")
    spec = specs.from_mapping(LotterySpec, LOTTERY)
    run(spec, out=out, progress=False)
    return out / f"lottery-{specs.spec_hash(spec)}"


def masked_network(run_dir: Path, seed=0, level=2, arm="ticket"):
    """The network the run evaluated: the unit's final weights times its mask."""
    unit = Unit(run_dir / f"seed-{seed}" / f"level-{level:02d}" / arm)
    final, mask = unit.read("final.safetensors"), unit.read("mask.safetensors")
    net = models.build("mlp", (1, 16, 16), 10, seed=0, widths=(32, 16))
    net.load_state_dict({k: v * mask[k] if k in mask else v for k, v in final.items()})
    return net.eval(), unit


def test_exported_ticket_gives_the_masked_network_dense_and_sparse(lottery_run, tmp_path, run_cli):
    out = tmp_path / "ticket.safetensors"
    code, stdout, err = run_cli("export", lottery_run, "--seed", 0, "--level", 2, "--out", out)
    assert code == 0, err
    assert "weights remaining" in stdout and "check: load_ticket" in stdout
    net, unit = masked_network(lottery_run)
    from ticketlab.data import load

    x = load("synthetic").test_x
    with torch.no_grad():
        expected = net(x)
        dense, sparse = ticketlab.load_ticket(out), ticketlab.load_ticket(out, sparse=True)
        assert not dense.training and not sparse.training
        assert (dense(x) - expected).abs().max() <= 1e-6
        assert (sparse(x) - expected).abs().max() <= 1e-6
        assert (sparse(x[:1]) - expected[:1]).abs().max() <= 1e-6
    layers = dict(sparse.model.named_modules())
    assert layers["hidden.0"].weight.layout == torch.sparse_csr and layers["fc"].weight.layout == torch.sparse_csr
    assert all(p.layout == torch.strided for p in dense.parameters())
    info = dense.info
    result = unit.read("result.json")
    assert info["density"] == pytest.approx(result["weights_remaining"]) and info["density"] < 0.05
    assert info["model"] == {"name": "mlp", "input_shape": [1, 16, 16], "num_classes": 10, "widths": [32, 16],
                             "init": "kaiming_normal"}
    assert info["run"]["hash"] == lottery_run.name.split("-")[1] and info["seed"] == 0 and info["level"] == 2
    assert info["arm"] == "ticket" and info["test_accuracy"] == result["test_accuracy"]
    # per layer only the kept weights and their indices
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    assert meta["format"] == "ticketlab-ticket" and json.loads(meta["ticketlab"])["sparse"]["hidden.0.weight"]["shape"] == [32, 256]
    assert {"hidden.0.weight.crow_indices", "hidden.0.weight.col_indices", "hidden.0.weight.values", "hidden.0.bias"} <= keys
    assert "hidden.0.weight" not in keys
    dense_bytes = sum(p.numel() * 4 for p in net.state_dict().values())
    assert out.stat().st_size < dense_bytes / 5


def test_a_control_arm_and_the_default_file_name(lottery_run, tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("export", lottery_run, "--seed", 0, "--level", 1, "--arm", "random_reinit")
    assert code == 0, err
    out = tmp_path / f"{lottery_run.name}-seed-0-level-01-random_reinit.safetensors"
    net, _ = masked_network(lottery_run, level=1, arm="random_reinit")
    x = torch.randn(7, 1, 16, 16)
    with torch.no_grad():
        assert (ticketlab.load_ticket(out, sparse=True)(x) - net(x)).abs().max() <= 1e-6
    assert ticketlab.load_ticket(out).info["arm"] == "random_reinit"


def test_normalisation_is_recorded_and_applied(lottery_run, tmp_path, run_cli):
    out = tmp_path / "t.safetensors"
    assert run_cli("export", lottery_run, "--seed", 0, "--level", 2, "--out", out)[0] == 0
    ticket = ticketlab.load_ticket(out)
    norm = ticket.info["normalization"]
    assert norm["dataset"] == "synthetic" and norm["divide"] == pytest.approx(math.sqrt(10))
    # raw synthetic inputs: the loader's draw before its scaling to unit variance
    from ticketlab.data import synthetic
    from ticketlab.seeding import generator

    g = generator("synthetic/test", 0)
    y = (torch.arange(synthetic.NUM_TEST) % 10)[torch.randperm(synthetic.NUM_TEST, generator=g)]
    raw = synthetic.templates()[y] + synthetic.NOISE * torch.randn(synthetic.NUM_TEST, 1, 16, 16, generator=g)
    x = synthetic.make_synthetic(0).test_x
    assert torch.allclose(ticket.normalize(raw), x, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(ticket.predict(raw), ticket(x), atol=1e-5)


def _idx(path: Path, arr: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))


def test_normalisation_of_every_data_set_matches_its_loader(tmp_path):
    from ticketlab import data
    from ticketlab.data import cifar

    rng = np.random.default_rng(0)
    for name in ("mnist", "fashion_mnist"):
        folder = tmp_path / name
        folder.mkdir()
        images = rng.integers(0, 256, (6, 28, 28))
        for split, n in (("train", 6), ("t10k", 6)):
            _idx(folder / f"{split}-images-idx3-ubyte.gz", images[:n], 0x00000803)
            _idx(folder / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n), 0x00000801)
        norm = normalization({"dataset": name, "data_dir": str(tmp_path)})
        raw = torch.from_numpy(images.astype(np.uint8)).view(6, 1, 28, 28)
        assert torch.equal(normalize(raw, norm), data.load(name, tmp_path).test_x)
    pixels = rng.integers(0, 256, (4, 3072)).astype(np.uint8)
    norm = normalization({"dataset": "cifar10"})
    assert torch.allclose(normalize(torch.from_numpy(pixels).view(4, 3, 32, 32), norm), cifar._to_tensor(pixels), atol=1e-6)
    norm = normalization({"dataset": "mnist1d"})
    x = torch.randn(3, 40)
    assert torch.equal(normalize(x, norm), x)


def test_normalisation_of_an_image_folder_matches_its_loader(tmp_path):
    Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed (pip install 'ticketlab[images]')")
    from ticketlab import data
    from ticketlab.data import folder

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("cat", "dog"):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / split / label / f"{i}.png")
    norm = normalization({"dataset": "folder", "data_dir": str(tmp_path), "image_size": 8})
    assert norm["divide"] == 255.0 and len(norm["mean"]) == 3
    _, arrays = folder.load_arrays(tmp_path, 8)
    loaded = data.load("folder", tmp_path, image_size=8)
    assert torch.allclose(normalize(arrays["test_x"], norm), loaded.test_x, atol=1e-6)


CONV_MODELS = [("conv2", (3, 8, 8)), ("mnist1d_cnn", (40,)), ("mnist1d_cnn_bn", (40,)), ("resnet20", (3, 8, 8))]


@pytest.mark.parametrize("name,shape", CONV_MODELS)
def test_conv_weights_round_trip(tmp_path, name, shape):
    torch.manual_seed(0)
    net = models.build(name, shape, 10, seed=1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
                m.bias.normal_()
    prunable = models.prunable_names(net)
    mask = {n: torch.rand_like(p) < 0.3 for n, p in net.named_parameters() if n in prunable}
    state = {k: v * mask[k] if k in mask else v for k, v in net.state_dict().items()}
    net.load_state_dict(state)
    net.eval()
    info = {"model": {"name": name, "input_shape": list(shape), "num_classes": 10, "widths": None, "init": "kaiming_normal"},
            "normalization": normalization({"dataset": "mnist1d"})}
    out = tmp_path / "conv.safetensors"
    write_ticket(out, state, mask, info)
    x = torch.randn(5, *shape)
    with torch.no_grad():
        expected = net(x)
        dense, sparse = _load(out), _load(out, sparse=True)
        assert (dense(x) - expected).abs().max() <= 1e-5
        assert (sparse(x) - expected).abs().max() <= 1e-5
    conv = next(n for n in prunable if n.endswith("weight") and dict(net.named_parameters())[n].dim() > 2)
    assert dense.info["sparse"][conv]["shape"] == list(dict(net.named_parameters())[conv].shape)
    assert sum(isinstance(m, ticketlab.export.SparseConv) for m in sparse.modules()) == \
        sum(isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)) for m in net.modules())


def test_onnx_export_is_checked_with_onnxruntime(lottery_run, tmp_path, run_cli):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'ticketlab[export]')")
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install 'ticketlab[export]')")
    out = tmp_path / "t.onnx"
    code, stdout, err = run_cli("export", lottery_run, "--seed", 0, "--level", 2, "--format", "onnx", "--out", out)
    assert code == 0, err
    difference = float(stdout.split("max |difference| to PyTorch ")[1].split()[0])
    assert difference <= 1e-5
    net, _ = masked_network(lottery_run)
    from ticketlab.data import load

    x = load("synthetic").test_x
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (x, x[:1]):
        got = torch.from_numpy(session.run(None, {"input": batch.numpy()})[0])
        with torch.no_grad():
            assert (got - net(batch)).abs().max() <= 1e-5
    meta = {p.key: p.value for p in __import__("onnx").load(str(out)).metadata_props}
    assert json.loads(meta["ticketlab"])["normalization"]["dataset"] == "synthetic"


def test_missing_onnx_extra_is_one_line(lottery_run, tmp_path, run_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # import fails
    code, _, err = run_cli("export", lottery_run, "--seed", 0, "--level", 2, "--format", "onnx", "--out", tmp_path / "t.onnx")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "pip install 'ticketlab[export]'" in err
    assert not (tmp_path / "t.onnx").exists()


def earlybird_run(out, **settings):
    """The folder of a tiny early-bird run on synthetic data (`settings` on top), run here."""
    from ticketlab.experiments.earlybird import EarlyBirdSpec, run

    spec = specs.from_mapping(EarlyBirdSpec, dict(dataset="synthetic", batch_size=100, lr=1e-2, eb_epsilon=0.5, eb_window=2,
                                                  workers=1, **settings))
    run(spec, out=out, progress=False)
    return out / f"earlybird-{specs.spec_hash(spec)}"


def test_early_bird_ticket_exports_as_the_smaller_dense_network(tmp_path, run_cli):
    folder = earlybird_run(tmp_path, model="mnist1d_cnn_bn", steps="6ep", eval_every="6ep", prune_ratios=(0.6,))
    out = tmp_path / "eb.safetensors"
    code, _, err = run_cli("export", folder, "--seed", 0, "--level", 1, "--out", out)
    assert code == 2 and "--ratio" in err
    code, _, err = run_cli("export", folder, "--seed", 0, "--ratio", 0.6, "--out", out)
    assert code == 0, err
    ticket = ticketlab.load_ticket(out)
    unit = Unit(folder / "seed-0" / "p-0.6")
    final = unit.read("final.safetensors")
    channels = [int(final[f"conv{i}.weight"].shape[0]) for i in (1, 2, 3)]
    assert ticket.info["model"]["channels"] == channels and sum(channels) < 75 and ticket.info["channel_pruned"]
    assert not ticket.info["sparse"]
    small = ticket.model
    dense = models.build("mnist1d_cnn_bn", (1, 16, 16), 10, seed=0)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in dense.parameters())
    from ticketlab.models.conv_bn import MNIST1DCNNBN

    net = MNIST1DCNNBN(256, 10, tuple(channels))
    net.load_state_dict(final)
    x = torch.randn(9, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(ticket(x), net.eval()(x))


def test_bad_input_is_one_line_exit_2(lottery_run, tmp_path, run_cli):
    cases = [
        (("--seed", 5, "--level", 1), "no seed 5"),
        (("--seed", 0, "--level", 9), "no level 9"),
        (("--seed", 0, "--level", 1, "--arm", "reshuffle"), "no arm 'reshuffle'"),
        (("--seed", 0), "give --level"),
        (("--seed", 0, "--level", 1, "--format", "pickle"), "invalid choice"),
        (("--seed", 0, "--level", -1), "--level -1"),
        (("--seed", "x", "--level", 1), "--seed"),
        (("--seed", 0, "--level", 1, "--out", tmp_path), "is a folder"),
    ]
    for extra, words in cases:
        code, _, err = run_cli("export", lottery_run, *extra)
        assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, (extra, err)
    code, _, err = run_cli("export", tmp_path, "--seed", 0, "--level", 1)
    assert code == 2 and "not a ticketlab run folder" in err and len(err.strip().splitlines()) == 1


def test_corrupt_files_are_one_line(lottery_run, tmp_path, run_cli):
    import shutil

    copy = tmp_path / lottery_run.name
    shutil.copytree(lottery_run, copy)
    final = copy / "seed-0" / "level-02" / "ticket" / "final.safetensors"
    final.write_bytes(final.read_bytes()[:-5])
    code, _, err = run_cli("export", copy, "--seed", 0, "--level", 2, "--out", tmp_path / "t.safetensors")
    assert code == 3 and "final.safetensors" in err and "cannot be trusted" in err and len(err.strip().splitlines()) == 1
    (copy / "seed-0" / "level-01" / "ticket" / "MANIFEST.json").unlink()
    code, _, err = run_cli("export", copy, "--seed", 0, "--level", 1, "--out", tmp_path / "t.safetensors")
    assert code == 2 and "not finished" in err and len(err.strip().splitlines()) == 1
    # an exported file: truncated, foreign, or with indices out of range
    out = tmp_path / "t.safetensors"
    assert run_cli("export", lottery_run, "--seed", 0, "--level", 2, "--out", out)[0] == 0
    good = out.read_bytes()
    out.write_bytes(good[:-7])
    with pytest.raises(CorruptFile):
        ticketlab.load_ticket(out)
    from safetensors.torch import load, save

    tensors = load(good)
    out.write_bytes(save(tensors))   # no metadata
    with pytest.raises(CorruptFile, match="not a ticket"):
        ticketlab.load_ticket(out)
    from ticketlab.io import _metadata

    meta = _metadata(good)
    tensors["hidden.0.weight.col_indices"][0] = 10_000
    out.write_bytes(save(tensors, metadata=meta))
    with pytest.raises(CorruptFile, match="do not add up"):
        ticketlab.load_ticket(out, sparse=True)
    tensors = load(good)
    del tensors["fc.bias"]
    out.write_bytes(save(tensors, metadata=meta))
    with pytest.raises(CorruptFile, match="do not fit"):
        ticketlab.load_ticket(out)


def test_early_bird_resnet_ticket_exports_with_its_blocks_inner_channels(tmp_path, run_cli):
    """A ResNet's early-bird ticket (channels pruned inside its blocks) exports as that smaller ResNet: the
    metadata records each block's inner channels, load_ticket rebuilds it, and it gives the run's outputs."""
    folder = earlybird_run(tmp_path, model="resnet20", steps="2ep", eval_every="1ep", prune_ratios=(0.5,))
    out = tmp_path / "eb.safetensors"
    code, stdout, err = run_cli("export", folder, "--seed", 0, "--ratio", 0.5, "--out", out)
    assert code == 0, err
    ticket = ticketlab.load_ticket(out)
    final = Unit(folder / "seed-0" / "p-0.5").read("final.safetensors")
    inner = [int(final[f"blocks.{i}.bn1.weight"].shape[0]) for i in range(9)]
    assert ticket.info["model"]["inner"] == inner and sum(inner) < 9 * 32 and ticket.info["channel_pruned"]
    from ticketlab.models.resnet import ResNet

    net = ResNet((1, 16, 16), 20, 10, inner=tuple(inner))
    net.load_state_dict(final)
    x = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(ticket(x), net.eval()(x))
    unpruned = sum(v.numel() * v.element_size() for v in models.build("resnet20", (1, 16, 16), 10, seed=0).state_dict().values())
    assert f"the unpruned network in float32: {unpruned / 1e3:.1f} kB" in stdout
