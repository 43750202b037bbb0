"""Datasets written to disk the way a user lays theirs out."""
from __future__ import annotations

from PIL import Image


def write_folder(root, fmnist, per_class=12, classes=3, val=False):
    """A folder dataset of real 28x28 grayscale PNGs cut from Fashion-MNIST (`fmnist`: its load_dataset):
    ROOT/{train,test[,val]}/class<c>/<k>.png, `per_class` images of each of the first `classes` classes."""
    ids = fmnist.splits["train"]
    for split in ["train", "test"] + (["val"] if val else []):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            picks = ids[fmnist.labels[ids] == c][: per_class]
            for k, i in enumerate(picks.tolist()):
                Image.fromarray(fmnist.images[i, 0].numpy()).save(d / f"{k}.png")
    return root
