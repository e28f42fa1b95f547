"""Data sets as in-memory tensors: a registry, `load`, training-set subsampling and label noise.

A `Dataset` holds the whole training and test sets as normalised float32 tensors (design note: a
per-sample DataLoader costs several times the model step on CPU, so batches are indexed from memory;
see `ticketlab.data.batches.BatchOrder`).

Data sets (`DATASETS`):
  mnist1d        MNIST-1D (Greydanus, 2020), generated locally with the `mnist1d` package; the default.
  mnist          MNIST (LeCun et al., 1998) from the user's IDX files.
  fashion_mnist  Fashion-MNIST (Xiao et al., 2017) from the user's IDX files.
  cifar10        CIFAR-10 (Krizhevsky, 2009) from the user's `cifar-10-batches-py` folder.
  folder         the user's images, `DIR/train/<class>/...` and `DIR/test/<class>/...` (decoded with Pillow
                 once, at `image_size` pixels, and cached; see `ticketlab.data.folder`).
  synthetic      a small deterministic learnable set for tests.

Nothing is ever downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from ticketlab.seeding import derive_seed, generator
from ticketlab.errors import UserError, unknown_name


@dataclass(frozen=True, eq=False)
class Dataset:
    """A whole data set in memory.

    train_x/test_x: float32, normalised, shape [N, *input_shape]; train_y/test_y: int64 [N].
    augment: optional batched train-time augmentation `augment(x_batch, generator) -> x_batch`.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


DATASETS: tuple[str, ...] = ("mnist1d", "mnist", "fashion_mnist", "cifar10", "synthetic", "folder")


def _load_raw(name: str, data_dir: Path, data_seed: int, mnist1d_seed: int, image_size: int = 224) -> Dataset:
    # Imports are local so that `import ticketlab.data` stays cheap (mnist1d pulls in scipy and matplotlib).
    if name == "mnist1d":
        from ticketlab.data.mnist1d import load_mnist1d

        return load_mnist1d(data_dir, mnist1d_seed)
    if name in ("mnist", "fashion_mnist"):
        from ticketlab.data.idx import load_mnist_like

        return load_mnist_like(name, data_dir)
    if name == "cifar10":
        from ticketlab.data.cifar import load_cifar10

        return load_cifar10(data_dir)
    if name == "synthetic":
        from ticketlab.data.synthetic import make_synthetic

        return make_synthetic(data_seed)
    if name == "folder":
        from ticketlab.data.folder import load_folder

        return load_folder(data_dir, image_size)
    raise unknown_name("dataset", name, DATASETS)  # pragma: no cover - guarded in load()


def _fraction(value, what: str, *, allow_zero: bool) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number, got {value!r}") from None
    low_ok = f >= 0.0 if allow_zero else f > 0.0
    if not (low_ok and f <= 1.0):  # also rejects NaN
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise UserError(f"{what} must be in {interval}, got {value!r}")
    return f


def subsample_train(ds: Dataset, fraction: float, data_seed: int) -> Dataset:
    """Keep a random subset of round(fraction * N) training samples (seeded by data_seed); test set unchanged.

    The kept samples stay in their original order (batch order is drawn later by BatchOrder).
    """
    n = len(ds.train_y)
    k = round(fraction * n)
    if k == n:
        return ds
    if k < 1:
        raise UserError(f"subsample {fraction} keeps no training samples of {ds.name} (N={n}); use a larger fraction")
    perm = torch.randperm(n, generator=generator("subsample", data_seed))
    keep = perm[:k].sort().values
    return replace(ds, train_x=ds.train_x[keep], train_y=ds.train_y[keep])


def randomize_labels(ds: Dataset, fraction: float, data_seed: int) -> Dataset:
    """Replace the labels of a random round(fraction * N) subset of training samples with labels drawn
    uniformly from all classes (seeded by data_seed), as in Zhang et al., 2017 ("Understanding deep learning
    requires rethinking generalization"). A drawn label can equal the true one (probability 1/num_classes).
    The test set is unchanged.
    """
    n = len(ds.train_y)
    k = round(fraction * n)
    if k == 0:
        return ds
    g = generator("random_labels", data_seed)
    which = torch.randperm(n, generator=g)[:k]
    new = torch.randint(0, ds.num_classes, (k,), generator=g, dtype=torch.int64)
    y = ds.train_y.clone()
    y[which] = new
    return replace(ds, train_y=y)


def random_label_indices(n: int, fraction: float, data_seed: int) -> torch.Tensor:
    """The (sorted) indices of the training samples whose labels `randomize_labels(ds, fraction, data_seed)`
    replaced, for a training set of `n` samples (after any subsampling): the same draw, so it names exactly
    those samples. About 1 in num_classes of them drew their true label again; they still count."""
    k = round(fraction * n)
    if k == 0:
        return torch.zeros(0, dtype=torch.int64)
    return torch.randperm(n, generator=generator("random_labels", data_seed))[:k].sort().values


def load(
    name: str,
    data_dir: str | Path = "data",
    *,
    subsample: float = 1.0,
    random_labels: float = 0.0,
    data_seed: int = 0,
    mnist1d_seed: int = 42,
    image_size: int = 224,
) -> Dataset:
    """Load data set `name` (one of DATASETS) into memory.

    subsample in (0, 1]: keep a seeded random subset of the training set (applied first).
    random_labels in [0, 1]: give a seeded random fraction of the (kept) training samples uniform random labels.
    data_seed seeds both (and the noise of `synthetic`); mnist1d_seed seeds the MNIST-1D generator.
    image_size: the side in pixels of `folder` images (the other data sets have their own fixed sizes).
    Missing or malformed files raise UserError naming the file and the expected format.
    """
    if name not in DATASETS:
        raise unknown_name("dataset", name, DATASETS)
    if Path(data_dir).exists() and not Path(data_dir).is_dir():
        raise UserError(f"--data-dir {data_dir} is a file, not a folder; give the folder that holds (or will cache) the data files")
    sub = _fraction(subsample, "subsample", allow_zero=False)
    rl = _fraction(random_labels, "random_labels", allow_zero=True)
    data_seed = int(data_seed)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise UserError(f"image_size must be a positive integer, got {image_size!r}")
    ds = _load_raw(name, Path(data_dir), data_seed, int(mnist1d_seed), image_size)
    if sub < 1.0:
        ds = subsample_train(ds, sub, data_seed)
    if rl > 0.0:
        ds = randomize_labels(ds, rl, data_seed)
    return ds


from ticketlab.data.batches import BatchOrder, evaluation_batches  # noqa: E402  (needs Dataset defined above)

__all__ = [
    "DATASETS",
    "BatchOrder",
    "Dataset",
    "derive_seed",
    "evaluation_batches",
    "load",
    "random_label_indices",
    "randomize_labels",
    "subsample_train",
]
