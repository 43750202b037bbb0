"""`kt-swarm run --fork RUN_DIR --set ...`: a new run from another run's last checkpoint, with changed settings."""
import json

import pytest
import yaml

from kt_swarm.checkpoint import Checkpoints, config_digest
from kt_swarm.config import load_config, parse_config, to_dict
from kt_swarm.coordinator import run
from kt_swarm.errors import UserError
from kt_swarm.fork import prepare_fork
from kt_swarm.rundir import RunDir
from kt_swarm.summary import differences
from support import helpers_env
from support.configs import mlp_config
from support.hooks import Stop, stop_at
from support.launch import kt_swarm


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A float64 run stopped mid-transfer (after a step checkpoint), and the same run never stopped."""
    root = tmp_path_factory.mktemp("fork")
    cfg = parse_config(mlp_config())
    with pytest.raises(Stop), RunDir(root / "stopped") as rd:
        run(cfg, rd, "local", on_record=stop_at("transfer", epoch=1, step=1))
    with RunDir(root / "full") as rd:
        full = run(cfg, rd, "local")
    return root, full


def manifest_bytes(run_dir):
    return (run_dir / "checkpoints" / "manifest.json").read_bytes()


def test_a_fork_without_changes_ends_as_the_run_it_came_from(stopped, tmp_path):
    root, full = stopped
    before = manifest_bytes(root / "stopped")
    cfg, rd = prepare_fork(root / "stopped", [], tmp_path / "fork")
    with rd:
        summary = run(cfg, rd, "local")
    assert not differences(summary, full, across_engines=False)
    assert summary["forked_from"] == {"run": str(root / "stopped"), "checkpoint": "transfer-0000004", "overrides": []}
    assert manifest_bytes(root / "stopped") == before  # the source is only read


def test_a_forked_learning_rate_is_the_one_that_trains(stopped, tmp_path):
    root, full = stopped
    out = tmp_path / "fork"
    proc = kt_swarm("run", "--fork", root / "stopped", "--set", "participants.*.lr=1e-4", "--set", "transfer.epochs=3",
                    "--out", out, "--engine", "local", "-q", env=helpers_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = load_config(out / "config.yaml")
    assert [p.lr for p in cfg.participants] == [1e-4, 1e-4] and cfg.transfer.epochs == 3
    assert cfg.forked_from["overrides"] == ["participants.*.lr=1e-4", "transfer.epochs=3"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["forked_from"]["checkpoint"] == "transfer-0000004"
    assert len(summary["participants"]["wide"]["val_accuracy"]) == 3 and differences(summary, full, across_engines=False)
    # The optimizers stepped at the new rate: every later checkpoint's param groups say so.
    ckpt = Checkpoints(out / "checkpoints", config_digest(to_dict(cfg)), ["wide", "narrow"], keep=2)
    _, states = ckpt.load_set(ckpt.latest)
    for state in states:
        assert all(g["initial_lr"] == 1e-4 for g in state["optimizer"]["param_groups"])
    # The log goes on from the source's checkpoint: its records up to it, then the fork's.
    sets = json.loads((root / "stopped" / "checkpoints" / "manifest.json").read_text())["sets"]
    cut = next(s["metrics_bytes"] for s in sets if s["name"] == "transfer-0000004")
    source, forked = (root / "stopped" / "metrics.jsonl").read_bytes(), (out / "metrics.jsonl").read_bytes()
    assert cut > 0 and forked[:cut] == source[:cut]
    assert json.loads(forked[cut:].splitlines()[0])["event"] == "resumed"


@pytest.mark.parametrize("override,message", [
    ("participants.0.model_args.hidden=12", r"'participants.0.model_args' cannot change \(only lr and weight_decay can\)"),
    ("data.max_per_split=64", r"'data' cannot change"),
    ("transfer.batch_size=16", r"'transfer.batch_size' cannot change"),
    ("seed=3", r"'seed' cannot change"),
])
def test_what_a_checkpoint_cannot_take_is_refused_in_one_line_and_nothing_is_written(stopped, tmp_path, override, message):
    root, _ = stopped
    with pytest.raises(UserError, match=r"^--fork: " + message):
        prepare_fork(root / "stopped", [override], tmp_path / "fork")
    assert not (tmp_path / "fork").exists()
    config = yaml.safe_load((root / "stopped" / "config.yaml").read_text())
    assert config["forked_from"] is None  # the source is untouched


def test_the_cli_refuses_a_fork_in_one_line(stopped, tmp_path):
    root, _ = stopped
    proc = kt_swarm("run", "--fork", root / "stopped", "--set", "dtype=float32", "--out", tmp_path / "fork")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("kt-swarm: error: --fork: 'dtype' cannot change (the checkpoint's "
                                                    "steps were taken with it); start a new run")
    assert not (tmp_path / "fork").exists()
