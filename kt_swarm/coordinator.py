"""A whole run: data, participants (zoo included), accuracy before, the transfer arm,
the CE-only control arm, selection on validation, accuracy after, summary.json."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from kt_swarm.config import Config, to_dict
from kt_swarm.data import Dataset, load_dataset, steps_per_epoch
from kt_swarm.errors import UserError
from kt_swarm.local import LocalEngine, LossSpec
from kt_swarm.metrics import accuracy, complementary, flips, success_rate, teach_share, topk_accuracy
from kt_swarm.models import check_model_name, create_model, default_weights, preprocess_for
from kt_swarm.participant import Participant, resolve_device
from kt_swarm.progress import progress
from kt_swarm.report import pct, write_report
from kt_swarm.roles import role_matrix
from kt_swarm.rundir import RunDir
from kt_swarm.tracking import Tracker
from kt_swarm import zoo


def member_seed(cfg: Config, index: int) -> int:
    """Participant `index`'s own seed (initialisation, zoo pretraining): distinct, and fixed by the run seed."""
    return cfg.seed * 1000 + index


def build_participant(cfg: Config, index: int, data: Dataset) -> Participant:
    """Participant `index`: its model (seeded), preprocessing, dtype and device; not yet pretrained.

    Called in the driver by the local engine and inside each actor by the Ray swarm.
    """
    spec = cfg.participants[index]
    dtype = getattr(torch, cfg.dtype)
    device = resolve_device(cfg.device)
    model = create_model(spec, num_classes=data.num_classes, in_chans=data.channels, seed=member_seed(cfg, index))
    model = model.to(device=device, dtype=dtype)
    prep = preprocess_for(model, spec, in_chans=data.channels, image_size=data.image_size, dtype=dtype)
    autocast = getattr(torch, cfg.autocast) if cfg.autocast else None
    return Participant(spec.name, model, prep, device, autocast=autocast)


def pretrain_if_zoo(cfg: Config, index: int, participant: Participant, data: Dataset) -> None:
    spec = cfg.participants[index]
    if default_weights(spec) == "zoo":
        zoo.pretrain(spec, participant, data, cfg.zoo, cfg.data.augment, seed=member_seed(cfg, index))


def check_classes(widths: dict[str, int], num_classes: int) -> None:
    """Participants must agree with each other, and with the data, on the classes."""
    if len(set(widths.values())) > 1 or num_classes not in widths.values():
        listed = ", ".join(f"{k}={v}" for k, v in widths.items())
        raise UserError(f"participants disagree on the number of classes ({listed}; the data has {num_classes})")


def build_participants(cfg: Config, data: Dataset) -> list[Participant]:
    participants = [build_participant(cfg, i, data) for i in range(len(cfg.participants))]
    # Every model is checked before the (slow) pretraining of any.
    check_classes({p.name: p.output_width(data.channels, data.image_size) for p in participants}, data.num_classes)
    for i, p in enumerate(participants):
        pretrain_if_zoo(cfg, i, p, data)
    return participants


@dataclass
class ArmResult:
    steps: int
    role_matrix: list[list[list[int]]]  # per epoch
    teach_share: list[list[float]]  # per epoch
    final_train_loss: list[float]  # mean share over the last epoch
    val_acc: list[list[float]]  # per epoch
    best_epoch: list[int]
    seconds: float


def train_arm(engine: LocalEngine, cfg: Config, data: Dataset, arm: str, loss: LossSpec, log) -> ArmResult:
    """Train every participant for cfg.transfer.epochs from the "start" snapshot; keep each one's
    best-on-validation epoch (selection: best_val) or its last."""
    t0 = time.perf_counter()
    n = len(cfg.participants)
    engine.restore("start")
    engine.reset_optimizers(
        cfg.transfer.optimizer,
        [p.lr for p in cfg.participants],
        [p.weight_decay if p.weight_decay is not None else cfg.transfer.weight_decay for p in cfg.participants],
    )
    steps = steps_per_epoch(len(data.splits["train"]), cfg.transfer.batch_size)
    if steps == 0:
        raise UserError(f"transfer.batch_size {cfg.transfer.batch_size} is larger than the {len(data.splits['train'])} transfer samples")
    best_acc, best_epoch = [-1.0] * n, [0] * n
    shares, val_history, matrices = [], [], []
    names = [p.name for p in cfg.participants]
    val_labels = data.labels[data.splits["val"]]
    val_start = engine.predict("val", cfg.eval_batch_size)  # flips are counted against these
    log({"arm": arm, "epoch": -1, "event": "eval", "val_acc": dict(zip(names, accuracy(val_start, val_labels)))})
    bar = progress(total=cfg.transfer.epochs * steps, desc=arm, unit="step")
    for epoch in range(cfg.transfer.epochs):
        matrix = torch.zeros(n, n, dtype=torch.long)
        losses = torch.zeros(n, dtype=torch.float64)
        for step in range(steps):
            result = engine.train_step(epoch, step, loss)
            matrix += role_matrix(result.teachers, n)
            losses += torch.tensor(result.losses, dtype=torch.float64)
            if step % cfg.transfer.log_every == 0 or step == steps - 1:
                log({"arm": arm, "epoch": epoch, "step": step, "global_step": epoch * steps + step,
                     "loss": sum(result.losses), "losses": dict(zip(names, result.losses)),
                     "taught": dict(zip(names, torch.bincount(result.teachers[result.teachers >= 0], minlength=n).tolist()))})
            bar.set_description(f"{arm} epoch {epoch + 1}, loss {sum(result.losses):.3f}")
            bar.update()
        val_preds = engine.predict("val", cfg.eval_batch_size)
        val = accuracy(val_preds, val_labels)
        gained, lost = flips(val_start, val_preds, val_labels)
        share = teach_share(matrix, steps * cfg.transfer.batch_size)
        log({"arm": arm, "epoch": epoch, "event": "eval", "global_step": (epoch + 1) * steps - 1,
             "val_acc": dict(zip(names, val)), "val_positive_flips": dict(zip(names, gained)),
             "val_negative_flips": dict(zip(names, lost)), "teach_share": dict(zip(names, share)),
             "role_matrix": matrix.tolist()})
        shares.append(share)
        matrices.append(matrix.tolist())
        val_history.append(val)
        improved = [i for i in range(n) if cfg.selection == "last" or val[i] > best_acc[i]]
        for i in improved:
            best_acc[i], best_epoch[i] = val[i], epoch + 1
        if cfg.selection == "best_val" and cfg.transfer.epochs > 1:
            engine.snapshot(f"best-{arm}", improved)
    bar.close()
    if cfg.selection == "best_val" and cfg.transfer.epochs > 1:
        engine.restore(f"best-{arm}")
    return ArmResult(
        steps=cfg.transfer.epochs * steps,
        role_matrix=matrices,
        teach_share=shares,
        final_train_loss=(losses / steps).tolist(),
        val_acc=val_history,
        best_epoch=best_epoch,
        seconds=time.perf_counter() - t0,
    )


def make_engine(name: str, cfg: Config, data: Dataset, address: str | None = None):
    """`local`: every participant in this process. `ray`: one Ray actor per participant."""
    if name == "ray":
        from kt_swarm.swarm import RaySwarm

        return RaySwarm(cfg, data, address=address)
    return LocalEngine(build_participants(cfg, data), data, seed=cfg.seed, batch_size=cfg.transfer.batch_size,
                       augment=cfg.data.augment)


def run(cfg: Config, out: RunDir, engine_name: str = "ray", address: str | None = None,
        on_record: Callable[[dict], None] | None = None) -> dict:
    """The main job. Writes config.yaml, metrics.jsonl, summary.json and report.{png,md} into `out`,
    tracks the run in W&B when the config asks, and returns the summary. `on_record` also receives
    every metrics record (a sweep trial reports its epochs to Ray Tune through it)."""
    import yaml

    t_start = time.perf_counter()
    out.write_text("config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    for spec in cfg.participants:
        check_model_name(spec)
    data = load_dataset(cfg.data)
    if any(default_weights(p) == "zoo" for p in cfg.participants) and len(data.splits["pretrain"]) == 0:
        raise UserError("participants use weights: zoo but data.pretrain_fraction is 0 (no pretraining split)")
    names = [p.name for p in cfg.participants]
    tracker = Tracker(cfg, out.path, names)

    def log(record: dict) -> None:
        out.log(record)
        tracker.log(record)
        if on_record is not None:
            on_record(record)

    try:
        t0 = time.perf_counter()
        engine = make_engine(engine_name, cfg, data, address)
        t_zoo = time.perf_counter() - t0
        try:
            test_labels = data.labels[data.splits["test"]]
            k = 5 if data.num_classes > 5 else 1  # top-5 only where it is not trivially 100%

            def test(arm: str) -> torch.Tensor:
                preds = engine.predict("test", cfg.eval_batch_size, k)
                log({"arm": arm, "event": "test", "test_acc": dict(zip(names, accuracy(preds, test_labels))),
                     **({"test_top5_acc": dict(zip(names, topk_accuracy(preds, test_labels)))} if k == 5 else {})})
                return preds

            engine.snapshot("start")
            start = test("start")
            t = cfg.transfer
            transfer = train_arm(engine, cfg, data, "transfer", LossSpec(t.temperature, t.weight, t.detach_teacher), log)
            end = test("transfer")
            control, end_control = None, None
            if cfg.control:
                control = train_arm(engine, cfg, data, "control", LossSpec(t.temperature, 0.0, t.detach_teacher), log)
                end_control = test("control")
            nodes = engine.nodes()
        finally:
            engine.close()
        summary = summarize(cfg, data, names, test_labels, (start, end, end_control), (transfer, control), nodes, engine.name)
        summary["placement_group"] = engine.placement_group
        summary["seconds"] = {"zoo_and_setup": t_zoo, "transfer": transfer.seconds,
                              "control": control.seconds if control else None, "total": time.perf_counter() - t_start}
        out.write_json("summary.json", summary)
        write_report(out.path)
        tracker.finish(summary)
    except BaseException:
        tracker.close(failed=True)
        raise
    return summary


def summarize(cfg: Config, data: Dataset, names: list[str], labels: torch.Tensor, preds: tuple, arms: tuple,
              nodes: list[str], engine: str) -> dict:
    """summary.json from the test predictions ([N, n, k] at the start, after transfer, after control)."""
    (start, end, end_control), (transfer, control) = preds, arms
    top5 = start.shape[-1] == 5
    before, after = accuracy(start, labels), accuracy(end, labels)
    gained, lost = flips(start, end, labels)
    comp = complementary(start, labels)
    top_before, top_after = topk_accuracy(start, labels), topk_accuracy(end, labels)
    n = len(names)
    if end_control is not None:
        acc_control, top_control = accuracy(end_control, labels), topk_accuracy(end_control, labels)
        c_gained, c_lost = flips(start, end_control, labels)
    else:
        acc_control = top_control = c_gained = c_lost = [None] * n
    deltas = [a - b for a, b in zip(after, before)]
    selected = [transfer.val_acc[transfer.best_epoch[i] - 1][i] for i in range(n)]
    return {
        "engine": engine,
        "steps": transfer.steps,
        "seed": cfg.seed,
        "gradient_mode": "detached" if cfg.transfer.detach_teacher else "exact",
        "num_classes": data.num_classes,
        "success_rate": success_rate(deltas),
        "success_rate_vs_control": success_rate([a - c for a, c in zip(after, acc_control)]) if control else None,
        # What sweeps optimise: the validation accuracy each participant was selected at, averaged.
        "val_acc_mean": sum(selected) / n,
        "participants": {
            name: {
                "acc_before": before[i],
                "acc_after": after[i],
                "acc_control": acc_control[i],
                "delta": deltas[i],
                "delta_vs_control": after[i] - acc_control[i] if control else None,
                "top5_before": top_before[i] if top5 else None,
                "top5_after": top_after[i] if top5 else None,
                "top5_control": top_control[i] if top5 and control else None,
                "positive_flips": gained[i],
                "negative_flips": lost[i],
                "control_positive_flips": c_gained[i],
                "control_negative_flips": c_lost[i],
                "complementary": comp[i],
                "teach_share": transfer.teach_share[-1][i],
                "teach_share_per_epoch": [s[i] for s in transfer.teach_share],
                "final_train_loss": transfer.final_train_loss[i],
                "node": nodes[i],
                "best_epoch": transfer.best_epoch[i],
                "val_acc": [v[i] for v in transfer.val_acc],
                "val_acc_selected": selected[i],
                "control_best_epoch": control.best_epoch[i] if control else None,
            }
            for i, name in enumerate(names)
        },
        "role_matrix": transfer.role_matrix[-1],
        "role_matrix_per_epoch": transfer.role_matrix,
        "data": {"source": data.source, "skipped_corrupt": data.skipped,
                 **{f"{k}_samples": len(v) for k, v in data.splits.items()}},
    }


def format_table(summary: dict) -> str:
    """The readable end-of-run table (fits 100 columns)."""
    rows = [f"{'participant':<16} {'before':>7} {'after':>7} {'control':>7} {'delta':>7} {'vs ctrl':>7} "
            f"{'+flips':>7} {'-flips':>7} {'taught':>7} {'loss':>7}"]
    for name, p in summary["participants"].items():
        rows.append(
            f"{name[:16]:<16} {pct(p['acc_before']):>7} {pct(p['acc_after']):>7} {pct(p['acc_control']):>7} "
            f"{pct(p['delta'], True):>7} {pct(p['delta_vs_control'], True):>7} "
            f"{pct(p['positive_flips']):>7} {pct(p['negative_flips']):>7} "
            f"{100 * p['teach_share']:6.1f}% {p['final_train_loss']:7.3f}"
        )
    vs_control = summary["success_rate_vs_control"]
    rows.append(
        f"test % (flips vs start); success rate {100 * summary['success_rate']:.0f}%"
        + ("" if vs_control is None else f", {100 * vs_control:.0f}% above control")
        + f"; {summary['engine']}, {summary['steps']} steps, {summary['gradient_mode']}, {summary['seconds']['total']:.0f} s"
    )
    return "\n".join(rows)
