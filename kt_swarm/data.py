"""Datasets, deterministic batch plans, and each participant's own preprocessing.

Images are held as one uint8 tensor [n, C, H, W] at their native size; a batch is a
BatchPlan (sample ids + augmentation draws) derived from (seed, epoch, step) alone,
so every participant, in any process, sees the same samples with the same
augmentation, then applies its own resize and normalisation.

We do the augmentation with tensor ops rather than timm's PIL transforms because
timm's random transforms draw from the global RNG per sample, which cannot be
replayed identically in N processes; timm still supplies each model's mean, std
and input size (models.data_config).
"""
from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kt_swarm.config import AugmentConfig, DataConfig
from kt_swarm.errors import UserError
from kt_swarm.roles import UNLABELLED
from kt_swarm.sources import GRAY_MODES, pil_to_uint8

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASSES = [
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot",
]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


@dataclass
class Dataset:
    """A dataset's images (in memory, or read lazily by `items`) with named splits as index tensors."""

    images: torch.Tensor  # uint8 [n, C, H, W]; lazy (items) and text: empty [0, C, H, W], the shape of one
    labels: torch.Tensor  # int64 [n] (dense tasks: 0, every image labelled; their targets are below)
    classes: list[str]
    splits: dict[str, torch.Tensor]  # pretrain (may be empty), train, val, test -> ids into images
    skipped: int = 0  # corrupt files skipped (data.skip_corrupt)
    source: str = ""
    task: str = "classification"
    targets: torch.Tensor | None = None  # dense tasks: uint8 [n, H, W] masks (ignore_index) or density maps
    ignore_index: int = 255
    tokens: torch.Tensor | None = None  # text (text.py): int64 [n, block + 1] token blocks, -1 padding; images empty
    vocab: int = 0  # text: the tokenizer's vocabulary, the width of every participant's outputs
    items: Any = None  # data.kind python / huggingface given as Datasets: sources.LazyItems reads batches on demand
    _memo: dict = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self) -> dict:
        # Tensors as numpy arrays: Ray sends those out of band, and an actor maps the object store's one copy
        # on its node instead of unpickling a private one (benchmarks/results/data_memory.md). Read-only there,
        # which is fine: nothing writes a Dataset's tensors after load_dataset.
        state = dict(self.__dict__, _memo={})
        for key in ("images", "labels", "targets", "tokens"):
            if state[key] is not None:
                state[key] = state[key].numpy()
        state["splits"] = {k: v.numpy() for k, v in self.splits.items()}
        return state

    def __setstate__(self, state: dict) -> None:
        for key in ("images", "labels", "targets", "tokens"):
            if state[key] is not None:
                state[key] = torch.from_numpy(state[key])
        state["splits"] = {k: torch.from_numpy(v) for k, v in state["splits"].items()}
        self.__dict__.update(state)

    def open(self) -> None:
        """Read what a lazy dataset needs in this process (a Ray actor calls its factory again) before any batch."""
        if self.items is not None:
            self.items.open()

    def pixels(self, ids: torch.Tensor) -> torch.Tensor:
        """The images of these ids, uint8 [B, C, H, W], not augmented."""
        return self.images[ids] if self.items is None else self.items.pixels(ids)

    def dense(self, ids: torch.Tensor) -> torch.Tensor:
        """Dense tasks: the masks or maps of these ids, uint8 [B, H, W], not augmented."""
        return self.targets[ids] if self.items is None else self.items.dense(ids)

    def labelled_pixels(self, split: str) -> int:
        """Segmentation: the pixels of a split's masks that are not ignore_index (read once, in chunks)."""
        if split not in self._memo:
            ids = self.splits[split]
            self._memo[split] = sum(int((self.dense(ids[i:i + 1024]) != self.ignore_index).sum())
                                    for i in range(0, len(ids), 1024))
        return self._memo[split]

    @property
    def num_classes(self) -> int:
        """The width of a participant's outputs: classes, or (text) the vocabulary; `classes` then names the domains."""
        return self.vocab or len(self.classes)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[2]

    def outline(self) -> dict:
        """What a resumed run must find again (rundir's data.json): each split's size and a digest of the labels
        (the source is recorded, not compared: data may move). Not the pixels: a fixed item may be read again, a
        different dataset may not."""
        return {"source": self.source, "splits": {k: len(v) for k, v in self.splits.items()},
                "labels": hashlib.sha256(self.labels.numpy().tobytes()).hexdigest()[:16]}

    def fingerprint(self, ids: torch.Tensor) -> str:
        """Content hash of these samples (images and labels): a cache key for what was trained on them."""
        h = hashlib.sha256()
        if self.items is not None:  # not every item read again: the source, the ids and a few items' pixels
            h.update(self.items.identity().encode())
            h.update(ids.numpy().tobytes())
            probes = ids[torch.linspace(0, len(ids) - 1, min(len(ids), 16)).long()]
            h.update(self.pixels(probes).numpy().tobytes())
            if self.task != "classification":
                h.update(self.dense(probes).numpy().tobytes())
        else:
            h.update(self.images[ids].numpy().tobytes() if self.tokens is None else self.tokens[ids].numpy().tobytes())
        h.update(self.labels[ids].numpy().tobytes())
        if self.targets is not None and self.items is None:
            h.update(self.targets[ids].numpy().tobytes())
        return h.hexdigest()[:16]

    def inputs(self, ids: torch.Tensor, plan: "BatchPlan | None" = None) -> torch.Tensor:
        """What a participant's preprocessing is given for these ids: images (augmented as `plan` says), or
        (text) each block's inputs, its tokens but the last, padding as token 0 (it follows the last real
        token: causal attention keeps it from every scored position)."""
        if self.tokens is not None:
            return self.tokens[ids, :-1].clamp(min=0)
        return augment_images(self.pixels(ids), plan) if plan is not None else self.pixels(ids)

    def truth(self, ids: torch.Tensor) -> torch.Tensor:
        """What the metrics compare predictions with (metrics.py): the target, or (text) each block's domain."""
        return self.labels[ids] if self.tokens is not None else self.target(ids)

    def target(self, ids: torch.Tensor, plan: "BatchPlan | None" = None) -> torch.Tensor:
        """What the task loss and the metrics compare with, for these ids (augmented as `plan` says): class
        labels [B] (-1: hidden); segmentation masks int64 [B, H, W] (-1: ignored, as is the border a shift
        brings in); density maps float32 [B, H, W]; text: each position's next token [B, T] (-1: none)."""
        if self.tokens is not None:
            return self.tokens[ids, 1:]
        if self.task == "classification":
            return self.labels[ids]
        dense = self.dense(ids).unsqueeze(1)
        if plan is not None:
            dense = augment_images(dense, plan, fill=self.ignore_index if self.task == "segmentation" else 0)
        dense = dense.squeeze(1)
        if self.task == "segmentation":
            return torch.where(dense == self.ignore_index, -1, dense.long())
        return dense.float()


# ----------------------------------------------------------------------------- loading


@dataclass
class Loaded:
    """What a loader read, before the splits are carved and labels hidden (load_dataset)."""

    images: torch.Tensor  # uint8 [n, C, H, W]
    splits: dict[str, torch.Tensor]  # the splits the source has: train and test, val if present
    classes: list[str]  # class names, in label order (saliency: one, "saliency")
    source: str  # where it came from, for messages and summary.json
    labels: torch.Tensor | None = None  # classification: int64 [n]
    targets: torch.Tensor | None = None  # dense tasks: uint8 [n, H, W] masks or maps
    skipped: int = 0  # corrupt files skipped (data.skip_corrupt)
    items: Any = None  # sources.LazyItems: images (and targets) read on demand; `images` is then empty


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"dataset file '{path}' cannot be read: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"dataset file '{path}' is not an idx file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) != offset + int(np.prod(dims)):
        raise UserError(f"dataset file '{path}' is truncated or corrupt")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _find_fashion_mnist(root: str | None) -> Path:
    candidates = [Path(root)] if root else []
    if not root:
        if os.environ.get("KT_SWARM_DATA"):
            env = Path(os.environ["KT_SWARM_DATA"])
            candidates += [env / "fashion-mnist", env]
        candidates += [Path(d) for d in FASHION_MNIST_DIRS]
    for d in candidates:
        if all(any((d / (f + s)).exists() for s in ("", ".gz")) for f in FASHION_MNIST_FILES.values()):
            return d
    where = ", ".join(str(c) for c in candidates)
    raise UserError(
        f"Fashion-MNIST idx files not found in {where}: install the Debian package "
        "'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist), or put the four "
        "*-ubyte(.gz) files in a folder and set data.root or $KT_SWARM_DATA"
    )


def _load_fashion_mnist(cfg: DataConfig) -> Loaded:
    root = _find_fashion_mnist(cfg.root)
    arrays = {}
    for key, name in FASHION_MNIST_FILES.items():
        path = root / name if (root / name).exists() else root / (name + ".gz")
        arrays[key] = _read_idx(path)
    n_train = len(arrays["train_labels"])
    images = torch.from_numpy(np.concatenate([arrays["train_images"], arrays["test_images"]])).unsqueeze(1)
    labels = torch.from_numpy(np.concatenate([arrays["train_labels"], arrays["test_labels"]]).astype(np.int64))
    splits = {"train": torch.arange(n_train), "test": torch.arange(n_train, len(labels))}
    return Loaded(images, splits, list(FASHION_MNIST_CLASSES), str(root), labels=labels)


def _load_scenes(cfg: DataConfig, task: str) -> Loaded:
    """The offline test bed (scenes.py): scenes composed from Fashion-MNIST's train items (train, and val and
    pretrain carved from it) and from its test items (test), with masks or saliency-like maps."""
    from kt_swarm.scenes import IGNORE, compose_scenes

    items = _load_fashion_mnist(cfg)
    s, parts, targets = cfg.scenes, [], []
    for index, (split, count) in enumerate([("train", s.train), ("test", s.test)]):
        ids = items.splits[split].numpy()
        scenes, masks, maps = compose_scenes(items.images[ids, 0].numpy(), items.labels[ids].numpy(), count, canvas=s.canvas,
                                             max_items=s.max_items, seed=cfg.split_seed * 2 + index)
        parts.append(scenes)
        targets.append(masks if task == "segmentation" else maps)
    images = torch.from_numpy(np.concatenate(parts)).unsqueeze(1)
    targets = torch.from_numpy(np.concatenate(targets))
    if task == "segmentation" and cfg.ignore_index != IGNORE:
        targets = torch.where(targets == IGNORE, cfg.ignore_index, targets)
    splits = {"train": torch.arange(s.train), "test": torch.arange(s.train, s.train + s.test)}
    names = ["background", *items.classes] if task == "segmentation" else ["saliency"]
    return Loaded(images, splits, names, f"scenes of {items.source}", targets=targets)


def _read_image(path: Path, cfg: DataConfig):
    """A PIL image fully read, or None for a corrupt file when data.skip_corrupt allows it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if cfg.skip_corrupt:
            return None
        raise UserError(f"image '{path}' is corrupt ({e}); set data.skip_corrupt: true to skip such files") from None


def _load_dense_folder(cfg: DataConfig, task: str) -> Loaded:
    """segmentation_folder / saliency_folder: <root>/<split>/images/<name>.<ext> beside <root>/<split>/masks/<name>.png
    (class indices, ignore_index for unlabelled pixels; <root>/classes.txt names the classes, one per line) or
    <root>/<split>/maps/<name>.<ext> (grayscale density maps). Splits: train and test, val optional."""
    if not cfg.root:
        raise UserError(f"config key 'data.root' is required for data.kind: {cfg.kind}")
    root, other = Path(cfg.root), "masks" if task == "segmentation" else "maps"
    if not root.is_dir():
        raise UserError(f"dataset folder '{root}' does not exist")
    if task == "segmentation":
        listed = root / "classes.txt"
        if not listed.is_file():
            raise UserError(f"dataset folder '{root}' has no classes.txt (the class names, one per line, in label order)")
        classes = [line.strip() for line in listed.read_text().splitlines() if line.strip()]
        if not 2 <= len(classes) <= 255 or cfg.ignore_index < len(classes):
            raise UserError(f"'{listed}' names {len(classes)} classes; expected 2 to 255, all below "
                            f"data.ignore_index {cfg.ignore_index}")
    else:
        classes = ["saliency"]
    pictures, dense, split_ids, skipped = [], [], {}, 0
    for split in ("train", "val", "test"):
        folder = root / split
        if not folder.is_dir():
            if split == "val":
                continue
            raise UserError(f"dataset folder '{root}' has no '{split}' subfolder (expected {split}/images and {split}/{other})")
        files = sorted(p for p in (folder / "images").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"dataset folder '{folder / 'images'}' is empty or missing (no image files)")
        pairs = {p.stem: p for p in (folder / other).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
        unpaired = [p.name for p in files if p.stem not in pairs]
        if unpaired:
            raise UserError(f"image '{folder / 'images' / unpaired[0]}' has no {other[:-1]} in '{folder / other}' "
                            f"({len(unpaired)} unpaired)")
        ids = []
        for path in files:
            picture, target = _read_image(path, cfg), _read_image(pairs[path.stem], cfg)
            if picture is None or target is None:
                skipped += 1
                continue
            if target.size != picture.size:
                raise UserError(f"{other[:-1]} '{pairs[path.stem]}' is {target.size[0]}x{target.size[1]}, its image "
                                f"{picture.size[0]}x{picture.size[1]}")
            target = target if target.mode in ("L", "P") else target.convert("L")  # P: VOC's palette masks
            array = np.asarray(target)
            if task == "segmentation":
                bad = (array >= len(classes)) & (array != cfg.ignore_index)
                if bad.any():
                    raise UserError(f"mask '{pairs[path.stem]}' has label {int(array[bad][0])}, not a class of "
                                    f"classes.txt (0-{len(classes) - 1}) or data.ignore_index {cfg.ignore_index}")
            ids.append(len(pictures))
            pictures.append(picture)
            dense.append(target)
        if not ids:
            raise UserError(f"dataset folder '{folder}' has no readable image pairs")
        split_ids[split] = torch.tensor(ids, dtype=torch.long)
    images, size = _stack(pictures)
    from PIL import Image

    resample = Image.NEAREST if task == "segmentation" else Image.BILINEAR  # labels are never blended
    targets = torch.from_numpy(np.stack([np.asarray(t.resize(size, resample) if t.size != size else t) for t in dense]))
    return Loaded(images, split_ids, classes, cfg.root, targets=targets, skipped=skipped)


def _load_folder(cfg: DataConfig) -> Loaded:
    if not cfg.root:
        raise UserError("config key 'data.root' is required for data.kind: folder")
    root = Path(cfg.root)
    if not root.is_dir():
        raise UserError(f"dataset folder '{root}' does not exist")
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise UserError(f"dataset folder '{root}' has no '{split}' subfolder (expected {split}/<class>/*)")
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    if not classes:
        raise UserError(f"dataset folder '{root / 'train'}' has no class folders")
    present = [s for s in ("train", "val", "test") if (root / s).is_dir()]
    pictures, labels, split_ids, skipped = [], [], {}, 0
    for split in present:
        ids = []
        for label, name in enumerate(classes):
            folder = root / split / name
            files = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
            if not files:
                raise UserError(f"class folder '{folder}' is empty or missing (no image files)")
            kept = len(ids)
            for path in files:
                picture = _read_image(path, cfg)
                if picture is None:
                    skipped += 1
                    continue
                ids.append(len(pictures))
                pictures.append(picture)
                labels.append(label)
            if len(ids) == kept:
                raise UserError(f"class folder '{folder}' has no readable images ({len(files)} corrupt)")
        extra = sorted(d.name for d in (root / split).iterdir() if d.is_dir() and d.name not in classes)
        if extra:
            raise UserError(f"dataset folder '{root / split}' has classes not in train: {', '.join(extra)}")
        split_ids[split] = torch.tensor(ids, dtype=torch.long)
    return Loaded(_stack(pictures)[0], split_ids, classes, cfg.root, labels=torch.tensor(labels, dtype=torch.long),
                  skipped=skipped)


def _stack(pictures: list) -> tuple[torch.Tensor, tuple[int, int]]:
    """PIL images as one uint8 tensor [n, C, H, W], and the size they were brought to. Channels and size come
    from the data: grayscale stays one channel; mixed sizes go to the most common one."""
    gray = all(p.mode in GRAY_MODES for p in pictures)
    sizes = [p.size for p in pictures]
    size = max(set(sizes), key=sizes.count)
    images = torch.from_numpy(np.stack([pil_to_uint8(p, gray, size) for p in pictures]))
    return (images.unsqueeze(1) if gray else images.permute(0, 3, 1, 2).contiguous()), size


def load_dataset(cfg: DataConfig, task: str = "classification", tokenizer=None, given: Any = None) -> Dataset:
    """The dataset with its splits carved (text: `tokenizer` cuts it, lm.load_tokenizer; kind python: `given` is
    what kt_swarm.run(data=...) was handed, a factory or the splits)."""
    if cfg.kind == "text":
        from kt_swarm.text import load_text  # tokenizers and their files: only for text

        t = load_text(cfg, tokenizer)
        return _finish(cfg, torch.empty(0, 0, 0, 0, dtype=torch.uint8), t["labels"], t["domains"], t["splits"],
                       t["source"], task, tokens=t["tokens"], vocab=len(tokenizer))
    if cfg.kind == "fashion_mnist":
        loaded = _load_fashion_mnist(cfg)
    elif cfg.kind == "folder":
        loaded = _load_folder(cfg)
    elif cfg.kind == "scenes":
        loaded = _load_scenes(cfg, task)
    elif cfg.kind in ("python", "huggingface"):
        from kt_swarm import sources

        if cfg.kind == "huggingface":
            loaded = Loaded(**sources.load_python(cfg, task, sources.hf_splits, sources.huggingface_args(cfg, task),
                                                  f"dataset '{cfg.root}'"))
        elif cfg.factory == "given" and given is None:
            raise UserError("data.factory: given means data handed to kt_swarm.run(data=...): resume this run from "
                            "Python with the same data")
        else:  # a factory by name (actors import it themselves), or what kt_swarm.run was handed
            loaded = Loaded(**sources.load_python(cfg, task, cfg.factory if cfg.factory != "given" else given, cfg.args))
    else:
        loaded = _load_dense_folder(cfg, task)
    images, splits, classes, source = loaded.images, loaded.splits, loaded.classes, loaded.source
    n_items = len(loaded.items) if loaded.items is not None else len(images)
    labels = loaded.labels if loaded.labels is not None else torch.zeros(n_items, dtype=torch.long)
    if images.shape[2] != images.shape[3]:
        raise UserError(f"dataset '{source}': images must be square, got {tuple(images.shape[2:])}")
    # Carve val (if absent) and the zoo's pretraining part from train, with a seed of their own so
    # that every run seed sees the same splits (and shares one zoo). Val takes labelled samples only (a
    # factory's train may hold -1 labels): the first n_val labelled ones in that order, the rest follow.
    g = torch.Generator().manual_seed(cfg.split_seed)
    train = splits["train"][torch.randperm(len(splits["train"]), generator=g)]
    n = len(train)
    n_val = 0 if "val" in splits else round(cfg.val_fraction * n)
    if n_val and (labels[train] < 0).any():
        first = train[labels[train] >= 0][:n_val]
        if len(first) < n_val:
            raise UserError(f"dataset '{source}': train has {len(first)} labelled samples, fewer than the {n_val} a "
                            f"validation split of data.val_fraction {cfg.val_fraction} needs: return a val split")
        train = torch.cat([first, train[~torch.isin(train, first)]])
    if "pretrain" in splits and cfg.pretrain_fraction:
        raise UserError(f"dataset '{source}' has its own pretrain split; data.pretrain_fraction must be 0, "
                        f"got {cfg.pretrain_fraction}")
    n_pre = 0 if "pretrain" in splits else round(cfg.pretrain_fraction * n)
    if "val" not in splits:
        splits["val"] = train[:n_val]
    if "pretrain" not in splits:
        splits["pretrain"] = train[n_val : n_val + n_pre]
    splits["train"] = train[n_val + n_pre :]
    return _finish(cfg, images, labels, classes, splits, source, task, loaded.skipped, loaded.targets, items=loaded.items)


def _finish(cfg: DataConfig, images: torch.Tensor, labels: torch.Tensor, classes: list[str],
            splits: dict[str, torch.Tensor], source: str, task: str, skipped: int = 0, targets: torch.Tensor | None = None,
            tokens: torch.Tensor | None = None, vocab: int = 0, items: Any = None) -> Dataset:
    """The carved splits capped, checked and their hidden labels drawn: the Dataset."""
    if cfg.max_per_split:
        splits = {k: v[: cfg.max_per_split] for k, v in splits.items()}
    if cfg.transfer_samples:  # a smaller labelled set for transfer; the other splits stay whole
        splits["train"] = splits["train"][: cfg.transfer_samples]
    if cfg.eval_samples:
        splits["val"], splits["test"] = splits["val"][: cfg.eval_samples], splits["test"][: cfg.eval_samples]
    for name in ("train", "val", "test"):
        if len(splits[name]) == 0:
            raise UserError(f"dataset '{source}': the {name} split is empty (check data.val_fraction / pretrain_fraction)")
    labels = hide_labels(labels, splits, cfg.unlabelled_fraction, cfg.split_seed)
    return Dataset(images, labels, classes, splits, skipped, source, task, targets, cfg.ignore_index, tokens, vocab, items)


def hide_labels(labels: torch.Tensor, splits: dict[str, torch.Tensor], fraction: float, seed: int) -> torch.Tensor:
    """The labels with those of `fraction` of the transfer split replaced by -1 (UNLABELLED), chosen with
    the split seed: no loss can read what is not in memory. Adds splits["labelled"] (the rest of train, in
    order) and splits["unlabelled"]; evaluation splits keep their labels."""
    train = splits["train"]
    hidden = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 1))[: round(fraction * len(train))]]
    labels = labels.clone()
    labels[hidden] = UNLABELLED
    splits["labelled"] = train[labels[train] >= 0]
    splits["unlabelled"] = train[labels[train] < 0]
    return labels


# ----------------------------------------------------------------------------- batch plans


@dataclass
class BatchPlan:
    """One training batch, identical for every participant: ids and augmentation draws."""

    ids: torch.Tensor  # [B] ids into Dataset.images
    shifts: torch.Tensor  # [B, 2] (dy, dx) in pixels
    flips: torch.Tensor  # [B] bool

    def share(self, rank: int, ranks: int) -> "BatchPlan":
        """Rank `rank`'s share of the batch, of `ranks` equal ones in order (a participant on several ranks)."""
        if ranks == 1:
            return self
        return BatchPlan(*(t.tensor_split(ranks)[rank] for t in (self.ids, self.shifts, self.flips)))


def _generator(*keys: int) -> torch.Generator:
    # A fixed mix of the keys, so (seed, epoch, step) name one stream in every process.
    value = 0
    for k in keys:
        value = (value * 1_000_003 + int(k) + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(value)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Training drops the last partial batch (fixed batch shapes; BatchNorm-safe)."""
    return n // batch_size


def batch_plan(split_ids: torch.Tensor, *, seed: int, epoch: int, step: int, batch_size: int, augment: AugmentConfig) -> BatchPlan:
    order = torch.randperm(len(split_ids), generator=_generator(seed, epoch))
    ids = split_ids[order[step * batch_size : (step + 1) * batch_size]]
    g = _generator(seed, epoch, step, 7)
    shifts = torch.randint(-augment.shift, augment.shift + 1, (len(ids), 2), generator=g)
    flips = torch.rand(len(ids), generator=g) < 0.5 if augment.hflip else torch.zeros(len(ids), dtype=torch.bool)
    return BatchPlan(ids, shifts, flips)


def batches_in(data: Dataset, split: str, batch_size: int) -> int:
    """Full batches in a split of the transfer data ("train", or its "labelled" part); none is an error."""
    n = steps_per_epoch(len(data.splits[split]), batch_size)
    if n == 0:
        part = "transfer split" if split == "train" else f"{split} part of the transfer split"
        raise UserError(f"the {part} has {len(data.splits[split])} samples, fewer than transfer.batch_size {batch_size}"
                        + (" (lower data.unlabelled_fraction)" if split == "labelled" else ""))
    return n


def arm_plan(data: Dataset, split: str, *, seed: int, epoch: int, step: int, batch_size: int, augment: AugmentConfig) -> BatchPlan:
    """Batch `step` of `epoch` for an arm that runs as many steps per epoch as the transfer split
    ("train") has batches, drawn from `split`: a smaller split (the control arm's labelled part) is
    passed through again, reshuffled, as often as needed; "train" itself gives batch_plan's batches."""
    steps, own = batches_in(data, "train", batch_size), batches_in(data, split, batch_size)
    k = epoch * steps + step
    return batch_plan(data.splits[split], seed=seed, epoch=k // own, step=k % own, batch_size=batch_size, augment=augment)


def augment_images(images: torch.Tensor, plan: BatchPlan, fill: int = 0) -> torch.Tensor:
    """Apply the plan's shifts (padding with `fill`) and flips to uint8 images [B, C, H, W] (or masks, maps)."""
    pad = int(plan.shifts.abs().max()) if len(plan.shifts) else 0
    if pad:
        b, _, h, w = images.shape
        padded = F.pad(images, (pad, pad, pad, pad), value=fill)
        rows = torch.arange(h).unsqueeze(0) + pad - plan.shifts[:, :1]  # [B, H]
        cols = torch.arange(w).unsqueeze(0) + pad - plan.shifts[:, 1:]  # [B, W]
        batch = torch.arange(b).view(b, 1, 1)
        images = padded.permute(0, 2, 3, 1)[batch, rows.unsqueeze(2), cols.unsqueeze(1)].permute(0, 3, 1, 2)
    if plan.flips.any():
        images = torch.where(plan.flips.view(-1, 1, 1, 1), images.flip(-1), images)
    return images


@dataclass
class Preprocess:
    """One participant's view of a batch: channels, resolution, normalisation, dtype."""

    in_chans: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dtype: torch.dtype = torch.float32

    def __call__(self, images: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        x = images.to(device=device).to(self.dtype) / 255.0
        if x.shape[1] != self.in_chans:
            x = x.mean(dim=1, keepdim=True) if self.in_chans == 1 else x.expand(-1, self.in_chans, -1, -1)
        if x.shape[-1] != self.input_size:
            # Antialiasing matters only when shrinking (and CUDA's kernel rejects large upscales).
            shrink = x.shape[-1] > self.input_size
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=shrink)
        mean = torch.tensor(self.mean, dtype=self.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=self.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std
