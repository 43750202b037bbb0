import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

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


def kt_swarm(*args, cwd=ROOT, timeout=300, env=None):
    """Run the CLI as a user would (a fresh interpreter); returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "kt_swarm", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env=env,
    )
