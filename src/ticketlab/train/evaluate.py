"""Evaluation on a whole tensor set in large batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 10000) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` in eval mode; restores the previous mode."""
    was_training = model.training
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            out = model(x[i:i + batch_size])
            yb = y[i:i + batch_size]
            loss += F.cross_entropy(out, yb, reduction="sum").double()
            correct += (out.argmax(1) == yb).sum()
    model.train(was_training)
    n = max(len(x), 1)
    return loss.item() / n, correct.item() / n
