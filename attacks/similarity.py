"""Differentiable PSNR and SSIM between an attacked image and its clean original.

They bound or measure how visible a perturbation is (the perceptual attacks, MADC,
the budget calibration).  Images are in [0, 1] (data range 1), per image over all
channels:

* PSNR = 10 log10(1 / MSE), MSE = mean_{c,h,w} (x - y)^2; +inf where x = y.
* SSIM (Wang et al. 2004, "Image quality assessment: from error visibility to
  structural similarity", Eq. 13) with the usual constants K1 = 0.01, K2 = 0.03,
  C_i = (K_i L)^2, L = 1, local statistics under an 11x11 Gaussian window of
  sigma 1.5 (truncated at 3.5 sigma), population (co)variances, computed per
  channel on the positions where the window fits inside the image, and averaged
  over positions and channels.  This is scikit-image's
  ``structural_similarity(x, y, data_range=1, channel_axis=-1, gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False)`` (the tests compare the two).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustbench_iqa.errors import InputError

K1, K2 = 0.01, 0.03
SIGMA = 1.5
RADIUS = int(3.5 * SIGMA + 0.5)  # scipy's gaussian_filter truncation: 5, an 11x11 window


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise InputError(f"images must be two (B, C, H, W) batches of one shape, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error (B,)."""
    _check_pair(x, y)
    return (x - y).pow(2).reshape(x.shape[0], -1).mean(dim=1)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for data range 1 (B,); +inf for identical images."""
    m = mse(x, y)
    return torch.where(m > 0, -10.0 * torch.log10(m.clamp_min(1e-30)), torch.full_like(m, float("inf")))


def _window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    k = torch.arange(-RADIUS, RADIUS + 1, dtype=dtype, device=device)
    g = torch.exp(-0.5 * (k / SIGMA) ** 2)
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image mean SSIM (B,), differentiable in both images (see the module doc)."""
    _check_pair(x, y)
    b, c, h, w = x.shape
    if min(h, w) < 2 * RADIUS + 1:
        raise InputError(f"SSIM needs images of at least {2 * RADIUS + 1}x{2 * RADIUS + 1} pixels, got {h}x{w}")
    g = _window(x.dtype, x.device)
    gh, gw = g.reshape(1, 1, -1, 1).repeat(c, 1, 1, 1), g.reshape(1, 1, 1, -1).repeat(c, 1, 1, 1)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(z, gh, groups=c), gw, groups=c)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = K1 ** 2, K2 ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.reshape(b, -1).mean(dim=1)
