"""Compact tensor files: what a unit writes shrinks with its sparsity, and reads back bit for bit.

Inside a safetensors file (still plain safetensors, no pickle) two encodings replace the dense form:

- a bool tensor (a mask) is stored as packed bits, 8 weights a byte (`numpy.packbits`, little bit order);
- a floating-point tensor with enough zeros (the weights of a pruned layer) is stored as its nonzero
  values in row-major order plus a packed bitmap of where they were, and, when some of its zeros are -0.0
  (re-masking multiplies a negative weight by 0), a packed bitmap of those. NaN, infinities and
  subnormals are values like any other, so the tensor comes back bit for bit; the sparse form is used only
  when it is smaller.

Which tensors are encoded, and their shapes, is recorded in the file's metadata under `ticketlab.packed`
(a JSON object); a file without it is read as it is, so files written before this encoding still read. An
encoded entry that does not add up (wrong byte count, bitmap and values of different lengths, an unknown
encoding) is a corrupt file.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

KEY = "ticketlab.packed"
ENABLED = True   # False writes every tensor dense (the format before this encoding; benchmarks compare the two)
NONZERO = "@nonzero"   # suffixes of a sparse tensor's bitmaps (never part of a parameter name)
NEGZERO = "@negzero"


def _ints(size: int):
    """The integer dtype of a float's width: bits are moved as integers (numpy has no bfloat16)."""
    import torch

    return {2: torch.int16, 4: torch.int32, 8: torch.int64}[size]


class PackError(ValueError):
    """An encoded entry that does not decode (the reader turns it into CorruptFile)."""


def pack_bits(flags: torch.Tensor) -> torch.Tensor:
    import numpy as np
    import torch

    return torch.from_numpy(np.packbits(flags.reshape(-1).numpy(), bitorder="little"))


def unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    import numpy as np
    import torch

    return torch.from_numpy(np.unpackbits(packed.numpy(), count=count, bitorder="little").view(bool))


def pack(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(the tensors to write, metadata): masks as bits, sparse weights as values + bitmap, the rest as is.
    Expects contiguous CPU tensors."""
    import numpy as np
    import torch

    if not ENABLED or any("@" in k for k in tensors):
        return dict(tensors), {}
    out, packed = {}, {}
    for name, t in tensors.items():
        shape = list(t.shape)
        if t.dtype == torch.bool:
            out[name] = pack_bits(t)
            packed[name] = {"as": "bits", "shape": shape}
            continue
        if t.is_floating_point() and t.numel() >= 8:
            flat = t.reshape(-1)
            nonzero = flat != 0   # NaN included
            kept = int(nonzero.sum())
            if kept * t.element_size() + math.ceil(t.numel() / 8) >= t.numel() * t.element_size():
                out[name] = t   # dense: nothing to gain (decided before the second pass)
                continue
            negzero = ~nonzero & torch.signbit(flat)
            bitmaps = 1 + bool(negzero.any())
            if kept * t.element_size() + bitmaps * math.ceil(t.numel() / 8) < t.numel() * t.element_size():
                bits = flat.view(_ints(t.element_size())).numpy()   # as integers: numpy has no bfloat16
                out[name] = torch.from_numpy(np.compress(nonzero.numpy(), bits)).view(t.dtype)   # 5x masked_select
                out[name + NONZERO] = pack_bits(nonzero)
                if bitmaps == 2:
                    out[name + NEGZERO] = pack_bits(negzero)
                packed[name] = {"as": "nonzero", "shape": shape}
                continue
        out[name] = t
    return out, ({KEY: json.dumps(packed, sort_keys=True)} if packed else {})


def unpack(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> dict[str, torch.Tensor]:
    """The tensors `pack` was given; PackError when an encoded entry does not add up."""
    import numpy as np
    import torch

    raw = (metadata or {}).get(KEY)
    if raw is None:
        return tensors
    try:
        packed = json.loads(raw)
    except ValueError:
        raise PackError(f"{KEY} metadata is not JSON") from None
    if not isinstance(packed, dict):
        raise PackError(f"{KEY} metadata is not an object")
    out = {k: v for k, v in tensors.items() if k.rpartition("@")[0] not in packed}
    for name, how in packed.items():
        shape = how.get("shape") if isinstance(how, dict) else None
        if not (isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)) or name not in tensors:
            raise PackError(f"entry {name!r}: missing tensor or bad shape")
        count = math.prod(shape)
        data = tensors[name]
        if how.get("as") == "bits":
            if data.dtype != torch.uint8 or data.numel() != math.ceil(count / 8):
                raise PackError(f"entry {name!r}: {data.numel()} bytes of bits for {count} flags")
            out[name] = unpack_bits(data, count).reshape(shape)
        elif how.get("as") == "nonzero":
            bitmap = tensors.get(name + NONZERO)
            if bitmap is None or bitmap.dtype != torch.uint8 or bitmap.numel() != math.ceil(count / 8):
                raise PackError(f"entry {name!r}: missing or wrong-sized bitmap")
            where = unpack_bits(bitmap, count)
            if int(where.sum()) != data.numel() or data.dim() != 1:
                raise PackError(f"entry {name!r}: {data.numel()} values for {int(where.sum())} nonzero places")
            negative = tensors.get(name + NEGZERO)
            size = data.element_size()
            ints = _ints(size)
            if negative is None:
                full = torch.zeros(count, dtype=ints)
            else:   # -0.0 is the sign bit alone: set it where the bitmap says
                if negative.dtype != torch.uint8 or negative.numel() != bitmap.numel():
                    raise PackError(f"entry {name!r}: wrong-sized bitmap of -0.0")
                full = unpack_bits(negative, count).to(ints) * -(1 << (8 * size - 1))
            full.numpy()[np.flatnonzero(where.numpy())] = data.view(ints).numpy()   # 7x masked_scatter_
            out[name] = full.view(data.dtype).reshape(shape)
        else:
            raise PackError(f"entry {name!r}: unknown encoding {how.get('as')!r}")
    return out


def identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit (-0.0 is not 0.0, a NaN equals the same NaN)."""
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.contiguous().reshape(-1).view(ints), b.contiguous().reshape(-1).view(ints))
