"""Swarm step time over local step time, and the logits exchange latency on its own.

    python benchmarks/step_time.py [--config configs/quickstart.yaml] [--steps 30] [--warmup 5]

Both engines run the same participants (zoo weights from the cache), the same batches and the
same loss, one after the other in this run; the medians are compared as a ratio. Writes
benchmarks/results/step_time.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from kt_swarm.config import load_config  # noqa: E402
from kt_swarm.coordinator import make_engine  # noqa: E402
from kt_swarm.data import load_dataset  # noqa: E402
from kt_swarm.local import LossSpec  # noqa: E402
from quickstart_arms import machine  # noqa: E402


def time_steps(engine, steps: int, warmup: int, loss: LossSpec) -> list[float]:
    engine.reset_optimizers("adam", [1e-4] * len(engine_names(engine)), [0.0] * len(engine_names(engine)))
    times = []
    for step in range(warmup + steps):
        t = time.perf_counter()
        engine.train_step(0, step, loss)
        if step >= warmup:
            times.append(time.perf_counter() - t)
    return times


def engine_names(engine) -> list[str]:
    return getattr(engine, "names", None) or [p.name for p in engine.participants]


@ray.remote
class Echo:
    """Two of these measure the exchange alone: one puts a logits-sized tensor, the other reads it."""

    def put(self, shape, dtype):
        return ray.put(torch.randn(*shape).to(getattr(torch, dtype)))

    def read(self, refs):
        return ray.get(refs[0]).shape[0]


def exchange_latency(shape, dtype: str, repeats: int, zero_copy: bool) -> float:
    env = {"env_vars": {"RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": "1" if zero_copy else "0"}}
    a, b = Echo.options(runtime_env=env).remote(), Echo.options(runtime_env=env).remote()
    times = []
    for i in range(repeats + 3):
        t = time.perf_counter()
        ref = ray.get(a.put.remote(shape, dtype))
        ray.get(b.read.remote([ref]))
        if i >= 3:
            times.append(time.perf_counter() - t)
    ray.kill(a)
    ray.kill(b)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--steps", type=int, default=30)  # the swarm's actors read peers' logits zero-copy
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/step_time")
    args = ap.parse_args()
    cfg = load_config(args.config)
    data = load_dataset(cfg.data)
    t = cfg.transfer
    loss = LossSpec(t.temperature, t.weight, t.detach_teacher)
    results = {"machine": machine(), "config": args.config, "batch_size": t.batch_size,
               "participants": [p.name for p in cfg.participants], "steps": args.steps}
    local = make_engine("local", cfg, data)
    results["local_ms"] = [1000 * x for x in time_steps(local, args.steps, args.warmup, loss)]
    local.close()
    swarm = make_engine("ray", cfg, data)
    try:
        results["ray_ms"] = [1000 * x for x in time_steps(swarm, args.steps, args.warmup, loss)]
        # The exchange alone, at this run's size and at the class counts of larger tasks
        # (ImageNet, a language-model vocabulary), to see whether bytes or calls dominate.
        results["exchange_ms"] = {
            f"{t.batch_size}x{c} {dtype}{', zero-copy read' if zc else ''}": 1000 * exchange_latency((t.batch_size, c), dtype, args.steps, zc)
            for c, dtype in [(data.num_classes, "float32"), (1000, "float32"), (32000, "float32"), (32000, "float16")]
            for zc in (False, True)
        }
    finally:
        swarm.close()
    local_med, ray_med = statistics.median(results["local_ms"]), statistics.median(results["ray_ms"])
    results["ratio"] = ray_med / local_med
    table = (
        f"| engine | median step (ms) |\n|---|---|\n| local (one process) | {local_med:.1f} |\n"
        f"| ray (one actor per participant) | {ray_med:.1f} |\n| ratio ray / local | {results['ratio']:.2f} |\n"
        + "".join(f"| exchange alone, {k} (put + read by another actor) | {v:.2f} |\n" for k, v in results["exchange_ms"].items())
    )
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(f"{results['machine']}; {args.config}, batch {t.batch_size}, "
                                      f"median of {args.steps} steps after {args.warmup} warm-up\n"
                                      f"command: python benchmarks/step_time.py {' '.join(sys.argv[1:])}\n\n{table}")


if __name__ == "__main__":
    main()
