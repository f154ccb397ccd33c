"""Tiny IQA models for tests: fast on the CPU, deterministic, differentiable."""

from __future__ import annotations

import torch
from torch import nn

from robustbench_iqa.models.base import IQAModel, Mode


class ToyNR(IQAModel):
    """Conv -> tanh -> global average pool (features) -> linear head."""

    name = "toy-nr"
    mode = Mode.NR
    lower_better = False
    score_range = (0.0, 1.0)

    def __init__(self, *, width: int = 8, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.fc = nn.Linear(2 * width, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.eval()

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.tanh(self.conv1(x))
        h = torch.tanh(self.conv2(h))
        return h.mean(dim=(2, 3))

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(feats)).squeeze(-1)


class ToyFR(IQAModel):
    """Siamese conv features; feature = |phi(x) - phi(ref)| pooled; lower is better."""

    name = "toy-fr"
    mode = Mode.FR
    lower_better = True
    score_range = (0.0, 1.0)

    def __init__(self, *, width: int = 8, seed: int = 1) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.fc = nn.Linear(2 * width, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.eval()

    def _phi(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv2(torch.tanh(self.conv1(x))))

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        assert ref is not None
        d = self._phi(x) - self._phi(ref)
        return torch.sqrt(d.pow(2).mean(dim=(2, 3)) + 1e-8)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(feats)).squeeze(-1)


def random_images(b: int, h: int = 32, w: int = 32, *, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g)
