"""The participant actor: a Ray actor process hosting one participant, several small ones, or one rank of a gang.

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
from kt_swarm.partition import Scored
from kt_swarm.swarm import gang
from kt_swarm.swarm.exchange import ActorExchange, Layout, Learned

# Both the actors' processes and the driver import this module (the class Ray runs; RaySwarm places it).
# Tensors read zero-copy from the object store are read-only numpy buffers underneath; torch warns
# about that on every first read. kt_swarm never writes them in place (see exchange.learn), so say it once, here.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
# Ray warns when an actor sends a tensor that could be written after it is sent. What actors send are
# fresh copies (logits, states, weights, predictions), never touched again.
warnings.filterwarnings("ignore", message="Zero-copy tensor serialization is enabled")


class ParticipantActor:
    """Hosts one participant, several single-rank ones (placement.participants_per_actor), or one rank of a
    participant on several (wrapped with ray.remote by placement.place_actors). Each hosted participant
    keeps its own model, optimizer, RNG stream and checkpoint state; the process is their unit of restart."""

    def __init__(self, cfg: Config, indices: list[int], rank: int = 0, ranks: int = 1):
        # Nothing that can fail here: errors from setup() reach the driver as the task's own exception.
        self.cfg, self.indices, self.data = cfg, list(indices), None
        self.rank, self.ranks = rank, ranks  # a gang's ranks each take their share of every batch, in order
        self.hosted: dict[int, Participant] = {}
        self.me, self.peers = -1, []  # its place among the swarm's actors, and every actor's handle
        self.exchange = ActorExchange()

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0's address and a free port on its node, where its gang's process group meets."""
        return gang.rendezvous()

    def setup(self, data: Dataset, me: int, peers: list, address: str | None = None, port: int | None = None,
              given: dict | None = None) -> list[int]:
        """Build the hosted participants (and a gang rank's process group: its gang's at address:port, or its
        own); returns the number of classes each predicts. (The data and the peers are not constructor
        arguments: Ray warns about those in the object store for restartable actors, and a restarted actor
        is given them again here.) `given`: object refs of the hosted participants' nn.Modules built by the
        user (kt_swarm.run), read from the object store here."""
        self.data, self.me, self.peers = data, me, peers
        self.exchange.forget()
        data.open()  # a lazy dataset's factory, called again in this process: its errors surface here
        modules = dict(zip(given, ray.get(list(given.values())))) if given else {}
        hosted = {m: build_participant(self.cfg, m, data, modules.get(m)) for m in self.indices}
        for p in hosted.values():
            if p.deepspeed is not None:  # a gang's rank, or a DeepSpeed participant alone: never hosted with others
                init_group(p.device, self.rank, self.ranks, address or "127.0.0.1", port)
        self.hosted = hosted
        return [p.output_width(data) for p in hosted.values()]

    def participant(self, index: int) -> Participant:
        if not self.hosted:  # Ray restarted this actor's process after the coordinator set it up
            name = self.cfg.participants[index].name
            raise ParticipantLost(f"participant '{name}': its actor was restarted", index)
        return self.hosted[index]

    def is_set_up(self) -> bool:
        return bool(self.hosted)

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def pid(self) -> int:
        return os.getpid()

    def pretrain(self, index: int) -> None:
        pretrain_if_zoo(self.cfg, index, self.participant(index), self.data)

    def state(self, index: int) -> dict:
        return self.participant(index).state()

    def weights(self, index: int) -> dict:
        return self.participant(index).weights()

    def load(self, index: int, state: dict) -> None:
        # A copy: tensors arrive zero-copy (read-only shared memory), and the optimizer would adopt its
        # state tensors as they are, then update them in place.
        self.participant(index).load_state(copy_tensors(state))
        self.exchange.forget()

    def reset_optimizer(self, index: int, optimizer: str, lr: float, weight_decay: float) -> None:
        self.participant(index).reset_optimizer(optimizer, lr, weight_decay)

    def apply(self, update: bool) -> None:
        self.exchange.apply(self, update)

    def set_start_copy(self, index: int, weights: dict | None) -> None:
        self.participant(index).set_start_copy(None if weights is None else copy_tensors(weights))

    def forward(self, key: tuple, batch_size: int, update: bool | None, loss: LossSpec) -> list[Scored]:
        for m in self.indices:
            self.participant(m)  # a restarted actor says so before anything else
        return self.exchange.forward(self, key, batch_size, update, loss)

    def learn(self, layout: Layout, scores: tuple, keeps: dict, loss: LossSpec, lr_scale: float) -> list[Learned]:
        return self.exchange.learn(self, layout, scores, keeps, loss, lr_scale)

    @ray.method(concurrency_group="rows")
    def rows(self, key: tuple, wanted: list[tuple[int, int, int]]) -> list[torch.Tensor]:
        return self.exchange.rows(key, wanted)

    @ray.method(concurrency_group="rows")
    def outputs(self, key: tuple, index: int) -> tuple:
        return self.exchange.outputs(key, index)

    @ray.method(concurrency_group="mixes")
    def mixes(self, key: tuple, which: list[int]) -> tuple:
        return self.exchange.mixes(key, which)

    def _ids(self, split: str, first: int | None = None) -> torch.Tensor:
        """This rank's share of a split (its first samples), in order."""
        return self.data.splits[split][:first].tensor_split(self.ranks)[self.rank]

    def predict(self, index: int, split: str, batch_size: int, k: int) -> torch.Tensor:
        return self.participant(index).predict(self.data, self._ids(split), batch_size, k)

    def logits(self, index: int, split: str, batch_size: int, first: int | None = None) -> torch.Tensor:
        return self.participant(index).logits(self.data, self._ids(split, first), batch_size)


# `rows` never waits (so an owner's pulls always return); `mixes` waits for its owner to publish.
CONCURRENCY_GROUPS = {"rows": 2, "mixes": 2}
