"""Selection never leaves a participant worse than its start, as far as validation can tell: the start is a
candidate in every arm (selection: best_val), and only a strict improvement on validation leaves it."""
import json
from pathlib import Path

import pytest

from kt_swarm.config import parse_config
from kt_swarm.coordinator import run
from kt_swarm.fork import prepare_fork
from kt_swarm.rundir import RunDir, read_records
from kt_swarm.summary import differences, format_table
from support.configs import faulty, mlp_config
from support.hooks import Stop, stop_after


def hurt_config(cache: Path, **overrides) -> dict:
    """'reckless': a zoo-pretrained tiny MLP at a learning rate that can only wreck it; 'steady': one from
    random weights at a sane rate, which training improves. Its zoo is cached in `cache`, not the session's
    (test_run counts what the session's cache holds)."""
    raw = mlp_config(**overrides)
    raw["participants"] = [
        faulty("steady", hidden=24), faulty("reckless", lr=5.0, weights="zoo", hidden=16)]
    raw["data"] = {**raw["data"], "pretrain_fraction": 0.3}
    raw["zoo"] = {"epochs": 10, "batch_size": 32, "cache_dir": str(cache)}
    return raw


@pytest.fixture(scope="module")
def hurt(tmp_path_factory):
    out = tmp_path_factory.mktemp("hurt") / "run"
    cfg = parse_config(hurt_config(out.parent / "zoo"))
    with RunDir(out) as rd:
        summary = run(cfg, rd, "local")
    return cfg, out, summary


def start_val(records: list[dict], arm: str) -> dict:
    return next(r["val_accuracy"] for r in records if r.get("arm") == arm and r.get("event") == "eval" and r["epoch"] == -1)


def test_a_participant_that_training_only_hurt_keeps_its_start_in_every_arm(hurt):
    cfg, out, summary = hurt
    records = read_records(out)
    p = summary["participants"]["reckless"]
    for arm, prefix in (("transfer", ""), ("control", "control_")):
        start = start_val(records, arm)["reckless"]
        evals = [r["val_accuracy"]["reckless"] for r in records if r.get("arm") == arm and r.get("event") == "eval"]
        assert len(evals) == 3 and all(v <= start for v in evals[1:]), (arm, evals)  # training never beat the start
        assert p[f"{prefix}kept_start"] is True and p[f"{prefix}best_epoch"] == 0
        assert summary["checkpoints"]["best"][arm]["reckless"] == "start/reckless.pt"
    # The start's weights, loaded back: the same test predictions as before any arm.
    assert p["accuracy_after"] == p["accuracy_control"] == p["accuracy_before"] > 0.2  # above chance (0.1)
    assert p["positive_flips"] == p["negative_flips"] == p["control_positive_flips"] == p["control_negative_flips"] == 0
    assert p["val_accuracy_selected"] == start_val(records, "transfer")["reckless"]
    tests = {r["arm"]: r["test_accuracy"]["reckless"] for r in records if r.get("event") == "test"}
    assert tests["start"] == tests["transfer"] == tests["control"]


def test_a_participant_that_training_improved_leaves_its_start(hurt):
    _, out, summary = hurt
    records = read_records(out)
    p = summary["participants"]["steady"]
    assert p["kept_start"] is False and p["control_kept_start"] is False
    assert p["best_epoch"] >= 1 and p["val_accuracy_selected"] == p["val_accuracy"][p["best_epoch"] - 1]
    assert p["val_accuracy_selected"] > start_val(records, "transfer")["steady"]
    assert summary["checkpoints"]["best"]["transfer"]["steady"] == f"best/transfer/steady-e{p['best_epoch']}.pt"
    assert summary["val_accuracy_mean"] == pytest.approx(
        (p["val_accuracy_selected"] + summary["participants"]["reckless"]["val_accuracy_selected"]) / 2)


def test_the_table_and_the_report_say_where_a_start_was_kept(hurt):
    _, out, summary = hurt
    table = format_table(summary).splitlines()
    reckless, steady = (next(line for line in table if line.startswith(n)) for n in ("reckless", "steady"))
    assert reckless.split()[2].endswith("*") and reckless.split()[3].endswith("*") and "*" not in steady
    note = " ".join(table[table.index(next(line for line in table if line.startswith("* kept"))):])
    assert "reckless (transfer)" in note and "reckless (control)" in note and "steady" not in note
    assert max(map(len, table)) <= 100
    report = (out / "report.md").read_text()
    assert f"| reckless | {100 * summary['participants']['reckless']['accuracy_before']:.2f} | " in report
    assert "* kept its start weights" in report and "reckless (control)" in report


@pytest.mark.parametrize("where", ["transfer_test", "control_epoch_2"])
def test_a_kept_start_survives_a_resume(hurt, tmp_path, where):
    """Stopped where the arm's selected weights are loaded back (after its last checkpoint, before its test),
    or in the control arm's second epoch: resumed, the run ends as the one never stopped."""
    cfg, out, full = hurt
    records = read_records(out)
    if where == "transfer_test":
        index = next(i for i, r in enumerate(records, 1) if r.get("arm") == "transfer" and r.get("event") == "test")
    else:
        index = next(i for i, r in enumerate(records, 1) if r.get("arm") == "control" and r.get("epoch") == 1)
    run_dir = tmp_path / "run"
    with pytest.raises(Stop):
        with RunDir(run_dir) as rd:
            run(cfg, rd, "local", on_record=stop_after(index))
    with RunDir(run_dir, resume=True) as rd:
        resumed = run(cfg, rd, "local")
    assert not differences(resumed, full, across_engines=False)
    assert resumed["participants"]["reckless"]["kept_start"] and resumed["faults"]["resumes"] == 1


def test_a_fork_after_a_kept_start_ends_as_the_run_it_came_from(hurt, tmp_path):
    """The control arm's last set names the start set's own file as the transfer arm's selected weights: the
    fork copies it once, with the start set, and the start set stays loadable."""
    cfg, out, full = hurt
    index = next(i for i, r in enumerate(read_records(out), 1) if r.get("arm") == "control" and r.get("epoch") == 1)
    with pytest.raises(Stop):
        with RunDir(tmp_path / "stopped") as rd:
            run(cfg, rd, "local", on_record=stop_after(index))
    forked_cfg, rd = prepare_fork(tmp_path / "stopped", [], tmp_path / "fork")
    with rd:
        summary = run(forked_cfg, rd, "local")
    assert not differences(summary, full, across_engines=False)
    assert summary["checkpoints"]["best"]["transfer"]["reckless"] == "start/reckless.pt"
    hashes = {}  # every set that lists a file lists the same file
    for listed in json.loads((tmp_path / "fork" / "checkpoints" / "manifest.json").read_text())["sets"]:
        for rel, sha in listed["files"].items():
            assert hashes.setdefault(rel, sha) == sha, rel


def test_selection_last_keeps_the_last_epoch_even_when_it_hurt(tmp_path):
    with RunDir(tmp_path / "run") as rd:
        summary = run(parse_config(hurt_config(tmp_path / "zoo", selection="last", control=False)), rd, "local")
    p = summary["participants"]["reckless"]
    assert p["best_epoch"] == 2 and p["kept_start"] is False and summary["checkpoints"]["best"]["transfer"]["reckless"] is None
    assert p["val_accuracy_selected"] == p["val_accuracy"][-1] and p["accuracy_after"] < p["accuracy_before"]
