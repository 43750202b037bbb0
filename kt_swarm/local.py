"""The single-process engine: every participant in one process, one after another.

Each step: forward all, each scores its units, the partition, each participant's share (partition.py: the
same functions the swarm runs, here on one shard, the whole batch), one backward, every optimizer steps
(or none, when any loss or gradient is not finite). It is the reference the distributed swarm must match exactly.
"""
from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Iterable, Iterator

import torch

from kt_swarm.config import AugmentConfig
from kt_swarm.data import Dataset, arm_plan
from kt_swarm.engine import StepResult, blame, domain_roles  # defined in engine.py; importable from here as before
from kt_swarm.errors import ParticipantLost, UserError
from kt_swarm.objectives import LossSpec
from kt_swarm.partition import in_one_process
from kt_swarm.participant import Participant
from kt_swarm.progress import progress


class LocalEngine:
    """The Engine (engine.py) with every participant in this process."""

    name = "local"
    placement_group: str | None = None  # no Ray here
    setup_restarts: dict[str, int]  # always empty: a participant here cannot die without this process

    def __init__(self, participants: list[Participant], data: Dataset, *, seed: int, batch_size: int, augment: AugmentConfig):
        self.participants = participants
        self.data = data
        self.seed = seed
        self.batch_size = batch_size
        self.augment = augment
        self.setup_restarts = {}

    def states(self) -> Iterator[dict]:
        """Each participant's {model, optimizer, rng}, one at a time (a checkpoint writes them in turn)."""
        for p in self.participants:
            yield p.state()

    def weights(self, which: list[int]) -> list[dict]:
        return [self.participants[i].weights() for i in which]

    def load(self, states: list[dict], which: list[int] | None = None) -> None:
        """Load participants `which` (all by default) from states as `states()` gives them, or weights alone."""
        for i, state in zip(range(len(self.participants)) if which is None else which, states):
            self.participants[i].load_state(state)

    def reset_optimizers(self, optimizer: str, lrs: list[float], weight_decays: list[float]) -> None:
        for p, lr, wd in zip(self.participants, lrs, weight_decays):
            p.reset_optimizer(optimizer, lr, wd)

    def set_start_copies(self, weights: Iterable[dict] | None) -> None:
        """Give every participant a frozen copy of its weights at the arm's start, one participant's
        weights at a time (None: drop them)."""
        for p, w in zip(self.participants, weights or itertools.repeat(None)):
            p.set_start_copy(w)

    def train_step(self, epoch: int, step: int, loss: LossSpec, split: str = "train", lr_scale: float = 1.0) -> StepResult:
        plan = arm_plan(self.data, split, seed=self.seed, epoch=epoch, step=step, batch_size=self.batch_size, augment=self.augment)
        buffers = [p.buffers() for p in self.participants]
        logits = [p.forward(self.data, plan, loss.learns(i)) for i, p in enumerate(self.participants)]
        frozen = [p.start_logits(self.data, plan) for p in self.participants] if loss.start_copies else None
        target = self.data.target(plan.ids, plan).to(logits[0].device)
        shares, part, told = in_one_process(logits, target, loss, frozen)
        for p in self.participants:
            p.optimizer.zero_grad(set_to_none=True)
        total = sum(shares)
        if total.requires_grad:  # a step where nobody learns anything (no labels, no teacher) has no graph
            total.backward()
        bad = blame([s.finite for s in told], [bool(torch.isfinite(s)) for s in shares],
                    [p.gradients_finite() for p in self.participants])
        for i, (p, saved) in enumerate(zip(self.participants, buffers)):
            if bad:  # a NaN/Inf anywhere: nobody steps (and BatchNorm forgets the batch), so every
                p.set_buffers(saved)  # participant stays where the others are
            elif loss.learns(i):
                p.step(lr_scale)
        by_domain = domain_roles(self.data, plan.ids, target, loss, part)
        return StepResult([float(s.detach()) for s in shares], part.roles, bad, roles_by_domain=by_domain)

    def predict(self, split: str, batch_size: int, k: int = 1) -> torch.Tensor:
        """[N, n, k] top-k classes of every participant on a split, best first."""
        ids = self.data.splits[split]
        bar = progress(total=len(self.participants), desc=f"eval {split}", unit="participant")
        preds = []
        for p in self.participants:
            preds.append(p.predict(self.data, ids, batch_size, k))
            bar.update()
        bar.close()
        return torch.stack(preds)

    def logits(self, split: str, batch_size: int, first: int | None = None) -> torch.Tensor:
        """[N, n, ...] every participant's eval-mode outputs on a split (its `first` samples only, if given)."""
        ids = self.data.splits[split][:first]
        return torch.stack([p.logits(self.data, ids, batch_size) for p in self.participants])

    def nodes(self) -> list[str]:
        return [socket.gethostname()] * len(self.participants)

    def pids(self) -> list[int]:
        return [os.getpid()] * len(self.participants)

    def close(self) -> None:
        pass

    def recover(self, lost: ParticipantLost, restarts: dict[str, int]) -> None:
        """Never reached by a run: a participant here dies only with this process, so this engine raises no
        ParticipantLost. Should one come from elsewhere, nothing here can restart it: a plain error, which
        the coordinator's recovery loop does not catch (another ParticipantLost would send it round again)."""
        raise UserError(f"{lost} (the local engine cannot restart a participant)")
