"""What the coordinator asks of an engine, written down: the Engine protocol, a step's result, and blame.

Two engines run the same participants the same way: local.LocalEngine (every participant in this process,
the exact reference) and swarm.RaySwarm (one Ray actor per participant, or per rank of a gang). The
coordinator is written once against this protocol; in float64 on the CPU both give the same numbers.

recover() is part of the protocol although only the Ray engine can use it. ParticipantLost is part of the
contract of every engine call: an engine whose participants live in processes of their own raises it when
one of those dies, and the coordinator's one recovery loop then calls recover() on whatever engine it
holds. The local engine never raises it (a participant here cannot die without the coordinator), and its
recover() says so with a UserError rather than pretend to restart something: leaving the method out would
make the coordinator's loop a call that type checkers cannot vouch for, for the sake of an engine that
never reaches it. setup_restarts (always empty there) is in the protocol for the same reason.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from kt_swarm.data import Dataset
from kt_swarm.errors import ParticipantLost
from kt_swarm.objectives import LossSpec
from kt_swarm.partition import Plan, roles_by, task_of, unit_groups


@dataclass
class StepResult:
    losses: list[float]  # each participant's share of the global loss
    roles: torch.Tensor  # [N, N] float64: R[k][j] = sum of k's teaching weights toward j over the batch
    bad: list[int] = field(default_factory=list)  # participants blamed for a NaN/Inf; non-empty: nobody stepped
    received: list[int] | None = None  # bytes each participant read from the exchange this step (the Ray swarm's)
    roles_by_domain: torch.Tensor | None = None  # text: [domains, N, N] the role matrix over each domain's units


def domain_roles(data: Dataset, ids: torch.Tensor, target: torch.Tensor, loss: LossSpec, step: Plan) -> torch.Tensor | None:
    """Text: the step's role matrix over each domain's units (who taught whom on which text); else None."""
    if data.tokens is None:
        return None
    task = task_of(loss)
    return roles_by(step, unit_groups(task, target.cpu(), data.labels[ids]), len(data.classes))


def blame(logits_ok: list[bool], loss_ok: list[bool], grads_ok: list[bool]) -> list[int]:
    """Who caused a non-finite step. Bad logits poison every peer's loss through the exchange, and a bad
    loss every gradient behind it, so the earliest stage that went wrong names the culprits."""
    for ok in (logits_ok, loss_ok, grads_ok):
        if not all(ok):
            return [i for i, good in enumerate(ok) if not good]
    return []


@runtime_checkable
class Engine(Protocol):
    """N participants trained together. Participants are addressed by their index in the config; every
    method may raise ParticipantLost (then recover(), then the coordinator restores a checkpoint)."""

    name: str  # "local" or "ray": summary.json's engine
    placement_group: str | None  # the Ray placement group's id, for summary.json (None: none)
    setup_restarts: dict[str, int]  # participants lost (and brought back) while the engine was set up

    def states(self) -> Iterator[dict]:
        """Each participant's {model, optimizer, rng}, one at a time (a checkpoint writes them in turn)."""
        ...

    def weights(self, which: list[int]) -> list[dict]:
        """These participants' weights (a best model; the start copies)."""
        ...

    def load(self, states: list[dict], which: list[int] | None = None) -> None:
        """Load participants `which` (all by default) from states as states() gives them, or weights alone."""
        ...

    def reset_optimizers(self, optimizer: str, lrs: list[float], weight_decays: list[float]) -> None:
        """A fresh optimizer for every participant (each arm starts with one)."""
        ...

    def set_start_copies(self, weights: Iterable[dict] | None) -> None:
        """A frozen copy of every participant at the arm's start (kl_dp), one at a time; None drops them."""
        ...

    def train_step(self, epoch: int, step: int, loss: LossSpec, split: str = "train", lr_scale: float = 1.0) -> StepResult:
        """One step of the arm on batch (epoch, step) of `split`: every participant steps, or (bad) none."""
        ...

    def predict(self, split: str, batch_size: int, k: int = 1) -> torch.Tensor:
        """[N, n, ...] what the task's metrics need of every participant on a split (Participant.predict)."""
        ...

    def logits(self, split: str, batch_size: int, first: int | None = None) -> torch.Tensor:
        """[N, n, ...] eval-mode outputs on a split (its `first` samples only, if given)."""
        ...

    def nodes(self) -> list[str]:
        """Where each participant runs (a node id or the host name)."""
        ...

    def pids(self) -> list[int]:
        """Each participant's process id."""
        ...

    def close(self) -> None:
        """Free what the engine holds (actors, placement group, a Ray instance it started)."""
        ...

    def recover(self, lost: ParticipantLost, restarts: dict[str, int]) -> None:
        """After `lost`: count a restart in `restarts` for each participant brought back, and bring it up
        (its state is restored next, by the coordinator); a UserError when that cannot be done."""
        ...
