"""Measure transfer arms against the CE-only control on the quickstart, over seeds.

    python benchmarks/quickstart_arms.py --seeds 0 1 2 --split test \
        --arm detached:transfer.detach_teacher=true --arm exact:transfer.detach_teacher=false

Per seed: the zoo (cached), accuracy before, the control arm, then every named arm from the
same starting weights. NAME:overrides: the names `control` and `self_training` are those baseline
arms (same data, steps and learning rates), any other name is a transfer arm. `--split` is what the
table reports; validation accuracy is recorded for every arm too ("val: mean vs control"), and
settings are chosen on it, never on test. Writes JSON and a markdown table (mean and std over seeds).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kt_swarm.config import apply_override, load_config, parse_config, to_dict  # noqa: E402
from kt_swarm.checkpoint import Checkpoints  # noqa: E402
from kt_swarm.coordinator import arms as run_arms, fresh_arm, make_engine, save_start, text_tokenizer, train_arm  # noqa: E402
from kt_swarm.data import load_dataset  # noqa: E402
from kt_swarm.metrics import accuracy, complementary  # noqa: E402


def machine() -> str:
    """The CPU by name, its core count, the GPUs and torch's thread count: what the timings were measured on."""
    name = platform.machine()
    try:
        name = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}" if torch.cuda.is_available() else ""
    return f"{name}, {os.cpu_count()} cores{gpu}, torch {torch.__version__} with {torch.get_num_threads()} threads"


def parse_arms(specs: list[str]) -> list[tuple[str, str]]:
    """--arm NAME:key=v,key=v -> [(name, overrides)], the control first (every table compares with it)."""
    return [("control", "")] + [tuple(a.split(":", 1)) if ":" in a else (a, "") for a in specs]


def seed_arms(base: dict, seed: int, arms: list[tuple[str, str]]):
    """One seed: its zoo (cached), then every arm from the same starting weights on the local engine.
    Yields ("start", engine, cfg, data, None) first, then (name, engine, arm's cfg, data, ArmResult) after each
    arm is trained, the engine holding that arm's selected weights: the caller measures what it needs.
    The names control and self_training are those baseline arms (same data, steps and learning rates), any
    other name a transfer arm."""
    raw = copy.deepcopy(base)
    raw["seed"] = seed
    cfg = parse_config(raw)
    data = load_dataset(cfg.data, cfg.task, text_tokenizer(cfg))
    t0 = time.perf_counter()
    engine = make_engine("local", cfg, data)
    names = [p.name for p in cfg.participants]
    # The arms' checkpoints (start set, best epochs) only live while the seed runs: a language model's are
    # gigabytes a seed, and the study filled the disk when they were kept.
    with tempfile.TemporaryDirectory(prefix="kt-arms-") as tmp:
        ckpt = Checkpoints(Path(tmp), "bench", names, keep=1)
        save_start(engine, ckpt)  # every arm starts from these weights
        print(f"seed {seed}: zoo ready in {time.perf_counter() - t0:.0f} s", flush=True)
        yield "start", engine, cfg, data, None
        for name, overrides in arms:
            arm_raw = copy.deepcopy(raw)
            for o in filter(None, overrides.split(",")):
                apply_override(arm_raw, o)
            baselines = {"control": True, **({"self_training": True} if cfg.task == "classification" else {})}
            arm_cfg = parse_config({**arm_raw, **baselines})
            engine.batch_size = arm_cfg.transfer.batch_size
            specs = {arm: (loss, split) for arm, loss, split in run_arms(arm_cfg)}
            loss, split = specs.get(name, specs["transfer"])
            engine.set_start_copies((s["model"] for s in ckpt.load_set("start")[1]) if loss.start_copies else None)
            res = train_arm(engine, arm_cfg, data, fresh_arm(engine, arm_cfg, ckpt, name), loss, lambda r: None, ckpt,
                            split=split)
            yield name, engine, arm_cfg, data, res

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--split", choices=["val", "test"], required=True)
    ap.add_argument("--arm", action="append", required=True, help="NAME:key=v,key=v (config overrides)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override for every arm")
    ap.add_argument("--out", default="benchmarks/results/quickstart_arms")
    args = ap.parse_args()

    base = to_dict(load_config(args.config, args.overrides))
    results = {"machine": machine(),
               "config": args.config, "overrides": args.overrides, "split": args.split, "seeds": {}}
    for seed in args.seeds:
        rows, val_rows, seconds = {}, {}, {}
        for name, engine, cfg, data, res in seed_arms(base, seed, parse_arms(args.arm)):
            labels = data.labels[data.splits[args.split]]
            preds = engine.predict(args.split, cfg.eval_batch_size)
            rows[name] = accuracy(preds, labels)
            # Validation accuracy of every arm too, whatever --split reports: settings are chosen on it.
            val_rows[name] = accuracy(engine.predict("val", cfg.eval_batch_size), data.labels[data.splits["val"]])
            if res is None:  # the start
                names = [p.name for p in cfg.participants]
                # Complementary knowledge (Roth et al.): samples some other participant gets right and this one wrong.
                comp = complementary(preds, labels)
                print(f"  complementary knowledge at start: {[round(100 * c, 2) for c in comp]}; start {rows['start']}",
                      flush=True)
                continue
            seconds[name] = res.seconds
            gain = statistics.mean(a - c for a, c in zip(rows[name], rows["control"]))
            print(f"  {name:24s} {[round(100 * a, 2) for a in rows[name]]} mean vs control {100 * gain:+.2f} "
                  f"({res.seconds:.0f} s)", flush=True)
        results["seeds"][seed] = {"names": names, "acc": rows, "val_acc": val_rows, "complementary": comp,
                                  "arm_seconds": seconds}

    # Mean and std over seeds, in points, per participant and arm.
    names = results["seeds"][args.seeds[0]]["names"]
    arm_names = list(results["seeds"][args.seeds[0]]["acc"])
    lines = [f"| arm | {' | '.join(names)} | mean vs control | mean vs start | val: mean vs control | seconds |",
             "|---" * (len(names) + 5) + "|"]
    for arm in arm_names:
        cells = []
        for i in range(len(names)):
            vals = [100 * results["seeds"][s]["acc"][arm][i] for s in args.seeds]
            cells.append(f"{statistics.mean(vals):.2f} ± {statistics.pstdev(vals):.2f}")
        def gain(ref, key="acc"):
            per_seed = [100 * statistics.mean(a - r for a, r in zip(results["seeds"][s][key][arm], results["seeds"][s][key][ref]))
                        for s in args.seeds]
            return f"{statistics.mean(per_seed):+.2f} ± {statistics.pstdev(per_seed):.2f}"
        secs = [results["seeds"][s]["arm_seconds"][arm] for s in args.seeds if arm in results["seeds"][s]["arm_seconds"]]
        lines.append(f"| {arm} | {' | '.join(cells)} | {gain('control')} | {gain('start')} | {gain('control', 'val_acc')} | "
                     f"{statistics.median(secs) if secs else 0:.0f} |")
    comp_cells = []
    for i in range(len(names)):
        vals = [100 * results["seeds"][s]["complementary"][i] for s in args.seeds]
        comp_cells.append(f"{statistics.mean(vals):.2f} ± {statistics.pstdev(vals):.2f}")
    lines.append(f"| complementary knowledge at start | {' | '.join(comp_cells)} | | | | |")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(
        f"{args.split} accuracy (%), mean ± std over seeds {args.seeds}, {results['machine']}\n"
        f"command: python benchmarks/quickstart_arms.py {' '.join(sys.argv[1:])}\n\n{table}\n")


if __name__ == "__main__":
    main()
