"""The Ray swarm: one actor per participant, logits through the object store.

Each step the coordinator makes two calls per actor and moves only references:

1. forward(epoch, step): the actor derives the batch from (seed, epoch, step) itself, runs its
   model (graph kept), puts its detached logits in the object store, returns the reference;
2. learn(refs): every actor receives the N references, reads its peers' logits, computes the same
   partition from the same numbers and back-propagates its own share of the global loss
   (objectives.participant_loss). Its optimizer steps at the start of the next call, once the
   coordinator knows every share and gradient was finite (else no participant steps).

A dead actor process is restarted by Ray (fault.max_restarts); the coordinator sets it up again and
restores every participant to the last consistent checkpoint.

Same interface, and in float64 on the CPU the same numbers, as local.LocalEngine.
"""
from __future__ import annotations

import itertools
import logging
import os
import time
import warnings
from collections.abc import Iterable

import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from kt_swarm.build import build_participant, check_classes, pretrain_if_zoo
from kt_swarm.config import Config
from kt_swarm.data import Dataset, arm_plan
from kt_swarm.deepspeed_host import free_port, init_group
from kt_swarm.errors import ParticipantLost, UserError, first_line
from kt_swarm.local import StepResult, blame
from kt_swarm.objectives import LossSpec, participant_loss
from kt_swarm.participant import copy_tensors
from kt_swarm.progress import progress

log = logging.getLogger("kt_swarm")

# Tensors read zero-copy from the object store are read-only numpy buffers underneath; torch warns
# about that on every first read. kt_swarm never writes them in place (see learn()), so say it once, here.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
# Ray warns when an actor sends a tensor that could be written after it is sent. What actors send are
# fresh copies (logits, states, weights, predictions), never touched again.
warnings.filterwarnings("ignore", message="Zero-copy tensor serialization is enabled")


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


class ParticipantActor:
    """Hosts one participant, or one rank of a participant on several (wrapped with ray.remote by RaySwarm)."""

    def __init__(self, cfg: Config, index: int, rank: int = 0, ranks: int = 1):
        # Nothing that can fail here: errors from setup() reach the driver as the task's own exception.
        self.cfg, self.index, self.data = cfg, index, None
        self.rank, self.ranks = rank, ranks  # a gang's ranks each take their share of every batch, in order
        self.p = None
        self.pending = None  # (own logits with their graph, target) between forward and learn
        self.unapplied = False  # gradients of the last learn() not yet applied
        self.lr_scale = 1.0  # and the learning-rate scale they are to be applied at
        self.kept_buffers = []  # the buffers before the last forward, put back if its step is skipped

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0's address and a free port on its node, where its gang's process group meets."""
        return ray.util.get_node_ip_address(), free_port()

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
    def participant(self):
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
        self.pending, self.unapplied = None, False  # a step in flight belongs to the past being restored over

    def reset_optimizer(self, optimizer: str, lr: float, weight_decay: float) -> None:
        self.participant.reset_optimizer(optimizer, lr, weight_decay)

    def apply(self, update: bool) -> None:
        """Step the optimizer with the gradients of the last learn(), or drop them: the coordinator
        decides once every participant has said whether its step was finite."""
        if self.unapplied and update:
            self.participant.step(self.lr_scale)
        elif self.unapplied:  # skipped: BatchNorm forgets the batch too
            self.participant.set_buffers(self.kept_buffers)
        self.unapplied = False

    def set_start_copy(self, weights: dict | None) -> None:
        self.participant.set_start_copy(None if weights is None else copy_tensors(weights))

    def forward(self, epoch: int, step: int, batch_size: int, update: bool | None = None, loss: LossSpec = LossSpec(),
                split: str = "train") -> ray.ObjectRef:
        """The logits of the batch, put in the object store (with the frozen starting copy's logits
        stacked under them, [2, B, C], when the loss needs those)."""
        if update is not None:  # the previous step's verdict rides on this call: no extra round trip
            self.apply(update)
        plan = arm_plan(self.data, split, seed=self.cfg.seed, epoch=epoch, step=step, batch_size=batch_size,
                        augment=self.cfg.data.augment)
        share = plan.share(self.rank, self.ranks)
        self.kept_buffers = self.participant.buffers()
        logits = self.participant.forward(self.data, share, loss.learns(self.index))
        self.pending = (logits, self.data.target(plan.ids, plan).to(logits.device))  # the whole batch's targets
        sent = logits.detach()
        if loss.start_copies:
            sent = torch.stack([sent, self.participant.start_logits(self.data, share)])
        if self.cfg.transfer.exchange_dtype:  # fewer bytes; every actor partitions the same rounded numbers
            sent = sent.to(getattr(torch, self.cfg.transfer.exchange_dtype))
        return ray.put(sent.cpu())

    def learn(self, refs: list[list[ray.ObjectRef]], loss: LossSpec, lr_scale: float = 1.0) -> tuple[float, torch.Tensor, list[bool], bool, bool]:
        """Back-propagate this participant's share of the loss; the optimizer steps later (at lr_scale), in
        apply(). refs[m]: participant m's logits, one reference per rank (its shares of the batch, in order).
        Returns (share, roles, every participant's logits finite, own share finite, own gradients finite)."""
        own, target = self.pending
        self.pending, self.lr_scale = None, lr_scale
        batch_dim = 1 if loss.start_copies else 0  # [2, B, ...] with the start copy's logits under them
        flat = iter(ray.get([r for shares in refs for r in shares]))
        # Peers' logits are read-only here: participant_loss never writes into them.
        received = torch.stack([torch.cat([next(flat).to(device=own.device, dtype=own.dtype) for _ in shares], dim=batch_dim)
                                for shares in refs])
        peers, frozen = (received[:, 0], received[:, 1]) if loss.start_copies else (received, None)
        if self.ranks > 1:  # the whole batch's logits, with the graph through this rank's rows only
            rows = torch.arange(len(peers[self.index])).tensor_split(self.ranks)[self.rank]
            own = torch.cat([peers[self.index][: rows[0]], own, peers[self.index][rows[-1] + 1 :]])
        value, roles = participant_loss(own, peers, self.index, target, frozen_logits=frozen, **loss.kwargs())
        self.participant.zero_grad()
        if loss.learns(self.index):
            # Each rank's gradient is its rows' part of the whole batch's; DeepSpeed averages over the ranks.
            self.participant.backward(value * self.ranks)
            self.unapplied = True
        logits_ok = torch.isfinite(received).flatten(1).all(dim=1).tolist()
        return value.item(), roles.cpu(), logits_ok, bool(torch.isfinite(value)), self.participant.gradients_finite()

    def _ids(self, split: str, first: int | None = None) -> torch.Tensor:
        """This rank's share of a split (its first samples), in order."""
        return self.data.splits[split][:first].tensor_split(self.ranks)[self.rank]

    def predict(self, split: str, batch_size: int, k: int) -> torch.Tensor:
        return self.participant.predict(self.data, self._ids(split), batch_size, k)

    def logits(self, split: str, batch_size: int, first: int | None = None) -> torch.Tensor:
        return self.participant.logits(self.data, self._ids(split, first), batch_size)


GANG = "_ranks"  # where a gang's per-rank optimizer and RNG states sit in its checkpointed state


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


def _verbose() -> bool:
    return logging.getLogger("kt_swarm").isEnabledFor(logging.DEBUG)


def start_private_ray(**kwargs) -> None:
    """A Ray instance for this machine alone: every server on 127.0.0.1, no dashboard, no usage stats."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # Ray turns 127.0.0.1 into the machine's network address and binds its servers (GCS, raylet,
    # workers, agents, metrics) to all interfaces, unless told the instance is machine-local: its
    # switch for laptops, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0. The servers started below read the
    # variable; this process read it at import (the constant). Both are put back once they run: a
    # later `ray start --address` from this environment must still be able to join a real cluster.
    from ray._private import ray_constants

    old = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    # Ray 2.60 turns token authentication on for a new local instance (a token is made in
    # ~/.ray/auth_token if missing) and warns about it on every start; keep it on, without the warning.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    try:
        ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", configure_logging=False,
                 **kwargs)
    finally:
        if old[0] is None:
            os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, None)
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = old[0]
        ray_constants.ENABLE_RAY_CLUSTER = old[1]


def init_ray(address: str | None) -> bool:
    """Join `address` (or $RAY_ADDRESS); without one, start a private instance (start_private_ray).
    Returns True when we started it (and so must stop it)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    # Actors' own output (their progress bars too) stays in Ray's session logs unless --verbose: the
    # driver speaks for them, one line per failure.
    if address:
        try:
            ray.init(address=address, configure_logging=False, log_to_driver=_verbose())
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(f"cannot join the Ray cluster at '{address}': {first_line(e)}") from None
        return False
    start_private_ray(log_to_driver=_verbose())
    return True


class RaySwarm:
    """The engine interface of local.LocalEngine, with every participant in its own Ray actor."""

    name = "ray"

    def __init__(self, cfg: Config, data: Dataset, *, address: str | None = None, pretrain: bool = True):
        self.cfg, self.batch_size = cfg, cfg.transfer.batch_size
        self.names = [p.name for p in cfg.participants]
        # One actor per rank: a participant on k ranks (a gang) has k actors, in rank order.
        self.owner = [i for i, p in enumerate(cfg.participants) for _ in range(p.ranks)]  # actor -> participant
        self.gangs = [[a for a, i in enumerate(self.owner) if i == m] for m in range(len(cfg.participants))]
        self.actors, self.pg, self.owns_pg, self.data_ref = [], None, False, None
        self.placement_group = None  # its id, for summary.json
        self.update: bool | None = None  # the verdict on the last step, not yet sent to the actors
        self.pretrain, self.num_classes = pretrain, data.num_classes
        self.setup_restarts: dict[str, int] = {}  # actors lost while the swarm was set up, by participant
        self.owns_ray = init_ray(address)
        try:
            self._start(cfg, data)
            lost = None
            while True:
                try:
                    if lost is None:
                        self._bring_up(range(len(self.names)))
                    else:  # bringing up is idempotent (the zoo is cached): the restarted ones do it again
                        log.warning("%s; setting it up again", lost)
                        self.recover(lost, self.setup_restarts)
                    break
                except ParticipantLost as e:
                    lost = e
        except BaseException:
            self.close()
            raise

    def _bring_up(self, which) -> None:
        """Set up these participants' actors, check their classes and, in a new run, pretrain (or load
        from the cache) their zoo members."""
        which = list(which)
        check_classes({self.names[m]: w for m, w in zip(which, self._setup(which))}, self.num_classes)
        if self.pretrain:  # a gang's rank 0 trains (or loads) its zoo member; its other ranks then load it
            self._gather([self.actors[self.gangs[m][0]].pretrain.remote() for m in which], desc="participants ready",
                         actors=which)
            rest = [a for m in which for a in self.gangs[m][1:]]
            self._gather([self.actors[a].pretrain.remote() for a in rest], actors=[self.owner[a] for a in rest])

    def _setup(self, which) -> list[int]:
        """Set up these participants' actors (a gang meets at its rank 0's address and a free port there);
        returns each one's number of classes."""
        which = list(which)
        gangs = [m for m in which if len(self.gangs[m]) > 1]  # a rank 0 lost here is a lost participant too
        addresses = self._gather([self.actors[self.gangs[m][0]].rendezvous.remote() for m in gangs], actors=gangs)
        meet = {m: (None, None) for m in which} | dict(zip(gangs, addresses))
        actors = [a for m in which for a in self.gangs[m]]
        widths = self._gather([self.actors[a].setup.remote(self.data_ref, *meet[self.owner[a]]) for a in actors],
                              actors=[self.owner[a] for a in actors])
        return [widths[actors.index(self.gangs[m][0])] for m in which]

    def _each(self, method: str, args_of=lambda m: (), which=None, desc: str | None = None) -> list[list]:
        """Call `method` on every rank of these participants at once (collectives need the whole gang);
        returns each participant's results, in rank order."""
        which = range(len(self.names)) if which is None else which
        actors = [a for m in which for a in self.gangs[m]]
        out = self._gather([getattr(self.actors[a], method).remote(*args_of(self.owner[a])) for a in actors],
                           desc=desc, actors=[self.owner[a] for a in actors])
        results = iter(out)
        return [[next(results) for _ in self.gangs[m]] for m in which]

    def _start(self, cfg: Config, data: Dataset) -> None:
        n, res = len(self.owner), cfg.resources  # one bundle per actor: a gang takes one per rank
        current = ray.util.get_current_placement_group()
        if current is not None:  # a sweep trial: it reserved a bundle for itself, then one per participant
            if len(current.bundle_specs) != n + 1:
                raise UserError(f"the enclosing placement group has {len(current.bundle_specs)} bundles; "
                                f"{n} participant actors need {n + 1} (the trial's, then one each)")
            self.pg, self.owns_pg = current, False
            self._place(cfg, data, current.bundle_specs[1], first_bundle=1)
            return
        cluster = ray.cluster_resources()
        gpus = res.gpus_per_participant
        if gpus is None:
            gpus = 1.0 if cluster.get("GPU", 0) >= n else cluster.get("GPU", 0) / n
        cpus = res.cpus_per_participant
        if cpus is None:  # share the CPUs out; fractions when there are fewer CPUs than participants
            total = cluster.get("CPU", 1)
            cpus = float(total // n) if total >= n else total / n
        bundle = {"CPU": cpus, **({"GPU": gpus} if gpus else {}), **res.custom}
        for p in cfg.participants:
            if not gpus and ((p.deepspeed or {}).get("fp16") or {}).get("enabled"):
                raise UserError(f"participant '{p.name}': deepspeed fp16 needs a GPU, and its actor gets none "
                                f"(DeepSpeed has no fp16 on the CPU; use bf16)")
        nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
        short = placement_shortfall(bundle, n, nodes, cfg.placement.strategy)
        if short:  # Ray would wait for nodes that may never come: say so now, before any actor starts
            raise UserError(f"the Ray cluster cannot place {n} participant actors with {bundle} each "
                            f"(placement.strategy {cfg.placement.strategy}): {short}")
        self.pg, self.owns_pg = placement_group([dict(bundle) for _ in range(n)], strategy=cfg.placement.strategy), True
        ready, _ = ray.wait([self.pg.ready()], timeout=cfg.placement.timeout_s)
        if not ready:
            raise UserError(f"the Ray cluster cannot place {n} participant actors with {bundle} each "
                            f"(placement.strategy {cfg.placement.strategy}) within {cfg.placement.timeout_s:g} s")
        self._place(cfg, data, bundle, first_bundle=0)

    def _place(self, cfg: Config, data: Dataset, bundle: dict, first_bundle: int) -> None:
        """One actor per participant, each in its own bundle of self.pg, reserving the whole bundle."""
        self.placement_group = self.pg.id.hex()
        self.data_ref = ray.put(data)  # one copy in the object store, read by every actor (restarts too)
        remote = ray.remote(ParticipantActor)
        custom = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")}
        self.actors = [
            remote.options(
                num_cpus=bundle.get("CPU", 0), num_gpus=bundle.get("GPU", 0), resources=custom,
                # Peers' logits are read without a copy (they are never written: see learn()); this
                # halved the exchange of 128 x 32000 logits here (benchmarks/results/step_time.md).
                runtime_env={"env_vars": {"RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": "1"}},
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=first_bundle + a),
                # A dead actor process comes back (same bundle, __init__ again); the coordinator then
                # sets it up and restores every participant to the last consistent checkpoint.
                max_restarts=cfg.fault.max_restarts,
            ).remote(cfg, m, rank=self.gangs[m].index(a), ranks=len(self.gangs[m]))
            for a, m in enumerate(self.owner)
        ]

    def _gather(self, refs: list, desc: str | None = None, actors: list[int] | None = None) -> list:
        """ray.get, with a failure turned into one line naming its participant (refs[k] is a call to
        actor actors[k], by default actor k); with `desc`, a progress bar that advances as actors finish."""
        try:
            if desc:
                bar, pending = progress(total=len(refs), desc=desc, unit="participant"), list(refs)
                try:
                    while pending:
                        done, pending = ray.wait(pending, num_returns=1)
                        ray.get(done)  # raises at once if that actor failed
                        bar.update(len(done))
                finally:
                    bar.close()
            return ray.get(refs)
        except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError, ray.exceptions.ObjectLostError):
            # A dead actor makes its peers fail too (its logits are gone): wait for every call and
            # name the dead one before any failure it caused. A lost node also loses what its actors
            # returned but the driver had not fetched yet (ObjectLostError from this very get).
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=30)
            errors = []
            for k, ref in enumerate(refs):
                if ref in ready:
                    try:
                        ray.get(ref)
                    except Exception as e:  # noqa: BLE001 - reported in one line below
                        errors.append((actors[k] if actors else self.owner[k], e))
            # The dead actor first, then the call whose own result was lost, then the calls that failed
            # reading what the dead one had sent.
            errors.sort(key=lambda ie: (not isinstance(ie[1], ray.exceptions.RayActorError),
                                        isinstance(ie[1], ray.exceptions.RayTaskError)))
            if errors:
                raise self._one_line(*errors[0]) from None
            raise

    def _one_line(self, index: int, error: Exception) -> UserError:
        cause = getattr(error, "cause", None)
        if isinstance(error, ray.exceptions.RayTaskError) and cause is not None:
            error = cause
        if isinstance(error, ParticipantLost):
            return ParticipantLost(str(error), error.index)
        if isinstance(error, UserError):
            return UserError(str(error))
        if isinstance(error, ray.exceptions.ObjectLostError):  # logits or a result that died with its node or actor
            return ParticipantLost(f"participant '{self.names[index]}': an object it read or returned was lost: "
                                   f"{first_line(error)}", index)
        if isinstance(error, ray.exceptions.RayActorError):
            return ParticipantLost(f"participant '{self.names[index]}': its actor died: {first_line(error)}", index)
        return UserError(f"participant '{self.names[index]}' failed: {type(error).__name__}: {first_line(error)}")

    def _settle(self) -> None:
        """Send the last step's verdict before anything reads or replaces the participants' state."""
        if self.update is not None:
            update, self.update = self.update, None
            self._gather([a.apply.remote(update) for a in self.actors])

    def _restarted(self, a: int, deadline: float) -> bool | None:
        """Whether actor `a`'s process is a fresh one Ray restarted (not set up), once it answers; None when
        it is dead for good (its fault.max_restarts spent)."""
        died_since = None
        while True:
            try:
                return not ray.get(self.actors[a].is_set_up.remote())
            except ray.exceptions.ActorUnavailableError as e:  # still restarting: calls fail, not wait
                if time.monotonic() > deadline:
                    raise self._one_line(self.owner[a], e) from None
                time.sleep(0.2)
            except ray.exceptions.ActorDiedError:  # dead for good, once Ray has had a moment to restart it
                died_since = died_since or time.monotonic()
                if time.monotonic() - died_since > 5:
                    return None
                time.sleep(0.2)
            except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as e:
                raise self._one_line(self.owner[a], e) from None

    def recover(self, lost: ParticipantLost, restarts: dict[str, int]) -> None:
        """After `lost`: every participant whose actor Ray has restarted counts a restart in `restarts` and is
        brought up again (its state is restored next). Several may have died at once (a lost node), not only
        the one a call failed on. A gang whose rank came back has lost its process group: its other ranks
        are restarted too, and it meets again. One line when a participant has died more than
        fault.max_restarts times (or Ray will not restart it)."""
        self.update = None
        deadline = time.monotonic() + self.cfg.placement.timeout_s
        fresh = {a: self._restarted(a, deadline) for a in range(len(self.actors))}
        dead = sorted({self.owner[a] for a, f in fresh.items() if f is None})
        revived = sorted({self.owner[a] for a, f in fresh.items() if f} - set(dead))
        for m in revived or [lost.index]:  # counted first: a death while bringing up counts again
            restarts[self.names[m]] = restarts.get(self.names[m], 0) + 1
        for m in dead + revived:
            if m in dead or restarts[self.names[m]] > self.cfg.fault.max_restarts:
                raise UserError(f"participant '{self.names[m]}': its actor died more than fault.max_restarts "
                                f"({self.cfg.fault.max_restarts}) times")
        for m in revived:
            for a in self.gangs[m]:
                if not fresh[a]:
                    ray.kill(self.actors[a], no_restart=False)
                    while self._restarted(a, deadline) is False:  # the old process may answer once more
                        time.sleep(0.2)
        if revived:
            self._bring_up(revived)

    def states(self):
        """Each participant's state; a gang's is its rank 0's weights with every rank's optimizer and RNG state."""
        self._settle()
        for m in range(len(self.names)):  # one participant in memory here at a time
            yield gang_state(self._each("state", which=[m])[0])

    def weights(self, which: list[int]) -> list[dict]:
        self._settle()
        return [ranks[0] for ranks in self._each("weights", which=which)]

    def load(self, states: list[dict], which: list[int] | None = None) -> None:
        self.update = None  # a pending update is part of the state being replaced
        which = list(range(len(self.names))) if which is None else which
        per = dict(zip(which, states))
        actors = [a for m in which for a in self.gangs[m]]
        self._gather([self.actors[a].load.remote(rank_state(per[self.owner[a]], self.gangs[self.owner[a]].index(a)))
                      for a in actors], actors=[self.owner[a] for a in actors])

    def reset_optimizers(self, optimizer: str, lrs: list[float], weight_decays: list[float]) -> None:
        self.update = None
        self._each("reset_optimizer", lambda m: (optimizer, lrs[m], weight_decays[m]))

    def set_start_copies(self, weights: Iterable[dict] | None) -> None:
        for m, w in zip(range(len(self.names)), weights or itertools.repeat(None)):  # one in memory at a time
            self._each("set_start_copy", lambda _: (w,), which=[m])

    def train_step(self, epoch: int, step: int, loss: LossSpec, split: str = "train", lr_scale: float = 1.0) -> StepResult:
        refs = self._each("forward", lambda m: (epoch, step, self.batch_size, self.update, loss, split))
        results = self._each("learn", lambda m: (refs, loss, lr_scale))
        # Every rank computes its participant's whole share; its own rows' gradients are its part.
        bad = blame(results[0][0][2], [all(r[3] for r in ranks) for ranks in results],
                    [all(r[4] for r in ranks) for ranks in results])
        self.update = not bad
        return StepResult([ranks[0][0] for ranks in results], results[0][0][1], bad)

    def predict(self, split: str, batch_size: int, k: int = 1) -> torch.Tensor:
        self._settle()  # a gang's ranks each predict their share of the split
        return torch.stack([torch.cat(ranks) for ranks in self._each("predict", lambda m: (split, batch_size, k), desc=f"eval {split}")])

    def logits(self, split: str, batch_size: int, first: int | None = None) -> torch.Tensor:
        self._settle()
        return torch.stack([torch.cat(ranks) for ranks in self._each("logits", lambda m: (split, batch_size, first))])

    def nodes(self) -> list[str]:
        return [ranks[0] for ranks in self._each("node")]

    def pids(self) -> list[int]:
        return [ranks[0] for ranks in self._each("pid")]

    def close(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.actors = []
        if self.pg is not None and self.owns_pg:
            remove_placement_group(self.pg)
        self.pg = None
        if self.owns_ray and ray.is_initialized():
            ray.shutdown()
