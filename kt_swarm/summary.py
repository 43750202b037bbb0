"""summary.json from a finished run's test predictions and arm results, and the end-of-run table."""
from __future__ import annotations

import torch

from kt_swarm.config import Config
from kt_swarm.data import Dataset
from kt_swarm.metrics import HEADLINE, complementary, flips, success_rate, task_metrics
from kt_swarm.report import metric_name, pct

BASELINES = ("control", "self_training")  # the arms every transfer result is compared with


def summarize(cfg: Config, data: Dataset, names: list[str], labels: torch.Tensor, preds: dict[str, torch.Tensor],
              results: dict, nodes: list[str], engine: str) -> dict:
    """summary.json from the test predictions (at the start and after each arm; metrics.py) and each
    arm's ArmResult. A baseline the run did not train has None in its keys. `acc_*` keys hold the task's
    headline metric (`metric`: accuracy, miou or cc); `metrics` every metric of the task, per arm."""
    start, end, transfer = preds["start"], preds["transfer"], results["transfer"]
    task, metric = data.task, HEADLINE[data.task]
    n = len(names)
    scores = {arm: task_metrics(p, labels, task, data.num_classes) for arm, p in preds.items()}
    before, after = scores["start"][metric], scores["transfer"][metric]
    gained, lost = flips(start, end, labels, task)
    comp = complementary(start, labels, task)
    top5 = "top5" in scores["start"]
    top_before, top_after = scores["start"].get("top5"), scores["transfer"].get("top5")
    deltas = [a - b for a, b in zip(after, before)]
    selected = [transfer.val_acc[transfer.best_epoch[i] - 1][i] for i in range(n)]
    base = {}  # per participant: the baselines' keys
    rates = {}
    for arm in BASELINES:
        if arm in preds:
            acc, top = scores[arm][metric], scores[arm].get("top5")
            b_gained, b_lost = flips(start, preds[arm], labels, task)
            rates[f"success_rate_vs_{arm}"] = success_rate([a - c for a, c in zip(after, acc)])
            for i, name in enumerate(names):
                base.setdefault(name, {}).update({
                    f"acc_{arm}": acc[i], f"delta_vs_{arm}": after[i] - acc[i], f"top5_{arm}": top[i] if top5 else None,
                    f"{arm}_positive_flips": b_gained and b_gained[i], f"{arm}_negative_flips": b_lost and b_lost[i],
                    f"{arm}_best_epoch": results[arm].best_epoch[i]})
        else:
            rates[f"success_rate_vs_{arm}"] = None
            for name in names:
                base.setdefault(name, {}).update({
                    f"acc_{arm}": None, f"delta_vs_{arm}": None, f"top5_{arm}": None, f"{arm}_positive_flips": None,
                    f"{arm}_negative_flips": None, f"{arm}_best_epoch": None})
    t = cfg.transfer
    return {
        "engine": engine,
        "task": task,
        "unit": t.unit,
        "metric": metric,
        "steps": transfer.steps,
        "seed": cfg.seed,
        "strategy": t.strategy,
        "scores": t.scores,
        "teacher": t.teacher if t.strategy == "kd" else None,
        "trusted_teachers": t.trusted_teachers,
        "gradient_mode": "detached" if t.detach_teacher else "exact",
        "num_classes": data.num_classes,
        "success_rate": success_rate(deltas),
        **rates,
        # What sweeps optimise: the validation accuracy each participant was selected at, averaged.
        "val_acc_mean": sum(selected) / n,
        "participants": {
            name: {
                "acc_before": before[i],
                "acc_after": after[i],
                "delta": deltas[i],
                "top5_before": top_before[i] if top5 else None,
                "top5_after": top_after[i] if top5 else None,
                "positive_flips": gained and gained[i],
                "negative_flips": lost and lost[i],
                **base[name],
                "metrics": {arm: {m: v[i] for m, v in arm_scores.items()} for arm, arm_scores in scores.items()},
                "complementary": comp and comp[i],
                "teach_share": transfer.teach_share[-1][i],
                "teach_share_per_epoch": [s[i] for s in transfer.teach_share],
                "final_train_loss": transfer.final_train_loss[i],
                "node": nodes[i],
                "best_epoch": transfer.best_epoch[i],
                "val_acc": [v[i] for v in transfer.val_acc],
                "val_acc_selected": selected[i],
            }
            for i, name in enumerate(names)
        },
        "role_matrix": transfer.role_matrix[-1],
        "role_matrix_per_epoch": transfer.role_matrix,
        "data": {"source": data.source, "skipped_corrupt": data.skipped,
                 **{f"{k}_samples": len(v) for k, v in data.splits.items()}},
    }


ACROSS_ENGINES_RTOL = 1e-12  # float64 sums in another order (thread counts differ per process) move the last bits


def reproducible(summary: dict) -> dict:
    """What a run that was interrupted (actors killed, the driver stopped and resumed, a node lost) must end
    with, as the run never interrupted: accuracies, final losses, selection, flips and role matrices (not
    times, fault counts or where processes ran)."""
    keys = ["acc_before", "acc_after", "acc_control", "acc_self_training", "final_train_loss", "val_acc", "best_epoch",
            "control_best_epoch", "self_training_best_epoch", "positive_flips", "negative_flips", "teach_share_per_epoch"]
    return {"participants": {n: {k: p[k] for k in keys} for n, p in summary["participants"].items()},
            "role_matrix_per_epoch": summary["role_matrix_per_epoch"]}


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
    """The readable end-of-run table (fits 100 columns)."""
    selftrain = summary.get("success_rate_vs_self_training") is not None
    rows = [f"{'participant':<16} {'before':>7} {'after':>7} {'control':>7} {'delta':>7} {'vs ctrl':>7} "
            + (f"{'vs self':>7} " if selftrain else "") + f"{'+flips':>7} {'-flips':>7} {'taught':>7} {'loss':>7}"]
    for name, p in summary["participants"].items():
        rows.append(
            f"{name[:16]:<16} {pct(p['acc_before']):>7} {pct(p['acc_after']):>7} {pct(p['acc_control']):>7} "
            f"{pct(p['delta'], True):>7} {pct(p['delta_vs_control'], True):>7} "
            + (f"{pct(p['delta_vs_self_training'], True):>7} " if selftrain else "")
            + f"{pct(p['positive_flips']):>7} {pct(p['negative_flips']):>7} "
            f"{100 * p['teach_share']:6.1f}% {p['final_train_loss']:7.3f}"
        )
    vs_control, vs_self = summary["success_rate_vs_control"], summary.get("success_rate_vs_self_training")
    rows.append(
        f"test{'' if summary.get('metric', 'accuracy') == 'accuracy' else ' ' + metric_name(summary)} % (flips vs start); success rate {100 * summary['success_rate']:.0f}%"
        + ("" if vs_control is None else f", {100 * vs_control:.0f}% above control")
        + ("" if vs_self is None else f", {100 * vs_self:.0f}% above self-training")
        + f"; {summary['engine']}, {summary.get('strategy', 'best')}, {summary['steps']} steps, "
        f"{summary['gradient_mode']}, {summary['seconds']['total']:.0f} s"
    )
    return "\n".join(rows)
