"""cluster/: launcher configs against Ray's own schema, and a real two-node cluster on loopback."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml

from conftest import ROOT

CLUSTER = ROOT / "cluster"
RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"


@pytest.mark.parametrize("name", ["aws.yaml", "onprem.yaml"])
def test_launcher_configs_match_the_schema_shipped_in_ray(name):
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((CLUSTER / name).read_text())
    jsonschema.validate(config, schema)
    assert config["provider"]["type"] in ("aws", "local")
    # A typo is caught, so the check can fail.
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**config, "max_workerz": 2}, schema)


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


@pytest.fixture
def two_node_cluster():
    # A short temp dir: Ray's socket paths must fit in 107 characters.
    temp = tempfile.mkdtemp(prefix="kt-ray-", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--disable-usage-stats"]
    head = [RAY, "start", "--head", "--port", "6391", "--dashboard-host", "127.0.0.1", "--dashboard-port", "8291",
            "--resources", '{"node_a": 1}', "--temp-dir", temp, *common]
    worker = [RAY, "start", "--address", "127.0.0.1:6391", "--resources", '{"node_b": 1}', *common]
    try:
        subprocess.run(head, env=env, check=True, capture_output=True, timeout=120)
        subprocess.run(worker, env=env, check=True, capture_output=True, timeout=120)
        yield env
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_smoke_run_with_a_deepspeed_gang_submitted_to_a_two_node_cluster(two_node_cluster, tmp_path, zoo_cache):
    env = two_node_cluster
    out = tmp_path / "run"
    runtime_env = json.dumps({"env_vars": {"KT_SWARM_CACHE": str(zoo_cache), "RAY_USAGE_STATS_ENABLED": "0"},
                              "excludes": ["runs/", "benchmarks/results/"]})
    submit = [RAY, "job", "submit", "--address", "http://127.0.0.1:8291", "--working-dir", str(ROOT),
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
    assert summary["participants"]["vit"]["acc_after"] > 0  # the gang trained, evaluated and reported
