"""YAML -> typed, validated config (pydantic models), before anything heavy starts.

Every key is a model field; unknown keys, wrong types and bad values raise UserError in one line naming
the dotted key (`participants.0.lr`), built from pydantic's first error. `--set a.b=c` overrides are
applied to the raw mapping first, so they are validated exactly like the file. Config.model_json_schema()
is the file format (`kt-swarm schema`; configs/schema.json, docs/config.md).
"""
from __future__ import annotations

import json
import re
import reprlib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, AllowInfNan, BaseModel, BeforeValidator, ConfigDict, Field, Strict,
                      ValidationError, model_validator)
from pydantic_core import PydanticCustomError

from kt_swarm.errors import UserError, first_line
from kt_swarm.redaction import refuse_secrets_in


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


def _bad(message: str, key: str = "") -> PydanticCustomError:
    """A failed check, said our way; `key` (dotted) is relative to where the validator runs."""
    return PydanticCustomError("kt_swarm", "{message}", {"message": message, "key": key})


# --- YAML's scalars, strictly: a bool is not a number, a number is not a string ---------------------

def _yaml_float(value: Any) -> Any:
    """YAML 1.1 reads `3e-4` (no dot) as a string: a float field takes it as the number it spells."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _int64(value: int) -> int:
    if -2**63 <= value < 2**63:  # what torch takes for seeds, sizes and counts
        return value
    raise _bad(f"expected a 64-bit int, got {_short(value)}")


def _capped(value: Any) -> Any:
    """Plain YAML data (saved back with the run): at most 10000 values, aliases counted each time, so a
    YAML alias bomb or a mapping holding itself is refused (the count stops past the limit)."""
    count, todo = 0, [value]
    while todo and count <= 10_000:
        item = todo.pop()
        count += 1
        if isinstance(item, dict):
            todo += [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            todo += item
    if count > 10_000:
        raise _bad(f"over 10000 values (a YAML alias of itself?), got {_short(value)}")
    return value


def _float(**bounds: float) -> Any:
    """A float (bounds on the number itself: where pydantic writes them into the JSON schema as it should)."""
    return Annotated[float, Strict(), AllowInfNan(False), Field(**bounds), BeforeValidator(_yaml_float)]  # nan, inf pass `> 0`


def _int(**bounds: int) -> Any:
    return Annotated[int, Strict(), Field(**bounds), AfterValidator(_int64)]


def _fraction(low: str, high: str) -> Any:
    """A float in [0, 1), (0, 1]...: `low` is '[' or '(', `high` is ']' or ')'."""
    def check(value: float) -> float:
        if (value >= 0 if low == "[" else value > 0) and (value <= 1 if high == "]" else value < 1):
            return value
        raise _bad(f"must be in {low}0, 1{high}, got {value}")
    bounds = {"minimum" if low == "[" else "exclusiveMinimum": 0, "maximum" if high == "]" else "exclusiveMaximum": 1}
    return Annotated[Float, AfterValidator(check), Field(json_schema_extra=bounds)]


def _matching(pattern: str, message: str) -> Any:
    """A string matching `pattern` whole; else `message` with {value} filled in."""
    def check(value: str) -> str:
        if re.fullmatch(pattern, value):
            return value
        raise _bad(message.format(value=_short(value)))
    return Annotated[Str, AfterValidator(check), Field(json_schema_extra={"pattern": f"^(?:{pattern})$"})]


Float, Positive, NonNegative = _float(), _float(gt=0), _float(ge=0)
Int, Count, NonNegativeInt = _int(), _int(gt=0), _int(ge=0)
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
Data = Annotated[dict[Str, Any], AfterValidator(_capped)]
Fraction, Probability = _fraction("[", ")"), _fraction("(", "]")
Name = _matching(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", "{value} may hold only letters, digits, '_', '.' and '-' "
                 "(up to 64, starting with a letter or digit)")  # it names files, metrics and W&B keys
Device = _matching(r"cpu|cuda|auto|cuda:[0-9]+", "expected cpu, cuda, cuda:N or auto, got {value}")  # not `cuda:²`


class Section(BaseModel):
    """A mapping of known keys: anything else is named, with the keys that are known."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, raw: Any) -> Any:
        if isinstance(raw, cls):
            return raw
        if not isinstance(raw, dict):
            raise _bad(f"expected a mapping, got {_short(raw)}")
        for key in raw:
            if key not in cls.model_fields:
                shown = key if isinstance(key, str) else _short(key)  # YAML keys can also be null, 1, a date...
                raise PydanticCustomError("unknown", "unknown key", {"key": shown, "known": ", ".join(cls.model_fields)})
        return raw


# --- the sections -------------------------------------------------------------------------------------

class AugmentConfig(Section):
    """Augmentation of the transfer batches, drawn from (seed, epoch, step): the same for every participant."""

    shift: NonNegativeInt = Field(2, description="random translation in pixels, shared by all participants")
    hflip: Bool = Field(False, description="random horizontal flips")


class ScenesConfig(Section):
    """data.kind scenes: the dense tasks' offline test bed (scenes.py), composed from Fashion-MNIST items."""

    train: Count = Field(6000, description="scenes from Fashion-MNIST's train items (val and pretrain are carved from them)")
    test: Count = Field(1000, description="scenes from its test items")
    canvas: Int = Field(56, ge=28, description="scene size in pixels (items are 28 x 28)")
    max_items: Count = Field(3, description="1 to max_items items per scene")


DATA_KINDS = {  # which data kinds each task reads (python, huggingface: sources.py)
    "classification": ("fashion_mnist", "folder", "python", "huggingface"),
    "segmentation": ("scenes", "segmentation_folder", "python", "huggingface"),
    "saliency": ("scenes", "saliency_folder", "python", "huggingface"),
    "language_model": ("text",),
}
UNITS = {"classification": ("sample",), "segmentation": ("pixel", "image"), "saliency": ("sample",),
         "language_model": ("token", "sequence")}


class TextConfig(Section):
    """data.kind text: plain text in named domains (text.py), tokenised once with the participants' tokenizer
    and cut into blocks; split into train / val / test by document with the split seed."""

    domains: dict[Name, Str] = Field({}, description="domain name -> a text file, or a folder of .txt / .rst files "
                                     "(recursive); `package:name/sub/path` is a path inside an installed Python package")
    block: Count = Field(128, description="tokens a block predicts (a block holds one more: each position's next)")
    tokenizer: Str | None = Field(None, description="the tokenizer's source (a model directory or GGUF file); default: "
                                  "the first participant's model")
    test_fraction: Fraction = Field(0.1, description="documents of each domain held out for test (split seed)")
    max_documents: Count | None = Field(None, description="cap on each domain's documents (tiny runs); the split "
                                        "seed's order")


class ColumnsConfig(Section):
    """data.kind huggingface: which columns of the dataset hold what."""

    image: Str = Field("image", description="the input images (an Image feature, or arrays)")
    label: Str = Field("label", description="classification: the class (a ClassLabel feature names the classes)")
    target: Str | None = Field(None, description="segmentation: the mask column; saliency: the map column (required "
                               "for those tasks)")


FACTORY = r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*"  # pkg.module:function


class DataConfig(Section):
    """The dataset and its splits."""

    kind: Literal["fashion_mnist", "folder", "scenes", "segmentation_folder", "saliency_folder", "text", "python",
                  "huggingface"] = Field(
        "fashion_mnist", description="the dataset: classification reads fashion_mnist, folder, python or huggingface; "
        "segmentation scenes, segmentation_folder, python or huggingface; saliency scenes, saliency_folder, python or "
        "huggingface; language_model text (docs/own-data.md)")
    root: Str | None = Field(None, description="where the data is; fashion_mnist, scenes: searched in $KT_SWARM_DATA "
                             "and the Debian path when unset; huggingface: a save_to_disk folder or Parquet files")
    factory: Str | None = Field(None, description="kind python: `pkg.module:function` returning the splits "
                                "(docs/own-data.md); `given` when kt_swarm.run(data=...) was handed them")
    args: Data = Field({}, description="kind python: keyword arguments of the factory (plain YAML data)")
    classes: list[Str] | None = Field(None, description="kinds python, huggingface: the class names in label order "
                                      "(they win over the data's own); default: the factory's `classes` or the "
                                      "ClassLabel feature's names, else 0 .. the largest label")
    columns: ColumnsConfig = Field(default_factory=ColumnsConfig, description="kind huggingface: the columns read")
    scenes: ScenesConfig = Field(default_factory=ScenesConfig, description="kind scenes: how the scenes are composed")
    text: TextConfig = Field(default_factory=TextConfig, description="kind text: the domains and their blocks")
    ignore_index: Int = Field(255, ge=0, le=255, description="segmentation masks: the label of pixels no loss or "
                              "metric counts (VOC's 255; masks are 8-bit)")
    val_fraction: Fraction = Field(0.1, description="carved from train (fixed split_seed) when the data has no val split")
    pretrain_fraction: Fraction = Field(0.0, description="part of train reserved for zoo pretraining; transfer gets the rest")
    unlabelled_fraction: Fraction = Field(0.0, description="part of the transfer split whose labels are "
                                                     "hidden from training (classification only)")
    transfer_samples: Count | None = Field(None, description="keep only the first N of the transfer split (its "
                                         "order is the split seed's)")
    max_per_split: Count | None = Field(None, description="cap on every split: tiny runs")
    eval_samples: Count | None = Field(None, description="keep only the first N of val and test (the split seed's "
                                       "order): quicker evaluation of large models")
    split_seed: Int = Field(0, description="the seed of the val / pretrain / unlabelled split")
    skip_corrupt: Bool = Field(False, description="folder kinds: skip unreadable images instead of stopping")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="augmentation of the transfer batches")

    @model_validator(mode="after")
    def _transfer_data_left(self) -> DataConfig:
        if self.kind == "python" and self.factory is None:
            raise _bad("data.kind python needs data.factory (pkg.module:function)", "factory")
        if self.factory is not None and self.kind != "python":
            raise _bad(f"is read by data.kind python only, but data.kind is {self.kind}", "factory")
        if self.factory is not None and self.factory != "given" and not re.fullmatch(FACTORY, self.factory):
            raise _bad(f"expected pkg.module:function, got {_short(self.factory)}", "factory")
        if self.kind == "huggingface" and not self.root:
            raise _bad("data.kind huggingface needs data.root (a save_to_disk folder or Parquet files)", "root")
        if self.val_fraction + self.pretrain_fraction >= 1:
            raise _bad(f"data.val_fraction {self.val_fraction} + data.pretrain_fraction {self.pretrain_fraction} "
                       f"leave no transfer data", "pretrain_fraction")
        return self


class ZooConfig(Section):
    """How participants with `weights: zoo` (or `zoo: true`) are trained (and cached) on the pretraining split."""

    epochs: Count = Field(10, description="pretraining epochs")
    lr: Positive = Field(2e-3, description="pretraining learning rate (AdamW, the peak of a one-cycle schedule)")
    weight_decay: NonNegative = Field(0.05, description="pretraining weight decay")
    batch_size: Count = Field(128, description="pretraining batch size")
    disjoint: Bool = Field(False, description="each member pretrains on its own disjoint share of the pretraining split")
    cache_dir: Str | None = Field(None, description="where trained members are cached; default: $KT_SWARM_CACHE or "
                                  "~/.cache/kt_swarm")


def is_import_path(model: str) -> bool:
    """`pkg.module:factory` (a model built by code), not a timm name or a path (`package:` paths included)."""
    return ":" in model and not model.startswith("package:")


def _read_deepspeed(value: Any) -> Any:
    """A ds_config JSON path becomes its mapping, so config.yaml records what ran."""
    if not isinstance(value, str):
        if value is not None and not isinstance(value, dict):
            raise _bad(f"expected a DeepSpeed config (a mapping, or a ds_config JSON path), got {_short(value)}")
        return value
    try:
        mapping = json.loads(Path(value).read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise _bad(f"cannot read {_short(value)}: {first_line(e)}") from None
    except json.JSONDecodeError as e:
        raise _bad(f"{_short(value)} is not JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(mapping, dict):
        raise _bad("the JSON file must hold a mapping")
    return mapping


DeepSpeed = Annotated[Data | None, BeforeValidator(_read_deepspeed, json_schema_input_type=dict[str, Any] | str | None)]


class ParticipantConfig(Section):
    """One model of the swarm."""

    name: Name = Field(description="names its files, metrics and W&B keys: letters, digits, '_', '.' and '-', unique (case too)")
    model: Str = Field(description="timm name (`resnet18`, `timm/resnet18`) or import path `pkg.module:factory`; "
                       "`given`: an nn.Module handed to kt_swarm.run(models=...) (docs/python-api.md); language_model: a model directory, a .gguf file (`package:name/file.gguf` inside an installed "
                       "package) or an import path")
    lr: Positive = Field(description="learning rate in every arm")
    weights: Str | None = Field(None, description="pretrained (hub) | zoo | none | path to a weight file; default per model kind")
    weights_map: Str | None = Field(None, description="a weight file's names differ: order | pkg.module:function (see "
                                    "weights_map.py)")
    zoo: Bool = Field(False, description="train on the pretraining split first, from `weights` (weights: zoo implies it), cached")
    model_args: Data = Field({}, description="keyword arguments of the model's constructor (plain YAML data)")
    weight_decay: NonNegative | None = Field(None, description="default: transfer.weight_decay")
    in_chans: Literal[1, 3] | None = Field(None, description="default: the data's channels; 3 gives grayscale to an "
                                           "RGB model as RGB")
    input_size: Count | None = Field(None, description="default: the data's size (trained here) or the model's data config")
    mean: list[Float] | None = Field(None, description="input normalisation, 1 or 3 values; default: the model's data config")
    std: list[Float] | None = Field(None, description="input normalisation, 1 or 3 values; default: the model's data config")
    deepspeed: DeepSpeed = Field(None, description="a DeepSpeed config (a mapping, or a ds_config JSON path: read into "
                                 "its mapping), see deepspeed_host.py; the run sets its optimizer, scheduler and batch sizes")
    ranks: Int = Field(1, ge=1, description="actors (GPUs) hosting the participant; more than 1 needs deepspeed")
    tokenizer: Str | None = Field(None, description="language_model: the tokenizer's source (a model directory or GGUF "
                                  "file), which must equal the data's; default: the model's")
    domain: Name | None = Field(None, description="language_model: the text domain its zoo step fine-tunes it on (a "
                                "specialist); default: every domain")

    @model_validator(mode="after")
    def _preprocessing_and_weights(self) -> ParticipantConfig:
        for stat in ("mean", "std"):
            if getattr(self, stat) is not None and len(getattr(self, stat)) not in (1, 3):
                raise _bad("expected 1 or 3 values", stat)
        if self.model == "given" and self.weights is not None:
            raise _bad(f"a given nn.Module comes with its own weights, got weights {_short(self.weights)} (zoo: true "
                       f"fine-tunes it on the pretraining split first)", "weights")
        if self.weights_map is None:
            return self
        if self.weights_map != "order" and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", self.weights_map):
            raise _bad(f"expected order or pkg.module:function, got {_short(self.weights_map)}", "weights_map")
        if self.weights in (None, "pretrained", "zoo", "none"):
            raise _bad(f"renames a weight file's tensors, but weights is {self.weights or 'unset'} (set it to the file)",
                       "weights_map")
        if self.weights_map == "order" and self.weights.endswith(".safetensors"):
            raise _bad("order needs the order the tensors were saved in, which .safetensors does not keep; name a "
                       "pkg.module:function instead", "weights_map")
        return self


Strategy = Literal["best", "better", "dml", "kd", "kl_dp", "none"]  # docs/method.md: Six strategies
Scores = Literal["true_class", "max_confidence"]


class TransferConfig(Section):
    """The transfer arm (and the settings every arm shares: epochs, batches, optimizer, schedule)."""

    strategy: Strategy = Field("best", description="who teaches whom "
                                                                             "(docs/method.md: Six strategies)")
    scores: Scores = Field("true_class", description="what a participant's score "
                                                            "on a sample is; unlabelled samples: max_confidence always")
    teacher: Str | None = Field(None, description="kd: the participant that teaches, frozen (ignored by other strategies)")
    trusted_teachers: Bool = Field(False, description="k may teach j only if k's validation accuracy at the arm's start is >= j's")
    unit: Literal["sample", "pixel", "image", "token", "sequence"] | None = Field(None, description="what the "
                                                             "partition works on; default: pixel for segmentation, "
                                                             "token for language_model, else sample")
    calibrate: Bool = Field(False, description="scores use each participant's temperature, fit on validation at the "
                            "arm's start (classification only)")
    pseudo_threshold: Probability = Field(0.95, description="the self-training arm: pseudo-label where the "
                                                  "model is at least this sure")
    epochs: Count = Field(1, description="epochs of every arm")
    batch_size: Count = Field(128, description="batch size of every arm")
    temperature: Positive = Field(1.0, description="softmax temperature of the transfer terms")
    weight: NonNegative = Field(1.0, description="weight of the transfer terms beside the task loss")
    detach_teacher: Bool = Field(True, description="no gradient through the teacher's logits (chosen by measurement: "
                                 "docs/strategies.md)")
    optimizer: Literal["adam", "adamw"] = Field("adam", description="every participant's optimizer in every arm")
    schedule: Literal["constant", "cosine"] = Field("constant", description="learning rate over each arm's steps (every arm alike)")
    weight_decay: NonNegative = Field(1e-5, description="default weight decay of every participant")
    log_every: Count = Field(1, description="log every N steps")
    top_k: Count | None = Field(None, description="the exchange sends each participant's k most probable classes "
                                "(tokens) per unit and one bucket for the rest, not its whole distribution; the "
                                "partition stays exact (docs/method.md); needs detach_teacher. Default: 64 for "
                                "language_model (unless an arm has exact gradients), else every class")
    # Listed as autocast lists them: typing caches `Literal[...] | None` by equal (order-blind) Literals.
    exchange_dtype: Literal["bfloat16", "float16"] | None = Field(None, description="--engine ray: outputs and "
                                                                  "mixes sent at this precision (default: the model's); "
                                                                  "the partition stays full precision")


class ArmConfig(Section):
    """A transfer arm beside `transfer`: the same start, batches, steps, optimizer, schedule and learning rates;
    only how the loss transfers differs. The keys set here replace transfer's; the rest are transfer's."""

    strategy: Strategy | None = Field(None, description="default: transfer.strategy")
    scores: Scores | None = Field(None, description="default: transfer.scores")
    teacher: Str | None = Field(None, description="kd: the participant that teaches; default: transfer.teacher")
    trusted_teachers: Bool | None = Field(None, description="default: transfer.trusted_teachers")
    calibrate: Bool | None = Field(None, description="default: transfer.calibrate")
    temperature: Positive | None = Field(None, description="default: transfer.temperature")
    weight: NonNegative | None = Field(None, description="default: transfer.weight")
    detach_teacher: Bool | None = Field(None, description="default: transfer.detach_teacher")


ARM_NAMES_TAKEN = ("start", "transfer", "control", "self_training")  # the run's own arms (and its start)


class ResourcesConfig(Section):
    """What each participant's Ray actor reserves (--engine ray)."""

    gpus_per_participant: NonNegative | None = Field(None, description="default: 1 when the cluster has GPUs, else 0; "
                                               "fractions allowed")
    cpus_per_participant: NonNegative | None = Field(None, description="default: the cluster's CPUs shared out (at "
                                               "most 1 each when short)")
    custom: dict[Str, Positive] = Field({}, description="custom resources each participant needs")


class PlacementConfig(Section):
    """How the participants' actors are reserved together: one placement group, one bundle each."""

    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field("PACK", description="Ray's placement strategy")
    timeout_s: Positive = Field(120.0, description="give up (one line, exit 2) when the cluster cannot place them")
    participants_per_actor: Count = Field(1, description="single-rank participants one actor process hosts (each its "
                                          "own model, optimizer, RNG stream and checkpoint state); >1 lets many small "
                                          "participants share a process and a GPU, at the cost of running them one "
                                          "after another there; its bundle reserves that many participants' resources")


class WandbConfig(Section):
    """Weights & Biases: one W&B run per swarm run (see tracking.py)."""

    project: Str = Field("kt_swarm", description="W&B project")
    entity: Str | None = Field(None, description="W&B entity (team or user)")
    group: Str | None = Field(None, description="W&B group")
    tags: list[Str] = Field([], description="W&B tags")
    name: Str | None = Field(None, description="the run's name; default: W&B's generated name")
    mode: Literal["auto", "online", "offline"] = Field("auto", description="auto: online with an API key, else "
                                                       "offline; WANDB_MODE wins")


class TrackingConfig(Section):
    """Experiment tracking."""

    wandb: WandbConfig | None = Field(None, description="set (even to {}) to track the run in W&B")


class CheckpointConfig(Section):
    """Checkpoint sets in RUN_DIR/checkpoints: every participant's model, optimizer and RNG, plus the run's
    own state, consistent at one step (see checkpoint.py)."""

    every_steps: Count | None = Field(500, description="also at every epoch end; null: at epoch ends only")
    keep: Count = Field(2, description="step checkpoint sets kept; the start set and each participant's best "
                      "model are kept too")


class FaultConfig(Section):
    """What a run survives."""

    max_restarts: NonNegativeInt = Field(3, description="--engine ray: restarts of one participant's actor over the run "
                                         "before it stops")
    max_bad_steps: Count = Field(5, description="steps in a row skipped for a NaN/Inf loss or gradient before the run stops")


DEEPSPEED_OWNED = ("optimizer", "scheduler")  # the run sets them: its optimizer and lr, its schedule


def _ds_part(ds: dict, name: str, key: str) -> dict:
    part = ds.get(name) or {}
    if not isinstance(part, dict):
        raise _bad(f"expected a mapping, got {_short(part)}", key)
    return part


class Config(Section):
    """A kt_swarm experiment: N pretrained models teach each other."""

    model_config = ConfigDict(title="kt_swarm config")

    participants: list[ParticipantConfig] = Field(min_length=1, description="the models of the swarm")
    task: Literal["classification", "segmentation", "saliency", "language_model"] = Field("classification", description="tasks.py, "
                                                                        "docs/method.md: Other tasks")
    data: DataConfig = Field(default_factory=DataConfig, description="the dataset and its splits")
    transfer: TransferConfig = Field(default_factory=TransferConfig, description="the transfer arm")
    transfer_arms: dict[Name, ArmConfig] = Field({}, description="more transfer arms, trained beside `transfer` from "
                                                 "the same start on the same steps and reported beside it, by name: "
                                                 "`paper: {trusted_teachers: false, weight: 1}`")
    zoo: ZooConfig = Field(default_factory=ZooConfig, description="the zoo step")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, description="what each actor reserves")
    placement: PlacementConfig = Field(default_factory=PlacementConfig, description="how actors are placed")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="experiment tracking")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="checkpoints")
    fault: FaultConfig = Field(default_factory=FaultConfig, description="fault tolerance")
    control: Bool = Field(False, description="also train a CE-only copy of every participant (same steps and lr, "
                          "labelled data only)")
    self_training: Bool = Field(False, description="also train every participant alone on labels + its own confident "
                                "pseudo-labels (classification only)")
    selection: Literal["best_val", "last"] = Field("best_val", description="which epoch's model each participant "
                                                   "keeps, on the validation split only")
    seed: Int = Field(0, description="the run's seed (models, batches, augmentation)")
    dtype: Literal["float32", "float64"] = Field("float32", description="parameter precision")
    autocast: Literal["bfloat16", "float16"] | None = Field(None, description="mixed precision: forward passes under "
                                                            "torch.autocast (needs dtype float32)")
    device: Device = Field("auto", description="auto (cuda where the participant's process sees a GPU, else cpu) | cpu | "
                           "cuda | cuda:N")
    eval_batch_size: Count = Field(1024, description="batch size of evaluation passes")
    forked_from: Data | None = Field(None, description="set by `run --fork`: {run, checkpoint, overrides}")

    @model_validator(mode="after")
    def _names_and_teacher(self) -> Config:
        names = [p.name for p in self.participants]
        for i, name in enumerate(names):
            if [n.lower() for n in names].count(name.lower()) > 1:  # case too: on some file systems Vit.pt is vit.pt
                raise _bad(f"{_short(name)} is used twice", f"participants.{i}.name")
        for arm in self.transfer_arms:
            if arm in ARM_NAMES_TAKEN:
                raise _bad(f"{arm} names one of the run's own arms (or its start); choose another name",
                           f"transfer_arms.{arm}")
        for key, t in self._transfer_settings():
            if t.strategy == "kd" and t.teacher is None:
                raise _bad("strategy kd needs a teacher (the name of a participant)", f"{key}.teacher")
            if t.strategy == "kd" and len(names) < 2:
                raise _bad("kd needs at least two participants (a teacher and a student)", f"{key}.strategy")
            if t.teacher is not None and t.teacher not in names:
                raise _bad(f"{_short(t.teacher)} is not a participant (participants: {', '.join(names)})", f"{key}.teacher")
        return self

    def arm_transfer(self, arm: str) -> TransferConfig:
        """The transfer settings `arm` trains with: transfer's, with its transfer_arms entry's keys in their place."""
        if arm not in self.transfer_arms:
            return self.transfer
        return self.transfer.model_copy(update=self.transfer_arms[arm].model_dump(exclude_none=True))

    def for_arm(self, arm: str) -> Config:
        """This config as `arm` trains under it (its transfer settings in `transfer`)."""
        return self if arm not in self.transfer_arms else self.model_copy(update={"transfer": self.arm_transfer(arm)})

    def _transfer_settings(self) -> list[tuple[str, TransferConfig]]:
        """(key, settings) of every transfer arm: what the cross-field rules check."""
        return [("transfer", self.transfer)] + [(f"transfer_arms.{a}", self.arm_transfer(a)) for a in self.transfer_arms]

    @model_validator(mode="after")
    def _deepspeed(self) -> Config:
        """A DeepSpeed participant's config checked against the swarm before anything starts; kt_swarm fills in
        what it owns (the batch sizes, steps_per_print) in deepspeed_host.ds_config."""
        t = self.transfer
        for i, p in enumerate(self.participants):
            key, ds = f"participants.{i}", p.deepspeed
            if ds is not None and self.placement.participants_per_actor > 1:
                raise _bad("a DeepSpeed participant has its actors to itself; placement.participants_per_actor > 1 "
                           "hosts plain participants only", "placement.participants_per_actor")
            if ds is None:
                if p.ranks > 1:
                    raise _bad(f"{p.ranks} ranks need {key}.deepspeed (a DeepSpeed config)", f"{key}.ranks")
                continue
            for owned in DEEPSPEED_OWNED:
                if owned in ds:
                    raise _bad("the run sets it (transfer.optimizer, the participant's lr and weight_decay, "
                               "transfer.schedule); remove it", f"{key}.deepspeed.{owned}")
            zero, fp16 = (_ds_part(ds, part, f"{key}.deepspeed.{part}") for part in ("zero_optimization", "fp16"))
            stage = zero.get("stage", 0)
            if stage not in (0, 1, 2, 3):
                raise _bad(f"expected 0, 1, 2 or 3, got {_short(stage)}", f"{key}.deepspeed.zero_optimization.stage")
            if t.batch_size % p.ranks:
                raise _bad(f"transfer.batch_size {t.batch_size} does not split into {p.ranks} equal shares", f"{key}.ranks")
            wanted = {"train_batch_size": t.batch_size, "train_micro_batch_size_per_gpu": t.batch_size // p.ranks,
                      "gradient_accumulation_steps": 1}
            for name, value in wanted.items():
                if name in ds and ds[name] != value:
                    raise _bad(f"{_short(ds[name])} contradicts the swarm's {value} (transfer.batch_size {t.batch_size} "
                               f"over {p.ranks} rank(s)); remove it", f"{key}.deepspeed.{name}")
            if fp16.get("enabled") and self.device == "cpu":
                raise _bad("DeepSpeed has no fp16 on the CPU (device: cpu); use bf16", f"{key}.deepspeed.fp16")
            if self.dtype == "float64":
                raise _bad(f"DeepSpeed participants ({_short(p.name)}) train in float32 at most (ZeRO reduces and keeps "
                           f"its master weights in float32)", "dtype")
            if stage == 3 and any(arm.strategy == "kl_dp" for _, arm in self._transfer_settings()):
                raise _bad("kl_dp's frozen start copy of a ZeRO-3 (partitioned) participant is not supported; use "
                           "stage 0-2", f"{key}.deepspeed.zero_optimization.stage")
        return self

    @model_validator(mode="after")
    def _task_and_precision(self) -> Config:
        """The task's data kind and unit (transfer.unit defaults to the task's first); what the dense tasks do not
        have (no unlabelled pixels, no class scores to calibrate); autocast over float32 master weights."""
        task, t = self.task, self.transfer
        if self.data.kind not in DATA_KINDS[task]:
            raise _bad(f"task {task} reads {', '.join(DATA_KINDS[task])}, got {self.data.kind}", "data.kind")
        if self.data.kind == "huggingface" and task != "classification" and self.data.columns.target is None:
            raise _bad(f"task {task} reads its {'masks' if task == 'segmentation' else 'maps'} from a column: name it",
                       "data.columns.target")
        t.unit = t.unit or UNITS[task][0]
        if t.unit not in UNITS[task]:
            raise _bad(f"task {task} partitions by {' or '.join(UNITS[task])}, got {t.unit}", "transfer.unit")
        if task != "classification":
            checks = [("data.unlabelled_fraction", self.data.unlabelled_fraction, 0.0),
                      ("self_training", self.self_training, False)]
            for arm, s in self._transfer_settings():
                checks += [(f"{arm}.scores", s.scores, "true_class"), (f"{arm}.calibrate", s.calibrate, False)]
            for key, value, default in checks:
                if value != default:
                    raise _bad(f"not available for task {task} (classification only), got {value}", key)
        if task == "language_model" and t.top_k is None and all(a.detach_teacher for _, a in self._transfer_settings()):
            t.top_k = 64  # a batch's dense logits over a vocabulary are hundreds of MB a participant
        if t.top_k:
            for arm, settings in self._transfer_settings():
                if not settings.detach_teacher:
                    raise _bad("top_k sends each teacher's top k, through which no gradient can flow to the teacher: "
                               "set detach_teacher true", f"{arm}.detach_teacher")
        if self.data.kind == "text":
            text = self.data.text
            if not text.domains:
                raise _bad("data.kind text needs at least one domain (name: file or folder)", "data.text.domains")
            if text.tokenizer is None:  # the first participant's source: every participant must share it (checked at the start)
                first = self.participants[0].model
                if is_import_path(first):
                    raise _bad(f"the first participant's model is an import path ({_short(first)}): name the "
                               f"tokenizer's source", "data.text.tokenizer")
                text.tokenizer = first
            for i, p in enumerate(self.participants):
                if p.domain is not None and p.domain not in text.domains:
                    raise _bad(f"{_short(p.domain)} is not a domain of data.text.domains ({', '.join(text.domains)})",
                               f"participants.{i}.domain")
        if self.autocast and self.dtype != "float32":
            raise _bad(f"needs dtype float32 (the master weights), got dtype {self.dtype}", "autocast")
        return self


# --- one line from pydantic's first error ----------------------------------------------------------

def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        return "a list"
    if origin is dict or (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return "a mapping"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _annotation_at(model: type[BaseModel], loc: list) -> Any:
    """The annotated type at pydantic's error location (field names, list indices, mapping keys)."""
    tp: Any = model
    for part in loc:
        while typing.get_origin(tp) in (Annotated, typing.Union, types.UnionType):
            options = [a for a in typing.get_args(tp) if a is not type(None)]
            if typing.get_origin(tp) is not Annotated and len(options) > 1:
                return None
            tp = options[0]
        if isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
        elif typing.get_origin(tp) in (list, dict):
            tp = typing.get_args(tp)[-1]
        else:
            return None
    return tp


def user_error(e: ValidationError, model: type[BaseModel], what: str = "config key") -> UserError:
    """pydantic's first error as one line naming the dotted key: `config key 'participants.0.lr': must be
    positive, got -1.0` (never pydantic's own multi-line report)."""
    error = e.errors()[0]
    loc, kind, ctx, got = list(error["loc"]), error["type"], error.get("ctx") or {}, _short(error.get("input"))
    if kind == "unknown":
        loc.append(ctx["key"])
    elif kind == "kt_swarm" and ctx["key"]:
        loc += ctx["key"].split(".")
    elif loc and loc[-1] == "[key]" and kind == "kt_swarm":  # a mapping's key that is no name (transfer_arms)
        loc = loc[:-1]
    elif loc and loc[-1] == "[key]":  # a mapping's key: {1: 2} where names are expected
        loc, kind = loc[:-2], "key_type"
    key = _short(".".join(map(str, loc)))
    if kind == "unknown":
        return UserError(f"{what} {key} is unknown (known: {ctx['known']})")
    if kind == "missing":
        return UserError(f"{what} {key} is required")
    if kind == "kt_swarm":
        text = ctx["message"]
    elif kind == "greater_than":
        text = f"must be positive, got {got}" if ctx["gt"] == 0 else f"must be greater than {ctx['gt']}, got {got}"
    elif kind == "greater_than_equal":
        text = f"must be >= 0, got {got}" if ctx["ge"] == 0 else f"must be at least {ctx['ge']}, got {got}"
    elif kind == "less_than_equal":
        text = f"must be at most {ctx['le']}, got {got}"
    elif kind == "too_short":
        text = f"expected at least {ctx['min_length']} item{'s' * (ctx['min_length'] != 1)}, got {got}"
    elif kind == "finite_number":
        text = f"expected a finite float, got {got}"
    elif kind == "key_type":
        text = f"expected a mapping with str keys, got key {got}"
    else:  # a wrong type: named from the annotation, as the YAML file would spell it
        tp = _annotation_at(model, loc)
        expected = error["msg"] if tp is None else ("one of " if typing.get_origin(tp) is Literal else "") + _type_name(tp)
        text = f"expected {expected}, got {got}"
    return UserError(f"{what} {key}: {text}")


# --- the raw mapping: overrides, files ---------------------------------------------------------------

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
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        raise user_error(e, Config) from None
    refuse_secrets_in(to_dict(cfg))
    return cfg


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    return parse_config(read_config_file(path), overrides)


def read_config_file(path: str | Path) -> Any:
    """A config file's YAML, as plain data (not yet validated)."""
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
    return raw


def to_dict(cfg: Config) -> dict:
    """The resolved config as plain data: parse_config accepts it back, yaml.safe_dump writes it."""
    return cfg.model_dump(warnings=False)
