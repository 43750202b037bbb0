"""Chaos soak: a long Ray run whose participants' actors are SIGKILLed again and again, against the same run
never interrupted (issue 15). In float64 both must end with the same summary.

    python benchmarks/chaos_soak.py --kills 12 --out benchmarks/results/chaos_soak

Three tiny MLPs (tests/helpers/faulty_models.py, importable by the actors through PYTHONPATH), both arms,
hundreds of steps, checkpoints every few steps. Every `--every` metrics records a random participant's
actor is killed (the process, SIGKILL), in turn: mid-step, while a checkpoint set is being written (just
after the step record that precedes one) and while the epoch's validation runs (just after an epoch's last
step). The kill waits for the swarm to be placed again before the next is armed. Time lost per kill is the
chaos run's time minus the clean Ray run's, over the kills. Writes <out>.json and <out>.md.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]
from kt_swarm.config import parse_config  # noqa: E402
from kt_swarm.coordinator import run  # noqa: E402
from kt_swarm.data import batches_in, load_dataset  # noqa: E402
from kt_swarm.rundir import RunDir, read_records  # noqa: E402
from kt_swarm.summary import differences  # noqa: E402
from quickstart_arms import machine  # noqa: E402
from support.configs import faulty, mlp_config  # noqa: E402
from support.ray_nodes import start_private_ray_with_helpers  # noqa: E402

WHERE = ("step", "checkpoint", "eval")


def config(epochs: int, every_steps: int) -> dict:
    """The tests' two float64 MLPs made three, longer: more data, epochs and checkpoints, restarts unlimited."""
    return mlp_config(participants=[faulty(f"mlp{i}", hidden=h) for i, h in enumerate((32, 16, 8))],
                      data={"max_per_split": 512, "augment": {"shift": 2, "hflip": True}},
                      transfer={"epochs": epochs, "batch_size": 32, "temperature": 2.0},
                      checkpoint={"every_steps": every_steps, "keep": 2},
                      fault={"max_restarts": 100}, selection="best_val")


class Chaos:
    """on_record that arms a kill every `every` records and fires it at the next place of its kind."""

    def __init__(self, kills: int, every: int, every_steps: int, steps_per_epoch: int, seed: int):
        self.left, self.every, self.every_steps, self.steps = kills, every, every_steps, steps_per_epoch
        self.rng = random.Random(seed)
        self.pids: dict[str, int] = {}
        self.seen, self.armed, self.placed = 0, None, True
        self.kills: list[dict] = []

    def __call__(self, record: dict) -> None:
        if record.get("event") == "placed":
            self.pids = {n: w["pid"] for n, w in record["participants"].items()}
            self.placed = True
            return
        self.seen += 1
        if self.armed is None and self.left and self.placed and self.seen % self.every == 0:
            self.armed = WHERE[len(self.kills) % len(WHERE)]
        if self.armed is None or "losses" not in record:
            return
        step = record["step"]
        if self.armed == "checkpoint" and (record["global_step"] + 1) % self.every_steps:
            return
        if self.armed == "eval" and step != self.steps - 1:
            return
        victim = self.rng.choice(sorted(self.pids))
        delay = 0.0 if self.armed == "step" else self.rng.uniform(0.0, 0.05)  # into the write / the evaluation
        self.kills.append({"where": self.armed, "participant": victim, "arm": record["arm"], "epoch": record["epoch"],
                           "step": step, "delay_s": round(delay, 3)})
        threading.Timer(delay, os.kill, (self.pids[victim], signal.SIGKILL)).start()
        self.armed, self.placed, self.left = None, False, self.left - 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=12)
    ap.add_argument("--every", type=int, default=20, help="metrics records between kills")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--checkpoint-every", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/chaos_soak")
    args = ap.parse_args()

    os.environ.setdefault("WANDB_MODE", "disabled")
    start_private_ray_with_helpers()
    raw = config(args.epochs, args.checkpoint_every)
    cfg = parse_config(raw)
    tmp = Path(tempfile.mkdtemp(prefix="kt-chaos-"))
    runs = {}
    steps = batches_in(load_dataset(cfg.data), "train", cfg.transfer.batch_size)  # every data point labelled: both arms
    for name in ("clean", "chaos"):
        chaos = Chaos(args.kills, args.every, args.checkpoint_every, steps_per_epoch=steps, seed=args.seed)
        t0 = time.perf_counter()
        with RunDir(tmp / name) as rd:
            summary = run(cfg, rd, "ray", on_record=chaos if name == "chaos" else None)
        log = read_records(tmp / name)
        runs[name] = {"summary": summary, "seconds": time.perf_counter() - t0, "kills": chaos.kills,
                      "steps": sum(1 for r in log if "losses" in r)}
        print(f"{name}: {runs[name]['seconds']:.1f} s, {runs[name]['steps']} steps, {len(chaos.kills)} kills, "
              f"restarts {summary['faults']['restarts']}", flush=True)
    clean, chaos = runs["clean"], runs["chaos"]
    equal = not differences(clean["summary"], chaos["summary"], across_engines=False)
    kills = len(chaos["kills"])
    restarts = sum(chaos["summary"]["faults"]["restarts"].values())
    lost = (chaos["seconds"] - clean["seconds"]) / max(kills, 1)
    result = {"machine": machine(), "command": "python benchmarks/chaos_soak.py " + " ".join(sys.argv[1:]),
              "equal_to_uninterrupted": equal, "kills": chaos["kills"], "restarts": restarts,
              "steps_per_run": clean["steps"], "seconds_clean": clean["seconds"], "seconds_chaos": chaos["seconds"],
              "seconds_lost_per_kill": lost,
              "kills_by_place": {w: sum(k["where"] == w for k in chaos["kills"]) for w in WHERE}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(
        f"Chaos soak on {result['machine']}\ncommand: `{result['command']}`\n\n"
        f"| steps per run | kills (step / checkpoint / eval) | restarts | clean s | chaos s | s lost per kill | summary equal |\n"
        f"|---:|---|---:|---:|---:|---:|---|\n"
        f"| {clean['steps']} | {kills} ({' / '.join(str(result['kills_by_place'][w]) for w in WHERE)}) | {restarts} | "
        f"{clean['seconds']:.0f} | {chaos['seconds']:.0f} | {lost:.1f} | {'yes' if equal else 'NO'} |\n")
    print(out.with_suffix(".md").read_text())
    if not equal or restarts < kills:
        sys.exit(1)


if __name__ == "__main__":
    main()
