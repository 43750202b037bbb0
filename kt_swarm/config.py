"""YAML -> typed, validated config, before anything heavy starts.

Every key is a dataclass field; unknown keys, wrong types and bad values raise
UserError naming the dotted key (`participants.0.lr`). `--set a.b=c` overrides are
applied to the raw mapping first, so they are validated exactly like the file.
"""
from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from kt_swarm.errors import UserError, first_line
from kt_swarm.redaction import refuse_secrets_in


@dataclass
class AugmentConfig:
    shift: int = 2  # random translation in pixels, shared by all participants
    hflip: bool = False


@dataclass
class ScenesConfig:
    """data.kind scenes: the dense tasks' offline test bed (scenes.py), composed from Fashion-MNIST items."""

    train: int = 6000  # scenes from Fashion-MNIST's train items (val and pretrain are carved from them)
    test: int = 1000  # scenes from its test items
    canvas: int = 56  # scene size in pixels (items are 28 x 28)
    max_items: int = 3  # 1 to max_items items per scene


DATA_KINDS = {  # which data kinds each task reads
    "classification": ("fashion_mnist", "folder"),
    "segmentation": ("scenes", "segmentation_folder"),
    "saliency": ("scenes", "saliency_folder"),
}
UNITS = {"classification": ("sample",), "segmentation": ("pixel", "image"), "saliency": ("sample",)}


@dataclass
class DataConfig:
    kind: Literal["fashion_mnist", "folder", "scenes", "segmentation_folder", "saliency_folder"] = "fashion_mnist"
    root: str | None = None  # fashion_mnist, scenes: searched in $KT_SWARM_DATA and the Debian path when unset
    scenes: ScenesConfig = field(default_factory=ScenesConfig)
    ignore_index: int = 255  # segmentation masks: the label of pixels no loss or metric counts (VOC's 255)
    val_fraction: float = 0.1  # carved from train (fixed split_seed) when the data has no val split
    pretrain_fraction: float = 0.0  # part of train reserved for zoo pretraining; transfer gets the rest
    unlabelled_fraction: float = 0.0  # part of the transfer split whose labels are hidden from training
    transfer_samples: int | None = None  # keep only the first N of the transfer split (its order is the split seed's)
    max_per_split: int | None = None  # cap on every split: tiny runs
    split_seed: int = 0
    skip_corrupt: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ZooConfig:
    """How participants with `weights: zoo` (or `zoo: true`) are trained (and cached) on the pretraining split."""

    epochs: int = 10
    lr: float = 2e-3
    weight_decay: float = 0.05
    batch_size: int = 128
    disjoint: bool = False  # each member pretrains on its own disjoint share of the pretraining split
    cache_dir: str | None = None  # default: $KT_SWARM_CACHE or ~/.cache/kt_swarm


@dataclass
class ParticipantConfig:
    name: str
    model: str  # timm name (`resnet18`, `timm/resnet18`) or import path `pkg.module:factory`
    lr: float
    weights: str | None = None  # pretrained (hub) | zoo | none | path to a weight file; default per model kind
    weights_map: str | None = None  # a weight file's names differ: order | pkg.module:function (see weights_map.py)
    zoo: bool = False  # train on the pretraining split first, from `weights` (weights: zoo implies it), cached
    model_args: dict[str, Any] = field(default_factory=dict)
    weight_decay: float | None = None  # default: transfer.weight_decay
    in_chans: int | None = None  # default: the data's channels; 3 gives grayscale to an RGB model as RGB
    input_size: int | None = None  # default: the data's size (trained here) or the model's data config
    mean: list[float] | None = None
    std: list[float] | None = None
    deepspeed: dict[str, Any] | str | None = None  # a DeepSpeed config (mapping, or a ds_config JSON path): see deepspeed_host.py
    ranks: int = 1  # actors (GPUs) hosting the participant; more than 1 needs deepspeed


@dataclass
class TransferConfig:
    strategy: Literal["best", "better", "dml", "kd", "kl_dp", "none"] = "best"  # method.md section 6
    scores: Literal["true_class", "max_confidence"] = "true_class"  # unlabelled samples: max_confidence always
    teacher: str | None = None  # kd: the participant that teaches, frozen (ignored by other strategies)
    trusted_teachers: bool = False  # k may teach j only if k's validation accuracy at the arm's start is >= j's
    unit: Literal["sample", "pixel", "image"] | None = None  # what the partition works on; default: pixel for segmentation, else sample
    calibrate: bool = False  # scores use each participant's temperature, fit on validation at the arm's start
    pseudo_threshold: float = 0.95  # the self-training arm: pseudo-label where the model is at least this sure
    epochs: int = 1
    batch_size: int = 128
    temperature: float = 1.0
    weight: float = 1.0
    detach_teacher: bool = True  # chosen by measurement: see README "Results"
    optimizer: Literal["adam", "adamw"] = "adam"
    schedule: Literal["constant", "cosine"] = "constant"  # learning rate over each arm's steps (every arm alike)
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
class CheckpointConfig:
    """Checkpoint sets in RUN_DIR/checkpoints: every participant's model, optimizer and RNG, plus the run's
    own state, consistent at one step (see checkpoint.py)."""

    every_steps: int | None = 500  # also at every epoch end; null: at epoch ends only
    keep: int = 2  # step checkpoint sets kept; the start set and each participant's best model are kept too


@dataclass
class FaultConfig:
    max_restarts: int = 3  # --engine ray: restarts of one participant's actor over the run before it stops
    max_bad_steps: int = 5  # steps in a row skipped for a NaN/Inf loss or gradient before the run stops


@dataclass
class Config:
    participants: list[ParticipantConfig]
    task: Literal["classification", "segmentation", "saliency"] = "classification"  # tasks.py, method.md section 8
    data: DataConfig = field(default_factory=DataConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    zoo: ZooConfig = field(default_factory=ZooConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)
    control: bool = False  # also train a CE-only copy of every participant (same steps and lr, labelled data only)
    self_training: bool = False  # also train every participant alone on labels + its own confident pseudo-labels
    selection: Literal["best_val", "last"] = "best_val"  # per participant, on the validation split only
    seed: int = 0
    dtype: Literal["float32", "float64"] = "float32"
    autocast: Literal["bfloat16", "float16"] | None = None  # mixed precision: forward passes under torch.autocast
    device: str = "auto"  # auto (cuda where the participant's process sees a GPU, else cpu) | cpu | cuda | cuda:N
    eval_batch_size: int = 1024
    forked_from: dict[str, Any] | None = None  # set by `run --fork`: {run, checkpoint, overrides}


class _ShortRepr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:  # repr() raises ValueError on ints of over 4300 digits
        return super().repr_int(x, level) if x.bit_length() < 1000 else f"<{x.bit_length()}-bit int>"


_repr = _ShortRepr()
_repr.maxstring = _repr.maxother = 80
_repr.maxlevel = 3


def _short(value: Any) -> str:
    """repr() for messages, one short line whatever the value (long strings, huge lists, YAML alias bombs)."""
    text = _repr.repr(value)
    return text if len(text) <= 160 else text[:157] + "..."


def _size(value: Any, limit: int) -> int:
    """How many values `value` holds, aliases counted each time; stops past `limit` (so a recursive one ends)."""
    count, todo = 0, [value]
    while todo and count <= limit:
        item = todo.pop()
        count += 1
        if isinstance(item, dict):
            todo += [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            todo += item
    return count


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
        raise UserError(f"config key {_short(key)}: expected {_type_name(tp)}, got {_short(value)}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise UserError(f"config key {_short(key)}: expected one of {_type_name(tp)}, got {_short(value)}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"config key {_short(key)}: expected a list, got {_short(value)}")
        return [_convert(v, item, f"{key}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict) or not all(isinstance(k, key_tp) for k in value):
            raise UserError(f"config key {_short(key)}: expected a mapping with {_type_name(key_tp)} keys, "
                            f"got {_short(value)}")
        return {k: _convert(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:  # model_args values: plain YAML data, saved back to config.yaml with the run
        if _size(value, 10_000) > 10_000:
            raise UserError(f"config key {_short(key)}: over 10000 values (a YAML alias of itself?), "
                            f"got {_short(value)}")
        return value
    if tp is type(None):
        if value is None:
            return None
    elif dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    elif tp is float:
        # YAML 1.1 reads `3e-4` (no dot) as a string; nan and inf pass `> 0` or `>= 0` checks, so refuse them here
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                number = float(value)
            except (ValueError, OverflowError):
                pass
            else:
                if math.isfinite(number):
                    return number
                raise UserError(f"config key {_short(key)}: expected a finite float, got {_short(value)}")
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if -2**63 <= value < 2**63:  # what torch takes for seeds, sizes and counts
                return value
            raise UserError(f"config key {_short(key)}: expected a 64-bit int, got {_short(value)}")
    elif isinstance(value, tp):
        return value
    raise UserError(f"config key {_short(key)}: expected {_type_name(tp)}, got {_short(value)}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = f"'{prefix}'" if prefix else "the top level"
    if not isinstance(raw, dict):
        raise UserError(f"config {where}: expected a mapping, got {_short(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            known = ", ".join(fields)
            shown = key if isinstance(key, str) else _short(key)  # YAML keys can also be null, 1, a date...
            raise UserError(f"config key {_short(f'{prefix}.{shown}' if prefix else shown)} is unknown (known: {known})")
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
        if p.in_chans not in (None, 1, 3):
            raise UserError(f"config key 'participants.{i}.in_chans': expected 1 or 3, got {p.in_chans}")
        if p.weight_decay is not None and p.weight_decay < 0:
            raise UserError(f"config key 'participants.{i}.weight_decay': must be >= 0, got {p.weight_decay}")
        if [n.lower() for n in names].count(p.name.lower()) > 1:  # case too: on some file systems Vit.pt is vit.pt
            raise UserError(f"config key 'participants.{i}.name': {_short(p.name)} is used twice")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", p.name):  # it names files, metrics and W&B keys
            raise UserError(f"config key 'participants.{i}.name': {_short(p.name)} may hold only letters, digits, "
                            f"'_', '.' and '-' (up to 64, starting with a letter or digit)")
        if p.weights_map is not None:
            if p.weights_map != "order" and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", p.weights_map):
                raise UserError(f"config key 'participants.{i}.weights_map': expected order or pkg.module:function, "
                                f"got {_short(p.weights_map)}")
            if p.weights in (None, "pretrained", "zoo", "none"):
                raise UserError(f"config key 'participants.{i}.weights_map': renames a weight file's tensors, but "
                                f"weights is {p.weights or 'unset'} (set it to the file)")
            if p.weights_map == "order" and p.weights.endswith(".safetensors"):
                raise UserError(f"config key 'participants.{i}.weights_map': order needs the order the tensors were "
                                f"saved in, which .safetensors does not keep; name a pkg.module:function instead")
        for stat in ("mean", "std"):
            if getattr(p, stat) is not None and len(getattr(p, stat)) not in (1, 3):
                raise UserError(f"config key 'participants.{i}.{stat}': expected 1 or 3 values")
        _check_deepspeed(cfg, i, p)
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
        ("data.transfer_samples", cfg.data.transfer_samples),
        ("checkpoint.every_steps", cfg.checkpoint.every_steps),
        ("checkpoint.keep", cfg.checkpoint.keep),
        ("fault.max_bad_steps", cfg.fault.max_bad_steps),
    ]:
        positive(key, value)
    r = cfg.resources
    for key, value in [("resources.gpus_per_participant", r.gpus_per_participant), ("resources.cpus_per_participant", r.cpus_per_participant),
                       ("fault.max_restarts", cfg.fault.max_restarts)]:
        if value is not None and value < 0:
            raise UserError(f"config key '{key}': must be >= 0, got {value}")
    for name, amount in r.custom.items():
        if amount <= 0:
            raise UserError(f"config key {_short(f'resources.custom.{name}')}: must be a positive number, got {amount}")
    positive("placement.timeout_s", cfg.placement.timeout_s)
    if cfg.transfer.weight < 0:
        raise UserError(f"config key 'transfer.weight': must be >= 0, got {cfg.transfer.weight}")
    for key, value in [("data.val_fraction", cfg.data.val_fraction), ("data.pretrain_fraction", cfg.data.pretrain_fraction)]:
        if not 0 <= value < 1:
            raise UserError(f"config key '{key}': must be in [0, 1), got {value}")
    if not 0 <= cfg.data.unlabelled_fraction < 1:
        raise UserError(f"config key 'data.unlabelled_fraction': must be in [0, 1), got {cfg.data.unlabelled_fraction}")
    if not 0 < cfg.transfer.pseudo_threshold <= 1:
        raise UserError(f"config key 'transfer.pseudo_threshold': must be in (0, 1], got {cfg.transfer.pseudo_threshold}")
    if cfg.transfer.strategy == "kd":
        if cfg.transfer.teacher is None:
            raise UserError("config key 'transfer.teacher': strategy kd needs a teacher (the name of a participant)")
        if len(cfg.participants) < 2:
            raise UserError("config key 'transfer.strategy': kd needs at least two participants (a teacher and a student)")
    if cfg.transfer.teacher is not None and cfg.transfer.teacher not in names:
        raise UserError(f"config key 'transfer.teacher': {_short(cfg.transfer.teacher)} is not a participant "
                        f"(participants: {', '.join(names)})")
    if cfg.data.val_fraction + cfg.data.pretrain_fraction >= 1:
        raise UserError("config keys 'data.val_fraction' + 'data.pretrain_fraction' leave no transfer data")
    if cfg.data.augment.shift < 0:
        raise UserError(f"config key 'data.augment.shift': must be >= 0, got {cfg.data.augment.shift}")
    if not re.fullmatch(r"cpu|cuda|auto|cuda:[0-9]+", cfg.device):  # not `cuda:²` or `cuda:`: torch.device refuses them
        raise UserError(f"config key 'device': expected cpu, cuda, cuda:N or auto, got {_short(cfg.device)}")
    _check_task(cfg)
    if cfg.autocast and cfg.dtype != "float32":
        raise UserError(f"config key 'autocast': needs dtype float32 (the master weights), got dtype {cfg.dtype}")


DEEPSPEED_OWNED = ("optimizer", "scheduler")  # the run sets them: its optimizer and lr, its schedule


def _check_deepspeed(cfg: Config, i: int, p: ParticipantConfig) -> None:
    """A DeepSpeed participant's config, read (a JSON path becomes its mapping, so config.yaml records what
    ran) and checked against the swarm before anything starts; kt_swarm fills in what it owns (the batch
    sizes, steps_per_print) in deepspeed_host.ds_config."""
    key = f"participants.{i}"
    if p.ranks < 1:
        raise UserError(f"config key '{key}.ranks': must be at least 1, got {p.ranks}")
    if p.deepspeed is None:
        if p.ranks > 1:
            raise UserError(f"config key '{key}.ranks': {p.ranks} ranks need participants.{i}.deepspeed (a DeepSpeed config)")
        return
    if isinstance(p.deepspeed, str):
        import json

        try:
            p.deepspeed = json.loads(Path(p.deepspeed).read_text())
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"config key '{key}.deepspeed': cannot read '{p.deepspeed}': {first_line(e)}") from None
        except json.JSONDecodeError as e:
            raise UserError(f"config key '{key}.deepspeed': '{p.deepspeed}' is not JSON ({e.msg}, line {e.lineno})") from None
        if not isinstance(p.deepspeed, dict):
            raise UserError(f"config key '{key}.deepspeed': the JSON file must hold a mapping")
    ds, t = p.deepspeed, cfg.transfer
    for owned in DEEPSPEED_OWNED:
        if owned in ds:
            raise UserError(f"config key '{key}.deepspeed.{owned}': the run sets it (transfer.optimizer, the "
                            f"participant's lr and weight_decay, transfer.schedule); remove it")
    stage = (ds.get("zero_optimization") or {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise UserError(f"config key '{key}.deepspeed.zero_optimization.stage': expected 0, 1, 2 or 3, got {_short(stage)}")
    if t.batch_size % p.ranks:
        raise UserError(f"config key '{key}.ranks': transfer.batch_size {t.batch_size} does not split into {p.ranks} equal shares")
    wanted = {"train_batch_size": t.batch_size, "train_micro_batch_size_per_gpu": t.batch_size // p.ranks,
              "gradient_accumulation_steps": 1}
    for name, value in wanted.items():
        if name in ds and ds[name] != value:
            raise UserError(f"config key '{key}.deepspeed.{name}': {_short(ds[name])} contradicts the swarm's "
                            f"{value} (transfer.batch_size {t.batch_size} over {p.ranks} rank(s)); remove it")
    if (ds.get("fp16") or {}).get("enabled"):
        if cfg.device == "cpu":
            raise UserError(f"config key '{key}.deepspeed.fp16': DeepSpeed has no fp16 on the CPU (device: cpu); use bf16")
        if cfg.dtype != "float32":
            raise UserError(f"config key '{key}.deepspeed.fp16': needs dtype float32 (the master weights)")
    if (ds.get("bf16") or {}).get("enabled") and cfg.dtype != "float32":
        raise UserError(f"config key '{key}.deepspeed.bf16': needs dtype float32 (the master weights)")
    if cfg.dtype == "float64":
        raise UserError(f"config key 'dtype': DeepSpeed participants ('{p.name}') train in float32 at most "
                        f"(ZeRO reduces and keeps its master weights in float32)")
    if stage == 3 and t.strategy == "kl_dp":
        raise UserError(f"config key '{key}.deepspeed.zero_optimization.stage': kl_dp's frozen start copy of a "
                        f"ZeRO-3 (partitioned) participant is not supported; use stage 0-2")


def _check_task(cfg: Config) -> None:
    """The task's data kind and unit; what the dense tasks do not have (no unlabelled pixels, no class scores
    to calibrate). Sets transfer.unit to the task's default when unset."""
    task, t = cfg.task, cfg.transfer
    if cfg.data.kind not in DATA_KINDS[task]:
        raise UserError(f"config key 'data.kind': task {task} reads {' or '.join(DATA_KINDS[task])}, got {cfg.data.kind}")
    t.unit = t.unit or UNITS[task][0]
    if t.unit not in UNITS[task]:
        raise UserError(f"config key 'transfer.unit': task {task} partitions by {' or '.join(UNITS[task])}, got {t.unit}")
    if task == "classification":
        return
    for key, value, default in [("data.unlabelled_fraction", cfg.data.unlabelled_fraction, 0.0),
                                ("transfer.scores", t.scores, "true_class"), ("transfer.calibrate", t.calibrate, False),
                                ("self_training", cfg.self_training, False)]:
        if value != default:
            raise UserError(f"config key '{key}': not available for task {task} (classification only), got {value}")
    s = cfg.data.scenes
    for key, value in [("data.scenes.train", s.train), ("data.scenes.test", s.test), ("data.scenes.max_items", s.max_items)]:
        if value <= 0:
            raise UserError(f"config key '{key}': must be positive, got {value}")
    if s.canvas < 28:
        raise UserError(f"config key 'data.scenes.canvas': must be at least 28 (an item's size), got {s.canvas}")
    if not 0 <= cfg.data.ignore_index <= 255:
        raise UserError(f"config key 'data.ignore_index': masks are 8-bit, expected 0-255, got {cfg.data.ignore_index}")


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one `a.b.0.c=value` to the raw mapping; the value is parsed as YAML (3e-4, true, [1, 2])."""
    if "=" not in assignment:
        raise UserError(f"--set {_short(assignment)}: expected KEY=VALUE")
    path, text = assignment.split("=", 1)
    try:
        value = yaml.safe_load(text) if text else None
    except Exception:  # not YAML (PyYAML's constructors raise anything on `!!int x`, 2001-02-30, 5000 digits)
        value = text
    parts = path.strip().split(".")
    if not all(parts):
        raise UserError(f"--set {_short(assignment)}: empty key")
    if "*" in parts:  # `participants.*.lr=1e-4`: every item of the list
        star = parts.index("*")
        node: Any = raw
        for part in parts[:star]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, list):
            raise UserError(f"--set {_short(path)}: {_short('.'.join(parts[:star]))} is not a list")
        for i in range(len(node)):
            apply_override(raw, ".".join(parts[:star] + [str(i)] + parts[star + 1 :]) + "=" + text)
        return
    node = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        so_far = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if part not in map(str, range(len(node))):
                raise UserError(f"--set {_short(path)}: {_short(so_far)} is not an index of a list of {len(node)}")
            part = int(part)
        elif isinstance(node, dict):
            if not last and part not in node:
                node[part] = {}
        else:
            raise UserError(f"--set {_short(path)}: {_short('.'.join(parts[:depth]))} is not a mapping or a list")
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
    refuse_secrets_in(to_dict(cfg))
    return cfg


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"config file '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"config file '{path}' cannot be read: {first_line(e)}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())[:200]  # one line; it can quote a whole tag
        raise UserError(f"config file '{path}': YAML syntax error{where}: {problem}") from None
    except RecursionError:
        raise UserError(f"config file '{path}': YAML nested too deeply") from None
    except Exception as e:  # PyYAML's constructors raise anything on `!!int x`, `!!timestamp x`, 2001-02-30, 5000 digits
        raise UserError(f"config file '{path}': bad YAML value ({type(e).__name__}): {first_line(e)[:200]}") from None
    return parse_config(raw, overrides)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)
