"""The loss of docs/method.md (The loss, Six strategies, Unlabelled data), whole (one process) and per participant (the swarm).

    L = sum_m CE(z_m, y)                      (mean over the labelled samples; kl_dp has none)
      + weight * (1/B) * sum_i sum_j sum_{k != j} w[k->j](i) T^2 KL(p_k(i) || p_j(i))
      + weight * (1/B) * sum_i sum_j r_j(i) T^2 KL(p_j0(i) || p_j(i))     (kl_dp: retention)
      + weight * (1/B) * sum_i sum_j CE(z_j(i), argmax z_j(i)) [unlabelled, confident] (self_training)

The teaching weights w come from roles.teaching_weights. Both functions split L the same way:
participant m's share is its own CE plus the terms in which it is the student, so the shares sum to L.
Other tasks (tasks.py) change the unit i, the score, the task loss in place of CE and the divergence in
place of KL; a segmentation's pixels are classification samples, averaged over the labelled pixels.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from kt_swarm.roles import confidence_scores, teaching_weights
from kt_swarm.tasks import Task, kl_to_student, labelled_ce


@dataclass(frozen=True)
class LossSpec:
    """swarm_loss's keyword arguments, as an arm hands them to an engine. The engines read only
    `learns(i)` and `start_copies`; what the strategy means is the method's business."""

    strategy: str = "best"
    scores: str = "true_class"
    temperature: float = 1.0
    weight: float = 1.0  # the CE-only control arm: strategy none
    detach_teacher: bool = True
    teacher: int | None = None  # kd: the frozen teacher's index
    pseudo_threshold: float = 0.95  # self_training
    trusted: tuple[tuple[bool, ...], ...] | None = None  # trusted[k][j]: k may teach j
    score_temperatures: tuple[float, ...] | None = None  # calibrated scores: participant m's softmax(z / T_m)
    task: str = "classification"  # tasks.py: classification | segmentation | saliency | language_model
    unit: str = "sample"  # segmentation: pixel | image; language_model: token | sequence
    top_k: int | None = None  # the exchange sends each participant's top-k (partition.py); None: dense

    def kwargs(self) -> dict:
        return asdict(self)

    def learns(self, index: int) -> bool:
        """False for a frozen participant (kd's teacher): it forwards in eval mode, without a graph, and never steps."""
        return not (self.strategy == "kd" and index == self.teacher)

    @property
    def start_copies(self) -> bool:
        """Each participant needs the logits of a frozen copy of its own weights at the start of the arm."""
        return self.strategy == "kl_dp"


def confident_unlabelled(logits: torch.Tensor, target: torch.Tensor, threshold: float) -> torch.Tensor:
    """[..., B, C] -> [..., B] float64 mask: unlabelled samples where the model is at least `threshold` sure (T = 1)."""
    return ((target < 0) & (logits.detach().softmax(dim=-1).amax(dim=-1) >= threshold)).to(torch.float64)


def pseudo_label_ce(logits: torch.Tensor, target: torch.Tensor, threshold: float) -> torch.Tensor:
    """Self-training: [..., B, C] -> [..., B] CE on each model's own arg-max where confident_unlabelled; 0 elsewhere."""
    guess = logits.detach().argmax(dim=-1)
    ce = F.cross_entropy(logits.flatten(0, -2), guess.flatten(), reduction="none").view(guess.shape)
    return ce * confident_unlabelled(logits, target, threshold).to(ce.dtype)


def _weights(peers: torch.Tensor, target: torch.Tensor, frozen: torch.Tensor | None, spec: LossSpec, task: Task):
    """(W [N, N, B], retention [N, B] or None) from every participant's detached logits."""
    temps = torch.tensor(spec.score_temperatures) if spec.score_temperatures is not None else None

    def scores_of(z):
        return confidence_scores(z, target, spec.scores, temps) if task.per_sample else task.score(z, target)

    scores = scores_of(peers)
    start = scores_of(frozen) if frozen is not None else None
    trusted = torch.tensor(spec.trusted, dtype=torch.bool) if spec.trusted is not None else None
    w = teaching_weights(scores, spec.strategy, teacher=spec.teacher, start_scores=start, trusted=trusted)
    keep = (1 - w.sum(dim=0)).clamp(min=0) if spec.start_copies else None
    return w, keep


def _self_roles(w: torch.Tensor, own_terms: torch.Tensor | None) -> torch.Tensor:
    """The role matrix R[k][j] = sum_i w[k->j](i); its diagonal counts what each learned from itself
    (kl_dp's frozen start, self-training's pseudo-labels)."""
    roles = w.sum(dim=-1).to(torch.float64)
    if own_terms is not None:
        roles = roles + torch.diag(own_terms.sum(dim=-1).to(torch.float64))
    return roles


def _spec(kwargs: dict, frozen_logits: torch.Tensor | None) -> LossSpec:
    """swarm_loss's keyword arguments as a LossSpec (its default gradient mode is exact)."""
    temps = kwargs.get("score_temperatures")
    if kwargs.get("top_k"):
        raise ValueError("top_k belongs to the exchange (partition.py); swarm_loss is the dense formula")
    spec = LossSpec(**{"detach_teacher": False, **kwargs, "trusted": _as_tuple(kwargs.get("trusted")),
                       "score_temperatures": tuple(float(t) for t in temps) if temps is not None else None})
    if spec.start_copies and frozen_logits is None:
        raise ValueError("strategy 'kl_dp' needs frozen_logits, the frozen starting copies' logits [N, B, C]")
    return spec


def _task_terms(spec: LossSpec, target: torch.Tensor):
    """(task, its loss in place of CE, its per-unit divergence in place of KL) for the spec."""
    task = Task(spec.task, spec.unit)
    if task.per_sample:
        return task, labelled_ce, lambda t, s: kl_to_student(t, s, spec.temperature)
    return task, task.loss, lambda t, s: task.divergence(t, s, spec.temperature, target)


def swarm_loss_terms(
    logits: torch.Tensor | Sequence[torch.Tensor],
    target: torch.Tensor,
    *,
    frozen_logits: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (shares [N], roles [N, N]); shares.sum() is the global loss, with autograd intact.
    Keyword arguments: those of swarm_loss."""
    spec = _spec(kwargs, frozen_logits)
    z = torch.stack(list(logits)) if not torch.is_tensor(logits) else logits
    task, task_loss, divergence = _task_terms(spec, target)
    if frozen_logits is not None:
        frozen_logits = task.units(frozen_logits, target)[0]
    z, target = task.units(z, target)
    n, b = z.shape[:2]
    w, keep = _weights(z.detach(), target, frozen_logits, spec, task)
    learns = torch.tensor([spec.learns(m) for m in range(n)], dtype=z.dtype, device=z.device)
    ce = task_loss(z, target) * learns if spec.strategy != "kl_dp" else z.flatten(1).sum(dim=1) * 0
    own_terms = None
    if spec.weight == 0:
        return ce, _self_roles(w, own_terms)
    extra = ce * 0
    if w.any():  # the N x N pairs' KL only where someone teaches (not for none, self_training)
        # Teachers inside the KL: constants when detached; a frozen participant is always one.
        source = torch.stack([z[k] if spec.learns(k) and not spec.detach_teacher else z[k].detach() for k in range(n)])
        kl = divergence(source.unsqueeze(1), z.unsqueeze(0))  # [teacher, student, B]
        extra = extra + (w * kl).sum(dim=(0, 2))
    if keep is not None:
        own_terms = keep
        extra = extra + (keep * divergence(frozen_logits.detach(), z)).sum(dim=1)
    if spec.strategy == "self_training":
        own_terms = confident_unlabelled(z, target, spec.pseudo_threshold)
        extra = extra + pseudo_label_ce(z, target, spec.pseudo_threshold).sum(dim=1)
    return ce + spec.weight * extra / b * learns, _self_roles(w, own_terms)


def swarm_loss(
    logits: torch.Tensor | Sequence[torch.Tensor],
    target: torch.Tensor,
    *,
    strategy: str = "best",
    scores: str = "true_class",
    temperature: float = 1.0,
    weight: float = 1.0,
    detach_teacher: bool = False,
    frozen_logits: torch.Tensor | None = None,
    teacher: int | None = None,
    pseudo_threshold: float = 0.95,
    trusted=None,
    score_temperatures=None,
    task: str = "classification",
    unit: str = "sample",
) -> torch.Tensor:
    """The whole single-process loss: every participant's CE + weight * its transfer terms.

    logits: [N, B, C] (or N tensors [B, C]); target: [B], -1 for an unlabelled sample (no CE term,
    scored by max confidence). strategy: best | better | dml | kd | kl_dp | none | self_training
    (docs/method.md: Six strategies); scores: true_class | max_confidence. Exact gradients by default (a live
    teacher's distribution inside the KL receives gradient too, as in the published code);
    detach_teacher=True makes it a constant target. kd: `teacher` is the index of the frozen teacher
    (no CE, no gradient). kl_dp: `frozen_logits` [N, B, C] are the frozen starting copies' logits.
    trusted: [N][N] bools, trusted[k][j] = k may teach j (trusted teachers). score_temperatures: [N]
    calibration temperatures the scores use (roles.fit_temperature); the KL keeps `temperature`.
    task, unit: tasks.py (segmentation: logits [N, B, C, H, W], target [B, H, W] with -1 ignored, unit
    pixel or image; saliency: map logits [N, B, H, W], target density maps [B, H, W]).
    """
    shares, _ = swarm_loss_terms(
        logits, target, strategy=strategy, scores=scores, temperature=temperature, weight=weight,
        detach_teacher=detach_teacher, frozen_logits=frozen_logits, teacher=teacher,
        pseudo_threshold=pseudo_threshold, trusted=trusted, score_temperatures=score_temperatures, task=task, unit=unit,
    )
    return shares.sum()


def _as_tuple(trusted) -> tuple | None:
    if trusted is None:
        return None
    return tuple(tuple(bool(v) for v in row) for row in (trusted.tolist() if torch.is_tensor(trusted) else trusted))


def participant_loss(
    own_logits: torch.Tensor,
    all_logits: torch.Tensor,
    index: int,
    target: torch.Tensor,
    *,
    frozen_logits: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Participant `index`'s local surrogate of the global loss; returns (surrogate, roles [N, N]).

    own_logits [B, C] carries the participant's graph; all_logits [N, B, C] holds every
    participant's detached logits (row `index` equal to own_logits' values), frozen_logits [N, B, C]
    the frozen starting copies' (kl_dp). Keyword arguments: those of swarm_loss. The surrogate's
    gradient at own_logits equals the gradient of swarm_loss there, so each participant can
    back-propagate its own share locally, once it has its peers' logits. Its value is the
    participant's share of L (its CE plus the terms where it is the student).
    """
    spec = _spec(kwargs, frozen_logits)
    task, task_loss, divergence = _task_terms(spec, target)
    if frozen_logits is not None:
        frozen_logits = task.units(frozen_logits, target)[0]
    own_logits, (all_logits, target) = task.units(own_logits, target)[0], task.units(all_logits, target)
    n, b = all_logits.shape[:2]
    peers = all_logits.detach()
    w, keep = _weights(peers, target, frozen_logits, spec, task)
    own_terms = keep
    if spec.strategy == "self_training":
        own_terms = confident_unlabelled(peers, target, spec.pseudo_threshold)
    roles = _self_roles(w, own_terms if spec.weight != 0 else None)
    if not spec.learns(index):  # frozen: no share, no gradient
        return own_logits.sum() * 0, roles
    loss = task_loss(own_logits, target) if spec.strategy != "kl_dp" else own_logits.sum() * 0
    if spec.weight == 0:
        return loss, roles
    # As a student: learn from every (constant) teacher, its frozen start, its own confident guesses.
    extra = own_logits.sum() * 0
    if w[:, index].any():
        extra = extra + (w[:, index] * divergence(peers, own_logits.unsqueeze(0))).sum()
    if keep is not None:
        extra = extra + (keep[index] * divergence(frozen_logits[index].detach(), own_logits)).sum()
    if spec.strategy == "self_training":
        extra = extra + pseudo_label_ce(own_logits, target, spec.pseudo_threshold).sum()
    loss = loss + spec.weight * extra / b
    if not spec.detach_teacher and w[index].any():
        # As a teacher (exact mode): the KL to every student also pulls on the teacher. Added as
        # (x - x.detach()) so it shapes the gradient without counting twice in the value.
        kl = divergence(own_logits.unsqueeze(0), peers)  # [N, B]
        as_teacher = spec.weight * (w[index] * kl).sum() / b
        loss = loss + (as_teacher - as_teacher.detach())
    return loss, roles


def participant_grad(
    own_logits: torch.Tensor,
    all_logits: torch.Tensor,
    index: int,
    target: torch.Tensor,
    **kwargs,
) -> torch.Tensor:
    """d(swarm_loss)/d(own_logits), computed from the participant's logits and its peers' only."""
    own = own_logits.detach().requires_grad_(True)
    loss, _ = participant_loss(own, all_logits, index, target, **kwargs)
    (grad,) = torch.autograd.grad(loss, own, allow_unused=True)
    return torch.zeros_like(own) if grad is None else grad
