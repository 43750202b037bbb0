"""kt-swarm sweep: sweep files checked before anything starts, and a real 2-trial Ray Tune sweep."""
import json
import os
import textwrap

import pytest
import yaml

from kt_swarm.config import parse_config
from kt_swarm.errors import UserError
from kt_swarm.sweep import _examples, _overrides, load_sweep, search_space, sweep_metric
from support import ROOT, helpers_env
from support.configs import mlp_config, write_config
from support.launch import kt_swarm


def write(tmp_path, text):
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.fast
def test_shipped_sweeps_load_and_cover_the_settings_that_matter():
    for name in ("transfer.yaml", "transfer_wandb.yaml"):
        spec = load_sweep(ROOT / "configs" / "sweeps" / name)
        assert spec["config"] == "configs/quickstart.yaml" and spec["metric"] == "val_accuracy_mean" and spec["mode"] == "max"
        assert {"participants.*.lr", "transfer.temperature", "transfer.weight", "transfer.detach_teacher"} <= set(spec["parameters"])
        search_space(spec["parameters"], spec["method"])


@pytest.mark.fast
def test_the_strategy_sweep_covers_every_strategy_and_three_seeds():
    spec = load_sweep(ROOT / "configs" / "sweeps" / "strategies.yaml")
    space = search_space(spec["parameters"], spec["method"])
    examples = _examples(space)  # also what the sweep checks before any trial: a constant string is a value
    assert {e["transfer.strategy"] for e in examples} == {"best", "better", "dml", "kd", "kl_dp"}
    assert {e["seed"] for e in examples} == {0, 1, 2} and len(examples) == 15
    assert all(e["transfer.teacher"] == "resnet" for e in examples)
    for e in examples:
        parse_config(yaml.safe_load((ROOT / spec["config"]).read_text()), _overrides(e))


@pytest.mark.fast
def test_a_local_engine_trial_reserves_the_participants_cpus_for_itself():
    """--engine local runs every participant in the trial's process: one bundle, all the CPUs (Ray gives a
    0.5-CPU trial one thread, which halved the speed of a local-engine sweep on 2 cores)."""
    from kt_swarm.config import load_config
    from kt_swarm.sweep import _trial_resources

    cfg = load_config(ROOT / "configs" / "quickstart.yaml")
    assert _trial_resources(cfg, {"CPU": 2.0}, "local").bundles == [{"CPU": 2.0}]
    assert len(_trial_resources(cfg, {"CPU": 2.0}, "ray").bundles) == 4  # the trial, then one per participant


@pytest.mark.fast
def test_a_wandb_sweep_names_its_config_in_the_command(tmp_path):
    spec = load_sweep(write(tmp_path, """
        program: kt-swarm
        method: random
        metric: {name: val_accuracy_mean, goal: maximize}
        parameters: {transfer.temperature: {values: [1, 2]}}
        command: ["${program}", "run", "configs/smoke.yaml", "${args_no_hyphens}"]
    """))
    assert spec["config"] == "configs/smoke.yaml" and spec["method"] == "random"


@pytest.mark.fast
@pytest.mark.parametrize("text, message", [
    ("config: c.yaml\nmethod: hyperband\nparameters: {a: {values: [1]}}", "'method': expected one of"),
    ("config: c.yaml\nmetric: test_acc\nparameters: {a: {values: [1]}}", "validation only"),
    ("method: grid\nparameters: {a: {values: [1]}}", "name the base config"),
    ("config: c.yaml\nparameters: []", "'parameters'"),
    ("config: c.yaml\nnum_trials: 3\nparameters: {a: {values: [1]}}", "'num_trials' is unknown"),
    ("config: c.yaml\nseed: -1\nparameters: {a: {values: [1]}}", "'seed': must be >= 0, got -1"),
    ("config: c.yaml\nseed: true\nparameters: {a: {values: [1]}}", "'seed': expected int or null, got True"),
    ("config: c.yaml\nparameters: {a: {min: 1, max: 2, mu: 0}}", "sweep key 'parameters.a.mu' is unknown"),
    ("config: c.yaml\nparameters: {a: {min: true, max: 2}}", "sweep key 'parameters.a.min': expected a number, got True"),
    ("config: c.yaml\ntracking: {wandb: {projekt: x}}\nparameters: {a: {value: 1}}", "'tracking.wandb.projekt' is unknown"),
])
def test_bad_sweep_files_are_named(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        load_sweep(write(tmp_path, text))


@pytest.mark.fast
@pytest.mark.parametrize("spec, method, message", [
    ({"a": {"min": 1e-4, "max": 1e-2}}, "grid", "grid search needs 'values'"),
    ({"a": {"min": 1, "max": 0}}, "random", "min < max"),
    ({"a": {"min": 0.1, "max": 1.0, "distribution": "q_normal"}}, "random", "not supported"),
    ({"a": 3}, "random", "expected a mapping"),
])
def test_bad_parameters_are_named(spec, method, message):
    with pytest.raises(UserError, match=message):
        search_space(spec, method)


@pytest.mark.fast
def test_a_sweep_is_chosen_on_its_task_s_headline_metric_and_the_old_name_still_reads(tmp_path, monkeypatch):
    """val_{metric}_mean (metrics.HEADLINE) of the base config's task; a file naming val_acc_mean (the name before
    the headline metric was named per task) still runs, with one warning giving the new name."""
    import kt_swarm.sweep

    warnings = []
    monkeypatch.setattr(kt_swarm.sweep.log, "warning", lambda message, *args: warnings.append(message % args))
    assert sweep_metric(None, "classification") == "val_accuracy_mean"
    assert sweep_metric("val_miou_mean", "segmentation") == "val_miou_mean" and not warnings
    spec = load_sweep(write(tmp_path, "config: c.yaml\nmetric: val_acc_mean\nparameters: {a: {values: [1]}}"))
    assert spec["metric"] == "val_acc_mean" and spec["mode"] == "max"
    assert sweep_metric(spec["metric"], "saliency") == "val_cc_mean"
    assert len(warnings) == 1 and "val_acc_mean is now called val_cc_mean" in warnings[0]
    with pytest.raises(UserError, match="sweep key 'metric.name': task segmentation is chosen on val_miou_mean, "
                                        "got val_accuracy_mean"):
        sweep_metric("val_accuracy_mean", "segmentation")


def test_bad_keys_and_values_stop_the_sweep_before_any_trial(tmp_path):
    path = write(tmp_path, f"""
        config: {ROOT / 'configs' / 'smoke.yaml'}
        method: grid
        parameters: {{transfer.temperature: {{values: [1, -2]}}}}
    """)
    proc = kt_swarm("sweep", path, "--out", tmp_path / "out")
    assert proc.returncode == 2 and "'transfer.temperature': must be positive" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_two_trial_sweep_runs_each_trial_as_a_swarm_in_its_placement_group(tmp_path, zoo_cache):
    path = write(tmp_path, f"""
        config: {ROOT / 'configs' / 'smoke.yaml'}
        method: grid
        parameters:
          transfer.temperature: {{values: [1, 2]}}
          participants.*.lr: {{value: 2.0e-4}}
          # The ViT on a DeepSpeed gang of two: its trial reserves a bundle per rank (0.5 + 4 x 0.375 CPUs).
          participants.1.ranks: {{value: 2}}
          participants.1.deepspeed: {{value: {{zero_optimization: {{stage: 1}}}}}}
          resources.cpus_per_participant: {{value: 0.375}}
        tracking:
          wandb: {{project: kt-test, group: sweep-test}}
    """)
    out = tmp_path / "out"
    proc = kt_swarm("sweep", path, "--out", out, timeout=900, env={**os.environ, "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "sweep.json").read_text())
    assert len(results["trials"]) == 2 and results["best"] is not None
    assert sorted(t["params"]["transfer.temperature"] for t in results["trials"]) == [1, 2]
    for t in results["trials"]:
        summary = json.loads((out / "trials" / t["trial"] / "summary.json").read_text())
        trial = json.loads((out / "trials" / t["trial"] / "trial.json").read_text())
        # The swarm's actors were placed in the bundles the trial reserved, not in a group of their own.
        assert summary["engine"] == "ray" and summary["placement_group"] == trial["placement_group"] is not None
        assert summary["participants"]["vit"]["accuracy_after"] > 0  # the gang trained in the trial's bundles
        # What Tune saw is the run's own validation selection metric.
        assert t["val_accuracy_mean"] == pytest.approx(summary["val_accuracy_mean"])
        config = (out / "trials" / t["trial"] / "config.yaml").read_text()
        assert "lr: 0.0002" in config and f"temperature: {float(t['params']['transfer.temperature'])}" in config
    # Ray Tune's W&B callback logged each trial, offline.
    assert len(list(out.glob("tune/*/wandb/offline-run-*"))) == 2


def test_trials_asha_stops_say_so_in_their_directories_and_in_sweep_md(tmp_path):
    """A real ASHA sweep (local engine, tiny MLPs): one learning rate that learns, one that cannot (1e-9). With
    the search seeded, the trials come in the same order every time, and ASHA stops weak ones after an epoch
    or two. A stopped trial's directory keeps its checkpoints and says it was stopped (stopped.json, with
    the --resume line); sweep.md and sweep.json give every trial's status."""
    base = mlp_config(control=False, data={"max_per_split": 256}, transfer={"epochs": 3, "batch_size": 32})
    write_config(tmp_path / "base.yaml", base)
    path = write(tmp_path, f"""
        config: {tmp_path / 'base.yaml'}
        method: asha
        num_samples: 5
        seed: 3
        parameters:
          participants.*.lr: {{values: [1.0e-9, 3.0e-3]}}
    """)
    out = tmp_path / "out"
    proc = kt_swarm("sweep", path, "--out", out, "--engine", "local", timeout=600,
                    env=helpers_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = json.loads((out / "sweep.json").read_text())["trials"]
    status = {t["trial"]: t["status"] for t in trials}
    assert len(trials) == 5 and set(status.values()) == {"finished", "stopped"}, status
    table = (out / "sweep.md").read_text()
    for t in trials:
        trial_dir = out / "trials" / t["trial"]
        assert f"| {t['trial']} |" in table and f"| {t['status']} |" in table.split(f"| {t['trial']} |")[1].splitlines()[0]
        if t["status"] == "stopped":
            stopped = json.loads((trial_dir / "stopped.json").read_text())
            assert stopped["stopped_by"] == "asha" and stopped["after_epochs"] == t["epochs"] < 3
            assert stopped["resume"] == f"kt-swarm run --resume {trial_dir}"
            assert not (trial_dir / "summary.json").exists() and (trial_dir / "checkpoints" / "manifest.json").exists()
            assert t["params"]["participants.*.lr"] == 1e-9  # the one that cannot learn
        else:
            assert t["epochs"] == 3 and (trial_dir / "summary.json").exists() and not (trial_dir / "stopped.json").exists()


def test_a_language_model_sweep_compares_token_and_sequence_units_on_validation_log_likelihood(tmp_path):
    """Tiny LMs with the real SmolLM2 tokenizer, the local engine: a grid over the unit, chosen on the task's
    headline (val_log_likelihood_mean, higher is better: it is negative), each trial a whole run."""
    from support.tiny_lm import corpus, lm_config, tiny_lm

    raw = lm_config(tiny_lm(tmp_path / "model"), corpus(tmp_path / "text"), n=2, control=False)
    raw["data"]["max_per_split"] = 8
    write_config(tmp_path / "lm.yaml", raw)
    path = write(tmp_path, f"""
        config: {tmp_path / 'lm.yaml'}
        method: grid
        parameters:
          transfer.unit: {{values: [token, sequence]}}
    """)
    out = tmp_path / "out"
    proc = kt_swarm("sweep", path, "--out", out, "--engine", "local", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "sweep.json").read_text())
    trials = results["trials"]
    assert results["metric"] == "val_log_likelihood_mean" and results["mode"] == "max"
    assert sorted(t["params"]["transfer.unit"] for t in trials) == ["sequence", "token"]
    for t in trials:
        summary = json.loads((out / "trials" / t["trial"] / "summary.json").read_text())
        config = yaml.safe_load((out / "trials" / t["trial"] / "config.yaml").read_text())
        assert summary["task"] == "language_model" and config["transfer"]["unit"] == t["params"]["transfer.unit"]
        assert t["val_log_likelihood_mean"] == pytest.approx(summary["val_log_likelihood_mean"])
        assert t["val_log_likelihood_mean"] < 0  # nats a token
    assert results["best"]["trial"] == max(trials, key=lambda t: t["val_log_likelihood_mean"])["trial"]
    assert "val_log_likelihood_mean" in (out / "sweep.md").read_text()
