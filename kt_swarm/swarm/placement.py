"""Placement: one bundle of resources per actor in one placement group, and the actors placed in them.

The swarm reserves every bundle at once (or uses the bundles a sweep trial reserved for it), so that a
restarted actor comes back where its bundle is, and a swarm the cluster cannot hold is refused in one
line before any actor starts, not left waiting for nodes that may never come.
"""
from __future__ import annotations

import ray
from ray.util.placement_group import PlacementGroup
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from kt_swarm.config import Config
from kt_swarm.errors import UserError
from kt_swarm.swarm.actor import CONCURRENCY_GROUPS, ParticipantActor


def placement_shortfall(bundle: dict, n: int, nodes: list[dict], strategy: str) -> str | None:
    """Why n copies of `bundle` cannot fit the alive nodes' total resources under `strategy`, or None.

    The bundles are all alike, so counting how many fit on each node is exact (for an empty cluster);
    resources busy with other work are the placement timeout's business, not this check's."""
    per_node = [min((int(res.get(k, 0) / v + 1e-9) for k, v in bundle.items() if v > 0), default=n) for res in nodes]
    if strategy == "STRICT_PACK":
        room, where = max(per_node, default=0), "on one node (STRICT_PACK)"
    elif strategy == "STRICT_SPREAD":
        room, where = sum(min(k, 1) for k in per_node), "one per node (STRICT_SPREAD)"
    else:
        room, where = sum(per_node), f"on its {len(nodes)} node(s)"
    if room >= n:
        return None
    totals = {k: sum(res.get(k, 0) for res in nodes) for k in bundle}
    return f"it has room for {room} {where}; its nodes have {totals} in all"


def trial_bundle(current: PlacementGroup, n: int) -> dict:
    """A sweep trial's placement group reserved a bundle for itself, then one per actor: the actors' bundle."""
    if len(current.bundle_specs) != n + 1:
        raise UserError(f"the enclosing placement group has {len(current.bundle_specs)} bundles; "
                        f"{n} participant actors need {n + 1} (the trial's, then one each)")
    return current.bundle_specs[1]


def actor_bundle(cfg: Config, n: int) -> dict:
    """Each of n actors' bundle (the config's resources per participant times the participants an actor hosts,
    or the cluster's shared out), refused at once when the alive nodes cannot hold n of them."""
    res, cluster, per = cfg.resources, ray.cluster_resources(), cfg.placement.participants_per_actor
    gpus = res.gpus_per_participant * per if res.gpus_per_participant is not None else None
    if gpus is None:
        gpus = 1.0 if cluster.get("GPU", 0) >= n else cluster.get("GPU", 0) / n
    cpus = res.cpus_per_participant * per if res.cpus_per_participant is not None else None
    if cpus is None:  # share the CPUs out; fractions when there are fewer CPUs than actors
        total = cluster.get("CPU", 1)
        cpus = float(total // n) if total >= n else total / n
    bundle = {"CPU": cpus, **({"GPU": gpus} if gpus else {}), **{k: v * per for k, v in res.custom.items()}}
    for p in cfg.participants:
        if not gpus and ((p.deepspeed or {}).get("fp16") or {}).get("enabled"):
            raise UserError(f"participant '{p.name}': deepspeed fp16 needs a GPU, and its actor gets none "
                            f"(DeepSpeed has no fp16 on the CPU; use bf16)")
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    short = placement_shortfall(bundle, n, nodes, cfg.placement.strategy)
    if short:  # Ray would wait for nodes that may never come: say so now, before any actor starts
        raise UserError(f"the Ray cluster cannot place {n} participant actors with {bundle} each "
                        f"(placement.strategy {cfg.placement.strategy}): {short}")
    return bundle


def wait_placed(pg: PlacementGroup, cfg: Config, n: int, bundle: dict) -> None:
    """Wait for the group's bundles, up to placement.timeout_s (other work may hold the resources)."""
    ready, _ = ray.wait([pg.ready()], timeout=cfg.placement.timeout_s)
    if not ready:
        raise UserError(f"the Ray cluster cannot place {n} participant actors with {bundle} each "
                        f"(placement.strategy {cfg.placement.strategy}) within {cfg.placement.timeout_s:g} s")


def actor_hosts(cfg: Config) -> list[list[int]]:
    """Which participants each actor hosts, in order: a gang's ranks one actor each (hosts[a] = [m] for each
    rank), single-rank participants placement.participants_per_actor to an actor, in config order."""
    hosts, group = [], []
    per = cfg.placement.participants_per_actor
    for m, p in enumerate(cfg.participants):
        if p.ranks > 1:
            hosts += [[m]] * p.ranks
            continue
        group.append(m)
        if len(group) == per:
            hosts.append(group)
            group = []
    return hosts + ([group] if group else [])


def place_actors(pg: PlacementGroup, cfg: Config, bundle: dict, first_bundle: int, hosts: list[list[int]]) -> list:
    """One actor per entry of `hosts` (actor_hosts), actor a in bundle first_bundle + a of `pg`, reserving the
    whole bundle; a gang's rank is its place among its participant's actors."""
    remote = ray.remote(concurrency_groups=CONCURRENCY_GROUPS)(ParticipantActor)
    custom = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")}
    return [
        remote.options(
            num_cpus=bundle.get("CPU", 0), num_gpus=bundle.get("GPU", 0), resources=custom,
            # What peers send is read without a copy (it is never written: see exchange.py); this
            # halved the exchange of 128 x 32000 logits here (benchmarks/results/step_time.md).
            runtime_env={"env_vars": {"RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": "1"}},
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=first_bundle + a),
            # A dead actor process comes back (same bundle, __init__ again); the coordinator then
            # sets it up and restores every participant to the last consistent checkpoint.
            max_restarts=cfg.fault.max_restarts,
        ).remote(cfg, ms, rank=hosts[:a].count(ms) if cfg.participants[ms[0]].ranks > 1 else 0,
                 ranks=cfg.participants[ms[0]].ranks)
        for a, ms in enumerate(hosts)
    ]
