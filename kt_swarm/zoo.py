"""The embedded zoo: pretrain participants with `weights: zoo` here, cached on disk by content.

There is no model hub offline, so the quickstart makes its own pretrained models:
each member trains alone (its task loss: CE for classification; AdamW, cosine schedule) on the pretraining split, with
its own seed. A member may also start from pretrained weights (`zoo: true`): an
ImageNet model fine-tuned on the task by its owner before it joins the swarm. The
cache key covers the model, its arguments, starting weights and preprocessing, the
zoo settings, the seed and a hash of the pretraining data, so another dataset or
another setting gets its own zoo.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from kt_swarm.config import UNITS, AugmentConfig, ParticipantConfig, ZooConfig
from kt_swarm.data import Dataset, batch_plan, steps_per_epoch
from kt_swarm.errors import UserError
from kt_swarm.models import default_weights
from kt_swarm.participant import Participant
from kt_swarm.progress import progress
from kt_swarm.rundir import atomic_write
from kt_swarm.tasks import Task

log = logging.getLogger(__name__)


def cache_dir(cfg: ZooConfig) -> Path:
    root = cfg.cache_dir or os.environ.get("KT_SWARM_CACHE") or Path.home() / ".cache" / "kt_swarm"
    return Path(root) / "zoo"


def cache_key(spec: ParticipantConfig, participant: Participant, cfg: ZooConfig, data: Dataset, ids: torch.Tensor,
              augment: AugmentConfig, seed: int) -> str:
    p = participant.preprocess
    fields = dict(
        model=spec.model,
        model_args=spec.model_args,
        preprocess=[p.in_chans, p.input_size, list(p.mean), list(p.std), str(p.dtype)] if hasattr(p, "mean")
        else ["tokens", str(p.dtype)],
        zoo=[cfg.epochs, cfg.lr, cfg.weight_decay, cfg.batch_size],
        augment=[augment.shift, augment.hflip],
        data=data.fingerprint(ids),
        seed=seed,
    )
    start = default_weights(spec)
    if start == "given":  # an nn.Module built by the user's code: what it is and holds
        fields["start"] = [type(participant.model).__qualname__, _state_digest(participant.model)]
    elif start not in ("zoo", "none"):  # (a key without this field is a member trained from random weights)
        fields["start"] = [start if start == "pretrained" else _file_digest(Path(start)), spec.weights_map]
    text = json.dumps(fields, sort_keys=True, default=str)
    return f"{spec.model.replace('/', '_').replace(':', '_')}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _state_digest(model) -> str:
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _save_atomic(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, save({k: v.contiguous() for k, v in state.items()}))


def pretrain(spec: ParticipantConfig, participant: Participant, data: Dataset, ids: torch.Tensor, cfg: ZooConfig,
             augment: AugmentConfig, seed: int) -> Path:
    """Train (or load from the cache) one zoo member in place on the samples `ids`; returns its cache file."""
    from safetensors.torch import load_file

    path = cache_dir(cfg) / f"{cache_key(spec, participant, cfg, data, ids, augment, seed)}.safetensors"
    if path.exists():
        try:
            participant.model.load_state_dict(load_file(str(path)))
            return path
        except Exception as e:  # a damaged cache entry is retrained, not trusted
            log.warning("zoo cache file %s is unreadable (%s); training it again", path, e)
            path.unlink(missing_ok=True)
    steps = steps_per_epoch(len(ids), cfg.batch_size)
    if steps == 0:
        raise UserError(f"zoo: participant '{spec.name}' has {len(ids)} pretraining samples, fewer than zoo.batch_size; "
                        f"raise data.pretrain_fraction")
    torch.manual_seed(seed)
    task = Task(data.task, UNITS[data.task][0])  # alone, a member learns from its task loss only
    opt = torch.optim.AdamW(participant.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps, pct_start=0.15)
    bar = progress(total=cfg.epochs * steps, desc=f"zoo {spec.name}", unit="step")
    for epoch in range(cfg.epochs):
        for step in range(steps):
            plan = batch_plan(ids, seed=seed, epoch=epoch, step=step, batch_size=cfg.batch_size, augment=augment)
            loss = task.loss(participant.forward(data, plan), data.target(plan.ids, plan).to(participant.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_description(f"zoo {spec.name} epoch {epoch + 1}, loss {loss.item():.3f}")
            bar.update()
    bar.close()
    _save_atomic(participant.weights(), path)
    return path
