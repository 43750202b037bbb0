"""Progress bars: tqdm in the driver; Ray's tqdm inside actors, which the driver draws when it
forwards actor output (kt-swarm --verbose). Off with --quiet and when stderr is not a terminal."""
from __future__ import annotations

import logging
import sys


def _in_ray_worker() -> bool:
    if "ray" not in sys.modules:
        return False
    import ray

    return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def progress(total: int, desc: str, unit: str = "it", initial: int = 0):
    if _in_ray_worker():
        from ray.experimental.tqdm_ray import tqdm as ray_tqdm

        bar = ray_tqdm(total=total, desc=desc, unit=unit)
        bar.update(initial)
        return bar
    from tqdm import tqdm

    quiet = not logging.getLogger("kt_swarm").isEnabledFor(logging.INFO)
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=False, dynamic_ncols=True, disable=True if quiet else None)
