"""What the tests and the benchmarks share; both import it (tests/ is on sys.path: tests/conftest.py puts it
there for pytest, and each benchmark that needs it for itself).

    configs.py     tiny configs: two float64 MLPs (mlp_config), the dense tasks' small backbones
                   (dense_config), the Ray-vs-local smoke swarm (tiny_config), and a test model of
                   helpers/faulty_models.py as a participant (faulty)
    datasets.py    a folder dataset of real Fashion-MNIST PNGs (write_folder)
    launch.py      `kt-swarm` as a user runs it: to its end (kt_swarm), in the background (start_kt_swarm),
                   in this process (cli); an example's script as a module (load_script)
    hooks.py       on_record hooks: stop the run (Stop) after N records or at a step; SIGKILL actors at a step
    ray_nodes.py   Ray that a test or benchmark starts and ends itself: a private instance (the module
                   fixture ray_instance in conftest.py), `ray start` nodes stopped by pid
    run_log.py     a run's metrics.jsonl read while the run writes it

helpers/faulty_models.py is not a module of this package: Ray workers and `kt-swarm` subprocesses load it by
import path (`faulty_models:tiny_mlp`) through PYTHONPATH=HELPERS (helpers_env), so it keeps its path.
Importing this package puts HELPERS on this process's sys.path too, for runs on the local engine.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
HELPERS = ROOT / "tests" / "helpers"  # faulty_models.py: models that fail on purpose, and the tiny MLPs

if str(HELPERS) not in sys.path:
    sys.path.insert(0, str(HELPERS))


def helpers_env(base: dict | None = None, **extra: str) -> dict:
    """An environment for a `kt-swarm` process or a Ray node whose participants are test models: `base`
    (this process's environment by default) with PYTHONPATH=HELPERS, then `extra`."""
    return {**(os.environ if base is None else base), "PYTHONPATH": str(HELPERS), **extra}
