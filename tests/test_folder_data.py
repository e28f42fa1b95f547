"""The forget-and-relearn paper's data and model: image folders (`--dataset folder`), `resnet18`, and
`--label-smoothing`."""

import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ticketlab import data as datasets
from ticketlab import spec as specs
from ticketlab.data import folder
from ticketlab.data.augment import RandomResizedCropFlip
from ticketlab.errors import UserError
from ticketlab.models import build, output_name, prunable_names
from ticketlab.specs.lottery import LotterySpec

Image = pytest.importorskip("PIL.Image")

# created in this order; labels follow the sorted names: ant 0, moth 1, zebra 2
CLASSES = ("zebra", "ant", "moth")


def _image(rng, w, h, mode="RGB"):
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    return Image.fromarray(arr[:, :, 0] if mode == "L" else arr, mode)


def make_folder(root, train=4, test=2, seed=0):
    """3 classes; odd sizes, one grayscale and one RGBA image, one JPEG."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("test", test)):
        for c, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(count):
                mode = "L" if (c, i) == (0, 1) else "RGBA" if (c, i) == (1, 2) else "RGB"
                ext = "jpg" if (c, i) == (2, 3) else "png"
                _image(rng, 13 + 3 * i + c, 9 + 5 * i, mode).save(d / f"img{i}.{ext}")
    (root / "train" / "ant" / "notes.txt").write_text("not an image: ignored")
    return root


def caches(root):
    return sorted((root / folder.CACHE_FOLDER).glob("*.safetensors"))


# ------------------------------------------------------------------------------------------ loading
def test_load_shapes_labels_normalisation_and_determinism(tmp_path):
    root = make_folder(tmp_path / "imgs")
    ds = datasets.load("folder", root, image_size=16)
    assert ds.name == "folder" and ds.num_classes == 3
    assert ds.train_x.shape == (12, 3, 16, 16) and ds.test_x.shape == (6, 3, 16, 16)
    assert ds.train_x.dtype == torch.float32
    assert ds.train_y.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # ant, moth, zebra: sorted names
    assert ds.test_y.tolist() == [0] * 2 + [1] * 2 + [2] * 2
    # normalised with the training split's own statistics
    assert torch.allclose(ds.train_x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(ds.train_x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    again = datasets.load("folder", root, image_size=16)
    assert torch.equal(ds.train_x, again.train_x) and torch.equal(ds.test_x, again.test_x)
    assert len(caches(root)) == 1
    other = datasets.load("folder", root, image_size=8)   # another size: its own cache
    assert other.train_x.shape == (12, 3, 8, 8) and len(caches(root)) == 2


def test_decoding_rule_rgb_conversion_resize_and_centre_crop(tmp_path):
    rng = np.random.default_rng(1)
    wide = rng.integers(0, 256, (8, 20, 3), dtype=np.uint8)      # h=8 is the shorter side: no resize, crop
    Image.fromarray(wide).save(tmp_path / "wide.png")
    out = folder.decode(tmp_path / "wide.png", 8)
    assert out.shape == (3, 8, 8) and out.dtype == np.uint8
    assert np.array_equal(out, wide[:, 6:14].transpose(2, 0, 1))  # offset round((20 - 8) / 2) = 6
    gray = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    g = folder.decode(tmp_path / "gray.png", 8)
    assert all(np.array_equal(g[c], gray) for c in range(3))     # replicated to RGB
    rgba = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(folder.decode(tmp_path / "rgba.png", 8), rgba[:, :, :3].transpose(2, 0, 1))  # alpha dropped
    tall = Image.fromarray(rng.integers(0, 256, (30, 10, 3), dtype=np.uint8))
    tall.save(tmp_path / "tall.png")
    expected = np.asarray(tall.resize((5, 15), Image.Resampling.BILINEAR))[5:10].transpose(2, 0, 1)
    assert np.array_equal(folder.decode(tmp_path / "tall.png", 5), expected)  # shorter side to 5, then centre


def test_cache_is_reused_and_rebuilt_when_a_file_changes_or_the_cache_is_truncated(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "imgs")
    first = datasets.load("folder", root, image_size=12)
    real = folder.decode
    calls = []

    def counting(path, size, Image=None):
        calls.append(path)
        return real(path, size, Image)

    def refuse(*a, **k):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(folder, "decode", refuse)
    assert torch.equal(datasets.load("folder", root, image_size=12).train_x, first.train_x)

    # a changed image: a new key, decoded again, the old cache removed
    monkeypatch.setattr(folder, "decode", counting)
    changed = root / "test" / "moth" / "img0.png"
    _image(np.random.default_rng(9), 14, 14).save(changed)
    os.utime(changed, ns=(1, 1))
    second = datasets.load("folder", root, image_size=12)
    assert len(calls) == 18 and len(caches(root)) == 1
    assert not torch.equal(second.test_x, first.test_x)
    assert torch.equal(second.train_x, first.train_x)   # same training images, same statistics

    # a truncated cache is detected and rebuilt, never used
    calls.clear()
    (path,) = caches(root)
    path.write_bytes(path.read_bytes()[:1000])
    third = datasets.load("folder", root, image_size=12)
    assert len(calls) == 18 and torch.equal(third.test_x, second.test_x)
    assert path.stat().st_size > 1000   # rewritten whole

    # a cache holding other tensors (labels that are not the folder's) is not used either
    calls.clear()
    from ticketlab.io import load_tensors, save_tensors
    t = load_tensors(path)
    t["train_y"] = torch.zeros_like(t["train_y"])
    save_tensors(path, t)
    assert datasets.load("folder", root, image_size=12).train_y.tolist() == first.train_y.tolist()
    assert len(calls) == 18


# ------------------------------------------------------------------------------------------- errors
def _error(root, size=8):
    with pytest.raises(UserError) as info:
        datasets.load("folder", root, image_size=size)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_layout_errors_are_one_line(tmp_path):
    assert "no train/ folder" in _error(tmp_path)
    assert "is not a folder" in _error(tmp_path / "missing")
    root = make_folder(tmp_path / "a")
    os.rename(root / "test", root / "elsewhere")
    assert "no test/ folder" in _error(root)

    root = make_folder(tmp_path / "b")
    (root / "test" / "wasp").mkdir()
    Image.new("RGB", (4, 4)).save(root / "test" / "wasp" / "x.png")
    message = _error(root)
    assert "same class subfolders" in message and "only in test/: wasp" in message

    root = make_folder(tmp_path / "c")
    for f in (root / "train" / "moth").iterdir():
        f.unlink()
    message = _error(root)
    assert "holds no images" in message and str(root / "train" / "moth") in message

    root = make_folder(tmp_path / "d")
    bad = root / "train" / "zebra" / "img1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    message = _error(root)
    assert "cannot decode image" in message and str(bad) in message


def test_missing_pillow_says_how_to_install(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "imgs")
    monkeypatch.setitem(sys.modules, "PIL", None)
    assert "pip install 'ticketlab[images]'" in _error(root)


def test_image_size_is_a_folder_setting():
    assert specs.from_mapping(LotterySpec, {"dataset": "folder", "image_size": 32}).data.image_size == 32
    with pytest.raises(UserError, match="--image-size applies to --dataset folder only"):
        specs.from_mapping(LotterySpec, {"dataset": "mnist1d", "image_size": 32})
    with pytest.raises(UserError):
        specs.from_mapping(LotterySpec, {"dataset": "folder", "image_size": 0})


# ------------------------------------------------------------------------------------- augmentation
def test_random_resized_crop_flip_is_seeded():
    x = torch.randn(6, 3, 16, 16)
    aug = RandomResizedCropFlip()
    a = aug(x, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.isfinite(a).all()
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(4)))
    # the whole image at aspect 1: each output is the image or its mirror
    whole = RandomResizedCropFlip(scale=(1.0, 1.0), ratio=(1.0, 1.0))(x, torch.Generator().manual_seed(0))
    same = [torch.allclose(o, i, atol=1e-5) for o, i in zip(whole, x)]
    mirrored = [torch.allclose(o, i.flip(-1), atol=1e-5) for o, i in zip(whole, x)]
    assert all(s or m for s, m in zip(same, mirrored)) and any(same) and any(mirrored)


# ------------------------------------------------------------------------------------------ resnet18
def test_resnet18_shapes_names_and_standard_parameter_count():
    model = build("resnet18", (3, 224, 224), 1000, seed=0)
    assert sum(p.numel() for p in model.parameters()) == 11_689_512   # torchvision's resnet18
    assert [n for n, _ in model.named_children()] == ["conv1", "bn1", "maxpool", "layer1", "layer2", "layer3",
                                                      "layer4", "avgpool", "fc"]
    names = prunable_names(model)
    assert names[0] == "conv1.weight" and output_name(model) == names[-1] == "fc.weight"
    assert len(names) == 1 + 16 + 3 + 1                       # stem, 8 blocks x 2, 3 downsamples, fc
    assert "layer4.0.downsample.0.weight" in names and "layer1.0.downsample.0.weight" not in names
    assert tuple(model.conv1.weight.shape) == (64, 3, 7, 7)
    for side in (32, 64):
        small = build("resnet18", (3, side, side), 10, seed=1)
        assert small(torch.randn(2, 3, side, side)).shape == (2, 10)
    a, b = build("resnet18", (3, 32, 32), 10, seed=5), build("resnet18", (3, 32, 32), 10, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(UserError):
        build("resnet18", (40,), 10, seed=0)


# ---------------------------------------------------------------------------------- label smoothing
def _train(**kw):
    return specs.from_mapping(LotterySpec, {"batch_size": 8, **kw}).train


def test_label_smoothing_is_torchs_and_default_zero_is_plain_cross_entropy():
    from ticketlab.train.stacked import StackedStepper
    from ticketlab.train.steppers import ModelStepper

    ds = datasets.load("synthetic")
    model = build("mlp", ds.input_shape, 10, seed=0, widths=(8,))
    x, y = ds.train_x[:8], ds.train_y[:8]
    out = model(x)
    plain = ModelStepper(model, ds, _train(), seed=0)
    smooth = ModelStepper(model, ds, _train(label_smoothing=0.1), seed=0)
    xb, yb = plain.order.batch(0)
    assert torch.equal(plain.loss(0), F.cross_entropy(model(xb), yb))
    assert torch.equal(smooth.loss(0), F.cross_entropy(model(xb), yb, label_smoothing=0.1))
    assert not torch.equal(plain.loss(0), smooth.loss(0))
    stacked = StackedStepper.per_model_loss(torch.stack([out, out]), torch.stack([y, y]), 0.1)
    assert torch.equal(stacked[0], F.cross_entropy(out, y, label_smoothing=0.1))
    assert torch.equal(StackedStepper.per_model_loss(out[None], y[None])[0], F.cross_entropy(out, y))
    with pytest.raises(UserError):
        _train(label_smoothing=1.0)
    assert "label_smoothing" not in specs.non_default(specs.from_mapping(LotterySpec, {}))


def test_stacked_training_smooths_labels_as_a_lone_model_does():
    from ticketlab.train.stacked import StackedStepper
    from ticketlab.train.steppers import ModelStepper

    ds = datasets.load("synthetic")
    train = _train(label_smoothing=0.2)
    models = [build("mlp", ds.input_shape, 10, seed=s, widths=(8,)) for s in (0, 1)]
    lone = [ModelStepper(build("mlp", ds.input_shape, 10, seed=s, widths=(8,)), ds, train, seed=s) for s in (0, 1)]
    stacked = StackedStepper(models, ds, train, seeds=[0, 1])
    stacked.train_mode()
    for step in range(3):
        losses = stacked.forward_backward(step)
        stacked.update(step, 0.01)
        for k, one in enumerate(lone):
            one.train_mode()
            assert torch.equal(losses[k], one.forward_backward(step))
            one.update(step, 0.01)
    stacked.close()


# --------------------------------------------------------------------------------------- end to end
def test_paper_settings_are_expressible():
    spec = specs.from_mapping(LotterySpec, {
        "dataset": "folder", "model": "resnet18", "optimizer": "sgd", "lr": 0.256, "momentum": 0.9,
        "batch_size": 32, "weight_decay": 1e-4, "schedule": "cosine", "warmup": "5ep", "label_smoothing": 0.1,
        "steps": "200ep"})
    t = spec.train
    assert (t.optimizer, t.lr, t.momentum, t.batch_size, t.weight_decay, t.schedule, t.warmup, t.label_smoothing,
            t.steps) == ("sgd", 0.256, 0.9, 32, 1e-4, "cosine", "5ep", 0.1, "200ep")


def test_lottery_on_an_image_folder_with_resnet18_end_to_end(tmp_path, run_cli):
    root = make_folder(tmp_path / "imgs")
    code, out, err = run_cli("lottery", "--dataset", "folder", "--data-dir", root, "--model", "resnet18",
                             "--image-size", "32", "--steps", "2it", "--batch-size", "4", "--levels", "1",
                             "--controls", "none", "--label-smoothing", "0.1", "--optimizer", "sgd", "--lr", "0.01",
                             "--out", tmp_path / "runs", "--no-progress")
    assert code == 0, err
    assert len(caches(root)) == 1
