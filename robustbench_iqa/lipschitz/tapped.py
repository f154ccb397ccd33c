"""The feature map of a multi-tap perceptual trunk, with its certified global and local bounds.

:class:`TappedFeatures` is the backbone b of LPIPS-style networks (AlexNet / VGG /
anti-aliased trunks of ST-LPIPS) built from plain layers: the input standardisation
h = (x - shift) / scale, a trunk cut into ``slices`` (each an ``nn.Sequential`` of
``Conv2d`` / ``ReLU`` / ``MaxPool2d`` / ``BlurPool2d`` / pads ...), tapped after every
slice (u_k = slice_k o ... o slice_1 (h)), LPIPS' channel normalisation n (optional) and a
per-channel spatial reduction of w_k = n(u_k(x)) - n(u_k(ref)) (FR; w_k = n(u_k(x)) for NR):

- ``"mean"``: mean_hw w_k (for FR: mean n(u_k(x)) - mean n(u_k(ref)), the FR difference);
- ``"rms"``: sqrt(mean_hw w_k^2 + rms_eps) (the LPIPS distance per channel:
  LPIPS = sum_k sum_c lin_kc (b_kc^2 - rms_eps));
- ``"meansq"``: mean_hw w_k^2 (LPIPS' own per-channel term: LPIPS = sum_k sum_c lin_kc b_kc
  exactly, a linear head); needs the channel normalisation, which keeps |w_p| <= 2 per pixel.

b(x) is the concatenation over taps (sum_k C_k values at any image size).  ``ref`` is
fixed, so Lip(b(., ref)) is bounded like the NR map.

**Global bound** (:meth:`TappedFeatures.lipschitz_bound`): branch k is
pool_k o n o prefix_k o standardisation, so L_k = (1/min|scale|) Lip(prefix_k) Lip(n)
/ sqrt(H_k W_k) (Lip(n) = 1/eps, vacuous for LPIPS' eps = 1e-10; both reductions are
1/sqrt(N)-Lipschitz; ``"meansq"`` g_c(w) = |w_c|^2 / N has the block-diagonal Jacobian with
rows 2 w_c^T / N, of norm max_c 2 |w_c| / N <= 2 sqrt(4 N) / N = 4 / sqrt(N), because
sum_c w_cp^2 = |w_p|^2 <= 4 at every pixel p (|n| < 1; FR difference of two such vectors),
and 2 / sqrt(N) for NR, |w_p| <= 1), and L = sqrt(sum_k L_k^2) (concatenation).  Lip(prefix_k) is
:func:`~robustbench_iqa.lipschitz.composition.sequential_bound` of slices 1..k (exact
classes only).

**Local deviation bound** (:func:`feature_deviation`).  Theorem: for every u with
||u||_2 <= r, ||b(x+u) - b(x)||_2 <= D_b(r), where D_b is computed by propagating a
bound d of the deviation ||v(x+u) - v(x)||_2 of each intermediate tensor v:

1. standardisation and trunk prefix: d_k = r Lip(prefix_k) / min|scale| (global constants);
2. channel normalisation at the centre's tap u_k (per pixel p): on the convex ball of
   radius delta_p <= d_k around u_p, |v_p| >= rho_p = max(0, |u_p| - d_k) and
   ||Dn(v)|| = 1/(|v| + eps), so ||n(v_p) - n(u_p)|| <= c_p delta_p with
   c_p = 1/(rho_p + eps) (mean value theorem on the segment), and always <= 2
   (|n| < 1).  For any set T of pixels, sum_p ||dn_p||^2 <= 4 |T| + (max_{p not in T}
   c_p)^2 d_k^2; the bound takes the best T (the pixels with the largest c_p), so a
   pixel where the features vanish (c_p = 1/eps) costs at most 2, not 1e10 d_k;
3. ``mean``: d / sqrt(N_k).  ``rms``: g_c(w) = sqrt(|w_c|^2 / N + eps) has
   ||grad g_c|| = phi(a_c) / sqrt(N), phi(a) = a / sqrt(a^2 + eps), a_c = |w_c| / sqrt(N),
   increasing in a_c; on the ball a_c <= a_c(x) + d / sqrt(N), and the Jacobian is block
   diagonal over channels, so d' = d max_c phi(a_c(x) + d / sqrt N) / sqrt N.  At the
   reference (w = 0) this is about d^2 / (N sqrt(eps)): the first-order radius breaks
   there (b is not differentiable at w = 0 for rms_eps -> 0), this bound does not.
   ``meansq``: for |delta_c| <= e_c with sum_c e_c^2 <= d^2,
   |g_c(w + delta) - g_c(w)| = |2 w_c . delta_c + |delta_c|^2| / N <= (2 |w_c| e_c + e_c^2) / N,
   and by the triangle inequality (|(e_c^2)_c|_2 <= sum_c e_c^2 <= d^2)
   d' = 2 max_c a_c d / sqrt(N) + d^2 / N with a_c = |w_c| / sqrt(N);
4. concatenation: D_b = sqrt(sum_k d_k'^2).

The FS-IQA radius then composes with the FTN's local deviation bound
(:func:`robustbench_iqa.certify.local_lipschitz.ftn_deviation`): eps_x_local is the largest r
with min(D_B(r), r L) <= sigma_f (L the global bound), found by bisection (D_B is
nondecreasing in r), so inside eps_x_local the premise ||B(x') - B(x)|| <= sigma_f is a
theorem, never below eps_x_lipschitz.  ReLU and max pooling enter through their global
constants (1 and sqrt(ceil(k/s)^2)): no first-order term is used, because a ReLU network
is not differentiable at its kinks and its Jacobian jumps by up to 1 at any unstable unit.
Cost per image: one float64 forward of the trunk (and of the reference) plus ~40
evaluations of closed-form per-pixel bounds; the global constants are cached per size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from robustbench_iqa.errors import BoundUnavailableError, InputError
from robustbench_iqa.lipschitz.composition import (
    LipschitzBound,
    cached,
    concatenation_bound,
    flatten_layers,
    sequential_bound,
)
from robustbench_iqa.lipschitz.gram_iteration import SAFETY
from robustbench_iqa.lipschitz.layer_bounds import channel_norm_global_bound, spatial_mean_bound
from robustbench_iqa.lipschitz.layers import ChannelNorm
from robustbench_iqa.lipschitz.trust import require_exact, require_no_hooks

__all__ = [
    "CAP",
    "MEANSQ_SLOPE",
    "REDUCTIONS",
    "TapCentre",
    "TappedFeatures",
    "channel_norm_deviation",
    "feature_deviation",
    "tap_centre",
]


REDUCTIONS = ("mean", "rms", "meansq")
MEANSQ_SLOPE = 4.0
"""sup_w sqrt(N) ||D g(w)|| of ``"meansq"``: 2 max_p |w_p| <= 4 (an FR difference of two unit-bounded
vectors; 2 for NR, but the global bound does not know whether a reference will be given)."""
CAP = 2.0
"""||n(v) - n(u)|| <= |n(v)| + |n(u)| < 2 for the channel normalisation."""


class TappedFeatures(nn.Module):
    """b(x) or b(x, ref): concatenated per-channel reductions of normalised taps (module docstring).

    ``slices``: the trunk, cut where features are tapped (each an ``nn.Sequential`` of plain
    layers); ``shift`` / ``scale``: per input channel, h = (x - shift) / scale;
    ``norm_eps``: LPIPS' channel normalisation u / (|u| + norm_eps), or None for none;
    ``reduction``: ``"mean"``, ``"rms"`` or ``"meansq"``; ``rms_eps``: inside the root of ``"rms"``.

    An IQA model whose ``features(x, ref)`` *is* this map exposes it as the attribute
    ``feature_map``: FS-IQA then gets ``eps_x_lipschitz`` (when the model has no
    ``lipschitz_bound`` of its own) and ``eps_x_local`` from it; the local radius first
    checks on the images that the model's features equal ``feature_map(x, ref)``.
    """

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(self, *, slices: Sequence[nn.Module], shift: Sequence[float], scale: Sequence[float],
                 norm_eps: float | None = 1e-10, reduction: str = "mean", rms_eps: float = 1e-8) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise InputError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if len(slices) < 1:
            raise InputError("at least one slice is needed")
        if len(shift) != len(scale) or not all(math.isfinite(s) and s != 0 for s in scale):
            raise InputError(f"shift and scale must have one finite value per channel, scale non-zero: {scale}")
        if not rms_eps > 0:
            raise InputError(f"rms_eps must be > 0, got {rms_eps}")
        if reduction == "meansq" and norm_eps is None:
            raise InputError("reduction 'meansq' needs the channel normalisation (norm_eps): without it the "
                             "mean of squares has no global Lipschitz bound")
        self.slices = nn.ModuleList(slices)
        self.register_buffer("shift", torch.tensor(list(shift), dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("scale", torch.tensor(list(scale), dtype=torch.float32).reshape(1, -1, 1, 1))
        self.norm = None if norm_eps is None else ChannelNorm(eps=norm_eps)
        self.reduction, self.rms_eps = reduction, float(rms_eps)

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """u_k(x) for every slice k (before normalisation)."""
        h = (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)
        out = []
        for s in self.slices:
            h = s(h)
            out.append(h)
        return out

    def normalised(self, u: torch.Tensor) -> torch.Tensor:
        return u if self.norm is None else self.norm(u)

    def reduce(self, w: torch.Tensor) -> torch.Tensor:
        if self.reduction == "mean":
            return w.mean(dim=(2, 3))
        if self.reduction == "meansq":
            return w.pow(2).mean(dim=(2, 3))
        return torch.sqrt(w.pow(2).mean(dim=(2, 3)) + self.rms_eps)

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        ux = self.taps(x)
        ur = self.taps(ref) if ref is not None else [None] * len(ux)
        feats = []
        for a, b in zip(ux, ur, strict=True):
            w = self.normalised(a) - (self.normalised(b) if b is not None else 0.0)
            feats.append(self.reduce(w))
        return torch.cat(feats, dim=1)

    # ---------------------------------------------------------- certified bounds
    def prefix_bounds(self, input_size: tuple[int, int]) -> list[tuple[float, tuple[int, int]]]:
        """Per tap k: a certified Lip(h -> u_k) and the tap's size (H_k, W_k) (cached per size)."""
        self.check_trusted()

        def compute() -> list[tuple[float, tuple[int, int]]]:
            out, total, size = [], 1.0, input_size
            for s in self.slices:
                b, new = sequential_bound([s], size)
                if new is None:
                    raise BoundUnavailableError("a slice of the trunk must keep a spatial map (no SpatialMean inside)")
                total, size = total * b.value, new
                out.append((total, (int(size[0]), int(size[1]))))
            return out

        return cached(self, f"tapped-prefix{tuple(input_size)}", compute)

    def standardisation_bound(self) -> float:
        return float(1.0 / self.scale.detach().double().abs().min()) * SAFETY

    def check_trusted(self) -> None:
        """Exact classes and no hooks for this module, its norm and its slices (their layers are checked
        by :func:`~robustbench_iqa.lipschitz.composition.sequential_bound`)."""
        require_exact(self, TappedFeatures)
        if self.norm is not None:
            require_exact(self.norm, ChannelNorm)
        for m in self.modules():  # checked on every call: a cached bound must not skip them
            require_no_hooks(m)
        flatten_layers(list(self.slices))

    def lipschitz_bound(self, input_size: tuple[int, int] | None) -> LipschitzBound:
        """Certified Lip(b(., ref)) on images of ``input_size`` (module docstring)."""
        if input_size is None:
            raise InputError("the image size (H, W) is needed for the Lipschitz bound of a convolutional trunk")
        size = (int(input_size[0]), int(input_size[1]))
        std = self.standardisation_bound()
        norm = 1.0 if self.norm is None else channel_norm_global_bound(self.norm)
        square = MEANSQ_SLOPE if self.reduction == "meansq" else 1.0
        branches = [LipschitzBound(std * p * norm * square * spatial_mean_bound(hw), ((f"tap {k + 1}", p),))
                    for k, (p, hw) in enumerate(self.prefix_bounds(size))]
        notes = () if self.norm is None else (f"channel normalisation: Lip 1/eps = {norm:.3g} (vacuous)",)
        cat = concatenation_bound(branches, "taps")
        return LipschitzBound(cat.value, cat.terms, notes)


# --------------------------------------------------------------- local deviation
@dataclass(frozen=True)
class TapCentre:
    """What the local bound reads at the centre x: per tap the pixel norms |u_p| and per-channel a_c."""

    pixel_norms: list[torch.Tensor]  # (H_k W_k,) norms over channels of u_k(x)
    rms: list[torch.Tensor]  # (C_k,) a_c = |w_c| / sqrt(N) (rms reduction only)
    sizes: list[int]  # N_k


@torch.no_grad()
def tap_centre(tf: TappedFeatures, x: torch.Tensor, ref: torch.Tensor | None) -> TapCentre:
    """The forward pass at x (C, H, W) (and ref) in the dtype of ``tf``."""
    ux = tf.taps(x[None])
    ur = tf.taps(ref[None]) if ref is not None else [None] * len(ux)
    norms, rms, sizes = [], [], []
    for a, b in zip(ux, ur, strict=True):
        norms.append(a[0].norm(dim=0).reshape(-1))
        w = tf.normalised(a) - (tf.normalised(b) if b is not None else 0.0)
        rms.append(w[0].pow(2).mean(dim=(1, 2)).sqrt())
        sizes.append(a.shape[2] * a.shape[3])
    return TapCentre(norms, rms, sizes)


def channel_norm_deviation(pixel_norms: torch.Tensor, d: float, eps: float) -> float:
    """Bound of ||n(v) - n(u)||_2 over all v with ||v - u||_2 <= d (module docstring, step 2)."""
    rho = torch.clamp(pixel_norms - d, min=0.0)
    c = torch.sort(1.0 / (rho + eps), descending=True).values  # c_p, largest first
    j = torch.arange(c.numel() + 1, dtype=c.dtype, device=c.device)  # j pixels capped at CAP, the rest at slope c_(j)
    slope = torch.cat([c, c.new_zeros(1)])
    total = CAP**2 * j + slope.square() * d * d
    return math.sqrt(float(total.min())) * SAFETY


def feature_deviation(tf: TappedFeatures, c: TapCentre, prefix: list[tuple[float, tuple[int, int]]],
                      r: float) -> float:
    """D_b(r) >= sup_{|u| <= r} ||b(x+u) - b(x)||_2 (module docstring, steps 1-4)."""
    std = tf.standardisation_bound()
    total = 0.0
    for (lip, _), norms, a, n in zip(prefix, c.pixel_norms, c.rms, c.sizes, strict=True):
        d = r * std * lip
        if tf.norm is not None:
            d = min(channel_norm_deviation(norms, d, tf.norm.eps), d / tf.norm.eps * SAFETY)
        if tf.reduction == "mean":
            d = d / math.sqrt(n) * SAFETY
        elif tf.reduction == "meansq":
            d = (2.0 * float(a.max()) * d / math.sqrt(n) + d * d / n) * SAFETY
        else:
            top = a + d / math.sqrt(n)
            phi = float((top / torch.sqrt(top.square() + tf.rms_eps)).max())
            d = d * min(phi, 1.0) / math.sqrt(n) * SAFETY
        total += d * d
    return math.sqrt(total) * SAFETY
