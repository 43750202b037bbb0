"""The strategy table of docs/strategies.md from a finished `kt-swarm sweep` over strategies and seeds.

    kt-swarm sweep configs/sweeps/strategies.yaml --out runs/strategies --engine local
    python benchmarks/strategy_table.py runs/strategies --out benchmarks/results/strategies

Test accuracy (%) per participant, mean +- std over seeds (population std), for the start, the CE-only
control and every strategy; "vs control" and "vs start" average the participants' differences per
seed first; success rates are shares of participants above their start / above their control. Every
run of a seed trains the same control arm (same zoo, batches and steps); the table takes it from the
runs and checks that they agree. Selection was on validation inside each run; test is only reported.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from kt_swarm.summary import upgrade


def ms(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.pstdev(values):.2f}"


def signed(values: list[float]) -> str:
    return f"{statistics.mean(values):+.2f} ± {statistics.pstdev(values):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir", help="the sweep's --out folder (trial runs under trials/)")
    ap.add_argument("--out", default=None, help="write OUT.md and OUT.json")
    args = ap.parse_args()
    # In today's key names whenever the trials ran (summary.upgrade): {m}_before, {m}_after, val_{m}_mean, ...
    runs = [upgrade(json.loads(p.read_text()))[0] for p in sorted(Path(args.sweep_dir).glob("trials/*/summary.json"))]
    if not runs:
        sys.exit(f"no finished runs under {args.sweep_dir}/trials/")
    names = list(runs[0]["participants"])
    m = runs[0]["metric"]
    by = defaultdict(dict)  # strategy -> seed -> summary
    for r in runs:
        by[r["strategy"]][r["seed"]] = r
    seeds = sorted({r["seed"] for r in runs})
    acc = defaultdict(dict)  # arm -> seed -> [per participant %]
    for strategy, per_seed in by.items():
        for seed, r in per_seed.items():
            ps = [r["participants"][n] for n in names]
            acc[strategy][seed] = [100 * p[f"{m}_after"] for p in ps]
            for arm, key in (("start", f"{m}_before"), ("control", f"{m}_control")):
                values = [100 * p[key] for p in ps]
                if seed in acc[arm] and max(abs(a - b) for a, b in zip(acc[arm][seed], values)) > 1e-9:
                    print(f"warning: seed {seed}: the {arm} accuracies differ between runs", file=sys.stderr)
                acc[arm].setdefault(seed, values)
    complementary = {seed: [100 * runs[0]["participants"][n]["complementary"] for n in names] for seed in seeds}
    for r in runs:
        complementary[r["seed"]] = [100 * r["participants"][n]["complementary"] for n in names]
    header = ("| arm | " + " | ".join(names) + " | mean vs control | mean vs start | above start | above control "
              "| val (selection) | seeds |")
    lines = [header, "|---|" + "---:|" * (len(names) + 6)]
    table = {}
    for arm in ["start", "control"] + [s for s in ("best", "better", "dml", "kd", "kl_dp", "none") if s in by]:
        have = [s for s in seeds if s in acc[arm]]
        cells = [ms([acc[arm][s][i] for s in have]) for i in range(len(names))]
        vs_control = [statistics.mean(a - c for a, c in zip(acc[arm][s], acc["control"][s])) for s in have]
        vs_start = [statistics.mean(a - b for a, b in zip(acc[arm][s], acc["start"][s])) for s in have]
        above_start = [100 * statistics.mean(a > b for a, b in zip(acc[arm][s], acc["start"][s])) for s in have]
        above_control = [100 * statistics.mean(a > c for a, c in zip(acc[arm][s], acc["control"][s])) for s in have]
        table[arm] = {"acc": {s: acc[arm][s] for s in have}, "vs_control": vs_control, "vs_start": vs_start}
        rates = ("| | |" if arm == "start" else f"| {statistics.mean(above_start):.0f}% | |" if arm == "control"
                 else f"| {statistics.mean(above_start):.0f}% | {statistics.mean(above_control):.0f}% |")
        # The runs' own validation accuracy (mean over participants, at the selected epoch): what a user may choose on.
        val = ms([100 * by[arm][s][f"val_{m}_mean"] for s in have]) if arm in by else ""
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {signed(vs_control)} | {signed(vs_start)} {rates} {val} | {len(have)} |")
    lines.append("| complementary knowledge at start | " + " | ".join(ms([complementary[s][i] for s in seeds]) for i in range(len(names)))
                 + " | | | | | | |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        seconds = {s: statistics.median(r["seconds"]["transfer"] for r in by[s].values()) for s in by}
        seconds["control"] = statistics.median(r["seconds"]["control"] for r in runs)
        out.with_suffix(".json").write_text(json.dumps({"names": names, "seeds": seeds, "table": table,
                                                        "median_arm_seconds": seconds}, indent=1))
        out.with_suffix(".md").write_text(
            f"Test {m} (%), mean ± std over seeds {seeds}; from {args.sweep_dir}\n"
            f"command: python benchmarks/strategy_table.py {' '.join(sys.argv[1:])}\n\n{text}\n\n"
            "Median seconds per arm (one epoch, training and evaluation): "
            + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + "\n")


if __name__ == "__main__":
    main()
