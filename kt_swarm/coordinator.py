"""A whole run: data, participants (zoo included), accuracy before, the transfer arm,
the CE-only control arm, selection on validation, accuracy after, summary.json; checkpoints
along the way, and the way back to the last one after a crash or a lost actor."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import torch

from kt_swarm.build import build_participant, check_classes, pretrain_if_zoo
from kt_swarm.checkpoint import Checkpoints, config_digest
from kt_swarm.config import Config, to_dict
from kt_swarm.data import Dataset, batches_in, load_dataset
from kt_swarm.errors import ParticipantLost, UserError
from kt_swarm.local import LocalEngine
from kt_swarm.metrics import HEADLINE, flips, headline, task_metrics, teach_share
from kt_swarm.models import check_model_name, trains_first
from kt_swarm.objectives import LossSpec
from kt_swarm.participant import lr_scale
from kt_swarm.progress import progress
from kt_swarm.report import write_report
from kt_swarm.roles import fit_temperature, trust_matrix
from kt_swarm.rundir import RunDir
from kt_swarm.summary import summarize
from kt_swarm.tracking import Tracker

logger = logging.getLogger("kt_swarm")


@dataclass
class ArmResult:
    steps: int
    role_matrix: list[list[list[float]]]  # per epoch: R[k][j] = sum of k's teaching weights toward j
    teach_share: list[list[float]]  # per epoch
    final_train_loss: list[float]  # mean share over the last epoch
    val_acc: list[list[float]]  # per epoch
    best_epoch: list[int]
    best_files: list[str | None]  # each participant's selected weights, under checkpoints/
    skipped_steps: int
    seconds: float


@dataclass
class ArmState:
    """Where an arm stands: everything needed to continue it exactly (saved in every checkpoint)."""

    arm: str
    n: int
    epoch: int = 0
    step: int = 0  # the next step of `epoch`
    matrix: torch.Tensor | None = None  # role matrix of this epoch so far
    losses: torch.Tensor | None = None  # summed shares of this epoch so far
    good_steps: int = 0  # steps of this epoch not skipped
    val_start: torch.Tensor | None = None  # validation predictions at the start (flips count against them)
    score_temperatures: list[float] | None = None  # transfer.calibrate: each participant's, fit at the start
    best_acc: list[float] = field(default_factory=list)
    best_epoch: list[int] = field(default_factory=list)
    best_files: list[str | None] = field(default_factory=list)
    shares: list[list[float]] = field(default_factory=list)
    matrices: list[list[list[int]]] = field(default_factory=list)
    val_history: list[list[float]] = field(default_factory=list)
    final_train_loss: list[float] = field(default_factory=list)
    skipped: int = 0
    bad_in_a_row: int = 0
    seconds: float = 0.0

    def __post_init__(self):
        if self.matrix is None:
            self.new_epoch()
        self.best_acc = self.best_acc or [-1.0] * self.n
        self.best_epoch = self.best_epoch or [0] * self.n
        self.best_files = self.best_files or [None] * self.n

    def new_epoch(self) -> None:
        self.matrix = torch.zeros(self.n, self.n, dtype=torch.float64)
        self.losses = torch.zeros(self.n, dtype=torch.float64)
        self.good_steps = 0


@dataclass
class RunState:
    """The coordinator's side of a checkpoint: finished arms, their test predictions, the arm under way."""

    preds: dict[str, torch.Tensor] = field(default_factory=dict)  # test [N, n, k]: start and each arm
    examples: dict[str, torch.Tensor] = field(default_factory=dict)  # dense tasks: the report's first test pictures
    arms: dict[str, dict] = field(default_factory=dict)  # finished arms' ArmResult fields
    current: ArmState | None = None
    restarts: dict[str, int] = field(default_factory=dict)
    resumes: int = 0

    def to_dict(self) -> dict:
        return {**asdict(self), "current": asdict(self.current) if self.current else None}

    @classmethod
    def from_dict(cls, d: dict) -> "RunState":
        return cls(**{**d, "current": ArmState(**d["current"]) if d["current"] else None})


def fresh_optimizers(engine, cfg: Config) -> None:
    engine.reset_optimizers(
        cfg.transfer.optimizer,
        [p.lr for p in cfg.participants],
        [p.weight_decay if p.weight_decay is not None else cfg.transfer.weight_decay for p in cfg.participants],
    )


def restore(engine, cfg: Config, ckpt: Checkpoints, name: str) -> dict:
    """Every participant back to checkpoint set `name` (weights, optimizer, RNG); returns its run state."""
    run_state, states = ckpt.load_set(name)
    fresh_optimizers(engine, cfg)  # the set's optimizer state, if any, is loaded into these
    for i, state in enumerate(states):
        engine.load([state], [i])
    return run_state


def save_start(engine, ckpt: Checkpoints, metrics_bytes: int = 0) -> None:
    """The start set: every participant as it enters the swarm. Each arm begins from it; never pruned."""
    ckpt.save("start", engine.states(), RunState().to_dict(), metrics_bytes, at={"arm": None, "epoch": 0, "step": 0})


def fresh_arm(engine, cfg: Config, ckpt: Checkpoints, arm: str) -> ArmState:
    restore(engine, cfg, ckpt, "start")
    return ArmState(arm, len(cfg.participants))


def train_arm(engine, cfg: Config, data: Dataset, st: ArmState, loss: LossSpec, log, ckpt: Checkpoints,
              save: Callable[[str], None] = lambda name: None, split: str = "train") -> ArmResult:
    """Train every participant for cfg.transfer.epochs on batches from `split`, continuing from `st`;
    keep each one's best-on-validation epoch (selection: best_val) or its last. `save(name)` writes a
    checkpoint set every checkpoint.every_steps steps and at every epoch end."""
    t0, seconds0 = time.perf_counter(), st.seconds
    arm, names = st.arm, [p.name for p in cfg.participants]
    steps = batches_in(data, "train", cfg.transfer.batch_size)
    val_labels = data.target(data.splits["val"])
    if st.val_start is None:
        st.val_start = engine.predict("val", cfg.eval_batch_size)
        if cfg.transfer.calibrate:  # temperature scaling on validation, once per arm (a resumed arm keeps it)
            st.score_temperatures = [fit_temperature(z, val_labels) for z in engine.logits("val", cfg.eval_batch_size)]
        log({"arm": arm, "epoch": -1, "event": "eval", "val_acc": dict(zip(names, measure(data, st.val_start, val_labels))),
             **({"score_temperature": dict(zip(names, st.score_temperatures))} if cfg.transfer.calibrate else {})})
    if st.score_temperatures is not None:
        loss = replace(loss, score_temperatures=tuple(st.score_temperatures))
    if cfg.transfer.trusted_teachers:  # from the arm's start on validation, so a resumed arm trusts the same
        trusted = trust_matrix(measure(data, st.val_start, val_labels))
        loss = replace(loss, trusted=tuple(tuple(row) for row in trusted.tolist()))
    every = cfg.checkpoint.every_steps
    bar = progress(total=cfg.transfer.epochs * steps, initial=st.epoch * steps + st.step, desc=arm, unit="step")
    while st.epoch < cfg.transfer.epochs:
        while st.step < steps:
            result = engine.train_step(st.epoch, st.step, loss, split,
                                       lr_scale(cfg.transfer.schedule, st.epoch * steps + st.step, cfg.transfer.epochs * steps))
            step, st.step = st.step, st.step + 1
            global_step = st.epoch * steps + step
            if result.bad:
                skip_step(cfg, st, step, global_step, [names[i] for i in result.bad], log)
            else:
                st.bad_in_a_row = 0
                st.matrix += result.roles
                st.losses += torch.tensor(result.losses, dtype=torch.float64)
                st.good_steps += 1
                if step % cfg.transfer.log_every == 0 or step == steps - 1:
                    log({"arm": arm, "epoch": st.epoch, "step": step, "global_step": global_step,
                         "loss": sum(result.losses), "losses": dict(zip(names, result.losses)),
                         "taught": dict(zip(names, taught(result.roles)))})
                bar.set_description(f"{arm} epoch {st.epoch + 1}, loss {sum(result.losses):.3f}")
            bar.update()
            st.seconds = seconds0 + time.perf_counter() - t0
            if every and (global_step + 1) % every == 0 and st.step < steps:  # epoch ends are saved below
                save(f"{arm}-{global_step + 1:07d}")
        end_epoch(engine, cfg, data, st, steps, val_labels, log, ckpt)
        st.seconds = seconds0 + time.perf_counter() - t0
        save(f"{arm}-{st.epoch * steps:07d}")
    bar.close()
    if cfg.selection == "best_val" and cfg.transfer.epochs > 1:
        engine.load([{"model": ckpt.load_weights(f, i)} for i, f in enumerate(st.best_files)])
    return ArmResult(
        steps=cfg.transfer.epochs * steps,
        role_matrix=st.matrices,
        teach_share=st.shares,
        final_train_loss=st.final_train_loss,
        val_acc=st.val_history,
        best_epoch=st.best_epoch,
        best_files=st.best_files,
        skipped_steps=st.skipped,
        seconds=st.seconds,
    )


def taught(roles: torch.Tensor) -> list[float]:
    """Samples each participant taught in a step, weighted: its teaching weights over its N - 1 students
    (with best, the number of samples it taught)."""
    n = roles.shape[0]
    return ((roles.sum(dim=1) - roles.diagonal()) / max(n - 1, 1)).tolist()


def skip_step(cfg: Config, st: ArmState, step: int, global_step: int, culprits: list[str], log) -> None:
    """A NaN/Inf step was dropped by every participant; too many in a row stop the run (checkpoints kept)."""
    st.skipped += 1
    st.bad_in_a_row += 1
    log({"arm": st.arm, "epoch": st.epoch, "step": step, "global_step": global_step, "event": "skipped",
         "participants": culprits, "in_a_row": st.bad_in_a_row})
    who = ", ".join(f"'{c}'" for c in culprits)
    logger.warning("%s epoch %d step %d skipped by every participant: NaN/Inf from %s (%d in a row)",
                   st.arm, st.epoch + 1, step, who, st.bad_in_a_row)
    if st.bad_in_a_row >= cfg.fault.max_bad_steps:
        raise UserError(f"participant{'s' if len(culprits) > 1 else ''} {who}: NaN or Inf loss or gradient in "
                        f"{st.bad_in_a_row} steps in a row (fault.max_bad_steps); stopped at {st.arm} epoch "
                        f"{st.epoch + 1} step {step}, checkpoints kept")


def end_epoch(engine, cfg: Config, data: Dataset, st: ArmState, steps: int, val_labels: torch.Tensor, log, ckpt: Checkpoints) -> None:
    """Evaluate on validation, keep improved participants' weights as their best, start the next epoch."""
    names = [p.name for p in cfg.participants]
    val_preds = engine.predict("val", cfg.eval_batch_size)
    val = measure(data, val_preds, val_labels)
    gained, lost = flips(st.val_start, val_preds, val_labels, data.task)
    share = teach_share(st.matrix, st.good_steps * cfg.transfer.batch_size * units_per_image(cfg, data))
    log({"arm": st.arm, "epoch": st.epoch, "event": "eval", "global_step": (st.epoch + 1) * steps - 1,
         "val_acc": dict(zip(names, val)),
         **({"val_positive_flips": dict(zip(names, gained)), "val_negative_flips": dict(zip(names, lost))} if gained else {}),
         "teach_share": dict(zip(names, share)), "role_matrix": st.matrix.tolist()})
    st.shares.append(share)
    st.matrices.append(st.matrix.tolist())
    st.val_history.append(val)
    st.final_train_loss = (st.losses / max(st.good_steps, 1)).tolist()
    improved = [i for i in range(st.n) if cfg.selection == "last" or val[i] > st.best_acc[i]]
    for i in improved:
        st.best_acc[i], st.best_epoch[i] = val[i], st.epoch + 1
    if cfg.selection == "best_val" and improved:
        for i, weights in zip(improved, engine.weights(improved)):
            st.best_files[i] = ckpt.save_weights(f"best/{st.arm}", i, weights, tag=f"-e{st.epoch + 1}")
    st.epoch += 1
    st.step = 0
    st.new_epoch()


def measure(data: Dataset, preds: torch.Tensor, target: torch.Tensor) -> list[float]:
    """Each participant's headline metric (accuracy, mIoU, CC): what selection and trusted teachers compare."""
    return headline(preds, target, data.task, data.num_classes)


EXAMPLES = 4  # test pictures report.png shows for a dense task


def pictures(outputs: torch.Tensor, task: str) -> torch.Tensor:
    """[N, k, ...] dense outputs -> uint8 [N, k, H, W] pictures: each pixel's class, or the map scaled to 0-255."""
    if task == "segmentation":
        return outputs.argmax(dim=2).to(torch.uint8)
    maps = outputs.flatten(2).softmax(dim=-1)
    maps = maps / maps.amax(dim=-1, keepdim=True)
    return (255 * maps).round().to(torch.uint8).view(outputs.shape)


def write_examples(out: RunDir, data: Dataset, examples: dict[str, torch.Tensor]) -> None:
    """examples.npz: the first test images, their truth, and every participant's picture after each arm."""
    import io

    import numpy as np

    ids = data.splits["test"][:EXAMPLES]
    truth = data.target(ids)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=data.images[ids].numpy(), truth=truth.numpy(),
                        **{f"arm_{arm}": v.numpy() for arm, v in examples.items()})
    out.write_bytes("examples.npz", buffer.getvalue())


def units_per_image(cfg: Config, data: Dataset) -> float:
    """How many units an image holds on average (the role matrix counts units): 1, or a segmentation's
    labelled pixels per training image (pixel units)."""
    if cfg.transfer.unit != "pixel":
        return 1.0
    return float((data.targets[data.splits["train"]] != data.ignore_index).sum()) / len(data.splits["train"])


def check_engine(name: str, cfg: Config) -> None:
    """What an engine cannot host, in one line before anything starts: a DeepSpeed participant needs a
    process of its own (one torch.distributed group per process), so only the Ray engine hosts it."""
    for p in cfg.participants:
        if p.deepspeed is not None and name != "ray":
            raise UserError(f"participant '{p.name}': a DeepSpeed participant runs in its own Ray actor; "
                            f"use --engine ray (not {name})")


def make_engine(name: str, cfg: Config, data: Dataset, address: str | None = None, pretrain: bool = True):
    """`local`: every participant in this process. `ray`: one Ray actor per participant. Without
    `pretrain`, zoo members are left untrained (a resumed run loads its checkpoint into them)."""
    if name == "ray":
        from kt_swarm.swarm import RaySwarm

        return RaySwarm(cfg, data, address=address, pretrain=pretrain)
    participants = [build_participant(cfg, i, data) for i in range(len(cfg.participants))]
    check_classes({p.name: p.output_width(data.channels, data.image_size) for p in participants}, data.num_classes)
    if pretrain:  # every model is checked (above) before the slow pretraining of any
        for i, p in enumerate(participants):
            pretrain_if_zoo(cfg, i, p, data)
    return LocalEngine(participants, data, seed=cfg.seed, batch_size=cfg.transfer.batch_size, augment=cfg.data.augment)


def arms(cfg: Config) -> list[tuple[str, LossSpec, str]]:
    """(name, loss, split) of every arm, in order: the transfer arm, then the baselines. The control arm
    trains on the labelled part of the transfer split only; self-training sees the transfer arm's data."""
    t = cfg.transfer
    names = [p.name for p in cfg.participants]
    transfer = LossSpec(strategy=t.strategy, scores=t.scores, temperature=t.temperature, weight=t.weight,
                        detach_teacher=t.detach_teacher, teacher=names.index(t.teacher) if t.strategy == "kd" else None,
                        pseudo_threshold=t.pseudo_threshold, task=cfg.task, unit=t.unit)
    return ([("transfer", transfer, "train")]
            + ([("control", replace(transfer, strategy="none"), "labelled")] if cfg.control else [])
            + ([("self_training", replace(transfer, strategy="self_training"), "train")] if cfg.self_training else []))


def advance(engine, cfg: Config, data: Dataset, state: RunState, log, ckpt: Checkpoints, metrics_bytes) -> None:
    """Carry the run from `state` to its end: the start test, then each arm and its test."""
    names = [p.name for p in cfg.participants]
    test_labels = data.target(data.splits["test"])
    k = 5 if data.task == "classification" and data.num_classes > 5 else 1  # top-5 only where it is not trivially 100%

    def test(arm: str) -> None:
        preds = engine.predict("test", cfg.eval_batch_size, k)
        scores = task_metrics(preds, test_labels, data.task, data.num_classes)
        log({"arm": arm, "event": "test", "test_acc": dict(zip(names, scores.pop(HEADLINE[data.task]))),
             **{f"test_{m}" if m != "top5" else "test_top5_acc": dict(zip(names, v)) for m, v in scores.items()}})
        state.preds[arm] = preds
        if data.task != "classification":
            state.examples[arm] = pictures(engine.logits("test", cfg.eval_batch_size, EXAMPLES), data.task)

    def save(name: str) -> None:
        st = state.current
        kept = [f for arm in state.arms.values() for f in arm["best_files"]] + st.best_files
        ckpt.save(name, engine.states(), state.to_dict(), metrics_bytes(), [f for f in kept if f],
                  at={"arm": st.arm, "epoch": st.epoch, "step": st.step})
        logger.debug("checkpoint %s written", name)

    if "start" not in state.preds:
        test("start")
    for arm, loss, split in arms(cfg):
        if arm in state.preds:
            continue
        if state.current is None:
            state.current = fresh_arm(engine, cfg, ckpt, arm)
        # Frozen copies of the arm's start (kl_dp): set again on every entry, as a restored or restarted
        # participant has lost its own; dropped for arms without them.
        engine.set_start_copies((st["model"] for st in ckpt.load_set("start")[1]) if loss.start_copies else None)
        state.arms[arm] = asdict(train_arm(engine, cfg, data, state.current, loss, log, ckpt, save, split))
        state.current = None
        test(arm)


def run_swarm(engine, cfg: Config, data: Dataset, out: RunDir, ckpt: Checkpoints, log) -> RunState:
    """advance() until the run ends, from the last consistent checkpoint when resuming. When a
    participant's actor dies, Ray restarts it; every participant goes back to the last consistent
    checkpoint and the run goes on, up to fault.max_restarts times per participant."""
    names = [p.name for p in cfg.participants]

    def placed() -> None:  # where each participant's process is (it moves when its actor restarts)
        log({"event": "placed", "participants": {n: {"node": node, "pid": pid}
                                                 for n, node, pid in zip(names, engine.nodes(), engine.pids())}})

    reload, lost, event = ckpt.latest, None, "resumed"
    if reload is None:
        state = RunState()
    else:  # --resume: the counters are known before any participant is touched
        state = RunState.from_dict(ckpt.load(ckpt.set_info(reload)["run"], None)["run"])
        state.resumes += 1
    for name, k in engine.setup_restarts.items():  # actors lost before the run began count all the same
        state.restarts[name] = state.restarts.get(name, 0) + k
    moved = True
    while True:
        try:
            if lost is not None:
                engine.recover(lost, state.restarts)
                logger.warning("%s; restarted, continuing from %s (restarts: %s)", lost,
                               f"checkpoint {reload}" if reload else "the start",
                               ", ".join(f"{n} {k}" for n, k in state.restarts.items()))
                lost = None
                if reload is None:  # it died before the start set was written: nothing to restore yet
                    log({"event": "restarted", "checkpoint": None, "restarts": state.restarts})
            if reload is not None:
                loaded = RunState.from_dict(restore(engine, cfg, ckpt, reload))
                out.truncate_metrics(ckpt.set_info(reload)["metrics_bytes"])  # the steps after it run again
                loaded.resumes, loaded.restarts = state.resumes, state.restarts  # they happened all the same
                log({"event": event, "checkpoint": reload, "restarts": loaded.restarts})
                state, reload = loaded, None
            elif ckpt.latest is None:  # a new run: the start set, from which every arm begins
                save_start(engine, ckpt, out.metrics_bytes())
            if moved:
                placed()
                moved = False
            advance(engine, cfg, data, state, log, ckpt, out.metrics_bytes)
            return state
        except ParticipantLost as e:
            lost, reload, event, moved = e, ckpt.latest, "restarted", True


def run(cfg: Config, out: RunDir, engine_name: str = "ray", address: str | None = None,
        on_record: Callable[[dict], None] | None = None) -> dict:
    """The main job. Writes config.yaml, metrics.jsonl, checkpoints/, summary.json and report.{png,md}
    into `out`, tracks the run in W&B when the config asks, and returns the summary. Continues from
    the last checkpoint when `out` was opened to resume. `on_record` also receives every metrics
    record (a sweep trial reports its epochs to Ray Tune through it)."""
    import yaml

    t_start = time.perf_counter()
    check_engine(engine_name, cfg)
    if not out.resume:
        out.write_text("config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    for spec in cfg.participants:
        check_model_name(spec)
    names = [p.name for p in cfg.participants]
    # A damaged or foreign checkpoint is refused here, before anything starts.
    ckpt = Checkpoints(out.path / "checkpoints", config_digest(to_dict(cfg)), names, cfg.checkpoint.keep)
    data = load_dataset(cfg.data, cfg.task)
    if any(trains_first(p) for p in cfg.participants) and len(data.splits["pretrain"]) == 0:
        raise UserError("participants use weights: zoo (or zoo: true) but data.pretrain_fraction is 0 (no pretraining split)")
    for _, _, split in arms(cfg):  # every arm has full batches, before anything trains
        batches_in(data, split, cfg.transfer.batch_size)
    tracker = Tracker(cfg, out.path, names)

    def log(record: dict) -> None:
        out.log(record)
        tracker.log(record)
        if on_record is not None:
            on_record(record)

    try:
        t0 = time.perf_counter()
        engine = make_engine(engine_name, cfg, data, address, pretrain=ckpt.latest is None)
        t_zoo = time.perf_counter() - t0
        try:
            state = run_swarm(engine, cfg, data, out, ckpt, log)
            nodes = engine.nodes()
        finally:
            engine.close()
        results = {arm: ArmResult(**r) for arm, r in state.arms.items()}
        summary = summarize(cfg, data, names, data.target(data.splits["test"]), state.preds, results, nodes, engine.name)
        summary["placement_group"] = engine.placement_group
        summary["forked_from"] = cfg.forked_from
        summary["faults"] = {"restarts": {name: state.restarts.get(name, 0) for name in names},
                             "resumes": state.resumes,
                             "skipped_steps": {arm: r["skipped_steps"] for arm, r in state.arms.items()}}
        summary["checkpoints"] = {"latest": ckpt.latest,
                                  "best": {arm: dict(zip(names, r["best_files"])) for arm, r in state.arms.items()}}
        summary["seconds"] = {"zoo_and_setup": t_zoo, **{arm: r.seconds for arm, r in results.items()},
                              "total": time.perf_counter() - t_start}
        if state.examples:
            write_examples(out, data, state.examples)
        write_report(out.path, summary)
        out.write_json("summary.json", summary)  # last: a run directory with summary.json is finished
        tracker.finish(summary)
    except BaseException:
        tracker.close(failed=True)
        raise
    return summary
