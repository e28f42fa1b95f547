"""MNIST and Fashion-MNIST from the user's IDX files.

IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian header
    magic: 0x00 0x00 <type> <ndim>   (type 0x08 = unsigned byte)
    ndim big-endian uint32 dimension sizes
followed by prod(dims) bytes of data. Images are magic 0x00000803 ([N, rows, cols]); labels 0x00000801 ([N]).
Fashion-MNIST (Xiao et al., 2017) uses the same file names and format.

Files may be plain or gzip-compressed (`.gz`), in a flat folder (`<data_dir>/<name>` or `<data_dir>`
itself) or in torchvision's layout (`<data_dir>/MNIST/raw`, `<data_dir>/FashionMNIST/raw`).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from ticketlab.errors import UserError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
NUM_CLASSES = 10

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# name -> (torchvision folder, (mean, std) of the training pixels in [0, 1], what to tell the user)
SETS = {
    "mnist": ("MNIST", (0.1307, 0.3081), "the IDX files from the MNIST site"),
    "fashion_mnist": ("FashionMNIST", (0.2860, 0.3530), "the IDX files from the Fashion-MNIST site"),
}


def read_idx(path: Path, magic: int, what: str) -> np.ndarray:
    """Parse one IDX file of unsigned bytes with the given magic number; UserError (one line) if malformed."""
    try:
        raw = path.read_bytes()
        if path.name.endswith(".gz"):
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{what}: cannot read {path} ({e}); expected an IDX file, plain or .gz") from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        got = raw[:4].hex() if len(raw) >= 4 else f"{len(raw)} bytes"
        raise UserError(f"{what}: {path} is not an IDX file with magic 0x{magic:08x} (got {got})")
    if len(raw) < header:
        raise UserError(f"{what}: {path} is truncated (header of {header} bytes expected, file has {len(raw)})")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "longer than its header says"
        raise UserError(
            f"{what}: {path} is {state} (header {'x'.join(map(str, dims))} needs {expected} bytes, file has {len(raw)})"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _existing(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_files(name: str, data_dir: Path) -> dict[str, Path]:
    """The four IDX files, all from one folder: `<data_dir>/<name>`, torchvision's raw folder, or `<data_dir>`."""
    tv_folder, _, expected = SETS[name]
    folders = [data_dir / name, data_dir / tv_folder / "raw", data_dir]
    found = {f: {k: _existing(f, stem) for k, stem in FILES.items()} for f in folders}
    for folder in folders:
        if all(found[folder].values()):
            return found[folder]
    # Nothing complete: report the first missing file in the first folder that has some of them.
    for folder in folders:
        if any(found[folder].values()):
            missing = next(FILES[k] for k, p in found[folder].items() if p is None)
            raise UserError(f"{name}: no {missing}[.gz] in {folder} (expected {expected})")
    searched = ", ".join(str(f) for f in folders)
    raise UserError(f"{name}: no {FILES['train_images']}[.gz] in {searched} (expected {expected})")


def _split(name: str, images_path: Path, labels_path: Path, mean: float, std: float) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(images_path, IMAGES_MAGIC, name)
    labels = read_idx(labels_path, LABELS_MAGIC, name)
    if len(images) != len(labels):
        raise UserError(f"{name}: {labels_path} has {len(labels)} labels but {images_path} has {len(images)} images")
    if len(labels) and int(labels.max()) >= NUM_CLASSES:
        raise UserError(f"{name}: {labels_path} has label {int(labels.max())}; expected labels 0-{NUM_CLASSES - 1}")
    n, rows, cols = images.shape
    x = torch.from_numpy(images.copy()).to(torch.float32).div_(255.0).sub_(mean).div_(std)
    return x.view(n, 1, rows, cols), torch.from_numpy(labels.astype(np.int64))


def load_mnist_like(name: str, data_dir: str | Path):
    from ticketlab.data import Dataset

    _, (mean, std), _ = SETS[name]
    files = find_files(name, Path(data_dir))
    train_x, train_y = _split(name, files["train_images"], files["train_labels"], mean, std)
    test_x, test_y = _split(name, files["test_images"], files["test_labels"], mean, std)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise UserError(
            f"{name}: {files['test_images']} has images of {tuple(test_x.shape[2:])} but the training images are "
            f"{tuple(train_x.shape[2:])}"
        )
    return Dataset(name=name, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, num_classes=NUM_CLASSES)
