"""The Ray swarm: one actor per participant, exact against the local engine, at scale, on failure."""
import inspect
import time
import typing

import pytest
import ray
import torch

from kt_swarm.config import parse_config
from kt_swarm.checkpoint import Checkpoints
from kt_swarm.coordinator import fresh_arm, make_engine, run, save_start, train_arm
from kt_swarm.data import load_dataset
from kt_swarm.engine import Engine, StepResult
from kt_swarm.errors import ParticipantLost, UserError
from kt_swarm.local import LocalEngine
from kt_swarm.objectives import LossSpec
from kt_swarm.rundir import RunDir, read_records
from kt_swarm.swarm import RaySwarm, placement_shortfall
from kt_swarm.swarm.gather import gather
from kt_swarm.swarm.placement import actor_hosts
from kt_swarm.summary import differences
from support.configs import dense_config, faulty, mlp_config, tiny_config
from support.hooks import killer
from holder import Holder


@pytest.fixture(autouse=True)
def ray_unless_fast(request):
    """Every test here but the fast ones (no Ray) runs on the module's Ray instance (conftest.py's ray_instance),
    started on first use."""
    if request.node.get_closest_marker("fast") is None:
        request.getfixturevalue("ray_instance")


def checkpoints(engine, cfg, root) -> Checkpoints:
    """Checkpoints in `root`, holding the engine's start set (each arm starts from it)."""
    ckpt = Checkpoints(root, "test", [p.name for p in cfg.participants], keep=2)
    save_start(engine, ckpt)
    return ckpt


def arm(engine, cfg, data, ckpt, name, loss, log=lambda r: None):
    return train_arm(engine, cfg, data, fresh_arm(engine, cfg, ckpt, name), loss, log, ckpt)


def trace(engine_name: str, cfg, data, root, arms: dict):
    """Per-step logs, arm results and test predictions of every arm {name: (LossSpec, split)} on one engine."""
    engine = make_engine(engine_name, cfg, data)
    out = {}
    try:
        ckpt = checkpoints(engine, cfg, root)
        for name, (loss, split) in arms.items():
            logs = []
            engine.set_start_copies((s["model"] for s in ckpt.load_set("start")[1]) if loss.start_copies else None)
            result = train_arm(engine, cfg, data, fresh_arm(engine, cfg, ckpt, name), loss, logs.append, ckpt, split=split)
            out[name] = (logs, result, engine.predict("test", 256))
        nodes = engine.nodes()
    finally:
        engine.close()
    return out, nodes


def both_modes(modes=(("detached", True), ("exact", False)), **kwargs) -> dict:
    return {f"{kwargs.get('strategy', 'best')}-{mode}": (LossSpec(temperature=2.0, detach_teacher=detach, **kwargs), "train")
            for mode, detach in modes}


DETACHED = (("detached", True),)


EVERY_STRATEGY = {
    # Exact mode where a teacher's gradient path differs between strategies (dml and kd: in the unit tests).
    **both_modes(strategy="best"), **both_modes(strategy="better"), **both_modes(DETACHED, strategy="dml"),
    **both_modes(DETACHED, strategy="kd", teacher=1), **both_modes(strategy="kl_dp"),
    **both_modes(strategy="best", scores="max_confidence", trusted=((True, False, False), (True, True, True), (True, False, True))),
    "none-labelled": (LossSpec(strategy="none"), "labelled"),
    "self_training": (LossSpec(strategy="self_training", pseudo_threshold=0.3), "train"),
}


def same(a, b) -> None:
    """Role matrices (weighted sample counts) agree to float64 rounding."""
    torch.testing.assert_close(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("n,arms", [(2, both_modes()), (3, EVERY_STRATEGY), (4, both_modes())],
                         ids=["2-best", "3-every-strategy", "4-best"])
def test_ray_swarm_equals_local_engine_in_float64(n, arms, tmp_path):
    cfg = tiny_config(n)
    if n == 3:
        cfg.transfer.epochs = 1  # 12 arms: one epoch each keeps the test short
        cfg.data.unlabelled_fraction = 0.5  # a mix of labelled and unlabelled samples
        cfg.transfer.calibrate = True  # scores at temperatures fit on the actors' validation logits
    if n == 4:
        cfg.transfer.schedule = "cosine"  # the learning rate rides on learn() and is applied in the next call
    data = load_dataset(cfg.data)
    local, _ = trace("local", cfg, data, tmp_path / "local", arms)
    swarm, nodes = trace("ray", cfg, data, tmp_path / "ray", arms)
    assert len(nodes) == n and all(nodes)
    for name in arms:
        (l_logs, l_res, l_pred), (s_logs, s_res, s_pred) = local[name], swarm[name]
        assert len(l_logs) == len(s_logs) > 0
        for a, b in zip(l_logs, s_logs):
            if "losses" in a:
                for p in a["losses"]:
                    assert b["losses"][p] == pytest.approx(a["losses"][p], rel=1e-9, abs=1e-300), (name, a["step"], p)
                assert a["taught"] == pytest.approx(b["taught"], rel=1e-12)
            else:
                if "role_matrix" in a:
                    same(a["role_matrix"], b["role_matrix"])
                assert a.get("val_accuracy") == b.get("val_accuracy")
        same(l_res.role_matrix, s_res.role_matrix)
        assert l_res.best_epoch == s_res.best_epoch
        assert torch.equal(l_pred, s_pred), name
    # Each strategy did its own thing: the final predictions are not all one run's.
    assert len({tuple(local[name][2].flatten().tolist()) for name in arms}) > len(arms) // 2


def strategies_for(n: int) -> dict:
    """Every strategy and both gradient modes for a swarm of n, trusted teachers drawn at random."""
    trusted = torch.rand(n, n, generator=torch.Generator().manual_seed(n)) > 0.4
    return {**both_modes(strategy="best"), **both_modes(strategy="better"), **both_modes(strategy="dml"),
            **both_modes(strategy="kd", teacher=n - 1), **both_modes(strategy="kl_dp"),
            **both_modes(strategy="best", trusted=tuple(map(tuple, trusted.tolist()))),
            "self_training": (LossSpec(strategy="self_training", pseudo_threshold=0.3), "train")}


@pytest.mark.parametrize("n,per_actor", [(5, 2), (7, 3)])
def test_swarms_of_other_sizes_and_packings_equal_the_local_engine(n, per_actor, tmp_path):
    """Swarms of sizes and mixes not seen above, several participants to an actor (one with dropout: each its
    own RNG stream), half the samples unlabelled: every strategy, both gradient modes, to 1e-9 in float64."""
    raw = mlp_config(participants=[faulty(f"m{i}", "dropout_mlp" if i == 1 else "tiny_mlp", lr=2e-3, hidden=6 + 3 * i)
                                   for i in range(n)],
                     placement={"participants_per_actor": per_actor}, control=False, selection="last")
    raw["data"].update(unlabelled_fraction=0.5, max_per_split=96)
    raw["transfer"].update(epochs=1, batch_size=32, temperature=2.0)
    cfg = parse_config(raw)
    assert len(actor_hosts(cfg)) == -(-n // per_actor)
    data = load_dataset(cfg.data)
    arms = strategies_for(n)
    local, _ = trace("local", cfg, data, tmp_path / "local", arms)
    swarm, nodes = trace("ray", cfg, data, tmp_path / "ray", arms)
    assert len(nodes) == n
    for name in arms:
        (l_logs, l_res, l_pred), (s_logs, s_res, s_pred) = local[name], swarm[name]
        for a, b in zip(l_logs, s_logs, strict=True):
            for p in a.get("losses", {}):
                assert b["losses"][p] == pytest.approx(a["losses"][p], rel=1e-9, abs=1e-300), (name, a["step"], p)
        same(l_res.role_matrix, s_res.role_matrix)
        assert torch.equal(l_pred, s_pred), name


def test_what_a_participant_receives_does_not_grow_with_the_swarm():
    """Bytes read per participant a step, measured by the actors, for swarms of 2, 4 and 8 (two to an actor),
    every strategy in both gradient modes, half the samples unlabelled: within a small constant times B x C
    (plus O(B) for the scores) where the all-to-all read N x B x C, and flat (within 10%) for dml in the exact
    mode, where every participant teaches and learns on every unit (the most any strategy sends)."""
    received = {}
    for n in (2, 4, 8):
        raw = mlp_config(participants=[faulty(f"m{i}", lr=1e-3) for i in range(n)],
                         placement={"participants_per_actor": 2}, control=False)
        raw["transfer"].update(batch_size=32)
        raw["data"].update(unlabelled_fraction=0.5)
        cfg = parse_config(raw)
        engine = make_engine("ray", cfg, load_dataset(cfg.data))
        try:
            engine.reset_optimizers("adam", [1e-3] * n, [0.0] * n)
            start = engine.weights(list(range(n)))
            for step, (name, (loss, _)) in enumerate(strategies_for(n).items()):
                engine.set_start_copies(start if loss.start_copies else None)
                received[n, name] = engine.train_step(0, step, loss).received
        finally:
            engine.close()
    b_c = 32 * 10 * 8  # one participant's logits of a batch, float64
    for (n, name), per in received.items():
        assert max(per) <= 3 * b_c + 6 * 32 * 8, (n, name, per)  # rows of its shard, q and r; scores (and the start's), a, s, keep
    mean = {n: sum(received[n, "dml-exact"]) / n for n in (2, 4, 8)}
    assert abs(mean[8] / mean[4] - 1) <= 0.1 and abs(mean[2] / mean[4] - 1) <= 0.1, mean


@pytest.mark.parametrize("task,unit", [("segmentation", "pixel"), ("segmentation", "image"), ("saliency", "sample")])
def test_what_a_participant_receives_in_a_dense_task_is_about_its_own_outputs(task, unit):
    """Segmentation (pixels or images) and saliency, four participants two to an actor, exact gradients: a
    participant reads about three times its own outputs of the batch (its shard's rows, q and r), not N times."""
    raw = dense_config(task, transfer={"epochs": 1, "batch_size": 8, "unit": unit}, control=False,
                       placement={"participants_per_actor": 2})
    raw["participants"] += [{**p, "name": p["name"] + "_2", "lr": 1e-3} for p in raw["participants"]]
    cfg = parse_config(raw)
    data = load_dataset(cfg.data, task)
    engine = make_engine("ray", cfg, data)
    try:
        engine.reset_optimizers("adam", [1e-3] * 4, [0.0] * 4)
        got = engine.train_step(0, 0, LossSpec(strategy="dml", detach_teacher=False, task=task, unit=unit)).received
        own = engine.logits("train", 8, first=8)[0].numel() * 8  # one participant's outputs of a batch, float64
    finally:
        engine.close()
    assert max(got) <= 3.2 * own, (got, own)  # the all-to-all read 4x (every participant's outputs)


@pytest.mark.fast
def test_actors_host_single_rank_participants_in_order_and_gangs_alone():
    raw = mlp_config(participants=[faulty(f"m{i}") for i in range(5)], placement={"participants_per_actor": 2})
    assert actor_hosts(parse_config(raw)) == [[0, 1], [2, 3], [4]]
    raw["placement"] = {"participants_per_actor": 1}
    assert actor_hosts(parse_config(raw)) == [[m] for m in range(5)]


EXACT = (("exact", False),)  # the teacher's gradient path, the harder one; the detached one is classification's
DENSE = {  # the unit is the arm's (LossSpec), so one segmentation swarm runs both
    "segmentation": {**{f"pixel-{k}": v for k, v in both_modes(EXACT, strategy="best", task="segmentation", unit="pixel").items()},
                     **both_modes(DETACHED, strategy="kl_dp", task="segmentation", unit="pixel"),
                     **{f"image-{k}": v for k, v in both_modes(EXACT, strategy="best", task="segmentation", unit="image").items()}},
    "saliency": {**both_modes(EXACT, strategy="best", task="saliency"), **both_modes(DETACHED, strategy="dml", task="saliency")},
}


@pytest.mark.parametrize("case", DENSE)
def test_dense_tasks_on_ray_equal_the_local_engine_in_float64(case, tmp_path):
    """Segmentation (both units) and saliency: the same per-step shares, role matrices (pixels or images),
    validation metrics and test predictions on both engines."""
    cfg = parse_config(dense_config(case, transfer={"epochs": 1, "batch_size": 16, "temperature": 2.0}, control=False))
    data = load_dataset(cfg.data, case)
    local, _ = trace("local", cfg, data, tmp_path / "local", DENSE[case])
    swarm, _ = trace("ray", cfg, data, tmp_path / "ray", DENSE[case])
    for name in DENSE[case]:
        (l_logs, l_res, l_pred), (s_logs, s_res, s_pred) = local[name], swarm[name]
        assert len(l_logs) == len(s_logs) > 0
        for a, b in zip(l_logs, s_logs):
            for p in a.get("losses", {}):
                assert b["losses"][p] == pytest.approx(a["losses"][p], rel=1e-9, abs=1e-300), (name, a["step"], p)
            for key in {"val_miou", "val_cc"} & set(a):
                assert a[key] == pytest.approx(b[key], rel=1e-12)
        same(l_res.role_matrix, s_res.role_matrix)
        assert sum(map(sum, l_res.role_matrix[-1])) > 0  # someone taught
        torch.testing.assert_close(l_pred, s_pred, rtol=1e-9, atol=1e-12)


def test_forward_returns_scores_not_logits():
    """What the coordinator gets from forward is each participant's score on each unit: B numbers, whatever C."""
    cfg = tiny_config(2)
    engine = make_engine("ray", cfg, load_dataset(cfg.data))
    try:
        engine.reset_optimizers("adam", [1e-3, 1e-3], [0.0, 0.0])
        told = engine._on_actors("forward", lambda a: ((0, 0, "train"), 48, None, LossSpec()))
        assert [len(t) for t in told] == [1, 1]
        assert all(t[0].scores.shape == (48,) and t[0].scores.dtype == torch.float64 and t[0].finite for t in told)
    finally:
        engine.close()


def test_an_object_lost_with_its_owner_is_a_lost_participant():
    """A lost node takes with it what its actors held and others had not read yet: that ObjectLostError is a
    lost participant the run can restart (it was a crash: CI, session 9), named after the call that read it."""
    actor = ray.remote(Holder).options(num_cpus=0).remote()
    ref = ray.get(actor.hold.remote())[0]
    ray.kill(actor, no_restart=True)
    for _ in range(300):  # the driver learns of the owner's death a moment later (about 1 s here)
        try:
            ray.get(ref)
            time.sleep(0.1)
        except ray.exceptions.ObjectLostError:
            break
    else:
        pytest.fail("the driver never saw the owner of the object die")
    with pytest.raises(ParticipantLost, match=r"participant 'vit': an object it read or returned was lost") as lost:
        gather([ref], ["resnet", "vit"], [1])
    assert lost.value.index == 1


def test_sixteen_tiny_participants(tmp_path):
    raw = {
        "participants": [faulty(f"mlp{i:02d}", lr=1e-3, hidden=8 + i) for i in range(16)],
        "data": {"max_per_split": 128},
        "transfer": {"batch_size": 32},
        "selection": "last",
    }
    cfg = parse_config(raw)
    data = load_dataset(cfg.data)
    engine = make_engine("ray", cfg, data)
    try:
        result = arm(engine, cfg, data, checkpoints(engine, cfg, tmp_path), "transfer", LossSpec())
        assert len(engine.nodes()) == 16
    finally:
        engine.close()
    matrix = torch.tensor(result.role_matrix[-1])
    assert matrix.shape == (16, 16) and matrix.sum() > 0
    assert len({a for a in range(16) if matrix[a].sum() > 0}) > 1  # the roles are spread, not one teacher


def test_a_failing_participant_stops_the_run_with_one_line(tmp_path):
    raw = {
        "participants": [
            faulty("steady", lr=1e-3),
            faulty("fragile", "failing_mlp", lr=1e-3, fail_after=2),
        ],
        "data": {"max_per_split": 256},
        "transfer": {"batch_size": 32},
    }
    cfg = parse_config(raw)
    data = load_dataset(cfg.data)
    engine = make_engine("ray", cfg, data)
    with pytest.raises(UserError, match=r"participant 'fragile' failed: RuntimeError: planted failure in training call 3"):
        try:
            arm(engine, cfg, data, checkpoints(engine, cfg, tmp_path), "transfer", LossSpec())
        finally:
            engine.close()
    assert engine.actors == [] and engine.pg is None


def test_unplaceable_swarm_is_one_line():
    cfg = tiny_config(2, placement={"strategy": "STRICT_SPREAD", "timeout_s": 3})
    with pytest.raises(UserError, match="cannot place 2 participant actors"):
        make_engine("ray", cfg, load_dataset(cfg.data))


def protocol_gaps(cls, protocol=Engine) -> list[str]:
    """How `cls` differs from `protocol`: a member missing; a method whose parameters (names, kinds, defaults)
    or annotations differ; a data member declared with another type, or a class attribute of another type."""
    wanted = typing.get_type_hints(protocol)  # the data members
    declared = typing.get_type_hints(cls)
    methods = sorted(n for n in vars(protocol) if not n.startswith("_") and callable(getattr(protocol, n)))
    gaps = []
    for name in sorted(wanted):
        if name in declared:
            if declared[name] != wanted[name]:
                gaps.append(f"{name}: declared {declared[name]}, not {wanted[name]}")
        elif not hasattr(cls, name):
            gaps.append(f"{name}: missing")
        elif isinstance(wanted[name], type) and not isinstance(getattr(cls, name), wanted[name]):
            gaps.append(f"{name}: {getattr(cls, name)!r} is not a {wanted[name].__name__}")
    for name in methods:
        mine, theirs = getattr(cls, name, None), getattr(protocol, name)
        if not callable(mine):
            gaps.append(f"{name}: missing")
            continue
        params = [[(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()] for f in (mine, theirs)]
        hints = [typing.get_type_hints(f) for f in (mine, theirs)]
        if params[0] != params[1] or hints[0] != hints[1]:
            gaps.append(f"{name}: {name}{inspect.signature(mine)} {hints[0]}, not {name}{inspect.signature(theirs)} {hints[1]}")
    return gaps


@pytest.mark.fast
def test_both_engines_have_the_engine_protocols_members_and_signatures():
    """Both engines are engine.Engine: every member, each method with the protocol's parameters, defaults and
    annotations (runtime_checkable's isinstance alone checks names); and the check does catch a difference."""
    assert protocol_gaps(LocalEngine) == []
    assert protocol_gaps(RaySwarm) == []
    assert isinstance(LocalEngine([], None, seed=0, batch_size=1, augment=None), Engine)

    class Drifted(LocalEngine):
        close = None  # a member gone

        def train_step(self, epoch: int, step: int, loss: LossSpec, split: str = "labelled", lr_scale: float = 1.0) -> StepResult:
            raise NotImplementedError

        def predict(self, split: str, batch_size: int, k: float = 1) -> torch.Tensor:
            raise NotImplementedError

    class Undeclared(RaySwarm):
        name = 1
        setup_restarts: dict[str, float]

    assert [g.split(":")[0] for g in protocol_gaps(Drifted)] == ["close", "predict", "train_step"]
    assert [g.split(":")[0] for g in protocol_gaps(Undeclared)] == ["name", "setup_restarts"]


@pytest.mark.parametrize("strategy,n,bundle,nodes,room", [
    ("PACK", 4, {"CPU": 1.0}, [{"CPU": 2}, {"CPU": 1.5}], "room for 3 on its 2 node(s)"),
    ("SPREAD", 3, {"CPU": 1.0}, [{"CPU": 2}, {"CPU": 1}], None),
    ("STRICT_PACK", 3, {"CPU": 1.0}, [{"CPU": 2}, {"CPU": 2}], "room for 2 on one node (STRICT_PACK)"),
    ("STRICT_SPREAD", 2, {"CPU": 1.0}, [{"CPU": 8}], "room for 1 one per node (STRICT_SPREAD)"),
    ("PACK", 2, {"CPU": 1.0, "GPU": 1.0}, [{"CPU": 8, "GPU": 1}, {"CPU": 8}], "room for 1 on its 2 node(s)"),
    ("PACK", 3, {"CPU": 2 / 3, "GPU": 1 / 3}, [{"CPU": 2, "GPU": 1}], None),  # fractions that add up to the node
])
@pytest.mark.fast
def test_placement_shortfall_counts_identical_bundles_per_node(strategy, n, bundle, nodes, room):
    short = placement_shortfall(bundle, n, nodes, strategy)
    assert short is None if room is None else room in short


def test_a_half_precision_exchange_sends_fewer_bytes_and_keeps_the_partition():
    """exchange_dtype float16: what travels is half the bytes of float32's, while the partition (from the
    participants' own full-precision scores, computed once) is the one of the full-precision exchange."""
    steps = {}
    for dtype in (None, "float16"):
        cfg = tiny_config(3, dtype="float32", transfer={**tiny_config(3).transfer.__dict__, "exchange_dtype": dtype})
        engine = make_engine("ray", cfg, load_dataset(cfg.data))
        try:
            engine.reset_optimizers("adam", [1e-3] * 3, [0.0] * 3)
            steps[dtype] = engine.train_step(0, 0, LossSpec(detach_teacher=False))
        finally:
            engine.close()
    full, half = steps[None], steps["float16"]
    assert torch.equal(full.roles, half.roles) and full.roles.sum() > 0
    assert all(h < 0.75 * f for h, f in zip(half.received, full.received))
    assert half.losses == pytest.approx(full.losses, rel=1e-2)


def test_a_killed_actor_is_restarted_and_the_run_ends_as_if_nothing_happened(tmp_path):
    """SIGKILL a participant's worker mid-arm: Ray restarts it, every participant goes back to the last
    consistent checkpoint, and the summary is the one of the run nobody killed (float64)."""
    cfg = parse_config(mlp_config())
    with RunDir(tmp_path / "full") as rd:
        full = run(cfg, rd, "ray")
    with RunDir(tmp_path / "killed") as rd:
        killed = run(cfg, rd, "ray", on_record=killer(["narrow"], "control", step=2))
    assert not differences(killed, full, across_engines=False)
    assert killed["faults"]["restarts"] == {"wide": 0, "narrow": 1}
    events = read_records(tmp_path / "killed")
    restarted = [e for e in events if e.get("event") == "restarted"]
    assert len(restarted) == 1 and restarted[0]["checkpoint"] == "control-0000002"
    placed = [e["participants"] for e in events if e.get("event") == "placed"]
    assert placed[0]["narrow"]["pid"] != placed[1]["narrow"]["pid"] and placed[0]["wide"] == placed[1]["wide"]


def test_a_participant_killed_mid_exchange_is_restarted_and_the_run_ends_as_if_nothing_happened(tmp_path):
    """SIGKILL an actor inside learn(), after it owned its shard and while its peers pull its mixes, with two
    participants to an actor: Ray restarts it, both of its participants come back, every participant goes
    back to the last consistent checkpoint, and the summary is the uninterrupted run's (float64)."""
    def config(marker):
        doomed = faulty("doomed", "suicidal_mlp", lr=1e-3, die_at=5, die_in="backward", marker=str(marker))
        return parse_config(mlp_config(participants=[faulty("a", hidden=24), faulty("b", hidden=8), doomed,
                                                     faulty("c", hidden=12)], placement={"participants_per_actor": 2}))
    spent = tmp_path / "spent"
    spent.touch()  # the marker already there: it never dies
    with RunDir(tmp_path / "full") as rd:
        full = run(config(spent), rd, "ray")
    with RunDir(tmp_path / "killed") as rd:
        killed = run(config(tmp_path / "marker"), rd, "ray")
    assert (tmp_path / "marker").exists()
    assert killed["faults"]["restarts"] == {"a": 0, "b": 0, "doomed": 1, "c": 1}
    assert not differences(killed, full, across_engines=False)


def test_a_killed_actor_gets_its_start_copy_back(tmp_path):
    """kl_dp: the restarted actor builds its frozen start copy again; the run ends as if nothing happened."""
    cfg = parse_config(mlp_config(control=False, transfer={"epochs": 2, "batch_size": 32, "temperature": 2.0,
                                                             "strategy": "kl_dp", "detach_teacher": False}))
    with RunDir(tmp_path / "full") as rd:
        full = run(cfg, rd, "ray")
    with RunDir(tmp_path / "killed") as rd:
        killed = run(cfg, rd, "ray", on_record=killer(["wide"], "transfer", step=1, epoch=1))
    assert not differences(killed, full, across_engines=False)
    assert killed["faults"]["restarts"] == {"wide": 1, "narrow": 0}


@pytest.mark.parametrize("die_in", ["train", "init"])
def test_a_participant_that_keeps_dying_stops_the_run_with_one_line(die_in, tmp_path):
    """In training (the checkpoints stay) or every time its model is built (before the run's first one)."""
    raw = mlp_config(control=False, fault={"max_restarts": 1})
    raw["participants"][1] = faulty("doomed", "suicidal_mlp", lr=1e-3, die_at=2, die_in=die_in)
    with pytest.raises(UserError) as e:
        with RunDir(tmp_path / "run") as rd:
            run(parse_config(raw), rd, "ray")
    message = str(e.value)
    assert message.startswith("participant 'doomed': its actor died more than fault.max_restarts (1) times")
    assert "\n" not in message
    assert (tmp_path / "run" / "checkpoints" / "manifest.json").exists() == (die_in == "train")


def test_actors_lost_before_the_run_are_restarted_and_counted(tmp_path):
    """A participant's actor killed while it is built, while its zoo member trains, or while the start set
    is written: Ray restarts it, it is brought up again (the zoo member trained again from its seed),
    the restart is counted, and the run ends as if nothing happened (float64)."""
    def config(die_in: str, die_at: int = 2):
        raw = mlp_config(control=False, transfer={"epochs": 1, "batch_size": 32, "temperature": 2.0})
        raw["data"]["pretrain_fraction"] = 0.4
        raw["zoo"] = {"epochs": 1, "batch_size": 16, "cache_dir": str(tmp_path / die_in / "cache")}
        raw["participants"][1] = faulty("doomed", "suicidal_mlp", lr=1e-3, weights="zoo", die_in=die_in, die_at=die_at,
                                        marker=str(tmp_path / die_in / "died"))
        return parse_config(raw)

    with RunDir(tmp_path / "full") as rd:
        full = run(config("never"), rd, "ray")
    for die_in in ("init", "train", "state"):  # state: read once for the zoo cache, then for the start set
        with RunDir(tmp_path / die_in / "run") as rd:
            killed = run(config(die_in), rd, "ray")
        assert (tmp_path / die_in / "died").exists(), die_in
        assert not differences(killed, full, across_engines=False), die_in
        assert killed["faults"]["restarts"] == {"wide": 0, "doomed": 1}, die_in
        events = read_records(tmp_path / die_in / "run")
        restarted = [e["checkpoint"] for e in events if e.get("event") == "restarted"]
        assert restarted == ([None] if die_in == "state" else []), die_in  # the first two died before the run's log


def test_nan_steps_are_skipped_alike_by_actors_and_by_the_local_engine(tmp_path):
    """The actors apply an update only once every participant's step was finite: same result as local."""
    raw = mlp_config(control=False)
    raw["participants"][0] = faulty("nanny", "nan_mlp", nan_from=2, nan_calls=2)
    cfg = parse_config(raw)
    summaries = {}
    for engine in ("local", "ray"):
        with RunDir(tmp_path / engine) as rd:
            summaries[engine] = run(cfg, rd, engine)
    assert summaries["ray"]["faults"]["skipped_steps"] == summaries["local"]["faults"]["skipped_steps"] == {"transfer": 2}
    assert not differences(summaries["ray"], summaries["local"], across_engines=True)


def test_two_actors_lost_at_once_are_both_restarted(tmp_path):
    """A lost node takes every participant on it: all of them come back, not only the one a call failed on."""
    cfg = parse_config(mlp_config(control=False))
    with RunDir(tmp_path / "full") as rd:
        full = run(cfg, rd, "ray")
    with RunDir(tmp_path / "killed") as rd:
        killed = run(cfg, rd, "ray", on_record=killer(["wide", "narrow"], "transfer", step=1, epoch=1))
    assert not differences(killed, full, across_engines=False)
    assert killed["faults"]["restarts"] == {"wide": 1, "narrow": 1}


@pytest.mark.parametrize("engine_name", ["local", "ray"])
def test_a_skipped_step_changes_nothing_not_even_batchnorm_statistics(engine_name):
    raw = mlp_config()
    raw["participants"] = [faulty("bn", "bn_mlp", lr=1e-3), faulty("nanny", "nan_mlp", lr=1e-3, nan_from=2, nan_calls=1)]
    cfg = parse_config(raw)
    engine = make_engine(engine_name, cfg, load_dataset(cfg.data))
    try:
        engine.reset_optimizers("adam", [1e-3, 1e-3], [0.0, 0.0])
        assert engine.train_step(0, 0, LossSpec()).bad == []
        before = list(engine.states())
        assert engine.train_step(0, 1, LossSpec()).bad == [1]  # nanny's second training call
        after = list(engine.states())
        for b, a in zip(before, after):
            assert b["model"].keys() == a["model"].keys()
            assert all(torch.equal(b["model"][k], a["model"][k]) for k in b["model"]), "weights or buffers moved"
        assert engine.train_step(0, 2, LossSpec()).bad == []  # and the next step runs as usual
        moved = list(engine.states())
        assert not torch.equal(moved[0]["model"]["2.running_mean"], after[0]["model"]["2.running_mean"])
    finally:
        engine.close()
