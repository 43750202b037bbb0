"""The single-process engine: every participant in one process, one after another.

Each step: forward all, score, partition, the global loss, one backward, every
optimizer steps. It is the reference the distributed swarm must match exactly.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass

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


class LocalEngine:
    name = "local"
    placement_group = None

    def __init__(self, participants: list[Participant], data: Dataset, *, seed: int, batch_size: int, augment: AugmentConfig):
        self.participants = participants
        self.data = data
        self.seed = seed
        self.batch_size = batch_size
        self.augment = augment
        self._saved: dict[str, list[dict | None]] = {}

    def snapshot(self, tag: str, which: list[int] | None = None) -> None:
        """Keep a copy of the weights of participants `which` (all by default) under `tag`."""
        saved = self._saved.setdefault(tag, [None] * len(self.participants))
        for i in range(len(self.participants)) if which is None else which:
            saved[i] = self.participants[i].state()

    def restore(self, tag: str) -> None:
        for p, state in zip(self.participants, self._saved[tag]):
            p.load_state(state)

    def reset_optimizers(self, optimizer: str, lrs: list[float], weight_decays: list[float]) -> None:
        for p, lr, wd in zip(self.participants, lrs, weight_decays):
            p.reset_optimizer(optimizer, lr, wd)

    def train_step(self, epoch: int, step: int, loss: LossSpec) -> StepResult:
        plan = batch_plan(self.data.splits["train"], seed=self.seed, epoch=epoch, step=step, batch_size=self.batch_size, augment=self.augment)
        logits = [p.forward(self.data, plan) for p in self.participants]
        target = self.data.labels[plan.ids].to(logits[0].device)
        shares, teachers = swarm_loss_terms(
            logits, target, temperature=loss.temperature, weight=loss.weight, detach_teacher=loss.detach_teacher
        )
        for p in self.participants:
            p.optimizer.zero_grad(set_to_none=True)
        shares.sum().backward()
        for p in self.participants:
            p.optimizer.step()
        return StepResult([float(s) for s in shares.detach()], teachers.cpu())

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

    def close(self) -> None:
        pass
