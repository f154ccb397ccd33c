"""The embedded default IQA models ``default-nr`` and ``default-fr``.

Small, fully convolutional CNNs with global pooling, so they accept any image
size, trained by ``scripts/train_embedded.py`` on the embedded ``default``
dataset (weak labels) and shipped as safetensors files in
``robustbench_iqa/weights``.  They exist so that the suite works offline at
once; they are not state-of-the-art IQA metrics.

Both use a trunk of four 3x3 convolution stages (stride 1, 2, 2, 2) with
BatchNorm and SiLU activations.  Smooth activations keep the backbone Jacobian
well behaved; FS-IQA's certificate uses its spectral norm (FS-IQA paper,
"Input Variation Estimator", Theorem 1).

* ``default-nr`` (no-reference, higher = better, score in [0, 1]):
  ``b(x) = [mean_hw phi(x), std_hw phi(x)]`` of the last stage (D = 128),
  a quality-aware pooling of deep features; head = MLP -> sigmoid.
* ``default-fr`` (full-reference, a *distance*: lower = better, in [0, 1]):
  siamese trunk phi; at every stage l the features are unit-normalised over
  channels, ``n(u) = u / sqrt(|u|^2 + eps)``, as in LPIPS (Zhang et al. 2018,
  Eq. 1), and ``b(x, ref)_{l,c} = sqrt(mean_hw (n(phi_l(x)) - n(phi_l(ref)))_c^2
  + eps)`` is concatenated over stages (D = 128); head = MLP -> sigmoid,
  trained to predict ``1 - weak label``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Protocol, cast

import torch
from torch import nn

from robustbench_iqa.errors import InputError
from robustbench_iqa.lipschitz.composition import (
    CHANNEL_NORM_NOTE,
    LipschitzBound,
    cached_bound,
    channel_norm_bound,
    concatenation_bound,
    identity_bound,
    mean_std_pool_bound,
    rms_pool_bound,
    sequential_bound,
    standardization_bound,
)
from robustbench_iqa.models.base import IQAModel, Mode
from robustbench_iqa.models.registry import register_model

NR_CHANNELS: tuple[int, ...] = (16, 32, 48, 64)
FR_CHANNELS: tuple[int, ...] = (16, 32, 32, 48)
_STRIDES: tuple[int, ...] = (1, 2, 2, 2)
_EPS = 1e-6
# Fixed input standardisation (images in [0, 1]).
_MEAN, _STD = 0.45, 0.25


class ConvTrunk(nn.Module):
    """Stages of ``conv3x3 (stride s) -> BatchNorm -> SiLU``; returns every stage's output.

    In eval mode BatchNorm is a fixed per-channel affine map, so the trunk is a
    smooth deterministic function of the image.
    """

    def __init__(self, channels: tuple[int, ...], strides: tuple[int, ...] = _STRIDES) -> None:
        super().__init__()
        ins = (3, *channels[:-1])
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(i, o, 3, stride=s, padding=1), nn.BatchNorm2d(o), nn.SiLU())
            for i, o, s in zip(ins, channels, strides, strict=True)
        )

    def stage_bounds(self, input_size: tuple[int, int]) -> list[tuple[LipschitzBound, tuple[int, int]]]:
        """Per stage l: a certified Lipschitz bound of x -> (output of stage l) and its spatial size.

        The input standardisation (1/_STD), then per stage the convolution with its
        BatchNorm folded in (Gram iteration, zero padding and stride) and SiLU
        (:mod:`robustbench_iqa.lipschitz.composition`).
        """
        total = identity_bound().scaled(standardization_bound(_STD), "input standardisation")
        size = input_size
        out = []
        for stage in self.stages:
            b, size = sequential_bound(list(stage.children()), size)  # type: ignore[assignment]
            total = total.then(b)
            out.append((total, size))
        return out  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - _MEAN) / _STD
        outs = []
        for stage in self.stages:
            h = stage(h)
            outs.append(h)
        return outs


def mlp_head(in_dim: int, hidden: int = 64) -> nn.Sequential:
    """Linear -> SiLU -> Linear -> sigmoid: features (B, D) -> (B, 1) in (0, 1)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, 1), nn.Sigmoid())


class StagedTrunk(Protocol):
    """A trunk with certified Lipschitz bounds to each of its stages (and the stages' sizes)."""

    def stage_bounds(self, input_size: tuple[int, int]) -> list[tuple[LipschitzBound, tuple[int, int]]]: ...


def mean_std_pool(h: torch.Tensor) -> torch.Tensor:
    """``[mean_hw h, sqrt(var_hw h + eps)]``: (B, C, H, W) -> (B, 2C)."""
    mean = h.mean(dim=(2, 3))
    std = torch.sqrt(h.var(dim=(2, 3), unbiased=False) + _EPS)
    return torch.cat([mean, std], dim=1)


def mean_std_pooled_bound(model: nn.Module, size: tuple[int, int]) -> LipschitzBound:
    """Certified Lip of ``mean_std_pool(model.trunk(x)[-1])`` on images of ``size``: the trunk's
    bound to its last stage (``model.trunk.stage_bounds``) times the pooling's 1/sqrt(H_L W_L);
    cached on ``model``."""
    def compute() -> LipschitzBound:
        staged = cast(StagedTrunk, model.trunk)
        trunk, last = staged.stage_bounds(size)[-1]
        return trunk.scaled(mean_std_pool_bound(last), f"mean+std pooling over {last[0]}x{last[1]}")

    return cached_bound(model, f"features{size}", compute)


class EmbeddedNR(IQAModel):
    """No-reference CNN: mean+std pooled deep features -> MLP; higher = better."""

    name = "default-nr"
    mode = Mode.NR
    lower_better = False
    score_range = (0.0, 1.0)

    def __init__(self, channels: tuple[int, ...] = NR_CHANNELS) -> None:
        super().__init__()
        self.trunk = ConvTrunk(channels)
        self.feature_dim = 2 * channels[-1]
        self.mlp = mlp_head(self.feature_dim)

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """``[mean_hw phi(x), sqrt(var_hw phi(x) + eps)]`` of the last stage: (B, 2C)."""
        return mean_std_pool(self.trunk(x)[-1])

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.mlp(feats).squeeze(-1)

    def lipschitz_bound(self, input_size: tuple[int, int] | None) -> LipschitzBound:
        """Certified Lip(b): the trunk's bound times the mean+std pooling's 1/sqrt(H_L W_L)."""
        return mean_std_pooled_bound(self, _check_size(input_size))


def _check_size(input_size: tuple[int, int] | None) -> tuple[int, int]:
    if input_size is None:
        raise InputError("the image size (H, W) is needed for the Lipschitz bound of an embedded model")
    return int(input_size[0]), int(input_size[1])


def channel_normalize(u: torch.Tensor) -> torch.Tensor:
    """Unit-normalise (B, C, H, W) features over channels (LPIPS, Zhang et al. 2018)."""
    return u / torch.sqrt(u.pow(2).sum(dim=1, keepdim=True) + _EPS)


class EmbeddedFR(IQAModel):
    """Full-reference siamese CNN: LPIPS-like per-channel distances -> MLP; lower = better."""

    name = "default-fr"
    mode = Mode.FR
    lower_better = True
    score_range = (0.0, 1.0)

    def __init__(self, channels: tuple[int, ...] = FR_CHANNELS) -> None:
        super().__init__()
        self.trunk = ConvTrunk(channels)
        self.feature_dim = sum(channels)
        self.mlp = mlp_head(self.feature_dim)

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """Per-stage, per-channel RMS distance of channel-normalised features: (B, sum C)."""
        if ref is None:
            raise InputError("this is a full-reference model: a reference image `ref` is required")
        if ref.shape != x.shape:
            raise InputError(f"x and ref must have the same shape, got {tuple(x.shape)} and {tuple(ref.shape)}")
        dists = []
        for fx, fr in zip(self.trunk(x), self.trunk(ref), strict=True):
            d = (channel_normalize(fx) - channel_normalize(fr)).pow(2).mean(dim=(2, 3))
            dists.append(torch.sqrt(d + _EPS))
        return torch.cat(dists, dim=1)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.mlp(feats).squeeze(-1)

    def lipschitz_bound(self, input_size: tuple[int, int] | None) -> LipschitzBound:
        """Certified Lip(b) in x (ref fixed): stages concatenated, sqrt(sum_l L_l^2), with
        L_l = trunk bound to stage l * 1/sqrt(_EPS) (channel normalisation, vacuous) * 1/sqrt(H_l W_l)."""
        size = _check_size(input_size)

        def compute() -> LipschitzBound:
            branches = []
            for i, (trunk, hw) in enumerate(self.trunk.stage_bounds(size)):
                b = trunk.scaled(channel_norm_bound(_EPS), f"stage {i + 1} channel normalisation 1/sqrt(eps)")
                branches.append(b.scaled(rms_pool_bound(hw), f"stage {i + 1} RMS pooling over {hw[0]}x{hw[1]}"))
            cat = concatenation_bound(branches, "stages")
            return LipschitzBound(cat.value, cat.terms, (*cat.notes, CHANNEL_NORM_NOTE))

        return cached_bound(self, f"features{size}", compute)


def shipped_weights(name: str) -> Path:
    """Path of the shipped ``robustbench_iqa/weights/<name>.safetensors``."""
    return Path(str(resources.files("robustbench_iqa") / "weights" / f"{name}.safetensors"))


def load_weights(model: IQAModel, weights: str | Path | None) -> IQAModel:
    """Load a safetensors state dict (``None``: the shipped file) into ``model``, strictly.

    Raises :class:`InputError` naming the file when it is missing, not a
    safetensors file (saying what it looks like instead), or does not match the
    architecture (naming the first missing, unexpected and mis-shaped keys).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = shipped_weights(model.name) if weights is None else Path(weights).expanduser()
    if path.is_dir():
        raise InputError(f"weights path {path} is a directory; give the .safetensors file of {model.name}")
    if not path.is_file():
        raise InputError(f"weights file not found for {model.name}: {path}")
    kind = _file_kind(path)
    if kind != "safetensors":
        raise InputError(
            f"weights file {path} is not a safetensors file ({kind}); {model.name} loads safetensors "
            f"state dicts: convert a PyTorch state dict with safetensors.torch.save_file"
        )
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"cannot read weights file {path}: {exc}") from None
    problems = _state_dict_problems(model.state_dict(), state)
    if problems:
        raise InputError(f"weights file {path} does not fit {model.name}: {problems}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        text = " ".join(str(exc).split())
        raise InputError(f"weights file {path} does not fit {model.name}: {text[:400]}") from None
    return model


def _file_kind(path: Path) -> str:
    from robustbench_iqa.models.weights import file_kind

    return file_kind(path)


def _state_dict_problems(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], shown: int = 5) -> str:
    """Missing, unexpected and mis-shaped keys, the first few of each; "" when they match."""

    def first(keys: list[str]) -> str:
        more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
        return ", ".join(keys[:shown]) + more

    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {first(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {first(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es): {first(shapes)}")
    if not parts:
        from robustbench_iqa.models.weights import dtype_problems

        dtypes = dtype_problems(own, state, shown=shown)
        if dtypes:
            parts.append(dtypes)
    return "; ".join(parts)


@register_model("default-nr", mode="nr", lower_better=False, score_range=(0.0, 1.0),
                description="embedded no-reference CNN (higher = better), trained on weak labels")
def default_nr(*, weights: str | Path | None = None, device: torch.device | str = "cpu") -> IQAModel:
    return load_weights(EmbeddedNR(), weights).to(device).eval()


@register_model("default-fr", mode="fr", lower_better=True, score_range=(0.0, 1.0),
                description="embedded full-reference CNN distance (lower = better), trained on weak labels")
def default_fr(*, weights: str | Path | None = None, device: torch.device | str = "cpu") -> IQAModel:
    return load_weights(EmbeddedFR(), weights).to(device).eval()
