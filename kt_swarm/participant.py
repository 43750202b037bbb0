"""One participant: a model, its preprocessing and its optimizer, on its own device.

The engines (local.py: all in this process; swarm/: one Ray actor each) drive participants only
through these methods, so both run the same numbers.
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kt_swarm import deepspeed_host as ds
from kt_swarm.data import BatchPlan, Dataset, Preprocess
from kt_swarm.errors import UserError, first_line, one_line
from kt_swarm.lm import context_length
from kt_swarm.tasks import SALIENCY_METRICS, saliency_metrics, token_counts


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        index = name.partition(":")[2]
        if not torch.cuda.is_available():
            raise UserError(f"config key 'device': {name} asked for, but CUDA is not available here (use cpu or auto)")
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise UserError(f"config key 'device': {name} does not exist ({torch.cuda.device_count()} CUDA devices)")
    return torch.device(name)


def make_optimizer(kind: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind]
    optimizer = cls(params, lr=lr, weight_decay=weight_decay)
    for group in optimizer.param_groups:  # where torch's schedulers keep it too; saved with the optimizer's state
        group["initial_lr"] = lr
    return optimizer


def lr_scale(schedule: str, step: int, total: int) -> float:
    """The learning rate of step `step` of `total`, as a share of the participant's own: constant, or
    cosine from 1 down to 0 over the arm. A function of the step alone, so a resumed arm continues exactly."""
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / total))
    return 1.0


def seeded_rng(seed: int, device: torch.device) -> dict:
    """A fresh RNG stream's state (as rng_state gives it), seeded: a participant's own, whatever else its
    process hosts."""
    outer = rng_state(device)
    torch.manual_seed(seed)  # seeds the CUDA generators too
    state = rng_state(device)
    set_rng_state(outer, device)
    return state


def rng_state(device: torch.device) -> dict:
    """The process's torch RNG (dropout, drop-path); data order and augmentation have their own seeds."""
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def copy_tensors(obj, device: str | torch.device | None = None):
    """A copy of every tensor in nested dicts/lists/tuples (on `device` if given), the rest as is."""
    if torch.is_tensor(obj):
        return obj.detach().to(device or obj.device, copy=True)
    if isinstance(obj, dict):
        return {k: copy_tensors(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(copy_tensors(v, device) for v in obj)
    return obj


def at_size(outputs: torch.Tensor, size: int) -> torch.Tensor:
    """Dense outputs ([B, C, h, w] or one map [B, h, w]) resized to the data's size, so every participant
    answers for the same pixels whatever its own input size; logits [B, C] (and a language model's [B, T, V]:
    text has no size, 0) as they are."""
    if outputs.dim() < 3 or not size or outputs.shape[-1] == size:
        return outputs
    grid = outputs if outputs.dim() == 4 else outputs.unsqueeze(1)
    grid = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)
    return grid if outputs.dim() == 4 else grid.squeeze(1)


@dataclass
class Participant:
    name: str
    model: nn.Module
    preprocess: Preprocess
    device: torch.device
    optimizer: torch.optim.Optimizer | None = None
    autocast: torch.dtype | None = None  # mixed precision for the forward pass; weights stay float32
    start_copy: nn.Module | None = None  # frozen copy of the weights at the start of the arm (kl_dp)
    deepspeed: dict | None = None  # the filled DeepSpeed config: hosted by a DeepSpeed engine (deepspeed_host.py)
    engine: object | None = None  # that engine, made with each arm's fresh optimizer
    rng: dict | None = None  # its own RNG stream (dropout, drop-path), swapped in around its training forward, so
    # that a participant draws the same numbers alone in a process, beside others in one, or in the local engine

    @contextlib.contextmanager
    def _own_rng(self):
        if self.rng is None:
            yield
            return
        outer = rng_state(self.device)
        set_rng_state(self.rng, self.device)
        try:
            yield
        finally:
            self.rng = rng_state(self.device)
            set_rng_state(outer, self.device)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None)

    def reset_optimizer(self, kind: str, lr: float, weight_decay: float) -> None:
        self.optimizer = make_optimizer(kind, self.model.parameters(), lr, weight_decay)
        if self.deepspeed is not None:  # a fresh engine around the same module: ZeRO partitions the new optimizer
            if self.engine is not None:  # the last arm's: its hooks would keep it (and its optimizer state) alive
                self.engine.destroy()
            self.engine = ds.wrap(self.name, self.model, self.optimizer, self.deepspeed)
            self.optimizer = self.engine.optimizer

    def step(self, scale: float = 1.0) -> None:
        """The optimizer's step at `scale` times the participant's learning rate (lr_scale)."""
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * scale
        if self.engine is not None:
            self.engine.step()
        else:
            self.optimizer.step()

    def zero_grad(self) -> None:
        if self.engine is not None:
            self.engine.zero_grad()
        else:
            self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        """Gradients of this participant's share (DeepSpeed's backward reduces and partitions them)."""
        if self.engine is not None:
            self.engine.backward(loss)
        else:
            loss.backward()

    def forward(self, data: Dataset, plan: BatchPlan, learns: bool = True) -> torch.Tensor:
        """Training-mode outputs of the planned batch (logits [B, C], or dense ones at the data's size), graph
        kept for the backward; a participant that does not learn (a frozen teacher) forwards in eval mode
        without a graph."""
        x = self.preprocess(data.inputs(plan.ids, plan), self.device)
        if not learns:
            return self._frozen_logits(self.model, x, data.image_size)
        self.model.train()
        with self._autocast(), self._own_rng():
            logits = self.model(x)
        # The losses (softmax, KL) are computed at the weights' precision, never in bf16/fp16.
        return at_size(logits.to(self.preprocess.dtype), data.image_size)

    def start_logits(self, data: Dataset, plan: BatchPlan) -> torch.Tensor:
        """The frozen starting copy's outputs of the planned batch (eval mode, no graph)."""
        x = self.preprocess(data.inputs(plan.ids, plan), self.device)
        return self._frozen_logits(self.start_copy, x, data.image_size)

    @torch.no_grad()
    def _frozen_logits(self, model: nn.Module, x: torch.Tensor, size: int) -> torch.Tensor:
        model.eval()
        with self._autocast():
            return at_size(model(x).to(self.preprocess.dtype), size)

    def set_start_copy(self, weights: dict[str, torch.Tensor] | None) -> None:
        """Keep a frozen copy of the model with these weights (the arm's start), or drop it (None)."""
        if weights is None:
            self.start_copy = None
            return
        if self.start_copy is None:
            self.start_copy = copy.deepcopy(self.model).requires_grad_(False)
        self.start_copy.load_state_dict(weights)

    @torch.no_grad()
    def _evaluate(self, data: Dataset, ids: torch.Tensor, batch_size: int, keep) -> list[torch.Tensor]:
        """keep(eval-mode outputs at the data's size, ids) of each batch of the given ids (no augmentation), on the CPU."""
        self.model.eval()
        out = []
        for i in range(0, len(ids), batch_size):
            batch = ids[i : i + batch_size]
            with self._autocast():
                z = self.model(self.preprocess(data.inputs(batch), self.device))
            out.append(keep(at_size(z.to(self.preprocess.dtype), data.image_size), batch).cpu())
        return out

    def predict(self, data: Dataset, ids: torch.Tensor, batch_size: int, k: int = 1) -> torch.Tensor:
        """What the task's metrics need (metrics.py), in eval mode, on the CPU: the top-k classes [n, k], best
        first; segmentation: each pixel's class, uint8 [n, H, W]; saliency: each image's KLD, CC, SIM and NSS
        [n, 4] (a map per image would be large to keep for every arm); language_model: each block's summed
        next-token CE, tokens scored and tokens right [n, 3]."""
        def keep(z: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
            if data.task == "language_model":
                return token_counts(z, data.target(batch).to(z.device))
            if data.task == "segmentation":
                return z.argmax(dim=1).to(torch.uint8)
            if data.task == "saliency":
                return saliency_metrics(z, data.target(batch).to(z.device))
            return z.topk(k, dim=-1).indices

        width = {"segmentation": (data.image_size, data.image_size), "saliency": (len(SALIENCY_METRICS),),
                 "language_model": (3,)}.get(data.task, (k,))
        empty = torch.empty(0, *width, dtype={"segmentation": torch.uint8, "saliency": torch.float64,
                                              "language_model": torch.float64}.get(data.task, torch.long))
        out = self._evaluate(data, ids, batch_size, keep)
        return torch.cat(out) if out else empty

    def logits(self, data: Dataset, ids: torch.Tensor, batch_size: int) -> torch.Tensor:
        """[n, ...] eval-mode outputs at the weights' dtype for the given ids, on the CPU (calibration, the
        report's example masks and maps)."""
        return torch.cat(self._evaluate(data, ids, batch_size, lambda z, batch: z))

    @torch.no_grad()
    def output_width(self, data: Dataset) -> int:
        """Number of classes the model predicts (1 for a saliency map; a language model's vocabulary), from a
        real forward pass on a blank batch (text: two blocks, whose length the model's context must hold)."""
        self.model.eval()
        if data.tokens is not None:
            block, context = data.tokens.shape[1] - 1, context_length(self.model)
            if context is not None and block > context:
                raise UserError(f"participant '{self.name}': data.text.block {block} is longer than the model's "
                                f"context ({context} positions)")
            try:
                return self.model(self.preprocess(data.inputs(data.splits["train"][:2]), self.device)).shape[-1]
            except Exception as e:  # a model that is no causal LM, and the like
                raise UserError(f"participant '{self.name}': the model fails on token blocks: {first_line(e)}") from None
        probe = torch.zeros(2, data.channels, data.image_size, data.image_size, dtype=torch.uint8)
        try:
            out = self.model(self.preprocess(probe, self.device))
        except Exception as e:  # wrong input size for the architecture, and the like
            size = self.preprocess.input_size
            raise UserError(f"participant '{self.name}': the model fails on its {self.preprocess.in_chans}x{size}x{size} input "
                            f"(check input_size and model_args): {first_line(e)}") from None
        return {2: out.shape[-1], 3: 1, 4: out.shape[1]}.get(out.dim(), -1)

    def weights(self) -> dict[str, torch.Tensor]:
        """A detached CPU copy of the model's weights (a best model, the start of the control arm)."""
        if self.engine is not None:
            return ds.weights(self.engine)
        return copy_tensors(self.model.state_dict(), "cpu")

    def state(self) -> dict:
        """Everything a checkpoint needs to continue this participant exactly: weights, optimizer, RNG."""
        opt = ds.optimizer_state(self.engine) if self.engine is not None else (
            self.optimizer.state_dict() if self.optimizer is not None else None)
        return {"model": self.weights(), "optimizer": copy_tensors(opt, "cpu"), "rng": copy_tensors(self.rng) if self.rng is not None else rng_state(self.device)}

    def load_state(self, state: dict) -> None:
        """Weights, and the optimizer's state and the RNG where `state` has them (a best model has neither)."""
        if self.engine is not None:
            ds.load_weights(self.engine, state["model"])
        else:
            try:
                self.model.load_state_dict(state["model"])
            except RuntimeError as e:  # a module handed to a resume that is not the one the run started with
                raise UserError(f"participant '{self.name}': the checkpoint does not fit its model (another "
                                f"architecture?): {one_line(e)}") from None
        if state.get("optimizer") is not None:
            if self.engine is not None:
                ds.load_optimizer_state(self.engine, state["optimizer"])
            else:
                self.optimizer.load_state_dict(state["optimizer"])
        if state.get("rng") is not None and self.rng is not None:
            self.rng = copy_tensors(state["rng"])
        elif state.get("rng") is not None:
            set_rng_state(state["rng"], self.device)

    def buffers(self) -> list[torch.Tensor]:
        """A copy of the model's buffers (BatchNorm statistics): a training forward updates them, so a
        skipped step puts them back (usually a few KB; they are not parameters)."""
        return [b.detach().clone() for b in self.model.buffers()]

    @torch.no_grad()
    def set_buffers(self, saved: list[torch.Tensor]) -> None:
        for b, value in zip(self.model.buffers(), saved):
            b.copy_(value)

    def gradients_finite(self) -> bool:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        # One reduction (and one device sync) for all of them; a norm that overflows counts as bad too.
        return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))

    def clone(self) -> "Participant":
        """A plain copy (model and preprocessing; no optimizer): tests step one against the engine's."""
        return Participant(self.name, copy.deepcopy(self.model), self.preprocess, self.device, autocast=self.autocast)
