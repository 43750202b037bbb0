"""Config validation and the CLI's answer to bad input: one line, exit code 2, nothing left in --out."""
import json
import os
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from kt_swarm.config import load_config, parse_config
from kt_swarm.errors import UserError
from kt_swarm.schema import COPIES, render
from kt_swarm.sweep import load_sweep
from support import ROOT, helpers_env
from support.configs import mlp_config, write_config
from support.launch import cli, kt_swarm, start_kt_swarm

SMOKE = ROOT / "configs" / "smoke.yaml"


def raw_smoke():
    return yaml.safe_load(SMOKE.read_text())


@pytest.mark.fast
def test_shipped_configs_validate():
    for path in (ROOT / "configs").glob("*.yaml"):
        cfg = load_config(path)
        assert len(cfg.participants) >= 3 and cfg.control
    for path in (ROOT / "benchmarks" / "configs").glob("*.yaml"):  # the GPU benchmarks': step time, the LM study
        cfg = load_config(path)
        assert cfg.autocast == "bfloat16"
        assert {p.input_size for p in cfg.participants} == {224} if cfg.task == "classification" else cfg.data.text.block == 512


@pytest.mark.fast
def test_overrides_reach_nested_keys_and_list_items():
    cfg = parse_config(raw_smoke(), ["participants.0.lr=3e-4", "transfer.temperature=2", "data.augment.shift=0",
                                     "participants.2.model_args.num_blocks=2", "control=false"])
    assert cfg.participants[0].lr == pytest.approx(3e-4)
    assert cfg.transfer.temperature == 2.0 and cfg.data.augment.shift == 0 and not cfg.control
    assert cfg.participants[2].model_args["num_blocks"] == 2


@pytest.mark.fast
@pytest.mark.parametrize("override, message", [
    ("participants.0.lr=0", "'participants.0.lr': must be positive"),
    ("participants.1.lr=-1e-3", "'participants.1.lr': must be positive"),
    ("participants.9.lr=1", "not an index"),
    ("transfer.epochs=two", "'transfer.epochs': expected int"),
    ("transfer.epochs=1.5", "'transfer.epochs': expected int"),
    ("transfer.detach_teacher=maybe", "'transfer.detach_teacher': expected bool"),
    ("data.kind=imagenet", "'data.kind': expected one of"),
    ("data.colour=red", "'data.colour' is unknown"),
    ("dtype=float16", "'dtype'"),
    ("participants.0.name=vit", "'vit' is used twice"),
    ("participants.0.name=a/b", "'participants.0.name': 'a/b' may hold only letters"),  # it names checkpoint files
    ("participants.0.name=../up", "'participants.0.name': '../up' may hold only letters"),
    ("checkpoint.keep=0", "'checkpoint.keep': must be positive"),
    ("fault.max_restarts=-1", "'fault.max_restarts': must be >= 0"),
    ("data.val_fraction=1.5", "'data.val_fraction'"),
    ("noequals", "expected KEY=VALUE"),
    ("transfer.strategy=kd", "'transfer.teacher': strategy kd needs a teacher"),
    ("transfer.teacher=nobody", "'transfer.teacher': 'nobody' is not a participant (participants: resnet, vit, mixer)"),
    ("transfer.strategy=ensemble", "'transfer.strategy': expected one of 'best' | 'better' | 'dml' | 'kd' | 'kl_dp' | 'none'"),
    ("transfer.scores=entropy", "'transfer.scores': expected one of"),
    ("data.unlabelled_fraction=1", "'data.unlabelled_fraction': must be in [0, 1), got 1.0"),
    ("data.unlabelled_fraction=-0.1", "'data.unlabelled_fraction': must be in [0, 1)"),
    ("transfer.pseudo_threshold=0", "'transfer.pseudo_threshold': must be in (0, 1], got 0.0"),
    ("transfer.pseudo_threshold=1.01", "'transfer.pseudo_threshold': must be in (0, 1]"),
    ("data.transfer_samples=0", "'data.transfer_samples': must be positive, got 0"),
    ("zoo.disjoint=sometimes", "'zoo.disjoint': expected bool"),
    ("transfer.calibrate=1", "'transfer.calibrate': expected bool"),
    ("transfer.schedule=linear", "'transfer.schedule': expected one of 'constant' | 'cosine'"),
    ("participants.0.in_chans=2", "'participants.0.in_chans': expected 1 | 3 or null, got 2"),
    ("participants.0.zoo=yes please", "'participants.0.zoo': expected bool"),
    ("transfer.top_k=0", "'transfer.top_k': must be positive"),
    ("transfer.top_k=4 & transfer.detach_teacher=false", "'transfer.detach_teacher': top_k sends each teacher's top k"),
    ("data.kind=text", "'data.kind': task classification reads fashion_mnist, folder, python, huggingface, got text"),
    ("task=language_model", "'data.kind': task language_model reads text, got fashion_mnist"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        parse_config(raw_smoke(), override.split(" & "))


@pytest.mark.fast
def test_strategies_and_unlabelled_data_validate():
    cfg = parse_config(raw_smoke(), ["transfer.strategy=kd", "transfer.teacher=vit", "data.unlabelled_fraction=0.9",
                                     "self_training=true", "transfer.pseudo_threshold=1", "transfer.scores=max_confidence"])
    assert cfg.transfer.teacher == "vit" and cfg.self_training and cfg.data.unlabelled_fraction == 0.9
    raw = raw_smoke()
    raw["participants"] = raw["participants"][:1]
    with pytest.raises(UserError, match="kd needs at least two participants"):
        parse_config(raw, ["transfer.strategy=kd", "transfer.teacher=resnet"])


def test_cli_bad_strategy_combinations_are_one_line(tmp_path):
    assert "strategy kd needs a teacher" in _cli_error(tmp_path, SMOKE.read_text(), "--set", "transfer.strategy=kd")
    # Too few labelled samples for the control arm's batches: found once the data is loaded, before training.
    msg = _cli_error(tmp_path, SMOKE.read_text(), "--set", "data.unlabelled_fraction=0.95")
    assert "the labelled part of the transfer split has" in msg and "transfer.batch_size 64" in msg


@pytest.mark.fast
def test_autocast_needs_float32_master_weights():
    with pytest.raises(UserError, match="'autocast': needs dtype float32"):
        parse_config(raw_smoke(), ["autocast=bfloat16", "dtype=float64"])
    with pytest.raises(UserError, match="'autocast': expected 'bfloat16' | 'float16' or null"):
        parse_config(raw_smoke(), ["autocast=int8"])


@pytest.mark.fast
def test_a_star_sets_every_participant():
    cfg = parse_config(raw_smoke(), ["participants.*.lr=3e-4", "participants.*.model_args.drop_rate=0.1"])
    assert [p.lr for p in cfg.participants] == [3e-4] * 3
    assert all(p.model_args["drop_rate"] == 0.1 for p in cfg.participants)
    with pytest.raises(UserError, match="'transfer' is not a list"):
        parse_config(raw_smoke(), ["transfer.*.lr=1"])


@pytest.mark.fast
def test_required_keys():
    with pytest.raises(UserError, match="'participants' is required"):
        parse_config({})
    with pytest.raises(UserError, match="'participants.0.lr' is required"):
        parse_config({"participants": [{"name": "a", "model": "resnet10t"}]})


def _cli_error(tmp_path, config_text=None, *args, config=None, engine="local", env=None):
    """Errors found before or while building participants are the same in both engines; the local
    one finds them without starting Ray (the Ray path has its own tests in test_swarm.py)."""
    if config is None:
        config = tmp_path / "c.yaml"
        config.write_text(config_text)
    out = tmp_path / "out"
    proc = kt_swarm("run", config, "--out", out, "--engine", engine, *args, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kt-swarm: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))
    return lines[0]


@pytest.mark.fast
def test_cli_missing_config(tmp_path):
    assert "does not exist" in _cli_error(tmp_path, config=tmp_path / "nope.yaml")


@pytest.mark.fast
def test_cli_unreadable_config(tmp_path):
    assert "cannot be read" in _cli_error(tmp_path, config=tmp_path)  # a directory is not a file


@pytest.mark.fast
def test_cli_yaml_syntax_error(tmp_path):
    assert "YAML syntax error at line 2" in _cli_error(tmp_path, "seed: 1\ndata: kind: x\n")


@pytest.mark.fast
@pytest.mark.parametrize("override, message", [("transfer.epochz=2", "'transfer.epochz' is unknown"),
                                               ("seed=abc", "'seed': expected int")])
def test_cli_unknown_key_and_wrong_type(tmp_path, override, message):  # a case each: a CLI run is about 1.7 s
    assert message in _cli_error(tmp_path, SMOKE.read_text(), "--set", override)


@pytest.mark.fast
def test_cli_non_positive_learning_rate(tmp_path):
    assert "'participants.1.lr': must be positive" in _cli_error(tmp_path, SMOKE.read_text(), "--set", "participants.1.lr=0")


def test_cli_unknown_model(tmp_path):
    assert "unknown model 'resnet_nonexistent'" in _cli_error(tmp_path, SMOKE.read_text(), "--set", "participants.0.model=resnet_nonexistent")
    assert "cannot import 'no_such_pkg.m'" in _cli_error(tmp_path, SMOKE.read_text(), "--set", "participants.2.model=no_such_pkg.m:f")


def test_cli_participants_disagree_on_classes(tmp_path):
    """On Ray actors (each reports its width from its own process); two tiny MLPs, not the smoke config's timm
    models: the check is the same, the suite 30 s shorter."""
    from support.configs import faulty

    raw = {"participants": [faulty("a"), faulty("b", num_classes=7)], "data": {"max_per_split": 64},
           "transfer": {"batch_size": 32}}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    msg = _cli_error(tmp_path, config=config, engine="ray", env=helpers_env())
    assert "participant 'b' outputs 7 classes; the data has 10 (a=10, b=7)" in msg


def test_cli_missing_dataset(tmp_path):
    assert "dataset-fashion-mnist" in _cli_error(tmp_path, SMOKE.read_text(), "--set", f"data.root={tmp_path}")


def test_cli_hub_weights_offline(tmp_path):
    text = textwrap.dedent("""
        participants:
          - {name: a, model: timm/resnet10t, lr: 1.0e-4}
          - {name: b, model: resnet10t, weights: none, lr: 1.0e-4}
        data: {max_per_split: 64}
        transfer: {batch_size: 32}
    """)
    assert "cannot load pretrained weights for 'timm/resnet10t'" in _cli_error(tmp_path, text)


def test_cli_refuses_a_non_empty_out(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = kt_swarm("run", SMOKE, "--out", out)
    assert proc.returncode == 2 and "already exists" in proc.stderr
    assert (out / "keep.txt").read_text() == "mine"


def test_cli_model_errors_are_one_line(tmp_path):
    text = SMOKE.read_text()
    assert "participant 'vit': cannot build" in _cli_error(tmp_path, text, "--set", "participants.1.model_args.num_heads=3")
    assert "participant 'vit': the model fails on its 1x32x32 input" in _cli_error(tmp_path, text, "--set", "participants.1.input_size=32")
    assert "participant 'mixer'" in _cli_error(tmp_path, text, "--set", "participants.2.model=:f")


def test_cli_unavailable_device(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert "CUDA is not available" in _cli_error(tmp_path, SMOKE.read_text(), "--set", "device=cuda")


def test_sigterm_keeps_the_checkpoints_and_says_how_to_resume(tmp_path):
    """A preempted node sends SIGTERM: the run stops, keeps what it checkpointed, and says how to go on."""
    import signal
    import time

    config = write_config(tmp_path / "c.yaml", mlp_config(transfer={"epochs": 50, "batch_size": 32}))
    out = tmp_path / "out"
    proc = start_kt_swarm("run", config, "--out", out, "--engine", "local", env=helpers_env())
    manifest = out / "checkpoints" / "manifest.json"
    deadline = time.time() + 120
    while not (manifest.exists() and "transfer-" in manifest.read_text()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert manifest.exists(), "the run never wrote a checkpoint"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == f"kt-swarm: interrupted; continue with: kt-swarm run --resume {out}"
    assert manifest.exists() and not (out / "summary.json").exists()


# ----------------------------------------------------------------------------- the schema

SCHEMA_LINE = "# yaml-language-server: $schema="


def _is_wandb_sweep(raw: dict) -> bool:
    """A standard `wandb sweep` file (kt-swarm sweep reads it too): W&B's own format, so no schema of ours is named."""
    return "program" in raw or "command" in raw


class Yaml12Loader(yaml.SafeLoader):
    """safe_load with YAML 1.2's floats: `1e-4` (no dot) is a number there, a string in PyYAML's YAML 1.1."""


Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
                                   list("-+0123456789."))


def _shipped_yaml():
    """(path, the schema it must name, relative to the file, or None) for every YAML shipped with configs."""
    for path in sorted([*(ROOT / "configs").glob("*.yaml"), *(ROOT / "benchmarks" / "configs").glob("*.yaml")]):
        yield path, os.path.relpath(ROOT / "configs" / "schema.json", path.parent)
    for path in sorted((ROOT / "configs" / "sweeps").glob("*.yaml")):
        wandb = _is_wandb_sweep(yaml.safe_load(path.read_text()))
        yield path, None if wandb else os.path.relpath(ROOT / "configs" / "sweep.schema.json", path.parent)


@pytest.mark.fast
@pytest.mark.parametrize("path, options", list(COPIES.items()))
def test_the_repository_copies_of_the_schema_are_current(path, options):
    """configs/schema.json, configs/sweep.schema.json and docs/config.md are what the models produce now."""
    command = f"kt-swarm schema {' '.join(options)}".rstrip() + f" > {path}"
    assert (ROOT / path).read_text() == render("--sweep" in options, "--markdown" in options), (
        f"{path} is out of date with the config models: regenerate it with `{command}`")
    code, out, err = cli(["schema", *options])
    assert code == 0, err
    assert out == (ROOT / path).read_text()


@pytest.mark.fast
def test_every_shipped_yaml_names_its_schema_and_validates_against_it():
    """The YAML language server reads the first line; the file holds to the schema it names. A wandb sweep
    file names none (it is W&B's format), yet kt-swarm sweep reads it, so it holds to ours too."""
    jsonschema = _jsonschema()
    schemas = {name: json.loads((ROOT / "configs" / name).read_text()) for name in ("schema.json", "sweep.schema.json")}
    for path, schema in _shipped_yaml():
        first = path.read_text().splitlines()[0]
        if schema is None:
            assert not first.startswith(SCHEMA_LINE), f"{path}: a wandb sweep file names no kt_swarm schema"
            schema = os.path.relpath(ROOT / "configs" / "sweep.schema.json", path.parent)
        else:
            assert first == SCHEMA_LINE + schema, f"{path}: its first line must be `{SCHEMA_LINE}{schema}`"
        if jsonschema is not None:  # the file as the language server reads it: YAML 1.2 (`1e-4` is a number)
            jsonschema.validate(yaml.load(path.read_text(), Yaml12Loader), schemas[Path(schema).name])
        elif Path(schema).name == "schema.json":  # no jsonschema here: the models, which the schema is made from
            parse_config(yaml.safe_load(path.read_text()))
        else:
            load_sweep(path)


@pytest.mark.fast
def test_the_json_schema_refuses_a_misspelt_key():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "configs" / "schema.json").read_text())
    raw = raw_smoke()
    jsonschema.validate(raw, schema)
    raw["transfer"]["temprature"] = 2.0
    with pytest.raises(jsonschema.ValidationError, match="temprature"):
        jsonschema.validate(raw, schema)
    with pytest.raises(UserError, match=re.escape("config key 'transfer.temprature' is unknown (known: strategy, ")):
        parse_config(raw)


def _jsonschema():
    try:
        import jsonschema
    except ImportError:
        return None
    return jsonschema
