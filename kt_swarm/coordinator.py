"""A whole run: data, participants (zoo included), the test metric before, each arm (arm.py: the transfer
arm, the CE-only control, self-training, each from the start set), the test metric after each, summary.json;
checkpoints along the way, and the way back to the last one after a crash or a lost actor (runstate.py).

ArmState, ArmResult, train_arm, RunState, restore, save_start and fresh_arm live in arm.py and runstate.py;
they are importable from here as before."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace
from typing import Callable

import torch

from kt_swarm.arm import (  # noqa: F401 - re-exported: tests and benchmarks import them from here
    ArmResult, ArmState, end_epoch, measure, skip_step, taught, train_arm, units_per_image)
from kt_swarm.build import build_participant, check_classes, pretrain_if_zoo
from kt_swarm.checkpoint import Checkpoints, config_digest
from kt_swarm.config import Config, to_dict
from kt_swarm.data import Dataset, batches_in, load_dataset
from kt_swarm.engine import Engine
from kt_swarm.errors import ParticipantLost, UserError
from kt_swarm.local import LocalEngine
from kt_swarm.lm import check_tokenizers, load_tokenizer
from kt_swarm.metrics import task_metrics
from kt_swarm.models import check_model_name, trains_first
from kt_swarm.objectives import LossSpec
from kt_swarm.report import write_report
from kt_swarm.rundir import RunDir
from kt_swarm.runstate import RunState, fresh_arm, fresh_optimizers, restore, save_start  # noqa: F401 - re-exported
from kt_swarm.summary import summarize
from kt_swarm.tracking import Tracker

logger = logging.getLogger("kt_swarm")


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
    np.savez_compressed(buffer, images=data.pixels(ids).numpy(), truth=truth.numpy(),
                        **{f"arm_{arm}": v.numpy() for arm, v in examples.items()})
    out.write_bytes("examples.npz", buffer.getvalue())


def text_tokenizer(cfg: Config):
    """Text data's tokenizer (None for images), once every participant is known to share it (lm.py)."""
    if cfg.data.kind != "text":
        return None
    source = cfg.data.text.tokenizer
    tokenizer = load_tokenizer(source, "data.text.tokenizer")
    check_tokenizers({p.name: p.tokenizer or p.model for p in cfg.participants}, tokenizer, source)
    return tokenizer


def check_engine(name: str, cfg: Config) -> None:
    """What an engine cannot host, in one line before anything starts: a DeepSpeed participant needs a
    process of its own (one torch.distributed group per process), so only the Ray engine hosts it."""
    for p in cfg.participants:
        if p.deepspeed is not None and name != "ray":
            raise UserError(f"participant '{p.name}': a DeepSpeed participant runs in its own Ray actor; "
                            f"use --engine ray (not {name})")


def make_engine(name: str, cfg: Config, data: Dataset, address: str | None = None, pretrain: bool = True,
                models: dict[int, torch.nn.Module] | None = None) -> Engine:
    """`local`: every participant in this process. `ray`: one Ray actor per participant. Without
    `pretrain`, zoo members are left untrained (a resumed run loads its checkpoint into them). `models`:
    participants given as built nn.Modules (kt_swarm.run), by index."""
    models = models or {}
    if name == "ray":
        from kt_swarm.swarm import RaySwarm

        return RaySwarm(cfg, data, address=address, pretrain=pretrain, models=models)
    participants = [build_participant(cfg, i, data, models.get(i)) for i in range(len(cfg.participants))]
    check_classes({p.name: p.output_width(data) for p in participants}, data.num_classes)
    if pretrain:  # every model is checked (above) before the slow pretraining of any
        for i, p in enumerate(participants):
            pretrain_if_zoo(cfg, i, p, data)
    return LocalEngine(participants, data, seed=cfg.seed, batch_size=cfg.transfer.batch_size, augment=cfg.data.augment)


def arms(cfg: Config) -> list[tuple[str, LossSpec, str]]:
    """(name, loss, split) of every arm, in order: the transfer arm, the other transfer arms (transfer_arms), then
    the baselines. The control arm trains on the labelled part of the transfer split only; self-training sees the
    transfer arm's data."""
    names = [p.name for p in cfg.participants]

    def loss(t) -> LossSpec:
        return LossSpec(strategy=t.strategy, scores=t.scores, temperature=t.temperature, weight=t.weight,
                        detach_teacher=t.detach_teacher, teacher=names.index(t.teacher) if t.strategy == "kd" else None,
                        pseudo_threshold=t.pseudo_threshold, task=cfg.task, unit=t.unit, top_k=cfg.transfer.top_k)

    transfer = loss(cfg.transfer)
    return ([("transfer", transfer, "train")] + [(arm, loss(cfg.arm_transfer(arm)), "train") for arm in cfg.transfer_arms]
            + ([("control", replace(transfer, strategy="none"), "labelled")] if cfg.control else [])
            + ([("self_training", replace(transfer, strategy="self_training"), "train")] if cfg.self_training else []))


def advance(engine: Engine, cfg: Config, data: Dataset, state: RunState, log, ckpt: Checkpoints, metrics_bytes) -> None:
    """Carry the run from `state` to its end: the start test, then each arm and its test."""
    names = [p.name for p in cfg.participants]
    test_labels = data.truth(data.splits["test"])
    k = 5 if data.task == "classification" and data.num_classes > 5 else 1  # top-5 only where it is not trivially 100%

    def test(arm: str) -> None:
        preds = engine.predict("test", cfg.eval_batch_size, k)
        scores = task_metrics(preds, test_labels, data.task, data.num_classes, data.classes)
        # test_<metric> for every metric of the task (the headline first: test_accuracy, test_miou, test_cc)
        log({"arm": arm, "event": "test",
             **{f"test_{m}" if m != "top5" else "test_top5_acc": dict(zip(names, v)) for m, v in scores.items()}})
        state.preds[arm] = preds
        if data.task in ("segmentation", "saliency"):
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
        state.arms[arm] = asdict(train_arm(engine, cfg.for_arm(arm), data, state.current, loss, log, ckpt, save, split))
        state.current = None
        test(arm)


def run_swarm(engine: Engine, cfg: Config, data: Dataset, out: RunDir, ckpt: Checkpoints, log) -> RunState:
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
        on_record: Callable[[dict], None] | None = None, models: dict[str, torch.nn.Module] | None = None,
        data_given=None) -> dict:
    """The main job. Writes config.yaml, metrics.jsonl, checkpoints/, summary.json and report.{png,md}
    into `out`, tracks the run in W&B when the config asks, and returns the summary. Continues from
    the last checkpoint when `out` was opened to resume. `on_record` also receives every metrics
    record (a sweep trial reports its epochs to Ray Tune through it). `models` (participants' nn.Modules
    by name) and `data_given` (a factory or the splits) are what kt_swarm.run was handed."""
    import yaml

    t_start = time.perf_counter()
    check_engine(engine_name, cfg)
    if not out.resume:
        out.write_text("config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    models = models or {}
    for spec in cfg.participants:
        check_model_name(spec, cfg.task, given=spec.name in models)
    names = [p.name for p in cfg.participants]
    # A damaged or foreign checkpoint is refused here, before anything starts.
    ckpt = Checkpoints(out.path / "checkpoints", config_digest(to_dict(cfg)), names, cfg.checkpoint.keep)
    data = load_dataset(cfg.data, cfg.task, text_tokenizer(cfg), given=data_given)
    out.check_data(data.outline())  # a resumed run reads the data it started with (given data is not in its config)
    if any(trains_first(p) for p in cfg.participants) and len(data.splits["pretrain"]) == 0:
        raise UserError("participants use weights: zoo (or zoo: true) but data.pretrain_fraction is 0 (no pretraining split)")
    width = data.image_size**2 if cfg.task == "saliency" else data.num_classes  # what a unit's distribution is over
    if cfg.transfer.top_k and cfg.transfer.top_k > width:
        raise UserError(f"transfer.top_k {cfg.transfer.top_k} is more than the {width} "
                        f"{'tokens of the vocabulary' if data.tokens is not None else 'classes'} a distribution is over")
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
        engine = make_engine(engine_name, cfg, data, address, pretrain=ckpt.latest is None,
                             models={names.index(n): m for n, m in models.items()})
        t_zoo = time.perf_counter() - t0
        try:
            state = run_swarm(engine, cfg, data, out, ckpt, log)
            nodes = engine.nodes()
        finally:
            engine.close()
        results = {arm: ArmResult(**r) for arm, r in state.arms.items()}
        summary = summarize(cfg, data, names, data.truth(data.splits["test"]), state.preds, results, nodes, engine.name)
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
