"""DeepSpeed participants (participants.N.deepspeed, issue 14): refused configs in one line, and a swarm whose
participants are hosted by DeepSpeed engines (ZeRO stages 0-3, on the CPU with gloo) reaching what the same
swarm reaches with plain participants."""
import json

import pytest
import ray

from kt_swarm.config import parse_config
from kt_swarm.coordinator import run
from kt_swarm.errors import UserError
from kt_swarm.rundir import RunDir, read_records
from support.configs import faulty, mlp_config
from support.hooks import Stop, killer, stop_at

pytest.importorskip("deepspeed")  # the `deepspeed` extra; `make test` installs it


def hosted(stages: dict[str, int | tuple[int, int]], **overrides) -> dict:
    """mlp_config in float32 with these participants hosted by DeepSpeed: ZeRO stage, or (stage, ranks)."""
    raw = mlp_config(**{"dtype": "float32", "control": False, **overrides})  # restores re-make the engines anyway
    for p in raw["participants"]:
        if p["name"] in stages:
            stage, ranks = stages[p["name"]] if isinstance(stages[p["name"]], tuple) else (stages[p["name"]], 1)
            p.update(deepspeed={"zero_optimization": {"stage": stage}}, ranks=ranks)
    return raw


@pytest.mark.parametrize("change,message", [
    (lambda p: p.update(deepspeed={"optimizer": {"type": "Adam"}}), r"'participants.0.deepspeed.optimizer': the run sets it"),
    (lambda p: p.update(deepspeed={"scheduler": {"type": "WarmupLR"}}), r"'participants.0.deepspeed.scheduler': the run sets it"),
    (lambda p: p.update(deepspeed={"zero_optimization": {"stage": 4}}), r"stage': expected 0, 1, 2 or 3, got 4"),
    (lambda p: p.update(deepspeed={"train_batch_size": 64}), r"'participants.0.deepspeed.train_batch_size': 64 contradicts the swarm's 32"),
    (lambda p: p.update(deepspeed={"gradient_accumulation_steps": 4}), r"gradient_accumulation_steps': 4 contradicts"),
    (lambda p: p.update(ranks=2), r"'participants.0.ranks': 2 ranks need participants.0.deepspeed"),
    (lambda p: p.update(deepspeed="/nonexistent/ds_config.json"), r"'participants.0.deepspeed': cannot read '/nonexistent/ds_config.json'"),
])
@pytest.mark.fast
def test_bad_deepspeed_configs_are_one_line(change, message):
    raw = hosted({})
    change(raw["participants"][0])
    with pytest.raises(UserError, match=message):
        parse_config(raw)


@pytest.mark.fast
def test_a_deepspeed_participant_is_not_packed_with_others():
    raw = hosted({"wide": 0}, placement={"participants_per_actor": 2})
    with pytest.raises(UserError, match=r"'placement.participants_per_actor': a DeepSpeed participant has its actors to itself"):
        parse_config(raw)


@pytest.mark.fast
def test_what_deepspeed_cannot_do_here_is_refused_before_anything_starts(tmp_path):
    with pytest.raises(UserError, match="has no fp16 on the CPU"):
        parse_config({**hosted({"wide": 0}), "device": "cpu"} | {"participants": [
            {**hosted({"wide": 0})["participants"][0], "deepspeed": {"fp16": {"enabled": True}}}]})
    with pytest.raises(UserError, match="train in float32 at most"):
        parse_config({**hosted({"wide": 1}), "dtype": "float64"})
    with pytest.raises(UserError, match="kl_dp's frozen start copy of a ZeRO-3"):
        parse_config(hosted({"wide": 3}, transfer={"strategy": "kl_dp", "batch_size": 32}))
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 2}, "bf16": {"enabled": False}}))
    raw = hosted({})
    raw["participants"][0]["deepspeed"] = str(config)
    assert parse_config(raw).participants[0].deepspeed == {"zero_optimization": {"stage": 2}, "bf16": {"enabled": False}}
    with pytest.raises(UserError, match=r"participant 'wide': a DeepSpeed participant runs in its own Ray actor; use --engine ray \(not local\)"):
        with RunDir(tmp_path / "run") as rd:
            run(parse_config(hosted({"wide": 2})), rd, "local")
    assert not (tmp_path / "run").exists()  # refused before anything was written


def records(run_dir) -> list[dict]:
    return [r for r in read_records(run_dir) if "losses" in r or r.get("event") in ("eval", "test")]


def same_run(reference, records_, rel: float) -> None:
    """Per-step shares (within `rel`; 0: bit for bit), role matrices, validation and test accuracies."""
    assert len(records_) == len(reference) > 5
    for a, b in zip(reference, records_):
        for p in a.get("losses", {}):
            assert b["losses"][p] == (pytest.approx(a["losses"][p], rel=rel) if rel else a["losses"][p]), (a, p)
        for key in ("val_accuracy", "test_accuracy", "role_matrix"):
            assert a.get(key) == b.get(key), key


def test_deepspeed_participants_reach_what_plain_ones_reach_through_a_lost_rank(ray_instance, tmp_path):
    """Every ZeRO stage, on one rank and on a gang of two (each participant in its own process group, two
    on one node): the same per-step shares, role matrices, validation and test accuracies as plain
    participants, in float32. Checkpoints every 2 steps; every arm starts from the start set (weights
    loaded into ZeRO's master copy, on every rank). One rank: bit for bit. Two: the gang's gradient is
    the sum of its ranks' (DeepSpeed's all-reduce, then its average) where plain autograd sums the batch
    at once, so its shares move by float32 rounding (measured: at most 1.4e-7 relative).

    The last run (two gangs: ZeRO-3 and ZeRO-2) meets both faults. Its driver stops mid-arm and the run is
    resumed (`--resume`): every rank loads its own partition of the optimizer state from the checkpoint set.
    Then rank 0 of the ZeRO-2 gang is SIGKILLed: Ray restarts it, its other rank is restarted too (their
    process group is gone), the gang meets again on a fresh port, every participant returns to the last
    checkpoint and the run ends as the uninterrupted one."""
    runs = {"plain": {}, "one-rank": {"wide": 0, "narrow": 1}, "gangs-resumed-killed": {"wide": (3, 2), "narrow": (2, 2)}}
    summaries = {}
    for name, stages in runs.items():
        cfg = parse_config(hosted(stages))
        if "resumed" in name:
            with pytest.raises(Stop), RunDir(tmp_path / name) as rd:
                run(cfg, rd, "ray", on_record=stop_at("transfer", epoch=0, step=2))
            with RunDir(tmp_path / name, resume=True) as rd:
                summaries[name] = run(cfg, rd, "ray", on_record=killer(["narrow"], "transfer", step=1, epoch=1))
        else:
            with RunDir(tmp_path / name) as rd:
                summaries[name] = run(cfg, rd, "ray")
    faults = summaries["gangs-resumed-killed"]["faults"]
    assert faults["restarts"] == {"wide": 0, "narrow": 1} and faults["resumes"] == 1
    reference = records(tmp_path / "plain")
    for name, stages in runs.items():
        gang = any(isinstance(v, tuple) for v in stages.values())  # (its logits reach every peer's share)
        same_run(reference, records(tmp_path / name), 1e-6 if gang else 0)
        for n, p in summaries["plain"]["participants"].items():
            q = summaries[name]["participants"][n]
            assert (q["accuracy_after"], q["accuracy_control"], q["best_epoch"]) == (p["accuracy_after"], p["accuracy_control"], p["best_epoch"])


def test_fp16_without_a_gpu_is_refused_before_any_actor_starts(ray_instance):
    """device: auto on a machine (or bundle) without a GPU: found when the swarm is placed, before any actor."""
    raw = hosted({})
    raw["participants"][0]["deepspeed"] = {"fp16": {"enabled": True}}
    cfg = parse_config(raw)
    from kt_swarm.coordinator import make_engine
    from kt_swarm.data import load_dataset

    with pytest.raises(UserError, match="participant 'wide': deepspeed fp16 needs a GPU, and its actor gets none"):
        make_engine("ray", cfg, load_dataset(cfg.data))
    assert all(pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values())


def test_more_ranks_than_the_cluster_can_place_is_refused_at_once(ray_instance):
    """A gang of 4 + one plain participant, a CPU each, on a 2-CPU instance: refused in one line when the swarm
    is placed, without waiting out placement.timeout_s for nodes that are not there, and nothing left placed."""
    import time

    from kt_swarm.coordinator import make_engine
    from kt_swarm.data import load_dataset

    raw = hosted({"wide": (2, 4)}, resources={"cpus_per_participant": 1}, placement={"timeout_s": 60})
    cfg = parse_config(raw)
    before = len(ray.util.placement_group_table())
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"cannot place 5 participant actors with \{'CPU': 1\.0\} each "
                                        r"\(placement.strategy PACK\): it has room for 2 on its 1 node\(s\)"):
        make_engine("ray", cfg, load_dataset(cfg.data))
    assert time.monotonic() - t0 < 30 and len(ray.util.placement_group_table()) == before


def test_a_gang_skips_nan_steps_with_everyone(ray_instance, tmp_path):
    """A gang whose model returns NaN logits in two training calls (on each rank): the verdict reaches both ranks,
    no participant steps, and the run goes on as the same swarm with that participant as one plain process."""
    summaries = {}  # the reference: the local engine, every participant plain in this process
    for name, hosted_by in (("plain", {}), ("gang", {"deepspeed": {"zero_optimization": {"stage": 1}}, "ranks": 2})):
        raw = hosted({})
        raw["participants"][1] = {**faulty("nanny", "nan_mlp", nan_from=2, nan_calls=2), **hosted_by}
        with RunDir(tmp_path / name) as rd:
            summaries[name] = run(parse_config(raw), rd, "ray" if hosted_by else "local")
    assert summaries["gang"]["faults"]["skipped_steps"] == summaries["plain"]["faults"]["skipped_steps"] == {"transfer": 2}
    same_run(records(tmp_path / "plain"), records(tmp_path / "gang"), 1e-6)
