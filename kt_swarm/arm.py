"""One arm: its training loop over the epochs, validation after each, and selection per participant.

The arm's start is a candidate like every epoch (selection: best_val): its validation metric is measured
before the first step, and a participant leaves it only for an epoch strictly better on validation. One
whose training only hurt it there ends the arm with its start weights (best_epoch 0), in every arm alike.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from kt_swarm.checkpoint import Checkpoints
from kt_swarm.config import Config
from kt_swarm.data import Dataset, batches_in
from kt_swarm.engine import Engine
from kt_swarm.errors import UserError
from kt_swarm.metrics import HEADLINE, flips, headline, teach_share
from kt_swarm.objectives import LossSpec
from kt_swarm.participant import lr_scale
from kt_swarm.progress import progress
from kt_swarm.roles import fit_temperature, trust_matrix

logger = logging.getLogger("kt_swarm")


@dataclass
class ArmResult:
    steps: int
    role_matrix: list[list[list[float]]]  # per epoch: R[k][j] = sum of k's teaching weights toward j
    teach_share: list[list[float]]  # per epoch
    final_train_loss: list[float]  # mean share over the last epoch
    val: list[list[float]]  # per epoch trained: each participant's headline metric on validation
    best_epoch: list[int]  # the epoch each participant was selected at; 0: its start, kept
    best_files: list[str | None]  # each participant's selected weights, under checkpoints/ (start/<name>.pt: kept)
    skipped_steps: int
    seconds: float
    selected_val: list[float] = field(default_factory=list)  # validation headline metric at best_epoch
    role_matrix_by_domain: list[dict[str, list]] = field(default_factory=list)  # text: per epoch, each domain's


@dataclass
class ArmState:
    """Where an arm stands: everything needed to continue it exactly (saved in every checkpoint)."""

    arm: str
    n: int
    epoch: int = 0
    step: int = 0  # the next step of `epoch`
    matrix: torch.Tensor | None = None  # role matrix of this epoch so far
    matrix_by: torch.Tensor | None = None  # text: [domains, N, N] of this epoch so far
    losses: torch.Tensor | None = None  # summed shares of this epoch so far
    good_steps: int = 0  # steps of this epoch not skipped
    val_start: torch.Tensor | None = None  # validation predictions at the start (flips count against them)
    score_temperatures: list[float] | None = None  # transfer.calibrate: each participant's, fit at the start
    best_val: list[float] = field(default_factory=list)  # validation headline metric of the selected epoch
    best_epoch: list[int] = field(default_factory=list)
    best_files: list[str | None] = field(default_factory=list)
    shares: list[list[float]] = field(default_factory=list)
    matrices: list[list[list[int]]] = field(default_factory=list)
    matrices_by: list[dict[str, list]] = field(default_factory=list)
    val_history: list[list[float]] = field(default_factory=list)
    final_train_loss: list[float] = field(default_factory=list)
    skipped: int = 0
    bad_in_a_row: int = 0
    seconds: float = 0.0

    def __post_init__(self):
        if self.matrix is None:
            self.new_epoch()
        self.best_val = self.best_val or [-1.0] * self.n
        self.best_epoch = self.best_epoch or [0] * self.n
        self.best_files = self.best_files or [None] * self.n

    def new_epoch(self) -> None:
        self.matrix = torch.zeros(self.n, self.n, dtype=torch.float64)
        self.matrix_by = None
        self.losses = torch.zeros(self.n, dtype=torch.float64)
        self.good_steps = 0


def train_arm(engine: Engine, cfg: Config, data: Dataset, st: ArmState, loss: LossSpec, log, ckpt: Checkpoints,
              save: Callable[[str], None] = lambda name: None, split: str = "train") -> ArmResult:
    """Train every participant for cfg.transfer.epochs on batches from `split`, continuing from `st`;
    keep each one's best-on-validation epoch, its start included (selection: best_val), or its last.
    `save(name)` writes a checkpoint set every checkpoint.every_steps steps and at every epoch end."""
    t0, seconds0 = time.perf_counter(), st.seconds
    arm, names = st.arm, [p.name for p in cfg.participants]
    steps = batches_in(data, "train", cfg.transfer.batch_size)
    val_labels = data.truth(data.splits["val"])
    if st.val_start is None:
        st.val_start = engine.predict("val", cfg.eval_batch_size)
        if cfg.transfer.calibrate:  # temperature scaling on validation, once per arm (a resumed arm keeps it)
            st.score_temperatures = [fit_temperature(z, val_labels) for z in engine.logits("val", cfg.eval_batch_size)]
        start = measure(data, st.val_start, val_labels)
        if cfg.selection == "best_val":  # the start is the first candidate: the weights of the start set
            st.best_val, st.best_files = start, [ckpt.member("start", i) for i in range(st.n)]
        log({"arm": arm, "epoch": -1, "event": "eval", f"val_{HEADLINE[data.task]}": dict(zip(names, start)),
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
                if result.roles_by_domain is not None:
                    st.matrix_by = result.roles_by_domain if st.matrix_by is None else st.matrix_by + result.roles_by_domain
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
    if cfg.selection == "best_val":  # back to each one's selected weights where that was not the last epoch
        back = [i for i in range(st.n) if st.best_epoch[i] != cfg.transfer.epochs]
        if back:
            engine.load([{"model": ckpt.load_weights(st.best_files[i], i)} for i in back], back)
        for i in back:
            if st.best_epoch[i] == 0:
                logger.info("%s: '%s' keeps its start (no epoch improved on validation)", arm, names[i])
    return ArmResult(
        steps=cfg.transfer.epochs * steps,
        role_matrix=st.matrices,
        teach_share=st.shares,
        final_train_loss=st.final_train_loss,
        val=st.val_history,
        best_epoch=st.best_epoch,
        best_files=st.best_files,
        skipped_steps=st.skipped,
        seconds=st.seconds,
        selected_val=st.best_val,
        role_matrix_by_domain=st.matrices_by,
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


def end_epoch(engine: Engine, cfg: Config, data: Dataset, st: ArmState, steps: int, val_labels: torch.Tensor, log,
              ckpt: Checkpoints) -> None:
    """Evaluate on validation, keep strictly improved participants' weights as their best, start the next epoch."""
    names = [p.name for p in cfg.participants]
    val_preds = engine.predict("val", cfg.eval_batch_size)
    val = measure(data, val_preds, val_labels)
    gained, lost = flips(st.val_start, val_preds, val_labels, data.task)
    share = teach_share(st.matrix, st.good_steps * cfg.transfer.batch_size * units_per_image(cfg, data))
    by_domain = dict(zip(data.classes, st.matrix_by.tolist())) if st.matrix_by is not None else {}
    log({"arm": st.arm, "epoch": st.epoch, "event": "eval", "global_step": (st.epoch + 1) * steps - 1,
         f"val_{HEADLINE[data.task]}": dict(zip(names, val)),
         **({"val_positive_flips": dict(zip(names, gained)), "val_negative_flips": dict(zip(names, lost))} if gained else {}),
         "teach_share": dict(zip(names, share)), "role_matrix": st.matrix.tolist(),
         **({"role_matrix_by_domain": by_domain} if by_domain else {})})
    st.shares.append(share)
    st.matrices.append(st.matrix.tolist())
    if by_domain:
        st.matrices_by.append(by_domain)
    st.val_history.append(val)
    st.final_train_loss = (st.losses / max(st.good_steps, 1)).tolist()
    improved = [i for i in range(st.n) if cfg.selection == "last" or val[i] > st.best_val[i]]
    for i in improved:
        st.best_val[i], st.best_epoch[i] = val[i], st.epoch + 1
    if cfg.selection == "best_val" and improved:
        for i, weights in zip(improved, engine.weights(improved)):
            st.best_files[i] = ckpt.save_weights(f"best/{st.arm}", i, weights, tag=f"-e{st.epoch + 1}")
    st.epoch += 1
    st.step = 0
    st.new_epoch()


def measure(data: Dataset, preds: torch.Tensor, target: torch.Tensor) -> list[float]:
    """Each participant's headline metric (accuracy, mIoU, CC): what selection and trusted teachers compare."""
    return headline(preds, target, data.task, data.num_classes)


def units_per_image(cfg: Config, data: Dataset) -> float:
    """How many units an image holds on average (the role matrix counts units): 1, or a segmentation's
    labelled pixels per training image (pixel units), or a block's tokens that have a next one (token units)."""
    train = data.splits["train"]
    if cfg.transfer.unit == "token":
        return float((data.target(train) >= 0).sum()) / len(train)
    if cfg.transfer.unit != "pixel":
        return 1.0
    return data.labelled_pixels("train") / len(train)
