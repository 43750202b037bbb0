"""A training step's exchange, both sides: what the actors send each other, and how the driver drives it.

Each step the driver makes two calls per actor and moves only references:

1. forward(epoch, step): the actor derives the batch from (seed, epoch, step) itself, runs its model
   (graph kept), puts its detached logits in the object store, returns the reference;
2. learn(refs): every actor receives the N references, reads its peers' logits, computes the same
   partition from the same numbers and back-propagates its own share of the global loss
   (objectives.participant_loss). Its optimizer steps at the start of the next call (apply), once the
   driver knows every share and gradient was finite (else no participant steps).

All of it is here, the actor's side (ActorExchange, which the actor delegates forward, learn and apply to)
and the driver's (train_step), so that another exchange replaces this one file.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import ray
import torch

from kt_swarm.config import Config
from kt_swarm.data import Dataset, arm_plan
from kt_swarm.engine import StepResult, blame
from kt_swarm.objectives import LossSpec, participant_loss
from kt_swarm.participant import Participant


@dataclass
class Learned:
    """One rank's answer to learn(): its participant's share of the loss and what the verdict needs."""

    share: float  # the participant's share of the global loss (every rank of a gang computes all of it)
    roles: torch.Tensor  # [N, N] the batch's role matrix (the same on every actor: one partition)
    logits_ok: list[bool]  # every participant's logits (and start copy's) finite, as this actor received them
    loss_ok: bool  # its share finite
    grads_ok: bool  # its gradients finite (a gang rank: its own rows' part)


class Host(Protocol):
    """What the exchange reads of the actor it runs in (actor.ParticipantActor)."""

    cfg: Config
    index: int
    rank: int
    ranks: int
    data: Dataset | None

    @property
    def participant(self) -> Participant: ...


class ActorExchange:
    """One actor's side: the step in flight between its forward, its learn and the verdict's apply."""

    def __init__(self):
        self.pending = None  # (own logits with their graph, target) between forward and learn
        self.unapplied = False  # gradients of the last learn() not yet applied
        self.lr_scale = 1.0  # and the learning-rate scale they are to be applied at
        self.kept_buffers = []  # the buffers before the last forward, put back if its step is skipped

    def forget(self) -> None:
        """A step in flight belongs to the past a loaded state replaces."""
        self.pending, self.unapplied = None, False

    def apply(self, host: Host, update: bool) -> None:
        """Step the optimizer with the gradients of the last learn(), or drop them: the driver decides once
        every participant has said whether its step was finite."""
        if self.unapplied and update:
            host.participant.step(self.lr_scale)
        elif self.unapplied:  # skipped: BatchNorm forgets the batch too
            host.participant.set_buffers(self.kept_buffers)
        self.unapplied = False

    def forward(self, host: Host, epoch: int, step: int, batch_size: int, update: bool | None, loss: LossSpec,
                split: str) -> ray.ObjectRef:
        """The logits of the batch, put in the object store (with the frozen starting copy's logits
        stacked under them, [2, B, C], when the loss needs those)."""
        if update is not None:  # the previous step's verdict rides on this call: no extra round trip
            self.apply(host, update)
        plan = arm_plan(host.data, split, seed=host.cfg.seed, epoch=epoch, step=step, batch_size=batch_size,
                        augment=host.cfg.data.augment)
        share = plan.share(host.rank, host.ranks)
        self.kept_buffers = host.participant.buffers()
        logits = host.participant.forward(host.data, share, loss.learns(host.index))
        self.pending = (logits, host.data.target(plan.ids, plan).to(logits.device))  # the whole batch's targets
        sent = logits.detach()
        if loss.start_copies:
            sent = torch.stack([sent, host.participant.start_logits(host.data, share)])
        if host.cfg.transfer.exchange_dtype:  # fewer bytes; every actor partitions the same rounded numbers
            sent = sent.to(getattr(torch, host.cfg.transfer.exchange_dtype))
        return ray.put(sent.cpu())

    def learn(self, host: Host, refs: list[list[ray.ObjectRef]], loss: LossSpec, lr_scale: float) -> Learned:
        """Back-propagate this participant's share of the loss; the optimizer steps later (at lr_scale), in
        apply(). refs[m]: participant m's logits, one reference per rank (its shares of the batch, in order)."""
        own, target = self.pending
        self.pending, self.lr_scale = None, lr_scale
        batch_dim = 1 if loss.start_copies else 0  # [2, B, ...] with the start copy's logits under them
        flat = iter(ray.get([r for shares in refs for r in shares]))
        # Peers' logits are read-only here (zero-copy from the object store): participant_loss never
        # writes into them.
        received = torch.stack([torch.cat([next(flat).to(device=own.device, dtype=own.dtype) for _ in shares], dim=batch_dim)
                                for shares in refs])
        peers, frozen = (received[:, 0], received[:, 1]) if loss.start_copies else (received, None)
        if host.ranks > 1:  # the whole batch's logits, with the graph through this rank's rows only
            rows = torch.arange(len(peers[host.index])).tensor_split(host.ranks)[host.rank]
            own = torch.cat([peers[host.index][: rows[0]], own, peers[host.index][rows[-1] + 1 :]])
        value, roles = participant_loss(own, peers, host.index, target, frozen_logits=frozen, **loss.kwargs())
        host.participant.zero_grad()
        if loss.learns(host.index):
            # Each rank's gradient is its rows' part of the whole batch's; DeepSpeed averages over the ranks.
            host.participant.backward(value * host.ranks)
            self.unapplied = True
        logits_ok = torch.isfinite(received).flatten(1).all(dim=1).tolist()
        return Learned(value.item(), roles.cpu(), logits_ok, bool(torch.isfinite(value)), host.participant.gradients_finite())


Each = Callable[[str, Callable[[int], tuple]], list[list]]  # RaySwarm._each: a method on every rank at once


def train_step(each: Each, batch_size: int, verdict: bool | None, epoch: int, step: int, loss: LossSpec, split: str,
               lr_scale: float) -> StepResult:
    """The driver's side of one step: forward on every actor (carrying the last step's `verdict`), then learn
    with every reference; the step's result, whose `bad` is the next verdict (empty: update)."""
    refs = each("forward", lambda m: (epoch, step, batch_size, verdict, loss, split))
    results = each("learn", lambda m: (refs, loss, lr_scale))
    # Every rank computes its participant's whole share; its own rows' gradients are its part.
    bad = blame(results[0][0].logits_ok, [all(r.loss_ok for r in ranks) for ranks in results],
                [all(r.grads_ok for r in ranks) for ranks in results])
    return StepResult([ranks[0].share for ranks in results], results[0][0].roles, bad)
