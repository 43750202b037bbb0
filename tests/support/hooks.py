"""on_record hooks for coordinator.run: called with every metrics record as it is written, they strike there.
A hook that raises Stop stands for the driver dying (the checkpoints written so far stay; `resume` goes on);
killer SIGKILLs actors' processes, as a crash or a lost machine would."""
from __future__ import annotations

import os
import signal
from typing import Callable


class Stop(Exception):
    """Stands for the driver dying: raised from inside the run, after a chosen metrics record."""


def at_step(record: dict, arm: str, epoch: int, step: int) -> bool:
    """Whether `record` is the step record (it has "losses") of `arm`'s `step` in `epoch`."""
    return (record.get("arm"), record.get("epoch"), record.get("step")) == (arm, epoch, step) and "losses" in record


def stop_when(predicate: Callable[[dict], bool]):
    """on_record that raises Stop after the first record for which `predicate` is true."""
    def on_record(record: dict) -> None:
        if predicate(record):
            raise Stop

    return on_record


def stop_after(count: int):
    """on_record that raises Stop after the run's `count`-th metrics record (1: the first)."""
    seen = []

    def on_record(record: dict) -> None:
        seen.append(record)
        if len(seen) == count:
            raise Stop

    return on_record


def stop_at(arm: str, epoch: int, step: int):
    """on_record that raises Stop once `arm` has logged `step` of `epoch`."""
    return stop_when(lambda record: at_step(record, arm, epoch, step))


def killer(names: list[str], arm: str, step: int, epoch: int = 0):
    """on_record that SIGKILLs these participants' actor processes once the run logs (arm, epoch, step)."""
    pids, killed = {}, []

    def on_record(record: dict) -> None:
        if record.get("event") == "placed":
            pids.update({n: where["pid"] for n, where in record["participants"].items()})
        if at_step(record, arm, epoch, step):
            if not killed:  # once: the restored run logs this step again
                for name in names:
                    os.kill(pids[name], signal.SIGKILL)
                    killed.append(pids[name])

    return on_record
