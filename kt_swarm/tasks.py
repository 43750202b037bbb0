"""What changes per task (docs/method.md: Other tasks): the unit the partition works on, its score, the task loss
and the transfer divergence. The rule itself (roles.py, objectives.py) is the same for every task.

    classification   outputs [.., B, C], target [B] (-1: unlabelled)        unit: the sample
    segmentation     outputs [.., B, C, H, W], target [B, H, W] (-1: ignore) unit: pixel | image
    saliency         outputs [.., B, H, W] (a map's logits over pixels),
                     target [B, H, W] (a density map, >= 0)                   unit: the sample
    language_model   outputs [.., B, T, V] (next-token logits),
                     target [B, T] (the next token; -1: none, padding)          unit: token | sequence

A pixel of a segmentation, or a token of a text, is a classification sample: `units` cuts the batch into
its labelled pixels (tokens) and the classification functions do the rest (CE and transfer averaged over
them). Every other unit is a sample (an image, a sequence): `score` [N, B], `divergence` per sample, the
transfer term averaged over the batch. A sequence unit has one teacher for the whole sequence, the
participant with the lowest mean CE on it (FuseLLM's MinCE). Pure tensor functions: no I/O, no Ray.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kt_swarm.config import UNITS

TASKS = tuple(UNITS)
EPS = 1e-7  # the saliency metrics' usual guard against log(0) and division by 0


@dataclass(frozen=True)
class Task:
    name: str = "classification"
    unit: str = "sample"

    def __post_init__(self):
        if self.name not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.name!r}")
        if self.unit not in UNITS[self.name]:
            raise ValueError(f"task {self.name!r} has units {UNITS[self.name]}, got {self.unit!r}")

    @property
    def per_sample(self) -> bool:
        """True where the classification functions apply to the units as they are (classification, and
        a segmentation's pixels or a text's tokens once `units` has cut them out)."""
        return self.name == "classification" or self.unit in ("pixel", "token")

    def units(self, outputs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel units: [.., B, C, H, W] and [B, H, W] -> [.., P, C] and [P], the P labelled pixels in order
        (gradients flow back through the selection); token units: [.., B, T, V] and [B, T] -> [.., P, V] and
        [P], the P tokens that have a next token. Any other unit: unchanged."""
        labelled = target >= 0
        if self.unit == "pixel":
            return outputs.movedim(-3, -1)[..., labelled, :], target[labelled]
        if self.unit == "token":
            return outputs[..., labelled, :], target[labelled]
        return outputs, target

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The task loss of each participant, [.., B, ...] -> [..]: CE over the labelled samples or pixels,
        or the saliency loss averaged over the batch."""
        if self.name == "classification":
            return labelled_ce(outputs, target)
        if self.name == "language_model":  # CE over the batch's tokens that have a next token, whatever the unit
            return labelled_ce(outputs.flatten(-3, -2), target.flatten())
        if self.name == "segmentation":  # CE over the labelled pixels of the batch
            labelled = target >= 0
            count = int(labelled.sum())
            if count == 0:
                return outputs.sum(dim=(-4, -3, -2, -1)) * 0
            ce = _pixel_ce(outputs, target)
            return ce.sum(dim=(-3, -2, -1)) / count
        return saliency_loss(outputs, target).mean(dim=-1)

    def score(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """[N, B, ...] detached outputs -> [N, B] scores: minus each image's task loss (docs/method.md: Other tasks)."""
        outputs = outputs.detach()
        if self.name == "segmentation":  # _pixel_ce is 0 at ignored pixels: sum, then divide by the labelled
            labelled = (target >= 0).sum(dim=(-2, -1)).clamp(min=1)
            return -_pixel_ce(outputs, target).sum(dim=(-2, -1)) / labelled
        if self.name == "language_model":  # minus each sequence's mean CE over its tokens (MinCE's choice)
            return -_token_ce(outputs, target).sum(dim=-1) / (target >= 0).sum(dim=-1).clamp(min=1)
        return -saliency_loss(outputs, target)

    def divergence(self, teacher: torch.Tensor, student: torch.Tensor, temperature: float,
                   target: torch.Tensor) -> torch.Tensor:
        """Per-sample T^2 KL(teacher || student), broadcast over leading dims: [.., B, ...] -> [.., B].
        Segmentation images: the per-pixel KL averaged over the image's labelled pixels. Saliency: the
        maps as distributions over pixels. Sequences: the per-token KL averaged over the sequence's tokens."""
        if self.name == "language_model":
            kl = kl_to_student(teacher, student, temperature)  # [.., B, T]
            labelled = (target >= 0).to(kl.dtype)
            return (kl * labelled).sum(dim=-1) / labelled.sum(dim=-1).clamp(min=1)
        if self.name == "segmentation":
            kl = kl_to_student(teacher.movedim(-3, -1), student.movedim(-3, -1), temperature)  # [.., B, H, W]
            labelled = (target >= 0).to(kl.dtype)
            return (kl * labelled).sum(dim=(-2, -1)) / labelled.sum(dim=(-2, -1)).clamp(min=1)
        return kl_to_student(teacher.flatten(-2), student.flatten(-2), temperature)


def labelled_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[..., B, C] -> [...]: CE averaged over the labelled samples (target >= 0); 0 where there are none."""
    labelled = target >= 0
    count = int(labelled.sum())
    if count == 0:
        return logits.sum(dim=(-1, -2)) * 0
    z = logits[..., labelled, :]
    y = target[labelled].expand(z.shape[:-1])
    return F.cross_entropy(z.flatten(0, -2), y.flatten(), reduction="none").view(y.shape).mean(dim=-1)


def kl_to_student(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample T^2 * KL(p_teacher || p_student), summed over classes: [..., B, C] -> [..., B]."""
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1) * temperature**2


def _pixel_ce(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[.., B, C, H, W] -> [.., B, H, W] per-pixel CE; 0 at ignored pixels (target < 0)."""
    log_p = F.log_softmax(outputs, dim=-3)
    index = target.clamp(min=0).unsqueeze(-3).expand(*log_p.shape[:-3], 1, *target.shape[-2:])
    return -log_p.gather(-3, index).squeeze(-3) * (target >= 0).to(log_p.dtype)


def _token_ce(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[.., B, T, V] -> [.., B, T] per-token CE; 0 where there is no next token (target < 0)."""
    log_p = F.log_softmax(outputs, dim=-1)
    index = target.clamp(min=0).unsqueeze(-1).expand(*log_p.shape[:-1], 1)
    return -log_p.gather(-1, index).squeeze(-1) * (target >= 0).to(log_p.dtype)


def token_counts(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Next-token logits [B, T, V] and targets [B, T] -> each sequence's summed CE, tokens scored and tokens
    predicted right (arg-max), [B, 3] float64: what perplexity and next-token accuracy need, per sequence."""
    labelled = target >= 0
    ce = _token_ce(outputs.double(), target).sum(dim=-1)
    right = ((outputs.argmax(dim=-1) == target) & labelled).sum(dim=-1)
    return torch.stack([ce, labelled.sum(dim=-1).double(), right.double()], dim=-1)


def saliency_loss(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The published saliency code's per-sample task loss, KLD(gt || map) - CC(map, gt): [.., B, H, W] -> [.., B].
    The map is the softmax of the outputs over pixels; kld normalises the ground truth, cc needs no scale."""
    pred = F.softmax(outputs.flatten(-2), dim=-1)
    gt = target.flatten(-2).to(pred.dtype)
    return kld(gt, pred) - cc(pred, gt)


def kld(gt: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """KL(gt || pred) of two maps as distributions over their pixels (flattened last dim), the saliency form."""
    gt = gt / gt.sum(dim=-1, keepdim=True).clamp(min=EPS)
    pred = pred / pred.sum(dim=-1, keepdim=True).clamp(min=EPS)
    return (gt * torch.log(EPS + gt / (pred + EPS))).sum(dim=-1)


def cc(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Pearson's correlation of two maps over their pixels (flattened last dim)."""
    a = pred - pred.mean(dim=-1, keepdim=True)
    b = gt - gt.mean(dim=-1, keepdim=True)
    return (a * b).sum(dim=-1) / (a.square().sum(dim=-1) * b.square().sum(dim=-1)).sqrt().clamp(min=EPS)


def sim(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Similarity (histogram intersection) of two maps as distributions over their pixels: 1 when equal."""
    pred = pred / pred.sum(dim=-1, keepdim=True).clamp(min=EPS)
    gt = gt / gt.sum(dim=-1, keepdim=True).clamp(min=EPS)
    return torch.minimum(pred, gt).sum(dim=-1)


def nss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Normalized scanpath saliency: the map standardised over its pixels, averaged at the fixations. A density
    map has no fixations, so each pixel counts with its ground-truth density (the expectation of NSS over
    fixations drawn from the ground truth); with a binary fixation map this is the usual NSS."""
    z = (pred - pred.mean(dim=-1, keepdim=True)) / pred.std(dim=-1, keepdim=True).clamp(min=EPS)
    return (z * gt).sum(dim=-1) / gt.sum(dim=-1).clamp(min=EPS)


SALIENCY_METRICS = ("kld", "cc", "sim", "nss")  # the saliency literature's (MIT/Tuebingen benchmark) names


def saliency_metrics(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image KLD, CC, SIM and NSS of map logits [B, H, W] against density maps [B, H, W]: [B, 4] float64."""
    pred = F.softmax(outputs.flatten(-2).double(), dim=-1)
    gt = target.flatten(-2).double()
    return torch.stack([kld(gt, pred), cc(pred, gt), sim(pred, gt), nss(pred, gt)], dim=-1)
