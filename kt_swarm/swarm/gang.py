"""Gangs: one participant on several ranks (a DeepSpeed participant with participants.N.ranks > 1).

Each rank is an actor of its own, in rank order; together they form one torch.distributed process group,
which meets at its rank 0's node. A checkpoint holds one state per participant, so a gang's ranks'
states are folded into one (gang_state) and split again when it is loaded (rank_state).
"""
from __future__ import annotations

import ray

from kt_swarm.deepspeed_host import free_port

GANG = "_ranks"  # where a gang's per-rank optimizer and RNG states sit in its checkpointed state


def rendezvous() -> tuple[str, int]:
    """(Run on rank 0.) Its node's address and a free port there, where its gang's process group meets."""
    return ray.util.get_node_ip_address(), free_port()


def gang_state(ranks: list[dict]) -> dict:
    """One participant's state from its ranks' (one rank: as it is)."""
    if len(ranks) == 1:
        return ranks[0]
    return {"model": ranks[0]["model"], "optimizer": {GANG: [r["optimizer"] for r in ranks]},
            "rng": {GANG: [r["rng"] for r in ranks]}}


def rank_state(state: dict, rank: int) -> dict:
    """Rank `rank`'s part of a participant's state (weights alone, a best model's, go to every rank)."""
    def part(value):
        return value[GANG][rank] if isinstance(value, dict) and GANG in value else value
    return {**state, "optimizer": part(state.get("optimizer")), "rng": part(state.get("rng"))}
