"""The method on other tasks (method.md section 8): segmentation by pixel and by image, saliency-like maps,
language models by token and by sequence.
Each loss is checked against the rule written out loop by loop, and every participant's share and gradient
rule is checked as for classification (float64, N = 2..4, both gradient modes, planted ties)."""
import pytest
import torch
import torch.nn.functional as F

from kt_swarm.objectives import LossSpec, participant_grad, participant_loss, swarm_loss, swarm_loss_terms
from kt_swarm.partition import in_one_process
from kt_swarm.tasks import Task, cc, kld, token_counts

pytestmark = pytest.mark.fast  # pure tensor functions: no Ray, no training

B, C, H, W = 3, 4, 3, 4


def segmentation(n, seed=0, ties=True):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, B, C, H, W, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, C, (B, H, W), generator=g)
    y[0, 0, :2] = -1  # ignored pixels
    y[1, 2, 3] = -1
    if ties:  # identical outputs give identical scores: a pixel, and a whole image, where all tie
        z[:, 0, :, 1, 1] = z[0, 0, :, 1, 1]
        z[:, 2] = z[0, 2]
    return z, y


def saliency(n, seed=0, ties=True):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, B, H, W, generator=g, dtype=torch.float64)
    gt = torch.rand(B, H, W, generator=g, dtype=torch.float64) ** 3
    if ties:
        z[:, 2] = z[0, 2]
    return z, gt


T, V = 5, 7  # a language model's positions and vocabulary


def language(n, seed=0, ties=True):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, B, T, V, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, V, (B, T), generator=g)
    y[0, 3:] = -1  # a padded block: its last positions have no next token
    y[2, 4] = -1
    if ties:  # a token, and a whole sequence, where all tie
        z[:, 1, 2] = z[0, 1, 2]
        z[:, 2] = z[0, 2]
    return z, y


def kl(t, s, temperature):
    """T^2 KL(softmax(t / T) || softmax(s / T)) of two vectors."""
    log_t, log_s = F.log_softmax(t / temperature, -1), F.log_softmax(s / temperature, -1)
    return (log_t.exp() * (log_t - log_s)).sum() * temperature**2


def best_of(scores):
    """The unique best participant, or None on a shared maximum."""
    top = max(scores)
    return None if sum(1 for s in scores if s == top) > 1 else scores.index(top)


def reference(task, z, y, temperature, weight, detach):
    """method.md sections 3 and 8, one unit at a time."""
    n = z.shape[0]
    if task.name == "segmentation":
        pixels = [(i, h, w) for i in range(B) for h in range(H) for w in range(W) if y[i, h, w] >= 0]
        loss = sum(sum(F.cross_entropy(z[m, i, :, h, w], y[i, h, w], reduction="sum") for i, h, w in pixels) / len(pixels)
                   for m in range(n))
        if task.unit == "pixel":
            for i, h, w in pixels:
                t = best_of([float(z[m, i, :, h, w].detach().softmax(-1)[y[i, h, w]]) for m in range(n)])
                if t is None:
                    continue
                zt = z[t, i, :, h, w].detach() if detach else z[t, i, :, h, w]
                loss = loss + sum(weight * kl(zt, z[j, i, :, h, w], temperature) / len(pixels) for j in range(n) if j != t)
            return loss
        for i in range(B):
            own = [(h, w) for (k, h, w) in pixels if k == i]
            scores = [-float(sum(F.cross_entropy(z[m, i, :, h, w].detach(), y[i, h, w]) for h, w in own) / len(own)) for m in range(n)]
            t = best_of(scores)
            if t is None:
                continue
            zt = z[t].detach() if detach else z[t]
            for j in range(n):
                if j != t:
                    loss = loss + weight * sum(kl(zt[i, :, h, w], z[j, i, :, h, w], temperature) for h, w in own) / len(own) / B
        return loss
    if task.name == "language_model":  # a token is a sample; a sequence is an image of tokens
        tokens = [(i, t) for i in range(B) for t in range(T) if y[i, t] >= 0]
        loss = sum(sum(F.cross_entropy(z[m, i, t], y[i, t], reduction="sum") for i, t in tokens) / len(tokens) for m in range(n))
        if task.unit == "token":
            for i, t in tokens:
                best = best_of([float(z[m, i, t].detach().softmax(-1)[y[i, t]]) for m in range(n)])
                if best is not None:
                    zt = z[best, i, t].detach() if detach else z[best, i, t]
                    loss = loss + sum(weight * kl(zt, z[j, i, t], temperature) / len(tokens) for j in range(n) if j != best)
            return loss
        for i in range(B):
            own = [t for (k, t) in tokens if k == i]
            scores = [-float(sum(F.cross_entropy(z[m, i, t].detach(), y[i, t]) for t in own) / len(own)) for m in range(n)]
            best = best_of(scores)  # MinCE: the lowest mean CE over the sequence teaches all of it
            if best is not None:
                zt = z[best].detach() if detach else z[best]
                loss = loss + sum(weight * sum(kl(zt[i, t], z[j, i, t], temperature) for t in own) / len(own) / B
                                  for j in range(n) if j != best)
        return loss
    maps = z.flatten(-2).softmax(-1)
    gt = y.flatten(-2) / y.flatten(-2).sum(-1, keepdim=True)
    per = [[kld(gt[i], maps[m, i]) - cc(maps[m, i], gt[i]) for i in range(B)] for m in range(n)]
    loss = sum(sum(per[m]) / B for m in range(n))
    for i in range(B):
        t = best_of([-float(per[m][i].detach()) for m in range(n)])
        if t is None:
            continue
        zt = z[t, i].flatten().detach() if detach else z[t, i].flatten()
        loss = loss + sum(weight * kl(zt, z[j, i].flatten(), temperature) / B for j in range(n) if j != t)
    return loss


TASKS = [Task("segmentation", "pixel"), Task("segmentation", "image"), Task("saliency"),
         Task("language_model", "token"), Task("language_model", "sequence")]


def batch(task, n, seed=0, ties=True):
    return {"segmentation": segmentation, "saliency": saliency, "language_model": language}[task.name](n, seed, ties)


@pytest.mark.parametrize("task", TASKS, ids=lambda t: f"{t.name}-{t.unit}")
@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("detach", [False, True])
def test_the_loss_is_the_rule_written_out(task, n, detach):
    z, y = batch(task, n, seed=n)
    za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
    kwargs = dict(task=task.name, unit=task.unit, temperature=2.0, weight=0.7, detach_teacher=detach)
    ours = swarm_loss(za, y, **kwargs)
    ref = reference(task, zb, y, 2.0, 0.7, detach)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(za.grad, zb.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("task", TASKS, ids=lambda t: f"{t.name}-{t.unit}")
@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("strategy", ["best", "better", "dml", "kl_dp"])
def test_shares_and_gradients_split_the_global_loss(task, n, detach, strategy):
    """Each participant's share, computed from its own outputs and its peers' detached ones, sums to the
    global loss, and its gradient is the global gradient at its own outputs (what the swarm relies on)."""
    z, y = batch(task, n, seed=20 + n)
    frozen = (z + 0.3 * torch.randn_like(z)) if strategy == "kl_dp" else None
    kwargs = dict(task=task.name, unit=task.unit, strategy=strategy, temperature=1.5, weight=1.3,
                  detach_teacher=detach, frozen_logits=frozen)
    zg = z.clone().requires_grad_()
    shares, roles = swarm_loss_terms(zg, y, **kwargs)
    (global_grad,) = torch.autograd.grad(shares.sum(), zg)
    for m in range(n):
        share, own_roles = participant_loss(z[m], z, m, y, **kwargs)
        torch.testing.assert_close(share, shares[m], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(own_roles, roles)
        torch.testing.assert_close(participant_grad(z[m], z, m, y, **kwargs), global_grad[m], rtol=1e-10, atol=1e-12)


def test_ties_and_ignored_pixels_carry_nothing():
    n = 3
    z, y = segmentation(n)
    for unit in ("pixel", "image"):
        _, roles = swarm_loss_terms(z, y, task="segmentation", unit=unit)
        # The planted ties are dropped: pixel (0, 1, 1) and every pixel of image 2; image 2.
        untaught = 1 + int((y[2] >= 0).sum()) if unit == "pixel" else 1
        units = int((y >= 0).sum()) if unit == "pixel" else B
        assert int(roles.sum()) == (units - untaught) * (n - 1)  # best: a taught unit teaches each other participant
    # An ignored pixel's outputs change nothing, and get no gradient.
    zg = z.clone().requires_grad_()
    loss = swarm_loss(zg, y, task="segmentation", unit="pixel")
    loss.backward()
    assert zg.grad[:, 0, :, 0, :2].abs().max() == 0
    moved = z.clone()
    moved[:, 0, :, 0, :2] += 5
    torch.testing.assert_close(swarm_loss(moved, y, task="segmentation", unit="pixel"), loss.detach())


def test_a_pixel_unit_is_a_classification_sample():
    """The pixel unit is classification over the labelled pixels, exactly."""
    z, y = segmentation(3, ties=False)
    labelled = y >= 0
    as_samples = z.movedim(2, -1)[:, labelled]
    torch.testing.assert_close(swarm_loss(z, y, task="segmentation", unit="pixel", temperature=2.0),
                               swarm_loss(as_samples, y[labelled], temperature=2.0), rtol=0, atol=0)


def test_bad_task_or_unit_is_refused():
    with pytest.raises(ValueError, match="task must be one of"):
        Task("detection")
    with pytest.raises(ValueError, match="has units"):
        Task("saliency", "pixel")


def test_saliency_measures_are_the_usual_ones():
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(2, 20, generator=g, dtype=torch.float64)
    torch.testing.assert_close(cc(a, b), torch.corrcoef(torch.stack([a, b]))[0, 1])
    p, q = a / a.sum(), b / b.sum()
    torch.testing.assert_close(kld(a, b), (p * torch.log(1e-7 + p / (q + 1e-7))).sum())
    assert kld(a, a) < 1e-6 and abs(float(cc(a, 3 * a + 1)) - 1) < 1e-12


@pytest.mark.parametrize("task", TASKS, ids=lambda t: f"{t.name}-{t.unit}")
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("strategy", ["best", "better", "dml", "kl_dp"])
def test_the_partition_cut_for_the_exchange_is_the_same_loss(task, detach, strategy):
    """partition.py's four steps in one process (the local engine; the swarm runs them sharded) give each
    participant the share and gradient of swarm_loss, and the same role matrix."""
    n = 3
    z, y = batch(task, n, seed=40)
    frozen = (z + 0.3 * torch.randn_like(z)) if strategy == "kl_dp" else None
    kwargs = dict(task=task.name, unit=task.unit, strategy=strategy, temperature=1.5, weight=1.3, detach_teacher=detach)
    zg = z.clone().requires_grad_()
    shares, roles = swarm_loss_terms(zg, y, frozen_logits=frozen, **kwargs)
    (want,) = torch.autograd.grad(shares.sum(), zg)
    outputs = [z[m].clone().requires_grad_() for m in range(n)]
    got, plan, _ = in_one_process(outputs, y, LossSpec(**kwargs), None if frozen is None else list(frozen))
    torch.testing.assert_close(torch.stack([g.detach() for g in got]), shares.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(plan.roles, roles)
    for m in range(n):
        (grad,) = torch.autograd.grad(got[m], outputs[m])
        torch.testing.assert_close(grad, want[m], rtol=1e-10, atol=1e-12)


def test_a_language_model_counts_only_tokens_with_a_next_one():
    """Perplexity's and accuracy's counts skip padding and positions without a next token."""
    z, y = language(1, ties=False)
    counts = token_counts(z[0], y)
    torch.testing.assert_close(counts[:, 1], (y >= 0).sum(dim=1).double())
    ce = F.cross_entropy(z[0][y >= 0], y[y >= 0], reduction="sum")
    torch.testing.assert_close(counts[:, 0].sum(), ce)
    moved = z.clone()
    moved[0, 0, 3:] = 100.0  # what a model says where there is no next token changes nothing
    torch.testing.assert_close(token_counts(moved[0], y), counts)
    torch.testing.assert_close(swarm_loss(moved.expand(2, -1, -1, -1), y, task="language_model", unit="token"),
                               swarm_loss(z.expand(2, -1, -1, -1), y, task="language_model", unit="token"))


def width(task, z):
    """K, what a unit's distribution is over (classes, a vocabulary, a map's pixels)."""
    return z.shape[2] if task.name == "segmentation" else z.shape[-1] if task.name == "language_model" else H * W


@pytest.mark.parametrize("task", TASKS, ids=lambda t: f"{t.name}-{t.unit}")
@pytest.mark.parametrize("strategy", ["best", "dml", "kl_dp"])
def test_top_k_of_the_whole_distribution_is_the_dense_exchange(task, strategy):
    """transfer.top_k = K (every class, token or pixel) sends the whole distribution: shares and gradients
    are the dense exchange's."""
    z, y = batch(task, 3, seed=50)
    frozen = list(z + 0.3 * torch.randn_like(z)) if strategy == "kl_dp" else None
    spec = LossSpec(task=task.name, unit=task.unit, strategy=strategy, temperature=1.5, weight=1.3)
    sparse = LossSpec(**{**spec.__dict__, "top_k": width(task, z)})
    for m in range(3):
        dense_out = [z[i].clone().requires_grad_() for i in range(3)]
        sparse_out = [z[i].clone().requires_grad_() for i in range(3)]
        want, plan_d, _ = in_one_process(dense_out, y, spec, frozen)
        got, plan_s, _ = in_one_process(sparse_out, y, sparse, frozen)
        torch.testing.assert_close(got[m], want[m], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(plan_s.roles, plan_d.roles)
        torch.testing.assert_close(torch.autograd.grad(got[m], sparse_out[m])[0],
                                   torch.autograd.grad(want[m], dense_out[m])[0], rtol=1e-8, atol=1e-10)


def test_top_k_with_one_teacher_is_the_teachers_top_k_kl_with_a_bucket_for_the_rest():
    """With one teacher per token (best), the share is CE plus, where it learns, T^2 KL between the teacher's
    top k plus one bucket for the rest of its mass and the student's mass on the same buckets."""
    task, k, temperature = Task("language_model", "token"), 3, 1.5
    z, y = batch(task, 3, seed=51, ties=False)
    spec = LossSpec(task="language_model", unit="token", temperature=temperature, weight=0.8, top_k=k)
    outputs = [z[m].clone().requires_grad_() for m in range(3)]
    got, plan, _ = in_one_process(outputs, y, spec)
    tokens = [(i, t) for i in range(B) for t in range(T) if y[i, t] >= 0]
    for j in range(3):
        want = F.cross_entropy(outputs[j][y >= 0], y[y >= 0])
        for u, (i, t) in enumerate(tokens):
            teacher = int(plan.weights[:, j, u].argmax())
            if plan.weights[teacher, j, u] == 0:
                continue
            p_t = F.softmax(z[teacher, i, t] / temperature, -1)
            top = p_t.topk(k).indices
            p_s = F.softmax(outputs[j][i, t] / temperature, -1)
            buckets_t = torch.cat([p_t[top], (1 - p_t[top].sum()).view(1)])
            buckets_s = torch.cat([p_s[top], (1 - p_s[top].sum()).view(1)])
            kl_top = (buckets_t * (buckets_t.log() - buckets_s.log())).sum() * temperature**2
            want = want + 0.8 * kl_top / len(tokens)
        torch.testing.assert_close(got[j], want, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(torch.autograd.grad(got[j], outputs[j], retain_graph=True)[0],
                                   torch.autograd.grad(want, outputs[j])[0], rtol=1e-9, atol=1e-12)
