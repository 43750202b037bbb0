"""Swarm step time over local step time, each participant's isolated step in parts, and the
logits exchange latency on its own.

    python benchmarks/step_time.py [--config configs/quickstart.yaml] [--set KEY=VALUE]... [--steps 30] [--warmup 5]

Both engines run the same participants (zoo weights from the cache, or `weights: none`), the same
batches and the same loss, one after the other in this run; the medians are compared as a ratio. On
a GPU machine the swarm's actors share the one card (fractional GPUs) while the local engine has it
alone. Then every participant runs alone on the device, timed in parts (forward; loss, backward and
optimizer step), which with the measured exchange gives the projected step of a cluster with one
device per participant: the slowest participant plus the exchange, against the sum. Writes
OUT.{json,md} (default benchmarks/results/step_time).
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
from kt_swarm.build import build_participant  # noqa: E402
from kt_swarm.coordinator import arms as run_arms, make_engine  # noqa: E402
from kt_swarm.data import batch_plan, load_dataset  # noqa: E402
from kt_swarm.objectives import LossSpec, participant_loss  # noqa: E402
from kt_swarm.swarm import init_ray  # noqa: E402
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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def isolated_parts(cfg, data, loss: LossSpec, steps: int, warmup: int) -> dict[str, dict[str, float]]:
    """Each participant alone on the device: median forward ms and learn ms (its share of the loss
    against N rows of logits, backward, optimizer step), as an actor spends them in a swarm step."""
    n, parts = len(cfg.participants), {}
    for i, spec in enumerate(cfg.participants):
        p = build_participant(cfg, i, data)
        p.reset_optimizer("adam", 1e-4, 0.0)
        fwd, learn = [], []
        for step in range(warmup + steps):
            plan = batch_plan(data.splits["train"], seed=cfg.seed, epoch=0, step=step, batch_size=cfg.transfer.batch_size,
                              augment=cfg.data.augment)
            target = data.labels[plan.ids].to(p.device)
            sync(p.device)
            t0 = time.perf_counter()
            logits = p.forward(data, plan)
            sync(p.device)
            t1 = time.perf_counter()
            # Stand-ins for the peers' logits: its own, perturbed, so that the partition gives every row some samples.
            noise = torch.randn((n, *logits.shape), generator=torch.Generator().manual_seed(step)).to(logits)
            peers = logits.detach().unsqueeze(0) + noise * (torch.arange(n, device=logits.device) != i).view(-1, 1, 1)
            sync(p.device)
            t2 = time.perf_counter()
            value, _ = participant_loss(logits, peers, i, target, temperature=loss.temperature, weight=loss.weight,
                                        detach_teacher=loss.detach_teacher)
            p.optimizer.zero_grad(set_to_none=True)
            value.backward()
            p.optimizer.step()
            value.item()  # waits for the device, like the actor's reply
            t3 = time.perf_counter()
            if step >= warmup:
                fwd.append(1000 * (t1 - t0))
                learn.append(1000 * (t3 - t2))
        parts[spec.name] = {"forward_ms": statistics.median(fwd), "learn_ms": statistics.median(learn)}
        del p, logits, value
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return parts


def engine_names(engine) -> list[str]:
    return getattr(engine, "names", None) or [p.name for p in engine.participants]


@ray.remote
class Echo:
    """Two of these measure the exchange alone, as the swarm's actors do it: one moves a logits-sized
    tensor off its device and puts it in the object store, the other reads it onto its device."""

    def __init__(self, device: str):
        self.device = device

    def put(self, shape, dtype):
        return ray.put(torch.randn(*shape, device=self.device).to(getattr(torch, dtype)).cpu())

    def read(self, refs):
        return float(ray.get(refs[0]).to(self.device)[0, 0])  # float(): waits for the copy to land


def exchange_latency(shape, dtype: str, repeats: int, zero_copy: bool) -> float:
    env = {"env_vars": {"RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": "1" if zero_copy else "0"}}
    gpu = ray.cluster_resources().get("GPU", 0) >= 1
    options = dict(runtime_env=env, num_gpus=0.5 if gpu else 0)
    a, b = (Echo.options(**options).remote("cuda" if gpu else "cpu") for _ in range(2))
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
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, as kt-swarm run")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/step_time")
    args = ap.parse_args()
    cfg = load_config(args.config, args.set)
    data = load_dataset(cfg.data)
    t = cfg.transfer
    loss = run_arms(cfg)[0][1]  # the transfer arm's loss
    results = {"machine": machine(), "config": args.config, "overrides": args.set, "batch_size": t.batch_size,
               "autocast": cfg.autocast, "participants": [p.name for p in cfg.participants], "steps": args.steps}
    local = make_engine("local", cfg, data)
    results["local_ms"] = [1000 * x for x in time_steps(local, args.steps, args.warmup, loss)]
    local.close()
    del local
    results["isolated"] = isolated_parts(cfg, data, loss, args.steps, args.warmup)
    owns_ray = init_ray(None)  # ours, so that it outlives the swarm for the exchange measurement
    swarm = make_engine("ray", cfg, data)
    try:
        results["ray_ms"] = [1000 * x for x in time_steps(swarm, args.steps, args.warmup, loss)]
    finally:
        swarm.close()  # frees its placement group, which holds every CPU and GPU
    # The exchange alone, at this run's size and at the class counts of larger tasks
    # (ImageNet, a language-model vocabulary), to see whether bytes or calls dominate.
    results["exchange_ms"] = {
        f"{t.batch_size}x{c} {dtype}{', zero-copy read' if zc else ''}": 1000 * exchange_latency((t.batch_size, c), dtype, args.steps, zc)
        for c, dtype in [(data.num_classes, "float32"), (1000, "float32"), (32000, "float32"), (32000, "float16")]
        for zc in (False, True)
    }
    if owns_ray:
        ray.shutdown()
    local_med, ray_med = statistics.median(results["local_ms"]), statistics.median(results["ray_ms"])
    results["ratio"] = ray_med / local_med
    steps = {name: v["forward_ms"] + v["learn_ms"] for name, v in results["isolated"].items()}
    exchange = results["exchange_ms"][f"{t.batch_size}x{data.num_classes} float32, zero-copy read"]
    slowest = max(steps.values())
    results["projection"] = {"sum_ms": sum(steps.values()), "slowest_ms": slowest, "exchange_ms": exchange,
                             "swarm_ms": slowest + exchange, "over_slowest": (slowest + exchange) / slowest,
                             "speedup": sum(steps.values()) / (slowest + exchange)}
    pr = results["projection"]
    table = (
        f"| engine | median step (ms) |\n|---|---|\n| local (one process) | {local_med:.1f} |\n"
        f"| ray (one actor per participant, sharing the machine) | {ray_med:.1f} |\n| ratio ray / local | {results['ratio']:.2f} |\n"
        + "".join(f"| exchange alone, {k} (put + read by another actor) | {v:.2f} |\n" for k, v in results["exchange_ms"].items())
        + "\n| participant, alone on the device | forward (ms) | learn: loss, backward, step (ms) | step (ms) |\n|---|---|---|---|\n"
        + "".join(f"| {k} | {v['forward_ms']:.1f} | {v['learn_ms']:.1f} | {steps[k]:.1f} |\n" for k, v in results["isolated"].items())
        + f"\n| one device per participant (projected from the parts above) | ms |\n|---|---|\n"
        f"| sum of the isolated steps (one process, one device) | {pr['sum_ms']:.1f} |\n"
        f"| slowest isolated step + exchange ({exchange:.1f} ms) | {pr['swarm_ms']:.1f} |\n"
        f"| projected swarm step / slowest isolated step | {pr['over_slowest']:.2f} |\n"
        f"| projected speed-up over the sum | {pr['speedup']:.2f}x |\n"
    )
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(f"{results['machine']}; {args.config} {' '.join(args.set)}, batch {t.batch_size}, "
                                      f"autocast {cfg.autocast}, median of {args.steps} steps after {args.warmup} warm-up\n"
                                      f"command: python benchmarks/step_time.py {' '.join(sys.argv[1:])}\n\n{table}")


if __name__ == "__main__":
    main()
