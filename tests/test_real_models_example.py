"""examples/real_models/: prepare.py on the real elpv package and checkpoints (the `real-models` extra, which
`make setup` installs), and configs/real_models.yaml run end to end on a few images at a small input size:
three ImageNet EfficientNet-Lites, fine-tuned from their checkpoints (zoo: true), grayscale given to them as RGB."""
import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from support import ROOT
from support.configs import write_config
from support.launch import kt_swarm, load_script

SCRIPT = ROOT / "examples" / "real_models" / "prepare.py"


def run_prepare(*args):
    return subprocess.run([sys.executable, str(SCRIPT), "--no-install", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "real_models"
    r = run_prepare("--out", out)
    assert r.returncode == 0, r.stderr
    return out


def test_the_split_is_fixed_stratified_and_whole(prepared):
    files = {p.name: (p.parts[-3], p.parts[-2]) for p in (prepared / "elpv").glob("*/*/*.png")}
    assert len(files) == 2624  # every cell image, once
    per_split = Counter(split for split, _ in files.values())
    assert per_split == {"train": 1576, "val": 394, "test": 654}
    # Stratified: each split has the data's share of defective cells (821 of 2624) to within a point.
    for split, n in per_split.items():
        defective = sum(1 for s, c in files.values() if s == split and c == "defective")
        assert abs(defective / n - 821 / 2624) < 0.01, split
    # Fixed: the same call gives the same assignment.
    prepare = load_script(SCRIPT)
    rows = prepare.read_labels(Path(importlib.util.find_spec("elpv_dataset").submodule_search_locations[0]))
    assert prepare.split_of(rows) == prepare.split_of(rows)
    weights = sorted(p.name for p in (prepared / "weights").iterdir())
    assert weights == [f"efficientnet-lite{i}.pth" for i in range(3)]


def test_levels_keep_the_four_defect_probabilities(tmp_path):
    r = run_prepare("--out", tmp_path / "levels", "--labels", "levels")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "levels" / "elpv" / "test").iterdir()) == ["p000", "p033", "p067", "p100"]


def test_refusals_are_one_line_and_write_nothing(prepared, tmp_path, capsys):
    r = run_prepare("--out", prepared)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "exists; pass --force" in r.stderr
    with pytest.raises(SystemExit) as e:  # a missing package, with installing refused: how to install it
        load_script(SCRIPT).ensure("no_such_package_kt", "no-such-package-kt==1.0", install=False)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-such-package-kt is not installed: pip install 'no-such-package-kt==1.0'" in err


def test_the_example_config_runs_end_to_end(prepared, tmp_path):
    """Tiny: a few images per split at 64 px, one zoo and one transfer epoch, the local engine. Checks that the
    ImageNet checkpoints become 3-channel 2-class task models, are fine-tuned (and cached by their start), and
    that both arms finish with every participant reported."""
    raw = yaml.safe_load((ROOT / "configs" / "real_models.yaml").read_text())
    raw["data"]["root"] = str(prepared / "elpv")
    for i, p in enumerate(raw["participants"]):
        p["weights"] = str(prepared / "weights" / f"efficientnet-lite{i}.pth")
    config = write_config(tmp_path / "real_models.yaml", raw)
    cache = tmp_path / "cache"  # its own: the session's zoo cache holds the smoke zoo alone (test_run counts it)
    r = kt_swarm("run", config, "--engine", "local", "--out", tmp_path / "run", "-q", "--set", "data.max_per_split=64",
                 "--set", "zoo.epochs=1", "--set", "transfer.epochs=1", "--set", "participants.*.input_size=64", timeout=600,
                 env={**os.environ, "KT_SWARM_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert sorted(summary["participants"]) == ["lite0", "lite1", "lite2"]
    for p in summary["participants"].values():
        assert 0 <= p["accuracy_after"] <= 100 and 0 <= p["accuracy_control"] <= 100
    cached = sorted((cache / "zoo").glob("tf_efficientnet_lite*.safetensors"))
    assert len(cached) == 3
    state = load_file(str(next(c for c in cached if c.name.startswith("tf_efficientnet_lite0"))))
    assert state["conv_stem.weight"].shape[1] == 3 and state["classifier.weight"].shape[0] == 2
    # Fine-tuned from the checkpoint, not from scratch: the stem moved a little, not far.
    start = torch.load(prepared / "weights" / "efficientnet-lite0.pth", weights_only=True)["_conv_stem.weight"]
    moved = (state["conv_stem.weight"] - start).norm() / start.norm()
    assert 0 < moved < 0.2
