"""Runs that survive: checkpoint sets, resume after a stop at any step, NaN/Inf steps, damaged checkpoints."""
import json
import os
import signal

import pytest
import torch

from kt_swarm.checkpoint import Checkpoints, config_digest
from kt_swarm.config import parse_config, to_dict
from kt_swarm.coordinator import run
from kt_swarm.errors import UserError
from kt_swarm.rundir import RunDir, read_records
from kt_swarm.summary import differences
from support import ROOT, helpers_env
from support.configs import faulty, mlp_config, write_config
from support.hooks import Stop, stop_after
from support.launch import kt_swarm, start_kt_swarm
from support.run_log import wait_for


def stop_and_resume(cfg, out, index: int) -> dict:
    """Run on the local engine into `out`, stop after metrics record `index`, resume; the resumed summary."""
    with pytest.raises(Stop):
        with RunDir(out) as rd:
            run(cfg, rd, "local", on_record=stop_after(index))
    with RunDir(out, resume=True) as rd:
        return run(cfg, rd, "local")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    cfg = parse_config(mlp_config())
    out = tmp_path_factory.mktemp("full") / "run"
    with RunDir(out) as rd:
        summary = run(cfg, rd, "local")
    return cfg, out, summary, read_records(out)


def test_a_finished_run_keeps_its_start_set_best_models_and_the_last_sets(uninterrupted):
    cfg, out, summary, _ = uninterrupted
    manifest = json.loads((out / "checkpoints" / "manifest.json").read_text())
    names = [s["name"] for s in manifest["sets"]]
    # 3 steps an epoch, 2 epochs, checkpoints every 2 steps and at epoch ends: control 2, 3, 4, 6 -> keep 2.
    assert names == ["start", "control-0000004", "control-0000006"]
    # Where each set stands: the next step to run (control-0000004: 4 steps done, step 1 of epoch index 1 next).
    assert [s["at"] for s in manifest["sets"]] == [{"arm": None, "epoch": 0, "step": 0},
                                                    {"arm": "control", "epoch": 1, "step": 1},
                                                    {"arm": "control", "epoch": 2, "step": 0}]
    listed = {rel for s in manifest["sets"] for rel in s["files"]}
    on_disk = {p.relative_to(out / "checkpoints").as_posix() for p in (out / "checkpoints").rglob("*") if p.is_file()}
    assert on_disk == listed | {"manifest.json"}  # pruned sets and superseded best models are gone
    for arm, best in summary["checkpoints"]["best"].items():
        for name, rel in best.items():
            epoch = summary["participants"][name]["best_epoch" if arm == "transfer" else "control_best_epoch"]
            assert rel == (f"best/{arm}/{name}-e{epoch}.pt" if epoch else f"start/{name}.pt") and rel in listed
    ckpt = Checkpoints(out / "checkpoints", config_digest(to_dict(cfg)), ["wide", "narrow"], keep=2)
    run_state, states = ckpt.load_set("control-0000006")
    states = list(states)
    assert set(states[0]) == {"model", "optimizer", "rng"} and states[0]["optimizer"]["state"]
    assert run_state["current"]["epoch"] == 2 and set(run_state["arms"]) == {"transfer"}


def test_a_run_stopped_after_any_record_resumes_to_the_same_summary(uninterrupted, tmp_path):
    """Every place the driver can die (each metrics record is written at a step, eval or test
    boundary): stop there, resume, and compare with the run that never stopped, in float64."""
    cfg, _, full, records = uninterrupted
    for index in range(1, len(records) + 1):
        out = tmp_path / f"stopped-{index}"
        resumed = stop_and_resume(cfg, out, index)
        assert not differences(resumed, full, across_engines=False), f"stopped after record {index}: {records[index - 1]}"
        assert resumed["faults"]["resumes"] == 1
        lines = read_records(out)
        # The log is the uninterrupted one plus the resume marker: steps after the checkpoint are not
        # doubled. (Where the processes are is logged again: they are new ones.)
        ours = [r for r in lines if r.get("event") not in ("resumed", "placed")]
        assert ours == [r for r in records if r.get("event") != "placed"], index


@pytest.mark.parametrize("strategy", ["kl_dp", "kd"])
def test_frozen_copies_survive_a_resume(strategy, tmp_path):
    """kl_dp's start copies (with calibrated scores and trusted teachers) and kd's frozen teacher, on
    half-unlabelled data with all three arms: a run stopped mid-transfer, at the arm's end and
    mid-self-training resumes to the uninterrupted summary."""
    cfg = parse_config(mlp_config(transfer={"epochs": 2, "batch_size": 16, "temperature": 2.0, "strategy": strategy,
                                            "teacher": "wide", "calibrate": strategy == "kl_dp",
                                            "trusted_teachers": strategy == "kl_dp",
                                            "schedule": "cosine" if strategy == "kd" else "constant"},
                                  data={"max_per_split": 96, "unlabelled_fraction": 0.5}, self_training=True))
    with RunDir(tmp_path / "full") as rd:
        full = run(cfg, rd, "local")
    records = read_records(tmp_path / "full")
    arms = [r.get("arm") for r in records]
    assert full["data"]["unlabelled_samples"] == 48 and full["participants"]["wide"]["accuracy_self_training"] is not None
    if strategy == "kd":  # the frozen teacher ends where it started (the same weights: it kept its start)
        assert full["participants"]["wide"]["accuracy_after"] == full["participants"]["wide"]["accuracy_before"]
    else:
        assert full["role_matrix"][0][0] > 0  # learned from its own start somewhere
        # Calibration temperatures, fit once at each arm's start, are kept by a resumed arm (compared below).
        assert all(r["score_temperature"]["wide"] > 0 for r in records if r.get("epoch") == -1 and r.get("event") == "eval")
    for index in (arms.index("transfer") + 8, arms.index("control"), len(arms) - 4):
        resumed = stop_and_resume(cfg, tmp_path / f"stopped-{index}", index)
        assert not differences(resumed, full, across_engines=False), f"stopped after record {index}: {records[index - 1]}"


def test_driver_killed_mid_epoch_resumes_to_the_same_summary(tmp_path):
    """The real thing: the CLI on the Ray engine, SIGKILLed mid-epoch, then `--resume`; against the run that was
    never stopped (on the local engine, which computes the same numbers in float64)."""
    raw = mlp_config(transfer={"epochs": 2, "batch_size": 16, "temperature": 2.0}, data={"max_per_split": 128})
    config = write_config(tmp_path / "c.yaml", raw)
    with RunDir(tmp_path / "full") as rd:
        a = run(parse_config(raw), rd, "local")

    out = tmp_path / "killed"
    proc = start_kt_swarm("run", config, "--out", out, "-q", env=helpers_env(), new_session=True)
    # Kill it in the middle of the second epoch, after at least one step checkpoint (8 steps an epoch).
    wait_for(proc, out, lambda r: r.get("epoch") == 1 and r.get("step", 0) >= 3, timeout=300)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.kill()  # SIGKILL: no handler runs, nothing is cleaned up
    proc.wait()
    os.killpg(proc.pid, signal.SIGKILL)  # and its private Ray instance with it, as a lost node would
    assert not (out / "summary.json").exists() and (out / "checkpoints" / "manifest.json").exists()

    resumed = start_kt_swarm("run", "--resume", out, "-q", env=helpers_env(), new_session=True)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    b = json.loads((out / "summary.json").read_text())
    assert not differences(b, a, across_engines=True)  # Ray against the local engine
    assert b["faults"]["resumes"] == 1 and b["engine"] == "ray"


def test_nan_steps_are_skipped_by_everyone_and_counted(tmp_path):
    raw = mlp_config(control=False)
    raw["participants"][1] = faulty("nanny", "nan_mlp", nan_from=2, nan_calls=2)
    with RunDir(tmp_path / "run") as rd:
        summary = run(parse_config(raw), rd, "local")
    assert summary["faults"]["skipped_steps"] == {"transfer": 2}
    skipped = [r for r in read_records(tmp_path / "run") if r.get("event") == "skipped"]
    assert [(r["step"], r["participants"]) for r in skipped] == [(1, ["nanny"]), (2, ["nanny"])]
    for p in summary["participants"].values():
        assert all(x == x for x in p["val_accuracy"]) and p["final_train_loss"] == p["final_train_loss"]  # no NaN


def test_too_many_nan_steps_in_a_row_stop_the_run_naming_the_participant(tmp_path):
    raw = mlp_config(control=False, fault={"max_bad_steps": 3})
    raw["participants"][1] = faulty("nanny", "nan_mlp", nan_from=2, nan_calls=100)
    config = write_config(tmp_path / "c.yaml", raw)
    out = tmp_path / "run"
    proc = kt_swarm("run", config, "--out", out, "--engine", "local", env=helpers_env())
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("kt-swarm: error: participant 'nanny': NaN or Inf") and "3 steps in a row" in line
    assert "Traceback" not in proc.stderr
    # The checkpoints written before the bad steps are intact and loadable.
    cfg = parse_config(raw)
    ckpt = Checkpoints(out / "checkpoints", config_digest(to_dict(cfg)), ["wide", "nanny"], keep=2)
    states = list(ckpt.load_set(ckpt.latest)[1])
    assert all(torch.isfinite(t).all() for s in states for t in s["model"].values())


@pytest.fixture
def stopped_run(tmp_path):
    """A run stopped after its first step checkpoint: resumable."""
    cfg = parse_config(mlp_config())
    out = tmp_path / "run"
    with pytest.raises(Stop):
        with RunDir(out) as rd:
            run(cfg, rd, "local", on_record=stop_after(6))
    return cfg, out


def resume_error(out) -> str:
    proc = kt_swarm("run", "--resume", out, "--engine", "local", env=helpers_env())
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kt-swarm: error: "), proc.stderr
    return lines[0]


def latest_file(out, name="wide"):
    manifest = json.loads((out / "checkpoints" / "manifest.json").read_text())
    return out / "checkpoints" / manifest["sets"][-1]["name"] / f"{name}.pt"


def test_a_truncated_checkpoint_is_refused(stopped_run):
    _, out = stopped_run
    path = latest_file(out)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "is truncated or was modified" in resume_error(out)


def test_a_foreign_checkpoint_is_refused_even_with_a_matching_hash(stopped_run):
    """A file from elsewhere (here: a pickle that would run code) whose hash was put in the manifest."""
    import hashlib

    _, out = stopped_run
    path = latest_file(out)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > /dev/null",))

    torch.save({"format": "kt_swarm.checkpoint/1", "model": Evil()}, path)
    manifest_path = out / "checkpoints" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    rel = path.relative_to(out / "checkpoints").as_posix()
    manifest["sets"][-1]["files"][rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    assert "is not a loadable weights-only file" in resume_error(out)


def test_a_damaged_or_foreign_manifest_is_refused(stopped_run):
    cfg, out = stopped_run
    manifest_path = out / "checkpoints" / "manifest.json"
    text = manifest_path.read_text()
    manifest_path.write_text(text[: len(text) // 2])
    assert "unreadable or truncated" in resume_error(out)
    other = json.loads(text)
    other["config_sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(other))
    assert "belongs to another run" in resume_error(out)


def test_resume_refuses_what_it_cannot_continue(stopped_run, tmp_path):
    _, out = stopped_run
    proc = kt_swarm("run", ROOT / "configs" / "smoke.yaml", "--resume", out)
    assert proc.returncode == 2 and "give no CONFIG" in proc.stderr
    assert "not a kt_swarm run directory" in resume_error(tmp_path / "nowhere")


def test_one_process_at_a_time_in_a_run_directory(stopped_run):
    _, out = stopped_run
    with RunDir(out, resume=True):
        with pytest.raises(UserError, match="is in use by another kt-swarm process"):
            with RunDir(out, resume=True):
                pass
