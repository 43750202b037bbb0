"""kt_swarm.run from Python (kt_swarm/api.py): models built in a script and data from a factory, on both engines
(equal in float64), resumed from Python, the given objects put in Ray's object store once; a lazy memory-mapped
dataset read without copying it into the actors; and the two docs pages' examples, run as written."""
import os
import re
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import kt_swarm
from kt_swarm.summary import differences
from support import ROOT
from support.hooks import Stop, stop_after
from support.launch import cli

import own_data  # tests/helpers

CONFIG = {"dtype": "float64", "transfer": {"epochs": 2, "batch_size": 24}, "eval_batch_size": 64, "control": True,
          "checkpoint": {"every_steps": 3}, "data": {"augment": {"shift": 2, "hflip": True}},
          "participants": [{"name": "mlp", "model": "faulty_models:tiny_mlp", "model_args": {"img_size": 16}, "lr": 1e-2}]}


class Locked(nn.Linear):
    def __init__(self):
        super().__init__(768, 3)
        import threading

        self.lock = threading.Lock()


def nets() -> dict:
    """Two models built by hand, one with its own preprocessing."""
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3))
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64, 3))
    return {"linear": (linear, {"lr": 1e-2}), "conv": (conv, {"lr": 3e-3, "mean": [0.2], "std": [0.3]})}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "local"
    models = nets()
    before = {n: [p.clone() for p in m.parameters()] for n, (m, _) in models.items()}
    result = kt_swarm.run(CONFIG, models=models, data=own_data.stripes, out=out, engine="local")
    untouched = all(torch.equal(a, b) for n, (m, _) in models.items() for a, b in zip(before[n], m.parameters()))
    return result, untouched


def test_a_run_from_python_records_what_it_was_handed(local_run):
    result, untouched = local_run
    assert isinstance(result, kt_swarm.RunResult) and (result.run_dir / "summary.json").is_file()
    assert (result.run_dir / "report.png").is_file()
    assert untouched  # the run trained copies: the caller's modules are as they were
    text = (result.run_dir / "config.yaml").read_text()
    assert "factory: own_data:stripes" in text  # importable: recorded by name
    assert re.search(r"name: conv\n  model: given\n  lr: 0.003", text) and "- 0.2" in text
    assert [*result.summary["participants"]] == ["mlp", "linear", "conv"]
    assert all(p["accuracy_after"] > 0.9 for p in result.summary["participants"].values())  # stripes are easy


def test_a_run_stopped_in_python_resumes_to_the_same_summary(local_run, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Stop):
        kt_swarm.run(CONFIG, models=nets(), data=own_data.stripes, out=out, engine="local", on_record=stop_after(9))
    code, _, err = cli(["run", "--resume", str(out), "--engine", "local"])  # the modules live in Python only
    assert code == 2 and "model: given is an nn.Module handed to kt_swarm.run(models=...)" in err
    with pytest.raises(kt_swarm.UserError, match=r"the run reads data.factory 'own_data:stripes'; data= is another"):
        kt_swarm.run(resume=out, models=nets(), data=lambda: own_data.stripes(n=480), engine="local")
    other = nets()
    other["conv"] = (nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3)), {})
    with pytest.raises(kt_swarm.UserError, match="participant 'conv': the checkpoint does not fit its model"):
        kt_swarm.run(resume=out, models=other, data=own_data.stripes, engine="local")
    with pytest.raises(kt_swarm.UserError, match=r"models\['mlp'\] is not a participant the run was handed as an "):
        kt_swarm.run(resume=out, models={**nets(), "mlp": nets()["linear"]}, data=own_data.stripes, engine="local")
    resumed = kt_swarm.run(resume=out, models=nets(), data=own_data.stripes, engine="local")
    assert resumed.summary["faults"]["resumes"] == 1
    assert not differences(resumed.summary, local_run[0].summary, across_engines=False)


def test_a_run_resumed_on_other_data_is_refused(tmp_path):
    """Data handed over as objects is not in config.yaml: data.json's outline is what a resume is checked against."""
    out = tmp_path / "run"
    with pytest.raises(Stop):
        kt_swarm.run(CONFIG, models=nets(), data=own_data.stripes(), out=out, engine="local", on_record=stop_after(5))
    with pytest.raises(kt_swarm.UserError, match=r"was run on other data: its splits were \{'train': 216, .* now "
                                                  r"\{'train': 432"):
        kt_swarm.run(resume=out, models=nets(), data=own_data.stripes(n=480), engine="local")
    assert kt_swarm.run(resume=out, models=nets(), data=own_data.stripes(), engine="local").summary["faults"]["resumes"] == 1


def test_a_config_object_takes_models_and_data_too(tmp_path):
    from kt_swarm.config import parse_config

    cfg = parse_config({**CONFIG, "data": {}, "transfer": {"epochs": 1, "batch_size": 24}, "control": False})
    result = kt_swarm.run(cfg, models={"linear": nets()["linear"]}, data=own_data.stripes, out=tmp_path / "r",
                          engine="local", overrides="participants.*.lr=0.02")
    assert [*result.summary["participants"]] == ["mlp", "linear"]
    text = (result.run_dir / "config.yaml").read_text()
    assert "kind: python" in text and text.count("lr: 0.02") == 2


def test_datasets_handed_over_as_objects_and_a_given_model_fine_tuned_first(tmp_path, monkeypatch):
    """data= the splits themselves (recorded as `given`: only Python can resume it); zoo: true trains a given
    model on the pretraining split first, cached under a key of its weights."""
    monkeypatch.setenv("KT_SWARM_CACHE", str(tmp_path / "cache"))  # a zoo of its own: others count theirs
    splits = own_data.stripes()
    cfg = {**CONFIG, "data": {"pretrain_fraction": 0.3}, "zoo": {"epochs": 1, "batch_size": 16}}
    models = {"linear": (nets()["linear"][0], {"lr": 1e-2, "zoo": True})}
    first = kt_swarm.run(cfg, models=models, data=splits, out=tmp_path / "a", engine="local")
    assert "factory: given" in (first.run_dir / "config.yaml").read_text()
    code, _, err = cli(["run", "--dry-run", str(first.run_dir / "config.yaml")])
    assert code == 2 and "model: given is an nn.Module handed to kt_swarm.run(models=...)" in err
    cached = list(Path(os.environ["KT_SWARM_CACHE"], "zoo").glob("given-*.safetensors"))
    assert len(cached) == 1
    again = kt_swarm.run(cfg, models=models, data=splits, out=tmp_path / "b", engine="local")
    assert list(Path(os.environ["KT_SWARM_CACHE"], "zoo").glob("given-*.safetensors")) == cached  # read, not retrained
    assert again.summary["participants"]["linear"]["metrics"] == first.summary["participants"]["linear"]["metrics"]


def test_bad_arguments_are_one_line(tmp_path):
    net = nets()["linear"][0]
    cases = [
        ({"models": {"linear": "resnet18"}}, "kt_swarm.run: models['linear'] is a str, not a torch.nn.Module"),
        ({"models": {"mlp": (net, {"lr": 1e-2})}}, "participant 'mlp' has model 'faulty_models:tiny_mlp' in the "
                                                    "config and an nn.Module in models=: give one of them"),
        ({"data": [1, 2]}, "kt_swarm.run: data is a list; give a factory"),
        ({"models": {"locked": (Locked(), {"lr": 1e-2})}}, "participant 'locked': its nn.Module cannot be copied: "
                                                           "cannot pickle '_thread.lock' object"),
        ({"data": own_data.mostly_unlabelled}, "train has 3 labelled samples, fewer than the 24 a validation split of "
                                               "data.val_fraction 0.1 needs: return a val split"),
        ({"overrides": ["transfer.epochs=0"]}, "'transfer.epochs': must be positive, got 0"),
        ({"resume": tmp_path}, "kt_swarm.run: resume continues with the run's own config.yaml: give no config"),
    ]
    for kwargs, message in cases:
        with pytest.raises(kt_swarm.UserError) as e:
            kt_swarm.run(CONFIG, **{"data": own_data.stripes, "out": tmp_path / "run", "engine": "local", **kwargs})
        assert message in str(e.value) and "\n" not in str(e.value), (kwargs, str(e.value))
        assert not (tmp_path / "run").exists()
    with pytest.raises(kt_swarm.UserError, match="nothing"):
        kt_swarm.run(resume=tmp_path / "nothing")


def test_the_ray_engine_gets_the_given_objects_once_and_agrees_with_the_local_engine(local_run, ray_instance, tmp_path,
                                                                                     monkeypatch):
    import ray

    put, sizes = ray.put, []

    def counting_put(value, *args, **kwargs):
        sizes.append(type(value).__name__)
        return put(value, *args, **kwargs)

    monkeypatch.setattr(ray, "put", counting_put)
    result = kt_swarm.run(CONFIG, models=nets(), data=own_data.stripes, out=tmp_path / "ray", engine="ray")
    # The data and each given model, once (the exchange puts its own small objects besides).
    assert sorted(t for t in sizes if t in ("Dataset", "Sequential")) == ["Dataset", "Sequential", "Sequential"]
    assert not differences(result.summary, local_run[0].summary, across_engines=True)


def test_a_hugging_face_dataset_on_disk_runs_on_the_ray_engine(ray_instance, tmp_path):
    pytest.importorskip("datasets")
    own_data.save_stripes_hf(tmp_path / "hf")
    cfg = {**CONFIG, "data": {"kind": "huggingface", "root": str(tmp_path / "hf"), "columns": {"image": "img", "label": "y"}},
           "control": False}
    result = kt_swarm.run(cfg, models={"conv": nets()["conv"]}, out=tmp_path / "run", engine="ray")
    assert (result.run_dir / "report.png").is_file() and result.summary["engine"] == "ray"
    assert result.summary["data"]["source"] == str(tmp_path / "hf") and result.summary["data"]["test_samples"] == 60
    assert all(p["accuracy_after"] > 0.9 for p in result.summary["participants"].values())


def test_a_memory_mapped_dataset_stays_out_of_the_actors_memory(ray_instance, tmp_path):
    """A 1 GiB memory-mapped dataset (sparse on disk): each actor opens it and reads its batches, and holds
    far less than the data in its own memory (anonymous pages); the driver reads labels and first items only."""
    import psutil

    path = tmp_path / "images.npy"
    n = (1 << 30) // (3 * 64 * 64)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 3, 64, 64))
    array[:: n // 64] = 200  # a few items with content, the rest sparse zeros
    array.flush()
    del array
    driver = psutil.Process().memory_info().rss
    cfg = {"data": {"kind": "python", "factory": "own_data:memmap_images",
                    "args": {"path": str(path), "train": n - 2048, "test": 2048}, "transfer_samples": 96,
                    "eval_samples": 64},
           "transfer": {"epochs": 1, "batch_size": 32}, "eval_batch_size": 64,
           "participants": [{"name": f"m{i}", "model": "faulty_models:tiny_mlp", "model_args": {"img_size": 64},
                             "lr": 1e-3} for i in range(2)]}
    seen = {}

    def sample(record):  # every actor's resident anonymous memory, while the run is on
        if record.get("event") == "placed":
            seen["pids"] = [p["pid"] for p in record["participants"].values()]
        for pid in seen.get("pids", []):
            status = Path(f"/proc/{pid}/status").read_text()
            anon = int(re.search(r"RssAnon:\s+(\d+) kB", status).group(1)) << 10
            seen[pid] = max(seen.get(pid, 0), anon)

    kt_swarm.run(cfg, out=tmp_path / "run", engine="ray", on_record=sample)
    assert len(seen) == 3
    assert all(anon < (1 << 30) // 2 for pid, anon in seen.items() if pid != "pids"), seen
    assert psutil.Process().memory_info().rss - driver < (1 << 30) // 4


@pytest.mark.parametrize("page", ["own-data.md", "python-api.md"])
def test_the_docs_pages_first_example_runs_as_written(page, tmp_path, monkeypatch):
    text = (ROOT / "docs" / page).read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "example.py"
    script.write_text(code)
    runpy.run_path(str(script), run_name="__main__")
    assert list(tmp_path.glob("runs/*/report.png")) or list(tmp_path.glob("**/report.png"))


def test_the_from_python_example_runs(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["from_python.py", "--engine", "local", "--size", "128", "--epochs", "1",
                                     "--out", str(tmp_path / "run")])
    runpy.run_path(str(ROOT / "examples" / "from_python.py"), run_name="__main__")
    assert (tmp_path / "run" / "report.png").is_file()
    assert os.path.isfile(tmp_path / "run" / "summary.json")
