"""Real (tiny) models that fail on purpose, for the swarm's fault tests: importable by Ray workers
through PYTHONPATH, used as `model: faulty_models:failing_mlp`."""
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
