"""RaySwarm: the Engine (engine.py) over restartable Ray actors, each hosting one participant, several small
ones (placement.participants_per_actor), or one rank of a gang.

The driver's bookkeeping lives here: which actor hosts which participant (hosts, gangs), calling a
participant's every rank at once (_each) or every actor at once (_on_actors), bringing participants up, and
the verdict on the last step that the actors have not been told yet. The rest is named after what it does: placement.py, actor.py,
exchange.py (a step), gather.py (results and failures), recovery.py, gang.py, ray_start.py.
"""
from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Iterator

import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group

from kt_swarm.build import check_classes
from kt_swarm.config import Config
from kt_swarm.data import Dataset, arm_plan
from kt_swarm.engine import StepResult, domain_roles
from kt_swarm.errors import ParticipantLost, UserError, first_line
from kt_swarm.objectives import LossSpec
from kt_swarm.swarm import exchange
from kt_swarm.swarm.gang import gang_state, rank_state
from kt_swarm.swarm.gather import gather
from kt_swarm.swarm.placement import actor_bundle, actor_hosts, place_actors, trial_bundle, wait_placed
from kt_swarm.swarm.ray_start import init_ray
from kt_swarm.swarm.recovery import count_restarts, restart_gang, restarted

log = logging.getLogger("kt_swarm")


def put(value, what: str):
    """ray.put, with one line for what cannot be pickled (a Dataset holding an open file handle, a module a lock)."""
    try:
        return ray.put(value)
    except Exception as e:
        raise UserError(f"{what} cannot be sent to the Ray actors (pickled): {first_line(e)}; the local engine "
                        f"does not pickle, or open such handles inside a data factory") from None


class RaySwarm:
    """The engine interface of local.LocalEngine, with every participant in its own Ray actor."""

    name = "ray"
    placement_group: str | None  # its id, for summary.json
    setup_restarts: dict[str, int]  # actors lost while the swarm was set up, by participant

    def __init__(self, cfg: Config, data: Dataset, *, address: str | None = None, pretrain: bool = True,
                 models: dict | None = None):
        self.cfg, self.batch_size = cfg, cfg.transfer.batch_size
        self.names = [p.name for p in cfg.participants]
        # A participant on k ranks (a gang) has k actors, in rank order; small ones may share one.
        self.hosts = actor_hosts(cfg)  # actor -> the participants it hosts
        self.owner = [ms[0] for ms in self.hosts]  # actor -> the participant its failures are reported under
        self.gangs = [[a for a, ms in enumerate(self.hosts) if m in ms] for m in range(len(cfg.participants))]
        self.actors, self.pg, self.owns_pg, self.data_ref = [], None, False, None
        self.models, self.model_refs = models or {}, {}  # participants given as nn.Modules (kt_swarm.run), by index
        self.placement_group = None
        self.update: bool | None = None  # the verdict on the last step, not yet sent to the actors
        self.pretrain, self.num_classes, self.data = pretrain, data.num_classes, data
        self.setup_restarts = {}
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

    def _start(self, cfg: Config, data: Dataset) -> None:
        n = len(self.owner)  # one bundle per actor: a gang takes one per rank
        current = ray.util.get_current_placement_group()
        if current is not None:  # a sweep trial: it reserved a bundle for itself, then one per participant
            bundle, first_bundle = trial_bundle(current, n), 1
            self.pg, self.owns_pg = current, False
        else:
            bundle, first_bundle = actor_bundle(cfg, n), 0
            # Held before it is ready: close() removes it if the wait fails.
            self.pg, self.owns_pg = placement_group([dict(bundle) for _ in range(n)], strategy=cfg.placement.strategy), True
            wait_placed(self.pg, cfg, n, bundle)
        self.placement_group = self.pg.id.hex()
        self.data_ref = put(data, "the data")  # one copy in the object store, read by every actor (restarts too)
        self.model_refs = {m: put(module, f"participant '{self.names[m]}''s nn.Module")  # the same, once each
                           for m, module in self.models.items()}
        self.actors = place_actors(self.pg, cfg, bundle, first_bundle, self.hosts)

    def _bring_up(self, which) -> None:
        """Set up these participants' actors, check their classes and, in a new run, pretrain (or load
        from the cache) their zoo members."""
        which = list(which)
        check_classes({self.names[m]: w for m, w in zip(which, self._setup(which))}, self.num_classes)
        if self.pretrain:  # a gang's rank 0 trains (or loads) its zoo member; its other ranks then load it
            self._gather([self.actors[self.gangs[m][0]].pretrain.remote(m) for m in which], desc="participants ready",
                         actors=which)
            rest = [(m, a) for m in which for a in self.gangs[m][1:]]
            self._gather([self.actors[a].pretrain.remote(m) for m, a in rest], actors=[m for m, _ in rest])

    def _setup(self, which) -> list[int]:
        """Set up the actors hosting these participants (a gang meets at its rank 0's address and a free port
        there; every actor is given every actor's handle, for the exchange); returns each one's number of classes."""
        which = list(which)
        gangs = [m for m in which if len(self.gangs[m]) > 1]  # a rank 0 lost here is a lost participant too
        addresses = self._gather([self.actors[self.gangs[m][0]].rendezvous.remote() for m in gangs], actors=gangs)
        meet = {m: (None, None) for m in which} | dict(zip(gangs, addresses))
        actors = sorted({a for m in which for a in self.gangs[m]})
        # Refs inside a dict are passed as refs: the actor gets the given modules it hosts from the store itself.
        given = [{m: self.model_refs[m] for m in self.hosts[a] if m in self.model_refs} for a in range(len(self.hosts))]
        widths = self._gather([self.actors[a].setup.remote(self.data_ref, a, self.actors, *meet[self.owner[a]], given[a])
                               for a in actors], actors=[self.owner[a] for a in actors])
        return [widths[actors.index(self.gangs[m][0])][self.hosts[self.gangs[m][0]].index(m)] for m in which]

    def _each(self, method: str, args_of=lambda m: (), which=None, desc: str | None = None) -> list[list]:
        """Call `method(m, *args_of(m))` on every rank of these participants m at once (collectives need the
        whole gang); returns each participant's results, in rank order."""
        which = range(len(self.names)) if which is None else which
        calls = [(m, a) for m in which for a in self.gangs[m]]
        out = self._gather([getattr(self.actors[a], method).remote(m, *args_of(m)) for m, a in calls],
                           desc=desc, actors=[m for m, _ in calls])
        results = iter(out)
        return [[next(results) for _ in self.gangs[m]] for m in which]

    def _on_actors(self, method: str, args_of=lambda a: ()) -> list:
        """Call `method(*args_of(a))` once on every actor a at once; returns each actor's result."""
        return self._gather([getattr(actor, method).remote(*args_of(a)) for a, actor in enumerate(self.actors)])

    def _gather(self, refs: list, desc: str | None = None, actors: list[int] | None = None) -> list:
        """gather.gather: refs[k] is a call to an actor of participant actors[k] (by default: actor k's)."""
        return gather(refs, self.names, actors or self.owner, desc)

    def _settle(self) -> None:
        """Send the last step's verdict before anything reads or replaces the participants' state."""
        if self.update is not None:
            update, self.update = self.update, None
            self._gather([a.apply.remote(update) for a in self.actors])

    def recover(self, lost: ParticipantLost, restarts: dict[str, int]) -> None:
        """After `lost`: every participant whose actor Ray has restarted counts a restart in `restarts` and is
        brought up again (its state is restored next). Several may have died at once (a lost node), not only
        the one a call failed on. A gang whose rank came back has lost its process group: its other ranks
        are restarted too, and it meets again. One line when a participant has died more than
        fault.max_restarts times (or Ray will not restart it)."""
        self.update = None
        deadline = time.monotonic() + self.cfg.placement.timeout_s
        fresh = {a: restarted(actor, self.owner[a], self.names, deadline) for a, actor in enumerate(self.actors)}
        revived = count_restarts(fresh, self.hosts, self.names, lost, restarts, self.cfg.fault.max_restarts)
        for m in revived:
            restart_gang(self.actors, self.gangs[m], fresh, m, self.names, deadline)
        if revived:
            self._bring_up(revived)

    def states(self) -> Iterator[dict]:
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
        calls = [(m, a) for m in which for a in self.gangs[m]]
        self._gather([self.actors[a].load.remote(m, rank_state(per[m], self.gangs[m].index(a))) for m, a in calls],
                     actors=[m for m, _ in calls])

    def reset_optimizers(self, optimizer: str, lrs: list[float], weight_decays: list[float]) -> None:
        self.update = None
        self._each("reset_optimizer", lambda m: (optimizer, lrs[m], weight_decays[m]))

    def set_start_copies(self, weights: Iterable[dict] | None) -> None:
        for m, w in zip(range(len(self.names)), weights or itertools.repeat(None)):  # one in memory at a time
            self._each("set_start_copy", lambda _: (w,), which=[m])

    def train_step(self, epoch: int, step: int, loss: LossSpec, split: str = "train", lr_scale: float = 1.0) -> StepResult:
        def by_domain(part):  # text: the driver derives the batch as every actor does, for its domains
            if self.data.tokens is None:
                return None
            plan = arm_plan(self.data, split, seed=self.cfg.seed, epoch=epoch, step=step, batch_size=self.batch_size,
                            augment=self.cfg.data.augment)
            return domain_roles(self.data, plan.ids, self.data.target(plan.ids, plan), loss, part)

        result = exchange.train_step(self._on_actors, self.hosts, self.gangs, self.batch_size, self.update, epoch, step,
                                     loss, split, lr_scale, by_domain)
        self.update = not result.bad
        return result

    def predict(self, split: str, batch_size: int, k: int = 1) -> torch.Tensor:
        self._settle()  # a gang's ranks each predict their share of the split
        return torch.stack([torch.cat(ranks) for ranks in self._each("predict", lambda m: (split, batch_size, k), desc=f"eval {split}")])

    def logits(self, split: str, batch_size: int, first: int | None = None) -> torch.Tensor:
        self._settle()
        return torch.stack([torch.cat(ranks) for ranks in self._each("logits", lambda m: (split, batch_size, first))])

    def nodes(self) -> list[str]:
        nodes = self._on_actors("node")
        return [nodes[ranks[0]] for ranks in self.gangs]

    def pids(self) -> list[int]:
        pids = self._on_actors("pid")
        return [pids[ranks[0]] for ranks in self.gangs]

    def close(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.actors, self.model_refs = [], {}
        if self.pg is not None and self.owns_pg:
            remove_placement_group(self.pg)
        self.pg = None
        if self.owns_ray and ray.is_initialized():
            ray.shutdown()
