"""Who teaches whom: scores -> per-sample teaching weights (docs/method.md: Who teaches, Six strategies, Unlabelled data).

Every strategy is one tensor W [N, N, B]: W[k, j, i] is how much participant k teaches participant
j on sample i (>= 0; for each student and sample they sum to at most 1; the diagonal is 0).
Pure tensor functions: no I/O, no Ray, no optimisation state.
"""
from __future__ import annotations

import math

import torch

NO_TEACHER = -1
UNLABELLED = -1  # a target of -1: the sample's label is hidden (no CE term; scored by max confidence)

STRATEGIES = ("best", "better", "dml", "kd", "kl_dp", "none", "self_training")
SCORES = ("true_class", "max_confidence")


def true_class_scores(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[N, B, C] logits, [B] labels -> [N, B] probability each participant gives the true class.

    Always the plain softmax (T = 1), whatever temperature the transfer term uses.
    """
    probs = logits.detach().softmax(dim=-1)
    index = target.clamp(min=0).view(1, -1, 1).expand(probs.shape[0], -1, 1)
    return probs.gather(-1, index).squeeze(-1)


def confidence_scores(logits: torch.Tensor, target: torch.Tensor, kind: str = "true_class",
                      temperatures: torch.Tensor | None = None) -> torch.Tensor:
    """[N, B, C] logits -> [N, B] scores: the true class's probability (`true_class`) where the sample
    is labelled, else the highest probability of any class (`max_confidence`, Roth et al.). The plain
    softmax (T = 1), or each participant's own calibration temperature ([N], fit_temperature)."""
    if kind not in SCORES:
        raise ValueError(f"scores must be one of {SCORES}, got {kind!r}")
    if temperatures is not None:
        logits = logits.detach() / temperatures.to(logits).view(-1, 1, 1)
    confidence = logits.detach().softmax(dim=-1).amax(dim=-1)
    if kind == "max_confidence":
        return confidence
    return torch.where(target >= 0, true_class_scores(logits, target), confidence)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, lo: float = 0.01, hi: float = 100.0) -> float:
    """Temperature scaling (Guo et al. 2017): the T in [lo, hi] that minimises the NLL of softmax(z / T)
    on held-out labelled logits [n, C]. The NLL is convex in 1/T, so its derivative, mean(E_p[z] - z_y),
    is bisected on a log scale; a T at a bound means the data asked for more."""
    z = logits.detach().double()
    true = z.gather(1, labels.view(-1, 1)).squeeze(1)

    def slope(beta: float) -> float:
        return float(((z * beta).softmax(dim=-1) * z).sum(dim=-1).sub(true).mean())

    a, b = math.log(1 / hi), math.log(1 / lo)  # log(1/T)
    if slope(math.exp(b)) <= 0:
        return lo
    if slope(math.exp(a)) >= 0:
        return hi
    for _ in range(60):
        mid = (a + b) / 2
        a, b = (mid, b) if slope(math.exp(mid)) < 0 else (a, mid)
    return 1 / math.exp((a + b) / 2)


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


def _from_teachers(teachers: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """[B] one teacher per sample (or -1) -> W [N, N, B]: the teacher teaches every other participant."""
    rows = torch.arange(n, device=teachers.device)
    teaches = (rows.unsqueeze(1) == teachers.unsqueeze(0)).to(dtype)  # [N, B]; no row for -1
    others = 1 - torch.eye(n, dtype=dtype, device=teachers.device)
    return teaches.unsqueeze(1) * others.unsqueeze(2)


def teaching_weights(
    scores: torch.Tensor,
    strategy: str = "best",
    *,
    teacher: int | None = None,
    start_scores: torch.Tensor | None = None,
    trusted: torch.Tensor | None = None,
) -> torch.Tensor:
    """[N, B] scores -> W [N, N, B], W[k, j, i] = weight of teacher k for student j on sample i.

    best: the unique most confident participant teaches everyone else (a shared maximum: nobody).
    better: j learns from every k with s_k > s_j, weighted by the margin (normalised over those k).
    dml: every peer teaches every student, 1/(N-1) each. kd: participant `teacher` teaches all others.
    kl_dp: j learns from its most confident peer k* (unique) where s_k* beats j's own frozen start,
    `start_scores` [N, B]; elsewhere j keeps to its start (the retention term, see objectives).
    none, self_training: nobody teaches. `trusted` [N, N] bool: trusted[k, j] = k may teach j; the
    weights of the other pairs are set to 0 (trusted teachers, docs/method.md: Options for any strategy).
    """
    n, b = scores.shape
    dtype = scores.dtype if scores.is_floating_point() else torch.float64
    w = scores.new_zeros((n, n, b), dtype=dtype)
    if strategy == "best":
        w = _from_teachers(assign_teachers(scores), n, dtype)
    elif strategy == "better":
        margin = (scores.unsqueeze(1) - scores.unsqueeze(0)).clamp(min=0)  # [k, j, B]: s_k - s_j where positive
        total = margin.sum(dim=0, keepdim=True)
        w = torch.where(total > 0, margin / torch.where(total > 0, total, torch.ones_like(total)), margin)
    elif strategy == "dml":
        if n > 1:
            w = (1 - torch.eye(n, dtype=dtype, device=scores.device)).unsqueeze(2).expand(n, n, b) / (n - 1)
    elif strategy == "kd":
        if teacher is None or not 0 <= teacher < n:
            raise ValueError(f"strategy 'kd' needs a teacher index in [0, {n}), got {teacher!r}")
        w = _from_teachers(torch.full((b,), teacher, dtype=torch.long, device=scores.device), n, dtype)
    elif strategy == "kl_dp":
        if start_scores is None:
            raise ValueError("strategy 'kl_dp' needs the frozen starting copies' scores")
        for j in range(n):
            peers = scores.clone()
            peers[j] = -torch.inf
            best, k = peers.max(dim=0)
            unique = (peers == best.unsqueeze(0)).sum(dim=0) == 1
            learns = unique & (best > start_scores[j])
            w[k[learns], j, learns.nonzero().squeeze(1)] = 1
    elif strategy not in ("none", "self_training"):
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if trusted is not None:
        w = w * trusted.to(device=w.device, dtype=w.dtype).unsqueeze(2)
    return w


def trust_matrix(val_acc: list[float]) -> torch.Tensor:
    """Trusted teachers: [N, N] bool, k may teach j when k's validation accuracy is at least j's."""
    acc = torch.tensor(val_acc, dtype=torch.float64)
    return acc.unsqueeze(1) >= acc.unsqueeze(0)


def role_matrix(teachers: torch.Tensor, n: int) -> torch.Tensor:
    """[B] teachers -> LongTensor [N, N]: R[t][s] = samples on which t taught s."""
    taught = torch.bincount(teachers[teachers >= 0], minlength=n)
    matrix = taught.unsqueeze(1).repeat(1, n)
    matrix.fill_diagonal_(0)
    return matrix
