"""The participant actor: one participant (or one rank of a gang) in a Ray actor process of its own.

What runs in the actor's process is here; the step's exchange it takes part in is exchange.py's.
"""
from __future__ import annotations

import os
import warnings

import ray
import torch

from kt_swarm.build import build_participant, pretrain_if_zoo
from kt_swarm.config import Config
from kt_swarm.data import Dataset
from kt_swarm.deepspeed_host import init_group
from kt_swarm.errors import ParticipantLost
from kt_swarm.objectives import LossSpec
from kt_swarm.participant import Participant, copy_tensors
from kt_swarm.swarm import gang
from kt_swarm.swarm.exchange import ActorExchange, Learned

# Both the actors' processes and the driver import this module (the class Ray runs; RaySwarm places it).
# Tensors read zero-copy from the object store are read-only numpy buffers underneath; torch warns
# about that on every first read. kt_swarm never writes them in place (see exchange.learn), so say it once, here.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
# Ray warns when an actor sends a tensor that could be written after it is sent. What actors send are
# fresh copies (logits, states, weights, predictions), never touched again.
warnings.filterwarnings("ignore", message="Zero-copy tensor serialization is enabled")


class ParticipantActor:
    """Hosts one participant, or one rank of a participant on several (wrapped with ray.remote by RaySwarm)."""

    def __init__(self, cfg: Config, index: int, rank: int = 0, ranks: int = 1):
        # Nothing that can fail here: errors from setup() reach the driver as the task's own exception.
        self.cfg, self.index, self.data = cfg, index, None
        self.rank, self.ranks = rank, ranks  # a gang's ranks each take their share of every batch, in order
        self.p = None
        self.exchange = ActorExchange()

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0's address and a free port on its node, where its gang's process group meets."""
        return gang.rendezvous()

    def setup(self, data: Dataset, address: str | None = None, port: int | None = None) -> int:
        """Build the participant (and its process group: its gang's at address:port, or its own); returns the
        number of classes it predicts. (The data is not a constructor argument: Ray warns about those in
        the object store for restartable actors.)"""
        self.data = data
        self.p = build_participant(self.cfg, self.index, self.data)
        if self.p.deepspeed is not None:
            init_group(self.p.device, self.rank, self.ranks, address or "127.0.0.1", port)
        return self.p.output_width(self.data.channels, self.data.image_size)

    @property
    def participant(self) -> Participant:
        if self.p is None:  # Ray restarted this actor's process after the coordinator set it up
            name = self.cfg.participants[self.index].name
            raise ParticipantLost(f"participant '{name}': its actor was restarted", self.index)
        return self.p

    def is_set_up(self) -> bool:
        return self.p is not None

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def pretrain(self) -> None:
        pretrain_if_zoo(self.cfg, self.index, self.participant, self.data)

    def pid(self) -> int:
        return os.getpid()

    def state(self) -> dict:
        return self.participant.state()

    def weights(self) -> dict:
        return self.participant.weights()

    def load(self, state: dict) -> None:
        # A copy: tensors arrive zero-copy (read-only shared memory), and the optimizer would adopt its
        # state tensors as they are, then update them in place.
        self.participant.load_state(copy_tensors(state))
        self.exchange.forget()

    def reset_optimizer(self, optimizer: str, lr: float, weight_decay: float) -> None:
        self.participant.reset_optimizer(optimizer, lr, weight_decay)

    def apply(self, update: bool) -> None:
        self.exchange.apply(self, update)

    def set_start_copy(self, weights: dict | None) -> None:
        self.participant.set_start_copy(None if weights is None else copy_tensors(weights))

    def forward(self, epoch: int, step: int, batch_size: int, update: bool | None = None, loss: LossSpec = LossSpec(),
                split: str = "train") -> ray.ObjectRef:
        return self.exchange.forward(self, epoch, step, batch_size, update, loss, split)

    def learn(self, refs: list[list[ray.ObjectRef]], loss: LossSpec, lr_scale: float = 1.0) -> Learned:
        return self.exchange.learn(self, refs, loss, lr_scale)

    def _ids(self, split: str, first: int | None = None) -> torch.Tensor:
        """This rank's share of a split (its first samples), in order."""
        return self.data.splits[split][:first].tensor_split(self.ranks)[self.rank]

    def predict(self, split: str, batch_size: int, k: int) -> torch.Tensor:
        return self.participant.predict(self.data, self._ids(split), batch_size, k)

    def logits(self, split: str, batch_size: int, first: int | None = None) -> torch.Tensor:
        return self.participant.logits(self.data, self._ids(split, first), batch_size)
