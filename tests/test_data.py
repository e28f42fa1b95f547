"""Tests of ticketlab.data: file formats, safety, caching, seeded batch order, augmentation, label noise.

All files are tiny and written into tmp_path; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import random
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import ticketlab.data as D
from ticketlab.data import DATASETS, BatchOrder, Dataset, evaluation_batches, load
from ticketlab.data.augment import RandomCropFlip
from ticketlab.errors import UserError

# Normalisation constants as the brief states them (mean, std of pixels in [0, 1]).
MNIST_STATS = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2860, 0.3530)}
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, f"error message spans lines: {msg!r}"
    return msg


# ---------------------------------------------------------------------------------------------- IDX


def idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    return struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx(folder: Path, stem: str, data: bytes, gz: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (stem + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_idx_set(folder: Path, gz: bool, seed: int = 0, n_train=12, n_test=5, rows=5, cols=7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, rows, cols), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, rows, cols), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for key, arr in arrays.items():
        magic = 0x00000803 if key.endswith("images") else 0x00000801
        write_idx(folder, IDX_NAMES[key], idx_bytes(arr, magic), gz)
    return arrays


def idx_folder(tmp_path: Path, name: str, layout: str) -> Path:
    return {
        "flat": tmp_path,
        "named": tmp_path / name,
        "torchvision": tmp_path / {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[name] / "raw",
    }[layout]


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("layout", ["flat", "named", "torchvision"])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, name, layout, gz):
    arrays = make_idx_set(idx_folder(tmp_path, name, layout), gz)
    ds = load(name, tmp_path)
    mean, std = MNIST_STATS[name]
    assert ds.name == name and ds.num_classes == 10
    assert ds.input_shape == (1, 5, 7)  # rows/cols come from the header, not a hard-coded 28x28
    for split in ("train", "test"):
        x, y = getattr(ds, f"{split}_x"), getattr(ds, f"{split}_y")
        raw = arrays[f"{split}_images"]
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (len(raw), 1, 5, 7)
        expected = (raw.astype(np.float64) / 255.0 - mean) / std
        np.testing.assert_allclose(x[:, 0].numpy(), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(y.numpy(), arrays[f"{split}_labels"].astype(np.int64))
    assert ds.augment is None


def test_idx_prefers_named_folder_over_data_dir(tmp_path):
    make_idx_set(tmp_path, gz=False, seed=1)  # some other set lying in data_dir itself
    fashion = make_idx_set(tmp_path / "fashion_mnist", gz=True, seed=2)
    ds = load("fashion_mnist", tmp_path)
    np.testing.assert_array_equal(ds.train_y.numpy(), fashion["train_labels"])


def corrupt_bad_magic(folder, stem, arrays):
    data = idx_bytes(arrays["train_images"], 0x00000801)  # a labels magic on an images file
    write_idx(folder, stem, data, gz=False)


def corrupt_truncated(folder, stem, arrays):
    data = idx_bytes(arrays["train_images"], 0x00000803)
    write_idx(folder, stem, data[:-10], gz=False)


def corrupt_extra_bytes(folder, stem, arrays):
    data = idx_bytes(arrays["train_images"], 0x00000803)
    write_idx(folder, stem, data + b"\x00" * 3, gz=False)


def corrupt_header_only(folder, stem, arrays):
    write_idx(folder, stem, struct.pack(">I", 0x00000803) + b"\x00\x00", gz=False)


@pytest.mark.parametrize(
    "corrupt", [corrupt_bad_magic, corrupt_truncated, corrupt_extra_bytes, corrupt_header_only], ids=lambda f: f.__name__
)
def test_idx_malformed_images(tmp_path, corrupt):
    arrays = make_idx_set(tmp_path / "mnist", gz=False)
    corrupt(tmp_path / "mnist", IDX_NAMES["train_images"], arrays)
    with pytest.raises(UserError) as e:
        load("mnist", tmp_path)
    assert IDX_NAMES["train_images"] in one_line_error(e)


def test_idx_count_mismatch(tmp_path):
    folder = tmp_path / "mnist"
    make_idx_set(folder, gz=False)
    write_idx(folder, IDX_NAMES["test_labels"], idx_bytes(np.zeros(4, np.uint8), 0x00000801), gz=False)  # 5 images
    with pytest.raises(UserError) as e:
        load("mnist", tmp_path)
    msg = one_line_error(e)
    assert IDX_NAMES["test_labels"] in msg and "4" in msg and "5" in msg


def test_idx_label_out_of_range(tmp_path):
    folder = tmp_path / "mnist"
    make_idx_set(folder, gz=False)
    write_idx(folder, IDX_NAMES["train_labels"], idx_bytes(np.full(12, 10, np.uint8), 0x00000801), gz=False)
    with pytest.raises(UserError) as e:
        load("mnist", tmp_path)
    assert IDX_NAMES["train_labels"] in one_line_error(e)


def test_idx_corrupt_gzip(tmp_path):
    folder = tmp_path / "mnist"
    make_idx_set(folder, gz=True)
    path = folder / (IDX_NAMES["test_images"] + ".gz")
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(UserError) as e:
        load("mnist", tmp_path)
    assert IDX_NAMES["test_images"] in one_line_error(e)


def test_idx_missing_file(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    make_idx_set(folder, gz=True)
    (folder / (IDX_NAMES["test_labels"] + ".gz")).unlink()
    with pytest.raises(UserError) as e:
        load("mnist", tmp_path)
    msg = one_line_error(e)
    assert IDX_NAMES["test_labels"] in msg and str(folder) in msg


def test_idx_nothing_there(tmp_path):
    with pytest.raises(UserError) as e:
        load("fashion_mnist", tmp_path)
    msg = one_line_error(e)
    assert IDX_NAMES["train_images"] in msg and str(tmp_path / "FashionMNIST" / "raw") in msg and "IDX" in msg


# -------------------------------------------------------------------------------------------- CIFAR


class Py2StylePickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` opcodes (BINSTRING), as the official CIFAR files (cPickle, Python 2) do."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def py2_style_dumps(obj) -> bytes:
    buf = __import__("io").BytesIO()
    Py2StylePickler(buf, protocol=2).dump(obj)
    # The official files name the numpy 1 module.
    return buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def cifar_batch(rng, n: int, style: str) -> tuple[bytes, np.ndarray, list[int]]:
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    if style == "py2":
        blob = py2_style_dumps({b"batch_label": b"batch", b"labels": labels, b"data": data, b"filenames": [b"a.png"] * n})
    elif style == "py3-p2":
        blob = pickle.dumps({b"labels": labels, b"data": data}, protocol=2)
    elif style == "py3-str-p4":
        blob = pickle.dumps({"labels": labels, "data": data}, protocol=4)
    elif style == "py3-str-p5":
        blob = pickle.dumps({"labels": np.asarray(labels), "data": data}, protocol=5)
    else:
        raise AssertionError(style)
    return blob, data, labels


def make_cifar(folder: Path, style: str = "py2", sizes=(3, 2, 4, 1, 2), n_test=3, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_data, train_labels = [], []
    for i, n in enumerate(sizes, 1):
        blob, data, labels = cifar_batch(rng, n, style)
        (folder / f"data_batch_{i}").write_bytes(blob)
        train_data.append(data)
        train_labels += labels
    blob, test_data, test_labels = cifar_batch(rng, n_test, style)
    (folder / "test_batch").write_bytes(blob)
    return np.concatenate(train_data), np.asarray(train_labels), test_data, np.asarray(test_labels)


def cifar_reference(data: np.ndarray) -> np.ndarray:
    """Normalise pixel by pixel from the documented layout: 1024 R, 1024 G, 1024 B values, row-major 32x32."""
    out = np.empty((len(data), 3, 32, 32))
    for n in range(len(data)):
        for c in range(3):
            plane = data[n, c * 1024 : (c + 1) * 1024].reshape(32, 32) / 255.0
            out[n, c] = (plane - CIFAR_MEAN[c]) / CIFAR_STD[c]
    return out


@pytest.mark.parametrize("style", ["py2", "py3-p2", "py3-str-p4", "py3-str-p5"])
@pytest.mark.parametrize("inside", [True, False])
def test_cifar_round_trip(tmp_path, style, inside):
    folder = tmp_path / "cifar-10-batches-py" if inside else tmp_path
    train_data, train_labels, test_data, test_labels = make_cifar(folder, style)
    ds = load("cifar10", tmp_path)
    assert ds.name == "cifar10" and ds.num_classes == 10 and ds.input_shape == (3, 32, 32)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert ds.train_x.shape == (12, 3, 32, 32) and ds.test_x.shape == (3, 3, 32, 32)
    np.testing.assert_allclose(ds.train_x.numpy(), cifar_reference(train_data), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.test_x.numpy(), cifar_reference(test_data), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ds.train_y.numpy(), train_labels)
    np.testing.assert_array_equal(ds.test_y.numpy(), test_labels)
    assert ds.augment is not None


class WritesMarkerWithOpen:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import builtins

        return (builtins.open, (self.path, "w"))


class RunsShell:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


@pytest.mark.parametrize("payload", [WritesMarkerWithOpen, RunsShell], ids=lambda c: c.__name__)
@pytest.mark.parametrize("where", ["top", "inside_dict"])
def test_cifar_malicious_pickle_is_refused(tmp_path, payload, where):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar(folder)
    marker = tmp_path / "pwned"
    evil = payload(marker)
    obj = evil if where == "top" else {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": evil}
    blob = pickle.dumps(obj, protocol=2)

    # The crafted payload really is dangerous: an ordinary unpickler runs it (on a second, throwaway marker).
    probe = tmp_path / "probe"
    unsafe = pickle.dumps(payload(probe) if where == "top" else {b"x": payload(probe)}, protocol=2)
    result = pickle.loads(unsafe)
    if hasattr(result, "close"):
        result.close()
    elif isinstance(result, dict) and hasattr(result[b"x"], "close"):
        result[b"x"].close()
    assert probe.exists()

    (folder / "data_batch_3").write_bytes(blob)
    with pytest.raises(UserError) as e:
        load("cifar10", tmp_path)
    assert "data_batch_3" in one_line_error(e)
    assert not marker.exists()


def test_cifar_malformed_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar(folder)
    cases = {
        "truncated": (folder / "data_batch_2").read_bytes()[:-40],
        "not a dict": pickle.dumps([1, 2, 3], protocol=2),
        "wrong shape": pickle.dumps({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, protocol=2),
        "wrong dtype": pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, protocol=2),
        "label count": pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, protocol=2),
        "label range": pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, protocol=2),
        "no labels": pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}, protocol=2),
    }
    good = (folder / "data_batch_2").read_bytes()
    for what, blob in cases.items():
        (folder / "data_batch_2").write_bytes(blob)
        with pytest.raises(UserError) as e:
            load("cifar10", tmp_path)
        assert "data_batch_2" in one_line_error(e), what
    (folder / "data_batch_2").write_bytes(good)
    load("cifar10", tmp_path)  # and the untouched set loads


def test_cifar_missing_files(tmp_path):
    with pytest.raises(UserError) as e:
        load("cifar10", tmp_path)
    assert "cifar-10-batches-py" in one_line_error(e)
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar(folder)
    (folder / "data_batch_5").unlink()
    with pytest.raises(UserError) as e:
        load("cifar10", tmp_path)
    assert "data_batch_5" in one_line_error(e)


# ------------------------------------------------------------------------------------- augmentation


def contains_crop(padded: np.ndarray, out: np.ndarray, pad: int) -> bool:
    h, w = out.shape[-2:]
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            if np.array_equal(crop, out) or np.array_equal(crop[:, :, ::-1], out):
                return True
    return False


def test_random_crop_flip_is_a_padded_crop_or_its_mirror():
    fill = (-1.0, -2.0, -3.0)
    aug = RandomCropFlip(padding=4, fill=fill)
    x = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = aug(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = np.empty((12, 3, 40, 40), np.float32)
    padded[:] = np.asarray(fill, np.float32)[None, :, None, None]
    padded[:, :, 4:36, 4:36] = x.numpy()
    for i in range(12):
        assert contains_crop(padded[i], out[i].numpy(), 4), f"sample {i} is not a crop of its padded input"
    assert not torch.equal(out, x)
    assert (out != x).flatten(1).any(1).sum() >= 6  # most images change (P(unchanged) = 1/162 each)


def test_random_crop_flip_deterministic_given_generator():
    aug = RandomCropFlip(padding=4)
    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_random_crop_flip_flips_about_half():
    aug = RandomCropFlip(padding=0)
    x = torch.randn(400, 1, 4, 6, generator=torch.Generator().manual_seed(0))
    out = aug(x, torch.Generator().manual_seed(3))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 120 < int(mirrored.sum()) < 280


# -------------------------------------------------------------------------------------- BatchOrder


def index_dataset(n: int, augment=None) -> Dataset:
    """Sample i has input [i] and label i, so a batch shows which samples it holds."""
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
    y = torch.arange(n, dtype=torch.int64)
    return Dataset("index", x, y, x[:0], y[:0], num_classes=n, augment=augment)


def test_batch_order_covers_each_sample_once_per_epoch():
    bo = BatchOrder(index_dataset(103), batch_size=10, seed=3)
    assert bo.iterations_per_epoch == 11
    orders = []
    for epoch in range(3):
        ys = [bo.batch(epoch * 11 + i)[1] for i in range(11)]
        assert [len(y) for y in ys] == [10] * 10 + [3]
        order = torch.cat(ys)
        assert torch.equal(order.sort().values, torch.arange(103))
        orders.append(order)
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    assert not torch.equal(orders[0], torch.arange(103))  # actually shuffled


def test_batch_order_is_a_pure_function_of_seed_and_iteration():
    ds = index_dataset(50)
    sequential = BatchOrder(ds, 8, seed=11)
    expected = {it: sequential.batch(it) for it in range(40)}
    jumping = BatchOrder(ds, 8, seed=11)
    for it in [33, 2, 39, 0, 17, 17, 7, 24]:  # random access, repeats, epochs out of order
        x, y = jumping.batch(it)
        assert torch.equal(x, expected[it][0]) and torch.equal(y, expected[it][1])
    resumed = BatchOrder(ds, 8, seed=11)  # a run resumed at step 21
    for it in range(21, 40):
        assert torch.equal(resumed.batch(it)[1], expected[it][1])


def test_batch_order_differs_across_seeds():
    ds = index_dataset(50)
    a = torch.cat([BatchOrder(ds, 50, seed=0).batch(e)[1] for e in range(3)])
    b = torch.cat([BatchOrder(ds, 50, seed=1).batch(e)[1] for e in range(3)])
    assert not torch.equal(a, b)


def test_batch_order_stable_across_processes():
    # Seeds must not come from Python's salted hash(): another process with another hash seed agrees.
    code = textwrap.dedent(
        """
        from ticketlab.data import BatchOrder, load
        bo = BatchOrder(load("synthetic"), 32, seed=7)
        print(",".join(str(int(v)) for v in bo.batch(45)[1]))
        """
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    here = BatchOrder(load("synthetic"), 32, seed=7).batch(45)[1]
    assert out.strip() == ",".join(str(int(v)) for v in here)


def test_batch_order_augmentation_seeded_by_iteration():
    ds = index_dataset(20, augment=lambda x, g: x + torch.rand(x.shape, generator=g))
    bo = BatchOrder(ds, 5, seed=2)
    plain = BatchOrder(ds, 5, seed=2, augment=False)
    x0, y0 = bo.batch(6)
    px, py = plain.batch(6)
    assert torch.equal(y0, py)
    assert torch.equal(px.view(-1), py.float())  # augment=False gives the stored inputs
    assert not torch.equal(x0, px)
    other = BatchOrder(ds, 5, seed=2)
    other.batch(13)
    assert torch.equal(other.batch(6)[0], x0)  # independent of what was drawn before
    # Same samples at another iteration get other augmentation noise.
    x_next_epoch = bo.batch(6 + bo.iterations_per_epoch)[0]
    noise0 = (x0 - px).view(-1)
    assert not torch.allclose(noise0, (x_next_epoch - plain.batch(6 + bo.iterations_per_epoch)[0]).view(-1))


def test_batch_order_with_cifar_augmentation(tmp_path):
    make_cifar(tmp_path / "cifar-10-batches-py", sizes=(4, 4, 4, 4, 4))
    ds = load("cifar10", tmp_path)
    bo = BatchOrder(ds, 6, seed=0)
    x, y = bo.batch(1)
    raw_x, raw_y = BatchOrder(ds, 6, seed=0, augment=False).batch(1)
    assert x.shape == raw_x.shape == (6, 3, 32, 32) and torch.equal(y, raw_y)
    assert not torch.equal(x, raw_x)
    assert torch.equal(BatchOrder(ds, 6, seed=0).batch(1)[0], x)


def test_batch_order_batch_larger_than_dataset():
    bo = BatchOrder(index_dataset(7), 100, seed=0)
    assert bo.iterations_per_epoch == 1
    assert torch.equal(bo.batch(4)[1].sort().values, torch.arange(7))


def test_evaluation_batches():
    x, y = torch.arange(10.0).view(10, 1), torch.arange(10)
    parts = list(evaluation_batches(x, y, 4))
    assert [len(p[1]) for p in parts] == [4, 4, 2]
    assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)


# ------------------------------------------------------------------------------ subsample / labels


def test_subsample_fraction_and_determinism():
    full = load("synthetic")
    part = load("synthetic", subsample=0.25)
    assert len(part.train_y) == round(0.25 * 600) == part.train_x.shape[0]
    assert torch.equal(part.test_x, full.test_x) and torch.equal(part.test_y, full.test_y)
    # Every kept sample is a training sample of the full set, with its own label, and none repeats.
    rows = {tuple(r.tolist()): int(lbl) for r, lbl in zip(full.train_x.flatten(1), full.train_y)}
    kept = [tuple(r.tolist()) for r in part.train_x.flatten(1)]
    assert len(set(kept)) == len(kept)
    assert all(rows[k] == int(lbl) for k, lbl in zip(kept, part.train_y))
    again = load("synthetic", subsample=0.25)
    assert torch.equal(again.train_x, part.train_x)


def test_subsample_indices_differ_by_seed():
    ds = index_dataset(200)
    a = D.subsample_train(ds, 0.3, data_seed=0).train_y
    b = D.subsample_train(ds, 0.3, data_seed=1).train_y
    assert len(a) == len(b) == 60
    assert set(a.tolist()) != set(b.tolist())
    assert torch.equal(a, D.subsample_train(ds, 0.3, data_seed=0).train_y)


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_random_labels_fraction(fraction):
    full = load("synthetic")
    noisy = load("synthetic", random_labels=fraction)
    assert torch.equal(noisy.train_x, full.train_x)
    assert torch.equal(noisy.test_y, full.test_y)
    assert noisy.train_y.dtype == torch.int64
    assert int(noisy.train_y.min()) >= 0 and int(noisy.train_y.max()) < 10
    changed = (noisy.train_y != full.train_y).float().mean().item()
    expected = fraction * 0.9  # a fresh uniform label equals the old one 1 time in 10
    assert abs(changed - expected) < 0.06, (fraction, changed)
    assert torch.equal(load("synthetic", random_labels=fraction).train_y, noisy.train_y)


def test_random_labels_exact_count_and_seed():
    ds = index_dataset(300)
    ds = Dataset("i", ds.train_x, ds.train_y % 10, ds.test_x, ds.test_y, num_classes=10)
    a = D.randomize_labels(ds, 0.4, data_seed=0).train_y
    b = D.randomize_labels(ds, 0.4, data_seed=1).train_y
    assert 80 < int((a != ds.train_y).sum()) <= 120  # only the 120 chosen samples can change, ~90% of them do
    assert not torch.equal(a, b)


def test_subsample_and_random_labels_together():
    ds = load("synthetic", subsample=0.5, random_labels=1.0, data_seed=3)
    assert len(ds.train_y) == 300
    clean = load("synthetic", subsample=0.5, data_seed=3)
    assert torch.equal(ds.train_x, clean.train_x)
    assert 0.8 < (ds.train_y != clean.train_y).float().mean().item() < 0.97


@pytest.mark.parametrize("kw", [{"subsample": 0.0}, {"subsample": 1.5}, {"subsample": -0.2}, {"subsample": float("nan")},
                                {"random_labels": -0.1}, {"random_labels": 1.01}, {"subsample": "half"},
                                {"subsample": 1e-6}])
def test_fraction_out_of_range(kw):
    with pytest.raises(UserError) as e:
        load("synthetic", **kw)
    assert next(iter(kw)) in one_line_error(e)


def test_unknown_dataset():
    with pytest.raises(UserError) as e:
        load("imagenet")
    msg = one_line_error(e)
    assert "imagenet" in msg and all(name in msg for name in DATASETS)


# -------------------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_and_determinism():
    ds = load("synthetic")
    assert ds.input_shape == (1, 16, 16) and ds.num_classes == 10
    assert ds.train_x.shape == (600, 1, 16, 16) and ds.test_x.shape == (200, 1, 16, 16)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert torch.equal(torch.bincount(ds.train_y, minlength=10), torch.full((10,), 60))
    assert torch.equal(torch.bincount(ds.test_y, minlength=10), torch.full((10,), 20))
    again = load("synthetic")
    assert torch.equal(again.train_x, ds.train_x) and torch.equal(again.test_y, ds.test_y)
    other = load("synthetic", data_seed=1)
    assert not torch.equal(other.train_x, ds.train_x)
    assert 0.5 < ds.train_x.std().item() < 2.0


def test_synthetic_is_learnable():
    ds = load("synthetic")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: extra threads only add contention on a busy machine
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        order = BatchOrder(ds, 60, seed=0)
        for it in range(200):
            x, y = order.batch(it)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = (model(ds.test_x).argmax(1) == ds.test_y).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    assert acc > 0.5, acc  # chance is 0.1


def test_dataset_is_frozen():
    ds = load("synthetic")
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'name'"):
        ds.name = "other"


# --------------------------------------------------------------------------------------- mnist1d


@pytest.fixture(scope="module")
def mnist1d_dir(tmp_path_factory):
    import mnist1d.data

    data_dir = tmp_path_factory.mktemp("mnist1d-data")
    random.seed(123)
    np.random.seed(123)
    before = (random.getstate(), np.random.get_state())
    real_make, real_get = mnist1d.data.make_dataset, mnist1d.data.get_dataset
    generated = []

    def spy_make_dataset(args=None, *a, **kw):  # records the generator's own output (the one generation we pay for)
        generated.append((args.seed, real_make(args, *a, **kw)))
        return generated[-1][1]

    mnist1d.data.make_dataset, mnist1d.data.get_dataset = spy_make_dataset, _no_download
    try:
        ds = load("mnist1d", data_dir)
        after = (random.getstate(), np.random.get_state())
        again = load("mnist1d", data_dir)
    finally:
        mnist1d.data.make_dataset, mnist1d.data.get_dataset = real_make, real_get
    assert len(generated) == 1, "the second load must come from the cache"
    return {"dir": data_dir, "ds": ds, "again": again, "before": before, "after": after, "generated": generated}


def _no_download(*args, **kwargs):
    raise AssertionError("mnist1d.get_dataset (the download path) must not be called")


@pytest.mark.heavy
def test_mnist1d_generated_and_cached(mnist1d_dir):
    ds, again = mnist1d_dir["ds"], mnist1d_dir["again"]
    assert ds.name == "mnist1d" and ds.num_classes == 10 and ds.input_shape == (40,)
    assert ds.train_x.shape == (4000, 40) and ds.test_x.shape == (1000, 40)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert set(ds.train_y.unique().tolist()) == set(range(10))
    assert (mnist1d_dir["dir"] / "mnist1d" / "mnist1d-seed42.safetensors").is_file()
    for key in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(again, key), getattr(ds, key))


def test_mnist1d_matches_generator_without_renormalising(mnist1d_dir):
    ds = mnist1d_dir["ds"]
    [(seed, ref)] = mnist1d_dir["generated"]
    assert seed == 42
    np.testing.assert_array_equal(ds.train_x.numpy(), ref["x"].astype(np.float32))
    np.testing.assert_array_equal(ds.test_x.numpy(), ref["x_test"].astype(np.float32))
    np.testing.assert_array_equal(ds.train_y.numpy(), ref["y"])
    np.testing.assert_array_equal(ds.test_y.numpy(), ref["y_test"])


def test_mnist1d_leaves_global_rng_alone(mnist1d_dir):
    before, after = mnist1d_dir["before"], mnist1d_dir["after"]
    assert before[0] == after[0]
    assert before[1][0] == after[1][0]
    np.testing.assert_array_equal(before[1][1], after[1][1])
    assert before[1][2:] == after[1][2:]


@pytest.fixture
def counted_generate(mnist1d_dir, monkeypatch):
    """Replaces the slow generator with one that returns the real arrays and counts its calls."""
    from ticketlab.data import mnist1d as m1d

    ds = mnist1d_dir["ds"]
    calls = []

    def fake_generate(seed):
        calls.append(seed)
        return {"train_x": ds.train_x, "train_y": ds.train_y, "test_x": ds.test_x, "test_y": ds.test_y}

    monkeypatch.setattr(m1d, "generate", fake_generate)
    return calls


def test_mnist1d_truncated_cache_is_regenerated(mnist1d_dir, counted_generate, tmp_path):
    from ticketlab.io import load_tensors

    ds = mnist1d_dir["ds"]
    shutil.copytree(mnist1d_dir["dir"] / "mnist1d", tmp_path / "mnist1d")
    cache = tmp_path / "mnist1d" / "mnist1d-seed42.safetensors"
    load("mnist1d", tmp_path)
    assert counted_generate == []  # the intact copy is used
    good = cache.read_bytes()
    cache.write_bytes(good[: len(good) // 2])
    again = load("mnist1d", tmp_path)
    assert counted_generate == [42]
    assert torch.equal(again.train_x, ds.train_x) and torch.equal(again.test_y, ds.test_y)
    rewritten = load_tensors(cache)  # rewritten whole
    assert torch.equal(rewritten["train_x"], ds.train_x) and torch.equal(rewritten["test_y"], ds.test_y)


def test_mnist1d_wrong_cache_contents_are_not_used(mnist1d_dir, counted_generate, tmp_path):
    from ticketlab.io import save_tensors

    ds, calls = mnist1d_dir["ds"], counted_generate
    cache = tmp_path / "mnist1d" / "mnist1d-seed42.safetensors"
    bad_contents = [
        {"train_x": ds.train_x[:10], "train_y": ds.train_y, "test_x": ds.test_x, "test_y": ds.test_y},
        {"train_x": ds.train_x, "train_y": ds.train_y},
        {"train_x": ds.train_x, "train_y": ds.train_y.to(torch.int32), "test_x": ds.test_x, "test_y": ds.test_y},
        {"train_x": ds.train_x, "train_y": ds.train_y + 10, "test_x": ds.test_x, "test_y": ds.test_y},
    ]
    for i, bad in enumerate(bad_contents):
        save_tensors(cache, bad)
        got = load("mnist1d", tmp_path)
        assert len(calls) == i + 1, f"bad cache {i} was used"
        assert torch.equal(got.train_x, ds.train_x) and torch.equal(got.train_y, ds.train_y)
    cache.write_bytes(b"\x80\x04not safetensors at all")  # e.g. a pickle
    load("mnist1d", tmp_path)
    assert len(calls) == len(bad_contents) + 1
    load("mnist1d", tmp_path)  # now a valid cache: used, not regenerated
    assert len(calls) == len(bad_contents) + 1
    # The seed picks the cache file.
    load("mnist1d", tmp_path, mnist1d_seed=7)
    assert calls[-1] == 7 and (tmp_path / "mnist1d" / "mnist1d-seed7.safetensors").is_file()
