"""Issue 14's GPU measurement: one large participant trained with plain PyTorch Adam, then hosted by DeepSpeed
ZeRO-Offload (stage 2, the optimizer's state and step on the CPU), on one GPU whose usable memory is capped
(`--memory-gb`, torch.cuda.set_per_process_memory_fraction: the GPU most users have, on a bigger one). Peak
GPU memory and the median step time, each mode in a fresh process (an out-of-memory error stays in it).

    python benchmarks/deepspeed_memory.py                       # vit_gigantic_patch14_clip_224 (1.8B), 24 GB cap
    python benchmarks/deepspeed_memory.py --model vit_huge_patch14_clip_224 --memory-gb 16
    python benchmarks/deepspeed_memory.py --device cpu --model vit_tiny_patch16_224 --steps 3   # a dry run of the script

Uses kt_swarm's own pieces (models.create_model, participant.make_optimizer, deepspeed_host.wrap), so what is
measured is what a swarm's DeepSpeed participant runs. Results: benchmarks/results/gpu/deepspeed_memory.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = {
    "plain": None,
    "zero2_offload": {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
                      "zero_force_ds_cpu_optimizer": False},  # torch's Adam on the CPU (no op to compile)
}


def measure(args) -> dict:
    """One mode, in this process: build, train --steps steps on random images, report memory and time."""
    sys.path.insert(0, str(ROOT))
    import torch

    from kt_swarm import deepspeed_host as ds
    from kt_swarm.config import ParticipantConfig
    from kt_swarm.models import create_model
    from kt_swarm.participant import make_optimizer

    device = torch.device(args.device)
    if device.type == "cuda" and args.memory_gb:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_gb * 2**30 / total), device)
    spec = ParticipantConfig(name="big", model=args.model, lr=1e-5, weights="none")
    model = create_model(spec, num_classes=1000, in_chans=3, seed=0).to(device)
    params = sum(p.numel() for p in model.parameters())
    optimizer = make_optimizer("adam", model.parameters(), 1e-5, 0.0)
    engine = None
    if MODES[args.mode] is not None:
        ds.init_group(device)
        engine = ds.wrap("big", model, optimizer, ds.ds_config(MODES[args.mode], args.batch))
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    x = torch.randn(args.batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)
    times = []
    try:
        for _ in range(args.steps):
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            if engine is not None:
                engine.backward(loss)
                engine.step()
            else:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    except torch.OutOfMemoryError as e:
        return {"mode": args.mode, "params": params, "oom": str(e).splitlines()[0][:200]}
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"mode": args.mode, "params": params, "peak_gib": peak, "step_s_median": statistics.median(times[1:] or times),
            "steps": args.steps}


def cells(r: dict) -> str:
    """Peak memory and median step of one mode's result, as table cells."""
    if "oom" in r:
        return "out of memory | -"
    if "error" in r:
        return f"failed: {r['error']} | -"
    peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f} GiB"
    return f"{peak} | {r['step_s_median']:.2f} s"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit_gigantic_patch14_clip_224")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--memory-gb", type=float, default=24.0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--mode", choices=list(MODES), help="(internal) measure one mode in this process")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu"))
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(measure(args)))
        return
    results = []
    for mode in MODES:
        done = subprocess.run([sys.executable, __file__, "--mode", mode, *sys.argv[1:]], capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        results.append(json.loads(lines[-1]) if lines else {"mode": mode, "error": (done.stderr.strip().splitlines() or ["?"])[-1][:300]})
        print(results[-1], flush=True)
    import torch

    machine = torch.cuda.get_device_name() if args.device.startswith("cuda") and torch.cuda.is_available() else args.device
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"model": args.model, "batch": args.batch, "memory_cap_gib": args.memory_gb, "machine": machine, "results": results}
    (out / "deepspeed_memory.json").write_text(json.dumps(record, indent=1))
    rows = [f"| {r['mode']} | {r.get('params', 0) / 1e9:.2f}B | {cells(r)} |" for r in results]
    (out / "deepspeed_memory.md").write_text(
        f"# One large participant on one GPU: plain Adam against ZeRO-Offload\n\n{args.model}, batch {args.batch}, bf16 "
        f"autocast, usable memory capped at {args.memory_gb:g} GiB; {machine}.\n\n| mode | parameters | peak GPU memory | "
        "median step |\n|---|---:|---:|---:|\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
