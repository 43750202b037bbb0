"""What "the same run" means between two summaries (summary.differences): bit for bit within one engine,
float sums to a stated relative tolerance across engines."""
import copy

from kt_swarm.summary import ACROSS_ENGINES_RTOL, differences


def summary() -> dict:
    p = {"acc_before": 0.5, "acc_after": 0.625, "acc_control": 0.6, "acc_self_training": None,
         "final_train_loss": 1.732308537951986, "val_acc": [0.5, 0.55], "best_epoch": 2, "control_best_epoch": 1,
         "self_training_best_epoch": None, "positive_flips": 0.2, "negative_flips": 0.075,
         "teach_share_per_epoch": [0.25, 0.5]}
    return {"participants": {"a": p, "b": dict(p)}, "role_matrix_per_epoch": [[[0.0, 3.5], [1.25, 0.0]]],
            "seconds": {"total": 1.0}}


def test_the_last_bits_of_a_loss_differ_across_engines_only():
    a, b = summary(), summary()
    b["participants"]["a"]["final_train_loss"] = 1.7323085379519856  # the case: one ulp or two
    b["role_matrix_per_epoch"][0][0][1] = 3.5 * (1 + ACROSS_ENGINES_RTOL / 10)
    assert differences(a, b, across_engines=True) == []
    assert differences(a, b, across_engines=False) == [
        "participants.a.final_train_loss: 1.732308537951986 != 1.7323085379519856",
        f"role_matrix_per_epoch.0.0.1: 3.5 != {b['role_matrix_per_epoch'][0][0][1]!r}"]


def test_accuracies_flips_and_epochs_are_exact_on_either_side():
    for key, value in [("acc_after", 0.625 + 1e-15), ("best_epoch", 1), ("positive_flips", 0.2000000000000001)]:
        b = copy.deepcopy(summary())
        b["participants"]["b"][key] = value
        for across in (True, False):
            assert differences(summary(), b, across_engines=across) == [f"participants.b.{key}: {summary()['participants']['b'][key]!r} != {value!r}"]


def test_a_loss_beyond_the_tolerance_is_a_difference_and_times_are_not():
    b = summary()
    b["participants"]["a"]["final_train_loss"] *= 1 + 100 * ACROSS_ENGINES_RTOL
    b["seconds"]["total"] = 99.0
    assert [d.split(":")[0] for d in differences(summary(), b, across_engines=True)] == ["participants.a.final_train_loss"]
