"""Recovery after a lost participant: which actors Ray restarted, the restarts counted, gangs made whole.

Ray restarts a dead actor's process in its bundle (fault.max_restarts); what the process held is gone.
RaySwarm.recover asks every actor whether it is a fresh one, counts a restart for each participant that
came back (against fault.max_restarts), and brings them up again; the coordinator then restores every
participant to the last consistent checkpoint. Several may have died at once (a lost node), not only
the one a call failed on.
"""
from __future__ import annotations

import time

import ray

from kt_swarm.errors import ParticipantLost, UserError
from kt_swarm.swarm.gather import one_line


def restarted(actor, index: int, names: list[str], deadline: float) -> bool | None:
    """Whether this actor (of participant `index`) runs in a fresh process Ray restarted (not set up), once it
    answers; None when it is dead for good (its fault.max_restarts spent)."""
    died_since = None
    while True:
        try:
            return not ray.get(actor.is_set_up.remote())
        except ray.exceptions.ActorUnavailableError as e:  # still restarting: calls fail, not wait
            if time.monotonic() > deadline:
                raise one_line(names, index, e) from None
            time.sleep(0.2)
        except ray.exceptions.ActorDiedError:  # dead for good, once Ray has had a moment to restart it
            died_since = died_since or time.monotonic()
            if time.monotonic() - died_since > 5:
                return None
            time.sleep(0.2)
        except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as e:
            raise one_line(names, index, e) from None


def count_restarts(fresh: dict[int, bool | None], hosts: list[list[int]], names: list[str], lost: ParticipantLost,
                   restarts: dict[str, int], max_restarts: int) -> list[int]:
    """The participants to bring up again (an actor of theirs is fresh: every participant it hosts), each
    counted in `restarts`; one line when one is dead for good or has died more than `max_restarts` times.
    `fresh`: restarted() per actor; hosts[a]: actor a's participants."""
    dead = sorted({m for a, f in fresh.items() if f is None for m in hosts[a]})
    revived = sorted({m for a, f in fresh.items() if f for m in hosts[a]} - set(dead))
    for m in revived or [lost.index]:  # counted first: a death while bringing up counts again
        restarts[names[m]] = restarts.get(names[m], 0) + 1
    for m in dead + revived:
        if m in dead or restarts[names[m]] > max_restarts:
            raise UserError(f"participant '{names[m]}': its actor died more than fault.max_restarts "
                            f"({max_restarts}) times")
    return revived


def restart_gang(actors: list, gang: list[int], fresh: dict[int, bool | None], index: int, names: list[str],
                 deadline: float) -> None:
    """A gang whose rank came back has lost its process group: its other ranks are restarted too (it meets
    again when it is brought up)."""
    for a in gang:
        if not fresh[a]:
            ray.kill(actors[a], no_restart=False)
            while restarted(actors[a], index, names, deadline) is False:  # the old process may answer once more
                time.sleep(0.2)
