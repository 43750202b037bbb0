"""The single-process engine: every participant in one process, one after another.

Each step: forward all, score, partition, the global loss, one backward, every
optimizer steps (or none, when any loss or gradient is not finite). It is the reference the distributed swarm must match exactly.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

import torch

from kt_swarm.config import AugmentConfig
from kt_swarm.data import Dataset, batch_plan
from kt_swarm.objectives import swarm_loss_terms
from kt_swarm.participant import Participant
from kt_swarm.progress import progress


@dataclass
class LossSpec:
    temperature: float = 1.0
    weight: float = 1.0  # 0 = the CE-only control arm
    detach_teacher: bool = True


@dataclass
class StepResult:
    losses: list[float]  # each participant's share of the global loss
    teachers: torch.Tensor  # [B], -1 where tied
    bad: list[int] = field(default_factory=list)  # participants blamed for a NaN/Inf; non-empty: nobody stepped


def blame(logits_ok: list[bool], loss_ok: list[bool], grads_ok: list[bool]) -> list[int]:
    """Who caused a non-finite step. Bad logits poison every peer's loss through the exchange, and a bad
    loss every gradient behind it, so the earliest stage that went wrong names the culprits."""
    for ok in (logits_ok, loss_ok, grads_ok):
        if not all(ok):
            return [i for i, good in enumerate(ok) if not good]
    return []


class LocalEngine:
    name = "local"
    placement_group = None

    def __init__(self, participants: list[Participant], data: Dataset, *, seed: int, batch_size: int, augment: AugmentConfig):
        self.participants = participants
        self.data = data
        self.seed = seed
        self.batch_size = batch_size
        self.augment = augment

    def states(self):
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

    def train_step(self, epoch: int, step: int, loss: LossSpec) -> StepResult:
        plan = batch_plan(self.data.splits["train"], seed=self.seed, epoch=epoch, step=step, batch_size=self.batch_size, augment=self.augment)
        buffers = [p.buffers() for p in self.participants]
        logits = [p.forward(self.data, plan) for p in self.participants]
        target = self.data.labels[plan.ids].to(logits[0].device)
        shares, teachers = swarm_loss_terms(
            logits, target, temperature=loss.temperature, weight=loss.weight, detach_teacher=loss.detach_teacher
        )
        for p in self.participants:
            p.optimizer.zero_grad(set_to_none=True)
        shares.sum().backward()
        bad = blame([bool(torch.isfinite(z).all()) for z in logits], torch.isfinite(shares.detach()).tolist(),
                    [p.gradients_finite() for p in self.participants])
        for p, saved in zip(self.participants, buffers):
            if bad:  # a NaN/Inf anywhere: nobody steps (and BatchNorm forgets the batch), so every
                p.set_buffers(saved)  # participant stays where the others are
            else:
                p.optimizer.step()
        return StepResult([float(s) for s in shares.detach()], teachers.cpu(), bad)

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

    def nodes(self) -> list[str]:
        return [socket.gethostname()] * len(self.participants)

    def pids(self) -> list[int]:
        return [os.getpid()] * len(self.participants)

    def close(self) -> None:
        pass
