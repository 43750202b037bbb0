"""What "the same run" means between two summaries (summary.differences): bit for bit within one engine,
float sums to a stated relative tolerance across engines."""
import copy

import pytest

from kt_swarm.summary import ACROSS_ENGINES_RTOL, differences, format_table, upgrade

pytestmark = pytest.mark.fast  # pure dictionaries: no Ray, no training


def summary() -> dict:
    p = {"accuracy_before": 0.5, "accuracy_after": 0.625, "accuracy_control": 0.6, "accuracy_self_training": None,
         "final_train_loss": 1.732308537951986, "val_accuracy": [0.5, 0.55], "best_epoch": 2, "control_best_epoch": 1,
         "self_training_best_epoch": None, "kept_start": False, "control_kept_start": False,
         "self_training_kept_start": None, "positive_flips": 0.2, "negative_flips": 0.075,
         "teach_share_per_epoch": [0.25, 0.5]}
    return {"metric": "accuracy", "participants": {"a": p, "b": dict(p)},
            "role_matrix_per_epoch": [[[0.0, 3.5], [1.25, 0.0]]], "seconds": {"total": 1.0}}


def test_the_last_bits_of_a_loss_differ_across_engines_only():
    a, b = summary(), summary()
    b["participants"]["a"]["final_train_loss"] = 1.7323085379519856  # the case: one ulp or two
    b["role_matrix_per_epoch"][0][0][1] = 3.5 * (1 + ACROSS_ENGINES_RTOL / 10)
    assert differences(a, b, across_engines=True) == []
    assert differences(a, b, across_engines=False) == [
        "participants.a.final_train_loss: 1.732308537951986 != 1.7323085379519856",
        f"role_matrix_per_epoch.0.0.1: 3.5 != {b['role_matrix_per_epoch'][0][0][1]!r}"]


def test_accuracies_flips_and_epochs_are_exact_on_either_side():
    for key, value in [("accuracy_after", 0.625 + 1e-15), ("best_epoch", 1), ("positive_flips", 0.2000000000000001),
                       ("kept_start", True)]:
        b = copy.deepcopy(summary())
        b["participants"]["b"][key] = value
        for across in (True, False):
            assert differences(summary(), b, across_engines=across) == [f"participants.b.{key}: {summary()['participants']['b'][key]!r} != {value!r}"]


def test_a_loss_beyond_the_tolerance_is_a_difference_and_times_are_not():
    b = summary()
    b["participants"]["a"]["final_train_loss"] *= 1 + 100 * ACROSS_ENGINES_RTOL
    b["seconds"]["total"] = 99.0
    assert [d.split(":")[0] for d in differences(summary(), b, across_engines=True)] == ["participants.a.final_train_loss"]


def test_a_summary_in_the_old_names_reads_as_today_and_differs_from_nothing():
    """Runs written before the headline metric was named: acc_* held accuracy, mIoU or CC alike."""
    old = {"participants": {"a": {"acc_before": 0.5, "acc_after": 0.625, "acc_control": 0.6, "acc_self_training": None,
                                  "val_acc": [0.5, 0.55], "val_acc_selected": 0.55, "best_epoch": 2,
                                  "control_best_epoch": 1, "self_training_best_epoch": None, "top5_after": 0.9}},
           "val_acc_mean": 0.55}
    new, _ = upgrade(old)
    assert new["metric"] == "accuracy" and new["val_accuracy_mean"] == 0.55 and "val_acc_mean" not in new
    assert new["participants"]["a"] == {
        "accuracy_before": 0.5, "accuracy_after": 0.625, "accuracy_control": 0.6, "accuracy_self_training": None,
        "val_accuracy": [0.5, 0.55], "val_accuracy_selected": 0.55, "best_epoch": 2, "control_best_epoch": 1,
        "self_training_best_epoch": None, "top5_after": 0.9,  # top-5 keeps its name
        "kept_start": False, "control_kept_start": False, "self_training_kept_start": None}
    assert upgrade(new)[0] == new and old["participants"]["a"]["acc_after"] == 0.625  # idempotent; the input untouched
    dense, records = upgrade({"metric": "miou", "participants": {"a": {"acc_after": 0.3}}, "val_acc_mean": 0.2},
                             [{"event": "eval", "val_acc": {"a": 0.2}}, {"event": "test", "test_acc": {"a": 0.3},
                                                                         "test_pixel_accuracy": {"a": 0.8}}])
    assert dense["participants"]["a"] == {"miou_after": 0.3} and dense["val_miou_mean"] == 0.2
    assert records == [{"event": "eval", "val_miou": {"a": 0.2}},
                       {"event": "test", "test_miou": {"a": 0.3}, "test_pixel_accuracy": {"a": 0.8}}]
    legacy = {**summary(), "participants": {n: {("acc_" + k[len("accuracy_"):] if k.startswith("accuracy_") else
                                                  "val_acc" if k == "val_accuracy" else k): v
                                                 for k, v in p.items() if "kept_start" not in k}
                                             for n, p in summary()["participants"].items()}}
    del legacy["metric"]
    assert "acc_after" in legacy["participants"]["a"] and differences(legacy, summary(), across_engines=False) == []


def table_summary(**kept) -> dict:
    p = {"accuracy_before": 0.4760, "accuracy_after": 0.4390, "accuracy_control": 0.4460, "delta": -0.037,
         "delta_vs_control": -0.007, "positive_flips": 0.01, "negative_flips": 0.047, "teach_share": 0.2,
         "final_train_loss": 0.5, "kept_start": False, "control_kept_start": False, "self_training_kept_start": None}
    return {"metric": "accuracy", "participants": {"vit": {**p, **kept}, "resnet": dict(p)}, "success_rate": 0.0,
            "success_rate_vs_control": 0.5, "engine": "local", "steps": 10, "gradient_mode": "detached",
            "seconds": {"total": 3.0}}


def test_the_table_stars_a_kept_start_and_says_where_in_a_footnote():
    plain = format_table(table_summary()).splitlines()
    assert "*" not in "\n".join(plain) and len(plain) == 4
    table = format_table(table_summary(accuracy_after=0.4760, accuracy_control=0.4760, kept_start=True,
                                       control_kept_start=True)).splitlines()
    vit = table[1].split()
    assert vit[:4] == ["vit", "47.60", "47.60*", "47.60*"] and "*" not in table[2]
    assert table[-1] == "* kept its start weights (no epoch beat them on validation accuracy): vit (transfer), vit (control)"
    assert max(map(len, table)) <= 100
