"""A local, certified input radius for FS-IQA on the embedded models (``eps_x_local``).

For B = FTN o b and a radius r, the mean value theorem gives, for ||u||_2 <= r,

    ||B(x+u) - B(x)||_2 <= r sup_{||x'-x|| <= r} ||J_B(x')||_2
                        <= r min( ||J_B(x)||_2 + V(r),  P(r),  L ),

where ||J_B(x)||_2 is computed *exactly* (the full Jacobian in float64, its Gram
matrix's largest eigenvalue, rounded up), V(r) bounds sup ||J_B(x') - J_B(x)||_2 over
the ball, P(r) is the product of the layers' local Jacobian bounds and L the global
certified constant (:mod:`robustbench_iqa.lipschitz.composition`).  ``eps_x_local`` is the
largest r with r min(...) <= sigma_f, found by bisection on
[sigma_f / L, sigma_f / ||J_B(x)||_2] (the bound is nondecreasing in r), so it is never
below ``eps_x_lipschitz`` and never above the first-order radius.

*Bound propagation.*  B is a chain of steps N_k (affine maps, elementwise
activations, poolings, channel normalisations).  For a path P and a next step N,
with S >= sup ||J_N|| and D >= sup ||J_N(P(x')) - J_N(P(x))|| over the ball,

    J_{N o P}(x') - J_{N o P}(x) = J_N(.)' (J_P(x') - J_P(x)) + (J_N(.)' - J_N(.)) J_P(x),

so the variation bound V' = S V + D Lip_P, the Jacobian bound P' = S P, and the
output deviation dev' = S dev (mean value theorem) -- the telescoping bound of a
product of Jacobians.  For concatenated branches on one input, the three bounds add
in quadrature.  Per step:

- affine (convolution with its BatchNorm folded, Linear, the FTN's standardization
  folded into its first Linear, the input standardisation): S = its certified norm
  (Gram iteration / SVD), D = 0; each output unit i moves by at most
  |dz_i| <= ||row_i||_2 dev_in (Cauchy-Schwarz), the pre-activation intervals;
- elementwise phi (SiLU, GELU, sigmoid) on pre-activations z_i +- dz_i: the exact range
  of phi' over each interval (endpoints and the interior critical points of phi',
  where phi'' = 0), so S = max_i max |phi'|, D = max_i max |phi'(t) - phi'(z_i)|;
- mean+std pooling over N positions (NR): S = 1/sqrt(N); the gradient of
  s_c = sqrt(||P h_c||^2/N + eps) has Hessian P/(N s) - (P h)(P h)^T/(N^2 s^3), with norm
  <= 1/(N s); over the ball s_c >= s_c(x) - dev/sqrt(N) (and >= sqrt(eps)), and the
  Jacobian difference is block diagonal over channels, so D = dev / (N min_c s_c,min);
- channel normalisation n(u) = u / sqrt(|u|^2 + eps) per pixel (FR):
  ||Dn(v)|| = 1/sqrt(|v|^2 + eps) and ||D^2 n(v)|| <= 3 rho s^-3/2 + 3 rho^3 s^-5/2 =: k(rho),
  rho = |v|, s = rho^2 + eps (from D^2 n[h,k] = 2g'(u.h)k + 2g'(u.k)h + 2g'(h.k)u
  + 4g''(u.h)(u.k)u, g(t) = (t + eps)^-1/2); k increases up to rho*^2 = eps (1 + sqrt 5)/4
  and decreases after.  With |v_p| >= rho_p = max(0, |u_p| - dev) on the ball:
  S = max_p (rho_p^2 + eps)^-1/2, D = max_p k(max(rho_p, rho*)) dev;
- RMS pooling sqrt(mean_hw w_c^2 + eps) (FR): as the std pooling without centering.

Everything is deterministic (no random start): inside ``eps_x_local`` the FS-IQA
premise ||B(x') - B(x)||_2 <= sigma_f is a theorem.  Implemented for the embedded
``default-nr`` / ``default-fr`` architectures (:class:`~robustbench_iqa.models.embedded.ConvTrunk`
with SiLU, their poolings, and an FTN of Linear / GELU / sigmoid layers; cost: one full
Jacobian of b per image, D backward passes, D = 128 here).

*Any trunk of plain layers* (:class:`~robustbench_iqa.lipschitz.tapped.TappedFeatures`: convolutions,
ReLU, max and blur pooling, pads, LPIPS' channel normalisation, spatial means or RMS
distances, NR or FR): the backbone itself, or an IQA model's ``feature_map`` attribute that
computes its ``features`` (checked on the images before anything is certified).  There the
radius comes from a deviation bound instead of a first-order term (ReLU networks are not
differentiable at their kinks): for ||u|| <= r, ||B(x+u) - B(x)|| <= D_FTN(D_b(r)) with D_b of
:func:`robustbench_iqa.lipschitz.tapped.feature_deviation` and D_FTN the product of the FTN's
local slopes (:func:`ftn_deviation`); ``eps_x_local`` is the largest r with
min(D_FTN(D_b(r)), r L) <= sigma_f (:func:`deviation_radius`).  Cost: one float64 forward of
the trunk per image (and of the reference) plus closed-form bounds.  Other models get None.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import jacrev

from robustbench_iqa.certify.heads import FTN
from robustbench_iqa.errors import BoundUnavailableError, InputError
from robustbench_iqa.lipschitz.composition import batchnorm_scale, cached
from robustbench_iqa.lipschitz.gram_iteration import (
    SAFETY,
    conv_layer_bound,
    conv_output_size,
    matrix_spectral_bound,
)
from robustbench_iqa.lipschitz.tapped import (
    TapCentre,
    TappedFeatures,
    feature_deviation,
    tap_centre,
)
from robustbench_iqa.lipschitz.trust import require_no_hooks
from robustbench_iqa.models.base import Backbone
from robustbench_iqa.models.embedded import (
    _EPS,
    _MEAN,
    _STD,
    EmbeddedFR,
    EmbeddedNR,
    channel_normalize,
)

RHO_STAR_SQ = (1.0 + math.sqrt(5.0)) / 4.0
"""rho*^2 / eps where the curvature bound k(rho) of the channel normalisation peaks."""


@dataclass(frozen=True)
class PathBound:
    """Bounds over the ball of radius r for a path x -> P(x): Jacobian norm, its variation, output deviation."""

    lip: float
    var: float
    dev: float

    def step(self, s: float, d: float) -> PathBound:
        """Append a step with sup ||J_N|| <= s and sup ||J_N' - J_N|| <= d (module docstring)."""
        return PathBound(s * self.lip, s * self.var + d * self.lip, s * self.dev)


def concatenate(paths: list[PathBound]) -> PathBound:
    """[P_1; ...; P_k] on one input: the bounds add in quadrature."""
    return PathBound(*(math.sqrt(sum(getattr(p, f) ** 2 for p in paths)) for f in ("lip", "var", "dev")))


# ------------------------------------------------------------------ activations
def _silu_d(t: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(t)
    return s * (1 + t * (1 - s))


def _gelu_d(t: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(t / math.sqrt(2.0))) + t * torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)


def _sigmoid_d(t: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(t)
    return s * (1 - s)


_SILU_CRIT = 2.3993572805154676  # root of 2 + x (1 - 2 sigmoid(x)): phi'' = 0
DERIVATIVES: dict[type, tuple[Callable[[torch.Tensor], torch.Tensor], tuple[float, ...]]] = {
    nn.SiLU: (_silu_d, (-_SILU_CRIT, _SILU_CRIT)),
    nn.GELU: (_gelu_d, (-math.sqrt(2.0), math.sqrt(2.0))),
    nn.Sigmoid: (_sigmoid_d, (0.0,)),
}
"""phi' and the critical points of phi' (the zeros of phi'') of each supported activation."""


def derivative_range(act: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise (min, max) of phi' over [lo, hi]: at the endpoints or an interior critical point."""
    entry = DERIVATIVES.get(type(act))
    if entry is None or (isinstance(act, nn.GELU) and act.approximate != "none"):
        raise InputError(f"no derivative range for activation {type(act).__name__}")
    d, crit = entry
    a, b = d(lo), d(hi)
    dmin, dmax = torch.minimum(a, b), torch.maximum(a, b)
    for c in crit:
        inside = (lo <= c) & (c <= hi)
        v = float(d(torch.tensor(c, dtype=torch.float64)))
        dmin = torch.where(inside, torch.clamp(dmin, max=v), dmin)
        dmax = torch.where(inside, torch.clamp(dmax, min=v), dmax)
    return dmin, dmax


def elementwise_step(path: PathBound, act: nn.Module, z: torch.Tensor, dz: torch.Tensor) -> PathBound:
    """Step through phi at pre-activations z +- dz (module docstring)."""
    dmin, dmax = derivative_range(act, z - dz, z + dz)
    d0 = DERIVATIVES[type(act)][0](z)
    s = float(torch.maximum(dmin.abs(), dmax.abs()).max()) * SAFETY
    d = float(torch.maximum(dmax - d0, d0 - dmin).max()) * SAFETY
    return path.step(s, d)


def pooled_step(path: PathBound, spread: torch.Tensor, positions: int) -> PathBound:
    """Mean+std (or RMS) pooling over ``positions``; ``spread`` (C,) the centre's s_c (or d_c)."""
    n = positions
    floor = spread.new_tensor(math.sqrt(_EPS))
    s_min = torch.maximum(spread - path.dev / math.sqrt(n), floor)
    return path.step(SAFETY / math.sqrt(n), float(path.dev / (n * s_min.min())) * SAFETY)


def channel_norm_step(path: PathBound, u: torch.Tensor) -> PathBound:
    """Channel normalisation at the centre's stage output u (C, H, W) (module docstring)."""
    rho = torch.clamp(u.norm(dim=0) - path.dev, min=0.0)
    s = float((rho.square() + _EPS).rsqrt().max()) * SAFETY
    r = torch.clamp(rho, min=math.sqrt(RHO_STAR_SQ * _EPS))
    q = r.square() + _EPS
    curvature = 3 * r * q.pow(-1.5) + 3 * r.pow(3) * q.pow(-2.5)
    return path.step(s, float(curvature.max()) * path.dev * SAFETY)


# ------------------------------------------------------------- the embedded models
@dataclass(frozen=True)
class _Affine:
    norm: float
    rows: torch.Tensor  # per output channel (conv) or unit (linear): max row norm


def _trunk_affines(model: EmbeddedNR | EmbeddedFR, size: tuple[int, int]) -> list[_Affine]:
    """Certified norm and row norms of each stage's convolution with its BatchNorm folded in."""

    def compute() -> list[_Affine]:
        out, hw = [], size
        for stage in model.trunk.stages:
            conv, bn, _ = stage.children()
            assert isinstance(conv, nn.Conv2d)
            scale = batchnorm_scale(bn)
            w = conv.weight.detach().double() * scale[:, None, None, None]
            out.append(_Affine(conv_layer_bound(conv, hw, scale=scale), w.flatten(1).norm(dim=1) * SAFETY))
            hw = conv_output_size(conv, hw)
        return out

    return cached(model, f"local-trunk{size}", compute)


def _ftn_affines(ftn: FTN) -> list[_Affine]:
    """Per Linear of the FTN (standardization folded into the first): norm and row norms."""

    def compute() -> list[_Affine]:
        out = []
        inv_std = 1.0 / ftn.get_buffer("std").detach().double()
        first = True
        for layer in ftn.net:
            if isinstance(layer, nn.Linear):
                w = layer.weight.detach().double() * (inv_std[None, :] if first else 1.0)
                out.append(_Affine(matrix_spectral_bound(w), w.norm(dim=1) * SAFETY))
                first = False
        return out

    return cached(ftn, "local-ftn", compute)


@dataclass(frozen=True)
class Centre:
    """What the bounds need from the forward pass at the centre x (float64, one image)."""

    preacts: list[torch.Tensor]  # per stage: conv + BatchNorm output (C, H, W)
    outputs: list[torch.Tensor]  # per stage: after SiLU
    spreads: list[torch.Tensor]  # NR: [s_c of the last stage]; FR: per stage d_c
    ftn_preacts: list[torch.Tensor]  # per FTN Linear: its output
    full_reference: bool
    input_size: tuple[int, int]


@torch.no_grad()
def centre(model: EmbeddedNR | EmbeddedFR, ftn: FTN, x: torch.Tensor, ref: torch.Tensor | None) -> Centre:
    """The forward pass at x (3, H, W) (and ref, for FR) in the model's dtype."""
    h = ((x - _MEAN) / _STD)[None]
    pre, outs = [], []
    for stage in model.trunk.stages:
        conv, bn, act = stage.children()
        z = bn(conv(h))
        h = act(z)
        pre.append(z[0])
        outs.append(h[0])
    if isinstance(model, EmbeddedNR):
        spreads = [torch.sqrt(outs[-1].var(dim=(1, 2), unbiased=False) + _EPS)]
    else:
        if ref is None:
            raise InputError("a reference image is needed for the FR model")
        spreads = []
        for u, ur in zip(outs, model.trunk(ref[None]), strict=True):
            w = channel_normalize(u[None])[0] - channel_normalize(ur)[0]
            spreads.append(torch.sqrt(w.pow(2).mean(dim=(1, 2)) + _EPS))
    f = model.features(x[None], None if ref is None else ref[None])[0]
    ftn_pre = ftn_preacts(ftn, f)
    return Centre(pre, outs, spreads, ftn_pre, isinstance(model, EmbeddedFR), (int(x.shape[-2]), int(x.shape[-1])))


def feature_path(model: EmbeddedNR | EmbeddedFR, ftn: FTN, c: Centre, r: float) -> PathBound:
    """Bounds for B = FTN o b over the ball of radius r around the centre ``c``."""
    affines = _trunk_affines(model, c.input_size)
    path = PathBound(lip=1.0 / _STD, var=0.0, dev=r / _STD)
    paths = []
    for stage, aff, z in zip(model.trunk.stages, affines, c.preacts, strict=True):
        dz = aff.rows[:, None, None] * path.dev
        path = elementwise_step(path.step(aff.norm, 0.0), list(stage.children())[2], z, dz)
        paths.append(path)
    if not c.full_reference:
        h = c.outputs[-1]
        b_path = pooled_step(paths[-1], c.spreads[0], h.shape[1] * h.shape[2])
    else:
        b_path = concatenate([pooled_step(channel_norm_step(p, u), sp, u.shape[1] * u.shape[2])
                              for p, u, sp in zip(paths, c.outputs, c.spreads, strict=True)])
    return ftn_path(ftn, b_path, c.ftn_preacts)


def ftn_path(ftn: FTN, path: PathBound, preacts: list[torch.Tensor]) -> PathBound:
    """Extend ``path`` (ending at the features b) through the FTN, given its Linear outputs at the centre."""
    affs, pre = iter(_ftn_affines(ftn)), iter(preacts)
    pending: tuple[torch.Tensor, torch.Tensor] | None = None
    for layer in ftn.net:
        if isinstance(layer, nn.Linear):
            aff = next(affs)
            pending = (next(pre), aff.rows * path.dev)
            path = path.step(aff.norm, 0.0)
        else:
            if pending is None:
                raise InputError(f"FTN layer {type(layer).__name__} does not follow a Linear layer")
            path = elementwise_step(path, layer, *pending)
            pending = None
    return path


@torch.no_grad()
def ftn_preacts(ftn: FTN, f: torch.Tensor) -> list[torch.Tensor]:
    """The outputs of the FTN's Linear layers at features ``f`` (D,)."""
    g = (f - ftn.get_buffer("mean")) / ftn.get_buffer("std")
    out = []
    for layer in ftn.net:
        g = layer(g)
        if isinstance(layer, nn.Linear):
            out.append(g)
    return out


def ftn_deviation(ftn: FTN, preacts: list[torch.Tensor], d: float) -> float:
    """D_FTN(d) >= sup ||FTN(f') - FTN(f)|| over ||f' - f|| <= d: the product of local slopes, each
    activation's slope the largest |phi'| over its pre-activation intervals (module docstring)."""
    return ftn_path(ftn, PathBound(lip=1.0, var=0.0, dev=d), preacts).dev


def exact_jacobian_norm(backbone: Callable[[torch.Tensor], torch.Tensor], ftn: FTN, x: torch.Tensor) -> float:
    """||J_B(x)||_2 for B = FTN o b from the full Jacobians (float64), rounded up.

    J_b (D x n, D backward passes) by reverse mode, J_FTN (m x D) at b(x), and
    ||J_B||_2^2 = lambda_max(J_FTN (J_b J_b^T) J_FTN^T).
    """
    with torch.enable_grad():
        jb = jacrev(backbone)(x).reshape(-1, x.numel()).detach()
        f = backbone(x).detach()
        jf = jacrev(ftn)(f).detach()
    gram = jf @ (jb @ jb.T) @ jf.T
    return math.sqrt(max(float(torch.linalg.eigvalsh(gram)[-1]), 0.0)) * (1.0 + 1e-9)


def radius_from_bounds(sigma: float, jac_norm: float, global_lip: float | None,
                       bound_at: Callable[[float], PathBound], *, iterations: int = 24) -> float:
    """Largest r with r min(||J(x)|| + V(r), P(r), L) <= sigma (module docstring).

    Geometric bisection on [sigma / L, sigma / ||J(x)||] (the bound is nondecreasing in r):
    the result satisfies the condition, and is within a factor (hi/lo)^(2^-iterations) of
    the largest r that does.
    """

    def ok(r: float) -> bool:
        p = bound_at(r)
        lips = [jac_norm + p.var, p.lip] + ([global_lip] if global_lip is not None else [])
        return r * min(lips) <= sigma

    lo = sigma / global_lip if global_lip is not None and global_lip > 0 else 0.0
    if jac_norm <= 0:
        hi = max(lo, 1e-12)
        while ok(hi) and hi < 1e6:
            hi *= 2.0
        if ok(hi):
            return hi
    else:
        hi = sigma / jac_norm
        if ok(hi):
            return hi
    if lo <= 0 or not ok(lo):
        lo = hi * 1e-12
        if not ok(lo):
            return 0.0
    return geometric_bisection(ok, lo, hi, iterations)


def geometric_bisection(ok: Callable[[float], bool], lo: float, hi: float, iterations: int) -> float:
    """With ok(lo) true and ok(hi) false for a monotone condition: halve [lo, hi] on the log scale
    ``iterations`` times and return the lower end, which still satisfies the condition."""
    for _ in range(iterations):
        mid = math.sqrt(lo * hi)
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


def deviation_radius(sigma: float, deviation: Callable[[float], float], global_lip: float | None,
                     *, iterations: int = 40) -> float:
    """Largest r (to a factor 2^(2^-iterations) or so) with min(D(r), r L) <= sigma, D nondecreasing.

    The result always satisfies the condition (it is the lower end of the bisection), so it is
    a certified radius; it is never below sigma / L.
    """

    def ok(r: float) -> bool:
        bound = deviation(r)
        if global_lip is not None:
            bound = min(bound, r * global_lip)
        return bound <= sigma

    lo = sigma / global_lip if global_lip is not None and global_lip > 0 else 0.0
    if lo > 0 and not ok(lo):  # rounding only: r L <= sigma holds by construction
        lo = lo * (1 - 1e-9)
    hi = max(lo, 1e-12) * 2.0
    while ok(hi):
        lo, hi = hi, hi * 2.0
        if hi > 1e12:
            return lo
    if lo <= 0:
        lo = hi
        while not ok(lo):
            lo /= 2.0
            if lo < 1e-300:
                return 0.0
        hi = lo * 2.0
    return geometric_bisection(ok, lo, hi, iterations)


def tapped_features_of(backbone: nn.Module | None) -> TappedFeatures | None:
    """The :class:`TappedFeatures` computing ``backbone``: itself, or a wrapped model's ``feature_map``."""
    if type(backbone) is TappedFeatures:
        return backbone
    model = backbone.model if isinstance(backbone, Backbone) else backbone
    tf = getattr(model, "feature_map", None)
    return tf if type(tf) is TappedFeatures else None


def tapped_local_radii(fs: nn.Module, tf: TappedFeatures, ftn: FTN, x: torch.Tensor,
                       ref: torch.Tensor | None) -> list[float | None]:
    """eps_x_local for a backbone computed by ``tf`` (:mod:`robustbench_iqa.lipschitz.tapped`).

    Checks first that the backbone's output equals ``tf``'s on these images (a model may not
    claim a feature map it does not compute), then bounds D_B(r) = D_FTN(D_b(r)).
    """
    size = (int(x.shape[-2]), int(x.shape[-1]))
    bound = fs.lipschitz_bound(size)  # type: ignore[operator]
    global_lip = None if bound is None else bound.value
    if fs.backbone is not tf:
        with torch.no_grad():
            claimed, actual = tf(x, ref), fs.backbone(x, ref)  # type: ignore[operator]
        if claimed.shape != actual.shape or not torch.allclose(claimed, actual, rtol=1e-4, atol=1e-6):
            raise BoundUnavailableError("the backbone's output differs from the feature_map it exposes: no local bound")
    prefix = tf.prefix_bounds(size)
    t64 = copy.deepcopy(tf).double().eval()
    f64 = copy.deepcopy(ftn).double().eval()
    sigma = float(fs.sigma)  # type: ignore[arg-type]
    out: list[float | None] = []
    for i in range(x.shape[0]):
        xi = x[i].detach().double()
        ri = None if ref is None else ref[i].detach().double()
        c = tap_centre(t64, xi, ri)
        with torch.no_grad():
            pre = ftn_preacts(f64, t64(xi[None], None if ri is None else ri[None])[0])

        def dev(r: float, c: TapCentre = c, pre: list[torch.Tensor] = pre) -> float:
            return ftn_deviation(f64, pre, feature_deviation(t64, c, prefix, r))

        out.append(deviation_radius(sigma, dev, global_lip))
    return out


def local_radii(fs: nn.Module, x: torch.Tensor, ref: torch.Tensor | None = None) -> list[float | None]:
    """eps_x_local per image of an FS-IQA defense ``fs`` (None where the model is not supported).

    Supported: the embedded models (first-order + curvature bound, above) and any backbone
    computed by a :class:`~robustbench_iqa.lipschitz.tapped.TappedFeatures` (the backbone itself,
    or an IQA model's ``feature_map`` attribute), with an :class:`FTN`.
    """
    backbone, ftn = getattr(fs, "backbone", None), getattr(fs, "ftn", None)
    if not isinstance(ftn, FTN):
        return [None] * x.shape[0]
    for m in (*([] if backbone is None else backbone.modules()), *ftn.modules()):
        require_no_hooks(m)
    tf = tapped_features_of(backbone)
    if tf is not None:
        return tapped_local_radii(fs, tf, ftn, x, ref)
    model = backbone.model if isinstance(backbone, Backbone) else None
    if not isinstance(model, (EmbeddedNR, EmbeddedFR)):
        return [None] * x.shape[0]
    size = (int(x.shape[-2]), int(x.shape[-1]))
    bound = fs.lipschitz_bound(size)  # type: ignore[operator]
    global_lip = None if bound is None else bound.value
    m64 = copy.deepcopy(model).double().eval()
    f64 = copy.deepcopy(ftn).double().eval()
    sigma = float(fs.sigma)  # type: ignore[arg-type]
    out: list[float | None] = []
    for i in range(x.shape[0]):
        xi = x[i].detach().double()
        ri = None if ref is None else ref[i].detach().double()

        def b(z: torch.Tensor, ri: torch.Tensor | None = ri) -> torch.Tensor:
            return m64.features(z[None], None if ri is None else ri[None])[0]

        jn = exact_jacobian_norm(b, f64, xi)
        c = centre(m64, f64, xi, ri)

        def bound_at(r: float, c: Centre = c) -> PathBound:
            return feature_path(m64, f64, c, r)

        with torch.no_grad():
            out.append(radius_from_bounds(sigma, jn, global_lip, bound_at))
    return out
