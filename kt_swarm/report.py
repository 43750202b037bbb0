"""report.png and report.md of a run directory, rebuilt from its metrics.jsonl and summary.json alone;
and several runs side by side (compare.png, compare.md).

matplotlib's object API (Figure, no pyplot): no global state, no display needed.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from kt_swarm.errors import UserError
from kt_swarm.rundir import atomic_write, read_records
from kt_swarm.summary import (AS_IS, kept_note, marked, metric_name, metric_value, pct, scale, shown, transfer_arm_names, upgrade,
                              with_arms)

# What the metrics table beside the headline should warn of: the task's measures where lower is better.
LOWER_IS_BETTER = {"saliency": " (KLD: lower is better)", "language_model": " (perplexity: lower is better)"}
STYLE_NAMES = {"-": "solid", "-.": "dash-dot", "--": "dashed", ":": "dotted"}  # each arm's training curves


def load_run(run_dir: str | Path, summary: dict | None = None) -> tuple[dict, list[dict], str]:
    """(summary, metrics records, config text) of a finished run directory (or of one about to be,
    given its summary), in today's key names whenever the run was written (summary.upgrade)."""
    run_dir = Path(run_dir)
    try:
        summary = summary or json.loads((run_dir / "summary.json").read_text())
        records = read_records(run_dir)
    except FileNotFoundError as e:
        raise UserError(f"'{run_dir}' is not a finished kt-swarm run directory: {Path(e.filename).name} is missing") from None
    except json.JSONDecodeError as e:
        raise UserError(f"'{run_dir}': summary.json is not valid JSON ({e.msg}, line {e.lineno})") from None
    config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").exists() else ""
    summary, records = upgrade(summary, records)
    return summary, records, config


MANY = 16  # participants beyond which the report draws means and a larger role matrix


def count(x: float) -> str:
    """A role-matrix cell: weighted sample counts, whole numbers for one-teacher strategies."""
    return f"{x:.0f}" if float(x).is_integer() or abs(x) >= 100 else f"{x:.1f}"


def draw_role_matrix(ax, matrix: list[list[float]], names: list[str]) -> None:
    """Heat map of R[t][s] = samples on which t taught s, weighted (rows teach, columns learn; the
    diagonal: what a participant learned from itself, kl_dp's start or self-training's pseudo-labels)."""
    image = ax.imshow(matrix, cmap="viridis")
    small = {"fontsize": max(5.5, 9 - len(names) / 8)} if len(names) > 8 else {}  # 64 names stay legible
    ax.set_xticks(range(len(names)), names, rotation=45 if len(names) <= 16 else 90, ha="right" if len(names) <= 16 else "center", **small)
    ax.set_yticks(range(len(names)), names, **small)
    ax.set_xlabel("student")
    ax.set_ylabel("teacher")
    peak = max(max(row) for row in matrix) or 1
    if len(names) <= 8:  # counts stay readable
        for t, row in enumerate(matrix):
            for s, cell in enumerate(row):
                ax.text(s, t, count(cell), ha="center", va="center", fontsize=8, color="white" if cell < peak / 2 else "black")
    ax.figure.colorbar(image, ax=ax, fraction=0.046)


def role_matrix_figure(matrix: list[list[float]], names: list[str], title: str = "role matrix") -> Figure:
    fig = Figure(figsize=(4.5, 4), layout="constrained")
    ax = fig.add_subplot()
    draw_role_matrix(ax, matrix, names)
    ax.set_title(title)
    return fig


def draw_examples(fig, summary: dict, examples: dict) -> None:
    """A dense task's first test pictures: the image, the truth, then each participant at the start and
    after transfer (segmentation: a colour per class, ignored pixels white; saliency: the map)."""
    names, segmentation = list(summary["participants"]), summary.get("task") == "segmentation"
    columns = [("image", None, None), ("truth", None, None)]
    columns += [(f"{n}\n{arm}", arm, i) for i, n in enumerate(names) for arm in ("start", "transfer") if f"arm_{arm}" in examples]
    rows = len(examples["images"])
    axes = fig.subplots(rows, len(columns), squeeze=False)
    style = dict(cmap="tab20", vmin=0, vmax=19, interpolation="nearest") if segmentation else dict(cmap="inferno")
    for r in range(rows):
        for c, (title, arm, i) in enumerate(columns):
            ax = axes[r][c]
            if arm is None and title == "image":
                image = examples["images"][r]
                ax.imshow(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0), cmap="gray")
            else:
                picture = examples["truth"][r] if arm is None else examples[f"arm_{arm}"][i][r]
                if segmentation:
                    picture = np.ma.masked_less(picture, 0)
                ax.imshow(picture, **style)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
    fig.suptitle("first test images: " + ("classes per pixel" if segmentation else "maps"), fontsize=10)


def report_figure(summary: dict, records: list[dict], examples: dict | None = None) -> Figure:
    names = list(summary["participants"])
    many = len(names) > MANY  # a swarm too big for a legend entry per participant: a grid of its own
    height = 9 + (12 if many else 0)
    fig = Figure(figsize=(13 + (3 if many else 0), height + (2.2 * len(examples["images"]) if examples else 0)),
                 layout="constrained")
    top = fig
    if examples:
        top, bottom = fig.subfigures(2, 1, height_ratios=[height, 2.2 * len(examples["images"])])
        draw_examples(bottom, summary, examples)
    transfer_arms = transfer_arm_names(summary)  # a role matrix each, side by side
    strategies = {arm: arm_label(summary, arm) for arm in transfer_arms}
    panels = [(f"{arm} ({strategies[arm]}): role matrix, last epoch", role_matrix(summary, arm)) for arm in transfer_arms]
    if summary.get("role_matrix_per_domain"):  # text: the transfer arm's on each domain (who taught whom on which text)
        panels = [(f"transfer on {domain}: {units(summary)}, last epoch", matrix)
                  for domain, matrix in summary["role_matrix_per_domain"].items()] + panels[1:]
    elif len(panels) == 1:
        panels = [(f"role matrix, last epoch: {units(summary)} t taught s (weighted)", panels[0][1])]
    if many:  # the bars across the top, the curves under them, the role matrices large at the bottom
        grid = top.add_gridspec(3, 2, height_ratios=[3, 3, 12])
        bars, loss, val = top.add_subplot(grid[0, :]), top.add_subplot(grid[1, 0]), top.add_subplot(grid[1, 1])
        cells = grid[2, :].subgridspec(1, len(panels))
    else:
        grid = top.add_gridspec(2, 2)
        bars, loss, val = top.add_subplot(grid[0, 0]), top.add_subplot(grid[0, 1]), top.add_subplot(grid[1, 0])
        cells = grid[1, 1].subgridspec(1, len(panels))
    roles = [top.add_subplot(cells[0, j]) for j in range(len(panels))]

    m = summary["metric"]
    parts = with_arms(summary)
    arms = [("before", "before"), *[(f"after {arm} ({strategies[arm]})", "after" if arm == "transfer" else arm)
                                    for arm in transfer_arms],
            ("control (CE only)" if summary.get("task", "classification") == "classification" else "control (task loss only)",
             "control"), ("self-training", "self_training")]
    arms = [(label, key) for label, key in arms if any(metric_value(parts[n], summary, key) is not None for n in names)]
    width, unit = 0.8 / len(arms), scale(summary)
    for j, (label, key) in enumerate(arms):
        xs = [i + (j - (len(arms) - 1) / 2) * width for i in range(len(names))]
        bars.bar(xs, [unit * metric_value(parts[n], summary, key) for n in names], width, label=label)
    low = min(unit * metric_value(parts[n], summary, key) for n in names for _, key in arms)
    if unit == 100:
        bars.set_ylim(max(0, low - 5), None)  # the differences are the point, not the distance from zero
    else:  # a log-likelihood: negative, bars hang from the top
        bars.set_ylim(low - 0.5, None)
    bars.set_xticks(range(len(names)), names, **({"rotation": 90, "fontsize": 6} if many else {}))
    metric = metric_name(summary)
    bars.set_ylabel(f"test {metric}" + (" (%)" if unit == 100 else " (nats a token)"))
    bars.set_title(f"test {metric}; success rate {100 * summary['success_rate']:.0f}%")
    bars.legend(fontsize=8)

    colours = {n: f"C{i}" for i, n in enumerate(names)}
    styles = {"transfer": "-", **{arm: "-." for arm in transfer_arms[1:]}, "control": "--", "self_training": ":"}
    for k, (arm, style) in enumerate(styles.items()):
        steps = [r for r in records if r.get("arm") == arm and "losses" in r]
        evals = [r for r in records if r.get("arm") == arm and r.get("event") == "eval"]
        curves = [(loss, [r["global_step"] for r in steps], [[r["losses"][n] for r in steps] for n in names], {}),
                  (val, [r["epoch"] + 1 for r in evals], [[scale(summary) * r[f"val_{m}"][n] for r in evals] for n in names],
                   {"marker": "o"})]
        for ax, xs, ys, extra in curves:
            if not xs:
                continue
            if many:  # each participant faint, the arm's mean over them bold
                for y in ys:
                    ax.plot(xs, y, style, color=f"C{k}", linewidth=0.4, alpha=0.3)
                ax.plot(xs, np.mean(ys, axis=0), style, color=f"C{k}", linewidth=2, label=f"{arm} (mean)", **extra)
            else:
                for n, y in zip(names, ys):
                    ax.plot(xs, y, style, color=colours[n], label=f"{n} ({arm})", linewidth=1, **extra)
    loss.set_xlabel("step")
    loss.set_ylabel("training loss (own share)")
    drawn = [arm for arm in styles if any(r.get("arm") == arm and "losses" in r for r in records)]
    loss.set_title("training curves: " + ", ".join(f"{STYLE_NAMES[styles[arm]]} {arm.replace('_', '-')}" for arm in drawn))
    loss.legend(fontsize=7, ncol=2)
    val.set_xlabel("epochs trained")
    val.set_ylabel(f"validation {metric}" + (" (%)" if scale(summary) == 100 else ""))
    val.set_title(f"validation {metric} (selection uses this split only)")
    val.xaxis.get_major_locator().set_params(integer=True)
    val.legend(fontsize=7, ncol=2)
    for ax, (title, matrix) in zip(roles, panels):
        draw_role_matrix(ax, matrix, names)
        ax.set_title(title, fontsize=9 if len(roles) > 1 else None)
    return fig


def arm_label(summary: dict, arm: str) -> str:
    """A transfer arm's strategy, and whether only trusted teachers taught: `best`, `best, trusted`."""
    extra = (summary.get("transfer_arms") or {}).get(arm)
    strategy = summary.get("strategy", "best") if extra is None else extra["strategy"]
    trusted = summary.get("trusted_teachers") if extra is None else extra["settings"].get("trusted_teachers", summary.get("trusted_teachers"))
    return strategy + (", trusted" if trusted else "")


def role_matrix(summary: dict, arm: str) -> list[list[float]]:
    """A transfer arm's role matrix at its last epoch."""
    return summary["role_matrix"] if arm == "transfer" else summary["transfer_arms"][arm]["role_matrix"]


def units(summary: dict) -> str:
    """What the role matrix counts."""
    return {"pixel": "pixels", "image": "images", "token": "tokens", "sequence": "sequences"}.get(summary.get("unit"), "samples")


def metrics_table(summary: dict) -> str:
    """Every metric of the task (dense tasks have several), per participant and arm: test split."""
    parts = summary["participants"]
    first = next(iter(parts.values()))["metrics"]
    names = list(first["start"])
    rows = ["| participant | arm | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for name, p in parts.items():
        for arm, values in p["metrics"].items():
            rows.append(f"| {name} | {arm} | " + " | ".join(f"{values[m]:.4f}" for m in names) + " |")
    return "\n".join(rows)


def summary_table(summary: dict) -> str:
    selftrain = summary.get("success_rate_vs_self_training") is not None
    others = transfer_arm_names(summary)[1:]
    extra = " self-training | vs self-training |" if selftrain else ""
    rows = ["| participant | before | after |" + "".join(f" {arm} |" for arm in others) + " control | delta | vs control |"
            + extra + " top-5 after | + flips | - flips | complementary | taught | best epoch |",
            "|---|" + "---:|" * ((13 if selftrain else 11) + len(others))]
    for name, p in with_arms(summary).items():
        cells = f" {marked(p, summary, 'self_training')} | {shown(summary, p['delta_vs_self_training'], True)} |" if selftrain else ""
        rows.append(
            f"| {name} | {shown(summary, metric_value(p, summary, 'before'))} | {marked(p, summary, 'transfer')} | "
            + "".join(f"{marked(p, summary, arm)} | " for arm in others) + f"{marked(p, summary, 'control')} | "
            f"{shown(summary, p['delta'], True)} | {shown(summary, p['delta_vs_control'], True)} |{cells} {pct(p.get('top5_after'))} | "
            f"{pct(p['positive_flips'])} | {pct(p['negative_flips'])} | {pct(p['complementary'])} | "
            f"{100 * p['teach_share']:.1f}% | {p['best_epoch']} |"
        )
    note = kept_note(summary, width=10_000)
    return "\n".join(rows + (["", *note] if note else []))


def report_markdown(summary: dict, config: str) -> str:
    names = list(summary["participants"])
    metric = metric_name(summary)
    seconds = summary.get("seconds", {})
    vs_control = summary.get("success_rate_vs_control")
    vs_self = summary.get("success_rate_vs_self_training")
    matrix, arms = [], transfer_arm_names(summary)
    for arm in arms:  # each transfer arm's
        if len(arms) > 1:
            matrix += ["", f"**{arm}**", ""]
        matrix += ["| teacher \\ student | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        matrix += [f"| {t} | " + " | ".join(count(c) for c in row) + " |" for t, row in zip(names, role_matrix(summary, arm))]
    shares = ["| epoch | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    epochs = len(next(iter(summary["participants"].values()))["teach_share_per_epoch"])
    shares += [f"| {e + 1} | " + " | ".join(f"{100 * summary['participants'][n]['teach_share_per_epoch'][e]:.1f}%" for n in names) + " |"
               for e in range(epochs)]
    timing = ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in seconds.items() if v is not None)
    return f"""# kt-swarm run report

{summary['engine']} engine, strategy {summary.get('strategy', 'best')}, {summary['steps']} transfer steps, {summary['gradient_mode']} gradients, seed {summary['seed']}.
Task {summary.get('task', 'classification')}, partitioned by {units(summary)}.
Success rate (participants whose test {metric} went up): {100 * summary['success_rate']:.0f}%{'' if vs_control is None else f'; above their CE-only control: {100 * vs_control:.0f}%'}{'' if vs_self is None else f'; above self-training: {100 * vs_self:.0f}%'}.

Test {metric} {'in nats a token, higher is better' if summary.get('metric') in AS_IS else 'in %'} (the test split is never used for selection). Flips are against each participant's own
starting predictions: + wrong before and right after, - right before and wrong after, per {units(summary)[:-1]}
(segmentation: labelled pixel; none for saliency maps). Complementary: test {units(summary)} another participant
got right and this one wrong, before transfer. Best epoch: the transfer epoch selection kept on validation (0: the start).
{"".join(f"{chr(10)}{arm}: another transfer arm from the same start on the same steps, with {', '.join(f'{k} {v}' for k, v in a['settings'].items()) or 'transfer settings'} ({a['strategy']})."
         for arm, a in (summary.get("transfer_arms") or {}).items())}

{summary_table(summary)}
{f"{chr(10)}All of the task's metrics on test{LOWER_IS_BETTER.get(summary.get('task'), '')}{chr(10)}{chr(10)}{metrics_table(summary)}{chr(10)}"
 if summary.get("task", "classification") != "classification" else ""}
![report](report.png)

## Teach share per epoch

{chr(10).join(shares)}

## Role matrix, last epoch ({units(summary)} on which the row taught the column, weighted; the diagonal: learned from itself)

{chr(10).join(matrix)}

## Timings

{timing or '-'}

## Config

```yaml
{config.rstrip()}
```
"""


def write_report(run_dir: str | Path, summary: dict | None = None) -> list[Path]:
    """(Re)write report.png and report.md in a run directory from its own files (and `summary`, when
    the run writes its report before its summary.json)."""
    run_dir = Path(run_dir)
    summary, records, config = load_run(run_dir, summary)
    examples = None
    if (run_dir / "examples.npz").exists():  # a dense task's pictures (coordinator.write_examples)
        with np.load(run_dir / "examples.npz") as f:
            examples = dict(f)
    png = io.BytesIO()
    report_figure(summary, records, examples).savefig(png, format="png", dpi=110)
    atomic_write(run_dir / "report.png", png.getvalue())
    atomic_write(run_dir / "report.md", report_markdown(summary, config).encode())
    return [run_dir / "report.png", run_dir / "report.md"]


def write_comparison(run_dirs: list[str | Path], out: str | Path) -> list[Path]:
    """compare.png and compare.md: the runs' participants side by side."""
    labels = [Path(d).name or str(d) for d in run_dirs]
    if len(set(labels)) < len(labels):  # same directory names: tell them apart by path
        labels = [str(d) for d in run_dirs]
    runs = [(label, load_run(d)[0]) for label, d in zip(labels, run_dirs)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(n for _, s in runs for n in s["participants"]))
    # The legend says what differs between the runs (a sweep's trial folders are only ids).
    settings = [f"{s.get('strategy', 'best')}, seed {s['seed']}" for _, s in runs]
    legend = [f"{label} ({setting})" for (label, _), setting in zip(runs, settings)] if len(set(settings)) > 1 else labels
    fig = Figure(figsize=(min(16, max(6, 1.6 * len(names) * len(runs) / 2 + 4)), 4.5 + 0.12 * len(runs)), layout="constrained")
    delta_ax, control_ax = fig.subplots(1, 2)
    width = 0.8 / len(runs)
    for j, ((_, s), label) in enumerate(zip(runs, legend)):
        xs = [i + (j - (len(runs) - 1) / 2) * width for i in range(len(names))]
        parts = [s["participants"].get(n, {}) for n in names]
        delta_ax.bar(xs, [100 * (p.get("delta") or 0) for p in parts], width, label=label)
        control_ax.bar(xs, [100 * (p.get("delta_vs_control") or 0) for p in parts], width, label=label)
    for ax, title in [(delta_ax, "after - before (test, points)"), (control_ax, "after - CE-only control (test, points)")]:
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(names)), names)
        ax.set_title(title)
    control_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.savefig(out / "compare.png", dpi=110)
    rows = ["| run | participant | before | after | control | delta | vs control | + flips | - flips | taught |",
            "|---|---|" + "---:|" * 8]
    for label, s in runs:
        for n, p in s["participants"].items():
            rows.append(f"| {label} | {n} | {shown(s, metric_value(p, s, 'before'))} | {marked(p, s, 'transfer')} | "
                        f"{marked(p, s, 'control')} | "
                        f"{shown(s, p['delta'], True)} | {shown(s, p['delta_vs_control'], True)} | {pct(p['positive_flips'])} | "
                        f"{pct(p['negative_flips'])} | {100 * p['teach_share']:.1f}% |")
    totals = ["| run | metric | engine | strategy | seed | steps | gradients | success rate | above control | seconds |",
              "|---|---|---|---|---:|---:|---|---:|---:|---:|"]
    for label, s in runs:
        vs = s.get("success_rate_vs_control")
        totals.append(f"| {label} | {metric_name(s)} | {s['engine']} | {s.get('strategy', 'best')} | {s['seed']} | {s['steps']} | "
                      f"{s['gradient_mode']} | {100 * s['success_rate']:.0f}% | "
                      f"{'-' if vs is None else f'{100 * vs:.0f}%'} | {s.get('seconds', {}).get('total', 0):.0f} |")
    notes = [f"{label}: {kept_note(s, width=10_000)[0]}" for label, s in runs if kept_note(s)]
    (out / "compare.md").write_text("# kt-swarm runs side by side\n\nTest metric in % (each run's headline metric, "
                                    "its `metric` column; a log-likelihood in nats a token).\n\n" + "\n".join(totals) + "\n\n" + "\n".join(rows)
                                    + "".join(f"\n\n{n}" for n in notes) + "\n\n![compare](compare.png)\n")
    return [out / "compare.png", out / "compare.md"]
