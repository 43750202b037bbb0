"""The run's state as a checkpoint holds it (RunState), and the way into it: the start set every arm begins
from, an arm's fresh start, and every participant restored from a set."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from kt_swarm.arm import ArmState
from kt_swarm.checkpoint import Checkpoints
from kt_swarm.config import Config
from kt_swarm.engine import Engine


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
        arms = {arm: _renamed(r, {"val_acc": "val"}) for arm, r in d["arms"].items()}
        for r in arms.values():  # written before selection kept its value
            r.setdefault("selected_val", [r["val"][e - 1][i] if e else None for i, e in enumerate(r["best_epoch"])])
        current = ArmState(**_renamed(d["current"], {"best_acc": "best_val"})) if d["current"] else None
        return cls(**{**d, "arms": arms, "current": current})


def _renamed(d: dict, old_to_new: dict[str, str]) -> dict:
    """A checkpoint written before a field was renamed, read with today's field names."""
    return {old_to_new.get(k, k): v for k, v in d.items()}


def fresh_optimizers(engine: Engine, cfg: Config) -> None:
    engine.reset_optimizers(
        cfg.transfer.optimizer,
        [p.lr for p in cfg.participants],
        [p.weight_decay if p.weight_decay is not None else cfg.transfer.weight_decay for p in cfg.participants],
    )


def restore(engine: Engine, cfg: Config, ckpt: Checkpoints, name: str) -> dict:
    """Every participant back to checkpoint set `name` (weights, optimizer, RNG); returns its run state."""
    run_state, states = ckpt.load_set(name)
    fresh_optimizers(engine, cfg)  # the set's optimizer state, if any, is loaded into these
    for i, state in enumerate(states):
        engine.load([state], [i])
    return run_state


def save_start(engine: Engine, ckpt: Checkpoints, metrics_bytes: int = 0) -> None:
    """The start set: every participant as it enters the swarm. Each arm begins from it (and a participant
    that no epoch improved on validation ends the arm with it); never pruned."""
    ckpt.save("start", engine.states(), RunState().to_dict(), metrics_bytes, at={"arm": None, "epoch": 0, "step": 0})


def fresh_arm(engine: Engine, cfg: Config, ckpt: Checkpoints, arm: str) -> ArmState:
    restore(engine, cfg, ckpt, "start")
    return ArmState(arm, len(cfg.participants))
