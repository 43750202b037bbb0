"""YAML -> typed, validated config, before anything heavy starts.

Every key is a dataclass field; unknown keys, wrong types and bad values raise
UserError naming the dotted key (`participants.0.lr`). `--set a.b=c` overrides are
applied to the raw mapping first, so they are validated exactly like the file.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from kt_swarm.errors import UserError


@dataclass
class AugmentConfig:
    shift: int = 2  # random translation in pixels, shared by all participants
    hflip: bool = False


@dataclass
class DataConfig:
    kind: Literal["fashion_mnist", "folder"] = "fashion_mnist"
    root: str | None = None  # fashion_mnist: searched in $KT_SWARM_DATA and the Debian path when unset
    val_fraction: float = 0.1  # carved from train (fixed split_seed) when the data has no val split
    pretrain_fraction: float = 0.0  # part of train reserved for zoo pretraining; transfer gets the rest
    max_per_split: int | None = None  # cap on every split: tiny runs
    split_seed: int = 0
    skip_corrupt: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ZooConfig:
    """How participants with `weights: zoo` are pretrained (and cached) on the pretraining split."""

    epochs: int = 10
    lr: float = 2e-3
    weight_decay: float = 0.05
    batch_size: int = 128
    cache_dir: str | None = None  # default: $KT_SWARM_CACHE or ~/.cache/kt_swarm


@dataclass
class ParticipantConfig:
    name: str
    model: str  # timm name (`resnet18`, `timm/resnet18`) or import path `pkg.module:factory`
    lr: float
    weights: str | None = None  # pretrained (hub) | zoo | none | path to a weight file; default per model kind
    model_args: dict[str, Any] = field(default_factory=dict)
    weight_decay: float | None = None  # default: transfer.weight_decay
    input_size: int | None = None  # default: the data's size (trained here) or the model's data config
    mean: list[float] | None = None
    std: list[float] | None = None


@dataclass
class TransferConfig:
    epochs: int = 1
    batch_size: int = 128
    temperature: float = 1.0
    weight: float = 1.0
    detach_teacher: bool = True  # chosen by measurement: see README "Results"
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = 1e-5
    log_every: int = 1
    exchange_dtype: Literal["float16", "bfloat16"] | None = None  # --engine ray: logits sent at this precision (default: the model's)


@dataclass
class ResourcesConfig:
    """What each participant's Ray actor reserves (--engine ray)."""

    gpus_per_participant: float | None = None  # default: 1 when the cluster has GPUs, else 0; fractions allowed
    cpus_per_participant: float | None = None  # default: the cluster's CPUs shared out (at most 1 each when short)
    custom: dict[str, float] = field(default_factory=dict)  # custom resources each participant needs


@dataclass
class PlacementConfig:
    """How the participants' actors are reserved together: one placement group, one bundle each."""

    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    timeout_s: float = 120.0  # give up (one line, exit 2) when the cluster cannot place them


@dataclass
class WandbConfig:
    """Weights & Biases: one W&B run per swarm run (see tracking.py)."""

    project: str = "kt_swarm"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    name: str | None = None  # default: W&B's generated name
    mode: Literal["auto", "online", "offline"] = "auto"  # auto: online with an API key, else offline; WANDB_MODE wins


@dataclass
class TrackingConfig:
    wandb: WandbConfig | None = None  # set (even to {}) to track the run in W&B


@dataclass
class Config:
    participants: list[ParticipantConfig]
    data: DataConfig = field(default_factory=DataConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    zoo: ZooConfig = field(default_factory=ZooConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    control: bool = False  # also train a CE-only copy of every participant (same data, steps, lr)
    selection: Literal["best_val", "last"] = "best_val"  # per participant, on the validation split only
    seed: int = 0
    dtype: Literal["float32", "float64"] = "float32"
    autocast: Literal["bfloat16", "float16"] | None = None  # mixed precision: forward passes under torch.autocast
    device: str = "auto"  # auto (cuda where the participant's process sees a GPU, else cpu) | cpu | cuda | cuda:N
    eval_batch_size: int = 1024


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return origin.__name__
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(value, option, key)
            except UserError:
                continue
        raise UserError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise UserError(f"config key '{key}': expected one of {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"config key '{key}': expected a list, got {value!r}")
        return [_convert(v, item, f"{key}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
    elif dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `3e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    raise UserError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = f"'{prefix}'" if prefix else "the top level"
    if not isinstance(raw, dict):
        raise UserError(f"config {where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            known = ", ".join(fields)
            raise UserError(f"config key '{prefix + '.' if prefix else ''}{key}' is unknown (known: {known})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in raw:
            kwargs[name] = _convert(raw[name], hints[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"config key '{key}' is required")
    return cls(**kwargs)


def _check(cfg: Config) -> None:
    def positive(key: str, value: float | int | None) -> None:
        if value is not None and not value > 0:
            raise UserError(f"config key '{key}': must be positive, got {value}")

    if not cfg.participants:
        raise UserError("config key 'participants': at least one participant is needed")
    names = [p.name for p in cfg.participants]
    for i, p in enumerate(cfg.participants):
        positive(f"participants.{i}.lr", p.lr)
        positive(f"participants.{i}.input_size", p.input_size)
        if p.weight_decay is not None and p.weight_decay < 0:
            raise UserError(f"config key 'participants.{i}.weight_decay': must be >= 0, got {p.weight_decay}")
        if names.count(p.name) > 1:
            raise UserError(f"config key 'participants.{i}.name': '{p.name}' is used twice")
        for stat in ("mean", "std"):
            if getattr(p, stat) is not None and len(getattr(p, stat)) not in (1, 3):
                raise UserError(f"config key 'participants.{i}.{stat}': expected 1 or 3 values")
    for key, value in [
        ("transfer.epochs", cfg.transfer.epochs),
        ("transfer.batch_size", cfg.transfer.batch_size),
        ("transfer.temperature", cfg.transfer.temperature),
        ("transfer.log_every", cfg.transfer.log_every),
        ("zoo.epochs", cfg.zoo.epochs),
        ("zoo.lr", cfg.zoo.lr),
        ("zoo.batch_size", cfg.zoo.batch_size),
        ("eval_batch_size", cfg.eval_batch_size),
        ("data.max_per_split", cfg.data.max_per_split),
    ]:
        positive(key, value)
    r = cfg.resources
    for key, value in [("resources.gpus_per_participant", r.gpus_per_participant), ("resources.cpus_per_participant", r.cpus_per_participant)]:
        if value is not None and value < 0:
            raise UserError(f"config key '{key}': must be >= 0, got {value}")
    for name, amount in r.custom.items():
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount <= 0:
            raise UserError(f"config key 'resources.custom.{name}': must be a positive number, got {amount!r}")
    positive("placement.timeout_s", cfg.placement.timeout_s)
    if cfg.transfer.weight < 0:
        raise UserError(f"config key 'transfer.weight': must be >= 0, got {cfg.transfer.weight}")
    for key, value in [("data.val_fraction", cfg.data.val_fraction), ("data.pretrain_fraction", cfg.data.pretrain_fraction)]:
        if not 0 <= value < 1:
            raise UserError(f"config key '{key}': must be in [0, 1), got {value}")
    if cfg.data.val_fraction + cfg.data.pretrain_fraction >= 1:
        raise UserError("config keys 'data.val_fraction' + 'data.pretrain_fraction' leave no transfer data")
    if cfg.data.augment.shift < 0:
        raise UserError(f"config key 'data.augment.shift': must be >= 0, got {cfg.data.augment.shift}")
    if cfg.device not in ("cpu", "cuda", "auto") and not cfg.device.startswith("cuda:"):
        raise UserError(f"config key 'device': expected cpu, cuda, cuda:N or auto, got {cfg.device!r}")
    if cfg.autocast and cfg.dtype != "float32":
        raise UserError(f"config key 'autocast': needs dtype float32 (the master weights), got dtype {cfg.dtype}")


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one `a.b.0.c=value` to the raw mapping; the value is parsed as YAML (3e-4, true, [1, 2])."""
    if "=" not in assignment:
        raise UserError(f"--set {assignment!r}: expected KEY=VALUE")
    path, text = assignment.split("=", 1)
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        value = text
    parts = path.strip().split(".")
    if not all(parts):
        raise UserError(f"--set {assignment!r}: empty key")
    if "*" in parts:  # `participants.*.lr=1e-4`: every item of the list
        star = parts.index("*")
        node: Any = raw
        for part in parts[:star]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, list):
            raise UserError(f"--set {path}: '{'.'.join(parts[:star])}' is not a list")
        for i in range(len(node)):
            apply_override(raw, ".".join(parts[:star] + [str(i)] + parts[star + 1 :]) + "=" + text)
        return
    node = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        so_far = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(f"--set {path}: '{so_far}' is not an index of a list of {len(node)}")
            part = int(part)
        elif isinstance(node, dict):
            if not last and part not in node:
                node[part] = {}
        else:
            raise UserError(f"--set {path}: '{'.'.join(parts[:depth])}' is not a mapping or a list")
        if last:
            node[part] = value
        else:
            node = node[part]


def parse_config(raw: Any, overrides: list[str] = ()) -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError("config: expected a mapping at the top level")
    for assignment in overrides:
        apply_override(raw, assignment)
    cfg = _build(Config, raw, "")
    _check(cfg)
    return cfg


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"config file '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"config file '{path}' cannot be read: {e}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"config file '{path}': YAML syntax error{where}: {problem}") from None
    return parse_config(raw, overrides)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)
