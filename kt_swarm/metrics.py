"""What a run reports (docs: ../shared/docs/method.md section 5): accuracy, top-k accuracy,
prediction flips against the starting predictions (Roth et al.), complementary knowledge, success
rate, teach share. Predictions are [N, n] top-1 classes or [N, n, k] top-k classes, best first."""
from __future__ import annotations

import torch


def _top1(preds: torch.Tensor) -> torch.Tensor:
    return preds[..., 0] if preds.dim() == 3 else preds


def accuracy(preds: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Each participant's top-1 accuracy, as a fraction."""
    return (_top1(preds) == labels.unsqueeze(0)).double().mean(dim=1).tolist()


def topk_accuracy(preds: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """[N, n, k] top-k classes -> each participant's top-k accuracy (the label among its k guesses)."""
    return (preds == labels.view(1, -1, 1)).any(dim=-1).double().mean(dim=1).tolist()


def flips(start: torch.Tensor, end: torch.Tensor, labels: torch.Tensor) -> tuple[list[float], list[float]]:
    """Knowledge gain and loss against each participant's own starting predictions: the share of
    samples wrong at the start and right at the end (positive flips), and right then wrong (negative)."""
    right_start, right_end = _top1(start) == labels, _top1(end) == labels
    return ((~right_start & right_end).double().mean(dim=1).tolist(),
            (right_start & ~right_end).double().mean(dim=1).tolist())


def complementary(preds: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Share of samples some other participant gets right and this one gets wrong: what it could learn."""
    right = _top1(preds) == labels
    n = right.shape[0]
    others = torch.stack([right[[j for j in range(n) if j != i]].any(dim=0) for i in range(n)]) if n > 1 else torch.zeros_like(right)
    return (others & ~right).double().mean(dim=1).tolist()


def success_rate(deltas: list[float]) -> float:
    """Share of participants whose accuracy went up."""
    return sum(d > 0 for d in deltas) / len(deltas) if deltas else 0.0


def teach_share(role_matrix: torch.Tensor, samples: int) -> list[float]:
    """Share of the epoch's samples each participant taught: its teaching weights toward its N - 1
    students (the off-diagonal row sum; the diagonal is what it learned from itself) over N - 1."""
    n = role_matrix.shape[0]
    taught = (role_matrix.sum(dim=1) - role_matrix.diagonal()).double() / max(n - 1, 1)
    return (taught / max(samples, 1)).tolist()
