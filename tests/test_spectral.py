"""Spectral norm estimates against closed forms, dense Krylov algebra and the exact SVD.

The adversarial-spectrum tests build J = U diag(s) V^T with chosen singular values
(sigma_2 / sigma_1 in 0.9..0.975) and run thousands of random starts in one batched
call: ``fn`` is the same linear map for every row of the batch, so J is block
diagonal and every row is an independent Lanczos run from its own random start.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from robustbench_iqa.certify.spectral import (
    DEFAULT_BOUND_ITER,
    _operator,
    bound_iterations,
    jacobian_spectral_norm,
    kw_failure_probability,
    kw_relative_error,
    kw_sigma_factor,
)
from robustbench_iqa.errors import InputError
from tests.toy_models import ToyFR, ToyNR, random_images


def _linear_map(m: int, n: int, seed: int) -> tuple[torch.Tensor, callable]:  # type: ignore[valid-type]
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, n, generator=g, dtype=torch.float64)

    def fn(z: torch.Tensor) -> torch.Tensor:
        return z.reshape(z.shape[0], -1) @ a.T

    return a, fn


@pytest.mark.parametrize("method", ["power", "lanczos", "exact"])
def test_linear_map_against_numpy_svd(method: str) -> None:
    a, fn = _linear_map(40, 3 * 4 * 4, seed=0)
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    exact = np.linalg.svd(a.numpy(), compute_uv=False)[0]
    rtol = 1e-7 if method == "power" else 1e-4
    est = jacobian_spectral_norm(fn, x, method=method, rtol=rtol, max_iter=2000,
                                 generator=torch.Generator().manual_seed(1))
    assert bool(est.converged.all())
    np.testing.assert_allclose(est.value.numpy(), exact, rtol=1e-3)


def _toy_feature_map(seed: int = 0):  # type: ignore[no-untyped-def]
    model = ToyNR(seed=seed)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(24, 16, generator=g)

    def fn(z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(model.features(z) @ w.T)

    return fn


@pytest.mark.parametrize("method,rtol", [("lanczos", 1e-3), ("lanczos", 1e-5), ("power", 1e-6)])
def test_nonlinear_net_within_rtol_of_exact(method: str, rtol: float) -> None:
    fn = _toy_feature_map()
    x = random_images(3, 12, 12, seed=2)
    exact = jacobian_spectral_norm(fn, x, method="exact").value
    est = jacobian_spectral_norm(fn, x, method=method, rtol=rtol, max_iter=500,
                                 generator=torch.Generator().manual_seed(0))
    assert bool(est.converged.all())
    rel_err = ((exact - est.value).abs() / exact).max().item()
    # Lanczos stops within rtol of *a* singular value; on this well-separated spectrum it is the
    # largest one (test_plain_stopping_rule_is_not_a_bound shows when it is not); power's
    # relative-change rule is a heuristic (checked loosely).
    assert rel_err <= (rtol if method == "lanczos" else 1e-3)
    # Both approach the norm from below (Rayleigh quotient / Ritz value).
    assert bool((est.value <= exact * (1 + 1e-5)).all())


def test_exact_matches_autograd_jacobian() -> None:
    fn = _toy_feature_map(1)
    x = random_images(1, 8, 8, seed=3)
    jac = torch.autograd.functional.jacobian(lambda z: fn(z[None])[0], x[0]).reshape(24, -1)
    ref = np.linalg.svd(jac.numpy(), compute_uv=False)[0]
    got = jacobian_spectral_norm(fn, x, method="exact").value.item()
    assert got == pytest.approx(ref, rel=1e-5)


def test_batched_equals_one_by_one_and_fr_reference_fixed() -> None:
    model = ToyFR()
    x, ref = random_images(3, 16, 16, seed=4), random_images(3, 16, 16, seed=5)
    ref0 = ref.clone()

    def fn(z: torch.Tensor) -> torch.Tensor:
        return model.features(z, ref[: z.shape[0]] if z.shape[0] == 3 else ref[i : i + 1])

    est = jacobian_spectral_norm(fn, x, method="lanczos", rtol=1e-6, max_iter=16)
    for i in range(3):
        single = jacobian_spectral_norm(fn, x[i : i + 1], method="exact").value[0]
        assert est.value[i].item() == pytest.approx(single.item(), rel=1e-4)
    assert torch.equal(ref, ref0)


def test_not_converged_is_reported() -> None:
    fn = _toy_feature_map()
    x = random_images(2, 12, 12)
    est = jacobian_spectral_norm(fn, x, method="power", rtol=1e-12, max_iter=2)
    assert not bool(est.converged.any())
    assert bool((est.iterations == 2).all())
    assert bool((est.rel_change > 0).all())


def test_zero_jacobian_is_exact_zero() -> None:
    x = random_images(2, 8, 8)
    est = jacobian_spectral_norm(lambda z: torch.zeros(z.shape[0], 5) + 0 * z.sum(), x, method="lanczos")
    assert torch.equal(est.value, torch.zeros(2))


def test_bad_arguments() -> None:
    fn = _toy_feature_map()
    x = random_images(1, 8, 8)
    with pytest.raises(InputError):
        jacobian_spectral_norm(fn, x, rtol=0.0)
    with pytest.raises(ValueError):
        jacobian_spectral_norm(fn, x, method="svd-please")
    with pytest.raises(InputError, match="shape"):
        jacobian_spectral_norm(lambda z: z.sum(), x, method="power")


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_top_input_direction_is_the_top_right_singular_vector(method: str) -> None:
    from robustbench_iqa.certify.spectral import top_input_direction

    gen = torch.Generator().manual_seed(5)
    w = torch.randn(6, 2 * 3 * 3, generator=gen, dtype=torch.float64)

    def fn(z: torch.Tensor) -> torch.Tensor:  # a linear map B(x) = W vec(x): J = W everywhere
        return z.reshape(z.shape[0], -1) @ w.T

    x = torch.rand(2, 2, 3, 3, generator=gen, dtype=torch.float64)
    est = jacobian_spectral_norm(fn, x, method=method, rtol=1e-8, max_iter=50, generator=gen)
    assert est.output_vector is not None
    v = top_input_direction(fn, x, est.output_vector).reshape(2, -1)
    _, svals, vh = torch.linalg.svd(w)
    for i in range(2):
        # What the attack needs: the direction achieves the top stretch ||W v|| = sigma_max.
        assert float((w @ v[i]).norm()) == pytest.approx(float(svals[0]), rel=1e-6 if method == "lanczos" else 1e-3)
        if method == "lanczos":  # and it is the top right singular vector, up to sign
            assert abs(float(v[i] @ vh[0])) == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------ the upper bound
def test_kw_bound_formula_and_its_inverse() -> None:
    # The inversion: the failure probability at e(k, delta) is delta itself.
    for k, m, delta in [(8, 512, 0.05), (32, 512, 1e-3), (20, 128, 1e-6)]:
        e = kw_relative_error(k, m, delta)
        assert kw_failure_probability(k, m, e) == pytest.approx(delta, rel=1e-12)
        assert kw_sigma_factor(k, m, delta) == pytest.approx(1 / np.sqrt(1 - e), rel=1e-12)
    # By hand: m = 512, delta = 1e-3, k = 32: sqrt(e) = ln(1.648 * sqrt(512) / 1e-3) / 63.
    root = np.log(1.648 * np.sqrt(512) / 1e-3) / 63
    assert kw_relative_error(32, 512, 1e-3) == pytest.approx(root**2, rel=1e-12)
    assert kw_sigma_factor(DEFAULT_BOUND_ITER, 512, 1e-3) == pytest.approx(1.0143, abs=1e-4)
    # Too few products: vacuous; bound_iterations picks the fewest k with the requested slack.
    assert kw_sigma_factor(3, 512, 1e-3) == float("inf")
    k = bound_iterations(512, 1e-3, 0.02)
    assert kw_sigma_factor(k, 512, 1e-3) <= 1.02 < kw_sigma_factor(k - 1, 512, 1e-3)


def _svd_operator(m: int, n: int, singular_values: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """J = U diag(s) V^T (m x n, float32) with Haar-random U, V."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, m, generator=g, dtype=torch.float64))
    return ((u * singular_values.to(torch.float64)) @ v.T).to(torch.float32)


def _dense_spectrum(m: int, gap: float) -> torch.Tensor:
    """sigma_1 = 1, then sigma_2 = gap and m - 2 more evenly down to 0 (a hard case for Krylov methods)."""
    return torch.cat([torch.ones(1), torch.linspace(gap, 0.0, m - 1)])


def _isolated_pair(m: int, gap: float, *, seed: int = 0) -> torch.Tensor:
    """sigma_1 = 1, sigma_2 = gap, the rest in [0, 0.5]: the iteration settles on sigma_2 from bad starts."""
    rest = 0.5 * torch.rand(m - 2, generator=torch.Generator().manual_seed(seed))
    return torch.cat([torch.tensor([1.0, gap]), rest])


def _starts(jac: torch.Tensor, starts: int, **kwargs: object):  # type: ignore[no-untyped-def]
    """``starts`` independent Lanczos runs on J in one batched call (J block diagonal)."""
    def fn(z: torch.Tensor) -> torch.Tensor:
        return z @ jac.T

    return jacobian_spectral_norm(fn, torch.zeros(starts, jac.shape[1]), **kwargs)  # type: ignore[arg-type]


def _check_upper_bound(m: int, n: int, gaps: tuple[float, ...], *, starts: int, k: int, delta: float) -> None:
    for gap in gaps:
        jac = _svd_operator(m, n, _dense_spectrum(m, gap))
        true = float(torch.linalg.matrix_norm(jac.double(), ord=2))  # the exact SVD
        assert true == pytest.approx(1.0, rel=1e-6)
        est = _starts(jac, starts, delta=delta, bound_iter=k, max_iter=k, generator=torch.Generator().manual_seed(1))
        assert est.upper_bound is not None and est.delta == delta and est.bound_iter == k
        upper = est.upper_bound.double()
        misses = int((upper < true).sum())
        # One-sided binomial test of H0: P(miss) <= delta.  It can fail: the uninflated estimate
        # after 4 products from the same starts (not a bound) is rejected.
        assert binomtest(misses, starts, delta, alternative="greater").pvalue > 1e-3, (gap, misses)
        early = _starts(jac, 1024, rtol=1e-300, max_iter=4, generator=torch.Generator().manual_seed(1))
        early_misses = int((early.value.double() < true).sum())
        assert binomtest(early_misses, 1024, delta, alternative="greater").pvalue < 1e-6, (gap, early_misses)
        # Not vacuous: on average the bound exceeds the norm by about the K-W factor only.
        factor = kw_sigma_factor(k, m, delta)
        over = float((upper / true).mean()) - 1
        assert 0 < over <= factor - 1 + 0.005, (gap, over, factor)


def test_upper_bound_miss_rate_within_delta_on_small_gaps() -> None:
    # 4096 starts, k = 16 products, delta = 0.05 (large enough for the test to have power):
    # the measured miss rate is 0.5% at gap 0.975 and 0 at gap 0.9, the overestimate ~1.9%.
    _check_upper_bound(128, 256, (0.9, 0.975), starts=4096, k=16, delta=0.05)


@pytest.mark.slow
def test_upper_bound_miss_rate_within_delta_at_full_size() -> None:
    _check_upper_bound(512, 2000, (0.9, 0.95, 0.975), starts=4096, k=20, delta=0.05)


def test_plain_stopping_rule_is_not_a_bound() -> None:
    # sigma_2 / sigma_1 = 0.975 with sigma_2 well separated from the rest: some random starts
    # settle on sigma_2 with a small residual and stop "converged" 2.5% low (measured: 1.6% of
    # starts low by more than 1%); the upper bound from the same starts covers every one.
    m, starts = 128, 1024
    jac = _svd_operator(m, 256, _isolated_pair(m, 0.975))
    true = float(torch.linalg.matrix_norm(jac.double(), ord=2))
    plain = _starts(jac, starts, rtol=1e-3, generator=torch.Generator().manual_seed(1))
    assert bool(plain.converged.all()) and bool((plain.rel_change < 1e-3).all())
    low = plain.value.double() < 0.99 * true
    assert int(low.sum()) >= 3, int(low.sum())  # 16 here; at a 1.6% rate P(< 3) is below 1e-4
    assert float(plain.value.double().min()) == pytest.approx(0.975 * true, rel=1e-3)  # stopped at sigma_2
    assert bool((plain.value.double() <= true * (1 + 1e-6)).all())  # never above the norm
    bounded = _starts(jac, starts, rtol=1e-3, delta=1e-3, bound_iter=20, generator=torch.Generator().manual_seed(1))
    assert bool((bounded.upper_bound.double() >= true).all())  # type: ignore[union-attr]
    # The same start vectors (the same generator seed): the runs that stopped low ran on to sigma_1.
    assert bool((bounded.value.double()[low] > 0.999 * true).all())


def test_estimate_after_each_product_matches_dense_krylov_algebra() -> None:
    # After k products J^T q and k products J v the estimate is the top Ritz value of J^T J on
    # J^T K_k(J J^T, q_1) (Golub-Kahan), at least the Ritz value of J J^T on K_k: both recomputed
    # here with explicit bases and dense eigen/singular value solvers in float64.
    g = torch.Generator().manual_seed(3)
    a = torch.randn(20, 35, generator=g, dtype=torch.float64)

    def fn(z: torch.Tensor) -> torch.Tensor:
        return z @ a.T

    m_op = a @ a.T
    for k in (1, 2, 3, 5):
        est = jacobian_spectral_norm(fn, torch.zeros(1, 35, dtype=torch.float64), rtol=1e-300, max_iter=k,
                                     generator=torch.Generator().manual_seed(7))
        q1 = torch.randn(1, 20, generator=torch.Generator().manual_seed(7), dtype=torch.float64)[0]
        krylov = torch.stack([torch.linalg.matrix_power(m_op, j) @ q1 for j in range(k)], dim=1)
        basis, _ = torch.linalg.qr(krylov)
        ritz = float(torch.linalg.eigvalsh(basis.T @ m_op @ basis)[-1])
        right, _ = torch.linalg.qr(a.T @ basis)
        gk = float(torch.linalg.matrix_norm(a @ right, ord=2)) ** 2
        assert int(est.iterations[0]) == k and int(est.products[0]) == 2 * k  # type: ignore[index]
        assert gk >= ritz * (1 - 1e-12)
        assert float(est.value[0]) ** 2 == pytest.approx(gk, rel=1e-9)


def test_delta_arguments_are_checked() -> None:
    a, fn = _linear_map(8, 12, seed=0)
    x = torch.rand(1, 12, dtype=torch.float64)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(InputError, match="delta"):
            jacobian_spectral_norm(fn, x, delta=bad)
    with pytest.raises(InputError, match="bound_iter"):
        jacobian_spectral_norm(fn, x, delta=0.01, bound_iter=50, max_iter=40)
    with pytest.raises(InputError, match="power"):
        jacobian_spectral_norm(fn, x, method="power", delta=0.01)
    with pytest.raises(InputError, match="vacuous"):
        jacobian_spectral_norm(fn, x, delta=1e-3, bound_iter=2)
    exact = jacobian_spectral_norm(fn, x, method="exact", delta=0.01)
    assert exact.delta == 0.0 and torch.equal(exact.upper_bound, exact.value)  # type: ignore[arg-type]


def test_no_upper_bound_unless_asked() -> None:
    _, fn = _linear_map(8, 12, seed=0)
    est = jacobian_spectral_norm(fn, torch.rand(2, 12, dtype=torch.float64))
    assert est.upper_bound is None and est.delta is None and est.bound_iter is None


# ----------------------------------------------------- the products behind the estimate
class _ConvNet(torch.nn.Module):
    """conv2d (strided, dilated, grouped, 11x11 stride 4), eval batch norm, SiLU, GELU, ReLU, max pool."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c1 = torch.nn.Conv2d(3, 8, 11, stride=4, padding=2)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.c2 = torch.nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=2)
        self.bn2 = torch.nn.BatchNorm2d(8, affine=False)
        self.c3 = torch.nn.Conv2d(8, 6, (3, 2), stride=(1, 2), padding=(1, 0), bias=False)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
            for bn in (self.bn1, self.bn2):
                bn.running_mean.copy_(torch.randn(8, generator=g) * 0.1)
                bn.running_var.copy_(torch.rand(8, generator=g) + 0.5)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.silu(self.bn1(self.c1(x)))
        h = torch.nn.functional.gelu(self.bn2(self.c2(h)), approximate="tanh")
        h = torch.nn.functional.max_pool2d(torch.relu(self.c3(h)), 2, ceil_mode=True)
        return torch.nn.functional.gelu(h.flatten(1))


def test_products_equal_the_explicit_jacobian() -> None:
    # The forward pass of the estimate records conv2d / batch norm / SiLU / GELU with their own
    # first-order backward formulas (certify/linearize.py): J^T u and J v must still be the
    # products with the Jacobian that plain autograd computes (float64, one image at a time).
    net = _ConvNet().double()
    x = torch.rand(2, 3, 37, 45, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out, jt, jv = _operator(net, x)
    m = out.shape[1]
    with torch.no_grad():
        torch.testing.assert_close(out, net(x), rtol=0, atol=0)  # the same forward values
    g = torch.Generator().manual_seed(2)
    u = torch.randn(2, m, generator=g, dtype=torch.float64)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    u2 = torch.randn(2, m, generator=g, dtype=torch.float64)
    got_jt, got_jv = jt(u), jv(v)
    got_jt2 = jt(u2)  # products after the first one take the plain backward path
    for i in range(2):
        jac = torch.autograd.functional.jacobian(lambda z: net(z[None])[0], x[i]).reshape(m, -1)
        torch.testing.assert_close(got_jt[i].reshape(-1), jac.T @ u[i], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got_jt2[i].reshape(-1), jac.T @ u2[i], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got_jv[i], jac @ v[i].reshape(-1), rtol=1e-10, atol=1e-12)


def test_conv_net_norm_matches_exact_svd() -> None:
    net = _ConvNet()
    x = torch.rand(2, 3, 37, 45, generator=torch.Generator().manual_seed(4))
    exact = jacobian_spectral_norm(net, x, method="exact").value
    est = jacobian_spectral_norm(net, x, rtol=1e-6, generator=torch.Generator().manual_seed(0))
    assert bool(est.converged.all())
    torch.testing.assert_close(est.value, exact, rtol=1e-5, atol=0)
    bound = jacobian_spectral_norm(net, x, delta=1e-3, generator=torch.Generator().manual_seed(0))
    assert bool((bound.upper_bound >= exact).all())  # type: ignore[operator]


def test_exact_pairs_each_image_with_its_own_reference() -> None:
    # An FR feature map closes over a batch of references: the exact Jacobian of image i is
    # taken with reference i (the whole batch passes through fn), as the iterative methods do.
    model = ToyFR()
    x, ref = random_images(3, 10, 10, seed=6), random_images(3, 10, 10, seed=7)
    batched = jacobian_spectral_norm(lambda z: model.features(z, ref), x, method="exact").value
    for i in range(3):
        single = jacobian_spectral_norm(lambda z, i=i: model.features(z, ref[i : i + 1]), x[i : i + 1],  # type: ignore[misc]
                                        method="exact").value[0]
        assert float(batched[i]) == pytest.approx(float(single), rel=1e-6)
    lanczos = jacobian_spectral_norm(lambda z: model.features(z, ref), x, rtol=1e-7, max_iter=64,
                                     generator=torch.Generator().manual_seed(0)).value
    torch.testing.assert_close(lanczos, batched, rtol=1e-5, atol=0)
