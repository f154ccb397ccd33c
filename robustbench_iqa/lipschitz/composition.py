"""Certified global Lipschitz bounds (L2 -> L2) composed from per-layer bounds.

A bound ``L`` with ||F(x) - F(x')||_2 <= L ||x - x'||_2 for *all* x, x' turns the
FS-IQA feature radius into an input radius that is a theorem, not a first-order
estimate: ||B(x+u) - B(x)||_2 <= L ||u||_2 <= sigma_f whenever ||u||_2 <= sigma_f / L,
so ``eps_x_lipschitz = sigma_f / L`` satisfies the IVE premise exactly (FS-IQA
Theorem 1 without the linearization).

Composition rules (each a one-line proof):

- *Sequence* F = F_k o ... o F_1: Lip(F) <= prod_i Lip(F_i).
- *Concatenation of branches on one input*, F(x) = [F_1(x); ...; F_k(x)]:
  ||F(x) - F(x')||^2 = sum_i ||F_i(x) - F_i(x')||^2 <= (sum_i L_i^2) ||x - x'||^2,
  so Lip(F) <= sqrt(sum_i L_i^2).
- *Sum of branches*: Lip(F_1 + F_2) <= L_1 + L_2 (triangle inequality).

Per-layer constants:

- ``Linear`` / ``Conv2d``: the operator norm of the weight (bias is a translation),
  bounded by Gram iteration (:mod:`robustbench_iqa.lipschitz.gram_iteration`, valid for zero
  padding and stride on the given input size).  An eval-mode ``BatchNorm`` right
  after a convolution is the per-channel affine map z -> s z + t with
  s = gamma / sqrt(running_var + eps); it is folded into the kernel (diag(s) K is
  again a kernel), which is exact.  A BatchNorm on its own: max_c |s_c|.
- Elementwise activations phi: sup |phi'| (the mean value theorem, per coordinate):
  SiLU x sigma(x): its derivative sigma(x)(1 + x(1 - sigma(x))) has its maximum
  1.0998393... at the root x* = 2.3994 of 2 + x(1 - 2 sigma(x)) = 0 (the zero of the
  second derivative) and its minimum 1 - 1.0998 at -x* (phi'(x) + phi'(-x) = 1);
  GELU x Phi(x): phi'(x) = Phi(x) + x phi(x), phi''(x) = phi(x)(2 - x^2), extremes at
  +-sqrt(2): Phi(sqrt 2) + sqrt(2) phi(sqrt 2) = 1.1289041... and 1 - that;
  sigmoid: 1/4; tanh, ReLU, softplus: 1; LeakyReLU: max(1, |slope|).
- A fixed standardization (x - m) / s: 1 / min |s| (a diagonal map: max 1/|s_i|).
- Global mean pooling over N = H W positions: |mean(d)| <= ||d||_2 / sqrt(N) per
  channel (Cauchy-Schwarz), hence 1/sqrt(N) for all channels together.
- Mean and standard-deviation pooling together, f_c = [mean_hw h_c, sqrt(var_hw h_c + eps)]
  (:func:`mean_std_pool_bound`): also 1/sqrt(N), not sqrt(2)/sqrt(N).  With
  Q = 1 1^T / N and P = I - Q (orthogonal projections, P + Q = I),
  |mean(h) - mean(h')|^2 = ||Q d||^2 / N, and std(h) = g(||P h|| / sqrt(N)) with
  g(t) = sqrt(t^2 + eps) 1-Lipschitz, so |std(h) - std(h')| <= ||P d|| / sqrt(N);
  summing, |d mean|^2 + |d std|^2 <= (||Q d||^2 + ||P d||^2) / N = ||d||^2 / N.
  The same argument bounds an RMS pooling sqrt(mean_hw d_c^2 + eps) by 1/sqrt(N).
- Channel unit-normalisation n(u) = u / sqrt(|u|^2 + eps) at each pixel (LPIPS):
  Dn(u) = (I - u u^T / (|u|^2 + eps)) / sqrt(|u|^2 + eps) has eigenvalues
  1/sqrt(|u|^2 + eps) and eps / (|u|^2 + eps)^(3/2), both <= 1/sqrt(eps), with
  equality at u = 0; the domain is convex, so Lip(n) = 1/sqrt(eps) exactly.  For
  eps = 1e-6 that is 1000: a global bound through it is sound but vacuous in
  practice (:data:`CHANNEL_NORM_NOTE`).

What is bounded is what was read: layers are matched by exact class, never by
``isinstance``, and refused by name when subclassed, hooked or with a replaced
``forward`` (:mod:`robustbench_iqa.lipschitz.trust`); a non-finite norm, or a zero norm of a
non-zero weight (underflow), is refused; weights are divided by their largest entry
before Gram iteration / SVD and the norm multiplied back, so float64 kernels at scales
1e-200 or 1e+200 keep exact bounds.  Max pooling, pads, blur pooling, LPIPS' channel
normalisation (eps outside the root) and spatial means:
:mod:`robustbench_iqa.lipschitz.layer_bounds`.

Bounds depend on the input size only through the convolutions' zero-padding
embedding and the pooling's 1/sqrt(N); they are cached per (weights, input size)
(:func:`cached_bound`), so each model pays for them once.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import torch
from torch import nn

from robustbench_iqa.errors import BoundUnavailableError, InputError
from robustbench_iqa.lipschitz.gram_iteration import (
    SAFETY,
    checked_norm,
    conv_layer_bound,
    conv_output_size,
    matrix_spectral_bound,
)
from robustbench_iqa.lipschitz.layer_bounds import FIXED_LAYERS, fixed_layer_bound
from robustbench_iqa.lipschitz.trust import (
    require_container,
    require_exact,
    require_no_hooks,
    require_self_certified,
)

__all__ = [
    "ACTIVATION_CONSTANTS",
    "BATCHNORM_TYPES",
    "CHANNEL_NORM_NOTE",
    "GELU_LIPSCHITZ",
    "LipschitzBound",
    "SIGMOID_LIPSCHITZ",
    "SILU_LIPSCHITZ",
    "activation_lipschitz",
    "batchnorm_scale",
    "cached",
    "cached_bound",
    "channel_norm_bound",
    "concatenation_bound",
    "flatten_layers",
    "identity_bound",
    "mean_pool_bound",
    "mean_std_pool_bound",
    "module_lipschitz_bound",
    "rms_pool_bound",
    "sequential_bound",
    "standardization_bound",
    "weights_fingerprint",
]


SILU_LIPSCHITZ = 1.0998393201288670
"""sup |d/dx x sigmoid(x)| = 1.09983932012886691695..., rounded up."""
GELU_LIPSCHITZ = 1.1289041451851548
"""sup |d/dx x Phi(x)| = Phi(sqrt 2) + sqrt(2) phi(sqrt 2) = 1.12890414518515478634..., rounded up."""
SIGMOID_LIPSCHITZ = 0.25
CHANNEL_NORM_NOTE = (
    "channel normalisation u / sqrt(|u|^2 + eps) has Lipschitz constant 1/sqrt(eps) (attained at u = 0): "
    "the global bound is sound but vacuous in practice"
)


@dataclass(frozen=True)
class LipschitzBound:
    """A certified upper bound ``value`` of a map's Lipschitz constant (L2 -> L2).

    ``terms``: the per-layer constants that were composed (name, constant), for reports;
    ``notes``: caveats (e.g. a layer whose constant makes the bound vacuous).
    """

    value: float
    terms: tuple[tuple[str, float], ...] = ()
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not (self.value >= 0 and math.isfinite(self.value)):
            # BoundUnavailableError is a ValueError: an overflowing product is refused, never reported as inf
            raise BoundUnavailableError(f"a Lipschitz bound must be finite and >= 0, got {self.value}")

    def then(self, other: LipschitzBound) -> LipschitzBound:
        """The bound of ``other o self`` (apply self first): the product."""
        return LipschitzBound(self.value * other.value, self.terms + other.terms, self.notes + other.notes)

    def scaled(self, factor: float, name: str) -> LipschitzBound:
        return LipschitzBound(self.value * factor, self.terms + ((name, factor),), self.notes)


def identity_bound() -> LipschitzBound:
    return LipschitzBound(1.0)


def concatenation_bound(branches: Sequence[LipschitzBound], name: str = "concat") -> LipschitzBound:
    """[F_1(x); ...; F_k(x)] on one input: sqrt(sum L_i^2) (module docstring)."""
    value = math.sqrt(sum(b.value**2 for b in branches)) * SAFETY
    terms = tuple(t for b in branches for t in b.terms) + ((f"{name} sqrt(sum L_i^2)", value),)
    notes = tuple(dict.fromkeys(n for b in branches for n in b.notes))
    return LipschitzBound(value, terms, notes)


# ------------------------------------------------------------------- layer constants
ACTIVATION_CONSTANTS: dict[type, float] = {
    nn.SiLU: SILU_LIPSCHITZ,
    nn.GELU: GELU_LIPSCHITZ,
    nn.Sigmoid: SIGMOID_LIPSCHITZ,
    nn.Tanh: 1.0, nn.ReLU: 1.0, nn.ReLU6: 1.0, nn.Hardtanh: 1.0, nn.Softplus: 1.0,
    nn.Identity: 1.0, nn.Flatten: 1.0, nn.Dropout: 1.0, nn.LeakyReLU: 1.0,
}
"""sup |phi'| of each elementwise layer, by *exact* class (LeakyReLU: max(1, |slope|))."""


def activation_lipschitz(layer: nn.Module) -> float:
    """sup |phi'| of an elementwise activation module, or :class:`BoundUnavailableError` naming its type.

    The class must be exactly one of :data:`ACTIVATION_CONSTANTS` with no hook and no replaced
    ``forward`` (:func:`~robustbench_iqa.lipschitz.trust.require_exact`).
    """
    require_exact(layer, tuple(ACTIVATION_CONSTANTS))
    if isinstance(layer, nn.GELU) and layer.approximate != "none":
        raise BoundUnavailableError(f"cannot bound GELU(approximate={layer.approximate!r}); only the exact GELU is supported")
    if isinstance(layer, nn.Hardtanh) and not layer.min_val <= layer.max_val:
        raise BoundUnavailableError(f"cannot bound Hardtanh({layer.min_val}, {layer.max_val})")
    if isinstance(layer, nn.Softplus) and layer.beta <= 0:
        raise BoundUnavailableError(f"cannot bound Softplus(beta={layer.beta})")
    if isinstance(layer, nn.Dropout) and layer.training and layer.p > 0:
        raise BoundUnavailableError("cannot bound Dropout in training mode; put the model in eval mode")
    if isinstance(layer, nn.LeakyReLU):
        slope = float(layer.negative_slope)
        if not math.isfinite(slope):
            raise BoundUnavailableError(f"cannot bound LeakyReLU(negative_slope={slope})")
        return max(1.0, abs(slope))
    return ACTIVATION_CONSTANTS[type(layer)]


BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def batchnorm_scale(bn: nn.Module) -> torch.Tensor:
    """s = gamma / sqrt(running_var + eps) of an eval-mode BatchNorm (float64), the slope per channel.

    Only the exact classes :data:`BATCHNORM_TYPES`, without hooks; non-finite slopes are refused.
    """
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise InputError(f"expected a BatchNorm layer, got {type(bn).__name__}")
    require_exact(bn, BATCHNORM_TYPES)
    if bn.training or bn.running_var is None:
        raise BoundUnavailableError(
            f"cannot bound {type(bn).__name__} that normalises with batch statistics (training mode or "
            "track_running_stats=False); put the model in eval mode"
        )
    var = bn.running_var.detach().to(torch.float64)
    scale = 1.0 / torch.sqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().to(torch.float64)
    if not bool(torch.isfinite(scale).all()):
        raise BoundUnavailableError(f"cannot bound {type(bn).__name__}: its slope gamma / sqrt(var + eps) is not finite")
    return scale


def standardization_bound(std: torch.Tensor | float) -> float:
    """Lip of x -> (x - m) / std (elementwise): max 1/|std|."""
    s = torch.as_tensor(std, dtype=torch.float64).abs()
    if not bool((s > 0).all()):
        raise InputError("a standardization divides by zero (std contains 0)")
    return float(1.0 / s.min()) * SAFETY


def mean_pool_bound(size: tuple[int, int]) -> float:
    """Global mean pooling over H x W positions: 1/sqrt(H W)."""
    return SAFETY / math.sqrt(size[0] * size[1])


def mean_std_pool_bound(size: tuple[int, int]) -> float:
    """[mean_hw h_c, sqrt(var_hw h_c + eps)] over channels together: 1/sqrt(H W) (module docstring)."""
    return SAFETY / math.sqrt(size[0] * size[1])


def rms_pool_bound(size: tuple[int, int]) -> float:
    """sqrt(mean_hw d_c^2 + eps) per channel, all channels together: 1/sqrt(H W)."""
    return SAFETY / math.sqrt(size[0] * size[1])


def channel_norm_bound(eps: float) -> float:
    """u / sqrt(|u|^2 + eps) at every pixel: exactly 1/sqrt(eps) (module docstring)."""
    if not eps > 0:
        raise InputError(f"channel normalisation with eps={eps!r} is not Lipschitz")
    return SAFETY / math.sqrt(eps)


# ----------------------------------------------------------------- sequential walker
def sequential_bound(
    layers: Sequence[nn.Module], input_size: tuple[int, int] | None = None,
) -> tuple[LipschitzBound, tuple[int, int] | None]:
    """Bound of a plain chain of layers and the spatial size after it.

    Handles ``Conv2d`` (zero padding, stride, groups; a directly following eval-mode
    ``BatchNorm2d`` folded in), ``Linear`` (a following ``BatchNorm1d`` folded in),
    ``BatchNorm``, nested ``Sequential``, the activations of
    :func:`activation_lipschitz`, the fixed layers of
    :mod:`robustbench_iqa.lipschitz.layer_bounds` (``MaxPool2d``, the pads,
    ``BlurPool2d``, ``ChannelNorm``, ``SpatialMean``), and layers that certify themselves
    with methods ``lipschitz_bound(input_size) -> LipschitzBound`` and
    ``output_size(input_size)``.  Every layer is matched by its *exact* class and refused
    (:class:`BoundUnavailableError`, naming it) when it is a subclass, has a hook or a
    replaced ``forward`` (:mod:`robustbench_iqa.lipschitz.trust`).  ``input_size`` (H, W)
    is required before a spatial layer.
    """
    flat = flatten_layers(layers)
    total = identity_bound()
    size = input_size
    i = 0
    while i < len(flat):
        layer = flat[i]
        nxt = flat[i + 1] if i + 1 < len(flat) else None
        fold = type(layer) in (nn.Conv2d, nn.Linear) and isinstance(nxt, nn.modules.batchnorm._BatchNorm)
        scale = batchnorm_scale(nxt) if fold else None  # type: ignore[arg-type]
        own = getattr(layer, "lipschitz_bound", None)
        if callable(own) and callable(getattr(layer, "output_size", None)):
            # A layer that certifies itself (e.g. the 1-Lipschitz layers of the embedded Lipschitz models).
            require_self_certified(layer)
            if size is None:
                raise InputError(f"the input size (H, W) is needed to bound {type(layer).__name__}")
            total = total.then(cast(Callable[[tuple[int, int]], LipschitzBound], own)(size))
            size = cast(Callable[[tuple[int, int]], tuple[int, int]], layer.output_size)(size)
            i += 1
        elif type(layer) is nn.Conv2d:
            if size is None:
                raise InputError("the input size (H, W) is needed to bound a Conv2d")
            c = conv_layer_bound(layer, size, scale=scale)
            size = conv_output_size(layer, size)
            total = total.scaled(c, f"Conv2d{'+BatchNorm' if fold else ''} {layer.in_channels}->{layer.out_channels}")
            i += 2 if fold else 1
        elif type(layer) is nn.Linear:
            require_exact(layer, nn.Linear)
            w = layer.weight.detach().to(torch.float64)
            if scale is not None:
                w = w * scale[:, None]
            c = checked_norm(matrix_spectral_bound(w), w, f"Linear {layer.in_features}->{layer.out_features}")
            total = total.scaled(c, f"Linear{'+BatchNorm' if fold else ''} {layer.in_features}->{layer.out_features}")
            i += 2 if fold else 1
        elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
            c = float(batchnorm_scale(layer).abs().max()) * SAFETY
            total = total.scaled(c, type(layer).__name__)
            i += 1
        elif type(layer) in FIXED_LAYERS:
            require_exact(layer, FIXED_LAYERS)
            c, size, name = fixed_layer_bound(layer, size)
            total = total.scaled(c, name)
            i += 1
        else:
            total = total.scaled(activation_lipschitz(layer), type(layer).__name__)
            i += 1
    return total, size


def flatten_layers(layers: Sequence[nn.Module]) -> list[nn.Module]:
    """The leaves of nested ``nn.Sequential`` containers, in order (each container checked: exact class, no hooks)."""
    flat: list[nn.Module] = []
    for m in layers:
        if isinstance(m, nn.Sequential):
            require_container(m)
            flat.extend(flatten_layers(list(m)))
        else:
            flat.append(m)
    return flat


# -------------------------------------------------------------------------- caching
def weights_fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's structure (every submodule's name, exact class and ``extra_repr``: stride,
    padding, kernel ...) and state (names, dtypes, shapes, values): the cache key."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, m in module.named_modules():  # structure: classes and settings not in the state (stride, padding...)
        h.update(f"{name}|{type(m).__module__}.{type(m).__qualname__}|{m.extra_repr()}".encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


_CACHE: dict[tuple[str, str], Any] = {}
_CACHE_MAX = 256
T = TypeVar("T")


def cached(module: nn.Module, key: str, compute: Callable[[], T]) -> T:
    """``compute()`` once per (weights of ``module``, ``key``); later calls return the cached value."""
    k = (weights_fingerprint(module), key)
    if k not in _CACHE:
        value = compute()
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[k] = value
    return _CACHE[k]  # type: ignore[no-any-return]


def cached_bound(module: nn.Module, key: str, compute: Callable[[], LipschitzBound]) -> LipschitzBound:
    """:func:`cached` for Lipschitz bounds."""
    return cached(module, key, compute)


def module_lipschitz_bound(module: nn.Module, input_size: tuple[int, int] | None) -> LipschitzBound:
    """A certified Lipschitz bound of ``module`` on inputs of spatial size ``input_size``.

    Uses the module's own ``lipschitz_bound(input_size)`` when it has one (models that
    know their structure: the embedded models, FTN); when that is unavailable and the
    module (or the model it wraps) has a ``feature_map`` attribute that is exactly a
    :class:`~robustbench_iqa.lipschitz.tapped.TappedFeatures` (the model declares that its
    features are computed by it), that feature map's bound; else a plain ``Sequential``
    (:func:`sequential_bound`).  Refuses any module with a hook inside.  Raises
    :class:`BoundUnavailableError` for anything else, naming the type.
    """
    for m in module.modules():  # a hook anywhere inside may change what the bound reads
        require_no_hooks(m)
    own = getattr(module, "lipschitz_bound", None)
    feature_map = getattr(getattr(module, "model", module), "feature_map", None)
    if callable(own):
        try:
            bound = cast(Callable[[tuple[int, int] | None], object], own)(input_size)
        except BoundUnavailableError:
            # a model without its own bound whose features are a certified feature map
            # (:class:`robustbench_iqa.lipschitz.tapped.TappedFeatures`)
            from robustbench_iqa.lipschitz.tapped import TappedFeatures

            if type(feature_map) is not TappedFeatures:
                raise
            bound = feature_map.lipschitz_bound(input_size)
        if not isinstance(bound, LipschitzBound):
            raise BoundUnavailableError(f"{type(module).__name__}.lipschitz_bound returned {type(bound).__name__}")
        return bound
    if isinstance(module, nn.Sequential):
        require_container(module)
        return cached_bound(module, str(input_size), lambda: sequential_bound(list(module), input_size)[0])
    raise BoundUnavailableError(f"no certified Lipschitz bound for a module of type {type(module).__name__}")
