"""Tiny configs the tests and benchmarks run: raw mappings (parse_config makes them a Config), small enough
for a 2-core CPU, in float64 where engines or runs are compared exactly."""
from __future__ import annotations

from pathlib import Path

import yaml

from kt_swarm.config import Config, load_config, parse_config, to_dict

from . import ROOT


def faulty(name: str, model: str = "tiny_mlp", lr: float = 3e-3, weights: str | None = None, **model_args) -> dict:
    """A participant whose model is one of helpers/faulty_models.py (`faulty_models:MODEL`), with these
    model_args (none: the model's defaults) and, if given, `weights` (`zoo`: pretrained here)."""
    p = {"name": name, "model": f"faulty_models:{model}", "lr": lr}
    if weights is not None:
        p["weights"] = weights
    if model_args:
        p["model_args"] = model_args
    return p


def mlp_config(**overrides) -> dict:
    """Two tiny MLPs in float64 (exact comparisons), both arms, checkpoints every 2 steps."""
    raw = {
        "participants": [faulty("wide", hidden=24), faulty("narrow", hidden=8)],
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


def tiny_config(n: int, **overrides) -> Config:
    """The smoke config's first `n` participants (a second ResNet as the fourth) from random seeded weights
    (no zoo: the engines are compared), in float64 on 192 images a split, without the control arm; then
    `overrides` (whole sections)."""
    raw = to_dict(load_config(ROOT / "configs" / "smoke.yaml"))
    fourth = {"name": "resnet_b", "model": "resnet10t", "weights": "none", "lr": 2e-3,
              "model_args": {"channels": [8, 16, 32, 64], "stem_width": 8}}
    raw["participants"] = (raw["participants"] + [fourth])[:n]
    for p in raw["participants"]:
        p["weights"] = "none"  # random init, seeded: no zoo needed to compare engines
        p["lr"] = 2e-3
    raw.update(dtype="float64", control=False)
    raw["data"].update(max_per_split=192, augment={"shift": 2, "hflip": True})
    raw["transfer"].update(epochs=2, batch_size=48, temperature=2.0)
    for key, value in overrides.items():
        raw[key] = value
    return parse_config(raw)


def write_config(path: Path, raw: dict) -> Path:
    """`raw` saved as the YAML file `kt-swarm run PATH` reads; returns `path`."""
    path.write_text(yaml.safe_dump(raw))
    return path
