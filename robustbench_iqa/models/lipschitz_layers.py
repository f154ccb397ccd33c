"""Layers that are 1-Lipschitz (L2 -> L2) by construction, for the certifiable embedded models.

* :class:`SLLConv` -- the SDP-based Lipschitz layer (SLL) of Araujo, Havens, Delattre,
  Allauzen, Hu, ICLR 2023, "A Unified Algebraic Perspective on Lipschitz Neural
  Networks" (Thm. 3), convolutional, stride 1, zero padding:

      h(x) = x - 2 K^* T^-1 relu(K x + b),    T = diag(t),
      t_i = sum_j sum_d |G_ij(d)| q_j / q_i,   G = the kernel of K K^* (size 2k-1),

  with K the convolution (C -> C_inner), K^* its adjoint (the transposed
  convolution) and q > 0 learned.  *Proof that h is 1-Lipschitz.*  Let D = diag of
  the slopes (relu(a) - relu(a')) / (a - a') in [0, 1], v = K (x - x').  Then
  h(x) - h(x') = d - 2 K^* T^-1 D v with d = x - x', and
  ||h(x) - h(x')||^2 = ||d||^2 - 4 v^T T^-1 D v + 4 v^T D T^-1 (K K^*) T^-1 D v.
  If K K^* <= T (Loewner order), the last term is <= 4 v^T D T^-1 D v, so
  ||h(x) - h(x')||^2 <= ||d||^2 - 4 v^T T^-1 (D - D^2) v <= ||d||^2, as D - D^2 >= 0.
  K K^* <= T holds by Schur's test: for symmetric M and q > 0,
  u^T M u <= sum_i u_i^2 sum_j |M_ij| q_j / q_i (from |u_i u_j| <= (u_i^2 q_j/q_i + u_j^2 q_i/q_j)/2).
  On Z^2 the rows of |K K^*| sum to exactly sum_j,d |G_ij(d)| q_j / q_i = t_i.  With
  zero padding on an H x W image, K = R K_inf E (E: zero extension, R: restriction
  to the window), so K K^* = R K_inf E E^* K_inf^* R^* <= R (K_inf K_inf^*) R^* <= R T_inf R^* = T:
  the bound holds for every image size.
  :meth:`SLLConv.lipschitz_bound` re-checks the premise numerically with certified
  spectral norms: ||T^-1/2 K||_2^2 <= 1 (Gram iteration, :mod:`robustbench_iqa.lipschitz.gram_iteration`).
* :class:`NormalizedPointwise` -- a 1x1 convolution with weight V / ||V||_2 (exact
  spectral norm by SVD, differentiable), so its operator norm is 1 on every image
  size (a 1x1 convolution applies the same matrix at every pixel).
* :class:`Downsample` -- zero-pad to even size (an isometric embedding) and
  ``pixel_unshuffle(2)`` (a permutation of the entries): an isometry.
* :class:`Abs` -- the elementwise absolute value, 1-Lipschitz (| |a| - |b| | <= |a - b|);
  it lets a 1-Lipschitz network measure local energy (noise, blur, blockiness).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_iqa.lipschitz.composition import LipschitzBound
from robustbench_iqa.lipschitz.gram_iteration import conv2d_spectral_bound, matrix_spectral_bound


class SLLConv(nn.Module):
    """Residual SDP-based Lipschitz convolution (module docstring): 1-Lipschitz, same shape in and out."""

    def __init__(self, channels: int, inner: int | None = None, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("SLLConv needs an odd kernel size (same-size zero padding)")
        inner = channels if inner is None else inner
        self.channels, self.inner, self.kernel_size = channels, inner, kernel_size
        self.weight = nn.Parameter(torch.empty(inner, channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(inner))
        self.log_q = nn.Parameter(torch.zeros(inner))
        nn.init.xavier_normal_(self.weight)

    def t(self) -> torch.Tensor:
        """t_i = sum_j sum_d |G_ij(d)| q_j / q_i, G = kernel of K K^* (module docstring)."""
        k = self.kernel_size
        gram = F.conv2d(self.weight, self.weight, padding=k - 1)  # (inner, inner, 2k-1, 2k-1)
        q = torch.exp(self.log_q)
        return ((gram.abs() * q[None, :, None, None]).sum(dim=(1, 2, 3)) / q).clamp_min(1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.kernel_size // 2
        z = F.relu(F.conv2d(x, self.weight, self.bias, padding=pad)) / self.t()[None, :, None, None]
        return x - 2.0 * F.conv_transpose2d(z, self.weight, padding=pad)

    def output_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        return input_size

    def lipschitz_bound(self, input_size: tuple[int, int]) -> LipschitzBound:
        """1 when the certified rho = ||T^-1/2 K||_2^2 <= 1 (the SLL premise), else 1 + 2 rho."""
        with torch.no_grad():
            w = self.weight.detach().double() / self.t().detach().double().sqrt()[:, None, None, None]
        rho = conv2d_spectral_bound(w, stride=1, padding=(self.kernel_size - 1,) * 2, input_size=input_size) ** 2
        value = 1.0 if rho <= 1.0 else 1.0 + 2.0 * rho
        return LipschitzBound(value, ((f"SLLConv {self.channels} (rho={rho:.4f})", value),))


class NormalizedPointwise(nn.Module):
    """1x1 convolution with weight V / ||V||_2: operator norm exactly 1 (up to rounding)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.orthogonal_(self.weight)

    def matrix(self) -> torch.Tensor:
        return self.weight / torch.linalg.matrix_norm(self.weight, ord=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.matrix()[:, :, None, None], self.bias)

    def output_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        return input_size

    def lipschitz_bound(self, input_size: tuple[int, int]) -> LipschitzBound:
        """||V / ||V||_2||_2 by Gram iteration (a 1x1 convolution has the matrix's norm on any size)."""
        with torch.no_grad():
            value = matrix_spectral_bound(self.matrix().detach().double())
        return LipschitzBound(value, ((f"pointwise {self.in_channels}->{self.out_channels}", value),))


class Downsample(nn.Module):
    """Zero-pad H, W to even and ``pixel_unshuffle(2)``: (C, H, W) -> (4C, ceil(H/2), ceil(W/2)), an isometry."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % 2 or w % 2:
            x = F.pad(x, (0, w % 2, 0, h % 2))
        return F.pixel_unshuffle(x, 2)

    def output_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        return (input_size[0] + 1) // 2, (input_size[1] + 1) // 2

    def lipschitz_bound(self, input_size: tuple[int, int]) -> LipschitzBound:
        return LipschitzBound(1.0, (("zero-pad + pixel_unshuffle (isometry)", 1.0),))


class Abs(nn.Module):
    """Elementwise |x|: 1-Lipschitz."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs()

    def output_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        return input_size

    def lipschitz_bound(self, input_size: tuple[int, int]) -> LipschitzBound:
        return LipschitzBound(1.0, (("abs", 1.0),))
