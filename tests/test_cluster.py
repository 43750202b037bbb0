"""cluster/: launcher configs against Ray's own schema, and a real two-node cluster on loopback."""
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml

from kt_swarm.config import parse_config
from kt_swarm.coordinator import run
from kt_swarm.rundir import RunDir, read_records
from kt_swarm.summary import differences
from support import ROOT, helpers_env
from support.configs import faulty, mlp_config, write_config
from support.launch import start_kt_swarm
from support.ray_nodes import ENV, RAY, start_node
from support.run_log import wait_for_step

CLUSTER = ROOT / "cluster"


@pytest.mark.fast
@pytest.mark.parametrize("name", ["aws.yaml", "onprem.yaml"])
def test_launcher_configs_match_the_schema_shipped_in_ray(name):
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((CLUSTER / name).read_text())
    jsonschema.validate(config, schema)
    assert config["provider"]["type"] in ("aws", "local")
    # A typo is caught, so the check can fail.
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**config, "max_workerz": 2}, schema)


@pytest.mark.fast
def test_rayjob_and_runtime_env_are_well_formed():
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["entrypoint"].startswith("kt-swarm run configs/")
    assert (ROOT / job["spec"]["entrypoint"].split()[2]).exists()
    assert job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] >= 1
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**{k: v for k, v in env.items() if k != "excludes"}, excludes=env["excludes"])
    assert "ray job submit --address" in (CLUSTER / "README.md").read_text()


@pytest.fixture(scope="module")
def two_node_cluster():
    """Head (node_a) and worker (node_b) on loopback, each a process tree this fixture started and alone stops.
    A bystander Ray instance, started first as a user's other work would be, must outlive the teardown."""
    temp = Path(tempfile.mkdtemp(prefix="kt-ray-", dir="/tmp"))  # short: Ray's socket paths fit in 107 characters
    bystander = start_node(temp / "other", '{"other": 1}', num_cpus=1)
    helpers = helpers_env(ENV)  # the test models, for actors on either node
    its_own = set(bystander.alive())  # its GCS, raylet, dashboard, agents...
    head = worker = None
    try:
        head = start_node(temp / "head", '{"node_a": 1}', env=helpers)
        worker = start_node(temp / "head", '{"node_b": 1}', head=head, env=helpers)
        yield {"env": ENV, "head": head, "worker": worker, "dashboard": head.dashboard}
    finally:
        for node in (worker, head):
            if node is not None:
                node.stop()
        survivors = bystander.alive()
        bystander.stop()
        shutil.rmtree(temp, ignore_errors=True)
    assert head.alive() == [] and worker.alive() == []
    assert its_own <= set(survivors), "the cluster's teardown reached another Ray instance"


def test_smoke_run_with_a_deepspeed_gang_submitted_to_a_two_node_cluster(two_node_cluster, tmp_path, zoo_cache):
    env = two_node_cluster["env"]
    out = tmp_path / "run"
    runtime_env = json.dumps({"env_vars": {"KT_SWARM_CACHE": str(zoo_cache), "RAY_USAGE_STATS_ENABLED": "0"},
                              "excludes": ["runs/", "benchmarks/results/"]})
    submit = [RAY, "job", "submit", "--address", two_node_cluster["dashboard"], "--working-dir", str(ROOT),
              "--runtime-env-json", runtime_env, "--",
              sys.executable, "-m", "kt_swarm", "run", "configs/smoke.yaml", "--set", "placement.strategy=SPREAD",
              "--set", "resources.cpus_per_participant=1", "--out", str(out),
              # The ViT on a gang of two ranks under ZeRO-2 (a bundle each: the cluster's 4 CPUs, both nodes).
              "--set", "participants.1.ranks=2", "--set", "participants.1.deepspeed={zero_optimization: {stage: 2}}"]
    proc = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "succeeded" in (proc.stdout + proc.stderr).lower()
    summary = json.loads((out / "summary.json").read_text())
    nodes = {p["node"] for p in summary["participants"].values()}
    assert len(nodes) == 2, nodes  # SPREAD over the two nodes
    assert summary["engine"] == "ray"
    assert summary["participants"]["vit"]["accuracy_after"] > 0  # the gang trained, evaluated and reported


def test_a_lost_node_costs_a_restart_and_the_run_ends_as_if_nothing_happened(two_node_cluster, tmp_path):
    """Three participants spread over both nodes; the worker node is lost at once (every process SIGKILLed,
    as a preempted machine) mid-arm. Ray re-places the group's bundles that were there on the head node and
    restarts their actors there; every participant returns to the last checkpoint and the run ends with the
    summary of a run that was never interrupted (the local engine's, float64)."""
    raw = mlp_config(control=False, data={"max_per_split": 256}, transfer={"epochs": 2, "batch_size": 32},
                     placement={"strategy": "SPREAD", "timeout_s": 120}, resources={"cpus_per_participant": 0.5})
    raw["participants"].append(faulty("slow", "slow_mlp", hidden=12, delay=0.3))
    with RunDir(tmp_path / "reference") as rd:
        reference = run(parse_config(raw), rd, "local")
    config = write_config(tmp_path / "c.yaml", raw)
    out = tmp_path / "run"
    proc = start_kt_swarm("run", config, "--out", out, "-q", "--address", two_node_cluster["head"].gcs,
                          env=helpers_env(ENV))
    records = wait_for_step(proc, out, 3)
    assert records is not None and proc.poll() is None, "the run ended before the node could be lost"
    placed = next((r for r in records if r.get("event") == "placed"), None)
    nodes = {where["node"] for where in placed["participants"].values()}
    assert len(nodes) == 2, placed  # spread: some participants live on the node about to go
    two_node_cluster["worker"].kill()
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert not differences(summary, reference, across_engines=True)  # Ray against the local engine
    assert sum(summary["faults"]["restarts"].values()) >= 1
    log = read_records(out)
    assert any(r.get("event") == "restarted" for r in log)
    last_placed = [r for r in log if r.get("event") == "placed"][-1]
    assert len({where["node"] for where in last_placed["participants"].values()}) == 1  # all on the head node now
