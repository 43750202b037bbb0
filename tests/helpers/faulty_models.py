"""Real (tiny) models that fail on purpose, for the swarm's fault tests: importable by Ray workers
through PYTHONPATH, used as `model: faulty_models:failing_mlp`."""
import os
import signal
import time

import torch
from torch import nn


class FailingMLP(nn.Module):
    def __init__(self, num_classes: int, in_chans: int, img_size: int = 28, fail_after: int = 3):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_chans * img_size * img_size, num_classes))
        self.fail_after = fail_after
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls > self.fail_after:
                raise RuntimeError(f"planted failure in training call {self.calls}")
        return self.net(x)


def failing_mlp(num_classes: int, in_chans: int, **kwargs) -> nn.Module:
    return FailingMLP(num_classes, in_chans, **kwargs)


def tiny_mlp(num_classes: int, in_chans: int, img_size: int = 28, hidden: int = 16) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * img_size * img_size, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


class NanMLP(nn.Module):
    """Returns NaN logits in training calls nan_from .. nan_from + nan_calls - 1 (counted from 1)."""

    def __init__(self, num_classes: int, in_chans: int, img_size: int = 28, nan_from: int = 3, nan_calls: int = 1):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_chans * img_size * img_size, num_classes))
        self.nan_from, self.nan_calls, self.calls = nan_from, nan_calls, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.nan_from <= self.calls < self.nan_from + self.nan_calls:
                return out * float("nan")
        return out


def nan_mlp(num_classes: int, in_chans: int, **kwargs) -> nn.Module:
    return NanMLP(num_classes, in_chans, **kwargs)


class SuicidalMLP(nn.Module):
    """SIGKILLs its own process in call `die_at` of `die_in`: "train" (a training forward, zoo pretraining
    included), "backward" (that forward's backward: in the swarm's learn(), once its actor has owned its
    shard and while its peers pull what it mixed), "state" (its state read: a new zoo member's cache file, then the run's start set) or "init"
    (while it is built), in every process that hosts it; with `marker` (a file path), once in all (the
    file says it already has)."""

    def __init__(self, num_classes: int, in_chans: int, img_size: int = 28, die_at: int = 3,
                 marker: str | None = None, die_in: str = "train"):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_chans * img_size * img_size, num_classes))
        self.die_at, self.calls, self.marker, self.die_in = die_at, 0, marker, die_in
        if die_in == "init":
            self._die()

    def _die(self) -> None:
        if self.marker is not None:
            if os.path.exists(self.marker):
                return
            open(self.marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.die_in in ("train", "backward"):
            self.calls += 1
            if self.calls == self.die_at and self.die_in == "train":
                self._die()
        out = self.net(x)
        if self.training and self.die_in == "backward" and self.calls == self.die_at:
            out.register_hook(lambda grad: self._die())  # in learn(), after it owned its shard of the exchange
        return out

    def state_dict(self, *args, **kwargs):
        if self.die_in == "state":
            self.calls += 1
            if self.calls == self.die_at:
                self._die()
        return super().state_dict(*args, **kwargs)


def suicidal_mlp(num_classes: int, in_chans: int, **kwargs) -> nn.Module:
    return SuicidalMLP(num_classes, in_chans, **kwargs)


def bn_mlp(num_classes: int, in_chans: int, img_size: int = 28, hidden: int = 16) -> nn.Module:
    """A tiny MLP with BatchNorm: its running statistics change in every training forward."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * img_size * img_size, hidden), nn.BatchNorm1d(hidden),
                         nn.ReLU(), nn.Linear(hidden, num_classes))


class SlowMLP(nn.Module):
    """A tiny MLP whose training calls take at least `delay` seconds: a run long enough to fault mid-way."""

    def __init__(self, num_classes: int, in_chans: int, img_size: int = 28, hidden: int = 16, delay: float = 0.2):
        super().__init__()
        self.net = tiny_mlp(num_classes, in_chans, img_size, hidden)
        self.delay = delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            time.sleep(self.delay)
        return self.net(x)


def slow_mlp(num_classes: int, in_chans: int, **kwargs) -> nn.Module:
    return SlowMLP(num_classes, in_chans, **kwargs)


def dropout_mlp(num_classes: int, in_chans: int, img_size: int = 28, hidden: int = 16, p: float = 0.3) -> nn.Module:
    """A tiny MLP with dropout: its training forward draws from the participant's RNG stream."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * img_size * img_size, hidden), nn.ReLU(), nn.Dropout(p),
                         nn.Linear(hidden, num_classes))
