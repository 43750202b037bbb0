"""Building participants from the config: model, preprocessing, dtype, device, zoo pretraining.

Below both engines: the local engine calls it in the driver, each Ray actor in its own process.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from kt_swarm import zoo
from kt_swarm.config import Config
from kt_swarm.data import Dataset
from kt_swarm.deepspeed_host import ds_config
from kt_swarm.errors import UserError, first_line
from kt_swarm.lm import TokenInput, create_causal_lm
from kt_swarm.models import create_model, default_weights, preprocess_for, trains_first
from kt_swarm.participant import Participant, resolve_device, seeded_rng


def member_seed(cfg: Config, index: int) -> int:
    """Participant `index`'s own seed (initialisation, zoo pretraining): distinct, and fixed by the run seed."""
    return cfg.seed * 1000 + index


def build_participant(cfg: Config, index: int, data: Dataset, given: nn.Module | None = None) -> Participant:
    """Participant `index`: its model (seeded; or a copy of `given`, an nn.Module built by the user), preprocessing,
    dtype and device; not yet pretrained."""
    spec = cfg.participants[index]
    dtype = getattr(torch, cfg.dtype)
    device = resolve_device(cfg.device)
    if cfg.task == "language_model":
        model = create_causal_lm(spec.model, spec.model_args, default_weights(spec), member_seed(cfg, index),
                                 f"participant '{spec.name}'")
        prep = TokenInput(dtype)
    else:
        model, prep = _vision_model(cfg, index, data, dtype, given)
    model = model.to(device=device, dtype=dtype)
    autocast = getattr(torch, cfg.autocast) if cfg.autocast else None
    hosted = ds_config(spec.deepspeed, cfg.transfer.batch_size, spec.ranks) if spec.deepspeed is not None else None
    return Participant(spec.name, model, prep, device, autocast=autocast, deepspeed=hosted,
                       rng=seeded_rng(member_seed(cfg, index), device))


def _vision_model(cfg: Config, index: int, data: Dataset, dtype: torch.dtype, given: nn.Module | None) -> tuple:
    """A timm (or import-path, or given) model for the data's channels and classes, and its preprocessing."""
    spec = cfg.participants[index]
    in_chans = spec.in_chans or data.channels
    if data.channels not in (1, in_chans):
        raise UserError(f"participant '{spec.name}': in_chans {in_chans} for {data.channels}-channel images "
                        f"(only grayscale goes to 3 channels)")
    if given is not None:  # a copy: training must not change the caller's module (a resume starts from it again)
        torch.manual_seed(member_seed(cfg, index))
        try:
            model = copy.deepcopy(given)
        except Exception as e:  # a module holding a lock, an open file, ...
            raise UserError(f"participant '{spec.name}': its nn.Module cannot be copied: {first_line(e)}") from None
    else:
        model = create_model(spec, num_classes=data.num_classes, in_chans=in_chans, seed=member_seed(cfg, index),
                             task=cfg.task)
    return model, preprocess_for(model, spec, in_chans=in_chans, image_size=data.image_size, dtype=dtype)


def pretrain_ids(cfg: Config, index: int, data: Dataset) -> torch.Tensor:
    """What zoo member `index` pretrains on: the whole pretraining split, or (zoo.disjoint) its own share of
    it, like hub models from different labs trained on different data. Shares go to the zoo members in
    participant order. A participant with a `domain` (text) takes that domain's part only."""
    ids = data.splits["pretrain"]
    domain = cfg.participants[index].domain
    if domain is not None:  # a language model's specialist: its domain's text only
        ids = ids[data.labels[ids] == data.classes.index(domain)]
    if not cfg.zoo.disjoint:
        return ids
    members = [i for i, p in enumerate(cfg.participants) if trains_first(p)]
    return ids.tensor_split(len(members))[members.index(index)]


def pretrain_if_zoo(cfg: Config, index: int, participant: Participant, data: Dataset) -> None:
    spec = cfg.participants[index]
    if trains_first(spec):
        zoo.pretrain(spec, participant, data, pretrain_ids(cfg, index, data), cfg.zoo, cfg.data.augment,
                     seed=member_seed(cfg, index))


def check_classes(widths: dict[str, int], num_classes: int) -> None:
    """Participants must agree with each other, and with the data, on the classes."""
    if len(set(widths.values())) > 1 or num_classes not in widths.values():
        listed = ", ".join(f"{k}={v}" for k, v in widths.items())
        odd = next(k for k, v in widths.items() if v != num_classes)  # there is one, or the check above passed
        raise UserError(f"participant '{odd}' outputs {widths[odd]} classes; the data has {num_classes} ({listed})")
