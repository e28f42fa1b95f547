"""Deterministic seed derivation for everything random in ticketlab (data order, augmentation, masks, controls).

Every random draw (batch order of an epoch, augmentation of an iteration, subsample, label noise,
synthetic data) gets its own `torch.Generator`, seeded by `derive_seed(tag, *parts)`:

    seed = first 8 bytes (little-endian) of BLAKE2b("ticketlab/<tag>/<p1>:<p2>:...") with the top bit
    cleared, i.e. an integer in [0, 2**63).

Why a hash and not `seed * K + e`: the tag keeps streams apart (the permutation of epoch 3 and the
augmentation of iteration 3 of the same run never share a seed), and nearby integer inputs give
unrelated seeds. Why not Python's `hash()`: it is salted per process for str/bytes.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(tag: str, *parts: int) -> int:
    """A 63-bit seed that depends only on `tag` and the integers `parts` (stable across processes)."""
    text = f"ticketlab/{tag}/" + ":".join(str(int(p)) for p in parts)
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def generator(tag: str, *parts: int) -> torch.Generator:
    """A fresh CPU generator seeded with `derive_seed(tag, *parts)`."""
    g = torch.Generator()
    g.manual_seed(derive_seed(tag, *parts))
    return g
