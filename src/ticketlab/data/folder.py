"""`folder`: the user's own images, one subfolder per class (Flowers-102, CUB-200 prepared as folders, ...).

Layout (torchvision's ImageFolder, with the two splits side by side)::

    DIR/train/<class>/<image>   DIR/test/<class>/<image>

Class names are the sorted names of the subfolders of `DIR/train`; `DIR/test` must have exactly the same
set, and every class must hold at least one image in each split. Label i is the i-th name in sorted order.
Images are the files (found recursively under a class folder, in sorted order) whose names end in one of
`EXTENSIONS`, case-insensitive; other files and names starting with a dot are ignored, as ImageFolder does.

Decoding (Pillow, once): each image is converted to RGB (grayscale is replicated, an alpha channel is
dropped, a palette is expanded: what torchvision's `pil_loader` does), resized with Pillow's bilinear
filter (antialiased when shrinking) so that its shorter side is `image_size` pixels, and centre-cropped to
`image_size` x `image_size` (the crop's offset is round((side - image_size) / 2), as torchvision's
CenterCrop). EXIF orientation is ignored.

Normalisation: pixels are scaled to [0, 1] and normalised per channel with the mean and (population)
standard deviation of the training split's decoded pixels, computed exactly from integer sums (a channel
whose standard deviation is 0 is only centred). Training from scratch needs no ImageNet statistics, and
these fit any data set.

Cache: the decoded uint8 images, labels and statistics are written (atomically, safetensors, no pickle) to
`DIR/.ticketlab-cache/images-<size>px-<key>.safetensors`, where `key` hashes the decoding rule's version,
the image size, the class names and every image's relative path, byte size and modification time. A
changed folder therefore gets a new key and is decoded again (older caches of the same size are removed
after the new one is written); a cache file that cannot be read or does not hold exactly the expected
tensors is decoded again, never used. A read-only DIR is decoded every time (with a warning).

Augmentation (training batches, `--augment true`): the paper's random-resized crop (scale 0.08-1, aspect
3/4-4/3) + horizontal flip, taken from the cached `image_size` image (`augment.RandomResizedCropFlip`).

Memory: the whole set is held as float32, 12 * image_size**2 bytes an image (600 KB at 224 px: Flowers-102's
8,189 images take 4.9 GB).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ticketlab.data.augment import RandomResizedCropFlip
from ticketlab.errors import UserError
from ticketlab.io import CorruptFile, load_tensors, save_tensors

# torchvision's IMG_EXTENSIONS
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "test")
DEFAULT_IMAGE_SIZE = 224
CACHE_FOLDER = ".ticketlab-cache"
DECODE_VERSION = "1"  # change when the decoding rule changes: every old cache then misses
INSTALL = "pip install 'ticketlab[images]'"
LAYOUT = "expected DIR/train/<class>/<images> and DIR/test/<class>/<images>"

File = tuple[str, int, int, int]  # (path relative to DIR, label, size in bytes, mtime in ns)


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _classes(split_dir: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and _visible(e.name))
    except OSError as e:
        raise UserError(f"folder: cannot list {split_dir} ({e.strerror or e})") from None


def _images(class_dir: Path, root: Path, label: int) -> list[File]:
    out = []
    for folder, dirs, names in os.walk(class_dir, followlinks=True):
        dirs[:] = sorted(d for d in dirs if _visible(d))
        for name in sorted(names):
            if not _visible(name) or not name.lower().endswith(EXTENSIONS):
                continue
            path = Path(folder) / name
            try:
                st = path.stat()
            except OSError as e:
                raise UserError(f"folder: cannot read {path} ({e.strerror or e})") from None
            out.append((path.relative_to(root).as_posix(), label, st.st_size, st.st_mtime_ns))
    return out


def scan(data_dir: str | Path) -> tuple[list[str], dict[str, list[File]]]:
    """(class names, {split: its images in order}); UserError (one line) for a layout that is not one."""
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"folder: --data-dir {root} is not a folder; {LAYOUT}")
    for split in SPLITS:
        if not (root / split).is_dir():
            raise UserError(f"folder: no {split}/ folder in {root}; {LAYOUT}")
    classes = {split: _classes(root / split) for split in SPLITS}
    if not classes["train"]:
        raise UserError(f"folder: {root / 'train'} has no class subfolders; {LAYOUT}")
    if classes["train"] != classes["test"]:
        only_train = sorted(set(classes["train"]) - set(classes["test"]))
        only_test = sorted(set(classes["test"]) - set(classes["train"]))
        parts = [f"only in train/: {_some(only_train)}"] if only_train else []
        parts += [f"only in test/: {_some(only_test)}"] if only_test else []
        raise UserError(f"folder: train/ and test/ must have the same class subfolders ({'; '.join(parts)})")
    names = classes["train"]
    files: dict[str, list[File]] = {}
    for split in SPLITS:
        files[split] = []
        for label, name in enumerate(names):
            found = _images(root / split / name, root, label)
            if not found:
                raise UserError(f"folder: class folder {root / split / name} holds no images "
                                f"(files ending in {', '.join(EXTENSIONS)})")
            files[split].extend(found)
    return names, files


def _some(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def cache_key(classes: list[str], files: dict[str, list[File]], image_size: int) -> str:
    payload = json.dumps({"version": DECODE_VERSION, "image_size": int(image_size), "classes": classes,
                          "files": {s: files[s] for s in SPLITS}}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:20]


def cache_path(data_dir: str | Path, image_size: int, key: str) -> Path:
    return Path(data_dir) / CACHE_FOLDER / f"images-{int(image_size)}px-{key}.safetensors"


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise UserError(f"--dataset folder decodes images with Pillow, which is not installed: {INSTALL}") from None
    return Image


def decode(path: str | Path, image_size: int, Image=None) -> np.ndarray:
    """One image as uint8 [3, image_size, image_size]: RGB, shorter side resized, centre-cropped."""
    Image = Image or _pil()
    size = int(image_size)
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            w, h = img.size
            if min(w, h) < 1:
                raise ValueError("the image is empty")
            scale = size / min(w, h)
            nw, nh = (size, max(size, round(h * scale))) if w <= h else (max(size, round(w * scale)), size)
            if (nw, nh) != (w, h):
                img = img.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
            img = img.crop((left, top, left + size, top + size))
            arr = np.asarray(img, dtype=np.uint8)
    except Exception as e:  # any decoder failure (truncated, not an image, too large): one line naming the file
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"folder: cannot decode image {path} ({msg})") from None
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _decode_split(root: Path, files: list[File], size: int, Image) -> torch.Tensor:
    out = np.empty((len(files), 3, size, size), dtype=np.uint8)
    for i, (rel, *_rest) in enumerate(files):
        out[i] = decode(root / rel, size, Image)
    return torch.from_numpy(out)


def statistics(train_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, std) of uint8 images [N, 3, H, W] scaled to [0, 1], float64, from exact integer sums."""
    c = train_x.shape[1]
    total = torch.zeros(c, dtype=torch.int64)
    squares = torch.zeros(c, dtype=torch.int64)
    for chunk in train_x.split(256):
        v = chunk.to(torch.int64)
        total += v.sum(dim=(0, 2, 3))
        squares += (v * v).sum(dim=(0, 2, 3))
    count = train_x.numel() // c
    mean = total.double() / count
    var = (squares.double() / count - mean * mean).clamp_min(0.0)
    return mean / 255.0, var.sqrt() / 255.0


def _expected(files: dict[str, list[File]], size: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    n_train, n_test = len(files["train"]), len(files["test"])
    return {
        "train_x": ((n_train, 3, size, size), torch.uint8),
        "train_y": ((n_train,), torch.int64),
        "test_x": ((n_test, 3, size, size), torch.uint8),
        "test_y": ((n_test,), torch.int64),
        "mean": ((3,), torch.float64),
        "std": ((3,), torch.float64),
    }


def _valid(t: dict[str, torch.Tensor], files: dict[str, list[File]], size: int) -> bool:
    expected = _expected(files, size)
    if set(t) != set(expected):
        return False
    if any(tuple(t[k].shape) != shape or t[k].dtype != dtype for k, (shape, dtype) in expected.items()):
        return False
    for split in SPLITS:  # the labels are the folder's, in its order
        if not torch.equal(t[f"{split}_y"], torch.tensor([f[1] for f in files[split]], dtype=torch.int64)):
            return False
    return bool(torch.isfinite(t["mean"]).all() and torch.isfinite(t["std"]).all() and (t["std"] >= 0).all())


def load_arrays(data_dir: str | Path, image_size: int) -> tuple[list[str], dict[str, torch.Tensor]]:
    """(class names, the cached tensors): from the cache when it is valid, else decoded (and cached)."""
    root = Path(data_dir)
    size = int(image_size)
    classes, files = scan(root)
    key = cache_key(classes, files, size)
    path = cache_path(root, size, key)
    if path.is_file():
        try:
            tensors = load_tensors(path)
        except CorruptFile:
            tensors = None
        if tensors is not None and _valid(tensors, files, size):
            return classes, tensors
    Image = _pil()
    tensors = {f"{split}_x": _decode_split(root, files[split], size, Image) for split in SPLITS}
    for split in SPLITS:
        tensors[f"{split}_y"] = torch.tensor([f[1] for f in files[split]], dtype=torch.int64)
    tensors["mean"], tensors["std"] = statistics(tensors["train_x"])
    try:
        save_tensors(path, tensors, metadata={"decoder": f"ticketlab.data.folder v{DECODE_VERSION}",
                                              "image_size": str(size), "classes": json.dumps(classes)})
    except OSError as e:
        warnings.warn(f"folder: could not cache the decoded images at {path} ({e.strerror or e}); "
                      f"they are decoded again next time", stacklevel=2)
    else:
        for old in path.parent.glob(f"images-{size}px-*.safetensors"):  # caches of the folder's earlier states
            if old != path:
                try:
                    old.unlink()
                except OSError:
                    pass
    return classes, tensors


def _normalised(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float32 (x / 255 - mean) / std, chunk by chunk (no float64 copy of the set)."""
    m = mean.to(torch.float32).view(1, -1, 1, 1)
    s = torch.where(std > 0, std, torch.ones_like(std)).to(torch.float32).view(1, -1, 1, 1)
    out = torch.empty(x.shape, dtype=torch.float32)
    for i in range(0, len(x), 256):
        out[i:i + 256] = x[i:i + 256].to(torch.float32).div_(255.0).sub_(m).div_(s)
    return out


def load_folder(data_dir: str | Path, image_size: int = DEFAULT_IMAGE_SIZE):
    from ticketlab.data import Dataset

    classes, t = load_arrays(data_dir, image_size)
    return Dataset(
        name="folder",
        train_x=_normalised(t["train_x"], t["mean"], t["std"]),
        train_y=t["train_y"],
        test_x=_normalised(t["test_x"], t["mean"], t["std"]),
        test_y=t["test_y"],
        num_classes=len(classes),
        augment=RandomResizedCropFlip(),
    )
