"""`mnist1d_cnn_bn`: the MNIST-1D CNN with BatchNorm (for early-bird channel masks)."""

import pytest
import torch

from ticketlab.errors import UserError
from ticketlab.models import MODELS, build, prunable_names


def test_registered_after_the_contract_models_with_the_expected_shape():
    assert MODELS[-1] == "mnist1d_cnn_bn"
    m = build("mnist1d_cnn_bn", (40,), 10, seed=0)
    # conv 1*25*5, 25*25*3, 25*25*3 (no bias); 3 BatchNorms of 25 (gamma, beta); fc 25*5*10 + 10
    assert sum(p.numel() for p in m.parameters()) == 125 + 1875 + 1875 + 3 * 50 + 1260
    assert prunable_names(m) == ["conv1.weight", "conv2.weight", "conv3.weight", "fc.weight"]
    assert all(torch.equal(getattr(m, f"bn{i}").weight, torch.ones(25)) for i in (1, 2, 3))


@pytest.mark.parametrize("shape", [(40,), (1, 40), (1, 16, 16)])
def test_forward_shapes(shape):
    m = build("mnist1d_cnn_bn", shape, 10, seed=0)
    assert m(torch.randn(4, *shape)).shape == (4, 10)


def test_seeded_and_too_short_signals_refused():
    a, b = build("mnist1d_cnn_bn", (40,), 10, seed=3), build("mnist1d_cnn_bn", (40,), 10, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = build("mnist1d_cnn_bn", (40,), 10, seed=4)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    with pytest.raises(UserError, match="length >= 3"):
        build("mnist1d_cnn_bn", (1,), 10, seed=0)
