"""Compact tensor files: masks as packed bits, sparse weights as nonzero values, read back bit for bit."""

import json
import struct

import pytest
import torch

from ticketlab.codec import KEY, NEGZERO, NONZERO, pack
from ticketlab.io import CorruptFile, tensors_from_bytes, tensors_to_bytes

SHAPES = [(300, 784), (6, 1, 5, 5), (7,), (3, 3), (13, 17), (1,), ()]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.bool:
        return torch.equal(a, b)
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.reshape(-1).view(ints), b.reshape(-1).view(ints))


def random_mask(shape, kept: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) < kept


@pytest.mark.parametrize("kept", [1.0, 0.5, 0.1, 0.01, 0.0])
@pytest.mark.parametrize("shape", SHAPES)
def test_masks_and_masked_weights_round_trip_exactly(shape, kept):
    mask = random_mask(shape, kept, seed=len(shape))
    weights = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * mask
    tensors = {"fc.weight": weights, "mask": mask, "fc.bias": torch.randn(3), "step": torch.tensor(5)}
    back = tensors_from_bytes(tensors_to_bytes(tensors))
    assert sorted(back) == sorted(tensors)
    for k in tensors:
        assert same_bits(back[k], tensors[k]), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_special_values_survive_bitwise(dtype):
    t = torch.zeros(40, dtype=dtype)
    t[3], t[9], t[17] = -0.0, float("nan"), float("-inf")
    t[21] = torch.finfo(dtype).tiny / 2 if dtype != torch.bfloat16 else 1e-40   # a subnormal
    back = tensors_from_bytes(tensors_to_bytes({"w": t}))["w"]
    assert same_bits(back, t)
    assert torch.signbit(back[3]) and back[3] == 0


def test_bytes_shrink_with_sparsity_and_dense_tensors_stay_dense():
    shape = (300, 784)
    dense = torch.randn(shape)
    sizes = {}
    for kept in (1.0, 0.2, 0.1, 0.014):
        mask = random_mask(shape, kept, seed=0)
        sizes[kept] = len(tensors_to_bytes({"w": dense * mask}))
    n = 300 * 784
    assert sizes[1.0] >= 4 * n   # nothing to gain: stored dense
    # masking by multiplication leaves -0.0 where a negative weight was pruned: a second bitmap
    assert sizes[0.1] < 0.1 * 4 * n * 1.1 + 2 * n / 8 + 1024
    assert sizes[0.014] < sizes[0.1] < sizes[0.2] < sizes[1.0]
    mask_bytes = len(tensors_to_bytes({"m": random_mask(shape, 0.5, 0)}))
    assert mask_bytes < n / 8 + 1024   # 8 flags a byte, not one byte each


def test_pack_records_what_it_encoded():
    d = torch.randn(4)
    flat, meta = pack({"m": torch.ones(9, dtype=torch.bool), "w": torch.zeros(64), "d": d, "z": -torch.zeros(64)})
    packed = json.loads(meta[KEY])
    assert packed == {"m": {"as": "bits", "shape": [9]}, "w": {"as": "nonzero", "shape": [64]},
                      "z": {"as": "nonzero", "shape": [64]}}
    assert flat["m"].dtype == torch.uint8 and flat["m"].numel() == 2
    assert flat["w"].numel() == 0 and flat["w" + NONZERO].numel() == 8 and "w" + NEGZERO not in flat
    assert flat["z" + NEGZERO].numel() == 8
    assert flat["d"] is d


def test_files_without_the_encoding_still_read():
    from safetensors.torch import save

    plain = {"mask": torch.tensor([True, False, True]), "w": torch.zeros(100)}
    back = tensors_from_bytes(save(plain))
    assert all(same_bits(back[k], plain[k]) for k in plain)


def _with_metadata(tensors: dict, packed: dict) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata={KEY: json.dumps(packed)})


@pytest.mark.parametrize("tensors, packed", [
    ({"m": torch.zeros(3, dtype=torch.uint8)}, {"m": {"as": "bits", "shape": [9]}}),            # 3 bytes for 9 flags
    ({"w": torch.ones(2), "w@nonzero": torch.tensor([7], dtype=torch.uint8)}, {"w": {"as": "nonzero", "shape": [8]}}),
    ({"w": torch.ones(3)}, {"w": {"as": "nonzero", "shape": [8]}}),                               # bitmap missing
    ({"w": torch.ones(3)}, {"w": {"as": "zip", "shape": [3]}}),                                   # unknown encoding
    ({"w": torch.ones(3)}, {"w": {"as": "bits", "shape": "3"}}),                                  # bad shape
    ({"w": torch.ones(3)}, {"v": {"as": "bits", "shape": [3]}}),                                  # names a missing tensor
])
def test_inconsistent_encodings_are_corrupt(tensors, packed):
    with pytest.raises(CorruptFile):
        tensors_from_bytes(_with_metadata(tensors, packed))


def test_header_length_past_the_end_is_corrupt():
    data = tensors_to_bytes({"m": torch.ones(9, dtype=torch.bool)})
    with pytest.raises(CorruptFile):
        tensors_from_bytes(struct.pack("<Q", len(data) * 2) + data[8:])
