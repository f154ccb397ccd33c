"""Weak quality labels from an ensemble of classical full-reference metrics.

KADIS-700k (Lin, Hosu and Saupe, "DeepFL-IQA", 2020) labels 700k synthetically
distorted images without any human ratings: each image is scored by several
full-reference IQA metrics against its pristine reference, and these
*weak labels* train the network.  The embedded dataset follows that practice
with three metrics, each mapped to [0, 1] with 1 = identical to the reference:

* PSNR (dB), mapped linearly from [:data:`PSNR_LOW`, :data:`PSNR_HIGH`] to
  [0, 1] and clipped (identical images: +inf -> 1);
* SSIM (Wang et al. 2004; Gaussian 11x11 window with std 1.5, K1 = 0.01,
  K2 = 0.03, per colour channel, averaged), clipped to [0, 1];
* GMSD (Xue et al., IEEE TIP 2014), mapped as ``1 - GMSD / GMSD_HIGH`` and
  clipped.

The weak label is the mean of the three, so it lies in [0, 1] and higher means
better.  These are *not* human opinion scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from robustbench_iqa.errors import InputError

PSNR_LOW, PSNR_HIGH = 15.0, 45.0
"""PSNR (dB) mapped to quality 0 and 1."""
GMSD_HIGH = 0.30
"""GMSD mapped to quality 0 (GMSD of heavily distorted images is about 0.2-0.3)."""
GMSD_C = 170.0 / 255.0**2
"""GMSD stability constant: T = 170 for 8-bit images (Xue et al. 2014), rescaled to [0, 1]."""

_PREWITT_X = np.array([[1.0, 0.0, -1.0]] * 3) / 3.0
_PREWITT_Y = _PREWITT_X.T
# Rec. 601 full-range luma (MATLAB ``rgb2gray``, the Y of YIQ), as in the GMSD reference code.
_LUMA = np.array([0.299, 0.587, 0.114])


def luma(img: np.ndarray) -> np.ndarray:
    """Rec. 601 full-range luma of an (H, W, 3) image in [0, 1] (not rounded to 8 bits)."""
    return np.asarray(img, dtype=np.float64) @ _LUMA


def gmsd(img: np.ndarray, ref: np.ndarray) -> float:
    r"""Gradient Magnitude Similarity Deviation (Xue et al., IEEE TIP 23(2), 2014).

    On the luma channel: average 2x2 and downsample by 2, gradient magnitude
    ``m = sqrt((I*h_x)^2 + (I*h_y)^2)`` with Prewitt filters ``h`` (1/3
    normalised, zero padding), similarity map
    ``GMS = (2 m_r m_d + c) / (m_r^2 + m_d^2 + c)`` (Eq. 4) and
    ``GMSD = std(GMS)`` (population std, Eq. 6).  0 for identical images,
    larger is worse.
    """
    a, b = _check_pair(img, ref)
    g = [_downsample2(luma(z)) for z in (a, b)]
    m = [np.hypot(ndimage.correlate(z, _PREWITT_X, mode="constant"),
                  ndimage.correlate(z, _PREWITT_Y, mode="constant")) for z in g]
    gms = (2.0 * m[0] * m[1] + GMSD_C) / (m[0] ** 2 + m[1] ** 2 + GMSD_C)
    return float(gms.std())


def _downsample2(y: np.ndarray) -> np.ndarray:
    """2x2 box average with stride 2 (odd trailing row/column dropped)."""
    h, w = (y.shape[0] // 2) * 2, (y.shape[1] // 2) * 2
    y = y[:h, :w]
    return 0.25 * (y[0::2, 0::2] + y[1::2, 0::2] + y[0::2, 1::2] + y[1::2, 1::2])


def psnr(img: np.ndarray, ref: np.ndarray) -> float:
    """PSNR in dB over all pixels and channels (data range 1); +inf for identical images."""
    a, b = _check_pair(img, ref)
    if np.array_equal(a, b):
        return float("inf")
    return float(peak_signal_noise_ratio(b, a, data_range=1.0))


def ssim(img: np.ndarray, ref: np.ndarray) -> float:
    """SSIM with the settings of Wang et al. 2004 (Gaussian window, std 1.5), channel mean."""
    a, b = _check_pair(img, ref)
    return float(structural_similarity(b, a, data_range=1.0, channel_axis=-1,
                                       gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


@dataclass(frozen=True)
class WeakLabel:
    """The raw metrics and their [0, 1] mapped mean ``score`` (higher = better)."""

    psnr: float
    ssim: float
    gmsd: float
    score: float


def map_psnr(value: float) -> float:
    return float(np.clip((value - PSNR_LOW) / (PSNR_HIGH - PSNR_LOW), 0.0, 1.0))


def map_ssim(value: float) -> float:
    return float(np.clip(value, 0.0, 1.0))


def map_gmsd(value: float) -> float:
    return float(np.clip(1.0 - value / GMSD_HIGH, 0.0, 1.0))


def weak_label(img: np.ndarray, ref: np.ndarray) -> WeakLabel:
    """Weak quality label of ``img`` against ``ref`` ((H, W, 3) arrays in [0, 1])."""
    p, s, g = psnr(img, ref), ssim(img, ref), gmsd(img, ref)
    score = (map_psnr(p) + map_ssim(s) + map_gmsd(g)) / 3.0
    return WeakLabel(psnr=p, ssim=s, gmsd=g, score=score)


def _check_pair(img: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(img, dtype=np.float64)
    b = np.asarray(ref, dtype=np.float64)
    if a.ndim != 3 or a.shape[-1] != 3 or a.shape != b.shape:
        raise InputError(f"weak labels need two (H, W, 3) images of equal shape, got {a.shape} and {b.shape}")
    if min(a.shape[:2]) < 14:
        raise InputError(f"weak labels need images of at least 14x14 pixels, got {a.shape[:2]}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise InputError("weak labels need finite pixel values")
    return a, b
