"""MNIST-1D (Greydanus, 2020, "Scaling down deep learning"), generated locally and cached.

The data come from the `mnist1d` package's generator, `make_dataset(get_dataset_args())` with only the
seed changed: 5000 sequences of length 40, 10 classes, 4000 train / 1000 test. The generator already
centres and scales the whole set to unit standard deviation, so we do not normalise again.
Its download path (`get_dataset`) is never used.

The arrays are cached as `<data_dir>/mnist1d/mnist1d-seed<seed>.safetensors` (atomic write, no pickle).
A cache file that cannot be read or does not hold exactly the expected tensors is regenerated, never used.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import torch

from ticketlab.io import CorruptFile, load_tensors, save_tensors

NUM_CLASSES = 10
LENGTH = 40
NUM_TRAIN = 4000
NUM_TEST = 1000

# key -> (shape, dtype) that a valid cache file holds, and nothing else.
_EXPECTED = {
    "train_x": ((NUM_TRAIN, LENGTH), torch.float32),
    "train_y": ((NUM_TRAIN,), torch.int64),
    "test_x": ((NUM_TEST, LENGTH), torch.float32),
    "test_y": ((NUM_TEST,), torch.int64),
}


def cache_path(data_dir: str | Path, seed: int) -> Path:
    return Path(data_dir) / "mnist1d" / f"mnist1d-seed{int(seed)}.safetensors"


def generate(seed: int) -> dict[str, torch.Tensor]:
    """Run the mnist1d generator with `seed`, leaving the global `random` and numpy RNG states as they were."""
    from mnist1d.data import get_dataset_args, make_dataset  # imported late: pulls in scipy and matplotlib

    args = get_dataset_args()
    args.seed = int(seed)
    # make_dataset calls random.seed / np.random.seed: restore the caller's global streams afterwards.
    py_state = random.getstate()
    np_state = np.random.get_state()
    try:
        d = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {
        "train_x": torch.from_numpy(np.ascontiguousarray(d["x"], dtype=np.float32)),
        "train_y": torch.from_numpy(np.ascontiguousarray(d["y"], dtype=np.int64)),
        "test_x": torch.from_numpy(np.ascontiguousarray(d["x_test"], dtype=np.float32)),
        "test_y": torch.from_numpy(np.ascontiguousarray(d["y_test"], dtype=np.int64)),
    }


def _valid(t: dict[str, torch.Tensor]) -> bool:
    if set(t) != set(_EXPECTED):
        return False
    for key, (shape, dtype) in _EXPECTED.items():
        if tuple(t[key].shape) != shape or t[key].dtype != dtype:
            return False
    for key in ("train_y", "test_y"):
        if t[key].min() < 0 or t[key].max() >= NUM_CLASSES:
            return False
    return bool(torch.isfinite(t["train_x"]).all() and torch.isfinite(t["test_x"]).all())


def load_arrays(data_dir: str | Path, seed: int) -> dict[str, torch.Tensor]:
    """The four tensors for `seed`: from the cache when it is valid, else generated (and cached)."""
    path = cache_path(data_dir, seed)
    if path.is_file():
        try:
            tensors = load_tensors(path)
        except CorruptFile:
            tensors = None
        if tensors is not None and _valid(tensors):
            return tensors
    tensors = generate(seed)
    try:
        save_tensors(path, tensors, metadata={"generator": "mnist1d.data.make_dataset", "seed": str(int(seed))})
    except OSError as e:
        # A read-only data folder should not stop an experiment: the set is regenerated next time.
        warnings.warn(f"mnist1d: could not cache the generated data set at {path} ({e.strerror or e})", stacklevel=2)
    return tensors


def load_mnist1d(data_dir: str | Path, seed: int):
    from ticketlab.data import Dataset

    t = load_arrays(data_dir, seed)
    return Dataset(
        name="mnist1d",
        train_x=t["train_x"],
        train_y=t["train_y"],
        test_x=t["test_x"],
        test_y=t["test_y"],
        num_classes=NUM_CLASSES,
    )
