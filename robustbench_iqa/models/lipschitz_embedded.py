"""The embedded models with 1-Lipschitz backbones: ``default-nr-lip`` and ``default-fr-lip``.

Variants of ``default-nr`` / ``default-fr`` (:mod:`robustbench_iqa.models.embedded`) whose
backbone b is Lipschitz with constant <= 1 by construction, for any image size, so that
FS-IQA's input radius eps_x = sigma_f / (Lip(FTN) Lip(b)) is a theorem end to end
(no first-order approximation): ||B(x+u) - B(x)||_2 <= Lip(FTN) Lip(b) ||u||_2.
Trained by ``scripts/train_embedded_lipschitz.py`` on the same data and weak labels.

Trunk phi (every layer 1-Lipschitz, :mod:`robustbench_iqa.models.lipschitz_layers`):
``x - 0.45`` (a translation; no division by the standard deviation, which would
multiply the constant by 4), then four stages at strides 1, 2, 2, 2:

    stage 1:  1x1 normalized conv 3 -> C_1,  SLL conv (3x3),  |.|
    stage l:  zero-pad + pixel_unshuffle(2),  1x1 normalized conv 4 C_(l-1) -> C_l,  SLL conv,  |.|

* ``default-nr-lip`` (higher = better): b(x) = [mean_hw phi(x), sqrt(var_hw phi(x) + eps)]
  of the last stage, which is 1/sqrt(H_4 W_4)-Lipschitz in phi (proof in
  :mod:`robustbench_iqa.lipschitz.composition`), so Lip(b) <= 1/sqrt(H_4 W_4) <= 1.
* ``default-fr-lip`` (a distance, lower = better): b(x, ref)_{l,c} =
  sqrt(mean_hw (phi_l(x) - phi_l(ref))_c^2 + eps) over the four stages, *without* the
  channel normalisation of ``default-fr`` (whose constant is 1/sqrt(eps)); each stage
  is 1/sqrt(H_l W_l)-Lipschitz in x, so Lip(b) <= sqrt(sum_l 1/(H_l W_l)) <= 1.

The heads (not part of b, unconstrained) are the embedded models' MLPs after a fixed
feature standardisation (``BatchNorm1d`` without affine parameters): a 1-Lipschitz
backbone cannot amplify, so its features are small, and the standardisation gives the
MLP features of unit scale to train on.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from robustbench_iqa.errors import InputError
from robustbench_iqa.lipschitz.composition import (
    LipschitzBound,
    cached_bound,
    concatenation_bound,
    identity_bound,
    rms_pool_bound,
    sequential_bound,
)
from robustbench_iqa.models.base import IQAModel, Mode
from robustbench_iqa.models.embedded import (
    FR_CHANNELS,
    NR_CHANNELS,
    load_weights,
    mean_std_pool,
    mean_std_pooled_bound,
    mlp_head,
)
from robustbench_iqa.models.lipschitz_layers import Abs, Downsample, NormalizedPointwise, SLLConv
from robustbench_iqa.models.registry import register_model

_CENTER = 0.45
_EPS = 1e-6


class LipschitzTrunk(nn.Module):
    """The 1-Lipschitz trunk (module docstring); returns every stage's output."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        stages: list[nn.Sequential] = []
        prev = 3
        for i, c in enumerate(channels):
            layers: list[nn.Module] = [] if i == 0 else [Downsample()]
            layers += [NormalizedPointwise(prev if i == 0 else 4 * prev, c), SLLConv(c), Abs()]
            stages.append(nn.Sequential(*layers))
            prev = c
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = x - _CENTER
        outs = []
        for stage in self.stages:
            h = stage(h)
            outs.append(h)
        return outs

    def stage_bounds(self, input_size: tuple[int, int]) -> list[tuple[LipschitzBound, tuple[int, int]]]:
        """Per stage: a certified bound of x -> (stage output) (each layer certified) and its size."""
        total, size, out = identity_bound(), input_size, []
        for stage in self.stages:
            b, size = sequential_bound(list(stage.children()), size)  # type: ignore[assignment]
            total = total.then(b)
            out.append((total, size))
        return out  # type: ignore[return-value]


def standardized_head(in_dim: int) -> nn.Sequential:
    """BatchNorm1d (no affine) -> the embedded MLP head: features (B, D) -> (B, 1) in (0, 1)."""
    return nn.Sequential(nn.BatchNorm1d(in_dim, affine=False), *mlp_head(in_dim))


def _size(input_size: tuple[int, int] | None) -> tuple[int, int]:
    if input_size is None:
        raise InputError("the image size (H, W) is needed for the Lipschitz bound of an embedded model")
    return int(input_size[0]), int(input_size[1])


class LipschitzNR(IQAModel):
    """No-reference model with a 1-Lipschitz trunk and mean+std pooling; higher = better."""

    name = "default-nr-lip"
    mode = Mode.NR
    lower_better = False
    score_range = (0.0, 1.0)

    def __init__(self, channels: tuple[int, ...] = NR_CHANNELS) -> None:
        super().__init__()
        self.trunk = LipschitzTrunk(channels)
        self.feature_dim = 2 * channels[-1]
        self.mlp = standardized_head(self.feature_dim)

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        return mean_std_pool(self.trunk(x)[-1])

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.mlp(feats).squeeze(-1)

    def lipschitz_bound(self, input_size: tuple[int, int] | None) -> LipschitzBound:
        """Certified Lip(b): the trunk's certified bound (<= 1) times 1/sqrt(H_4 W_4)."""
        return mean_std_pooled_bound(self, _size(input_size))


class LipschitzFR(IQAModel):
    """Full-reference siamese model with a 1-Lipschitz trunk and per-stage RMS distances; lower = better."""

    name = "default-fr-lip"
    mode = Mode.FR
    lower_better = True
    score_range = (0.0, 1.0)

    def __init__(self, channels: tuple[int, ...] = FR_CHANNELS) -> None:
        super().__init__()
        self.trunk = LipschitzTrunk(channels)
        self.feature_dim = sum(channels)
        self.mlp = standardized_head(self.feature_dim)

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        if ref is None:
            raise InputError("this is a full-reference model: a reference image `ref` is required")
        if ref.shape != x.shape:
            raise InputError(f"x and ref must have the same shape, got {tuple(x.shape)} and {tuple(ref.shape)}")
        dists = [torch.sqrt((fx - fr).pow(2).mean(dim=(2, 3)) + _EPS)
                 for fx, fr in zip(self.trunk(x), self.trunk(ref), strict=True)]
        return torch.cat(dists, dim=1)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.mlp(feats).squeeze(-1)

    def lipschitz_bound(self, input_size: tuple[int, int] | None) -> LipschitzBound:
        """Certified Lip(b) in x: sqrt(sum_l (trunk bound to stage l / sqrt(H_l W_l))^2)."""
        size = _size(input_size)

        def compute() -> LipschitzBound:
            branches = [t.scaled(rms_pool_bound(hw), f"stage {i + 1} RMS pooling over {hw[0]}x{hw[1]}")
                        for i, (t, hw) in enumerate(self.trunk.stage_bounds(size))]
            return concatenation_bound(branches, "stages")

        return cached_bound(self, f"features{size}", compute)


@register_model("default-nr-lip", mode="nr", lower_better=False, score_range=(0.0, 1.0),
                description="embedded no-reference CNN with a 1-Lipschitz backbone (higher = better)")
def default_nr_lip(*, weights: str | Path | None = None, device: torch.device | str = "cpu") -> IQAModel:
    return load_weights(LipschitzNR(), weights).to(device).eval()


@register_model("default-fr-lip", mode="fr", lower_better=True, score_range=(0.0, 1.0),
                description="embedded full-reference CNN distance with a 1-Lipschitz backbone (lower = better)")
def default_fr_lip(*, weights: str | Path | None = None, device: torch.device | str = "cpu") -> IQAModel:
    return load_weights(LipschitzFR(), weights).to(device).eval()
