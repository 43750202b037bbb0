"""The Ray swarm: one actor per participant (or per rank of a gang), logits through the object store.

Each step the driver makes two calls per actor and moves only references (exchange.py): forward puts the
actor's logits of the batch it derived itself in the object store; learn hands every actor every
reference, and each back-propagates its own share of the global loss; the optimizers step once every
share and gradient was finite (else none does).

A dead actor process is restarted by Ray (fault.max_restarts); the swarm sets it up again (recovery.py)
and the coordinator restores every participant to the last consistent checkpoint.

Same interface (engine.Engine), and in float64 on the CPU the same numbers, as local.LocalEngine.

    ray_start.py   joining a cluster, or a private Ray instance on loopback
    placement.py   one bundle per actor in one placement group; a swarm that cannot fit refused at once
    actor.py       ParticipantActor: what runs in an actor's process
    exchange.py    a training step's exchange, the actor's side and the driver's
    gather.py      results gathered, a failure as one line naming its participant
    recovery.py    restarted actors counted and brought back, gangs made whole
    gang.py        a participant on several ranks: its rendezvous, its state folded and split
    ray_swarm.py   RaySwarm, the engine: the driver's bookkeeping over all of the above
"""
from kt_swarm.swarm.actor import ParticipantActor
from kt_swarm.swarm.exchange import Learned
from kt_swarm.swarm.gang import GANG, gang_state, rank_state
from kt_swarm.swarm.placement import placement_shortfall
from kt_swarm.swarm.ray_start import init_ray, start_private_ray
from kt_swarm.swarm.ray_swarm import RaySwarm

__all__ = ["GANG", "Learned", "ParticipantActor", "RaySwarm", "gang_state", "init_ray", "placement_shortfall",
           "rank_state", "start_private_ray"]
