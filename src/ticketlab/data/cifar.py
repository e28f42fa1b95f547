"""CIFAR-10 (Krizhevsky, 2009, "Learning Multiple Layers of Features from Tiny Images") from the official
python-version folder `cifar-10-batches-py` (files data_batch_1..5 and test_batch).

Each batch file is a pickled dict {b'data': uint8 array [N, 3072] (1024 red, 1024 green, 1024 blue values,
row-major 32x32), b'labels': list of N ints 0-9, ...}. Pickles can run arbitrary code when loaded, so we
load them with `SafeUnpickler`, which resolves only the few numpy globals needed to rebuild an array and
refuses everything else: a crafted file fails to load instead of running code.

Pixels are scaled to [0, 1] and normalised per channel with the usual training-set statistics; training
batches get the standard random-crop (padding 4) + horizontal-flip augmentation (`augment.RandomCropFlip`).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from ticketlab.data.augment import RandomCropFlip
from ticketlab.errors import UserError

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
NUM_CLASSES = 10
EXPECTED = "expected the CIFAR-10 python version (cifar-10-batches-py) from the CIFAR site"

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

# The only globals an ndarray pickle refers to. `_reconstruct` + ndarray.__setstate__ (protocols 0-4, which
# the real files use) and `_frombuffer` (protocol 5) only build arrays from bytes; `dtype` builds a dtype;
# `_codecs.encode` (restricted to latin1) is how Python 3 writes a bytes buffer at protocol 2.
# An object-dtype array would unpickle its elements through this same unpickler, so it cannot smuggle a
# global in either. Names are listed under both numpy 1 (numpy.core) and numpy 2 (numpy._core) spellings.
_ALLOWED = {}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = _multiarray._reconstruct
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_mod, "_frombuffer")] = _numeric._frombuffer
_ALLOWED[("numpy", "ndarray")] = np.ndarray
_ALLOWED[("numpy", "dtype")] = np.dtype


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 writes bytes at protocol 2 as _codecs.encode(str, "latin1"); allow exactly that use.
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("_codecs.encode is allowed only as a latin1 bytes literal")
    return text.encode("latin1")


_ALLOWED[("_codecs", "encode")] = _latin1_encode


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in `_ALLOWED` (numpy array reconstruction)."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch") from None


def safe_load(data: bytes):
    # encoding="bytes": the official files were written by Python 2; their str keys and array buffers
    # come back as bytes (a Python 3 re-pickle has str keys, which we accept too).
    return SafeUnpickler(io.BytesIO(data), encoding="bytes").load()


def _get(d: dict, key: str):
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(data uint8 [N, 3072], labels int64 [N]) of one batch file; UserError (one line) if it is not one."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cifar10: cannot read {path} ({e.strerror or e}); {EXPECTED}") from None
    try:
        d = safe_load(raw)
    except Exception as e:  # any failure of a malformed or refused pickle (EOFError, UnpicklingError, ...)
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cifar10: {path} is not a CIFAR-10 batch ({msg}); {EXPECTED}") from None
    if not isinstance(d, dict):
        raise UserError(f"cifar10: {path} does not hold a dict of data and labels; {EXPECTED}")
    data, labels = _get(d, "data"), _get(d, "labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(f"cifar10: {path}: 'data' must be a uint8 array of shape [N, 3072], got {got}; {EXPECTED}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        labels = None
    if labels is None or labels.shape != (len(data),):
        raise UserError(f"cifar10: {path}: 'labels' must be a list of {len(data)} class indices; {EXPECTED}")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise UserError(f"cifar10: {path}: labels must be 0-{NUM_CLASSES - 1}, found {labels.min()}..{labels.max()}")
    return data, labels


def find_folder(data_dir: Path) -> Path:
    for folder in (data_dir / FOLDER, data_dir):
        if (folder / TEST_FILE).is_file() or (folder / TRAIN_FILES[0]).is_file():
            return folder
    raise UserError(f"cifar10: no folder {data_dir / FOLDER} and no data_batch_1..5/test_batch in {data_dir}; {EXPECTED}")


def _to_tensor(data: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, 32, 32).to(torch.float32).div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def load_cifar10(data_dir: str | Path):
    from ticketlab.data import Dataset

    folder = find_folder(Path(data_dir))
    parts = []
    for fname in (*TRAIN_FILES, TEST_FILE):
        path = folder / fname
        if not path.is_file():
            raise UserError(f"cifar10: no {fname} in {folder}; {EXPECTED}")
        parts.append(read_batch(path))
    train_x = _to_tensor(np.concatenate([p[0] for p in parts[:-1]]))
    train_y = torch.from_numpy(np.concatenate([p[1] for p in parts[:-1]]))
    test_x = _to_tensor(parts[-1][0])
    test_y = torch.from_numpy(parts[-1][1])
    # Pad with the normalised value of a black pixel, as torchvision's pad-then-normalise does.
    black = tuple(-m / s for m, s in zip(MEAN, STD))
    return Dataset(
        name="cifar10",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=NUM_CLASSES,
        augment=RandomCropFlip(padding=4, fill=black),
    )
