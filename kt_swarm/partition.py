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

With `top_k` (LossSpec.top_k, transfer.top_k) a participant still scores itself on its whole distribution (the
partition is exact) but sends only its k most probable classes (tokens) per position with their indices
(`sendable`); `mix` merges a student's teachers and cuts them to k plus one bucket for the rest, and `share`
computes the KL over those buckets: what crosses is O(k), not O(K) (a language model's K is its vocabulary).

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


Rows = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
"""What a participant sends of its outputs: its rows [.., U, P, K], or (LossSpec.top_k) its top-k
log-probabilities at the transfer temperature with their indices, ([.., U, P, k], int32 [.., U, P, k])."""


def sendable(task: Task, outputs: torch.Tensor, target: torch.Tensor, spec: LossSpec) -> Rows:
    """Detached outputs -> what the participant sends (Rows): dense, or its top-k (docs/architecture.md: The exchange)."""
    rows = as_units(task, outputs, target)
    if not spec.top_k:
        return rows
    log_p = F.log_softmax(rows / spec.temperature, dim=-1)
    values, indices = log_p.topk(min(spec.top_k, log_p.shape[-1]), dim=-1)
    return values, indices.to(torch.int32)


def stack_rows(rows: list[Rows]) -> Rows:
    """Participants' Rows stacked: [N, U, P, K], or the top-k pair stacked each."""
    if isinstance(rows[0], tuple):
        return tuple(torch.stack(parts) for parts in zip(*rows))
    return torch.stack(rows)


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


def unit_groups(task: Task, target: torch.Tensor, row_groups: torch.Tensor) -> torch.Tensor:
    """[U] each unit's group (a text block's domain), from each row's: a token or pixel takes its row's."""
    if task.unit in ("pixel", "token"):
        return row_groups.view(-1, *[1] * (target.dim() - 1)).expand_as(target)[target >= 0]
    return row_groups


def roles_by(step: Plan, groups: torch.Tensor, count: int) -> torch.Tensor:
    """[G, N, N] float64: the step's role matrix over each group's units alone (kl_dp's retention on the diagonal)."""
    out = []
    for g in range(count):
        units = groups.to(step.weights.device) == g
        roles = step.weights[..., units].sum(dim=-1).to(torch.float64)
        if step.keep is not None:
            roles = roles + torch.diag(step.keep[:, units].sum(dim=-1).to(torch.float64))
        out.append(roles)
    return torch.stack(out)


@dataclass
class Mix:
    """What participant j's share needs from the peers on some units (None: nothing there)."""

    q: torch.Tensor | None = None  # [u, P, K] as a student: sum_k w[k->j] p_k (top-k: its k largest, [u, P, k])
    a: torch.Tensor | None = None  # [u] sum_k w[k->j] sum_p pos sum p_k log p_k
    r: torch.Tensor | None = None  # [u, P, K] as a live teacher (exact mode): sum_j w[j's row] log p_j
    s: torch.Tensor | None = None  # [u] sum_j w[k->j]
    qi: torch.Tensor | None = None  # top-k: q's indices, int32 [u, P, k]
    rest: torch.Tensor | None = None  # top-k: the mass of sum_k w[k->j] p_k outside them, [u, P]

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.q, self.a, self.r, self.s, self.qi, self.rest) if t is not None]


def mix(rows: Rows, w: torch.Tensor, pos: torch.Tensor, spec: LossSpec) -> list[Mix]:
    """The shard owner's work: every participant's detached outputs on its u units, rows [N, u, P, K], and
    W's columns there [N, N, u] -> each participant's Mix on those units."""
    n = len(rows[0]) if isinstance(rows, tuple) else len(rows)
    if spec.weight == 0 or not w.any():
        return [Mix() for _ in range(n)]
    if isinstance(rows, tuple):
        return _mix_top_k(*rows, w, pos)
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


def _mix_top_k(log_p: torch.Tensor, index: torch.Tensor, w: torch.Tensor, pos: torch.Tensor) -> list[Mix]:
    """mix() of top-k rows (log-probabilities at the temperature [N, u, P, k] and their indices): each teacher's
    distribution is its top k plus one bucket for the rest of its mass; a student's teachers, weighted, are
    merged and cut to the k most probable tokens plus one bucket (`rest`). With one teacher per unit this is
    each teacher's top-k KL exactly; with k the whole vocabulary, the dense mix."""
    log_p = log_p.to(torch.promote_types(log_p.dtype, torch.float32))
    w, pos = w.to(log_p.dtype), pos.to(log_p.dtype)
    p = log_p.exp()
    mass = (1 - p.sum(dim=-1)).clamp(min=0)  # [N, u, P] each one's mass outside its top k: one bucket
    neg_entropy = (pos * ((p * log_p).sum(dim=-1) + torch.xlogy(mass, mass))).sum(dim=-1)  # [N, u]
    out = []
    for j in range(len(log_p)):
        m = Mix()
        col = w[:, j]  # [k, u]: j's teachers
        teachers = col.any(dim=1).nonzero().flatten()
        if len(teachers):
            m.q, m.qi = merge_top_k(col[teachers, :, None, None] * p[teachers], index[teachers], log_p.shape[-1])
            m.rest = (col.sum(dim=0)[:, None] - m.q.sum(dim=-1)).clamp(min=0)
            m.a = (col * neg_entropy).sum(dim=0)
        out.append(m)
    return out


def merge_top_k(values: torch.Tensor, indices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[t, .., k] weighted probabilities of t sources at their indices -> their sum per index, cut to the k
    largest ([.., k] values, int32 indices). Deterministic: a stable sort, then sums in that order."""
    if len(values) == 1:
        return values[0], indices[0]
    v = values.movedim(0, -2).flatten(-2)  # [.., t*k]
    i = indices.movedim(0, -2).flatten(-2).long()
    i_sorted, order = i.sort(dim=-1, stable=True)
    v_sorted = v.gather(-1, order)
    starts = torch.ones_like(i_sorted, dtype=torch.bool)
    starts[..., 1:] = i_sorted[..., 1:] != i_sorted[..., :-1]
    run = starts.cumsum(dim=-1) - 1  # each entry's run of equal indices
    summed = torch.zeros_like(v_sorted).scatter_add_(-1, run, v_sorted)  # run r's sum in slot r; unused slots 0
    which = torch.zeros_like(i_sorted).scatter_(-1, run, i_sorted)
    top, where = summed.topk(k, dim=-1)  # at least k runs (a source's k indices are distinct)
    return top, which.gather(-1, where).to(torch.int32)


def join(pieces: list[tuple[int, Mix]], units: int, like: torch.Tensor) -> Mix:
    """One participant's Mix over all `units` from owners' pieces (start unit, Mix), zeros where a piece is
    empty (top-k: weight 0 at index 0); `like`: its rows [U, P, K], for dtype and device."""
    whole = Mix()
    for name in ("q", "a", "r", "s", "qi", "rest"):
        parts = [(lo, getattr(m, name)) for lo, m in pieces if getattr(m, name) is not None]
        if not parts:
            continue
        first = parts[0][1]
        dtype = first.dtype if name == "qi" else like.dtype
        full = torch.zeros((units, *first.shape[1:]), dtype=dtype, device=like.device)
        for lo, part in parts:
            full[lo : lo + len(part)] = part.to(device=like.device, dtype=dtype)
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
    if mine.qi is not None:  # as a student, top-k: the teachers' k tokens and one bucket for the rest
        at = log_p.gather(-1, mine.qi.long())
        rest = torch.log((1 - at.exp().sum(dim=-1)).clamp(min=torch.finfo(at.dtype).tiny))
        cross = (mine.q * at).sum(dim=-1) + torch.where(mine.rest > 0, mine.rest * rest, 0)
        extra = extra + temperature**2 * (mine.a.sum() - (pos * cross).sum())
    elif mine.q is not None:  # as a student: sum_k w[k->j] T^2 KL(p_k || p_j)
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
    rows = stack_rows([sendable(task, z.detach(), target, spec) for z in outputs])
    mixes = mix(rows, step.weights.to(outputs[0].device), positions(task, target), spec)
    keep = step.keep if step.keep is not None else [None] * len(outputs)
    shares = [share(z, target, m, spec, mixes[m], keep[m], frozen[m]) for m, z in enumerate(outputs)]
    return shares, step, told
