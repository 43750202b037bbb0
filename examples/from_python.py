"""A whole kt_swarm run from Python: a torchvision dataset and two models built in this script.

    python examples/from_python.py                                # Ray engine, a private local instance
    python examples/from_python.py --engine local --size 512      # every participant in this process

The data is torchvision's FakeData: random 3x32x32 images with random labels, 10 classes, so accuracy
stays at chance (about 10%) before and after; nothing here is meant to learn. It is plumbing to copy:
swap `fake_data` for a function returning your own splits (any map-style Dataset of (image, label), or
(images, labels) tensors; docs/own-data.md) and the two models for your own (docs/python-api.md).

What it shows: a data factory with arguments (`data.args`), a plain nn.Module (it sees the data at its
own size, normalised with mean/std 0.5) beside a timm model built here (it keeps its pretrained_cfg's
ImageNet mean/std; its input size is set to the data's, 32, instead of the 176 that config names),
each with its learning rate, the CE-only control arm beside transfer, the summary table and the run
directory. Under Ray each actor calls `fake_data` again and reads only its batches' images.
"""
import argparse

import timm
import torch
from torch import nn
from torchvision import datasets, transforms

import kt_swarm
from kt_swarm.summary import format_table


def fake_data(size: int = 1024) -> dict:
    """The splits: train and test as map-style Datasets of (uint8 [3, 32, 32] image, int label). No val: the run
    carves it from train (data.val_fraction, with data.split_seed)."""
    to_tensor = transforms.PILToTensor()  # uint8; transforms.ToTensor()'s float 0..1 works the same
    train = datasets.FakeData(size, (3, 32, 32), 10, transform=to_tensor, random_offset=0)
    test = datasets.FakeData(max(size // 4, 64), (3, 32, 32), 10, transform=to_tensor, random_offset=1_000_000)
    return {"train": train, "test": test, "classes": [f"class{k}" for k in range(10)]}


def small_cnn(classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(32, classes),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=["ray", "local"], default="ray", help="as kt-swarm run's --engine")
    ap.add_argument("--size", type=int, default=1024, help="training images (test: a quarter)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs of each arm")
    ap.add_argument("--out", default=None, help="the run directory (default: runs/python-<time>)")
    args = ap.parse_args()

    config = {
        "control": True,  # a CE-only copy of each participant beside transfer: the number to compare with
        "data": {"args": {"size": args.size}},  # fake_data's keyword arguments
        "transfer": {"epochs": args.epochs, "batch_size": 64},
    }
    torch.manual_seed(0)  # the models start from whatever weights they hold when handed over: seeded, the same each time
    models = {
        "cnn": (small_cnn(), {"lr": 1e-3}),
        "resnet": (timm.create_model("resnet10t", pretrained=False, num_classes=10), {"lr": 1e-3, "input_size": 32}),
    }
    result = kt_swarm.run(config, models=models, data=fake_data, engine=args.engine, out=args.out)
    print(format_table(result.summary))
    print("run directory:", result.run_dir)


if __name__ == "__main__":
    main()
