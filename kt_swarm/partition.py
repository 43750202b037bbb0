"""One step of the method cut where a swarm exchanges it (docs/architecture.md: The exchange).

objectives.swarm_loss is the loss as one formula; here it is the same loss in four pure functions, each run
where its inputs live, so that what crosses between processes does not grow with the number of
participants N:

1. `scored`  on each participant: its own outputs -> its score on each of the batch's U units
             (U numbers; kl_dp: its frozen start's too).
2. `plan`    on the coordinator: every participant's scores -> the teaching weights W [N, N, U]
             (roles.teaching_weights: every strategy, trust, calibration), kl_dp's retention and the role
             matrix, once a step rather than once per participant. W is a function of the scores unit by
             unit (`weights`), so the owner of a shard is sent the shard's scores [N, u] and recomputes
             its columns of W, the same numbers, rather than receive N times as many.
3. `mix`     on the owner of a shard of units: every participant's outputs on the shard and W's columns ->
             for each participant what its share of the loss needs there. As a student j it needs only
             q_j = sum_k w[k->j] p_k (its teachers' distributions, weighted) and the constant
             a_j = sum_k w[k->j] sum p_k log p_k: sum_k w[k->j] KL(p_k || p_j) = a_j - sum q_j log p_j.
             As a live teacher k (exact gradients) it needs r_k = sum_j w[k->j] log p_j and
             s_k = sum_j w[k->j]. Each is the size of one participant's outputs, whatever N.
4. `share`   on each participant: its outputs (with their graph) and its mix -> its share of the loss,
             whose gradient is that of swarm_loss at its outputs (tests/test_partition.py).

The local engine runs the four in one process on one shard (the whole batch); the Ray swarm
(swarm/exchange.py) runs `mix` on every actor for its shard of the units. Pure tensor functions: no Ray.

Outputs travel in a unit layout [U, P, K]: K the classes a distribution is over, P positions in a unit
averaged with weights `pos` [U, P] (tasks.Task.divergence): a sample or a labelled pixel is [1, C]; a
segmentation image [H*W, C] over its labelled pixels; a saliency map [1, H*W] (a distribution over pixels);
a token [1, V]; a sequence [T, V] over its tokens that have a next token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kt_swarm.objectives import LossSpec, confident_unlabelled, pseudo_label_ce
from kt_swarm.roles import confidence_scores, teaching_weights
from kt_swarm.tasks import Task, labelled_ce


def task_of(spec: LossSpec) -> Task:
    return Task(spec.task, spec.unit)


def as_units(task: Task, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[.., B, ...] outputs and the batch's target -> rows [.., U, P, K], the unit layout."""
    if task.per_sample:  # samples, or a segmentation's labelled pixels (cut out in order)
        return task.units(outputs, target)[0].unsqueeze(-2)
    if task.name == "segmentation":  # image units: [.., B, H*W, C]
        return outputs.movedim(-3, -1).flatten(-3, -2)
    if task.name == "language_model":  # sequence units: [.., B, T, V] already
        return outputs
    return outputs.flatten(-2).unsqueeze(-2)  # saliency: a map is one distribution over its pixels


def positions(task: Task, target: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """pos [U, P]: how the positions of each unit are averaged (a segmentation image: over its labelled
    pixels; a sequence: over its tokens that have a next token; any other unit has one position)."""
    if task.unit in ("image", "sequence"):
        labelled = (target >= 0).flatten(1).to(dtype)
        return labelled / labelled.sum(dim=-1, keepdim=True).clamp(min=1)
    return torch.ones(unit_count(task, target), 1, dtype=dtype, device=target.device)


def unit_count(task: Task, target: torch.Tensor) -> int:
    """The number of units in a batch with this target."""
    return int((target >= 0).sum()) if task.unit in ("pixel", "token") else len(target)


def divergence(teacher: torch.Tensor, student: torch.Tensor, pos: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-unit T^2 KL(teacher || student) in the unit layout: [.., U, P, K] -> [.., U]."""
    log_t = F.log_softmax(teacher / temperature, dim=-1)
    log_s = F.log_softmax(student / temperature, dim=-1)
    return (pos * (log_t.exp() * (log_t - log_s)).sum(dim=-1)).sum(dim=-1) * temperature**2


@dataclass
class Scored:
    """What one participant (or one rank of it: its rows of the batch) tells the coordinator: O(U) numbers."""

    scores: torch.Tensor  # [u] its score on each of its units (true class, max confidence, or minus the task loss)
    start_scores: torch.Tensor | None  # [u] kl_dp: its frozen start's
    own_terms: float  # self-training: units it learns from its own confident guess (the role matrix's diagonal)
    finite: bool  # its outputs (and its start copy's) all finite

    @property
    def units(self) -> int:
        return len(self.scores)


def scored(own: torch.Tensor, target: torch.Tensor, index: int, spec: LossSpec,
           frozen: torch.Tensor | None = None) -> Scored:
    """Participant `index`'s scores on its outputs [b, ...] of a batch (or its rows of one) with `target`."""
    task = task_of(spec)
    temps = spec.score_temperatures

    def score(z: torch.Tensor) -> torch.Tensor:
        if task.per_sample:
            units, t = task.units(z.detach(), target)
            own_temp = torch.tensor(temps[index : index + 1]) if temps is not None else None
            return confidence_scores(units.unsqueeze(0), t, spec.scores, own_temp)[0]
        return task.score(z.detach().unsqueeze(0), target)[0]

    own_terms = 0.0
    if spec.strategy == "self_training" and spec.weight != 0:
        units, t = task.units(own.detach(), target)
        own_terms = float(confident_unlabelled(units, t, spec.pseudo_threshold).sum())
    finite = bool(torch.isfinite(own).all()) and (frozen is None or bool(torch.isfinite(frozen).all()))
    start = score(frozen) if spec.start_copies and frozen is not None else None
    return Scored(score(own).cpu(), None if start is None else start.cpu(), own_terms, finite)


@dataclass
class Plan:
    """The coordinator's partition of a step (over the whole batch's U units)."""

    weights: torch.Tensor  # W [N, N, U]: W[k, j, i] = how much k teaches j on unit i
    keep: torch.Tensor | None  # [N, U] kl_dp: how much each participant keeps to its frozen start
    roles: torch.Tensor  # [N, N] float64: R[k][j] = sum_i W[k, j, i]; the diagonal: what each learned from itself


def weights(scores: torch.Tensor, spec: LossSpec, start_scores: torch.Tensor | None = None) -> torch.Tensor:
    """W [N, N, u] from the scores [N, u]: unit by unit, so a shard's columns come from the shard's scores
    alone (an owner recomputes them from N x u numbers rather than receive N x N x u)."""
    trusted = torch.tensor(spec.trusted, dtype=torch.bool) if spec.trusted is not None else None
    return teaching_weights(scores, spec.strategy, teacher=spec.teacher, start_scores=start_scores, trusted=trusted)


def plan(scores: torch.Tensor, spec: LossSpec, start_scores: torch.Tensor | None = None,
         own_terms: list[float] | None = None) -> Plan:
    """Every participant's scores [N, U] (kl_dp: its start's [N, U]) -> the step's Plan."""
    w = weights(scores, spec, start_scores)
    keep = (1 - w.sum(dim=0)).clamp(min=0) if spec.start_copies else None
    roles = w.sum(dim=-1).to(torch.float64)
    if spec.weight != 0:
        own = keep.sum(dim=-1) if keep is not None else torch.tensor(own_terms or [0.0] * len(scores))
        roles = roles + torch.diag(own.to(torch.float64))
    return Plan(w, keep, roles)


@dataclass
class Mix:
    """What participant j's share needs from the peers on some units (None: nothing there)."""

    q: torch.Tensor | None = None  # [u, P, K] as a student: sum_k w[k->j] p_k
    a: torch.Tensor | None = None  # [u] sum_k w[k->j] sum_p pos sum p_k log p_k
    r: torch.Tensor | None = None  # [u, P, K] as a live teacher (exact mode): sum_j w[j's row] log p_j
    s: torch.Tensor | None = None  # [u] sum_j w[k->j]

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.q, self.a, self.r, self.s) if t is not None]


def mix(rows: torch.Tensor, w: torch.Tensor, pos: torch.Tensor, spec: LossSpec) -> list[Mix]:
    """The shard owner's work: every participant's detached outputs on its u units, rows [N, u, P, K], and
    W's columns there [N, N, u] -> each participant's Mix on those units."""
    n = len(rows)
    if spec.weight == 0 or not w.any():
        return [Mix() for _ in range(n)]
    rows = rows.to(torch.promote_types(rows.dtype, torch.float32))  # half-precision rows (exchange_dtype) mixed in float32
    w, pos = w.to(rows.dtype), pos.to(rows.dtype)
    log_p = F.log_softmax(rows / spec.temperature, dim=-1)
    p = log_p.exp()
    neg_entropy = (pos * (p * log_p).sum(dim=-1)).sum(dim=-1)  # [N, u]
    out = []
    for j in range(n):
        m = Mix()
        col = w[:, j]  # [k, u]: j's teachers
        if col.any():
            m.q = (col[:, :, None, None] * p).sum(dim=0)
            m.a = (col * neg_entropy).sum(dim=0)
        row = w[j]  # [students, u]: j as a teacher, receiving gradient only when it learns and is live
        if not spec.detach_teacher and spec.learns(j) and row.any():
            m.r = (row[:, :, None, None] * log_p).sum(dim=0)
            m.s = row.sum(dim=0)
        out.append(m)
    return out


def join(pieces: list[tuple[int, Mix]], units: int, like: torch.Tensor) -> Mix:
    """One participant's Mix over all `units` from owners' pieces (start unit, Mix), zeros where a piece is
    empty; `like`: its rows [U, P, K], for shape, dtype and device."""
    whole = Mix()
    for name in ("q", "a", "r", "s"):
        if all(getattr(m, name) is None for _, m in pieces):
            continue
        shape = like.shape if name in ("q", "r") else like.shape[:1]
        full = like.new_zeros(shape)
        for lo, m in pieces:
            part = getattr(m, name)
            if part is not None:
                full[lo : lo + len(part)] = part.to(device=like.device, dtype=like.dtype)
        setattr(whole, name, full)
    return whole


def share(own: torch.Tensor, target: torch.Tensor, index: int, spec: LossSpec, mine: Mix,
          keep: torch.Tensor | None = None, frozen: torch.Tensor | None = None) -> torch.Tensor:
    """Participant `index`'s share of the loss from its outputs [B, ...] (with their graph) over the whole batch,
    its Mix over all units and (kl_dp) its retention `keep` [U] and frozen start's outputs. Its value is the
    participant's share of swarm_loss (its task loss plus the terms where it is the student); its gradient
    at `own` is swarm_loss's (as a live teacher too, added as (x - x.detach()) so as not to count twice)."""
    task = task_of(spec)
    zero = own.sum() * 0
    if not spec.learns(index):  # frozen (kd's teacher): no share, no gradient
        return zero
    loss = zero if spec.strategy == "kl_dp" else (labelled_ce(own, target) if task.name == "classification"
                                                  else task.loss(own, target))
    if spec.weight == 0:
        return loss
    rows, pos = as_units(task, own, target), positions(task, target, own.dtype)
    units, temperature = max(len(rows), 1), spec.temperature
    log_p = F.log_softmax(rows / temperature, dim=-1)
    extra = zero
    if mine.q is not None:  # as a student: sum_k w[k->j] T^2 KL(p_k || p_j)
        extra = extra + temperature**2 * (mine.a.sum() - (pos * (mine.q * log_p).sum(dim=-1)).sum())
    if keep is not None:  # kl_dp: the retention term toward its own frozen start
        extra = extra + (keep.to(rows) * divergence(as_units(task, frozen, target), rows, pos, temperature)).sum()
    if spec.strategy == "self_training":
        z, t = task.units(own, target)
        extra = extra + pseudo_label_ce(z, t, spec.pseudo_threshold).sum()
    loss = loss + spec.weight * extra / units
    if mine.r is not None:  # as a live teacher: sum_j w[k->j] T^2 KL(p_k || p_j), the students' log p_j constant
        p = log_p.exp()
        teaching = (pos * (p * (mine.s[:, None, None] * log_p - mine.r)).sum(dim=-1)).sum()
        as_teacher = spec.weight * temperature**2 * teaching / units
        loss = loss + (as_teacher - as_teacher.detach())
    return loss


def in_one_process(outputs: list[torch.Tensor], target: torch.Tensor, spec: LossSpec,
                   frozen: list[torch.Tensor] | None = None) -> tuple[list[torch.Tensor], Plan, list[Scored]]:
    """The four steps in one process on one shard (the local engine, and the tests' reference for the swarm):
    every participant's share (with its graph), the Plan and what each one scored."""
    frozen = frozen or [None] * len(outputs)
    told = [scored(z, target, m, spec, f) for m, (z, f) in enumerate(zip(outputs, frozen))]
    step = plan(torch.stack([s.scores for s in told]), spec,
                torch.stack([s.start_scores for s in told]) if spec.start_copies else None, [s.own_terms for s in told])
    task = task_of(spec)
    rows = torch.stack([as_units(task, z.detach(), target) for z in outputs])
    mixes = mix(rows, step.weights.to(rows.device), positions(task, target), spec)
    keep = step.keep if step.keep is not None else [None] * len(outputs)
    shares = [share(z, target, m, spec, mixes[m], keep[m], frozen[m]) for m, z in enumerate(outputs)]
    return shares, step, told
