"""One table over every cell of the evidence study (benchmarks/evidence.sh): each arm against its cell's
CE-only control (and self-training, where the cell has it), per participant and on average.

    python benchmarks/evidence_table.py            # -> benchmarks/results/evidence/summary.md
    python benchmarks/evidence_table.py --dir benchmarks/results/real_models   # the same for another folder

Differences are in points of accuracy, mean ± std over the cell's seeds (each seed's difference first,
then the spread). "val" is what a setting is chosen on; test is only reported. "≥ start": participants
(over all seeds) that end at or above their starting test accuracy; "success rate": the share that end above it
(method.md's transfer success rate). "bar": the quickstart's bar of
issue 11, mean gain over the control minus one std above zero on test.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ORDER = ["labels_1k", "labels_3k", "labels_10k", "labels_30k", "budget_30k_1ep", "budget_20k_2ep", "budget_15k_3ep",
         "around", "around_better", "pool", "disjoint", "balanced", "digits", "digits_2ep"]


def per_seed(cell: dict, arm: str, ref: str, key: str = "acc") -> list[list[float]]:
    """[seed][participant] difference arm - ref, in points."""
    return [[100 * (a - r) for a, r in zip(s[key][arm], s[key][ref])] for s in cell["seeds"].values()]


def fmt(values: list[float]) -> str:
    return f"{statistics.mean(values):+.2f} ± {statistics.pstdev(values):.2f}"


def rows(name: str, cell: dict) -> list[str]:
    seeds = list(cell["seeds"].values())
    names = seeds[0]["names"]
    out = []
    for arm in seeds[0]["acc"]:
        if arm in ("start", "control"):
            continue
        diffs = per_seed(cell, arm, "control")
        means = [statistics.mean(d) for d in diffs]
        parts = [fmt([d[i] for d in diffs]) for i in range(len(names))]
        val = [statistics.mean(d) for d in per_seed(cell, arm, "control", "val_acc")]
        pairs = [(a, s) for seed in seeds for a, s in zip(seed["acc"][arm], seed["acc"]["start"])]
        above = sum(a >= s - 1e-12 for a, s in pairs)
        success = sum(a > s + 1e-12 for a, s in pairs) / len(pairs)  # method.md's success rate: delta > 0
        vs_self = ""
        if "self_training" in seeds[0]["acc"] and arm != "self_training":
            vs_self = fmt([statistics.mean(d) for d in per_seed(cell, arm, "self_training")])
        bar = "yes" if statistics.mean(means) - statistics.pstdev(means) > 0 else "no"
        out.append(f"| {name} | {arm} | {' | '.join(parts)} | {fmt(means)} | {vs_self} | {fmt(val)} | "
                   f"{above}/{len(seeds) * len(names)} | {100 * success:.0f}% | {bar} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="benchmarks/results/evidence")
    args = ap.parse_args()
    folder = Path(args.dir)
    cells = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}
    # The participants of the folder's cells (one zoo per folder: the study's, or an example's).
    names = next(iter(next(iter(cells.values()))["seeds"].values()))["names"] if cells else []
    lines = [f"| cell | arm | {' | '.join(f'{n} vs control' for n in names)} | mean vs control | vs self-training | "
             "val: mean vs control | ≥ start | success rate | bar |", "|---|---|" + "---:|" * (len(names) + 6)]
    for name in sorted(cells, key=lambda c: (ORDER.index(c) if c in ORDER else len(ORDER), c)):
        assert cells[name]["seeds"][next(iter(cells[name]["seeds"]))]["names"] == names, name
        lines += rows(name, cells[name])
    machine = next(iter(cells.values()))["machine"] if cells else ""
    text = (f"Test accuracy differences (points), mean ± std over seeds 0, 1, 2; {machine}.\n"
            f"Made by `python benchmarks/evidence_table.py` from the cells' JSON (commands in each cell's .md).\n\n"
            + "\n".join(lines) + "\n")
    (folder / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
