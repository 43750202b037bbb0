"""Who teaches whom: scores -> one teacher per sample (method.md sections 1-2).

Pure tensor functions: no I/O, no Ray, no optimisation state.
"""
from __future__ import annotations

import torch

NO_TEACHER = -1


def true_class_scores(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[N, B, C] logits, [B] labels -> [N, B] probability each participant gives the true class.

    Always the plain softmax (T = 1), whatever temperature the transfer term uses.
    """
    probs = logits.detach().softmax(dim=-1)
    index = target.view(1, -1, 1).expand(probs.shape[0], -1, 1)
    return probs.gather(-1, index).squeeze(-1)


def assign_teachers(scores: torch.Tensor) -> torch.Tensor:
    """[N, B] scores -> LongTensor [B]: the teacher of each sample, NO_TEACHER (-1) on a shared maximum.

    kt_swarm drops tied samples for every N (the published code gives ties to the
    second model when N = 2 and drops them otherwise).
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [N, B], got shape {tuple(scores.shape)}")
    best, teacher = scores.max(dim=0)
    tied = (scores == best.unsqueeze(0)).sum(dim=0) > 1
    return torch.where(tied, torch.full_like(teacher, NO_TEACHER), teacher)


def student_mask(teachers: torch.Tensor, n: int) -> torch.Tensor:
    """[B] teachers -> bool [N, B]: participant m learns on sample i (it is not the teacher, and there is one)."""
    rows = torch.arange(n, device=teachers.device).unsqueeze(1)
    return (teachers.unsqueeze(0) >= 0) & (rows != teachers.unsqueeze(0))


def role_matrix(teachers: torch.Tensor, n: int) -> torch.Tensor:
    """[B] teachers -> LongTensor [N, N]: R[t][s] = samples on which t taught s."""
    taught = torch.bincount(teachers[teachers >= 0], minlength=n)
    matrix = taught.unsqueeze(1).repeat(1, n)
    matrix.fill_diagonal_(0)
    return matrix
