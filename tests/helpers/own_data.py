"""Datasets of our own, as a user writes them: `data.kind: python` factories importable by Ray workers through
PYTHONPATH (`factory: own_data:stripes`), learnable, small and real (no mock): each class is a stripe pattern
with noise. Broken ones fail the way users' factories do."""
import numpy as np
import torch
from torch.utils.data import Dataset


def stripe_images(n: int, size: int, classes: int, seed: int, channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [n, C, size, size] images whose class k is a horizontal stripe at row band k, and their labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    images = rng.integers(0, 60, (n, channels, size, size)).astype(np.uint8)
    band = size // classes
    for i, k in enumerate(labels):
        images[i, :, k * band:(k + 1) * band] += 150
    return images, labels


class Stripes(Dataset):
    """A map-style Dataset as a torchvision user writes one: (float tensor in 0..1 [C, H, W], int label), with a
    `targets` attribute (torchvision's convention) unless `plain`."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, plain: bool = False):
        self.images, self.labels_ = images, labels
        if not plain:
            self.targets = labels.tolist()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return torch.from_numpy(self.images[i]).float() / 255, int(self.labels_[i])


def stripes(n: int = 240, size: int = 16, classes: int = 3, lazy: bool = True, val: bool = False,
            pretrain: int = 0, unlabelled: int = 0, plain: bool = False) -> dict:
    """train / test (and val, pretrain when asked) as Datasets (lazy) or as (inputs, targets) tensors;
    `unlabelled` training labels set to -1."""
    out = {"classes": [f"band{k}" for k in range(classes)]}
    for index, (split, count) in enumerate([("train", n), ("test", n // 4), ("val", n // 4 if val else 0),
                                            ("pretrain", pretrain)]):
        if not count:
            continue
        images, labels = stripe_images(count, size, classes, seed=index)
        if split == "train" and unlabelled:
            labels[:unlabelled] = -1
        out[split] = Stripes(images, labels, plain) if lazy else (torch.from_numpy(images), torch.from_numpy(labels))
    return out


class StripeMasks(Dataset):
    """Segmentation: the band's pixels are class k + 1, the rest background 0."""

    def __init__(self, count: int, size: int, classes: int, seed: int):
        self.images, self.labels = stripe_images(count, size, classes, seed)
        self.size, self.band = size, size // classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        mask = np.zeros((self.size, self.size), dtype=np.int64)
        k = int(self.labels[i])
        mask[k * self.band:(k + 1) * self.band] = k + 1
        return torch.from_numpy(self.images[i]), torch.from_numpy(mask)


def stripe_masks(n: int = 120, size: int = 16, classes: int = 3) -> dict:
    return {"train": StripeMasks(n, size, classes, 0), "test": StripeMasks(n // 4, size, classes, 1),
            "classes": ["background"] + [f"band{k}" for k in range(classes)]}


class MemmapImages(Dataset):
    """uint8 images in a .npy file, memory-mapped: the data a run reads without holding it (docs/own-data.md)."""

    def __init__(self, path: str, start: int, stop: int, classes: int):
        self.path, self.start, self.stop, self.classes = path, start, stop, classes
        self.array = np.load(path, mmap_mode="r")
        self.targets = [(start + i) % classes for i in range(stop - start)]

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i):
        return torch.from_numpy(np.array(self.array[self.start + i])), self.targets[i]


def memmap_images(path: str, train: int, test: int, classes: int = 4) -> dict:
    return {"train": MemmapImages(path, 0, train, classes), "test": MemmapImages(path, train, train + test, classes)}


def save_stripes_hf(root, parquet: bool = False) -> None:
    """The stripes as a Hugging Face dataset of our own (Image and ClassLabel features, columns `img` and `y`):
    saved with save_to_disk, or as train.parquet and test.parquet."""
    import datasets
    from PIL import Image

    features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["top", "middle", "bottom"])})
    splits = {}
    for name, count, seed in (("train", 240, 0), ("test", 60, 1)):
        images, labels = stripe_images(count, 16, 3, seed)
        splits[name] = datasets.Dataset.from_dict({"img": [Image.fromarray(x.transpose(1, 2, 0)) for x in images],
                                                   "y": labels.tolist()}, features=features)
    if not parquet:
        datasets.DatasetDict(splits).save_to_disk(str(root))
        return
    root.mkdir(parents=True)
    for name, table in splits.items():
        table.to_parquet(str(root / f"{name}.parquet"))


# ----------------------------------------------------------------------------- broken on purpose


def mostly_unlabelled(**_) -> dict:
    """Three labelled training samples: too few to carve a validation split from."""
    return stripes(n=240, unlabelled=237)


def raises(**_) -> dict:
    raise FileNotFoundError("/data/mine/labels.csv")


def not_a_mapping(**_):
    return [1, 2, 3]


def out_of_range(**_) -> dict:
    out = stripes(n=40, lazy=False)
    out["test"][1][3] = 7  # 3 classes
    return out


def normalised(**_) -> dict:
    images, labels = stripe_images(40, 16, 3, 0)
    x = (torch.from_numpy(images).float() / 255 - 0.5) / 0.25
    return {"train": (x, torch.from_numpy(labels)), "test": (x, torch.from_numpy(labels))}


def not_square(**_) -> dict:
    images, labels = stripe_images(40, 16, 3, 0)
    x = torch.from_numpy(images)[:, :, :, :12]
    return {"train": (x, torch.from_numpy(labels)), "test": (x, torch.from_numpy(labels))}


class Jittered(Stripes):
    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return (x + torch.rand_like(x) * 0.01).clamp(0, 1), y


def random_items(**_) -> dict:
    images, labels = stripe_images(40, 16, 3, 0)
    return {"train": Jittered(images, labels), "test": Stripes(images, labels)}


def odd_item(**_) -> dict:
    """Item 5 of train is smaller than the rest: found when its batch is read."""
    out = stripes(n=40)
    images = out["train"].images.copy()
    out["train"].images = [images[i] if i != 5 else images[i][:, :8, :8] for i in range(len(images))]
    return out
