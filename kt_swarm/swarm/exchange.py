"""A training step's exchange, both sides: the coordinator computes the partition, and each participant
receives only what its share of the loss needs (docs/architecture.md: The exchange).

The driver makes two calls per actor a step and handles one reference per actor:

1. forward(key, ...): each actor derives the batch from (seed, epoch, step) itself, runs each participant
   it hosts (graph kept) and returns what the partition needs: its score on each unit (partition.scored,
   O(B) numbers). The driver, the coordinator, computes the partition once (partition.plan) and cuts
   the units into one contiguous shard per actor.
2. learn(layout, the scores of the actor's shard, ...): each actor, as the owner of its shard, recomputes
   its columns of W from them (partition.weights), pulls every participant's outputs on the shard from
   the actors that hold them (`rows`), computes every participant's Mix there (partition.mix) and
   publishes it; then pulls, for the participants it hosts, the Mix of
   every shard from its owner (`mixes`, one call per owner), joins each one's and back-propagates its
   share (partition.share). Its optimizer steps at the start of the next call (apply), once the driver
   knows every share and gradient was finite (else no participant steps).

What a participant receives a step is its shard's rows of every participant (N x B/N x C values, for an
actor hosting one) plus its Mix of the whole batch (B x C, twice in the exact gradient mode), the
scores of its shard (N x B/N) and, in a gang, its own outputs from its sibling ranks: a constant
times B x C, whatever N. The pulls go actor to actor through the object store: `rows` and `mixes` run in
concurrency groups of their own, so an actor answers them while its main thread is in learn(), and a
`mixes` call waits for the owner to publish (which needs only `rows`, which never wait: no cycle).

All of it is here, the actor's side (ActorExchange) and the driver's (train_step), so that another
exchange replaces this one file.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import ray
import torch

from kt_swarm.config import Config
from kt_swarm.data import Dataset, arm_plan
from kt_swarm.engine import StepResult, blame
from kt_swarm.objectives import LossSpec
from kt_swarm.partition import Mix, Plan, Rows, Scored, as_units, join, mix, plan, positions, scored, sendable, share, task_of, weights
from kt_swarm.participant import Participant

WAIT_S = 600.0  # a `mixes` call waits this long for its owner's learn() before giving up


class ExchangeAborted(RuntimeError):
    """A shard's owner failed before publishing its mixes: its own error is the one to report."""


@dataclass
class Learned:
    """One hosted participant's (or gang rank's) answer to learn()."""

    share: float  # the participant's share of the global loss (every rank of a gang computes all of it)
    loss_ok: bool  # its share finite
    grads_ok: bool  # its gradients finite (a gang rank: its own rows' part)
    received: int  # bytes it read from the exchange this step (from peers or from its own actor alike)


@dataclass(frozen=True)
class Layout:
    """Who holds which units this step, the same for every actor (one object in the store, read by all)."""

    key: tuple  # (epoch, step, split): which step the pulls are about
    shards: list[tuple[int, int]]  # actor a owns units [lo, hi) of the batch
    slots: list[list[tuple[int, int, int]]]  # actor a's hosted (participant, first unit, units), in its order
    units: int  # U, the batch's units
    participants: int  # N


def nbytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _units(sent: Rows, lo: int, hi: int) -> Rows:
    """Units [lo, hi) of what a participant sent (dense rows, or the top-k pair)."""
    return tuple(t[lo:hi] for t in sent) if isinstance(sent, tuple) else sent[lo:hi]


class Host(Protocol):
    """What the exchange reads of the actor it runs in (actor.ParticipantActor)."""

    cfg: Config
    indices: list[int]  # the participants it hosts
    rank: int
    ranks: int
    data: Dataset | None
    me: int  # its place among the swarm's actors
    peers: list  # every actor's handle, in order

    def participant(self, index: int) -> Participant: ...


@dataclass
class Pending:
    """A hosted participant's step between forward() and learn()."""

    own: torch.Tensor  # its outputs with their graph (its rows of the batch)
    sent: Rows  # the same, detached, in the unit layout (or its top-k) and the exchange dtype, on the CPU
    frozen: torch.Tensor | None  # its frozen start's outputs (kl_dp)


class ActorExchange:
    """One actor's side: the step in flight between its forward, its learn and the verdict's apply."""

    def __init__(self):
        self.pending: dict[int, Pending] = {}
        self.key = None
        self.target = None  # the whole batch's target
        self.unapplied: list[int] = []  # participants whose gradients of the last learn() are not yet applied
        self.lr_scale = 1.0  # and the learning-rate scale they are to be applied at
        self.kept_buffers: dict[int, list] = {}  # buffers before the last forward, put back if its step is skipped
        self.published = None  # (key, first unit, {participant: Mix}) or (key, error) from this actor's shard
        self.cond = threading.Condition()

    def forget(self) -> None:
        """A step in flight belongs to the past a loaded state replaces."""
        self.pending, self.unapplied, self.key = {}, [], None

    def apply(self, host: Host, update: bool) -> None:
        """Step the optimizers with the gradients of the last learn(), or drop them: the driver decides once
        every participant has said whether its step was finite."""
        for m in self.unapplied:
            if update:
                host.participant(m).step(self.lr_scale)
            else:  # skipped: BatchNorm forgets the batch too
                host.participant(m).set_buffers(self.kept_buffers[m])
        self.unapplied = []

    def forward(self, host: Host, key: tuple, batch_size: int, update: bool | None, loss: LossSpec) -> list[Scored]:
        """Each hosted participant's outputs of its rows of the batch, kept; returns what each scored."""
        if update is not None:  # the previous step's verdict rides on this call: no extra round trip
            self.apply(host, update)
        epoch, step, split = key
        plan_ = arm_plan(host.data, split, seed=host.cfg.seed, epoch=epoch, step=step, batch_size=batch_size,
                         augment=host.cfg.data.augment)
        rows = plan_.share(host.rank, host.ranks)
        target = host.data.target(plan_.ids, plan_)
        mine = target.tensor_split(host.ranks)[host.rank]  # this rank's rows' targets
        task, dtype = task_of(loss), host.cfg.transfer.exchange_dtype
        told = []
        with self.cond:
            self.published = None
        self.pending, self.key, self.target = {}, key, target
        for m in host.indices:
            p = host.participant(m)
            self.kept_buffers[m] = p.buffers()
            own = p.forward(host.data, rows, loss.learns(m))
            frozen = p.start_logits(host.data, rows) if loss.start_copies else None
            sent = sendable(task, own.detach(), mine.to(own.device), loss)
            sent = tuple(t.cpu() for t in sent) if isinstance(sent, tuple) else sent.cpu()
            if dtype:  # fewer bytes on the wire; every participant scored itself on its own full-precision outputs
                sent = (sent[0].to(getattr(torch, dtype)), sent[1]) if isinstance(sent, tuple) else sent.to(getattr(torch, dtype))
            self.pending[m] = Pending(own, sent, frozen)
            told.append(scored(own, mine.to(own.device), m, loss, frozen))
        return told

    def rows(self, key: tuple, wanted: list[tuple[int, int, int]]) -> list[Rows]:
        """(Concurrency group `rows`.) Hosted participants' outputs on units [lo, hi) of their own rows,
        wanted as (participant, lo, hi). Never waits: forward() has finished before anyone asks."""
        self._check(key)
        return [_units(self.pending[m].sent, lo, hi) for m, lo, hi in wanted]

    def outputs(self, key: tuple, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(Concurrency group `rows`.) A gang rank's outputs of its rows (and its start's), for its siblings."""
        self._check(key)
        p = self.pending[index]
        return p.own.detach().cpu(), None if p.frozen is None else p.frozen.cpu()

    def mixes(self, key: tuple, which: list[int]) -> tuple[int, dict[int, Mix]]:
        """(Concurrency group `mixes`.) This actor's shard's Mix for these participants, once it is published."""
        with self.cond:
            if not self.cond.wait_for(lambda: self.published is not None and self.published[0] == key, WAIT_S):
                raise ExchangeAborted(f"no mixes for step {key} within {WAIT_S:g} s")
            if len(self.published) == 2:
                raise ExchangeAborted(f"the owner of a shard failed: {self.published[1]}")
            _, lo, mixes = self.published
        return lo, {m: mixes[m] for m in which}

    def _check(self, key: tuple) -> None:
        if key != self.key:
            raise ExchangeAborted(f"asked for step {key}, holds {self.key}")

    def learn(self, host: Host, layout: Layout, scores: tuple, keeps: dict[int, torch.Tensor | None],
              loss: LossSpec, lr_scale: float) -> list[Learned]:
        """Own a shard (mix it, publish it), then back-propagate each hosted participant's share; the
        optimizers step later (at lr_scale), in apply()."""
        self.lr_scale = lr_scale
        try:
            owned = self._own_shard(host, layout, scores, loss)
        except BaseException as e:
            with self.cond:
                self.published = (layout.key, f"{type(e).__name__}: {e}")
                self.cond.notify_all()
            raise
        # Every hosted participant's Mix from every owner, one call per owner for all of them
        owners = [a for a, (lo, hi) in enumerate(layout.shards) if hi > lo]
        calls = [host.peers[a].mixes.remote(layout.key, host.indices) for a in owners if a != host.me]
        got = ray.get(calls) + ([self.mixes(layout.key, host.indices)] if host.me in owners else [])
        return [self._learn_one(host, layout, m, [(lo, mixes[m]) for lo, mixes in got], keeps[m], loss,
                                owned / len(host.indices)) for m in host.indices]

    def _own_shard(self, host: Host, layout: Layout, scores: tuple, loss: LossSpec) -> int:
        """Pull every participant's rows of this actor's shard, mix them by the shard's scores (and kl_dp's
        start scores), publish; returns the bytes read."""
        lo, hi = layout.shards[host.me]
        mixes, received = {}, nbytes(*scores)
        if hi > lo:
            asks = {}  # actor -> [(participant, lo, hi) in its own rows]
            for a, slots in enumerate(layout.slots):
                for m, first, count in slots:
                    a_lo, a_hi = max(lo, first), min(hi, first + count)
                    if a_hi > a_lo:
                        asks.setdefault(a, []).append((m, a_lo - first, a_hi - first))
            calls = {a: host.peers[a].rows.remote(layout.key, wanted) for a, wanted in asks.items() if a != host.me}
            got = dict(zip(calls, ray.get(list(calls.values()))))
            if host.me in asks:
                got[host.me] = self.rows(layout.key, asks[host.me])
            first_piece = next(iter(got.values()))[0]
            parts = first_piece if isinstance(first_piece, tuple) else (first_piece,)
            rows = tuple(t.new_empty((layout.participants, hi - lo, *t.shape[1:])) for t in parts)
            for a, wanted in asks.items():
                for (m, a_lo, _), piece in zip(wanted, got[a]):
                    start = dict((i, f) for i, f, _ in layout.slots[a])[m] + a_lo - lo
                    for whole, t in zip(rows, piece if isinstance(piece, tuple) else (piece,)):
                        whole[m, start : start + len(t)] = t  # copied: the pieces are read-only
                        received += nbytes(t)
            rows = rows if isinstance(first_piece, tuple) else rows[0]
            pos = positions(task_of(loss), self.target)[lo:hi]
            mixes = dict(enumerate(mix(rows, weights(*scores[:1], loss, *scores[1:]), pos, loss)))
            dtype = host.cfg.transfer.exchange_dtype
            if dtype:
                for m in mixes.values():
                    m.q, m.r = [None if t is None else t.to(getattr(torch, dtype)) for t in (m.q, m.r)]
        with self.cond:
            self.published = (layout.key, lo, mixes)
            self.cond.notify_all()
        return received

    def _learn_one(self, host: Host, layout: Layout, index: int, pieces: list[tuple[int, Mix]], keep: torch.Tensor | None,
                   loss: LossSpec, owned: float) -> Learned:
        pending, p = self.pending[index], host.participant(index)
        received = int(owned) + nbytes(keep)
        own, frozen = pending.own, pending.frozen
        if host.ranks > 1:  # the whole batch's outputs, with the graph through this rank's rows only
            gang = [a for a, slots in enumerate(layout.slots) if any(m == index for m, _, _ in slots)]
            siblings = ray.get([host.peers[a].outputs.remote(layout.key, index) for a in gang if a != host.me])
            received += sum(nbytes(*s) for s in siblings)
            parts = [(o.to(own), None if f is None else f.to(own)) for o, f in siblings]
            parts.insert(host.rank, (own, frozen))
            own = torch.cat([o for o, _ in parts])
            frozen = torch.cat([f for _, f in parts]) if frozen is not None else None
        target = self.target.to(own.device)
        received += sum(nbytes(*m.tensors()) for _, m in pieces)
        mine = join(pieces, layout.units, as_units(task_of(loss), own.detach(), target))
        value = share(own, target, index, loss, mine, None if keep is None else keep.to(own.device), frozen)
        p.zero_grad()
        if loss.learns(index):
            # Each rank's gradient is its rows' part of the whole batch's; DeepSpeed averages over the ranks.
            p.backward(value * host.ranks)
            self.unapplied.append(index)
        return Learned(value.item(), bool(torch.isfinite(value)), p.gradients_finite(), received)


Call = Callable[[str, Callable[[int], tuple]], list]  # RaySwarm._on_actors: a method on every actor at once


def train_step(on_actors: Call, hosts: list[list[int]], gangs: list[list[int]], batch_size: int,
               verdict: bool | None, epoch: int, step: int, loss: LossSpec, split: str, lr_scale: float,
               by_domain: Callable[[Plan], torch.Tensor | None] = lambda part: None) -> StepResult:
    """The driver's side of one step: forward on every actor (carrying the last step's `verdict`), the
    partition, then learn; the step's result, whose `bad` is the next verdict (empty: update).
    hosts[a]: actor a's participants; gangs[m]: participant m's actors, in rank order; by_domain: the
    partition's role matrix per text domain (engine.domain_roles)."""
    key = (epoch, step, split)
    told = on_actors("forward", lambda a: (key, batch_size, verdict, loss))
    ranks = [[told[a][hosts[a].index(m)] for a in gangs[m]] for m in range(len(gangs))]  # participant -> its ranks'
    scores = torch.stack([torch.cat([s.scores for s in r]) for r in ranks])
    start = torch.stack([torch.cat([s.start_scores for s in r]) for r in ranks]) if loss.start_copies else None
    part = plan(scores, loss, start, [sum(s.own_terms for s in r) for r in ranks])
    units = scores.shape[1]
    first = {}  # (participant, actor) -> its first unit
    for m, actors in enumerate(gangs):
        offset = 0
        for a, s in zip(actors, ranks[m]):
            first[m, a], offset = offset, offset + s.units
    shards = [(int(s[0]), int(s[-1]) + 1) if len(s) else (0, 0) for s in torch.arange(units).tensor_split(len(hosts))]
    slots = [[(m, first[m, a], told[a][i].units) for i, m in enumerate(ms)] for a, ms in enumerate(hosts)]
    layout = ray.put(Layout(key, shards, slots, units, len(gangs)))  # one object, read by every actor
    keep = part.keep
    def of_shard(a: int) -> tuple:  # the shard's scores (and kl_dp's start scores): its owner recomputes W there
        return tuple(t[:, slice(*shards[a])].contiguous() for t in (scores, start) if t is not None)

    learned = on_actors("learn", lambda a: (layout, of_shard(a), {m: None if keep is None else keep[m] for m in hosts[a]},
                                            loss, lr_scale))
    results = [[learned[a][hosts[a].index(m)] for a in gangs[m]] for m in range(len(gangs))]
    # Every rank computes its participant's whole share; its own rows' gradients are its part.
    bad = blame([all(s.finite for s in r) for r in ranks], [all(x.loss_ok for x in r) for r in results],
                [all(x.grads_ok for x in r) for r in results])
    return StepResult([r[0].share for r in results], part.roles, bad, [max(x.received for x in r) for r in results],
                      by_domain(part))
