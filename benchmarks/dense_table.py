"""The table of issue 13's measurement (benchmarks/dense_tasks.sh): per cell (segmentation by pixel, by image;
saliency), each participant's transfer result against its start and its control arm on the task's headline
metric, mean ± std over seeds, the validation figures the settings would be chosen on, and every metric of
the task averaged over participants and seeds.

    python benchmarks/dense_table.py --runs runs/dense_tasks --out benchmarks/results/dense_tasks

Differences are in points (100 x the metric: mIoU %, CC x 100). "≥ start": participants (over all seeds) at or
above their start; "success rate": the share above it (method.md's). "bar": mean gain over the control minus
one std above zero on test (the quickstart's bar of issue 11).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

from kt_swarm.rundir import read_records
from kt_swarm.summary import upgrade

CELLS = ["segmentation_pixel", "segmentation_image", "saliency"]


def fmt(values: list[float]) -> str:
    return f"{statistics.mean(values):+.2f} ± {statistics.pstdev(values):.2f}"


def selected_val(summary: dict, records: list[dict], arm: str) -> dict[str, float]:
    """Each participant's validation metric at the epoch selection kept (epoch 0: its start), for an arm."""
    m = summary["metric"]
    evals = {r["epoch"]: r[f"val_{m}"] for r in records if r.get("arm") == arm and r.get("event") == "eval"}
    key = "best_epoch" if arm == "transfer" else f"{arm}_best_epoch"
    return {n: evals[p[key] - 1][n] for n, p in summary["participants"].items()}


def load_cell(folder: Path) -> dict:
    """{seed: (summary, validation of transfer, of control)} of a cell's finished runs, in today's key names
    whenever they ran (summary.upgrade)."""
    out = {}
    for run in sorted(folder.glob("seed*")):
        if (run / "summary.json").exists():
            s, records = upgrade(json.loads((run / "summary.json").read_text()), read_records(run))
            out[run.name] = (s, selected_val(s, records, "transfer"), selected_val(s, records, "control"))
    return out


def cell_rows(name: str, seeds: dict) -> tuple[list[str], list[str]]:
    runs = [s for s, _, _ in seeds.values()]
    names = list(runs[0]["participants"])
    vs_control = [[100 * s["participants"][n]["delta_vs_control"] for n in names] for s in runs]
    vs_start = [[100 * s["participants"][n]["delta"] for n in names] for s in runs]
    val = [statistics.mean(100 * (t[n] - c[n]) for n in names) for _, t, c in seeds.values()]
    means = [statistics.mean(d) for d in vs_control]
    pairs = [d for seed in vs_start for d in seed]
    bar = "yes" if statistics.mean(means) - statistics.pstdev(means) > 0 else "no"
    main = [f"| {name} | {runs[0]['metric']} | "
            + "; ".join(f"{n} {fmt([d[i] for d in vs_control])}" for i, n in enumerate(names))
            + f" | {fmt(means)} | {fmt([statistics.mean(d) for d in vs_start])} | {fmt(val)} | "
              f"{sum(d >= -1e-10 for d in pairs)}/{len(pairs)} | {100 * sum(d > 1e-10 for d in pairs) / len(pairs):.0f}% | {bar} |"]
    metrics = list(runs[0]["participants"][names[0]]["metrics"]["start"])
    detail = []
    for arm in ("start", "transfer", "control"):
        cells = []
        for m in metrics:
            per_seed = [statistics.mean(s["participants"][n]["metrics"][arm][m] for n in names) for s in runs]
            cells.append(f"{statistics.mean(per_seed):.4f} ± {statistics.pstdev(per_seed):.4f}")
        detail.append(f"| {name} | {arm} | " + "; ".join(f"{m} {c}" for m, c in zip(metrics, cells)) + " |")
    return main, detail


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs/dense_tasks")
    ap.add_argument("--out", default="benchmarks/results/dense_tasks")
    args = ap.parse_args()
    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    main_rows, detail_rows, figures = [], [], {}
    for cell in CELLS:
        seeds = load_cell(runs / cell)
        if not seeds:
            continue
        rows, detail = cell_rows(cell, seeds)
        main_rows += rows
        detail_rows += detail
        figures[cell] = {seed: {"participants": {n: {k: p[k] for k in (f"{s['metric']}_before", f"{s['metric']}_after",
                                                                       f"{s['metric']}_control", "kept_start",
                                                                       "control_kept_start", "metrics")}
                                                 for n, p in s["participants"].items()},
                                "val_transfer": t, "val_control": c, "seconds": s["seconds"]["total"],
                                "role_matrix": s["role_matrix"]}
                         for seed, (s, t, c) in seeds.items()}
    machine = f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores"
    text = (f"# Segmentation and saliency in the swarm: transfer against the control\n\n"
            f"Headline metric differences in points (mIoU %, CC x 100), mean ± std over seeds; {machine}; "
            f"runs: {', '.join(f'{c} {len(v)} seeds' for c, v in figures.items())}.\n\n"
            "| cell | metric | per participant: after - control (test) | mean vs control | mean vs start | "
            "val: mean vs control | ≥ start | success rate | bar |\n|---|---|---|---:|---:|---:|---:|---:|---|\n"
            + "\n".join(main_rows)
            + "\n\nEvery metric of the task on test, mean over participants, mean ± std over seeds (KLD: lower is better):\n\n"
              "| cell | arm | metrics |\n|---|---|---|\n" + "\n".join(detail_rows) + "\n")
    (out / "summary.md").write_text(text)
    (out / "runs.json").write_text(json.dumps(figures, indent=1))
    print(text)


if __name__ == "__main__":
    main()
