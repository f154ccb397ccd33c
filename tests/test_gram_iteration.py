"""Certified spectral-norm bounds of dense and convolutional layers, against exact operator norms.

The reference for a convolution is the largest singular value of the layer's dense matrix
(built by applying torch's own conv2d to the identity basis), so padding and stride are
exactly as torch implements them.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustbench_iqa.errors import BoundUnavailableError, InputError
from robustbench_iqa.lipschitz.gram_iteration import (
    conv2d_spectral_bound,
    conv_layer_bound,
    conv_operator_matrix,
    conv_padding,
    gram_iteration_bound,
    matrix_spectral_bound,
    max_gram_iteration_bound,
)


def _exact(m: torch.Tensor) -> torch.Tensor:
    return torch.linalg.matrix_norm(m.to(torch.complex128 if m.is_complex() else torch.float64), ord=2)


@pytest.mark.parametrize("complex_", [False, True])
def test_gram_iteration_bounds_each_matrix_from_above_and_tightly(complex_: bool) -> None:
    g = torch.Generator().manual_seed(0)
    dtype = torch.complex128 if complex_ else torch.float64
    mats = torch.randn(200, 7, 5, generator=g, dtype=dtype) * torch.rand(200, 1, 1, generator=g)
    for t in (1, 3, 8, 16):
        bound = gram_iteration_bound(mats, iterations=t)
        exact = _exact(mats)
        assert bool((bound >= exact).all())
        assert bool((bound <= exact * 5 ** (1 / 2 ** (t + 1)) * (1 + 1e-9)).all())  # rank <= 5


def test_gram_iteration_worst_case_equal_singular_values() -> None:
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    bound = float(gram_iteration_bound(q[None], iterations=16)[0])
    assert 1.0 <= bound <= 8 ** (1 / 2**17) * (1 + 2e-9)  # the worst case of the bound, attained


def test_pruned_maximum_equals_the_unpruned_one() -> None:
    g = torch.Generator().manual_seed(2)
    mats = torch.randn(3000, 6, 9, generator=g, dtype=torch.complex128) * torch.rand(3000, 1, 1, generator=g) ** 3
    pruned = max_gram_iteration_bound(mats)
    full = float(gram_iteration_bound(mats).max())
    assert pruned == pytest.approx(full, rel=1e-12)
    assert pruned >= float(_exact(mats).max())
    assert max_gram_iteration_bound(torch.zeros(5, 3, 3)) == 0.0


def test_matrix_bound_is_the_exact_norm_rounded_up() -> None:
    w = torch.randn(50, 30, generator=torch.Generator().manual_seed(3))
    exact = float(_exact(w))
    assert exact <= matrix_spectral_bound(w) <= exact * (1 + 1e-8)


CASES = [  # (c_in, c_out, kernel, stride, padding, input size)
    (3, 4, 3, 1, 1, (7, 9)),
    (3, 5, 3, 2, 1, (8, 9)),
    (2, 3, 5, 2, 2, (9, 7)),
    (4, 4, 3, 2, 0, (9, 10)),
    (3, 2, 4, 3, 1, (10, 11)),
    (2, 2, 3, 1, "same", (6, 6)),
    (2, 2, 3, 1, "valid", (6, 6)),
    (5, 2, (3, 1), (1, 2), (1, 0), (6, 7)),
    (3, 6, 1, 1, 0, (5, 5)),
    (1, 1, 3, 2, 1, (2, 3)),
]


@pytest.mark.parametrize("case", CASES)
def test_conv_bound_is_above_the_exact_norm_of_the_layer_as_implemented(case: tuple) -> None:
    c_in, c_out, k, s, p, size = case
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, k, stride=s, padding=p)
    x = torch.randn(2, c_in, *size, dtype=torch.float64)
    m = conv_operator_matrix(conv, size)
    ref = nn.functional.conv2d(x, conv.weight.double(), None, conv.stride, conv.padding)
    assert torch.allclose((m @ x.reshape(2, -1).T).T, ref.reshape(2, -1))  # the matrix is the layer
    exact = float(_exact(m))
    bound = conv_layer_bound(conv, size)
    universal = conv2d_spectral_bound(conv.weight, stride=conv.stride, padding=conv_padding(conv), input_size=None)
    assert exact <= bound
    assert exact <= universal
    if min(size) >= 5:  # boundary effects make the embedding loose on tiny inputs only
        assert bound <= 1.25 * exact
    scale = torch.rand(c_out) * 3
    folded = m.reshape(c_out, -1, m.shape[1]) * scale.double()[:, None, None]
    assert float(_exact(folded.reshape(m.shape))) <= conv_layer_bound(conv, size, scale=scale)


def test_stride_one_bound_is_the_circular_norm_on_the_embedding_grid() -> None:
    """For stride 1 the bound is exactly the norm of the circular correlation on Z_(n+p) (tightness)."""
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    n = (6, 7)
    big = (n[0] + 2, n[1] + 2)
    dim = 3 * big[0] * big[1]
    eye = torch.eye(dim, dtype=torch.float64).reshape(dim, 3, *big)
    circ = nn.functional.conv2d(nn.functional.pad(eye, (1, 1, 1, 1), mode="circular"), conv.weight.detach().double())
    exact_circular = float(_exact(circ.reshape(dim, -1).T))
    assert conv_layer_bound(conv, n) == pytest.approx(exact_circular, rel=1e-4)


def test_universal_bound_holds_on_large_inputs() -> None:
    """On a large input the exact norm is out of reach; power iteration gives a lower bound of it."""
    torch.manual_seed(2)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1).double().requires_grad_(False)
    universal = conv2d_spectral_bound(conv.weight, stride=2, padding=(2, 2), input_size=None)
    x = torch.randn(1, 4, 200, 300, dtype=torch.float64)
    for _ in range(200):
        y = nn.functional.conv2d(x, conv.weight, None, 2, 1)
        x = nn.functional.conv_transpose2d(y, conv.weight, None, 2, 1, output_padding=1)
        x = x / x.norm()
    lower = float(nn.functional.conv2d(x, conv.weight, None, 2, 1).norm())
    assert lower <= universal
    assert lower >= 0.9 * universal  # and the universal bound is not loose here


@pytest.mark.parametrize(
    "conv,match",
    [
        (nn.Conv1d(4, 4, 3), "Conv1d"),
        (nn.Conv2d(2, 2, 3, dilation=2), "dilation"),
        (nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), "padding_mode"),
        (nn.ConvTranspose2d(2, 2, 3), "ConvTranspose2d"),
    ],
)
def test_unsupported_convolutions_are_refused_by_name(conv: nn.Module, match: str) -> None:
    with pytest.raises(BoundUnavailableError, match=match):
        conv_layer_bound(conv, (8, 8))
    assert issubclass(BoundUnavailableError, InputError)


def test_bad_iteration_counts_raise() -> None:
    with pytest.raises(InputError, match="iterations"):
        gram_iteration_bound(torch.eye(2), iterations=0)
    assert math.isfinite(gram_iteration_bound(torch.eye(2)[None], iterations=1)[0].item())
