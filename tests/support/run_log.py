"""A run's metrics.jsonl read while the run writes it: when a test or benchmark strikes mid-run."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Callable

from kt_swarm.rundir import read_records


def logged(run_dir: Path) -> list[dict]:
    """The records RUN_DIR/metrics.jsonl holds so far (none while it does not exist; a line still being
    written is left out)."""
    try:
        return read_records(run_dir)
    except FileNotFoundError:
        return []


def wait_for(proc: subprocess.Popen, run_dir: Path, predicate: Callable[[dict], bool],
             timeout: float = 300, poll: float = 0.05) -> list[dict] | None:
    """The records logged once one of them satisfies `predicate`, while `proc` (the run's driver) lives;
    None when it ends first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        records = logged(run_dir)
        if any(predicate(r) for r in records):
            return records
        time.sleep(poll)
    return None


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, arm: str = "transfer",
                  timeout: float = 300) -> list[dict] | None:
    """The records logged once `arm` has logged `step`, while `proc` (the run's driver) lives; None when
    it ends first or `timeout` seconds pass."""
    return wait_for(proc, run_dir, lambda r: r.get("arm") == arm and r.get("step", -1) >= step, timeout)
