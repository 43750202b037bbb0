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


# `make test` runs two files at a time (pytest-xdist, --dist loadfile), each worker taking the next file when it is
# free. xdist's default order (most tests first) leaves the few-but-long files for the end, where one worker runs
# them while the other idles; the files that take longest go first instead (durations from CI's log).
LONGEST_FIRST = ["test_swarm.py", "test_language_model.py", "test_sweep.py", "test_deepspeed.py", "test_cluster.py",
                 "test_resume.py", "test_run.py", "test_python_api.py", "test_config.py", "test_tracking.py"]


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False  # keep the order below


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept
