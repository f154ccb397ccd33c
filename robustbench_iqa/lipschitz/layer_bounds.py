"""Certified Lipschitz constants (L2 -> L2) of the fixed layers of real perceptual networks.

Each function returns a constant for the layer *as torch computes it* on an input of
spatial size (H, W), and the output size.  The layers are matched by exact class
(:mod:`robustbench_iqa.lipschitz.trust`).

**Padding** (``ZeroPad2d``, ``ReflectionPad2d``, ``ReplicationPad2d`` and the pad of
:class:`~robustbench_iqa.lipschitz.layers.BlurPool2d`).  A pad P copies input entries:
every output entry reads exactly one input entry (or is 0).  So P^T P is diagonal, its
entry i the number m_i of output positions that read input i, and ||P||_2 =
sqrt(max_i m_i) exactly.  Per axis, reflect padding by (p_l, p_r) < n gives
m_i = 1 + [1 <= i <= p_l] + [n-1-p_r <= i <= n-2] (at most 3, 2 once n > p_l + p_r + 1),
replicate gives m_0 = 1 + p_l, m_{n-1} = 1 + p_r, zeros gives 1.  A 2-D pad is
P_h (x) P_w, so m_(i,j) = m_i m_j and the constant is sqrt(max m_h * max m_w).  The
multiplicities are read off torch's own pad applied to the identity (no formula is trusted).

**Blur pooling** (anti-aliased down-sampling).  Per channel it is pad, then correlation
with a a^T / (sum a)^2 at stride s: the operator is A_h (x) A_w with the 1-D operators
A = C_s P (pad, then 1-D correlation with a / sum a at stride s), because both the
filter and the pad are separable.  Hence ||blur pool||_2 = ||A_h||_2 ||A_w||_2, each the
largest singular value of a small dense matrix (n_out x n, built by running torch's
pad and conv1d on the identity) computed in float64 and rounded up by (1 + 1e-9)
(LAPACK's SVD is backward stable); the channels are independent (block diagonal), so
the constant is the same for all channels.  The stored float32 filter is split as
outer(row, col) + R; the residual's correlation has norm <= ||R||_1 (Young), so
||R||_1 ||pad|| (about 1e-8) is added.  This is exact up to rounding, not an estimate
(power iteration would give a lower bound).

**Max pooling** (kernel k, stride s, any padding, dilation 1).  For one window W_j,
|max_W v - max_W v'| <= max_{i in W_j} |v_i - v'_i|, so |dy_j|^2 <= sum_{i in W_j} dv_i^2.
Summing over windows, ||dy||^2 <= sum_i c_i dv_i^2 <= (max_i c_i) ||dv||^2, with c_i the
number of windows containing i.  Windows start every s positions and are k long, so per
axis c_i <= ceil(k/s), and Lip <= sqrt(ceil(k_h/s_h) ceil(k_w/s_w)).  This is attained
(a perturbation of one pixel that is the maximum of all its windows moves ceil(k/s)^2
outputs by the same amount), so it is no over-estimate: ``MaxPool2d(3, stride=1)`` is
3-Lipschitz, not 1.

**Channel normalisation** n(u) = u / (||u||_2 + eps) at each pixel (LPIPS; eps added
to the norm).  Dn(u) = I/(|u| + eps) - u u^T / (|u| (|u| + eps)^2) has eigenvalues
1/(|u| + eps) (orthogonal to u) and eps/(|u| + eps)^2 (along u), both <= 1/eps with
equality at u -> 0; the domain is convex, so Lip(n) = 1/eps.  For eps = 1e-10 that is
1e10: sound, but vacuous -- the local bound (:mod:`robustbench_iqa.lipschitz.tapped`) uses
the actual feature norms around x instead.

**Spatial mean** over N = H W pixels: |mean(d_c)| <= ||d_c||_2 / sqrt(N)
(Cauchy-Schwarz), so 1/sqrt(N) for all channels together.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_iqa.errors import BoundUnavailableError, InputError
from robustbench_iqa.lipschitz.gram_iteration import SAFETY
from robustbench_iqa.lipschitz.layers import BlurPool2d, ChannelNorm, SpatialMean

__all__ = [
    "FIXED_LAYERS",
    "PAD_TYPES",
    "blur_operator_1d",
    "blurpool_bound",
    "blurpool_factors",
    "blurpool_operators",
    "blurpool_row_bound",
    "channel_norm_global_bound",
    "fixed_layer_bound",
    "maxpool_bound",
    "pad_bound",
    "pad_layer_bound",
    "pad_multiplicity",
    "pad_operator_1d",
    "spatial_mean_bound",
]


PAD_TYPES: dict[type, str] = {nn.ZeroPad2d: "zeros", nn.ReflectionPad2d: "reflect", nn.ReplicationPad2d: "replicate"}


def _pad1d(eye: torch.Tensor, pad: tuple[int, int], mode: str) -> torch.Tensor:
    if mode == "zeros":
        return F.pad(eye, pad)
    return F.pad(eye, pad, mode=mode)


def pad_operator_1d(n: int, pad: tuple[int, int], mode: str) -> torch.Tensor:
    """The dense (n + p_l + p_r) x n matrix of torch's 1-D pad (float64), from the identity."""
    if pad[0] == 0 and pad[1] == 0:
        return torch.eye(n, dtype=torch.float64)
    eye = torch.eye(n, dtype=torch.float64)[:, None, :]  # (n basis vectors, 1 channel, n)
    try:
        padded = _pad1d(eye, pad, mode)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"cannot pad a side of {n} by {pad} in mode {mode!r}: {exc}") from None
    return padded[:, 0, :].T


def pad_multiplicity(n: int, pad: tuple[int, int], mode: str) -> int:
    """max_i m_i: the most output positions any input position is copied to (module docstring)."""
    p = pad_operator_1d(n, pad, mode)
    return int(p.abs().sum(dim=0).max().round())


def pad_bound(size: tuple[int, int], pad: tuple[int, int, int, int], mode: str) -> float:
    """||pad||_2 = sqrt(max m_h * max m_w) for torch's pad (left, right, top, bottom) of an H x W input."""
    left, right, top, bottom = pad
    return math.sqrt(pad_multiplicity(size[0], (top, bottom), mode) * pad_multiplicity(size[1], (left, right), mode)) * SAFETY


def pad_layer_bound(layer: nn.Module, size: tuple[int, int]) -> tuple[float, tuple[int, int]]:
    """Constant and output size of a ``ZeroPad2d`` / ``ReflectionPad2d`` / ``ReplicationPad2d``."""
    mode = PAD_TYPES[type(layer)]
    pad = tuple(int(p) for p in layer.padding)  # type: ignore[union-attr,attr-defined]
    if len(pad) != 4 or min(pad) < 0:
        raise BoundUnavailableError(f"cannot bound {type(layer).__name__} with padding {pad}")
    out = (size[0] + pad[2] + pad[3], size[1] + pad[0] + pad[1])
    return pad_bound(size, pad, mode), out  # type: ignore[arg-type]


def blur_operator_1d(n: int, pad: tuple[int, int], mode: str, filt: torch.Tensor, stride: int) -> torch.Tensor:
    """The dense n_out x n matrix of pad-then-correlate with the 1-D ``filt`` at ``stride`` (float64)."""
    p = pad_operator_1d(n, pad, mode)  # (n + p, n)
    cols = p.T[:, None, :]  # n inputs, each its padded image
    out = F.conv1d(cols, filt.to(torch.float64)[None, None], stride=stride)
    return out[:, 0, :].T


def blurpool_factors(layer: BlurPool2d) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(row, col, r): 1-D filters with ``filt = outer(row, col) + R`` and r = ||R||_1 (float64).

    row = filt.sum(1), col = filt.sum(0) / sum(filt): exact for a separable filter; the
    float32 rounding of the stored filter leaves a residual R of about 1e-8 whose
    correlation has norm <= ||R||_1 (Young's inequality), added to the bound.
    """
    f2 = layer.get_buffer("filt").detach().to(torch.float64)
    if f2.dim() != 4 or f2.shape[0] != layer.channels or f2.shape[1] != 1:
        raise BoundUnavailableError(f"cannot bound BlurPool2d with a filter of shape {tuple(f2.shape)}")
    first = f2[0, 0]
    if not bool((f2 == first).all()):
        raise BoundUnavailableError("cannot bound BlurPool2d whose channels use different filters")
    total = float(first.sum())
    if not (math.isfinite(total) and total != 0.0):
        raise BoundUnavailableError(f"cannot bound BlurPool2d with a filter that sums to {total}")
    row, col = first.sum(dim=1), first.sum(dim=0) / total
    residual = float((first - torch.outer(row, col)).abs().sum())
    return row, col, residual


def _top_singular(m: torch.Tensor) -> float:
    return float(torch.linalg.svdvals(m).max()) if m.numel() else 0.0


def blurpool_operators(layer: BlurPool2d, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A_h, A_w, r): the 1-D operators whose Kronecker product is the layer on one channel, up to a
    residual of norm <= r ||pad|| (:func:`blurpool_factors`)."""
    row, col, residual = blurpool_factors(layer)
    left, right, top, bottom = layer.pad
    mode = layer.pad_mode
    ah = blur_operator_1d(size[0], (top, bottom), mode, row, layer.stride)
    aw = blur_operator_1d(size[1], (left, right), mode, col, layer.stride)
    return ah, aw, residual * pad_bound(size, (left, right, top, bottom), mode)


def blurpool_bound(layer: BlurPool2d, size: tuple[int, int]) -> tuple[float, tuple[int, int]]:
    """||BlurPool2d|| <= ||A_h|| ||A_w|| + ||R||_1 ||pad|| (module docstring), rounded up, and the output size."""
    ah, aw, res = blurpool_operators(layer, size)
    return (_top_singular(ah) * _top_singular(aw) + res) * SAFETY**2, (ah.shape[0], aw.shape[0])


def blurpool_row_bound(layer: BlurPool2d, size: tuple[int, int]) -> float:
    """A bound of every output's row norm: |dy_i| <= this * ||dx||_2 (Cauchy-Schwarz)."""
    ah, aw, res = blurpool_operators(layer, size)
    return (float(ah.norm(dim=1).max() * aw.norm(dim=1).max()) + res) * SAFETY**2


def maxpool_bound(layer: nn.MaxPool2d, size: tuple[int, int]) -> tuple[float, tuple[int, int]]:
    """sqrt(ceil(k_h/s_h) ceil(k_w/s_w)) (module docstring) and the output size."""
    if layer.return_indices:
        raise BoundUnavailableError("cannot bound MaxPool2d(return_indices=True): its output is not a tensor")
    kh, kw = _pair(layer.kernel_size)
    sh, sw = _pair(layer.stride if layer.stride is not None else layer.kernel_size)
    if _pair(layer.dilation) != (1, 1):
        raise BoundUnavailableError(f"cannot bound MaxPool2d with dilation={layer.dilation} (only 1 is supported)")
    out = tuple(_pool_out(n, k, s, p, layer.ceil_mode)
                for n, k, s, p in zip(size, (kh, kw), (sh, sw), _pair(layer.padding), strict=True))
    if min(out) < 1:
        raise InputError(f"input size {size} is too small for {layer}")
    return math.sqrt(math.ceil(kh / sh) * math.ceil(kw / sw)) * SAFETY, (out[0], out[1])


def _pool_out(n: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """torch's pooling output length (``ceil_mode``: the last window must start inside the input or left pad)."""
    span = n + 2 * p - k
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


def channel_norm_global_bound(layer: ChannelNorm) -> float:
    """Lip(u -> u / (|u| + eps)) = 1/eps (module docstring)."""
    if not layer.eps > 0:
        raise BoundUnavailableError(f"cannot bound ChannelNorm with eps={layer.eps}")
    return SAFETY / layer.eps


def spatial_mean_bound(size: tuple[int, int]) -> float:
    """Lip of the per-channel mean over H x W pixels: 1/sqrt(H W)."""
    return SAFETY / math.sqrt(size[0] * size[1])


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


FIXED_LAYERS = (BlurPool2d, ChannelNorm, SpatialMean, nn.MaxPool2d, *PAD_TYPES)
"""The exact classes bounded here."""


def fixed_layer_bound(layer: nn.Module, size: tuple[int, int] | None) -> tuple[float, tuple[int, int] | None, str]:
    """(constant, output size, name) of one fixed layer; ``size`` None only after a spatial mean."""
    kind = type(layer)
    if kind is ChannelNorm:
        return channel_norm_global_bound(layer), size, f"ChannelNorm 1/eps (eps={layer.eps:g}; vacuous)"  # type: ignore[arg-type]
    if size is None:
        raise InputError(f"the input size (H, W) is needed to bound {kind.__name__}")
    if kind is SpatialMean:
        return spatial_mean_bound(size), None, f"SpatialMean over {size[0]}x{size[1]}"
    if kind is BlurPool2d:
        c, out = blurpool_bound(layer, size)  # type: ignore[arg-type]
        return c, out, f"BlurPool2d({layer.pad_mode}) {size[0]}x{size[1]}"  # type: ignore[attr-defined]
    if kind is nn.MaxPool2d:
        c, out = maxpool_bound(layer, size)  # type: ignore[arg-type]
        return c, out, f"MaxPool2d k={layer.kernel_size} s={layer.stride}"  # type: ignore[attr-defined]
    if kind in PAD_TYPES:
        c, out = pad_layer_bound(layer, size)
        return c, out, f"{kind.__name__} {layer.padding}"  # type: ignore[attr-defined]
    raise BoundUnavailableError(f"cannot bound layer type {kind.__name__}")
