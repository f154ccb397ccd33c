"""Spectral norm estimates against closed forms and the exact Jacobian."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robustbench_iqa.certify.spectral import jacobian_spectral_norm
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
    # Lanczos' stopping quantity bounds the error; power's is a heuristic (checked loosely).
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
