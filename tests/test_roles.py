import pytest
import torch

from kt_swarm.roles import NO_TEACHER, assign_teachers, role_matrix, student_mask, true_class_scores

pytestmark = pytest.mark.fast  # pure tensor functions: no Ray, no training


def test_teacher_is_the_most_confident_of_the_true_class():
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.4], [0.3, 0.3, 0.6]])
    assert assign_teachers(scores).tolist() == [0, 1, 2]


def test_shared_maximum_means_no_teacher_for_every_n():
    for n in range(2, 7):
        scores = torch.rand(n, 10)
        scores[n - 1, 4] = scores[0, 4] = 2.0  # planted tie between the first and the last
        teachers = assign_teachers(scores)
        assert teachers[4] == NO_TEACHER
        assert (teachers[torch.arange(10) != 4] >= 0).all()


def test_scores_use_the_plain_softmax_of_the_true_class():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0]], [[0.0, 1.0], [1.0, 0.0]]])  # [N=2, B=2, C=2]
    target = torch.tensor([0, 1])
    scores = true_class_scores(logits, target)
    expected = torch.stack([logits[0].softmax(-1)[[0, 1], target], logits[1].softmax(-1)[[0, 1], target]])
    torch.testing.assert_close(scores, expected)
    assert assign_teachers(scores).tolist() == [0, 0]


def test_role_matrix_counts_every_student_of_every_taught_sample():
    teachers = torch.tensor([0, 0, 2, NO_TEACHER, 1])
    r = role_matrix(teachers, 3)
    assert r.tolist() == [[0, 2, 2], [1, 0, 1], [1, 1, 0]]
    mask = student_mask(teachers, 3)
    assert mask.sum().item() == r.sum().item()
    assert not mask[:, 3].any()


def test_rejects_wrong_shape():
    with pytest.raises(ValueError):
        assign_teachers(torch.rand(3))
