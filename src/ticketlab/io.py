"""Atomic, pickle-free file writes and checked reads.

Every file ticketlab writes goes through `atomic_write_bytes`: the bytes land in a temporary file in the
same folder, are flushed to disk, and replace the target with one `os.replace`, so a kill at any point
leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import secrets
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
    """Write `data` to `path` atomically. The file gets the mode a plain `open(path, "w")` would give it
    (0666 less the umask), so a run folder shared with colleagues is readable to them as their umask allows.
    An OSError (a full disk, no permission) names `path`, and leaves no temporary file behind."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temp(path)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            except OSError:   # the folder became unwritable meanwhile: nothing more to do
                pass
        if isinstance(e, OSError) and e.errno is not None and (e.filename is None or str(e.filename).endswith(".tmp")):
            raise OSError(e.errno, e.strerror, str(path)) from e   # the same subclass, naming the target
        raise


def _create_temp(path: Path) -> tuple[int, str]:
    """A new file `.<name>.<random>.tmp` beside `path`, opened for writing. Like `tempfile.mkstemp`, but
    created with mode 0666, which the kernel reduces by the umask (and a default ACL), as for any file a
    program creates; mkstemp's 0600 would make every file of a shared run folder private."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path.parent))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def finite(obj):
    """`obj` with every non-finite float (NaN, inf) replaced by None, recursively through dicts, lists and
    tuples: strict JSON has no NaN. (A value that is missing for a reason says so elsewhere: a diverged
    unit's `diverged_reason`.)"""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def to_json(obj) -> str:
    """Strict JSON (non-finite floats written as null; see `finite`), keys sorted."""
    return json.dumps(finite(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"


def to_json_line(obj) -> str:
    """One line of strict JSON (for .jsonl files), keys sorted."""
    return json.dumps(finite(obj), sort_keys=True, allow_nan=False)


def tensors_to_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Serialise a flat dict of tensors as safetensors (contiguous CPU copies; no pickle), masks as packed
    bits and sparse weights as their nonzero values (`codec`)."""
    from safetensors.torch import save as _st_save

    from .codec import pack

    flat, packed = pack({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})
    return _st_save(flat, metadata={**(metadata or {}), **packed} or None)


def tensors_from_bytes(data: bytes, what: str = "tensor file") -> dict[str, torch.Tensor]:
    from safetensors.torch import load as _st_load

    from .codec import PackError, unpack

    try:
        loaded = unpack(_st_load(data), _metadata(data))
        # safetensors returns keys in no fixed order; consumers that draw random numbers per key need one
        return {k: loaded[k] for k in sorted(loaded)}
    except PackError as e:
        raise CorruptFile(f"{what}: a packed tensor does not decode ({e})") from None
    except (SafetensorError, ValueError, RuntimeError, OSError) as e:
        raise CorruptFile(f"{what} is not a valid safetensors file ({e})") from None


def _metadata(data: bytes) -> dict | None:
    """The `__metadata__` of a safetensors file's header (8 bytes of header length, then JSON)."""
    size = int.from_bytes(data[:8], "little")
    if len(data) < 8 or size > len(data) - 8:
        raise ValueError("header length past the end of the file")
    header = json.loads(data[8:8 + size])
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else None


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
