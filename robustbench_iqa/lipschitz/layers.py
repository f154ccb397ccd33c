"""Small fixed layers of real perceptual networks, as exact modules the bounds can read.

Real trained IQA networks (ST-LPIPS, LPIPS, anti-aliased trunks) are built from
convolutions, ReLUs and max pooling, plus three fixed operations that have no
``torch.nn`` class.  They are defined here once, with their parameters as plain
attributes and buffers, so that a model built from them reproduces the published
forward exactly and the certified-bound machinery
(:mod:`robustbench_iqa.lipschitz.composition`, :mod:`robustbench_iqa.certify.local_lipschitz`)
can bound them from what it reads (the class is matched exactly, never by
``isinstance``):

- :class:`BlurPool2d`: anti-aliased down-sampling (Zhang, ICML 2019, "Making
  convolutional networks shift-invariant again"): a pad, then a depthwise
  convolution with the normalised binomial filter ``a a^T / sum(a a^T)``,
  ``a = (binomial coefficients of filt_size - 1)``, at a stride.
- :class:`ChannelNorm`: LPIPS' unit normalisation over channels at each pixel,
  ``n(u) = u / (||u||_2 + eps)`` (Zhang et al., CVPR 2018; ``eps`` is added to the
  norm, not inside the square root, as in the official code).
- :class:`SpatialMean`: the mean over all pixels of each channel, ``(B, C, H, W) ->
  (B, C)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BlurPool2d",
    "ChannelNorm",
    "PAD_MODES",
    "SpatialMean",
    "binomial_filter",
]


PAD_MODES = ("reflect", "replicate", "zeros")


def binomial_filter(size: int) -> torch.Tensor:
    """The normalised 2-D binomial filter ``a a^T / sum(a a^T)`` of side ``size`` (1 to 7)."""
    if not 1 <= size <= 7:
        raise ValueError(f"filt_size must be in 1..7, got {size}")
    a = torch.tensor([math.comb(size - 1, k) for k in range(size)], dtype=torch.float64)
    f = a[:, None] * a[None, :]
    return (f / f.sum()).to(torch.float32)


class BlurPool2d(nn.Module):
    """Blur then subsample: ``pad(x)`` (mode ``pad_mode``, sizes ``pad`` = (left, right, top,
    bottom)) convolved per channel with :func:`binomial_filter` at ``stride``.

    ``BlurPool2d(channels=64, filt_size=3, stride=2, pad=(2, 2, 2, 2))`` is ST-LPIPS'
    ``Downsample(filt_size=3, stride=2, channels=64, pad_more=True)`` with reflect padding.
    """

    filt: torch.Tensor

    def __init__(self, *, channels: int, filt_size: int = 3, stride: int = 2,
                 pad: tuple[int, int, int, int] | None = None, pad_mode: str = "reflect") -> None:
        super().__init__()
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        if channels < 1 or stride < 1:
            raise ValueError(f"channels and stride must be >= 1, got {channels}, {stride}")
        if pad is None:
            lo, hi = (filt_size - 1) // 2, math.ceil((filt_size - 1) / 2)
            pad = (lo, hi, lo, hi)
        if len(pad) != 4 or min(pad) < 0:
            raise ValueError(f"pad must be four sizes >= 0, got {pad}")
        self.channels, self.filt_size, self.stride = channels, filt_size, stride
        self.pad, self.pad_mode = tuple(int(p) for p in pad), pad_mode
        self.register_buffer("filt", binomial_filter(filt_size)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_mode == "zeros":
            padded = F.pad(x, self.pad)
        else:
            padded = F.pad(x, self.pad, mode=self.pad_mode)
        return F.conv2d(padded, self.filt.to(x.dtype), stride=self.stride, groups=x.shape[1])

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, filt_size={self.filt_size}, stride={self.stride}, "
                f"pad={self.pad}, pad_mode={self.pad_mode!r}")


class ChannelNorm(nn.Module):
    """``u / (||u||_2 + eps)`` over the channel dimension (dim 1) at each pixel (LPIPS)."""

    def __init__(self, *, eps: float = 1e-10) -> None:
        super().__init__()
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # vector_norm, not sqrt(sum u^2): equal values, and at u = 0 its gradient is 0, so the
        # Jacobian there is the true Dn(0) = I / eps instead of NaN (sqrt's derivative at 0 is inf)
        return x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class SpatialMean(nn.Module):
    """The mean of each channel over all pixels: ``(B, C, H, W) -> (B, C)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))
