"""The method's loss: whole (swarm_loss) and per participant (participant_loss / participant_grad)."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kt_swarm.objectives import participant_grad, participant_loss, swarm_loss, swarm_loss_terms
from kt_swarm.roles import NO_TEACHER, assign_teachers, true_class_scores

pytestmark = pytest.mark.fast  # pure tensor functions: no Ray, no training


def _logits(n, b=24, c=7, seed=0, ties=True):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, b, c, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, c, (b,), generator=g)
    if ties:  # plant ties: identical logits give identical scores
        z[n - 1, 0] = z[0, 0]
        z[1, 5] = z[0, 5]
    return z, y


def _reference(z, y, T, w, detach):
    """method.md section 3 written out loop by loop."""
    n, b, _ = z.shape
    loss = sum(F.cross_entropy(z[m], y) for m in range(n))
    probs = z.detach().softmax(-1)
    for i in range(b):
        s = probs[:, i, y[i]]
        best = s.max()
        if (s == best).sum() > 1:
            continue
        t = int(s.argmax())
        zt = z[t, i].detach() if detach else z[t, i]
        for j in range(n):
            if j != t:
                p_t = F.softmax(zt / T, -1)
                kl = (p_t * (F.log_softmax(zt / T, -1) - F.log_softmax(z[j, i] / T, -1))).sum()
                loss = loss + w * T * T * kl / b
    return loss


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("detach", [False, True])
def test_swarm_loss_matches_the_written_out_formula(n, detach):
    z, y = _logits(n, seed=n)
    za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
    ours = swarm_loss(za, y, temperature=2.5, weight=0.7, detach_teacher=detach)
    ref = _reference(zb, y, 2.5, 0.7, detach)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(za.grad, zb.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_per_participant_gradients_sum_to_the_global_gradient(n, detach, temperature):
    z, y = _logits(n, seed=10 + n)
    kwargs = dict(temperature=temperature, weight=1.3, detach_teacher=detach)
    zg = z.clone().requires_grad_()
    (global_grad,) = torch.autograd.grad(swarm_loss(zg, y, **kwargs), zg)
    local = torch.stack([participant_grad(z[m], z, m, y, **kwargs) for m in range(n)])
    torch.testing.assert_close(local, global_grad, rtol=1e-12, atol=1e-14)
    # The values split the same way: the shares sum to the global loss.
    total = sum(participant_loss(z[m], z, m, y, **kwargs)[0] for m in range(n))
    torch.testing.assert_close(total, swarm_loss(z, y, **kwargs), rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 6), b=st.integers(1, 16), c=st.integers(2, 9), seed=st.integers(0, 10_000),
       detach=st.booleans(), temperature=st.floats(0.5, 8.0))
def test_gradient_split_holds_for_any_shape(n, b, c, seed, detach, temperature):
    g = torch.Generator().manual_seed(seed)
    # Coarse logits make ties common.
    z = torch.randint(-2, 3, (n, b, c), generator=g).double()
    y = torch.randint(0, c, (b,), generator=g)
    kwargs = dict(temperature=temperature, weight=1.0, detach_teacher=detach)
    zg = z.clone().requires_grad_()
    (global_grad,) = torch.autograd.grad(swarm_loss(zg, y, **kwargs), zg)
    local = torch.stack([participant_grad(z[m], z, m, y, **kwargs) for m in range(n)])
    torch.testing.assert_close(local, global_grad, rtol=1e-10, atol=1e-12)


def test_detached_teacher_gets_only_its_own_ce_gradient_on_samples_it_teaches():
    z, y = _logits(3, ties=False)
    teachers = assign_teachers(true_class_scores(z, y))
    zd, ze = z.clone().requires_grad_(), z.clone().requires_grad_()
    swarm_loss(zd, y, detach_teacher=True).backward()
    swarm_loss(ze, y, detach_teacher=False).backward()
    zc = z.clone().requires_grad_()
    swarm_loss(zc, y, weight=0.0).backward()
    for i, t in enumerate(teachers.tolist()):
        torch.testing.assert_close(zd.grad[t, i], zc.grad[t, i])  # detached: the teacher's row is CE only
    assert not torch.allclose(ze.grad, zd.grad)  # exact: the teacher is pulled toward its students


def test_ties_carry_no_transfer_term():
    z = torch.zeros(3, 1, 4, dtype=torch.float64)  # every participant identical: a three-way tie
    y = torch.tensor([2])
    shares, roles = swarm_loss_terms(z, y)
    assert assign_teachers(true_class_scores(z, y)).tolist() == [NO_TEACHER]
    assert roles.sum() == 0
    torch.testing.assert_close(shares, torch.full((3,), torch.log(torch.tensor(4.0, dtype=torch.float64)).item(), dtype=torch.float64))


def test_weight_zero_is_the_sum_of_the_cross_entropies():
    z, y = _logits(4)
    expected = sum(F.cross_entropy(z[m], y) for m in range(4))
    torch.testing.assert_close(swarm_loss(z, y, weight=0.0), expected)
    torch.testing.assert_close(swarm_loss(list(z), y, weight=0.0), expected)  # a list of [B, C] works too
