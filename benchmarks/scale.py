"""How a swarm step's cost grows with the number of participants N: this exchange against the all-to-all of
before it (issue 24), in one run.

    python benchmarks/scale.py [--sizes 2 4 8 16 32 64] [--steps 8] [--warmup 2] [--old 64434b0] [--out benchmarks/results/scale]

For each N, tiny participants (tests/helpers' tiny MLPs of different widths, float32, batch 128 of
Fashion-MNIST: C = 10) train a few steps with `dml` in the exact gradient mode (every participant teaches
and learns on every unit: the most any strategy sends; `best` sends less as N grows), each configuration in a
fresh process with its own private Ray instance:

    sharded      this exchange, one actor per participant
    sharded/8    this exchange, the participants on 8 actors (placement.participants_per_actor = N/8; one
                 actor per participant below N = 8)
    sharded/2    this exchange on 2 actors, one per core of this machine
    all-to-all   the exchange of the commit before it (--old, checked out into a temporary git worktree),
                 one actor per participant: every actor reads every participant's logits

and reports per step: the median step time, the driver's CPU time (the coordinator: calls, references,
the partition), the bytes a participant reads from the exchange (measured by the actors; for the
all-to-all, the N x B x C logits its learn() reads) and the peak resident memory per process (actors'
median and the driver's, VmHWM; and the actors' proportional set size summed, which shares torch's libraries
and the dataset out). A configuration whose processes would not fit this machine's memory (from
the last one measured) is skipped and says so. Writes OUT.{json,md,png}; the .md ends with the projection
to 256 and 1,024 participants from the fitted costs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
B, C = 128, 10


def one(n: int, per_actor: int, steps: int, warmup: int) -> dict:
    """(In a fresh process, with the tree to measure first on sys.path.) One configuration's measurements."""
    import psutil
    import torch
    from kt_swarm.config import parse_config
    from kt_swarm.coordinator import make_engine
    from kt_swarm.data import load_dataset
    from kt_swarm.objectives import LossSpec
    from kt_swarm.swarm import start_private_ray
    from support import HELPERS
    from support.configs import faulty

    torch.set_num_threads(1)
    raw = {"participants": [faulty(f"p{i:02d}", lr=1e-3, hidden=8 + i % 9) for i in range(n)],
           "data": {"max_per_split": 1024}, "transfer": {"batch_size": B}, "control": False}
    if per_actor > 1:
        raw["placement"] = {"participants_per_actor": per_actor}
    cfg = parse_config(raw)
    # The actors import the tree measured (this one or the old worktree) and the test models.
    start_private_ray(num_cpus=2, runtime_env={"env_vars": {"PYTHONPATH": f"{os.environ['KT_SWARM_TREE']}:{HELPERS}"}})
    engine = make_engine("ray", cfg, load_dataset(cfg.data))
    try:
        engine.reset_optimizers("adam", [1e-3] * n, [0.0] * n)
        loss = LossSpec(strategy="dml", detach_teacher=False)  # every participant teaches and learns on every unit
        wall, driver, received = [], [], []
        for step in range(warmup + steps):
            t, c = time.perf_counter(), time.process_time()
            result = engine.train_step(0, step, loss)
            if step >= warmup:
                wall.append(time.perf_counter() - t)
                driver.append(time.process_time() - c)
                got = getattr(result, "received", None)  # the all-to-all's learn() read every participant's logits
                received.append(statistics.mean(got) if got else n * B * C * 4)
        pids = sorted(set(engine.pids()))
        peaks = [peak_mib(pid) for pid in pids]
        # Resident memory counts the shared libraries (torch) and the dataset (read from the object store) in
        # every process; PSS shares them out, so its sum is what the actors take together.
        pss = [psutil.Process(pid).memory_full_info().pss / 2**20 for pid in pids]
    finally:
        engine.close()
    return {"n": n, "actors": len(pids), "step_s": statistics.median(wall), "driver_s": statistics.median(driver),
            "bytes_per_participant": statistics.median(received), "actor_peak_mib": statistics.median(peaks),
            "actors_pss_mib_total": sum(pss), "driver_peak_mib": peak_mib(os.getpid())}


def peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_one(tree: Path, n: int, per_actor: int, args) -> dict:
    env = {**os.environ, "KT_SWARM_TREE": str(tree), "RAY_USAGE_STATS_ENABLED": "0", "WANDB_MODE": "disabled",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{tree}:{ROOT / 'tests'}"}
    cmd = [sys.executable, __file__, "--one", str(n), "--per-actor", str(per_actor), "--steps", str(args.steps),
           "--warmup", str(args.warmup)]
    # cwd: Ray puts the driver's working directory first on its workers' path
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout, cwd=tree)
    result = [line for line in out.stdout.splitlines() if line.startswith("{")]  # Ray may log to stdout too
    if out.returncode or not result:
        return {"n": n, "error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(result[-1])


def worktree(commit: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix="kt_swarm-old-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit], check=True,
                   capture_output=True)
    return path


def project(rows: list[dict]) -> str:
    """The cluster projection from the fitted costs (the sharded exchange, one actor per participant)."""
    import numpy as np

    ok = [r for r in rows if "error" not in r and "skipped" not in r]
    n = np.array([r["n"] for r in ok], dtype=float)
    driver = np.array([r["driver_s"] for r in ok])
    coef = np.polyfit(n, driver, 1)  # the driver: a fixed part and a part per actor call
    per_bytes = statistics.median(r["bytes_per_participant"] for r in ok) / (B * C * 4)  # in units of B x C fp32
    lines = ["", "## Projection: 256 and 1,024 participants (on paper, from the fitted costs)", "",
             f"Fitted here: the driver's CPU time a step = {coef[0] * 1e3:.2f} ms x N {coef[1] * 1e3:+.1f} ms "
             f"(2 calls per actor and the partition); a participant reads {per_bytes:.2f} x B x C values a step, "
             "whatever N. For a cluster of 8 participants per node on 25 Gbit/s links, B = 128 and C = 1,000 "
             "(ImageNet) in float32:", "",
             "| participants | nodes | bytes per node per step | on the link | driver calls per step | driver CPU per step (fit) | W [N, N, B] in the driver |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for big in (256, 1024):
        node_bytes = 8 * per_bytes * 128 * 1000 * 4
        w_bytes = big * big * 128 * 4
        lines.append(f"| {big:,} | {big // 8} | {node_bytes / 2**20:.1f} MiB | {node_bytes * 8 / 25e9 * 1e3:.1f} ms "
                     f"| {2 * big:,} | {np.polyval(coef, big):.2f} s | {w_bytes / 2**20:,.0f} MiB |")
    lines += ["", "What breaks first is the driver, not the links: its CPU time grows linearly with N (2 calls per "
              "actor a step, each about a millisecond of Ray's submission path here), and the partition it "
              "computes, W [N, N, B], grows with N^2 (at 1,024 participants 512 MiB a step in float32, for the "
              "role matrix). The links carry a constant per node. Past a few hundred participants the driver "
              "would have to hand the partition to the shard owners (each computes its W columns already; "
              "the role matrix would come back as per-shard sums) and call the actors through a tree, and the "
              "N x N trust matrix (trusted teachers) that rides with every call would have to be sent once per arm."]
    return "\n".join(lines)


def plot(rows_by: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("step_s", "median step (s)"), ("driver_s", "driver CPU per step (s)"),
              ("bytes_per_participant", "bytes read per participant per step"), ("actor_peak_mib", "peak RSS per actor process (MiB)")]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for ax, (key, label) in zip(axes, panels):
        for name, rows in rows_by.items():
            ok = [r for r in rows if key in r]
            ax.plot([r["n"] for r in ok], [r[key] for r in ok], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("participants N")
        ax.set_title(label)
        if key != "actor_peak_mib":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--old", default="64434b0", help="the commit whose all-to-all exchange is the baseline")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale"))
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--per-actor", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.per_actor, args.steps, args.warmup)))
        return
    old = worktree(args.old)
    try:
        variants = {"sharded": (ROOT, lambda n: 1), "sharded/8": (ROOT, lambda n: max(1, n // 8)),
                    "sharded/2": (ROOT, lambda n: max(1, n // 2)), "all-to-all": (old, lambda n: 1)}
        rows_by = {name: [] for name in variants}
        # Each configuration's result is kept as it comes (OUT.partial.json), and a rerun measures only what
        # is not there yet: an interrupted run goes on (delete the file to measure everything again).
        partial = Path(args.out).with_suffix(".partial.json")
        done = json.loads(partial.read_text()) if partial.exists() else {}
        for n in args.sizes:
            for name, (tree, per) in variants.items():
                if f"{name}/{n}" in done:
                    rows_by[name].append(done[f"{name}/{n}"])
                    continue
                last = next((r for r in reversed(rows_by[name]) if "actors_pss_mib_total" in r), None)
                actors = -(-n // per(n))
                need = last and last["actors_pss_mib_total"] / last["actors"] * actors
                if need and need > 0.85 * free_mib():
                    rows_by[name].append({"n": n, "skipped": f"{actors} actors would need ~{need / 1024:.1f} GiB "
                                                             f"(this machine has {free_mib() / 1024:.1f} GiB free)"})
                else:
                    rows_by[name].append(run_one(tree, n, per(n), args))
                if "error" not in rows_by[name][-1]:
                    done[f"{name}/{n}"] = rows_by[name][-1]
                    partial.parent.mkdir(parents=True, exist_ok=True)
                    partial.write_text(json.dumps(done, indent=1))
                print(name, rows_by[name][-1], flush=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], capture_output=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), machine)
    out.with_suffix(".json").write_text(json.dumps({"machine": cpu, "cores": os.cpu_count(), "B": B, "C": C,
                                                    "steps": args.steps, "rows": rows_by}, indent=1))
    plot(rows_by, out.with_suffix(".png"))
    md = [f"# Step cost against N (benchmarks/scale.py)", "",
          f"{cpu}, {os.cpu_count()} cores; tiny MLPs, batch {B}, C = {C}, float32, `dml` with exact gradients; "
          f"medians of {args.steps} steps after {args.warmup}. Bytes: what one participant reads from the exchange "
          "a step (mean over participants).", "",
          "| N | exchange | actors | step (s) | driver CPU (s) | bytes / participant | peak RSS / actor (MiB) | actors' PSS, all (MiB) | driver peak (MiB) |",
          "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for n in args.sizes:
        for name, rows in rows_by.items():
            r = next(r for r in rows if r["n"] == n)
            if "step_s" in r:
                md.append(f"| {n} | {name} | {r['actors']} | {r['step_s']:.3f} | {r['driver_s']:.3f} | "
                          f"{r['bytes_per_participant']:,.0f} | {r['actor_peak_mib']:.0f} | {r['actors_pss_mib_total']:,.0f} | "
                          f"{r['driver_peak_mib']:.0f} |")
            else:
                md.append(f"| {n} | {name} | | {r.get('skipped') or r.get('error')} | | | | | |")
    md.append(project(rows_by["sharded"]))
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    if os.environ.get("KT_SWARM_TREE"):  # the tree measured first: this one, or the old worktree
        sys.path.insert(0, os.environ["KT_SWARM_TREE"])
    main()
