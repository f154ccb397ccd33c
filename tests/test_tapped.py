"""TappedFeatures: equality with the official ST-LPIPS code, certified global and local bounds
against exact Jacobians and strong attacks (small random trunks and the real trained weights)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.func import jacrev, jvp, vjp

from robustbench_iqa.attacks.feature_space import feature_space_attack
from robustbench_iqa.certify.fs_iqa import FeatureSmoothedIQA
from robustbench_iqa.certify.heads import FTN, Scorer
from robustbench_iqa.certify.local_lipschitz import (
    deviation_radius,
    ftn_deviation,
    ftn_preacts,
    local_radii,
)
from robustbench_iqa.certify.spectral import top_input_direction
from robustbench_iqa.errors import BoundUnavailableError, InputError
from robustbench_iqa.lipschitz.layers import BlurPool2d
from robustbench_iqa.lipschitz.tapped import (
    TappedFeatures,
    channel_norm_deviation,
    feature_deviation,
    tap_centre,
)
from robustbench_iqa.models.base import Backbone, IQAModel, Mode
from tests.stlpips_trunk import alex_feature_map, official_lpips_alex

SIZE = (12, 12)


def _small_tf(reduction: str = "mean", norm_eps: float | None = 1e-10, seed: int = 0) -> TappedFeatures:
    torch.manual_seed(seed)
    s1 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), BlurPool2d(channels=4, pad=(2, 2, 2, 2)), nn.ReLU())
    s2 = nn.Sequential(nn.MaxPool2d(3, stride=1), BlurPool2d(channels=4), nn.Conv2d(4, 5, 3, padding=1), nn.ReLU())
    tf = TappedFeatures(slices=[s1, s2], shift=[0.4, 0.5, 0.6], scale=[0.25, 0.3, 0.2], norm_eps=norm_eps,
                        reduction=reduction)
    return tf.double().eval()


def _images(n: int, size: tuple[int, int] = SIZE, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, *size, generator=g, dtype=torch.float64)


# ------------------------------------------------------------------ global bound
@pytest.mark.parametrize("norm_eps,reduction", [(None, "mean"), (None, "rms"), (1e-2, "mean"), (1e-2, "rms"),
                                                (1e-2, "meansq")])
def test_global_bound_is_above_every_exact_jacobian_norm(norm_eps: float | None, reduction: str) -> None:
    tf = _small_tf(reduction, norm_eps)
    bound = tf.lipschitz_bound(SIZE).value
    xs, refs = _images(6, seed=1), _images(6, seed=2)
    for x, ref in zip(xs, refs, strict=True):
        for r in (None, ref):
            j = jacrev(lambda z, r=r: tf(z[None], None if r is None else r[None])[0])(x).reshape(-1, x.numel())
            assert float(torch.linalg.matrix_norm(j.detach(), ord=2)) <= bound


# ------------------------------------------------------------ channel norm step
def _pixel_norm(v: torch.Tensor, eps: float) -> torch.Tensor:
    return v / (v.norm(dim=1, keepdim=True) + eps)


def _worst_channel_norm_change(u: torch.Tensor, d: float, eps: float) -> float:
    """max ||n(u + delta) - n(u)|| over ||delta|| <= d: PGD from random and structured starts."""
    g = torch.Generator().manual_seed(0)
    n0 = _pixel_norm(u, eps)
    starts = [torch.randn(u.shape, generator=g, dtype=u.dtype) for _ in range(4)]
    p = int(u.norm(dim=1).argmin())
    for direction in (-u[p], torch.randn(u.shape[1], generator=g, dtype=u.dtype)):
        s = torch.zeros_like(u)
        s[p] = direction if float(direction.norm()) > 0 else 1.0
        starts.append(s)
    best = 0.0
    for s in starts:
        delta = (s / s.norm() * d).requires_grad_(True)
        for _ in range(60):
            change = (_pixel_norm(u + delta, eps) - n0).norm()
            best = max(best, float(change.detach()))
            (grad,) = torch.autograd.grad(change, delta)
            with torch.no_grad():
                delta = delta + 0.3 * d * grad / (grad.norm() + 1e-300)
                delta = delta * min(1.0, d / float(delta.norm()))
            delta.requires_grad_(True)
        best = max(best, float((_pixel_norm(u + delta, eps) - n0).norm()))
    return best


@pytest.mark.parametrize("d", [1e-6, 1e-3, 0.05, 0.5, 3.0])
def test_channel_norm_deviation_holds_against_a_strong_attack(d: float) -> None:
    g = torch.Generator().manual_seed(3)
    u = torch.randn(20, 4, generator=g, dtype=torch.float64)
    u[3] = 0.0  # a pixel where the features vanish: n jumps there
    u[7] *= 1e-4
    eps = 1e-10
    bound = channel_norm_deviation(u.norm(dim=1), d, eps)
    assert _worst_channel_norm_change(u, d, eps) <= bound


def test_channel_norm_deviation_is_tight_for_small_deviations() -> None:
    g = torch.Generator().manual_seed(4)
    u = torch.randn(30, 5, generator=g, dtype=torch.float64) + 0.5
    d, eps = 1e-5, 1e-10
    bound = channel_norm_deviation(u.norm(dim=1), d, eps)
    achieved = _worst_channel_norm_change(u, d, eps)  # ~ d / min |u_p|: perpendicular at the smallest pixel
    assert achieved <= bound <= 1.01 * achieved
    # a vanishing pixel costs at most 2 (|n| < 1), not d / eps
    u[0] = 0.0
    assert channel_norm_deviation(u.norm(dim=1), d, eps) <= math.sqrt(4 + (bound * 1.01) ** 2) * (1 + 1e-8)


# ------------------------------------------------------------- local deviation
def _attack_change(fn, x: torch.Tensor, r: float, *, restarts: int, steps: int,  # type: ignore[no-untyped-def]
                   direction: torch.Tensor | None = None) -> float:
    """The largest ||fn(x + u) - fn(x)|| found over ||u|| <= r, from +-``direction`` (default: the top
    right-singular vector of the Jacobian) and ``restarts`` random starts (the suite's attack works on
    float32 images; ``fn`` computes in float64)."""
    if direction is None:
        direction = _top_singular_direction(fn, x.double())
    res = feature_space_attack(lambda z: fn(z.double()), x.float(), r, steps=steps, restarts=restarts,
                               direction=direction, generator=torch.Generator().manual_seed(0))
    return float(res.feature_change.max())


def _top_singular_direction(fn, x: torch.Tensor, iterations: int = 12) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Power iteration on J^T J at x: the start along the top right-singular vector of the Jacobian."""
    g = torch.Generator().manual_seed(5)
    v = torch.randn(x.shape, generator=g, dtype=x.dtype)
    for _ in range(iterations):
        v = v / v.norm()
        _, jv = jvp(fn, (x,), (v,))
        _, pullback = vjp(fn, x)
        (v,) = pullback(jv)
    return v / v.norm()


CASES = [("mean", "nr"), ("rms", "fr-equal"), ("rms", "fr-near"), ("mean", "fr-near"), ("rms", "nr"),
         ("meansq", "nr"), ("meansq", "fr-equal"), ("meansq", "fr-near"), ("meansq", "fr-far")]


@pytest.mark.parametrize("reduction,case", CASES)
def test_local_deviation_bounds_the_strongest_change_found(reduction: str, case: str) -> None:
    tf = _small_tf(reduction)
    ftn = FTN(9, 6).double().eval()
    x = _images(1, seed=7)
    ref = None
    if case.startswith("fr"):
        ref = {"fr-equal": x.clone(), "fr-near": (x + 0.01 * _images(1, seed=8)).clamp(0, 1),
               "fr-far": _images(1, seed=9)}[case]
    c = tap_centre(tf, x[0], None if ref is None else ref[0])
    prefix = tf.prefix_bounds(SIZE)
    pre = ftn_preacts(ftn, tf(x, ref)[0])
    for r in (1e-3, 1e-2, 0.1):
        d_b = feature_deviation(tf, c, prefix, r)
        assert _attack_change(lambda z: tf(z, ref), x, r, restarts=2, steps=25) <= d_b
        d_big = ftn_deviation(ftn, pre, d_b)
        assert _attack_change(lambda z: ftn(tf(z, ref)), x, r, restarts=1, steps=25) <= d_big


def test_meansq_needs_the_channel_normalisation() -> None:
    with pytest.raises(InputError, match="meansq"):
        _small_tf("meansq", norm_eps=None)


def test_deviation_radius_is_the_largest_radius_meeting_the_condition() -> None:
    sigma = 0.7
    exact = (-3 + math.sqrt(9 + 20 * sigma)) / 10  # 5 r^2 + 3 r = sigma
    r = deviation_radius(sigma, lambda t: 3 * t + 5 * t * t, None)
    assert 3 * r + 5 * r * r <= sigma and r >= exact * (1 - 1e-6)
    assert deviation_radius(sigma, lambda t: 3 * t + 5 * t * t, 2.0) == pytest.approx(sigma / 2, rel=1e-6)
    assert deviation_radius(sigma, lambda t: 10 * t, 4.0) >= sigma / 4
    assert deviation_radius(sigma, lambda t: 0.0 * t, None) >= 1e11  # a constant map: any radius


# ----------------------------------------------------------------- trust and wiring
class _TappedModel(IQAModel):
    name, mode = "tapped-test", Mode.FR

    def __init__(self, tf: TappedFeatures, *, lie: bool = False) -> None:
        super().__init__()
        self.feature_map, self.lie = tf, lie

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        f = self.feature_map(x, ref)
        return f * 1.5 if self.lie else f

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return feats.sum(dim=1)


def _fs(model: nn.Module, dim: int = 9) -> FeatureSmoothedIQA:
    return FeatureSmoothedIQA(model, FTN(dim, 6), Scorer(6, 8), sigma=0.25, mode="fr").float().eval()


def test_fs_iqa_uses_the_feature_map_of_any_model_and_refuses_a_false_claim() -> None:
    tf = _small_tf("rms")
    fs = _fs(Backbone(_TappedModel(tf)))
    bound = fs.lipschitz_bound(SIZE)
    assert bound is not None
    assert bound.value == pytest.approx(tf.lipschitz_bound(SIZE).value * fs.ftn.lipschitz_bound().value, rel=1e-9)
    x, ref = _images(2, seed=9).float(), _images(2, seed=10).float()
    ref[0] = x[0]
    radii = local_radii(fs, x, ref)
    assert all(r is not None and r >= 0.25 / bound.value for r in radii)
    rows = fs.certify(x, ref, n=100, alpha=0.99, generator=torch.Generator().manual_seed(0), local_radius=True)
    issued = [(row.eps_x_local, r) for row, r in zip(rows, radii, strict=True) if not row.abstained]
    assert issued and all(a == pytest.approx(b) for a, b in issued)  # (x = ref abstains: ||J_B(x)|| = 0 < tau)
    liar = _fs(Backbone(_TappedModel(_small_tf("rms"), lie=True)))
    with pytest.raises(BoundUnavailableError, match="feature_map"):
        local_radii(liar, x, ref)


def test_tapped_features_refuse_hooks_and_subclasses() -> None:
    tf = _small_tf()
    tf.slices[1][2].register_forward_hook(lambda m, i, o: 9 * o)
    with pytest.raises(BoundUnavailableError, match="hook"):
        tf.lipschitz_bound(SIZE)
    # after a cached bound: a subclassed layer or another stride is a different network
    plain = _small_tf()
    first = plain.lipschitz_bound(SIZE).value
    plain.slices[0][0].stride = (2, 2)
    assert plain.lipschitz_bound(SIZE).value != first
    plain.slices[0][0].__class__ = type("MyConv", (nn.Conv2d,), {})
    with pytest.raises(BoundUnavailableError, match="MyConv"):
        plain.lipschitz_bound(SIZE)
    sub = _small_tf()
    sub.__class__ = type("MyTapped", (TappedFeatures,), {})
    with pytest.raises(BoundUnavailableError, match="MyTapped"):
        sub.lipschitz_bound(SIZE)


# ------------------------------------------------------------ real trained weights
@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_alexnet_feature_map_equals_the_official_st_lpips(size: tuple[int, int]) -> None:
    official = official_lpips_alex()
    tf = alex_feature_map(reduction="rms")
    tf.rms_eps = 1e-30
    x, y = _images(2, size, seed=11).float(), _images(2, size, seed=12).float()
    with torch.no_grad():
        theirs = official.net(official.scaling_layer(2 * x - 1))
        for a, b in zip(theirs, tf.taps(x), strict=True):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(a.abs().max()))
        lin = torch.cat([m.model[1].weight.reshape(-1) for m in official.lins])
        score = (tf(x, y).pow(2) * lin).sum(dim=1)
        assert torch.allclose(score, official(x, y, normalize=True).reshape(-1), rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def real_fs() -> dict[str, FeatureSmoothedIQA]:
    """FS-IQA on the feature maps of the registered real models (st-lpips-alex-nr: ``"mean"`` without
    normalisation; st-lpips-alex: LPIPS' own ``"meansq"`` of normalised differences)."""
    from robustbench_iqa.models import create_model

    torch.manual_seed(0)
    out = {}
    for name, mode in (("st-lpips-alex-nr", "nr"), ("st-lpips-alex", "fr")):
        tf = create_model(name).feature_map
        out[mode] = FeatureSmoothedIQA(tf, FTN(1152, 64), Scorer(64, 32), sigma=0.25, mode=mode).eval()
    return out


def _real_check(fs: FeatureSmoothedIQA, x: torch.Tensor, ref: torch.Tensor | None, *, restarts: int,
                steps: int, power: int) -> None:
    """Per image: the attack (top-singular start) never exceeds sigma_f inside eps_x_lipschitz and
    eps_x_local, nor the deviation bound D_B(r) at r = 1000 eps_x_local (where it is not trivially met)."""
    size = (int(x.shape[-2]), int(x.shape[-1]))
    bound = fs.lipschitz_bound(size)
    assert bound is not None
    radii = local_radii(fs, x, ref)
    est = fs.spectral_estimate(x, ref, max_iter=power)  # Lanczos: the top singular vectors of J_B
    assert est.output_vector is not None
    tops = top_input_direction(lambda z: fs.normalized_features(z, ref), x, est.output_vector)
    tf64, ftn64 = copy.deepcopy(fs.backbone).double(), copy.deepcopy(fs.ftn).double()
    for i in range(x.shape[0]):
        xi = x[i : i + 1].double()
        ri = None if ref is None else ref[i : i + 1].double()

        def big_b(z: torch.Tensor, ri: torch.Tensor | None = ri) -> torch.Tensor:
            return ftn64(tf64(z, ri))

        local = radii[i]
        assert local is not None and local >= fs.sigma / bound.value
        top = tops[i : i + 1]
        for r in (fs.sigma / bound.value, local):
            assert _attack_change(big_b, xi, r, restarts=restarts, steps=steps, direction=top) <= fs.sigma
        c = tap_centre(tf64, xi[0], None if ri is None else ri[0])
        pre = ftn_preacts(ftn64, tf64(xi, ri)[0])
        r = 1000 * local
        d = ftn_deviation(ftn64, pre, feature_deviation(tf64, c, tf64.prefix_bounds(size), r))
        assert _attack_change(big_b, xi, r, restarts=restarts, steps=steps, direction=top) <= d


def test_real_st_lpips_trunk_no_attack_exceeds_sigma_inside_the_sound_radii(real_fs) -> None:  # type: ignore[no-untyped-def]
    x = _images(1, (32, 32), seed=13).float()
    _real_check(real_fs["nr"], x, None, restarts=0, steps=6, power=12)
    ref = _images(2, (32, 32), seed=14).float()
    near = torch.stack([ref[0], (ref[1] + 0.002 * torch.randn(ref[1].shape, generator=torch.Generator()
                                                             .manual_seed(1))).clamp(0, 1)])
    _real_check(real_fs["fr"], near, ref, restarts=0, steps=6, power=12)  # equal to, and very near, the reference


@pytest.mark.slow
def test_real_st_lpips_trunk_strong_attack_slow(real_fs) -> None:  # type: ignore[no-untyped-def]
    """More restarts and steps at 48x48 (a few minutes of one CPU core)."""
    x = _images(2, (48, 48), seed=15).float()
    _real_check(real_fs["nr"], x, None, restarts=2, steps=40, power=60)
    ref = _images(2, (48, 48), seed=16).float()
    near = ref.clone()
    near[1] = (ref[1] + 1e-3 * torch.randn(ref[1].shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    _real_check(real_fs["fr"], near, ref, restarts=2, steps=40, power=60)
