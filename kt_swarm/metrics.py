"""Accuracy and role statistics from predictions and teacher assignments."""
from __future__ import annotations

import torch


def accuracy(preds: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """[N, n] predictions, [n] labels -> each participant's accuracy as a fraction."""
    return (preds == labels.unsqueeze(0)).double().mean(dim=1).tolist()


def teach_share(role_matrix: torch.Tensor, samples: int) -> list[float]:
    """Share of the epoch's samples each participant taught (row sums over its N-1 students)."""
    n = role_matrix.shape[0]
    taught = role_matrix.sum(dim=1).double() / max(n - 1, 1)
    return (taught / max(samples, 1)).tolist()
