"""What a run reports (docs/method.md: Honest evaluation, Other tasks): accuracy, top-k accuracy,
prediction flips against the starting predictions (Roth et al.), complementary knowledge, success
rate, teach share; mIoU and pixel accuracy for segmentation; KLD, CC, SIM and NSS for saliency; a language
model's log-likelihood, perplexity and next-token accuracy, overall and per domain.

Predictions are what Participant.predict keeps: [N, n] top-1 classes or [N, n, k] top-k classes, best
first; segmentation: [N, n, H, W] classes per pixel (targets -1 where ignored); saliency: [N, n, 4] each
image's KLD, CC, SIM, NSS. Each task has one headline metric, higher is better, that selection and trusted
teachers use and that summary.json, the log and W&B name it by (HEADLINE: accuracy_after, val_miou, test_cc). Flips and complementary knowledge count
units that are right or wrong: samples, or a segmentation's labelled pixels; a saliency map has none."""
from __future__ import annotations

import torch

from kt_swarm.tasks import SALIENCY_METRICS

HEADLINE = {"classification": "accuracy", "segmentation": "miou", "saliency": "cc", "language_model": "log_likelihood"}


def _top1(preds: torch.Tensor) -> torch.Tensor:
    return preds[..., 0] if preds.dim() == 3 else preds


def accuracy(preds: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Each participant's top-1 accuracy, as a fraction."""
    return (_top1(preds) == labels.unsqueeze(0)).double().mean(dim=1).tolist()


def topk_accuracy(preds: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """[N, n, k] top-k classes -> each participant's top-k accuracy (the label among its k guesses)."""
    return (preds == labels.view(1, -1, 1)).any(dim=-1).double().mean(dim=1).tolist()


def correct(preds: torch.Tensor, target: torch.Tensor, task: str = "classification") -> torch.Tensor | None:
    """[N, units] bool: each participant right or wrong on every sample, or every labelled pixel (segmentation);
    None for saliency and language models (a token's rightness is not kept)."""
    if task in ("saliency", "language_model"):
        return None
    if task == "segmentation":
        labelled = target >= 0
        return preds[:, labelled].long() == target[labelled]
    return _top1(preds) == target


def miou(preds: torch.Tensor, target: torch.Tensor, num_classes: int) -> list[float]:
    """Each participant's mean intersection over union over the classes present in the truth or its prediction,
    from the confusion matrix of every labelled pixel of the split (the VOC / ADE20K way)."""
    labelled = target >= 0
    truth = target[labelled]
    out = []
    for p in preds[:, labelled].long():
        confusion = torch.bincount(truth * num_classes + p, minlength=num_classes**2).view(num_classes, num_classes).double()
        hits = confusion.diagonal()
        union = confusion.sum(dim=0) + confusion.sum(dim=1) - hits
        out.append(float((hits[union > 0] / union[union > 0]).mean()))
    return out


def language_model_metrics(preds: torch.Tensor, domain: torch.Tensor, domains: list[str]) -> dict[str, list[float]]:
    """[N, n, 3] each block's summed CE, tokens and tokens right, and each block's domain -> per participant the
    mean log-likelihood of a next token (nats; higher is better, the headline), perplexity (exp of minus it) and
    next-token accuracy, over all tokens and per domain (`perplexity/<domain>`, ...)."""
    def of(p: torch.Tensor) -> dict[str, list[float]]:
        ce, count, right = p.sum(dim=1).unbind(-1)
        ll = -ce / count.clamp(min=1)
        return {"log_likelihood": ll.tolist(), "perplexity": ll.neg().exp().tolist(),
                "token_accuracy": (right / count.clamp(min=1)).tolist()}

    out = of(preds)
    for d, name in enumerate(domains):
        if len(domains) > 1 and bool((domain == d).any()):
            out.update({f"{k}/{name}": v for k, v in of(preds[:, domain == d]).items() if k != "log_likelihood"})
    return out


def task_metrics(preds: torch.Tensor, target: torch.Tensor, task: str = "classification",
                 num_classes: int = 0, domains: list[str] | None = None) -> dict[str, list[float]]:
    """Every metric of the task, per participant, the headline first (language models: `target` is each
    block's domain, named by `domains`)."""
    if task == "language_model":
        return language_model_metrics(preds, target, domains or [])
    if task == "segmentation":
        return {"miou": miou(preds, target, num_classes), "pixel_accuracy": correct(preds, target, task).double().mean(dim=1).tolist()}
    if task == "saliency":
        means = preds.mean(dim=1)  # over images: [N, 4]
        return {"cc": means[:, 1].tolist(), **{m: means[:, i].tolist() for i, m in enumerate(SALIENCY_METRICS) if m != "cc"}}
    return {"accuracy": accuracy(preds, target), **({"top5": topk_accuracy(preds, target)} if preds.dim() == 3 and preds.shape[-1] == 5 else {})}


def headline(preds: torch.Tensor, target: torch.Tensor, task: str = "classification", num_classes: int = 0) -> list[float]:
    """The task's headline metric per participant (HEADLINE), higher is better."""
    if task == "classification":
        return accuracy(preds, target)
    return task_metrics(preds, target, task, num_classes, [])[HEADLINE[task]]


def flips(start: torch.Tensor, end: torch.Tensor, target: torch.Tensor,
          task: str = "classification") -> tuple[list[float], list[float]] | tuple[None, None]:
    """Knowledge gain and loss against each participant's own starting predictions: the share of
    units wrong at the start and right at the end (positive flips), and right then wrong (negative)."""
    right_start, right_end = correct(start, target, task), correct(end, target, task)
    if right_start is None:
        return None, None
    return ((~right_start & right_end).double().mean(dim=1).tolist(),
            (right_start & ~right_end).double().mean(dim=1).tolist())


def complementary(preds: torch.Tensor, target: torch.Tensor, task: str = "classification") -> list[float] | None:
    """Share of units some other participant gets right and this one gets wrong: what it could learn."""
    right = correct(preds, target, task)
    if right is None:
        return None
    n = right.shape[0]
    others = torch.stack([right[[j for j in range(n) if j != i]].any(dim=0) for i in range(n)]) if n > 1 else torch.zeros_like(right)
    return (others & ~right).double().mean(dim=1).tolist()


def success_rate(deltas: list[float]) -> float:
    """Share of participants whose accuracy went up."""
    return sum(d > 0 for d in deltas) / len(deltas) if deltas else 0.0


def teach_share(role_matrix: torch.Tensor, samples: int) -> list[float]:
    """Share of the epoch's samples each participant taught: its teaching weights toward its N - 1
    students (the off-diagonal row sum; the diagonal is what it learned from itself) over N - 1."""
    n = role_matrix.shape[0]
    taught = (role_matrix.sum(dim=1) - role_matrix.diagonal()).double() / max(n - 1, 1)
    return (taught / max(samples, 1)).tolist()
