"""What a lost node and a killed driver cost (issue 15), on a two-node loopback cluster.

    python benchmarks/fault_cost.py --repeats 3 --out benchmarks/results/fault_cost

Head and worker are `ray start` nodes of this script's own (tests/support/ray_nodes.py: ports of their own, stopped
by pid, nothing else touched). Three tiny participants (tests/helpers/faulty_models.py) are SPREAD over both.
Each repeat runs the job as a user would (`kt-swarm run --address`, the driver on the head's machine)
uninterrupted; again with every process of the worker node SIGKILLed once the transfer arm has logged step
`--at` (a preempted machine), then starts the worker again; and again with the driver (the `kt-swarm run`
process) SIGKILLed at the same step and the run finished by `kt-swarm run --resume`. Every run must end with
the uninterrupted one's summary (float64, checked); a fault's cost is the difference of the times (the
driver's: both processes together). Medians over the repeats, the machine named. Writes <out>.json and <out>.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]
from kt_swarm.summary import differences  # noqa: E402
from quickstart_arms import machine  # noqa: E402
from support import helpers_env  # noqa: E402
from support.configs import faulty, mlp_config  # noqa: E402
from support.launch import start_kt_swarm  # noqa: E402
from support.ray_nodes import ENV, start_node  # noqa: E402
from support.run_log import wait_for_step  # noqa: E402


def config(epochs: int) -> dict:
    """The tests' two float64 MLPs and a slow third, SPREAD over the nodes, on more data for longer."""
    raw = mlp_config(data={"max_per_split": 512, "augment": {"shift": 2, "hflip": True}},
                     transfer={"epochs": epochs, "batch_size": 32, "temperature": 2.0},
                     checkpoint={"every_steps": 4, "keep": 2},
                     placement={"strategy": "SPREAD", "timeout_s": 180}, resources={"cpus_per_participant": 0.5})
    raw["participants"].append(faulty("slow", "slow_mlp", hidden=12, delay=0.05))
    return raw


def job(cli: list[str], out: Path, gcs: str, fault=None, at: int = 0) -> float:
    """`kt-swarm run CLI... --address gcs` as a user would run it against the cluster; with `fault` (a callable,
    given the driver's process), call it once the transfer arm logs step `at` in `out`. Returns the wall
    time (a killed driver's: until it is gone)."""
    t0 = time.perf_counter()
    proc = start_kt_swarm("run", *cli, "-q", "--address", gcs, env=helpers_env(ENV), stdout=subprocess.DEVNULL)
    if fault is not None and wait_for_step(proc, out, at, timeout=1800) is not None:
        fault(proc)
    _, err = proc.communicate(timeout=1800)
    if proc.returncode and not (fault is not None and proc.returncode == -signal.SIGKILL):
        raise SystemExit(f"kt-swarm run {' '.join(cli)} failed: {err[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--at", type=int, default=5, help="the transfer arm's step (epoch 0) after which the fault strikes")
    ap.add_argument("--out", default="benchmarks/results/fault_cost")
    args = ap.parse_args()

    temp = Path(tempfile.mkdtemp(prefix="kt-faults-", dir="/tmp"))  # short: Ray's socket paths
    helpers = helpers_env(ENV)  # the test models, for actors on either node
    head = worker = None
    rows = []
    try:
        head = start_node(temp / "ray", '{"node_a": 1}', env=helpers)
        config_path = temp / "config.yaml"
        config_path.write_text(yaml.safe_dump(config(args.epochs)))
        for r in range(args.repeats):
            worker = start_node(temp / "ray", '{"node_b": 1}', head=head, env=helpers)
            run = {k: [str(config_path), "--out", str(temp / f"{k}-{r}")] for k in ("clean", "node", "driver")}
            clean = job(run["clean"], temp / f"clean-{r}", head.gcs)
            node = job(run["node"], temp / f"node-{r}", head.gcs, fault=lambda _: worker.kill(), at=args.at)
            worker.stop()
            worker = start_node(temp / "ray", '{"node_b": 1}', head=head, env=helpers)
            driver = job(run["driver"], temp / f"driver-{r}", head.gcs, fault=lambda proc: proc.kill(), at=args.at)
            driver += job(["--resume", str(temp / f"driver-{r}")], temp / f"driver-{r}", head.gcs)
            worker.stop()
            summaries = {k: json.loads((temp / f"{k}-{r}" / "summary.json").read_text()) for k in ("clean", "node", "driver")}
            rows.append({"clean_s": clean, "node_s": node, "driver_s": driver, "node_cost_s": node - clean,
                         "driver_cost_s": driver - clean, "steps": summaries["clean"]["steps"],
                         "equal": all(not differences(summaries[k], summaries["clean"], across_engines=False) for k in ("node", "driver")),
                         "restarts": summaries["node"]["faults"]["restarts"], "resumes": summaries["driver"]["faults"]["resumes"]})
            print(f"repeat {r}: clean {clean:.1f} s, node lost {node:.1f} s, driver killed + resumed {driver:.1f} s, "
                  f"equal {rows[-1]['equal']}, restarts {rows[-1]['restarts']}", flush=True)
    finally:
        for started in (worker, head):
            if started is not None:
                started.stop()
        shutil.rmtree(temp, ignore_errors=True)
    median = {k: statistics.median(r[k] for r in rows) for k in ("clean_s", "node_s", "driver_s", "node_cost_s", "driver_cost_s")}
    result = {"machine": machine(), "command": "python benchmarks/fault_cost.py " + " ".join(sys.argv[1:]),
              "repeats": rows, "median": median, "all_equal": all(r["equal"] for r in rows)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(
        f"Fault cost on {result['machine']}\ncommand: `{result['command']}`\n\n"
        "| repeat | steps per arm | clean s | node lost s | driver killed + --resume s | node cost s | driver cost s "
        "| restarts | summaries equal |\n|---|---|---|---|---|---|---|---|---|\n"
        + "".join(f"| {i} | {r['steps']} | {r['clean_s']:.1f} | {r['node_s']:.1f} | {r['driver_s']:.1f} | "
                  f"{r['node_cost_s']:.1f} | {r['driver_cost_s']:.1f} | {sum(r['restarts'].values())} | {r['equal']} |\n"
                  for i, r in enumerate(rows))
        + f"\nmedian: clean {median['clean_s']:.1f} s; **a lost node {median['node_cost_s']:.1f} s**, "
          f"**a killed driver {median['driver_cost_s']:.1f} s** (its --resume included); every summary equal: "
          f"{result['all_equal']}\n")
    print(out.with_suffix(".md").read_text())
    if not result["all_equal"]:
        raise SystemExit("a run that met a fault ended with another summary")


if __name__ == "__main__":
    main()
