"""One table over every cell of the evidence study (benchmarks/evidence.sh): each arm against its cell's
CE-only control (and self-training, where the cell has it), per participant and on average.

    python benchmarks/evidence_table.py            # -> benchmarks/results/evidence/summary.{md,png}
    python benchmarks/evidence_table.py --dir benchmarks/results/real_models   # the same for another folder

Differences are in points of accuracy, mean ± std over the cell's seeds (each seed's difference first,
then the spread). "val" is what a setting is chosen on; test is only reported. "≥ start": participants
(over all seeds) that end at or above their starting test accuracy; "success rate": the share that end above it
(method.md's transfer success rate). "bar": issue 11's bar for the quickstart, on test: every participant at
or above its start, and the mean gain over the control minus one std above zero. summary.png shows the same.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ORDER = ["labels_1k", "labels_3k", "labels_10k", "labels_30k", "budget_30k_1ep", "budget_20k_2ep", "budget_15k_3ep",
         "budget_10k_3ep", "around", "around_better", "pool", "disjoint", "balanced", "digits", "digits_2ep"]


def per_seed(cell: dict, arm: str, ref: str, key: str = "acc") -> list[list[float]]:
    """[seed][participant] difference arm - ref, in points."""
    return [[100 * (a - r) for a, r in zip(s[key][arm], s[key][ref])] for s in cell["seeds"].values()]


def fmt(values: list[float]) -> str:
    return f"{statistics.mean(values):+.2f} ± {statistics.pstdev(values):.2f}"


def rows(name: str, cell: dict) -> list[dict]:
    """Every arm of the cell against its control, as numbers (one dict per arm)."""
    seeds = list(cell["seeds"].values())
    names = seeds[0]["names"]
    out = []
    for arm in seeds[0]["acc"]:
        if arm in ("start", "control"):
            continue
        diffs = per_seed(cell, arm, "control")
        pairs = [(a, s) for seed in seeds for a, s in zip(seed["acc"][arm], seed["acc"]["start"])]
        vs_self = None
        if "self_training" in seeds[0]["acc"] and arm != "self_training":
            vs_self = [statistics.mean(d) for d in per_seed(cell, arm, "self_training")]
        out.append({
            "cell": name, "arm": arm,
            "parts": [[d[i] for d in diffs] for i in range(len(names))],
            "means": [statistics.mean(d) for d in diffs],  # per seed, over participants
            "val": [statistics.mean(d) for d in per_seed(cell, arm, "control", "val_acc")],
            "vs_self": vs_self,
            "above": sum(a >= s - 1e-12 for a, s in pairs), "of": len(pairs),
            "success": sum(a > s + 1e-12 for a, s in pairs) / len(pairs),  # method.md's success rate: delta > 0
        })
    return out


def meets_bar(row: dict) -> bool:
    """Issue 11's bar: every participant at or above its start, mean gain over the control minus one std above 0."""
    return row["above"] == row["of"] and statistics.mean(row["means"]) - statistics.pstdev(row["means"]) > 0


def line(row: dict) -> str:
    vs_self = fmt(row["vs_self"]) if row["vs_self"] else ""
    return (f"| {row['cell']} | {row['arm']} | {' | '.join(fmt(p) for p in row['parts'])} | {fmt(row['means'])} | "
            f"{vs_self} | {fmt(row['val'])} | {row['above']}/{row['of']} | {100 * row['success']:.0f}% | "
            f"{'yes' if meets_bar(row) else 'no'} |")


def plot(all_rows: list[dict], path: Path) -> None:
    """Each arm's mean gain over its control on test (± std over seeds) beside its validation gain, filled
    where the arm meets the whole bar: the table at a glance."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 0.22 * len(all_rows) + 1.2))
    ax = fig.add_subplot()
    ys = list(range(len(all_rows)))[::-1]
    for y, row in zip(ys, all_rows):
        color = "tab:green" if meets_bar(row) else "tab:gray"
        ax.errorbar(statistics.mean(row["means"]), y, xerr=statistics.pstdev(row["means"]), fmt="o", color=color,
                    mfc=color if meets_bar(row) else "white", capsize=2, ms=4)
        ax.plot(statistics.mean(row["val"]), y, "x", color="tab:blue", ms=4)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(ys, [f"{r['cell']}: {r['arm']}" for r in all_rows], fontsize=7)
    ax.set_ylim(-1, len(all_rows))
    ax.set_xlabel("points of accuracy against the cell's CE-only control (o test, mean ± std over seeds; x validation)")
    ax.set_title("When does transfer help? Filled: meets the bar (all at or above start, mean - std > 0)", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    ax.xaxis.label.set_size(8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


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
    all_rows = []
    for name in sorted(cells, key=lambda c: (ORDER.index(c) if c in ORDER else len(ORDER), c)):
        assert cells[name]["seeds"][next(iter(cells[name]["seeds"]))]["names"] == names, name
        all_rows += rows(name, cells[name])
    lines += [line(row) for row in all_rows]
    if all_rows:
        plot(all_rows, folder / "summary.png")
    machine = next(iter(cells.values()))["machine"] if cells else ""
    text = (f"Test accuracy differences (points), mean ± std over seeds 0, 1, 2; {machine}.\n"
            f"Made by `python benchmarks/evidence_table.py` from the cells' JSON (commands in each cell's .md).\n\n"
            + "\n".join(lines) + "\n")
    (folder / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
