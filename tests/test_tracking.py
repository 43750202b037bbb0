"""W&B tracking: what kt_swarm hands to a real wandb (offline or disabled; never a server)."""
import os

import pytest
import wandb
import yaml
from wandb.sdk.wandb_run import Run

from kt_swarm.config import parse_config, to_dict
from kt_swarm.coordinator import run
from kt_swarm.rundir import RunDir
from support import ROOT
from support.configs import mlp_config
from support.hooks import Stop, stop_when
from support.launch import kt_swarm

SMOKE = ROOT / "configs" / "smoke.yaml"


@pytest.fixture
def handed(monkeypatch):
    """Records the arguments of wandb.init and Run.log, then lets the real calls through."""
    calls = {"init": [], "log": []}
    real_init, real_log = wandb.init, Run.log

    def init(*args, **kwargs):
        calls["init"].append(kwargs)
        return real_init(*args, **kwargs)

    def log(self, data, *args, **kwargs):
        calls["log"].append(dict(data))
        return real_log(self, data, *args, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(Run, "log", log)
    return calls


def smoke_cfg(*overrides):
    return parse_config(yaml.safe_load(SMOKE.read_text()), ["tracking.wandb.project=kt-test", "tracking.wandb.group=g",
                                                            "tracking.wandb.tags=[a, b]", *overrides])


def test_offline_run_gets_config_prefixed_metrics_tables_and_heat_maps(handed, monkeypatch, tmp_path, zoo_cache):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = smoke_cfg()
    with RunDir(tmp_path / "run") as out:
        summary = run(cfg, out, "local")
    (init,) = handed["init"]
    assert init["mode"] == "offline" and init["project"] == "kt-test" and init["group"] == "g" and init["tags"] == ["a", "b"]
    assert init["config"] == to_dict(cfg)  # the resolved config
    rows = handed["log"]
    steps = [r for r in rows if "vit/transfer/loss" in r]
    assert len(steps) == summary["steps"]
    assert all(set(r) >= {"resnet/transfer/loss", "mixer/transfer/taught", "transfer/loss", "step"} for r in steps)
    assert any("vit/control/val_accuracy" in r for r in rows) and any("mixer/start/test_accuracy" in r for r in rows)
    assert any("mixer/transfer/test_top5_acc" in r for r in rows)
    (final,) = [r for r in rows if "results" in r]
    table = final["results"]
    assert isinstance(table, wandb.Table) and [row[0] for row in table.data] == ["resnet", "vit", "mixer"]
    after, kept = table.columns.index("accuracy_after"), table.columns.index("kept_start")
    assert [row[after] for row in table.data] == [p["accuracy_after"] for p in summary["participants"].values()]
    assert [row[kept] for row in table.data] == [p["kept_start"] for p in summary["participants"].values()]
    assert isinstance(final["role_matrix"], wandb.Image)
    assert final["role_matrix_table"].data[0][0] == "resnet"
    assert any(isinstance(r.get("transfer/role_matrix"), wandb.Image) for r in rows)  # every epoch's heat map
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_wandb_mode_disabled_is_honoured(handed, monkeypatch, tmp_path, zoo_cache):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with RunDir(tmp_path / "run") as out:
        run(smoke_cfg(), out, "local")
    assert handed["init"] == [] and handed["log"] == []
    assert not (tmp_path / "run" / "wandb").exists()


def test_without_an_api_key_the_cli_logs_offline_and_says_how_to_sync(tmp_path, zoo_cache):
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY")}
    env.update(HOME=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"))
    out = tmp_path / "run"
    proc = kt_swarm("run", SMOKE, "--engine", "local", "--out", out, "tracking.wandb.project=kt-test", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "logging offline" in proc.stderr and f"wandb sync {out}/wandb/offline-run-" in proc.stderr
    quiet = kt_swarm("run", SMOKE, "--engine", "local", "--out", tmp_path / "quiet", "-q", "tracking.wandb.project=kt-test", env=env)
    assert quiet.returncode == 0 and "kt-swarm:" not in quiet.stderr  # --quiet: warnings and errors only
    assert "vs ctrl" in quiet.stdout  # ... and the final table


def test_a_resumed_run_goes_on_as_the_same_wandb_run(handed, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = parse_config(mlp_config(tracking={"wandb": {"project": "kt-test"}}))
    with pytest.raises(Stop):
        with RunDir(tmp_path / "run") as out:
            run(cfg, out, "local", on_record=stop_when(lambda record: record.get("step") == 2))
    with RunDir(tmp_path / "run", resume=True) as out:
        run(cfg, out, "local")
    first, second = handed["init"]
    starts = sorted(p.name for p in (tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert "id" not in first and second["resume"] == "allow" and second["id"] == starts[0].rsplit("-", 1)[1]
    assert len(starts) == 2 and second["id"] in starts[1]  # `wandb sync` uploads both as one run
    # Step 2 ran before the stop and again after the resume (from the checkpoint after step 1): logged once.
    for arm in ("transfer", "control"):
        steps = [r["step"] for r in handed["log"] if f"wide/{arm}/loss" in r]
        assert steps == list(range(6)), (arm, steps)
        evals = [r["step"] for r in handed["log"] if f"wide/{arm}/val_accuracy" in r]
        assert len(evals) == len(set(evals)) == 3  # the start and two epochs


def test_a_language_model_logs_perplexity_per_domain_and_who_taught_whom_on_each(handed, monkeypatch, tmp_path):
    """Tiny random-weight LMs with the real SmolLM2 tokenizer, offline: the headline (log-likelihood), perplexity
    per domain, a role-matrix heat map per domain every epoch and at the end, and the results table."""
    from support.tiny_lm import corpus, lm_config, tiny_lm

    monkeypatch.setenv("WANDB_MODE", "offline")
    raw = lm_config(tiny_lm(tmp_path / "model"), corpus(tmp_path / "text"), n=2, tracking={"wandb": {"project": "kt-test"}})
    raw["data"]["max_per_split"] = 8
    with RunDir(tmp_path / "run") as out:
        summary = run(parse_config(raw), out, "local")
    rows = handed["log"]
    assert len([r for r in rows if "lm0/transfer/loss" in r]) == summary["steps"] == 2
    for arm in ("transfer", "control"):
        assert any(f"lm1/{arm}/val_log_likelihood" in r for r in rows), arm
        assert any(f"lm0/{arm}/test_perplexity/code" in r and f"lm0/{arm}/test_perplexity/animals" in r for r in rows), arm
    for domain in ("animals", "code"):  # every epoch's heat map per domain, and the last one's in the summary
        assert any(isinstance(r.get(f"transfer/role_matrix/{domain}"), wandb.Image) for r in rows), domain
    (final,) = [r for r in rows if "results" in r]
    assert [row[0] for row in final["results"].data] == ["lm0", "lm1"]
    assert all(isinstance(final[f"role_matrix/{d}"], wandb.Image) for d in ("animals", "code"))
