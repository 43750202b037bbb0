"""summary.json from a finished run's test predictions and arm results, the end-of-run table, and the
upgrade that reads a run directory written with older key names in today's.

Key names say what they hold: with m the task's headline metric (metrics.HEADLINE: accuracy, miou or cc,
the summary's `metric`), each participant has {m}_before, {m}_after, {m}_control, {m}_self_training (test),
val_{m} (validation, per epoch trained) and val_{m}_selected; the run has val_{m}_mean (what sweeps
optimise). kept_start / control_kept_start / self_training_kept_start: selection kept the participant's
start weights in that arm (no epoch beat them on validation).
"""
from __future__ import annotations

import torch

from kt_swarm.config import Config
from kt_swarm.data import Dataset
from kt_swarm.metrics import HEADLINE, complementary, flips, success_rate, task_metrics

BASELINES = ("control", "self_training")  # the arms every transfer result is compared with
ARM_PREFIX = {"transfer": "", "control": "control_", "self_training": "self_training_"}  # per-arm keys' prefixes


def summarize(cfg: Config, data: Dataset, names: list[str], labels: torch.Tensor, preds: dict[str, torch.Tensor],
              results: dict, nodes: list[str], engine: str) -> dict:
    """summary.json from the test predictions (at the start and after each arm; metrics.py) and each
    arm's ArmResult. A baseline the run did not train has None in its keys. {m}_* keys hold the task's
    headline metric m (`metric`: accuracy, miou or cc); `metrics` every metric of the task, per arm."""
    start, end, transfer = preds["start"], preds["transfer"], results["transfer"]
    task, m = data.task, HEADLINE[data.task]
    n = len(names)
    scores = {arm: task_metrics(p, labels, task, data.num_classes, data.classes) for arm, p in preds.items()}
    before, after = scores["start"][m], scores["transfer"][m]
    gained, lost = flips(start, end, labels, task)
    comp = complementary(start, labels, task)
    top5 = "top5" in scores["start"]
    top_before, top_after = scores["start"].get("top5"), scores["transfer"].get("top5")
    deltas = [a - b for a, b in zip(after, before)]
    selected = transfer.selected_val
    base = {}  # per participant: the baselines' keys
    rates = {}
    for arm in BASELINES:
        if arm in preds:
            value, top = scores[arm][m], scores[arm].get("top5")
            b_gained, b_lost = flips(start, preds[arm], labels, task)
            rates[f"success_rate_vs_{arm}"] = success_rate([a - c for a, c in zip(after, value)])
            for i, name in enumerate(names):
                base.setdefault(name, {}).update({
                    f"{m}_{arm}": value[i], f"delta_vs_{arm}": after[i] - value[i], f"top5_{arm}": top[i] if top5 else None,
                    f"{arm}_positive_flips": b_gained and b_gained[i], f"{arm}_negative_flips": b_lost and b_lost[i],
                    f"{arm}_best_epoch": results[arm].best_epoch[i], f"{arm}_kept_start": results[arm].best_epoch[i] == 0})
        else:
            rates[f"success_rate_vs_{arm}"] = None
            for name in names:
                base.setdefault(name, {}).update({
                    f"{m}_{arm}": None, f"delta_vs_{arm}": None, f"top5_{arm}": None, f"{arm}_positive_flips": None,
                    f"{arm}_negative_flips": None, f"{arm}_best_epoch": None, f"{arm}_kept_start": None})
    t = cfg.transfer
    extra = {}  # the other transfer arms (transfer_arms): per participant, and the arm's own keys
    for arm in cfg.transfer_arms:
        r, value = results[arm], scores[arm][m]
        control = scores["control"][m] if "control" in scores else None
        extra[arm] = {
            "settings": cfg.transfer_arms[arm].model_dump(exclude_none=True),
            "strategy": cfg.arm_transfer(arm).strategy,
            "success_rate": success_rate([v - b for v, b in zip(value, before)]),
            "success_rate_vs_control": None if control is None else success_rate([v - c for v, c in zip(value, control)]),
            "role_matrix": r.role_matrix[-1],
            "role_matrix_per_epoch": r.role_matrix,
            **({"role_matrix_per_domain": r.role_matrix_by_domain[-1]} if r.role_matrix_by_domain else {}),
            "participants": {name: {
                f"{m}_after": value[i], "delta": value[i] - before[i],
                "delta_vs_control": None if control is None else value[i] - control[i],
                "best_epoch": r.best_epoch[i], "kept_start": r.best_epoch[i] == 0, f"val_{m}": [v[i] for v in r.val],
                "teach_share_per_epoch": [sh[i] for sh in r.teach_share], "final_train_loss": r.final_train_loss[i]}
                for i, name in enumerate(names)},
        }
    return {
        "engine": engine,
        "task": task,
        "unit": t.unit,
        "metric": m,
        "steps": transfer.steps,
        "seed": cfg.seed,
        "strategy": t.strategy,
        "scores": t.scores,
        "teacher": t.teacher if t.strategy == "kd" else None,
        "trusted_teachers": t.trusted_teachers,
        "gradient_mode": "detached" if t.detach_teacher else "exact",
        "num_classes": data.num_classes,
        "selection": cfg.selection,
        "success_rate": success_rate(deltas),
        **rates,
        # What sweeps optimise: the validation metric each participant was selected at (its start's where
        # it kept its start), averaged.
        f"val_{m}_mean": sum(selected) / n,
        "participants": {
            name: {
                f"{m}_before": before[i],
                f"{m}_after": after[i],
                "delta": deltas[i],
                "top5_before": top_before[i] if top5 else None,
                "top5_after": top_after[i] if top5 else None,
                "positive_flips": gained and gained[i],
                "negative_flips": lost and lost[i],
                **base[name],
                "metrics": {arm: {k: v[i] for k, v in arm_scores.items()} for arm, arm_scores in scores.items()},
                "complementary": comp and comp[i],
                "teach_share": transfer.teach_share[-1][i],
                "teach_share_per_epoch": [s[i] for s in transfer.teach_share],
                "final_train_loss": transfer.final_train_loss[i],
                "node": nodes[i],
                "best_epoch": transfer.best_epoch[i],
                "kept_start": transfer.best_epoch[i] == 0,
                f"val_{m}": [v[i] for v in transfer.val],
                f"val_{m}_selected": selected[i],
            }
            for i, name in enumerate(names)
        },
        "role_matrix": transfer.role_matrix[-1],
        "role_matrix_per_epoch": transfer.role_matrix,
        **({"role_matrix_per_domain": transfer.role_matrix_by_domain[-1]} if transfer.role_matrix_by_domain else {}),
        "transfer_arms": extra,
        "data": {"source": data.source, "skipped_corrupt": data.skipped,
                 **{f"{k}_samples": len(v) for k, v in data.splits.items()}},
    }


def upgrade(summary: dict, records: list[dict] = ()) -> tuple[dict, list[dict]]:
    """A run directory's summary.json and metrics.jsonl records in today's key names, whenever they were
    written (new copies; today's pass through unchanged). Before the headline metric was named, every
    task's was `acc_*`, `val_acc`, `val_acc_mean` (summary) and `val_acc` / `test_acc` (records); a summary
    without `metric` predates the dense tasks (accuracy). Before selection considered the start, no
    participant kept it: kept_start keys are derived from the selected epochs (0: kept)."""
    m = summary.get("metric", "accuracy")
    old = {"acc_before": f"{m}_before", "acc_after": f"{m}_after", "acc_control": f"{m}_control",
           "acc_self_training": f"{m}_self_training", "val_acc": f"val_{m}", "val_acc_selected": f"val_{m}_selected"}
    out = {(f"val_{m}_mean" if k == "val_acc_mean" else k): v for k, v in summary.items()}
    out.setdefault("metric", m)
    if isinstance(summary.get("participants"), dict):
        out["participants"] = {}
        for name, p in summary["participants"].items():
            p = {old.get(k, k): v for k, v in p.items()}
            for prefix in ARM_PREFIX.values():
                if f"{prefix}best_epoch" in p:
                    epoch = p[f"{prefix}best_epoch"]
                    p.setdefault(f"{prefix}kept_start", None if epoch is None else epoch == 0)
            out["participants"][name] = p
    renamed = {"val_acc": f"val_{m}", "test_acc": f"test_{m}"}
    return out, [{renamed.get(k, k): v for k, v in r.items()} for r in records]


def metric_value(p: dict, summary: dict, arm: str) -> float | None:
    """A participant's test headline metric: at its start (arm "before"), after transfer ("after"), after a
    baseline arm ("control", "self_training") or after another transfer arm (by its name)."""
    m = summary.get("metric", "accuracy")
    if arm in p.get("transfer_arms", {}):
        return p["transfer_arms"][arm][f"{m}_after"]
    return p.get(f"{m}_{arm}")


def kept(p: dict, arm: str) -> bool:
    """Whether selection kept the participant's start weights in `arm` (transfer, control, self_training, or
    another transfer arm)."""
    if arm in p.get("transfer_arms", {}):
        return bool(p["transfer_arms"][arm]["kept_start"])
    return bool(p.get(f"{ARM_PREFIX[arm]}kept_start"))


def with_arms(summary: dict) -> dict:
    """summary["participants"] with each participant's results in the other transfer arms under
    `transfer_arms` (summary.json keeps them under the arm), so that a table reads them beside the rest."""
    arms = summary.get("transfer_arms") or {}
    return {name: {**p, "transfer_arms": {arm: a["participants"][name] for arm, a in arms.items()}}
            for name, p in summary["participants"].items()}


def transfer_arm_names(summary: dict) -> list[str]:
    """Every transfer arm of the run: transfer first, then transfer_arms in their order."""
    return ["transfer", *(summary.get("transfer_arms") or {})]


def kept_note(summary: dict, width: int = 100) -> list[str]:
    """The footnote of a table whose values carry a *: where each arm kept a participant's start (none: no lines)."""
    import textwrap

    arms = [*transfer_arm_names(summary), "control", "self_training"]
    where = [f"{name} ({arm.replace('_', '-')})" for name, p in with_arms(summary).items() for arm in arms if kept(p, arm)]
    if not where:
        return []
    return textwrap.wrap(f"* kept its start weights (no epoch beat them on validation {metric_name(summary)}): "
                         + ", ".join(where), width)

METRIC_NAMES = {"accuracy": "accuracy", "miou": "mIoU", "cc": "CC", "log_likelihood": "log-likelihood"}
AS_IS = {"log_likelihood"}  # headline metrics that are no fraction: shown as they are (nats a token), not in %


def metric_name(summary: dict) -> str:
    """The run's headline metric (metrics.HEADLINE) as a reader writes it."""
    return METRIC_NAMES[summary.get("metric", "accuracy")]


def pct(x: float | None, signed: bool = False) -> str:
    return "-" if x is None else f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def scale(summary: dict) -> float:
    """What the headline metric is multiplied by where it is shown: 100 (in %, points), or 1 (AS_IS)."""
    return 1.0 if summary.get("metric") in AS_IS else 100.0


def shown(summary: dict, x: float | None, signed: bool = False) -> str:
    """The headline metric, or a difference of it, as the tables show it (pct, or as it is)."""
    return "-" if x is None else pct(x * scale(summary) / 100, signed)


def marked(p: dict, summary: dict, arm: str) -> str:
    """A participant's test metric after `arm` (shown), with a * where the arm kept its start (KEPT_NOTE)."""
    column = "after" if arm == "transfer" else arm
    value = metric_value(p, summary, column)
    return shown(summary, value) + ("*" if value is not None and kept(p, arm) else "")


ACROSS_ENGINES_RTOL = 1e-12  # float64 sums in another order (thread counts differ per process) move the last bits


def reproducible(summary: dict) -> dict:
    """What a run that was interrupted (actors killed, the driver stopped and resumed, a node lost) must end
    with, as the run never interrupted: accuracies, final losses, selection, flips and role matrices (not
    times, fault counts or where processes ran)."""
    summary, _ = upgrade(summary)
    m = summary["metric"]
    keys = [f"{m}_before", f"{m}_after", f"{m}_control", f"{m}_self_training", "final_train_loss", f"val_{m}",
            "best_epoch", "control_best_epoch", "self_training_best_epoch", "kept_start", "control_kept_start",
            "self_training_kept_start", "positive_flips", "negative_flips", "teach_share_per_epoch"]
    arms = {arm: {"participants": a["participants"], "role_matrix_per_epoch": a["role_matrix_per_epoch"]}
            for arm, a in (summary.get("transfer_arms") or {}).items()}
    return {"participants": {n: {k: p[k] for k in keys} for n, p in summary["participants"].items()},
            "role_matrix_per_epoch": summary["role_matrix_per_epoch"], "transfer_arms": arms}


SUMMED = ("final_train_loss", "teach_share_per_epoch", "role_matrix_per_epoch")  # float sums over a run's steps


def differences(a: dict, b: dict, *, across_engines: bool) -> list[str]:
    """Where two summaries of the same run (float64) differ in what `reproducible` keeps; empty when they agree.

    What "exact" means: within one engine, bit for bit (the same process layout sums in the same order).
    Across engines (Ray actors against the single-process engine), accuracies, flips, selected epochs and
    which samples were taught are equal; what is a float sum over the run's steps (losses, weighted role
    matrices, teach shares) agrees to a relative ACROSS_ENGINES_RTOL, since each process's thread count
    sets the order BLAS sums in."""
    import math

    def walk(x, y, where: str, summed: bool) -> list[str]:
        if isinstance(x, dict) and isinstance(y, dict):
            if set(x) != set(y):
                return [f"{where}: keys {sorted(x)} != {sorted(y)}"]
            return [d for k in x for d in walk(x[k], y[k], f"{where}.{k}".lstrip("."), summed or k in SUMMED)]
        if isinstance(x, list) and isinstance(y, list):
            if len(x) != len(y):
                return [f"{where}: {len(x)} items != {len(y)}"]
            return [d for i, (u, v) in enumerate(zip(x, y)) for d in walk(u, v, f"{where}.{i}", summed)]
        if summed and across_engines and isinstance(x, float) and isinstance(y, float):
            return [] if math.isclose(x, y, rel_tol=ACROSS_ENGINES_RTOL, abs_tol=1e-300) else [f"{where}: {x!r} != {y!r}"]
        return [] if x == y else [f"{where}: {x!r} != {y!r}"]

    return walk(reproducible(a), reproducible(b), "", False)


def format_table(summary: dict) -> str:
    """The readable end-of-run table (fits 100 columns); a * marks an arm that kept a participant's start."""
    summary, _ = upgrade(summary)
    selftrain = summary.get("success_rate_vs_self_training") is not None
    others = transfer_arm_names(summary)[1:]  # a column each, after transfer's
    rows = [f"{'participant':<16} {'before':>7} {'after':>7} " + "".join(f"{arm[:7]:>7} " for arm in others)
            + f"{'control':>7} {'delta':>7} {'vs ctrl':>7} "
            + (f"{'vs self':>7} " if selftrain else "") + f"{'+flips':>7} {'-flips':>7} {'taught':>7} {'loss':>7}"]
    for name, p in with_arms(summary).items():
        rows.append(
            f"{name[:16]:<16} {shown(summary, metric_value(p, summary, 'before')):>7} {marked(p, summary, 'transfer'):>7} "
            + "".join(f"{marked(p, summary, arm):>7} " for arm in others) + f"{marked(p, summary, 'control'):>7} "
            f"{shown(summary, p['delta'], True):>7} {shown(summary, p['delta_vs_control'], True):>7} "
            + (f"{shown(summary, p['delta_vs_self_training'], True):>7} " if selftrain else "")
            + f"{pct(p['positive_flips']):>7} {pct(p['negative_flips']):>7} "
            f"{100 * p['teach_share']:6.1f}% {p['final_train_loss']:7.3f}"
        )
    vs_control, vs_self = summary["success_rate_vs_control"], summary.get("success_rate_vs_self_training")
    rows.append(
        f"test{'' if summary.get('metric', 'accuracy') == 'accuracy' else ' ' + metric_name(summary)}{' %' if scale(summary) == 100 else ''} (flips vs start); success rate {100 * summary['success_rate']:.0f}%"
        + ("" if vs_control is None else f", {100 * vs_control:.0f}% above control")
        + ("" if vs_self is None else f", {100 * vs_self:.0f}% above self-training")
        + f"; {summary['engine']}, {summary.get('strategy', 'best')}, {summary['steps']} steps, "
        f"{summary['gradient_mode']}, {summary['seconds']['total']:.0f} s"
    )
    for arm in others:  # what each other transfer arm changed, and how it fared
        a = summary["transfer_arms"][arm]
        settings = ", ".join(f"{k} {v}" for k, v in a["settings"].items()) or "transfer's settings"
        rows.append(f"{arm}: {settings}; success rate {100 * a['success_rate']:.0f}%"
                    + ("" if a["success_rate_vs_control"] is None else f", {100 * a['success_rate_vs_control']:.0f}% above control"))
    return "\n".join(rows + kept_note(summary))
