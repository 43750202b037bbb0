"""End to end: `kt-swarm run` on the smoke config, the zoo cache, folder data, and the engine's numbers."""
import json
import os
import shutil

import pytest
import torch
from PIL import Image

from kt_swarm.config import DataConfig, load_config
from kt_swarm.coordinator import make_engine
from kt_swarm.data import batch_plan, load_dataset
from kt_swarm.objectives import LossSpec, participant_loss
from kt_swarm.rundir import read_records
from kt_swarm.summary import upgrade
from support import ROOT
from support.datasets import write_folder
from support.launch import kt_swarm

SMOKE = ROOT / "configs" / "smoke.yaml"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, zoo_cache):
    out = tmp_path_factory.mktemp("runs") / "smoke"
    proc = kt_swarm("run", SMOKE, "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, proc


def test_smoke_run_writes_a_complete_run_directory(smoke_run):
    out, proc = smoke_run
    assert sorted(p.name for p in out.iterdir()) == [".lock", "checkpoints", "config.yaml", "data.json", "metrics.jsonl",
                                                    "report.md", "report.png", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engine"] == "ray" and summary["gradient_mode"] in ("detached", "exact") and summary["metric"] == "accuracy"
    names = ["resnet", "vit", "mixer"]
    assert list(summary["participants"]) == names
    for p in summary["participants"].values():
        for key in ("accuracy_before", "accuracy_after", "accuracy_control"):
            assert 0.0 <= p[key] <= 1.0
        assert p["final_train_loss"] > 0 and 0 <= p["teach_share"] <= 1 and p["node"]
    matrix = torch.tensor(summary["role_matrix"])
    assert matrix.shape == (3, 3) and (matrix.diagonal() == 0).all()
    # Each taught sample has N-1 = 2 students; shares come from the same matrix.
    samples = summary["steps"] * 64  # one epoch, batch 64
    for i, name in enumerate(names):
        assert summary["participants"][name]["teach_share"] == pytest.approx(matrix[i].sum().item() / 2 / samples)
    assert matrix.sum() <= 2 * samples
    # The resolved config round-trips through the loader.
    assert load_config(out / "config.yaml").participants[0].name == "resnet"
    # The readable table names every participant and fits a 100-column terminal.
    assert all(name in proc.stdout for name in names) and "vs ctrl" in proc.stdout
    assert max(len(line) for line in proc.stdout.splitlines()) <= 100


def test_unlabelled_pool_with_every_arm_from_the_command_line(tmp_path):
    """A new user's semi-supervised run: `better` on a 75% unlabelled pool, control and self-training
    beside it. (The Ray engine's equality for every strategy on such data: tests/test_swarm.py.)"""
    out = tmp_path / "run"
    env = {**os.environ, "KT_SWARM_CACHE": str(tmp_path / "cache")}  # its zoo stays out of the session's cache
    proc = kt_swarm("run", SMOKE, "--out", out, "--engine", "local", "transfer.strategy=better", "self_training=true",
                    "data.unlabelled_fraction=0.75", "transfer.pseudo_threshold=0.5", "transfer.batch_size=32", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategy"] == "better" and summary["data"]["unlabelled_samples"] == 384
    assert summary["data"]["labelled_samples"] == 128 and summary["success_rate_vs_self_training"] is not None
    lines = read_records(out)
    steps = {arm: [r for r in lines if r.get("arm") == arm and "losses" in r] for arm in ("transfer", "control", "self_training")}
    assert len(steps["transfer"]) == len(steps["control"]) == len(steps["self_training"]) == summary["steps"] == 16
    assert all(sum(r["taught"].values()) == 0 for r in steps["self_training"])
    assert "self-training" in (out / "report.md").read_text() and "vs self" in proc.stdout
    for p in summary["participants"].values():
        assert p["delta_vs_self_training"] == pytest.approx(p["accuracy_after"] - p["accuracy_self_training"])


def test_summary_explains_the_transfer(smoke_run):
    out, _ = smoke_run
    summary = json.loads((out / "summary.json").read_text())
    parts = summary["participants"].values()
    for p in parts:
        # Accuracy moves by exactly the flips: gained minus lost, against the same starting predictions.
        assert p["delta"] == pytest.approx(p["positive_flips"] - p["negative_flips"])
        assert p["delta"] == pytest.approx(p["accuracy_after"] - p["accuracy_before"])
        assert p["accuracy_control"] - p["accuracy_before"] == pytest.approx(p["control_positive_flips"] - p["control_negative_flips"])
        assert p["delta_vs_control"] == pytest.approx(p["accuracy_after"] - p["accuracy_control"])
        assert p["top5_after"] >= p["accuracy_after"] and p["top5_before"] >= p["accuracy_before"]  # 10 classes: top-5 applies
        assert 0 <= p["complementary"] <= 1 - p["accuracy_before"] + 1e-9  # only its own mistakes can be learned
        assert p["teach_share_per_epoch"][-1] == p["teach_share"]
    assert summary["success_rate"] == pytest.approx(sum(p["delta"] > 0 for p in parts) / 3)
    assert summary["role_matrix_per_epoch"][-1] == summary["role_matrix"]


def test_report_is_rebuilt_from_the_run_directory_and_runs_compare(smoke_run, tmp_path):
    out, _ = smoke_run
    run_dir = tmp_path / "copy"
    shutil.copytree(out, run_dir)
    original = (run_dir / "report.md").read_text()
    for name in ("report.md", "report.png"):
        (run_dir / name).unlink()
    proc = kt_swarm("report", run_dir)
    assert proc.returncode == 0, proc.stderr
    assert (run_dir / "report.md").read_text() == original  # from metrics.jsonl and summary.json alone
    summary = json.loads((run_dir / "summary.json").read_text())
    for name, p in summary["participants"].items():
        after = f"{100 * p['accuracy_after']:.2f}{'*' if p['kept_start'] else ''}"
        assert f"| {name} | {100 * p['accuracy_before']:.2f} | {after} |" in original
    assert "```yaml" in original and "## Role matrix" in original
    with Image.open(run_dir / "report.png") as png:
        assert png.size[0] > 1000 and png.size[1] > 700 and len(png.convert("L").getcolors(maxcolors=256)) > 50  # drawn, not blank
    proc = kt_swarm("report", out, run_dir, "--out", tmp_path / "cmp")
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert table.count("| smoke | resnet |") == 1 and table.count("| copy | resnet |") == 1
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 10_000
    bad = kt_swarm("report", tmp_path / "missing")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "summary.json is missing" in bad.stderr


OLD_NAMES = {"accuracy_before": "acc_before", "accuracy_after": "acc_after", "accuracy_control": "acc_control",
             "accuracy_self_training": "acc_self_training", "val_accuracy": "val_acc",
             "val_accuracy_selected": "val_acc_selected", "val_accuracy_mean": "val_acc_mean", "test_accuracy": "test_acc"}
NEW_ONLY = ("metric", "selection", "kept_start", "control_kept_start", "self_training_kept_start")


def as_written_before(d: dict) -> dict:
    """A summary or record as runs wrote it before the headline metric was named (acc_* for every task)."""
    return {OLD_NAMES.get(k, k): as_written_before(v) if k == "participants" or isinstance(v, dict) and "accuracy_after" in v else v
            for k, v in d.items() if k not in NEW_ONLY}


def test_a_run_directory_in_the_old_names_gives_the_same_report(smoke_run, tmp_path):
    """`kt-swarm report` on a run written with acc_*, val_acc, val_acc_mean and test_acc (no `metric`, no
    kept_start): read in today's names (summary.upgrade), it gives the report the run itself wrote."""
    out, _ = smoke_run
    old = tmp_path / "old"
    shutil.copytree(out, old)
    summary = json.loads((out / "summary.json").read_text())
    legacy = as_written_before(summary)
    assert "acc_after" in legacy["participants"]["vit"] and "val_acc_mean" in legacy and "metric" not in legacy
    (old / "summary.json").write_text(json.dumps(legacy))
    (old / "metrics.jsonl").write_text("".join(json.dumps(as_written_before(r)) + "\n" for r in read_records(out)))
    assert '"test_acc"' in (old / "metrics.jsonl").read_text() and '"val_acc"' in (old / "metrics.jsonl").read_text()
    (old / "report.md").unlink()
    proc = kt_swarm("report", old)
    assert proc.returncode == 0, proc.stderr
    assert (old / "report.md").read_text() == (out / "report.md").read_text()
    upgraded, records = upgrade(legacy, read_records(old))
    assert upgraded["val_accuracy_mean"] == summary["val_accuracy_mean"] and records == read_records(out)
    assert upgraded["participants"] == summary["participants"]  # kept_start comes back from the selected epochs


def test_metrics_log_one_line_per_step_for_each_arm(smoke_run):
    out, _ = smoke_run
    lines = read_records(out)
    summary = json.loads((out / "summary.json").read_text())
    steps = [l for l in lines if "step" in l and "event" not in l]
    assert len([l for l in steps if l["arm"] == "transfer"]) == summary["steps"]
    assert len([l for l in steps if l["arm"] == "control"]) == summary["steps"]
    assert all(l["loss"] == pytest.approx(sum(l["losses"].values())) for l in steps)
    assert any(sum(l["taught"].values()) > 0 for l in steps if l["arm"] == "transfer")
    assert all(sum(l["taught"].values()) == 0 for l in steps if l["arm"] == "control")  # strategy none: nobody teaches
    evals = [l for l in lines if l.get("event") == "eval"]
    assert [(l["arm"], l["epoch"]) for l in evals] == [("transfer", -1), ("transfer", 0), ("control", -1), ("control", 0)]
    assert evals[0]["val_accuracy"] == evals[2]["val_accuracy"]  # both arms start from the same weights
    assert evals[1]["role_matrix"] == summary["role_matrix"]
    tests = {l["arm"]: l["test_accuracy"] for l in lines if l.get("event") == "test"}
    assert tests["start"]["vit"] == pytest.approx(summary["participants"]["vit"]["accuracy_before"])
    assert tests["control"]["mixer"] == pytest.approx(summary["participants"]["mixer"]["accuracy_control"])


def test_zoo_is_cached_and_reused(smoke_run, zoo_cache, tmp_path):
    files = sorted((zoo_cache / "zoo").glob("*.safetensors"))
    assert len(files) == 3
    stamps = [f.stat().st_mtime_ns for f in files]
    proc = kt_swarm("run", SMOKE, "--out", tmp_path / "again", "--engine", "local")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted((zoo_cache / "zoo").glob("*.safetensors")) == files
    assert [f.stat().st_mtime_ns for f in files] == stamps
    first = json.loads((smoke_run[0] / "summary.json").read_text())
    second = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert second["participants"]["resnet"]["accuracy_before"] == first["participants"]["resnet"]["accuracy_before"]


def test_a_damaged_zoo_cache_entry_is_trained_again(smoke_run, zoo_cache, tmp_path):
    victim = sorted((zoo_cache / "zoo").glob("resnet10t-*.safetensors"))[0]
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 3])
    proc = kt_swarm("run", SMOKE, "--out", tmp_path / "again", "--engine", "local")  # its log reaches stderr
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "unreadable" in proc.stderr and victim.stat().st_size == len(good)


def test_folder_of_pngs_works_with_the_zoo_unchanged(smoke_run, zoo_cache, tmp_path):
    fm = load_dataset(DataConfig())
    root = write_folder(tmp_path / "pngs", fm, per_class=40, classes=10)
    before = set((zoo_cache / "zoo").glob("*.safetensors"))
    proc = kt_swarm("run", SMOKE, "--out", tmp_path / "run", "--engine", "local", "--set", "data.kind=folder", "--set", f"data.root={root}",
                    "--set", "data.val_fraction=0.2", "--set", "data.pretrain_fraction=0.4", "--set", "zoo.batch_size=32",
                    "--set", "transfer.batch_size=32")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data"]["test_samples"] == 400
    assert len(set((zoo_cache / "zoo").glob("*.safetensors")) - before) == 3  # another dataset, its own zoo


def test_local_engine_equals_each_participant_stepping_its_own_share():
    """The contract the distributed swarm relies on, with real models in float64: one global
    backward equals every participant back-propagating participant_loss on its own."""
    cfg = load_config(SMOKE, ["dtype=float64", "data.augment.hflip=true"])
    for detach in (True, False):
        data = load_dataset(cfg.data)
        for p in cfg.participants:
            p.weights = "none"
        engine = make_engine("local", cfg, data)
        engine.reset_optimizers("adam", [1e-3] * 3, [0.0] * 3)
        solo = [p.clone() for p in engine.participants]
        for p in solo:
            p.reset_optimizer("adam", 1e-3, 0.0)
        loss = LossSpec(temperature=2.0, weight=1.0, detach_teacher=detach)
        for step in range(3):
            result = engine.train_step(0, step, loss)
            plan = batch_plan(data.splits["train"], seed=cfg.seed, epoch=0, step=step, batch_size=cfg.transfer.batch_size,
                              augment=cfg.data.augment)
            target = data.labels[plan.ids]
            own = [p.forward(data, plan) for p in solo]
            peers = torch.stack([z.detach() for z in own])
            values = []
            for m, p in enumerate(solo):
                value, roles = participant_loss(own[m], peers, m, target, temperature=2.0, weight=1.0, detach_teacher=detach)
                p.optimizer.zero_grad()
                value.backward(retain_graph=True)
                p.optimizer.step()
                values.append(value.item())
            assert torch.equal(roles, result.roles)
            assert values == pytest.approx(result.losses, rel=1e-12)
        for a, b in zip(engine.participants, solo):
            for (k, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
                torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12, msg=f"{a.name}.{k} (detach={detach})")
