"""Lost node: what losing a whole node in the middle of a run costs (issue 15), on a two-node loopback cluster.

    python benchmarks/lost_node.py --repeats 3 --out benchmarks/results/lost_node

Head and worker are `ray start` nodes of this script's own (tests/ray_node.py: ports of their own, stopped
by pid, nothing else touched). Three tiny participants (tests/helpers/faulty_models.py) are SPREAD over both.
Each repeat runs the job as a user would (`kt-swarm run --address`, the driver on the head's machine)
uninterrupted, then again with every process of the worker node SIGKILLed once the transfer arm has logged
step `--at` (a preempted machine), then starts the worker again. Both runs must end with the same summary
(float64, checked); the node's cost is the difference of their times. Medians over the repeats, the machine
named. Writes <out>.json and <out>.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
HELPERS = ROOT / "tests" / "helpers"
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]
from kt_swarm.summary import reproducible  # noqa: E402
from quickstart_arms import machine  # noqa: E402
from ray_node import ENV, start_node  # noqa: E402


def config(epochs: int) -> dict:
    return {
        "participants": [{"name": "wide", "model": "faulty_models:tiny_mlp", "lr": 3e-3, "model_args": {"hidden": 24}},
                         {"name": "narrow", "model": "faulty_models:tiny_mlp", "lr": 3e-3, "model_args": {"hidden": 8}},
                         {"name": "slow", "model": "faulty_models:slow_mlp", "lr": 3e-3,
                          "model_args": {"hidden": 12, "delay": 0.05}}],
        "data": {"max_per_split": 512, "augment": {"shift": 2, "hflip": True}},
        "transfer": {"epochs": epochs, "batch_size": 32, "temperature": 2.0},
        "checkpoint": {"every_steps": 4, "keep": 2},
        "placement": {"strategy": "SPREAD", "timeout_s": 180},
        "resources": {"cpus_per_participant": 0.5},
        "dtype": "float64", "control": True,
    }


def job(config_path: Path, out: Path, gcs: str, lose=None, at: int = 0) -> float:
    """One run through the CLI against the cluster; with `lose`, call it once the transfer arm logs step `at`.
    Returns the run's wall time."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "kt_swarm", "run", str(config_path), "--out", str(out), "-q",
                             "--address", gcs], cwd=ROOT, env={**ENV, "PYTHONPATH": str(HELPERS)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while lose is not None and proc.poll() is None:
        lines = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
        if any('"arm": "transfer"' in line and json.loads(line).get("step", -1) >= at for line in lines if line.endswith("}")):
            lose()
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=1800)
    if proc.returncode:
        raise SystemExit(f"the run in {out} failed: {err[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--at", type=int, default=5, help="the transfer arm's step (epoch 0) after which the node goes")
    ap.add_argument("--out", default="benchmarks/results/lost_node")
    args = ap.parse_args()

    temp = Path(tempfile.mkdtemp(prefix="kt-lost-", dir="/tmp"))  # short: Ray's socket paths
    helpers = {"PYTHONPATH": str(HELPERS)}
    head = worker = None
    rows = []
    try:
        head = start_node(temp / "ray", '{"node_a": 1}', env=helpers)
        config_path = temp / "config.yaml"
        config_path.write_text(yaml.safe_dump(config(args.epochs)))
        for r in range(args.repeats):
            worker = start_node(temp / "ray", '{"node_b": 1}', head=head, env=helpers)
            clean = job(config_path, temp / f"clean-{r}", head.gcs)
            lost = job(config_path, temp / f"lost-{r}", head.gcs, lose=worker.kill, at=args.at)
            worker.stop()
            summaries = [json.loads((temp / f"{k}-{r}" / "summary.json").read_text()) for k in ("clean", "lost")]
            rows.append({"clean_s": clean, "lost_s": lost, "cost_s": lost - clean,
                         "equal": reproducible(summaries[0]) == reproducible(summaries[1]),
                         "restarts": summaries[1]["faults"]["restarts"], "steps": summaries[0]["steps"]})
            print(f"repeat {r}: clean {clean:.1f} s, node lost {lost:.1f} s, cost {lost - clean:.1f} s, "
                  f"equal {rows[-1]['equal']}, restarts {rows[-1]['restarts']}", flush=True)
    finally:
        for node in (worker, head):
            if node is not None:
                node.stop()
        shutil.rmtree(temp, ignore_errors=True)
    result = {"machine": machine(), "command": "python benchmarks/lost_node.py " + " ".join(sys.argv[1:]),
              "repeats": rows, "median_clean_s": statistics.median(r["clean_s"] for r in rows),
              "median_lost_s": statistics.median(r["lost_s"] for r in rows),
              "median_cost_s": statistics.median(r["cost_s"] for r in rows),
              "all_equal": all(r["equal"] for r in rows)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(
        f"Lost node on {result['machine']}\ncommand: `{result['command']}`\n\n"
        "| repeat | steps per arm | clean s | node lost s | cost s | restarts | summary equal |\n|---|---|---|---|---|---|---|\n"
        + "".join(f"| {i} | {r['steps']} | {r['clean_s']:.1f} | {r['lost_s']:.1f} | {r['cost_s']:.1f} | "
                  f"{sum(r['restarts'].values())} | {r['equal']} |\n" for i, r in enumerate(rows))
        + f"\nmedian: clean {result['median_clean_s']:.1f} s, node lost {result['median_lost_s']:.1f} s, "
          f"**cost {result['median_cost_s']:.1f} s**; every summary equal: {result['all_equal']}\n")
    print(out.with_suffix(".md").read_text())
    if not result["all_equal"]:
        raise SystemExit("a run that lost its node ended with another summary")


if __name__ == "__main__":
    main()
