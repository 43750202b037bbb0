"""Participant models by name: timm names, local weight files, or import paths.

    resnet18 / timm/resnet18     timm.create_model; weights default to the hub's pretrained ones
    weights: path/to/file        timm's pretrained_cfg_overlay(file=...) loads a local file
    weights_map: order | m:fn    the file's key names differ (a third-party checkpoint): renamed
                                 to the model's first (weights_map.py), then loaded as timm would
    pkg.module:factory           factory(num_classes=..., in_chans=..., **model_args)

Every model is built for the data's channels and classes; timm adapts a pretrained
first convolution and re-initialises the classifier when those differ. For the dense tasks
(segmentation, saliency) a timm model is built as a backbone (`features_only`) under
decoders.DenseModel; an import path's factory returns the whole dense model itself.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from kt_swarm.config import ParticipantConfig, is_import_path
from kt_swarm.data import Preprocess
from kt_swarm.errors import UserError, first_line, one_line
from kt_swarm.weights_map import map_state, resolve


def check_model_name(spec: ParticipantConfig, task: str = "classification", given: bool = False) -> None:
    """Fail fast on a model that cannot exist, before any data is loaded (`given`: an nn.Module was handed to
    kt_swarm.run for this participant)."""
    if spec.model == "given" or given:
        if task == "language_model":
            raise UserError(f"participant '{spec.name}': kt_swarm.run(models=...) takes vision models; a language "
                            f"model is a directory, a .gguf file or an import path")
        if not given:
            raise UserError(f"participant '{spec.name}': model: given is an nn.Module handed to kt_swarm.run(models=...);"
                            f" run (or resume) it from Python with the same models")
        return
    if task == "language_model":  # a directory, a GGUF file or an import path (lm.py); its files are read later
        if is_import_path(spec.model):
            import_factory(spec.model, spec.name)
        return
    if ":" in spec.model:
        import_factory(spec.model, spec.name)
    elif not _timm().is_model(spec.model.removeprefix("timm/")):
        raise UserError(f"participant '{spec.name}': unknown model '{spec.model}' (not a timm model name or pkg.module:factory)")
    if spec.weights_map:
        resolve(spec.weights_map, spec.name)


def _timm():
    """timm, imported on first use: it pulls in torchvision and torch._dynamo (seconds), which every Ray
    actor would pay at start even when its model is not a timm one."""
    import timm

    return timm


def default_weights(spec: ParticipantConfig) -> str:
    """`pretrained` for timm names and model files (what a timm or transformers user expects), `none` for
    import paths."""
    if spec.weights:
        return spec.weights
    if spec.model == "given":  # built by the user's code, with whatever weights it has: counts as pretrained
        return "given"
    return "none" if is_import_path(spec.model) else "pretrained"



def trains_first(spec: ParticipantConfig) -> bool:
    """Whether the participant is trained on the pretraining split before transfer (the zoo step): every
    `weights: zoo` member, and a pretrained one with `zoo: true` (a hub model fine-tuned on the task)."""
    return spec.zoo or default_weights(spec) == "zoo"


def import_factory(path: str, who: str):
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or whatever the module raises while importing
        raise UserError(f"participant '{who}': cannot import '{module_name}' for model '{path}': {e}") from None
    factory = getattr(module, attr, None) if attr else None
    if not callable(factory):
        raise UserError(f"participant '{who}': '{path}' is not a callable in {module_name}")
    return factory


def create_model(spec: ParticipantConfig, *, num_classes: int, in_chans: int, seed: int,
                 task: str = "classification") -> nn.Module:
    """Build one participant's model. Random initialisation is seeded, so a zoo member is reproducible."""
    weights = default_weights(spec)
    torch.manual_seed(seed)
    dense = task != "classification"
    if dense and spec.weights_map and ":" not in spec.model:
        raise UserError(f"participant '{spec.name}': weights_map is for classification models (task {task} builds "
                        f"a timm backbone; load a renamed file through a pkg.module:factory instead)")
    if ":" in spec.model:
        factory = import_factory(spec.model, spec.name)
        try:
            model = factory(**{"num_classes": num_classes, "in_chans": in_chans, **spec.model_args})
        except Exception as e:  # the factory is the user's code: report, don't crash
            raise UserError(f"participant '{spec.name}': model '{spec.model}' failed to build: {first_line(e)}") from None
        if not isinstance(model, nn.Module):
            raise UserError(f"participant '{spec.name}': '{spec.model}' did not return a torch.nn.Module")
        if weights not in ("none", "zoo"):
            load_weight_file(model, weights, spec.name, spec.weights_map)
        return model

    check_model_name(spec)
    name = spec.model.removeprefix("timm/")
    kwargs = {"num_classes": num_classes, "in_chans": in_chans, **({"features_only": True} if dense else {}),
              **spec.model_args}
    mapped_file = None
    if weights == "pretrained":
        kwargs["pretrained"] = True
    elif weights not in ("none", "zoo") and spec.weights_map:
        mapped_file = read_state(weights, spec.name)  # the model is built bare, then loaded below
    elif weights not in ("none", "zoo"):
        path = Path(weights)
        if not path.is_file():
            raise UserError(f"participant '{spec.name}': weight file '{weights}' does not exist")
        # Tell timm how many classes the file was trained for, so a head that already fits is
        # kept and a foreign one (say ImageNet's 1000) is replaced.
        overlay = dict(file=str(path.resolve()))
        file_classes = _classifier_width(read_state(path, spec.name), name)
        if file_classes:
            overlay["num_classes"] = file_classes
        kwargs.update(pretrained=True, pretrained_cfg_overlay=overlay)
    try:
        model = _timm().create_model(name, **kwargs)
    except TypeError as e:
        raise UserError(f"participant '{spec.name}': model '{spec.model}' rejected model_args: {first_line(e)}") from None
    except Exception as e:  # hub errors, timm's own asserts on bad model_args
        if weights == "pretrained" and isinstance(e, (OSError, RuntimeError, ValueError)):
            raise UserError(
                f"participant '{spec.name}': cannot load pretrained weights for '{spec.model}' "
                f"(offline? set weights: none, zoo, or a local file): {first_line(e)}"
            ) from None
        raise UserError(f"participant '{spec.name}': cannot build '{spec.model}': {first_line(e)}") from None
    if mapped_file is not None:
        _load_mapped_into_timm(model, mapped_file, spec, name, num_classes=num_classes, in_chans=in_chans)
    if dense:
        from kt_swarm.decoders import DenseModel

        return DenseModel(model, num_classes if task == "segmentation" else 1, squeeze=task == "saliency")
    return model


def _load_mapped_into_timm(model: nn.Module, state: dict, spec: ParticipantConfig, timm_name: str, *,
                           num_classes: int, in_chans: int) -> None:
    """A third-party file, renamed by `weights_map`, loaded the way timm loads its own pretrained weights:
    a first convolution for other input channels is adapted, a classifier for other classes replaced."""
    cfg = dict(model.pretrained_cfg)

    def names(key: str) -> tuple[str, ...]:  # pretrained_cfg holds one module name or several
        value = cfg.get(key) or ()
        return (value,) if isinstance(value, str) else tuple(value)

    adaptable = [f"{c}.weight" for c in names("first_conv")]
    adaptable += [f"{c}.{p}" for c in names("classifier") for p in ("weight", "bias")]
    mapped = map_state(state, model, spec.weights_map, spec.name, adaptable=adaptable)
    cfg.update(state_dict=mapped, source=None)  # timm's highest-priority source: this state dict
    file_classes = _classifier_width(mapped, timm_name)
    if file_classes:
        cfg["num_classes"] = file_classes
    try:
        _timm().models.load_pretrained(model, pretrained_cfg=cfg, num_classes=num_classes, in_chans=in_chans)
    except Exception as e:  # load_state_dict's missing/unexpected keys, timm's checks of the first convolution
        raise UserError(f"participant '{spec.name}': weight file '{spec.weights}' renamed by weights_map "
                        f"'{spec.weights_map}' does not fit the model: {one_line(e)}") from None


def read_state(path: str | Path, who: str) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file (weights_only: a weight file never runs code)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"participant '{who}': weight file '{path}' does not exist")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p))
        state = torch.load(p, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise ValueError("not a state dict")
        return state
    except Exception as e:  # any failure here is the file's fault: say which file
        raise UserError(f"participant '{who}': cannot load weight file '{path}': {first_line(e)}") from None


def _classifier_width(state: dict[str, torch.Tensor], timm_name: str) -> int | None:
    classifier = _timm().models.get_pretrained_cfg(timm_name)
    key = f"{getattr(classifier, 'classifier', None) or 'head'}.weight"
    return int(state[key].shape[0]) if key in state and state[key].dim() >= 1 else None


def load_weight_file(model: nn.Module, path: str, who: str, weights_map: str | None = None) -> None:
    """A weight file into an import-path model, strictly; `weights_map` renames its keys first."""
    state = read_state(path, who)
    if weights_map:
        state = map_state(state, model, weights_map, who)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"participant '{who}': weight file '{path}' does not fit the model: {one_line(e)}") from None


def preprocess_for(model: nn.Module, spec: ParticipantConfig, *, in_chans: int, image_size: int, dtype: torch.dtype) -> Preprocess:
    """Input size and mean/std from the model's timm data config, overridable per participant.

    A model trained here (zoo, none) sees the data at its native size; a pretrained one
    at the size its data config names.
    """
    cfg = _timm().data.resolve_model_data_config(model) if hasattr(model, "pretrained_cfg") else {}
    pretrained = default_weights(spec) not in ("none", "zoo")
    size = spec.input_size or (cfg.get("input_size", (0, image_size))[-1] if pretrained else image_size)

    def fit(values, default):
        values = tuple(values if values is not None else cfg.get(default[0], default[1]))
        if len(values) == in_chans:
            return values
        return (sum(values) / len(values),) * in_chans if in_chans == 1 else (values[0],) * in_chans

    mean = fit(spec.mean, ("mean", (0.5,)))
    std = fit(spec.std, ("std", (0.5,)))
    return Preprocess(in_chans=in_chans, input_size=int(size), mean=mean, std=std, dtype=dtype)
