"""Every strategy of method.md section 6, with unlabelled samples (section 7): swarm_loss against a
loop-by-loop reference written from the text, and the per-participant split against autograd."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kt_swarm.objectives import participant_grad, participant_loss, swarm_loss, swarm_loss_terms
from kt_swarm.roles import STRATEGIES, confidence_scores, fit_temperature, teaching_weights, trust_matrix

pytestmark = pytest.mark.fast  # pure tensor functions: no Ray, no training

LIVE = ["best", "better", "dml", "kd", "kl_dp"]  # strategies whose teachers are live participants


def _batch(n, b=20, c=6, seed=0):
    """Logits with planted ties, a mix of labelled and unlabelled (-1) samples, frozen starting copies."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, b, c, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, c, (b,), generator=g)
    y[torch.rand(b, generator=g) < 0.4] = -1
    z[n - 1, 0] = z[0, 0]  # ties: identical logits give identical scores
    z[1, 5] = z[0, 5]
    z[:, 7] = z[0, 7]  # everybody tied
    frozen = z + 0.5 * torch.randn(n, b, c, generator=g, dtype=torch.float64)
    frozen[0, 3] = z[1, 3]  # a frozen start tied with a peer
    return z, y, frozen


def _kl(zt, zs, T):
    p = F.softmax(zt / T, -1)
    return T * T * (p * (F.log_softmax(zt / T, -1) - F.log_softmax(zs / T, -1))).sum()


def _reference(z, y, frozen, strategy, T, lam, detach, scores="true_class", teacher=None, threshold=0.95, trusted=None):
    """method.md sections 6 and 7, sample by sample, pair by pair."""
    n, b, _ = z.shape
    probs = z.detach().softmax(-1)
    fprobs = frozen.softmax(-1)
    labelled = [i for i in range(b) if y[i] >= 0]

    def score(p, i):
        return p[y[i]] if scores == "true_class" and y[i] >= 0 else p.max()

    loss = z.sum() * 0
    for m in range(n):
        if strategy == "kl_dp" or (strategy == "kd" and m == teacher) or not labelled:
            continue
        loss = loss + sum(F.cross_entropy(z[m, i : i + 1], y[i : i + 1]) for i in labelled) / len(labelled)
    for i in range(b):
        s = [float(score(probs[m, i], i)) for m in range(n)]
        weights = {}  # (k, j) -> w
        if strategy == "best":
            top = max(s)
            if s.count(top) == 1:
                t = s.index(top)
                weights = {(t, j): 1.0 for j in range(n) if j != t}
        elif strategy == "better":
            for j in range(n):
                above = {k: s[k] - s[j] for k in range(n) if s[k] > s[j]}
                weights.update({(k, j): d / sum(above.values()) for k, d in above.items()})
        elif strategy == "dml":
            weights = {(k, j): 1 / (n - 1) for k in range(n) for j in range(n) if k != j}
        elif strategy == "kd":
            weights = {(teacher, j): 1.0 for j in range(n) if j != teacher}
        elif strategy == "kl_dp":
            for j in range(n):
                peers = {k: s[k] for k in range(n) if k != j}
                top = max(peers.values())
                if list(peers.values()).count(top) == 1 and top > float(score(fprobs[j, i], i)):
                    weights[(max(peers, key=peers.get), j)] = 1.0
        if trusted is not None:
            weights = {kj: w for kj, w in weights.items() if trusted[kj[0]][kj[1]]}
        for (k, j), w in weights.items():
            frozen_teacher = detach or (strategy == "kd" and k == teacher)
            zt = z[k, i].detach() if frozen_teacher else z[k, i]
            loss = loss + lam * w * _kl(zt, z[j, i], T) / b
        if strategy == "kl_dp":
            for j in range(n):
                keep = 1 - sum(w for (k, jj), w in weights.items() if jj == j)
                loss = loss + lam * keep * _kl(frozen[j, i], z[j, i], T) / b
        if strategy == "self_training" and y[i] < 0:
            for j in range(n):
                if probs[j, i].max() >= threshold:
                    loss = loss + lam * F.cross_entropy(z[j, i : i + 1], probs[j, i].argmax().view(1)) / b
    return loss


CASES = [
    dict(strategy="best"), dict(strategy="better"), dict(strategy="dml"), dict(strategy="none"),
    dict(strategy="kd", teacher=1), dict(strategy="kl_dp"), dict(strategy="self_training", pseudo_threshold=0.6),
    dict(strategy="best", scores="max_confidence"), dict(strategy="better", trusted="by_accuracy"),
    dict(strategy="kl_dp", trusted="by_accuracy"),
]


def _kwargs(case, n, detach):
    kw = dict(case, temperature=2.5, weight=0.7, detach_teacher=detach)
    if kw.get("trusted") == "by_accuracy":
        kw["trusted"] = trust_matrix([0.9 - 0.1 * ((m * 7) % n) for m in range(n)])
    return kw


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("detach", [False, True])
def test_swarm_loss_matches_the_written_out_method(case, n, detach):
    z, y, frozen = _batch(n, seed=n)
    kw = _kwargs(case, n, detach)
    za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
    ours = swarm_loss(za, y, frozen_logits=frozen, **kw)
    ref = _reference(zb, y, frozen, kw["strategy"], 2.5, 0.7, detach, scores=kw.get("scores", "true_class"),
                     teacher=kw.get("teacher"), threshold=kw.get("pseudo_threshold", 0.95),
                     trusted=kw["trusted"].tolist() if "trusted" in kw else None)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(za.grad, zb.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("detach", [False, True])
def test_per_participant_gradients_sum_to_the_global_gradient(case, n, detach):
    z, y, frozen = _batch(n, seed=20 + n)
    kw = _kwargs(case, n, detach)
    zg = z.clone().requires_grad_()
    (global_grad,) = torch.autograd.grad(swarm_loss(zg, y, frozen_logits=frozen, **kw), zg)
    local = torch.stack([participant_grad(z[m], z, m, y, frozen_logits=frozen, **kw) for m in range(n)])
    torch.testing.assert_close(local, global_grad, rtol=1e-12, atol=1e-14)
    shares = [participant_loss(z[m], z, m, y, frozen_logits=frozen, **kw) for m in range(n)]
    torch.testing.assert_close(sum(s for s, _ in shares), swarm_loss(z, y, frozen_logits=frozen, **kw), rtol=1e-12, atol=1e-12)
    whole_shares, roles = swarm_loss_terms(z, y, frozen_logits=frozen, **kw)
    torch.testing.assert_close(torch.stack([s for s, _ in shares]), whole_shares, rtol=1e-12, atol=1e-12)
    assert all(torch.equal(r, roles) for _, r in shares)  # every participant computes the same partition


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 6), b=st.integers(1, 12), c=st.integers(2, 7), seed=st.integers(0, 10_000),
       strategy=st.sampled_from(STRATEGIES), detach=st.booleans(), unlabelled=st.floats(0, 1))
def test_gradient_split_holds_for_any_shape_and_strategy(n, b, c, seed, strategy, detach, unlabelled):
    g = torch.Generator().manual_seed(seed)
    z = torch.randint(-2, 3, (n, b, c), generator=g).double()  # coarse: ties are common
    frozen = torch.randint(-2, 3, (n, b, c), generator=g).double()
    y = torch.randint(0, c, (b,), generator=g)
    y[torch.rand(b, generator=g) < unlabelled] = -1
    kw = dict(strategy=strategy, teacher=seed % n, detach_teacher=detach, pseudo_threshold=0.5, frozen_logits=frozen)
    zg = z.clone().requires_grad_()
    (global_grad,) = torch.autograd.grad(swarm_loss(zg, y, **kw), zg)
    local = torch.stack([participant_grad(z[m], z, m, y, **kw) for m in range(n)])
    torch.testing.assert_close(local, global_grad, rtol=1e-10, atol=1e-12)


def test_weights_per_strategy_on_a_worked_example():
    # scores of 3 participants on 2 samples
    s = torch.tensor([[0.9, 0.2], [0.5, 0.2], [0.1, 0.6]], dtype=torch.float64)
    best = teaching_weights(s, "best")
    assert best[:, :, 0].tolist() == [[0, 1, 1], [0, 0, 0], [0, 0, 0]]
    assert best[:, :, 1].tolist() == [[0, 0, 0], [0, 0, 0], [1, 1, 0]]
    better = teaching_weights(s, "better")[:, :, 0]
    torch.testing.assert_close(better[:, 2], torch.tensor([0.8 / 1.2, 0.4 / 1.2, 0], dtype=torch.float64))
    assert better[:, 1].tolist() == [1, 0, 0] and better[:, 0].tolist() == [0, 0, 0]  # the top learns from nobody
    torch.testing.assert_close(teaching_weights(s, "dml").sum(dim=0), torch.ones(3, 2, dtype=torch.float64))
    kd = teaching_weights(s, "kd", teacher=2)
    assert kd[2, :, 0].tolist() == [1, 1, 0] and kd[:2].sum() == 0
    start = torch.tensor([[0.95, 0.1], [0.4, 0.3], [0.05, 0.9]], dtype=torch.float64)
    kl_dp = teaching_weights(s, "kl_dp", start_scores=start)
    # sample 0: participant 0's peers (0.5) lose to its start (0.95): it keeps to itself; 1 and 2 learn from 0
    assert kl_dp[:, 0, 0].sum() == 0 and kl_dp[0, 1, 0] == 1 and kl_dp[0, 2, 0] == 1
    # sample 1: participant 2's peers tie at 0.2: no unique teacher
    assert kl_dp[:, 2, 1].sum() == 0 and kl_dp[2, 0, 1] == 1 and kl_dp[2, 1, 1] == 1
    trusted = trust_matrix([0.8, 0.9, 0.7])  # participant 1 is the strongest: it learns from nobody
    assert teaching_weights(s, "best", trusted=trusted)[:, 1].sum() == 0
    for strategy in ("none", "self_training"):
        assert teaching_weights(s, strategy).sum() == 0


def test_unlabelled_samples_carry_no_ce():
    z, y, _ = _batch(3, seed=4)
    labelled = y >= 0
    expected = sum(F.cross_entropy(z[m, labelled], y[labelled]) for m in range(3))
    torch.testing.assert_close(swarm_loss(z, y, strategy="none"), expected)
    assert swarm_loss(z, torch.full_like(y, -1), strategy="none") == 0  # no labels, no CE (not NaN)


def test_frozen_teacher_and_kl_dp_have_no_ce():
    z, y, frozen = _batch(3, seed=5)
    zg = z.clone().requires_grad_()
    swarm_loss(zg, y, strategy="kd", teacher=2).backward()
    assert (zg.grad[2] == 0).all() and (zg.grad[:2] != 0).all(dim=-1).any()  # the kd teacher never changes
    same = z[:1].expand(3, -1, -1).clone()  # identical participants, each equal to its start: nobody beats
    assert swarm_loss(same, y, strategy="kl_dp", frozen_logits=same) == 0  # its start; KL(z || z) = 0, no CE
    assert swarm_loss(same, y, strategy="best") > 0


@pytest.mark.parametrize("strategy,needs", [("kd", "teacher"), ("kl_dp", "frozen_logits")])
def test_missing_inputs_are_named(strategy, needs):
    z, y, _ = _batch(2)
    with pytest.raises(ValueError, match=needs.split("_")[0]):
        swarm_loss(z, y, strategy=strategy)


def test_unknown_strategy_and_scores_are_refused():
    z, y, _ = _batch(2)
    with pytest.raises(ValueError, match="strategy"):
        swarm_loss(z, y, strategy="ensemble")
    with pytest.raises(ValueError, match="scores"):
        swarm_loss(z, y, scores="entropy")


def test_every_pair_of_strategies_differs_somewhere():
    """No strategy silently falls back to another (each changes the loss on this batch)."""
    z, y, frozen = _batch(4, seed=9)
    values = {s: float(swarm_loss(z, y, strategy=s, teacher=1, frozen_logits=frozen, pseudo_threshold=0.5)) for s in STRATEGIES}
    for a, b in itertools.combinations(STRATEGIES, 2):
        assert values[a] != values[b], (a, b)


def test_temperature_scaling_recovers_the_temperature_that_made_the_labels():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 5, generator=g, dtype=torch.float64) * 3
    for t in (0.5, 1.0, 2.5):
        labels = torch.multinomial((z / t).softmax(dim=-1), 1, generator=g).squeeze(1)
        assert abs(fit_temperature(z, labels) - t) < 0.05 * t
    assert fit_temperature(z, z.argmax(dim=-1)) == 0.01  # always right: as sharp as the bound allows


def test_calibrated_scores_can_change_who_teaches():
    # Participant 0 is overconfident: raw, it wins the sample; divided by its temperature 4, it loses it.
    z = torch.tensor([[[6.0, 0.0, 0.0]], [[2.5, 0.0, 0.0]]], dtype=torch.float64)
    y = torch.tensor([0])
    assert teaching_weights(confidence_scores(z, y), "best")[0, 1, 0] == 1
    calibrated = confidence_scores(z, y, temperatures=torch.tensor([4.0, 1.0]))
    assert teaching_weights(calibrated, "best")[1, 0, 0] == 1


@pytest.mark.parametrize("strategy", ["best", "better", "kl_dp"])
def test_gradient_split_holds_with_calibrated_scores(strategy):
    z, y, frozen = _batch(4, seed=31)
    kw = dict(strategy=strategy, score_temperatures=[0.7, 1.0, 1.8, 3.0], detach_teacher=False, frozen_logits=frozen)
    zg = z.clone().requires_grad_()
    (global_grad,) = torch.autograd.grad(swarm_loss(zg, y, **kw), zg)
    local = torch.stack([participant_grad(z[m], z, m, y, **kw) for m in range(4)])
    torch.testing.assert_close(local, global_grad, rtol=1e-12, atol=1e-14)
    assert swarm_loss(z, y, **kw) != swarm_loss(z, y, **{**kw, "score_temperatures": None})


def test_cosine_schedule_runs_from_the_full_rate_down_to_zero():
    from kt_swarm.participant import lr_scale

    assert [round(lr_scale("cosine", k, 4), 6) for k in range(5)] == [1.0, 0.853553, 0.5, 0.146447, 0.0]
    assert {lr_scale("constant", k, 4) for k in range(4)} == {1.0}
