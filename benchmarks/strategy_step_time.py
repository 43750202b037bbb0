"""What each strategy costs per step, on the local engine: median step time over the same batches,
strategies interleaved round by round (the machine is noisy), as ratios to the CE-only step (none).

    python benchmarks/strategy_step_time.py [--config configs/quickstart.yaml] [--steps 20] [--rounds 3]

kd forwards its teacher in eval mode without a graph (and never steps it); kl_dp adds one eval-mode
forward of every participant's frozen start copy. Writes OUT.{json,md} (default
benchmarks/results/strategy_step_time).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from kt_swarm.config import load_config  # noqa: E402
from kt_swarm.coordinator import arms as run_arms, make_engine  # noqa: E402
from kt_swarm.data import load_dataset  # noqa: E402
from quickstart_arms import machine  # noqa: E402
from step_time import time_steps  # noqa: E402

STRATEGIES = ("none", "best", "better", "dml", "kd", "kl_dp")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/strategy_step_time")
    args = ap.parse_args()
    cfg = load_config(args.config, ["transfer.teacher=" + load_config(args.config).participants[0].name])
    data = load_dataset(cfg.data)
    engine = make_engine("local", cfg, data)
    base = run_arms(cfg)[0][1]
    start = engine.weights(list(range(len(cfg.participants))))
    times = {s: [] for s in STRATEGIES}
    for _ in range(args.rounds):
        for s in STRATEGIES:
            loss = replace(base, strategy=s, teacher=0)
            engine.load([{"model": w} for w in start])
            engine.set_start_copies(start if loss.start_copies else None)
            times[s] += [1000 * t for t in time_steps(engine, args.steps, args.warmup, loss)]
    medians = {s: statistics.median(v) for s, v in times.items()}
    rows = ["| strategy | median step (ms) | / none |", "|---|---:|---:|"]
    rows += [f"| {s} | {medians[s]:.1f} | {medians[s] / medians['none']:.2f} |" for s in STRATEGIES]
    table = "\n".join(rows)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"machine": machine(), "config": args.config, "steps_ms": times,
                                                    "median_ms": medians}, indent=1))
    out.with_suffix(".md").write_text(f"Local engine step, median of {args.rounds} x {args.steps} steps per strategy "
                                      f"(interleaved), {machine()}\ncommand: python benchmarks/strategy_step_time.py "
                                      f"{' '.join(sys.argv[1:])}\n\n{table}\n")


if __name__ == "__main__":
    main()
