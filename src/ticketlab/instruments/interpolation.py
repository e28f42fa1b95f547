"""The straight path between two networks and its error barrier (Frankle, Dziugaite, Roy & Carbin 2020,
"Linear Mode Connectivity and the Lottery Ticket Hypothesis").

    E(alpha) = test error of (1 - alpha) W_1 + alpha W_2,  alpha in [0, 1]
    error_barrier = max_alpha E(alpha) - (E(0) + E(1)) / 2

Two networks are linearly connected (the training was stable) when the barrier is ~0 (the paper: < 2%).
Floating-point state (weights, biases, BatchNorm running statistics) is interpolated; integer buffers
(BatchNorm's batch counter) are taken from W_1. Pruned weights are zero in both ends, so stay zero.
"""

from __future__ import annotations

import torch
from torch import nn

from ..train.evaluate import evaluate


def interpolate_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    if a.keys() != b.keys():
        raise ValueError(f"the two networks differ in their tensors: {sorted(set(a) ^ set(b))}")
    return {k: (torch.lerp(a[k], b[k].to(a[k]), alpha) if a[k].is_floating_point() else a[k].clone()) for k in a}


def alphas(points: int) -> list[float]:
    """`points` evenly spaced values from 0 to 1, both ends included."""
    if points < 2:
        raise ValueError(f"need at least 2 points on the path, got {points}")
    return [i / (points - 1) for i in range(points)]


def error_along_path(model: nn.Module, a: dict, b: dict, x: torch.Tensor, y: torch.Tensor, points: int = 30,
                     batch_size: int = 10000) -> list[dict]:
    """Test loss, accuracy and error at each alpha; `model` (any network of the same shape) is overwritten."""
    rows = []
    for alpha in alphas(points):
        # lerp at alpha = 0 / 1 returns the end points exactly (a + 0 * (b - a) and the weight-1 branch)
        state = a if alpha == 0 else b if alpha == 1 else interpolate_state(a, b, alpha)
        model.load_state_dict(state)
        loss, acc = evaluate(model, x, y, batch_size)
        rows.append({"alpha": alpha, "test_loss": loss, "test_accuracy": acc, "test_error": 1.0 - acc})
    return rows


def error_barrier(errors: list[float]) -> float:
    """max over the path minus the mean of the two end points (the first and last entries)."""
    return max(errors) - 0.5 * (errors[0] + errors[-1])
