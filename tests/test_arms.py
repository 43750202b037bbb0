"""transfer_arms: more transfer arms beside `transfer`, from the same start on the same steps, reported beside it
(the quickstart shows the paper's partition, every participant teacher and student, beside its chosen setting)."""
import pytest

from support.configs import mlp_config
from support.hooks import Stop, stop_at
from kt_swarm.config import parse_config
from kt_swarm.coordinator import run
from kt_swarm.errors import UserError
from kt_swarm.report import report_markdown
from kt_swarm.rundir import RunDir, read_records
from kt_swarm.summary import differences, format_table


@pytest.mark.fast
@pytest.mark.parametrize("arms,message", [
    ({"control": {}}, "config key 'transfer_arms.control': control names one of the run's own arms"),
    ({"p": {"epochs": 3}}, "config key 'transfer_arms.p.epochs' is unknown (known: strategy, scores, teacher, "),
    ({"p": {"strategy": "kd"}}, "config key 'transfer_arms.p.teacher': strategy kd needs a teacher"),
    ({"p": {"strategy": "kd", "teacher": "nobody"}}, "config key 'transfer_arms.p.teacher': 'nobody' is not a participant"),
    ({"p": {"weight": -1}}, "config key 'transfer_arms.p.weight': must be >= 0, got -1"),
    ({"p q": {}}, "config key 'transfer_arms.p q"),
])
def test_a_bad_transfer_arm_is_named_in_one_line(arms, message):
    with pytest.raises(UserError) as e:
        parse_config(mlp_config(transfer_arms=arms))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.fast
def test_a_dense_task_refuses_an_arm_that_calibrates():
    raw = {"task": "segmentation", "participants": [{"name": "a", "model": "resnet10t", "lr": 1e-3}],
           "data": {"kind": "scenes"}, "transfer_arms": {"calibrated": {"calibrate": True}}}
    with pytest.raises(UserError, match=r"^config key 'transfer_arms.calibrated.calibrate': not available for task "
                                        r"segmentation"):
        parse_config(raw)


@pytest.mark.fast
def test_an_arm_takes_transfers_settings_but_for_its_own_keys():
    cfg = parse_config(mlp_config(transfer={"epochs": 2, "batch_size": 32, "weight": 2.0, "trusted_teachers": True},
                                  transfer_arms={"paper": {"trusted_teachers": False, "weight": 1}}))
    arm = cfg.for_arm("paper").transfer
    assert (arm.trusted_teachers, arm.weight, arm.epochs, arm.batch_size) == (False, 1.0, 2, 32)
    assert cfg.for_arm("transfer") is cfg and cfg.transfer.weight == 2.0  # the config itself is unchanged


def test_an_arm_with_transfers_settings_is_the_transfer_arm_again_and_another_differs(tmp_path):
    """Same start, same batches, same steps: an arm that changes nothing ends where the transfer arm ends, to the
    bit (float64, one engine); one that changes the partition (kd: one frozen teacher) does not. Both stand in the
    table, report and log beside transfer and the control."""
    raw = mlp_config(transfer={"epochs": 2, "batch_size": 32, "temperature": 2.0},
                     transfer_arms={"same": {}, "kd": {"strategy": "kd", "teacher": "wide"}})
    with RunDir(tmp_path / "run") as rd:
        summary = run(parse_config(raw), rd, "local")
    arms, m = summary["transfer_arms"], summary["metric"]
    for name, p in summary["participants"].items():
        same = arms["same"]["participants"][name]
        assert same[f"{m}_after"] == p[f"{m}_after"] and same[f"val_{m}"] == p[f"val_{m}"]
        assert same["final_train_loss"] == p["final_train_loss"] and same["kept_start"] == p["kept_start"]
        assert same["delta_vs_control"] == p["delta_vs_control"]
    assert arms["same"]["role_matrix_per_epoch"] == summary["role_matrix_per_epoch"]
    kd = arms["kd"]["role_matrix"]
    assert kd[1] == [0.0, 0.0] and kd[0][1] > 0  # only the frozen teacher taught
    assert arms["kd"]["participants"]["wide"]["delta"] == 0  # and it did not move
    assert arms["kd"]["settings"] == {"strategy": "kd", "teacher": "wide"} and arms["kd"]["strategy"] == "kd"
    table = format_table(summary).splitlines()
    assert table[0].split()[:5] == ["participant", "before", "after", "same", "kd"]
    assert any(line.startswith("kd: strategy kd, teacher wide; success rate") for line in table)
    assert "**kd**" in report_markdown(summary, "") and (tmp_path / "run" / "report.png").exists()
    logged = {r.get("arm") for r in read_records(tmp_path / "run")}
    assert {"transfer", "same", "kd", "control"} <= logged
    assert list(summary["checkpoints"]["best"]) == ["transfer", "same", "kd", "control"]
    # Another arm's results are part of what a resumed or restarted run must end with exactly.
    changed = {**summary, "transfer_arms": {**arms, "kd": {**arms["kd"], "role_matrix_per_epoch": [[[0.0, 1.0], [0.0, 0.0]]]}}}
    assert differences(summary, changed, across_engines=False) == [
        "transfer_arms.kd.role_matrix_per_epoch: 2 items != 1"]


def test_a_run_stopped_in_another_transfer_arm_resumes_to_the_same_summary(tmp_path):
    """Stopped mid-way through the extra arm (after a checkpoint of it), resumed: the run that never stopped."""
    raw = mlp_config(transfer={"epochs": 2, "batch_size": 32, "temperature": 2.0},
                     transfer_arms={"paper": {"weight": 0.5, "temperature": 1.0}})
    cfg = parse_config(raw)
    with RunDir(tmp_path / "full") as rd:
        full = run(cfg, rd, "local")
    with pytest.raises(Stop):
        with RunDir(tmp_path / "stopped") as rd:
            run(cfg, rd, "local", on_record=stop_at("paper", 1, 0))
    with RunDir(tmp_path / "stopped", resume=True) as rd:
        resumed = run(cfg, rd, "local")
    assert resumed["faults"]["resumes"] == 1
    assert not differences(resumed, full, across_engines=False)
