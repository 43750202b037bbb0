"""Data from your own code (data.kind python) and Hugging Face datasets from disk (data.kind huggingface).

A factory returns the splits as a mapping: `train` and `test` (required), `val` and `pretrain` (optional; val is
carved from train with the split seed when missing), and optionally `classes` (the class names in label order).
Each split is a map-style torch Dataset whose items are `(input, target)`, or a pair `(inputs, targets)` of tensors
or arrays. An input is a PIL image, a uint8 tensor or array [C, H, W] (or [H, W, C], or [H, W]), or a float one in
0..1 (what torchvision's ToTensor gives); a target is a class index (-1: unlabelled, training split only), or for
the dense tasks a mask (class indices, -1 or data.ignore_index: ignored) or a map [H, W].

What is read where (docs/own-data.md): splits given as tensors are held in memory like every other kind. Splits
given as Datasets are read lazily: the driver reads their lengths, their first items and (classification) their
labels; a Ray actor calls the factory again itself (a memory-mapped dataset is mapped, not copied: the OS shares
its pages between the actors of a node) and reads only the items of its own batches. Datasets handed to
kt_swarm.run(data=...) as objects, not a factory, travel through the object store (a copy in every actor).

Hugging Face: `load_from_disk` or Parquet files, read as a factory of this module (hf_splits) whose Arrow
tables are memory-mapped.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from kt_swarm.errors import UserError, first_line

SPLITS = ("train", "val", "test", "pretrain")  # in the order their ids are numbered
PROBES = 16  # items (evenly spaced) whose pixels go into a lazy dataset's fingerprint


def import_factory(path: str, who: str) -> Callable:
    module_name, _, attr = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise UserError(f"{who}: cannot import '{module_name}': {first_line(e)} (each process that reads the data "
                        f"imports it, Ray's workers too: put its folder on PYTHONPATH or install it)") from None
    except Exception as e:  # whatever the module raises while importing
        raise UserError(f"{who}: cannot import '{module_name}': {first_line(e)}") from None
    for part in attr.split("."):
        target = getattr(target, part, None)
    if not callable(target):
        raise UserError(f"{who}: '{path}' is not a callable in {module_name}")
    return target


def factory_name(factory: Callable) -> str | None:
    """`module:qualname` of a function another process can import (not one of a script run as __main__)."""
    module, qualname = getattr(factory, "__module__", None), getattr(factory, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        return None
    try:
        return f"{module}:{qualname}" if import_factory(f"{module}:{qualname}", "") is factory else None
    except UserError:
        return None


def describe(factory: Callable | str | None) -> str:
    if isinstance(factory, str):
        return f"data.factory '{factory}'"
    return "kt_swarm.run(data=...)" if factory is None else f"data factory {getattr(factory, '__qualname__', factory)!r}"


# ----------------------------------------------------------------------------- one item


GRAY_MODES = ("L", "1", "I;16", "I;16B", "I;16L", "I")


def pil_to_uint8(picture, gray: bool, size: tuple[int, int]) -> np.ndarray:
    """One PIL image as uint8 HxW (gray) or HxWx3, at `size`; 16/32-bit grayscale is scaled, not clipped."""
    from PIL import Image

    if picture.mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(picture, dtype=np.int64)
        top = 65535 if picture.mode.startswith("I;16") or wide.max() > 255 else 255
        picture = Image.fromarray((wide.clip(0, top) * 255 // top).astype(np.uint8), mode="L")
    picture = picture.convert("L" if gray else "RGB")
    return np.asarray(picture.resize(size) if picture.size != size else picture)


def as_pixels(x: Any) -> torch.Tensor:
    """One input as uint8 [C, H, W]; raises ValueError saying why it cannot be."""
    if hasattr(x, "convert") and hasattr(x, "mode"):  # a PIL image
        if x.mode == "F":  # 32-bit float: read as the array it is (0..1 expected, below)
            x = np.asarray(x)
        else:
            gray = x.mode in GRAY_MODES
            array = pil_to_uint8(x, gray, x.size).copy()
            return torch.from_numpy(array).unsqueeze(0) if gray else torch.from_numpy(array).permute(2, 0, 1)
    try:  # a copy: the item may be read-only
        t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x))
    except (TypeError, ValueError):
        raise ValueError(f"an input of type {type(x).__name__} (expected an image: PIL, a tensor or an array)") from None
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.ndim != 3:
        raise ValueError(f"an input of shape {tuple(t.shape)} (expected [C, H, W], [H, W, C] or [H, W])")
    if t.shape[0] not in (1, 3) and t.shape[-1] in (1, 3):
        t = t.permute(2, 0, 1)
    if t.shape[0] not in (1, 3):
        raise ValueError(f"an input of shape {tuple(t.shape)}: 1 or 3 channels")
    if t.dtype == torch.uint8:
        return t.contiguous()
    if t.is_floating_point():
        lo, hi = float(t.min()), float(t.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"float values in {lo:.3g}..{hi:.3g}, not 0..1 (already normalised? kt_swarm normalises "
                             f"for each participant itself: give ToTensor's 0..1 or uint8)")
        return (t * 255).round().to(torch.uint8)
    raise ValueError(f"an input of dtype {t.dtype} (expected uint8, or float in 0..1)")


def as_dense(y: Any, task: str, ignore_index: int) -> torch.Tensor:
    """One dense target as uint8 [H, W]: a mask's classes (ignored pixels: ignore_index) or a map's 0-255."""
    if hasattr(y, "convert") and hasattr(y, "mode"):  # a PIL mask (P: a palette's indices) or map
        y = np.asarray(y if y.mode in ("L", "P") else y.convert("L"))
    try:
        t = y if isinstance(y, torch.Tensor) else torch.from_numpy(np.array(y))
    except (TypeError, ValueError):
        raise ValueError(f"a target of type {type(y).__name__} (expected a [H, W] mask or map)") from None
    if t.ndim == 3 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 2:
        raise ValueError(f"a target of shape {tuple(t.shape)} (expected a [H, W] {'mask' if task == 'segmentation' else 'map'})")
    if task == "segmentation":
        t = torch.where(t.long() < 0, ignore_index, t.long())
        if (t > 255).any():
            raise ValueError(f"a mask with label {int(t.max())} (masks hold class indices, -1 or ignore_index)")
        return t.to(torch.uint8)
    if t.is_floating_point():
        return (t.clamp(0, 1) * 255).round().to(torch.uint8) if float(t.max()) <= 1 else t.clamp(0, 255).round().to(torch.uint8)
    return t.clamp(0, 255).to(torch.uint8)


# ----------------------------------------------------------------------------- the splits, lazily


class Pairs(torch.utils.data.Dataset):
    """A split given as (inputs, targets) tensors, as a Dataset (beside Dataset splits)."""

    def __init__(self, inputs, targets):
        self.inputs, self.targets = inputs, torch.as_tensor(np.asarray(targets) if not isinstance(targets, torch.Tensor) else targets)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i):
        return self.inputs[i], self.targets[i]


@dataclass
class LazyItems:
    """Splits read item by item, numbered train, val, test, pretrain (those present) one after the other.
    Pickled without its Datasets when it has a factory: the process that unpickles it calls the factory again
    (open) and checks it got the same data."""

    factory: Callable | str | None  # None: the Datasets themselves were given, and are pickled with it
    args: dict
    parts: dict[str, Any] | None  # split -> map-style Dataset
    lengths: dict[str, int]
    shape: tuple[int, int, int]  # every input's [C, H, W]
    first: str  # digest of train item 0: the same data in every process
    task: str
    ignore_index: int
    classes: int
    who: str  # how messages name the source
    _cache: tuple = field(default=(), repr=False)  # the last batch read: (ids bytes, pixels, dense)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__, _cache=())
        if self.factory is not None:
            state["parts"] = None
        return state

    def __len__(self) -> int:
        return sum(self.lengths.values())

    def identity(self) -> str:
        name = self.factory if isinstance(self.factory, str) else getattr(self.factory, "__qualname__", "given")
        return json.dumps([name, self.args, self.lengths, self.shape, self.first], sort_keys=True, default=str)

    def open(self) -> None:
        """The Datasets, from the factory again in a process that was sent this without them."""
        if self.parts is not None:
            return
        parts = call_factory(self.factory, self.args, self.who)
        got = {s: len(d) for s, d in parts.items() if s in SPLITS}
        if got != self.lengths:
            raise UserError(f"{self.who} returned splits of {got} in this process and {self.lengths} in the driver: "
                            f"it must return the same data in every process")
        self.parts = parts
        if item_digest(self.read_one("train", 0)) != self.first:
            raise UserError(f"{self.who}: train item 0 differs between processes: it must return the same data in "
                            f"every process")

    def locate(self, ids: torch.Tensor) -> list[tuple[str, int]]:
        """Each id's split and index in it (ids count through the splits in SPLITS order)."""
        names = [s for s in SPLITS if s in self.lengths]
        starts = np.cumsum([0] + [self.lengths[s] for s in names])
        where = np.searchsorted(starts, ids.numpy(), side="right") - 1
        return [(names[k], int(i - starts[k])) for k, i in zip(where, ids.tolist())]

    def read_one(self, split: str, index: int):
        self.open()
        try:
            return self.parts[split][index]
        except Exception as e:  # the user's __getitem__
            raise UserError(f"{self.who}: reading {split} item {index} failed: {first_line(e)}") from None

    def _read(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = ids.numpy().tobytes()
        if self._cache and self._cache[0] == key:  # the inputs and then the targets of one batch: read once
            return self._cache[1], self._cache[2]
        pixels, dense = [], []
        for split, index in self.locate(ids):
            x, y = self.read_one(split, index)
            try:
                p = as_pixels(x)
                if tuple(p.shape) != self.shape:
                    raise ValueError(f"an input of shape {tuple(p.shape)}, train item 0's is {self.shape}")
                pixels.append(p)
                if self.task != "classification":
                    d = as_dense(y, self.task, self.ignore_index)
                    if tuple(d.shape) != self.shape[1:]:
                        raise ValueError(f"a target of shape {tuple(d.shape)} for an image of {self.shape[1:]}")
                    bad = d[(d >= self.classes) & (d != self.ignore_index)] if self.task == "segmentation" else d[:0]
                    if len(bad):
                        raise ValueError(f"a mask with label {int(bad[0])}, not a class (0-{self.classes - 1}) or "
                                         f"data.ignore_index {self.ignore_index}")
                    dense.append(d)
            except ValueError as e:
                raise UserError(f"{self.who}: {split} item {index} has {e}") from None
        out = torch.stack(pixels), (torch.stack(dense) if dense else None)
        self._cache = (key, *out)
        return out

    def pixels(self, ids: torch.Tensor) -> torch.Tensor:
        return self._read(ids)[0]

    def dense(self, ids: torch.Tensor) -> torch.Tensor:
        return self._read(ids)[1]


def item_digest(item) -> str:
    x = item[0]
    return hashlib.sha256(as_pixels(x).numpy().tobytes()).hexdigest()[:16]


# ----------------------------------------------------------------------------- the factory's result


def call_factory(factory: Callable | str | Mapping | None, args: dict, who: str | None = None) -> dict[str, Any]:
    """The splits the factory returns (or the mapping given), checked for their form: split -> Dataset."""
    who = who or describe(factory if not isinstance(factory, Mapping) else None)
    if isinstance(factory, Mapping):
        result = factory
    else:
        fn = import_factory(factory, who) if isinstance(factory, str) else factory
        try:
            result = fn(**args)
        except UserError:
            raise
        except Exception as e:  # the user's code: report, don't crash
            raise UserError(f"{who} failed: {type(e).__name__}: {first_line(e)}") from None
    if not isinstance(result, Mapping):
        raise UserError(f"{who} returned {type(result).__name__}, not a mapping of splits (train, test; val, pretrain, "
                        f"classes optional)")
    unknown = [k for k in result if k not in (*SPLITS, "classes")]
    if unknown:
        raise UserError(f"{who} returned an unknown key {unknown[0]!r} (splits: train, val, test, pretrain; and classes)")
    for s in ("train", "test"):
        if s not in result:
            raise UserError(f"{who} returned no {s!r} split")
    parts = {}
    for s in SPLITS:
        if s not in result:
            continue
        d = result[s]
        if isinstance(d, (tuple, list)) and len(d) == 2:
            d = Pairs(*d)
        if not (hasattr(d, "__getitem__") and hasattr(d, "__len__")):
            raise UserError(f"{who}: split {s!r} is a {type(d).__name__}, not a map-style Dataset or an (inputs, "
                            f"targets) pair")
        if len(d) == 0:
            raise UserError(f"{who}: split {s!r} is empty")
        parts[s] = d
    if "classes" in result:
        parts["classes"] = list(result["classes"])
    return parts


def labels_of(d, split: str, who: str) -> torch.Tensor:
    """A classification split's labels without reading its inputs where the Dataset says them (torchvision's
    `targets`, or `labels`); otherwise one pass over its items."""
    for name in ("targets", "labels"):
        values = getattr(d, name, None)
        if values is not None and not callable(values):
            try:  # a copy: Arrow's zero-copy arrays are read-only
                t = values.clone() if isinstance(values, torch.Tensor) else torch.as_tensor(np.array(values))
            except (TypeError, ValueError):
                continue
            if t.ndim == 1 and len(t) == len(d):
                return t
    values = []
    for i in range(len(d)):
        try:
            values.append(d[i][1])
        except Exception as e:
            raise UserError(f"{who}: reading {split} item {i} failed: {first_line(e)}") from None
    try:
        return torch.as_tensor(np.asarray([int(torch.as_tensor(v)) for v in values]))
    except (TypeError, ValueError, RuntimeError):
        raise UserError(f"{who}: split {split!r}'s targets are not class indices (classification)") from None


def load_python(cfg, task: str, factory: Callable | str | Mapping | None, args: dict, who: str | None = None) -> dict:
    """data.kind python (and huggingface, through hf_splits): what data.Loaded holds, as a mapping, in memory when
    every split is tensors, else lazy (`items`, a LazyItems). `who` names the source in messages (default: the
    factory)."""
    who = who or describe(factory if not isinstance(factory, Mapping) else None)
    parts = call_factory(factory, args, who)
    returned = parts.pop("classes", None)
    classes = cfg.classes or returned  # the config's names win (a run that renames them)
    present = [s for s in SPLITS if s in parts]
    lengths = {s: len(parts[s]) for s in present}
    offsets = np.cumsum([0] + [lengths[s] for s in present])
    splits = {s: torch.arange(int(offsets[k]), int(offsets[k + 1])) for k, s in enumerate(present)}

    def first(split):
        try:
            return parts[split][0]
        except Exception as e:
            raise UserError(f"{who}: reading {split} item 0 failed: {first_line(e)}") from None

    try:
        shape = tuple(as_pixels(first("train")[0]).shape)
    except ValueError as e:
        raise UserError(f"{who}: train item 0 has {e}") from None
    if shape[1] != shape[2]:
        raise UserError(f"{who}: images must be square, train item 0 is {shape[1]}x{shape[2]}")
    for s in present:
        try:
            other = tuple(as_pixels(first(s)[0]).shape)
        except ValueError as e:
            raise UserError(f"{who}: {s} item 0 has {e}") from None
        if other != shape:
            raise UserError(f"{who}: {s} items are {'x'.join(map(str, other))}, train's {'x'.join(map(str, shape))} "
                            f"(every input the same shape)")
    digest = item_digest(first("train"))
    if item_digest(first("train")) != digest:
        raise UserError(f"{who}: train item 0 differs each time it is read (a random transform?): kt_swarm augments "
                        f"itself, the same for every participant (data.augment)")
    labels = None
    if task == "classification":
        labels = torch.cat([labels_of(parts[s], s, who).long() for s in present])
        for s in present:
            seen = labels[splits[s]]
            bad = seen[(seen < -1) | ((seen == -1) & (s not in ("train", "pretrain")))]
            if len(bad):
                raise UserError(f"{who}: split {s!r} has label {int(bad[0])}" +
                                (" (unlabelled): only the training split may hide labels" if int(bad[0]) == -1 else ""))
        top = int(labels.max())
        if classes is None:
            classes = [str(k) for k in range(top + 1)]
        elif top >= len(classes):
            s = next(s for s in present if int(labels[splits[s]].max()) == top)
            raise UserError(f"{who}: split {s!r} has label {top}, outside the {len(classes)} classes (0-{len(classes) - 1})")
        if len(classes) < 2:
            raise UserError(f"{who}: {len(classes)} class; classification needs 2 or more")
    else:
        try:
            d = as_dense(first("train")[1], task, cfg.ignore_index)
        except ValueError as e:
            raise UserError(f"{who}: train item 0 has {e}") from None
        if tuple(d.shape) != shape[1:]:
            raise UserError(f"{who}: train item 0's target is {tuple(d.shape)}, its image {shape[1:]}")
        if task == "segmentation":
            if classes is None:
                raise UserError(f"{who}: name the segmentation classes (return 'classes', or set data.classes)")
            bad = d[(d >= len(classes)) & (d != cfg.ignore_index)]
            if len(bad):
                raise UserError(f"{who}: train item 0's mask has label {int(bad[0])}, not a class (0-{len(classes) - 1}) "
                                f"or data.ignore_index {cfg.ignore_index}")
        else:
            classes = ["saliency"]
    all_tensors = all(isinstance(parts[s], Pairs) and isinstance(parts[s].inputs, (torch.Tensor, np.ndarray))
                      for s in present)
    source = args["root"] if factory is hf_splits else factory if isinstance(factory, str) else "kt_swarm.run(data=...)"
    items = LazyItems(None if isinstance(factory, Mapping) else factory, dict(args), parts, lengths, shape, digest,
                      task, cfg.ignore_index, len(classes), who)
    if all_tensors:  # small data: read it all, like every in-memory kind (one copy per Ray actor)
        everything = torch.arange(len(items))
        images = torch.cat([items.pixels(everything[i:i + 4096]) for i in range(0, len(items), 4096)])
        targets = None if task == "classification" else torch.cat(
            [items.dense(everything[i:i + 4096]) for i in range(0, len(items), 4096)])
        return dict(images=images, splits=splits, classes=list(classes), source=source, labels=labels, targets=targets)
    return dict(images=torch.empty(0, *shape, dtype=torch.uint8), splits=splits, classes=list(classes), source=source,
                labels=labels, items=items)


# ----------------------------------------------------------------------------- Hugging Face, from disk


def _datasets():
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # no hub at run time
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise UserError("data.kind huggingface needs the datasets package: pip install 'kt_swarm[hf]'") from None
    return datasets


def parquet_files(root: Path) -> dict[str, list[str]]:
    """Parquet files by split: <split>.parquet, <split>-*.parquet, data/<split>-*.parquet or <split>/*.parquet."""
    found = {}
    for split in ("train", "validation", "val", "test"):
        files = sorted({*root.glob(f"{split}.parquet"), *root.glob(f"{split}-*.parquet"),
                        *root.glob(f"data/{split}-*.parquet"), *root.glob(f"{split}/*.parquet")})
        if files:
            found["val" if split == "validation" else split] = [str(f) for f in files]
    return found


class Columns(torch.utils.data.Dataset):
    """A Hugging Face split as (input, target) items; `targets` reads the label column without decoding images."""

    def __init__(self, table, image: str, target: str, classification: bool):
        self.table, self.image, self.target = table, image, target
        self.targets = np.asarray(table.data.column(target).to_numpy(zero_copy_only=False)) if classification else None

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i):
        row = self.table[int(i)]
        return row[self.image], row[self.target]


def hf_splits(root: str, image: str = "image", label: str = "label", target: str | None = None,
              task: str = "classification", cache_dir: str | None = None) -> dict[str, Any]:
    """data.kind huggingface's factory: a `save_to_disk` folder (memory-mapped Arrow), or Parquet files (converted
    once to Arrow in the cache, then memory-mapped)."""
    datasets = _datasets()
    path = Path(root)
    if not path.exists():
        raise UserError(f"data.root '{root}' does not exist")
    if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as e:
            raise UserError(f"data.root '{root}': load_from_disk failed: {first_line(e)}") from None
        tables = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
        tables = {("val" if k == "validation" else k): v for k, v in tables.items()}
    else:
        files = parquet_files(path)
        if not files:
            raise UserError(f"data.root '{root}' holds neither a save_to_disk dataset nor Parquet files "
                            f"(train.parquet, test.parquet, or data/train-*.parquet, ...)")
        cache = cache_dir or os.path.join(os.environ.get("KT_SWARM_CACHE") or Path.home() / ".cache" / "kt_swarm", "hf")
        tables = {k: datasets.Dataset.from_parquet(v, cache_dir=str(cache)) for k, v in files.items()}
    classification = task == "classification"
    column = label if classification else target
    if column is None:
        raise UserError(f"task {task} reads its targets from a column: set data.columns.target")
    out: dict[str, Any] = {}
    for split, table in tables.items():
        if split not in SPLITS:
            continue
        for key, name in (("image", image), ("label" if classification else "target", column)):
            if name not in table.column_names:
                raise UserError(f"data.columns.{key} {name!r} is not a column of '{root}' {split} (columns: "
                                f"{', '.join(table.column_names)})")
        out[split] = Columns(table, image, column, classification)
    feature = tables["train"].features.get(label) if "train" in tables and classification else None
    if feature is not None and hasattr(feature, "names"):
        out["classes"] = list(feature.names)
    return out


def huggingface_args(cfg, task: str) -> dict:
    c = cfg.columns
    return {"root": str(cfg.root), "image": c.image, "label": c.label, "target": c.target, "task": task}
