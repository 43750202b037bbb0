"""Rename a third-party checkpoint's tensors to the model's names (a participant's `weights_map`).

    weights_map: order                 the file's tensors, in the order they were saved, fill the
                                       model's state dict in its order; every shape is checked
                                       (torch files only: .safetensors sorts its tensors by name)
    weights_map: pkg.module:function   function(state_dict, model) -> state_dict with the model's
                                       names (timm's `filter_fn` signature); model is the one built

`order` is timm's `remap_state_dict` with checks: it fits checkpoints of a re-implementation that
registers the same layers in the same order (efficientnet_pytorch -> timm's tf_efficientnet_*), and
refuses, naming the tensor, a file whose tensors do not pair up. BatchNorm's `num_batches_tracked`
counters are bookkeeping: they are paired apart, so a file with none of them still maps.
"""
from __future__ import annotations

import importlib
from typing import Callable, Iterable

import torch
from torch import nn

from kt_swarm.errors import UserError, first_line, printable

ORDER = "order"
_COUNTER = "num_batches_tracked"


def resolve(how: str, who: str) -> Callable[[dict, nn.Module], dict]:
    """The mapping function a `weights_map` value names (imported now: fail before anything loads)."""
    if how == ORDER:
        return lambda state, model: by_order(state, model, who)
    module_name, _, attr = how.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or whatever the module raises while importing
        raise UserError(f"participant '{who}': cannot import '{module_name}' for weights_map '{how}': {first_line(e)}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"participant '{who}': weights_map '{how}' is not a callable in {module_name}")
    return fn


def map_state(state: dict, model: nn.Module, how: str, who: str, *, adaptable: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """`state` with the model's key names. `adaptable`: keys whose shape may differ (`order` only),
    left for timm to adapt: the first convolution (other input channels), the classifier (other classes)."""
    if how == ORDER:
        return by_order(state, model, who, adaptable)
    rename = resolve(how, who)
    try:
        mapped = rename(dict(state), model)
    except Exception as e:  # the user's function: report it in one line
        raise UserError(f"participant '{who}': weights_map '{how}' failed: {first_line(e)}") from None
    if not isinstance(mapped, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in mapped.items()):
        raise UserError(f"participant '{who}': weights_map '{how}' did not return a dict of name -> tensor")
    return mapped


def by_order(state: dict, model: nn.Module, who: str, adaptable: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Pair the file's tensors with the model's state dict in order; refuse a count or shape mismatch."""
    adaptable = set(adaptable)
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for counters in (False, True):  # weights and buffers, then BatchNorm's counters apart
        theirs = [(k, v) for k, v in state.items() if torch.is_tensor(v) and k.endswith(_COUNTER) == counters]
        ours = [(k, v) for k, v in target.items() if k.endswith(_COUNTER) == counters]
        if counters and len(theirs) != len(ours):  # counters missing (or extra) in the file: keep the model's
            out.update(ours)
            continue
        for (src, value), (dst, want) in zip(theirs, ours):
            fits = value.shape == want.shape or (dst in adaptable and value.dim() == want.dim())
            if not fits:
                raise UserError(f"participant '{who}': weights_map order: the file's '{printable(src)}' {tuple(value.shape)} "
                                f"does not fit the model's '{dst}' {tuple(want.shape)}, its partner in order")
            out[dst] = value
        if len(theirs) != len(ours):
            side, (name, extra) = ("file", theirs[len(ours)]) if len(theirs) > len(ours) else ("model", ours[len(theirs)])
            raise UserError(f"participant '{who}': weights_map order: the file has {len(theirs)} tensors and the model "
                            f"{len(ours)} (num_batches_tracked aside); first unpaired: the {side}'s '{printable(name)}' {tuple(extra.shape)}")
    return out
