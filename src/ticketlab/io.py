"""Atomic, pickle-free file writes and checked reads.

Every file ticketlab writes goes through `atomic_write_bytes`: the bytes land in a temporary file in the
same folder, are flushed to disk, and replace the target with one `os.replace`, so a kill at any point
leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError

if TYPE_CHECKING:
    import torch

# torch (through safetensors.torch) is imported inside the tensor helpers only: reading JSON/CSV files of a
# run folder (`ticketlab show`) must not pay for importing torch.


class CorruptFile(Exception):
    """A file exists but cannot be trusted (truncated, wrong hash, not the expected format)."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def to_json(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n"


def tensors_to_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Serialise a flat dict of tensors as safetensors (contiguous CPU copies; no pickle)."""
    from safetensors.torch import save as _st_save

    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return _st_save(flat, metadata=metadata)


def tensors_from_bytes(data: bytes, what: str = "tensor file") -> dict[str, torch.Tensor]:
    from safetensors.torch import load as _st_load

    try:
        loaded = _st_load(data)
        # safetensors returns keys in no fixed order; consumers that draw random numbers per key need one
        return {k: loaded[k] for k in sorted(loaded)}
    except (SafetensorError, ValueError, RuntimeError, OSError) as e:
        raise CorruptFile(f"{what} is not a valid safetensors file ({e})") from None


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    atomic_write_bytes(path, tensors_to_bytes(tensors, metadata))


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file; anything else (a pickle, a truncated file) raises CorruptFile."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CorruptFile(f"{path}: cannot read ({e.strerror})") from None
    return tensors_from_bytes(data, str(path))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
