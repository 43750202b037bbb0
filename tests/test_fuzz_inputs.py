"""Bad input hunted, not listed: random command lines (through --dry-run, so a valid one starts
nothing) and mutated checkpoint files. The answer is exit code 0 or 2, and 2 comes with one line;
a damaged checkpoint is refused in one line, never with a traceback."""
import hashlib
import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kt_swarm.checkpoint import Checkpoints, config_digest
from kt_swarm.config import parse_config, to_dict
from kt_swarm.coordinator import run
from kt_swarm.errors import UserError
from kt_swarm.rundir import RunDir
from support import ROOT
from support.configs import mlp_config
from support.hooks import Stop, stop_after
from support.launch import cli

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """Paths worth pointing the CLI at: a good config, garbage, a folder, nothing, a resumable run."""
    root = tmp_path_factory.mktemp("places")
    (root / "garbage.yaml").write_bytes(b"\x00\xff{[: -\n\t!!python/object:os.system")
    (root / "folder").mkdir()
    cfg = parse_config(mlp_config(transfer={"epochs": 1, "batch_size": 32}))
    with pytest.raises(Stop):
        with RunDir(root / "stopped") as rd:
            run(cfg, rd, "local", on_record=stop_after(4))
    return {"config": str(ROOT / "configs" / "smoke.yaml"), "garbage": str(root / "garbage.yaml"),
            "folder": str(root / "folder"), "missing": str(root / "missing"), "stopped": str(root / "stopped"),
            "fresh_out": str(root / "fresh-out")}


KEYS = ["seed", "dtype", "transfer.epochs", "transfer.batch_size", "participants.0.lr", "participants.*.lr",
        "participants.7.lr", "participants.0.model", "data.kind", "checkpoint.keep", "checkpoint.every_steps",
        "fault.max_restarts", "device", "tracking.wandb", "selection", "nope", "", "a..b", "*"]
VALUES = st.one_of(st.sampled_from(["-1", "0", "3", "1e-3", "nan", "-.inf", "[1, 2]", "{a: 1}", "null", "true", "cuda:7",
                                    "float64", "'", ": :", "!!python/object:os.system", "", "resnet18", "nope:nothing"]),
                   st.text(max_size=12))
OPTIONS = ["--set", "--out", "--resume", "--engine", "--address", "-q", "-v", "--quiet", "--verbose", "local", "ray",
           "--", "-", "--bogus", "-x", "--dry-run", "--set=seed=1", "-qv"]


@st.composite
def command_lines(draw, places):
    """Anything at all: options, paths, overrides and text in any order."""
    place = st.sampled_from(list(places.values()))
    token = st.one_of(assignments(), st.sampled_from(OPTIONS), place, st.text(max_size=10))
    argv = ["run", *draw(st.lists(token, max_size=7)), "--dry-run"]
    assume(not {"-h", "--help"} & set(argv))
    return argv


def assignments():
    return st.builds(lambda k, v: f"{k}={v}", st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), VALUES)


@st.composite
def overridden_configs(draw, places):
    """The good config with random overrides, given either way: deep into the validator."""
    argv = ["run", places["config"], "--dry-run"]
    for assignment in draw(st.lists(assignments(), min_size=1, max_size=3)):
        argv += draw(st.sampled_from([[assignment], ["--set", assignment], [f"--set={assignment}"]]))
    return argv


def call(argv: list[str]) -> tuple[int, str, str]:
    return cli(argv, alarm=20)  # a hang fails the test instead of stalling it


@pytest.mark.parametrize("lines", [command_lines, overridden_configs])
def test_random_command_lines_end_in_a_dry_run_or_one_line(lines, places, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths the fuzzer makes up land here

    @FUZZ
    @given(lines(places))
    def check(argv):
        code, out, err = call(argv)
        assert "Traceback" not in err
        if code == 0:
            assert "participants:" in out  # the resolved config
        else:
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1 and lines[0].startswith("kt-swarm: error: "), (argv, code, err)

    check()
    assert not (tmp_path / "runs").exists() and not any(p.name == "fresh-out" for p in tmp_path.rglob("*"))


def test_dry_run_checks_a_resumable_run_and_writes_nothing(places):
    before = sorted(p.name for p in (ROOT / "runs").glob("*")) if (ROOT / "runs").exists() else []
    code, out, err = call(["run", "--resume", places["stopped"], "--dry-run"])
    assert code == 0 and "participants:" in out, err
    code, out, err = call(["run", places["config"], "--out", places["fresh_out"], "--dry-run", "seed=3"])
    assert code == 0 and "seed: 3" in out, err
    assert not (ROOT / "runs").exists() or sorted(p.name for p in (ROOT / "runs").glob("*")) == before
    from pathlib import Path

    assert not Path(places["fresh_out"]).exists()


def mutations():
    """Ways a file gets damaged: cut short, bytes changed, bytes added, emptied."""
    return st.one_of(
        st.builds(lambda n: ("truncate", n), st.integers(0, 4000)),
        st.builds(lambda at, b: ("flip", at, b), st.integers(0, 100_000), st.integers(1, 255)),
        st.builds(lambda junk: ("append", junk), st.binary(min_size=1, max_size=64)),
        st.just(("empty",)),
    )


def damage(data: bytes, how) -> bytes:
    if how[0] == "truncate":
        return data[: how[1] % max(len(data), 1)]
    if how[0] == "flip":
        at = how[1] % len(data)
        return data[:at] + bytes([data[at] ^ how[2]]) + data[at + 1:]
    if how[0] == "append":
        return data + how[1]
    return b""


def test_damaged_checkpoint_files_are_refused_in_one_line(places):
    """Even when the manifest is updated to the damaged file's hash (so torch.load and the header
    checks see it), loading either gives back a dict or refuses in one line."""
    from pathlib import Path

    run_dir = Path(places["stopped"])
    cfg = parse_config(mlp_config(transfer={"epochs": 1, "batch_size": 32}))
    manifest_path = run_dir / "checkpoints" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    latest = manifest["sets"][-1]
    rel = f"{latest['name']}/wide.pt"
    path = run_dir / "checkpoints" / rel
    original, original_manifest = path.read_bytes(), manifest_path.read_text()

    @FUZZ
    @given(mutations(), st.booleans())
    def check(how, rehash):
        damaged = damage(original, how)
        path.write_bytes(damaged)
        if rehash:
            latest["files"][rel] = hashlib.sha256(damaged).hexdigest()
            manifest_path.write_text(json.dumps(manifest))
        try:
            ckpt = Checkpoints(run_dir / "checkpoints", config_digest(to_dict(cfg)), ["wide", "narrow"], keep=2)
            list(ckpt.load_set(ckpt.latest)[1])
            assert rehash or damaged == original, "a damaged file passed the hash check"
        except UserError as e:
            assert "\n" not in str(e) and str(e).startswith("checkpoint '")
        finally:
            path.write_bytes(original)
            manifest_path.write_text(original_manifest)

    check()
