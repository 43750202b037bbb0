"""Gathering the actors' results: a failure becomes one line naming its participant.

A participant whose process died (its actor, its node, or what it sent lost with them) is a
ParticipantLost, which the run may restart; any other failure is a UserError that ends the run in one
line. A dead actor makes its peers fail too, so the line names the dead one, not a peer it took along.
"""
from __future__ import annotations

import ray

from kt_swarm.errors import ParticipantLost, UserError, first_line
from kt_swarm.progress import progress


def gather(refs: list, names: list[str], owners: list[int], desc: str | None = None) -> list:
    """ray.get, with a failure turned into one line naming its participant (refs[k] is a call to an actor of
    participant owners[k]); with `desc`, a progress bar that advances as actors finish."""
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
                    errors.append((owners[k], e))
        # The dead actor first, then the call whose own result was lost, then the calls that failed
        # reading what the dead one had sent.
        errors.sort(key=lambda ie: (not isinstance(ie[1], ray.exceptions.RayActorError),
                                    isinstance(ie[1], ray.exceptions.RayTaskError)))
        if errors:
            raise one_line(names, *errors[0]) from None
        raise


def one_line(names: list[str], index: int, error: Exception) -> UserError:
    """Participant `index`'s failure as one line: ParticipantLost when its process (or what it sent) is gone."""
    cause = getattr(error, "cause", None)
    if isinstance(error, ray.exceptions.RayTaskError) and cause is not None:
        error = cause
    if isinstance(error, ParticipantLost):
        return ParticipantLost(str(error), error.index)
    if isinstance(error, UserError):
        return UserError(str(error))
    if isinstance(error, ray.exceptions.ObjectLostError):  # logits or a result that died with its node or actor
        return ParticipantLost(f"participant '{names[index]}': an object it read or returned was lost: "
                               f"{first_line(error)}", index)
    if isinstance(error, ray.exceptions.RayActorError):
        return ParticipantLost(f"participant '{names[index]}': its actor died: {first_line(error)}", index)
    return UserError(f"participant '{names[index]}' failed: {type(error).__name__}: {first_line(error)}")
