"""The reported metrics on hand-made predictions (method.md section 5)."""
import pytest
import torch

from kt_swarm.metrics import accuracy, complementary, flips, success_rate, teach_share, topk_accuracy

pytestmark = pytest.mark.fast  # pure tensor functions: no Ray, no training

LABELS = torch.tensor([0, 1, 2, 3])


def test_flips_count_gains_and_losses_against_the_start():
    start = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 0]])  # p0 right on 0,1; p1 right on 0
    end = torch.tensor([[0, 0, 2, 3], [0, 1, 2, 3]])  # p0 loses 1, gains 2,3; p1 gains 1,2,3
    gained, lost = flips(start, end, LABELS)
    assert gained == [0.5, 0.75] and lost == [0.25, 0.0]
    delta = [a - b for a, b in zip(accuracy(end, LABELS), accuracy(start, LABELS))]
    assert delta == pytest.approx([g - l for g, l in zip(gained, lost)])


def test_complementary_is_what_the_others_know_and_this_one_does_not():
    preds = torch.tensor([[0, 1, 9, 9], [0, 9, 2, 9], [9, 9, 9, 9]])
    assert complementary(preds, LABELS) == [0.25, 0.25, 0.75]
    assert complementary(preds[:1], LABELS) == [0.0]  # alone, nobody to learn from


def test_topk_accuracy_finds_the_label_among_the_guesses():
    preds = torch.tensor([[[1, 0], [1, 2], [0, 1], [3, 0]]])  # [N=1, n=4, k=2]
    assert topk_accuracy(preds, LABELS) == [0.75]
    assert accuracy(preds, LABELS) == [0.5]  # top-1 is the first guess


def test_success_rate_and_teach_share():
    assert success_rate([0.01, -0.02, 0.0, 0.03]) == 0.5
    # 3 participants, 10 samples: p0 taught 6 (12 student slots), p1 taught 2.
    r = torch.tensor([[0, 6, 6], [2, 0, 2], [0, 0, 0]])
    assert teach_share(r, 10) == [0.6, 0.2, 0.0]
