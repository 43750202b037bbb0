"""Session-wide settings and fixtures. The helpers tests share live in tests/support/ (`from support.configs
import mlp_config`, ...), which the benchmarks import too."""
import os
import sys
from pathlib import Path

import pytest

# tests/ on sys.path, whatever pytest's import mode: `support` is imported from there. (pyproject.toml's
# [tool.pytest.ini_options] could say the same with `pythonpath = ["tests"]`.)
TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

# Tests never reach a hub or a tracking server, and Ray stays on loopback without telemetry.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session", autouse=True)
def zoo_cache(tmp_path_factory):
    """One fresh zoo cache for the whole session: tests share what they pretrain, CI starts empty."""
    path = tmp_path_factory.mktemp("zoo-cache")
    old = os.environ.get("KT_SWARM_CACHE")
    os.environ["KT_SWARM_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("KT_SWARM_CACHE", None)
    else:
        os.environ["KT_SWARM_CACHE"] = old


@pytest.fixture(scope="module")
def ray_instance():
    """One private Ray instance for the test module that asks for it, on loopback; its workers can import the
    test models (tests/helpers). Ended with the module."""
    import ray

    from support.ray_nodes import start_private_ray_with_helpers

    start_private_ray_with_helpers(num_cpus=2)
    yield
    ray.shutdown()
