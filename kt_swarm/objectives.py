"""The loss of method.md section 3, whole (one process) and per participant (the swarm).

    L = sum_m CE(z_m, y) + weight * (1/B) * sum_i sum_{j != t(i)} T^2 KL(p_t(i)(i) || p_j(i))

Both functions split L the same way: participant m's share is its own CE plus the
transfer terms in which it is the student, so the shares sum to L.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from kt_swarm.roles import assign_teachers, student_mask, true_class_scores


def kl_to_student(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample T^2 * KL(p_teacher || p_student), summed over classes: [..., B, C] -> [..., B]."""
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1) * temperature**2


def swarm_loss_terms(
    logits: torch.Tensor | Sequence[torch.Tensor],
    target: torch.Tensor,
    *,
    temperature: float = 1.0,
    weight: float = 1.0,
    detach_teacher: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (shares [N], teachers [B]); shares.sum() is the global loss, with autograd intact."""
    z = torch.stack(list(logits)) if not torch.is_tensor(logits) else logits
    n, b, _ = z.shape
    teachers = assign_teachers(true_class_scores(z, target))
    ce = F.cross_entropy(z.flatten(0, 1), target.repeat(n), reduction="none").view(n, b).mean(dim=1)
    if weight == 0:
        return ce, teachers
    # The teacher's logits of every sample ([B, C]); tied samples pick row 0 and are masked below.
    z_teacher = z[teachers.clamp(min=0), torch.arange(b, device=z.device)]
    if detach_teacher:
        z_teacher = z_teacher.detach()
    kl = kl_to_student(z_teacher.unsqueeze(0), z, temperature)  # [N, B]
    transfer = (kl * student_mask(teachers, n)).sum(dim=1) / b
    return ce + weight * transfer, teachers


def swarm_loss(
    logits: torch.Tensor | Sequence[torch.Tensor],
    target: torch.Tensor,
    *,
    temperature: float = 1.0,
    weight: float = 1.0,
    detach_teacher: bool = False,
) -> torch.Tensor:
    """The whole single-process loss: sum of the participants' CE + weight * transfer term.

    logits: [N, B, C] (or N tensors [B, C]); target: [B]. Exact gradients by default
    (the teacher's distribution inside the KL receives gradient too, as in the published
    code); detach_teacher=True makes it a constant target (classical distillation).
    """
    shares, _ = swarm_loss_terms(
        logits, target, temperature=temperature, weight=weight, detach_teacher=detach_teacher
    )
    return shares.sum()


def participant_loss(
    own_logits: torch.Tensor,
    all_logits: torch.Tensor,
    index: int,
    target: torch.Tensor,
    *,
    temperature: float = 1.0,
    weight: float = 1.0,
    detach_teacher: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Participant `index`'s local surrogate of the global loss; returns (surrogate, teachers [B]).

    own_logits [B, C] carries the participant's graph; all_logits [N, B, C] holds every
    participant's detached logits (row `index` equal to own_logits' values). The
    surrogate's gradient at own_logits equals the gradient of swarm_loss there, so each
    participant can back-propagate its own share locally, once it has its peers' logits.
    Its value is the participant's share of L (its CE plus the terms where it is student).
    """
    n, b, _ = all_logits.shape
    teachers = assign_teachers(true_class_scores(all_logits, target))
    loss = F.cross_entropy(own_logits, target)
    if weight == 0:
        return loss, teachers
    peers = all_logits.detach()
    # As a student: learn from the (constant) teacher where someone else teaches.
    learns = student_mask(teachers, n)[index]
    z_teacher = peers[teachers.clamp(min=0), torch.arange(b, device=peers.device)]
    as_student = (kl_to_student(z_teacher, own_logits, temperature) * learns).sum() / b
    loss = loss + weight * as_student
    if not detach_teacher:
        # As a teacher (exact mode): the KL to every student also pulls on the teacher.
        # Added as (x - x.detach()) so it shapes the gradient without counting twice in the value.
        teaches = teachers == index
        others = [j for j in range(n) if j != index]
        kl = kl_to_student(own_logits.unsqueeze(0), peers[others], temperature)  # [N-1, B]
        as_teacher = (kl * teaches).sum() / b
        loss = loss + weight * (as_teacher - as_teacher.detach())
    return loss, teachers


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
    (grad,) = torch.autograd.grad(loss, own)
    return grad
