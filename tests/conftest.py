import importlib.util
import os
import signal
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


def load_script(path: Path):
    """A script outside the package (an example's prepare.py) as a module, to test its functions."""
    spec = importlib.util.spec_from_file_location(path.parent.name + "_" + path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kt_swarm(*args, cwd=ROOT, timeout=300, env=None):
    """Run the CLI as a user would (a fresh interpreter); returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "kt_swarm", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env=env,
    )


def mlp_config(**overrides) -> dict:
    """Two tiny MLPs in float64 (exact comparisons), both arms, checkpoints every 2 steps."""
    raw = {
        "participants": [{"name": "wide", "model": "faulty_models:tiny_mlp", "lr": 3e-3, "model_args": {"hidden": 24}},
                         {"name": "narrow", "model": "faulty_models:tiny_mlp", "lr": 3e-3, "model_args": {"hidden": 8}}],
        "data": {"max_per_split": 96, "augment": {"shift": 2, "hflip": True}},
        "transfer": {"epochs": 2, "batch_size": 32, "temperature": 2.0},
        "checkpoint": {"every_steps": 2, "keep": 2},
        "dtype": "float64", "control": True,
    }
    raw.update(overrides)
    return raw


def dense_config(task: str = "segmentation", **overrides) -> dict:
    """Two small backbones of different families under the dense decoder, on tiny 32 x 32 scenes, in float64."""
    vit = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2}
    raw = {
        "task": task,
        "participants": [
            {"name": "resnet", "model": "resnet10t", "weights": "none", "lr": 2e-3,
             "model_args": {"channels": [8, 16, 32, 64], "stem_width": 8}},
            {"name": "vit", "model": "vit_tiny_patch16_224", "weights": "none", "lr": 2e-3, "model_args": vit}],
        "data": {"kind": "scenes", "scenes": {"train": 160, "test": 48, "canvas": 32, "max_items": 2},
                 "val_fraction": 0.2, "augment": {"shift": 2, "hflip": True}},
        "transfer": {"epochs": 1, "batch_size": 16, "temperature": 2.0},
        "dtype": "float64", "control": True, "eval_batch_size": 64,
    }
    raw.update(overrides)
    return raw


def killer(names: list[str], arm: str, step: int, epoch: int = 0):
    """on_record that SIGKILLs these participants' actor processes once the run logs (arm, epoch, step)."""
    pids, killed = {}, []

    def on_record(record: dict) -> None:
        if record.get("event") == "placed":
            pids.update({n: where["pid"] for n, where in record["participants"].items()})
        if (record.get("arm"), record.get("epoch"), record.get("step")) == (arm, epoch, step) and "losses" in record:
            if not killed:  # once: the restored run logs this step again
                for name in names:
                    os.kill(pids[name], signal.SIGKILL)
                    killed.append(pids[name])

    return on_record
