"""Weights & Biases tracking of a run (config key `tracking.wandb`).

One W&B run per swarm run: the resolved config as its config, every participant's metrics under
its own prefix (`vit/transfer/loss`, `vit/control/val_accuracy`, `vit/start/test_accuracy`,
`vit/accuracy_after`, ...: the task's headline metric by its name, metrics.HEADLINE), the role matrix as
a heat map and a table, the before/after/control table as a W&B table. Without an API key it logs
offline by itself (and says how to `wandb sync`); WANDB_MODE (offline, disabled) always wins; an
online start that fails (no network) falls back to offline.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from kt_swarm.config import Config, WandbConfig, to_dict
from kt_swarm.metrics import HEADLINE
from kt_swarm.rundir import read_records

log = logging.getLogger("kt_swarm")


def has_api_key() -> bool:
    import wandb

    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        wandb.ensure_configured()
        return bool(wandb.api.api_key)
    except Exception:  # noqa: BLE001 - an unreadable settings file means no usable key
        return False


def earlier_run_id(run_dir: Path) -> str | None:
    """The W&B run id of an earlier start of this swarm run, from wandb's own folder names
    (`run-<date>_<time>-<id>`, `offline-run-...`, with `-1`, `-2` added when a name is taken)."""
    for path in sorted(Path(run_dir).glob("wandb/*run-*"), key=lambda p: p.name.removeprefix("offline-")):
        found = re.fullmatch(r"(?:offline-)?run-\d{8}_\d{6}-([a-z0-9]+)(?:-\d+)?", path.name)
        if found:
            return found.group(1)
    return None


def record_key(record: dict) -> tuple | None:
    """What a metrics record reports on (arm, kind, epoch, step): a run restored to a checkpoint, after a
    restart or a --resume, logs the steps after it again with the same numbers. None: always news."""
    if record.get("event") in ("restarted", "resumed", "placed"):
        return None
    return record.get("arm"), record.get("event"), record.get("epoch"), record.get("step")


def logged_before(run_dir: Path) -> set[tuple]:
    """The keys of the records an earlier start of this run logged (its metrics.jsonl, read before a resume
    cuts it back to the checkpoint); a last line cut short by a kill is left out."""
    if not (Path(run_dir) / "metrics.jsonl").exists():
        return set()
    return {record_key(r) for r in read_records(run_dir)} - {None}


class Tracker:
    """Receives every metrics record and the summary; does nothing when tracking is off. Each record reaches
    W&B once: replayed steps (restarts, --resume) are not logged again, so the history has every step once."""

    def __init__(self, cfg: Config, run_dir: Path, names: list[str]):
        self.run, self.names = None, names
        self.metric = HEADLINE[cfg.task]
        self.sent = logged_before(run_dir)
        wb: WandbConfig | None = cfg.tracking.wandb
        if wb is None and not os.environ.get("WANDB_SWEEP_ID"):  # `wandb agent` runs track without asking
            return
        wb = wb or WandbConfig()
        import wandb

        mode = os.environ.get("WANDB_MODE") or (wb.mode if wb.mode != "auto" else None)
        if mode == "disabled":
            return
        if mode is None:
            mode = "online" if has_api_key() else "offline"
            if mode == "offline":
                log.info("W&B: no API key here, logging offline (upload later with `wandb sync`)")
        kwargs = dict(project=wb.project, entity=wb.entity, group=wb.group, tags=wb.tags or None, name=wb.name,
                      config=to_dict(cfg), dir=str(run_dir), reinit="create_new")
        earlier = earlier_run_id(run_dir)
        if earlier:  # a resumed swarm run goes on as the same W&B run
            kwargs.update(id=earlier, resume="allow")
        try:
            self.run = wandb.init(mode=mode, settings=wandb.Settings(init_timeout=30, silent=True), **kwargs)
        except Exception as e:  # noqa: BLE001 - no network, server down: keep the run, log offline
            if mode != "online":
                raise
            log.warning("W&B: online start failed (%s); logging offline instead", str(e).splitlines()[0])
            self.run = wandb.init(mode="offline", settings=wandb.Settings(silent=True), **kwargs)
        self.run.define_metric("step")
        for name in names:
            self.run.define_metric(f"{name}/*", step_metric="step")
        for arm in ["transfer", *cfg.transfer_arms, "control", "self_training"]:
            self.run.define_metric(f"{arm}/*", step_metric="step")

    def log(self, record: dict) -> None:
        """One metrics.jsonl record -> one wandb.log call, participants as prefixes."""
        key = record_key(record)
        if self.run is None or key in self.sent:
            return
        if key is not None:
            self.sent.add(key)
        arm = record.get("arm")
        row = {"step": record.get("global_step", 0)}
        if "losses" in record:
            row[f"{arm}/loss"] = record["loss"]
            for name in self.names:
                row[f"{name}/{arm}/loss"] = record["losses"][name]
                row[f"{name}/{arm}/taught"] = record["taught"][name]
        for key, values in record.items():  # val_{m}, its flips, teach shares, every test_<metric>
            if key in (f"val_{self.metric}", "val_positive_flips", "val_negative_flips", "teach_share") or key.startswith("test_"):
                for name, value in values.items():
                    row[f"{name}/{arm}/{key}"] = value
        if "role_matrix" in record:
            row[f"{arm}/role_matrix"] = self._heat_map(record["role_matrix"], f"{arm}, epoch {record['epoch'] + 1}")
        for domain, matrix in record.get("role_matrix_by_domain", {}).items():  # text: who taught whom on which text
            row[f"{arm}/role_matrix/{domain}"] = self._heat_map(matrix, f"{arm} on {domain}, epoch {record['epoch'] + 1}")
        if record.get("event") == "skipped":
            row[f"{arm}/skipped_in_a_row"] = record["in_a_row"]
        if record.get("event") in ("restarted", "resumed"):
            row["restarts"] = sum(record["restarts"].values())
        if len(row) > 1:  # where participants run ("placed") is in metrics.jsonl, not a metric
            self.run.log(row)

    def _heat_map(self, matrix: list[list[int]], title: str):
        import io

        import wandb
        from PIL import Image

        from kt_swarm.report import role_matrix_figure

        png = io.BytesIO()  # rendered here: wandb.Image would need pyplot for a matplotlib figure
        role_matrix_figure(matrix, self.names, f"role matrix ({title})").savefig(png, format="png", dpi=100)
        png.seek(0)
        return wandb.Image(Image.open(png), caption=title)

    def finish(self, summary: dict) -> None:
        if self.run is None:
            return
        import wandb

        m = self.metric
        columns = ["participant", f"{m}_before", f"{m}_after", "kept_start", f"{m}_control", "control_kept_start", "delta",
                   "delta_vs_control", f"{m}_self_training", "delta_vs_self_training", "top5_after",
                   "positive_flips", "negative_flips", "complementary", "teach_share"]
        table = wandb.Table(columns=columns, data=[[name] + [p.get(c) for c in columns[1:]]
                                                   for name, p in summary["participants"].items()])
        roles = wandb.Table(columns=["teacher"] + self.names,
                            data=[[t] + row for t, row in zip(self.names, summary["role_matrix"])])
        self.run.log({"results": table, "role_matrix_table": roles,
                      "role_matrix": self._heat_map(summary["role_matrix"], "transfer, last epoch"),
                      **{f"role_matrix/{domain}": self._heat_map(matrix, f"transfer on {domain}, last epoch")
                         for domain, matrix in (summary.get("role_matrix_per_domain") or {}).items()}})
        for arm, a in (summary.get("transfer_arms") or {}).items():  # the other transfer arms, each its own table
            rows = [[name, p[f"{m}_after"], p["kept_start"], p["delta"], p["delta_vs_control"]]
                    for name, p in a["participants"].items()]
            self.run.log({f"{arm}/results": wandb.Table(columns=["participant", f"{m}_after", "kept_start", "delta",
                                                                 "delta_vs_control"], data=rows),
                          f"{arm}/role_matrix": self._heat_map(a["role_matrix"], f"{arm}, last epoch")})
            for name, p in a["participants"].items():
                self.run.summary[f"{name}/{arm}/{m}_after"] = p[f"{m}_after"]
        for name, p in summary["participants"].items():
            for key, value in p.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.run.summary[f"{name}/{key}"] = value
        for key in ("success_rate", "success_rate_vs_control", "success_rate_vs_self_training", f"val_{self.metric}_mean", "steps"):
            if summary.get(key) is not None:
                self.run.summary[key] = summary[key]
        self.close()

    def close(self, failed: bool = False) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None
