"""`kt-swarm run --fork RUN_DIR --set KEY=VALUE ...`: a new run directory that starts from RUN_DIR's last
checkpoint with changed settings (a lower learning rate after NaN stops, more epochs, another weight).

The source is never written. The new directory gets config.yaml (the source's config with the overrides
and `forked_from`), the source's log up to that checkpoint, and the start set and that set copied under the
new config's digest, with every participant's optimizer taking the new learning rate and weight decay; the
run then continues from it as a resumed run does. Settings that change what the checkpoint holds or what its
steps meant (models, data, seed, dtype, batch size, optimizer, arms) are refused in one line.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from kt_swarm.checkpoint import Checkpoints, config_digest
from kt_swarm.config import Config, load_config, parse_config, to_dict
from kt_swarm.errors import UserError
from kt_swarm.rundir import RunDir

# Per participant, what a fork may change; everything else of a participant is its checkpoint's shape.
PARTICIPANT_FREE = {"lr", "weight_decay"}
FIXED = ["task", "data", "zoo", "seed", "dtype", "control", "self_training", "transfer.batch_size",
         "transfer.optimizer", "transfer.unit"]


def _get(d: dict, dotted: str):
    for key in dotted.split("."):
        d = d[key]
    return d


def check_fork(old: Config, new: Config) -> None:
    a, b = to_dict(old), to_dict(new)
    for key in FIXED:
        if _get(a, key) != _get(b, key):
            raise UserError(f"--fork: '{key}' cannot change (the checkpoint's steps were taken with it); start a new run")
    if len(a["participants"]) != len(b["participants"]):
        raise UserError("--fork: the participants cannot change; start a new run")
    if any(p.model == "given" for p in old.participants) or old.data.factory == "given":
        raise UserError("--fork: the run was handed nn.Modules or data in Python (kt_swarm.run), which the command "
                        "line does not have; start a new run from Python")
    if any(p.deepspeed for p in old.participants):  # its optimizer state is DeepSpeed's, partitioned by rank
        raise UserError("--fork: runs with DeepSpeed participants cannot be forked yet; start a new run")
    for i, (p, q) in enumerate(zip(a["participants"], b["participants"])):
        for key in sorted(set(p) - PARTICIPANT_FREE):
            if p[key] != q[key]:
                raise UserError(f"--fork: 'participants.{i}.{key}' cannot change (only lr and weight_decay can); "
                                f"start a new run")


def _retuned(state: dict, lr: float, weight_decay: float) -> dict:
    """A participant's state with its optimizer's learning rate and weight decay replaced (torch's
    load_state_dict would otherwise bring the old ones back); the schedule scales initial_lr each step."""
    opt = state.get("optimizer")
    if not opt:  # the start set: no optimizer yet
        return state
    groups = [{**g, "lr": lr, "initial_lr": lr, "weight_decay": weight_decay} for g in opt["param_groups"]]
    return {**state, "optimizer": {**opt, "param_groups": groups}}


def prepare_fork(source: Path, overrides: list[str], out: Path) -> tuple[Config, RunDir]:
    """Check, then write the new run directory; returns its config and the RunDir to resume in it."""
    old = load_config(source / "config.yaml")
    raw = yaml.safe_load((source / "config.yaml").read_text())
    raw.pop("forked_from", None)
    new = parse_config(raw, overrides)
    check_fork(old, new)
    names = [p.name for p in old.participants]
    src = Checkpoints(source / "checkpoints", config_digest(to_dict(old)), names, old.checkpoint.keep)
    if src.latest is None:
        raise UserError(f"--fork '{source}' has no checkpoint to start from")
    latest = src.latest
    new.forked_from = {"run": str(source), "checkpoint": latest, "overrides": list(overrides)}
    RunDir(out)  # refuses an existing, non-empty --out before anything is written
    try:
        _copy(src, latest, new, out, source)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # nothing half-written
        raise
    return new, RunDir(out, resume=True)


def _copy(src: Checkpoints, latest: str, new: Config, out: Path, source: Path) -> None:
    names = src.names
    dst = Checkpoints(out / "checkpoints", config_digest(to_dict(new)), names, new.checkpoint.keep)
    weight_decays = [p.weight_decay if p.weight_decay is not None else new.transfer.weight_decay for p in new.participants]
    for name in dict.fromkeys(["start", latest]):
        info = src.set_info(name)
        run_state, states = src.load_set(name)
        # Best models the run state names: copied under the new digest, listed by the set again. A start
        # kept by selection is the start set's own file, copied with that set (first).
        extra = [rel for rel in info["files"] if not rel.startswith(f"{name}/")]
        for rel in (r for r in extra if not r.startswith("start/")):  # <dir>/<participant><tag>.pt
            obj = src.load(rel)
            path, who = Path(rel), obj["participant"]
            dst.save_weights(path.parent.as_posix(), names.index(who), obj["model"], tag=path.stem[len(who):])
        states = (_retuned(s, p.lr, wd) for s, p, wd in zip(states, new.participants, weight_decays))
        dst.save(name, states, run_state, info["metrics_bytes"], refers_to=extra, at=info.get("at"))
    log = (source / "metrics.jsonl").read_bytes()[:src.set_info(latest)["metrics_bytes"]]
    (out / "metrics.jsonl").write_bytes(log)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(new), sort_keys=False))
