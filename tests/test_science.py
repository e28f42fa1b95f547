"""Science check (issue: lottery foundation): on the MNIST-1D MLP, 3 seeds, the default experiment.

Tickets at 10-25% of the weights match or beat the dense network's test accuracy and beat the
random-reinit control by at least 2 points on average (published tickets reach ~70-75%
at ~90% sparsity vs ~64-66% dense, with a wider 40-500-500-10 MLP). This trains 63 small networks
(about 2 minutes on one core).
"""

import statistics

import pytest

import ticketlab


@pytest.mark.slow
def test_mnist1d_tickets_match_dense_and_beat_random_reinit(tmp_path):
    res = ticketlab.lottery(out=tmp_path, data_dir=str(tmp_path / "data"), seeds=(0, 1, 2), controls=("random_reinit",))
    dense = statistics.fmean(r["test_accuracy"] for r in res.where(level=0))
    sparse = [r for r in res if 0.10 <= r["weights_remaining"] <= 0.25]
    assert {r["level"] for r in sparse} == {7, 8, 9, 10}
    ticket = statistics.fmean(r["test_accuracy"] for r in sparse if r["arm"] == "ticket")
    reinit = statistics.fmean(r["test_accuracy"] for r in sparse if r["arm"] == "random_reinit")
    print(f"dense {dense:.4f}  ticket(10-25%) {ticket:.4f}  random reinit(10-25%) {reinit:.4f}")
    assert ticket >= dense
    assert ticket - reinit >= 0.02
