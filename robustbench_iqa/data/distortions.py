"""Synthetic image distortions at five levels each (KADID-10k style).

Every distortion is a small pure function ``f(img, level, rng) -> img`` on a
float RGB array of shape (H, W, 3) with values in [0, 1]; ``level`` runs from 1
(mildest) to 5 (strongest), as in KADID-10k (Lin, Hosu and Saupe, QoMEX 2019),
which applies 25 distortion types at 5 levels each.  ``rng`` is used only by
the random distortions (noise); the others ignore it.  Outputs are clipped to
[0, 1].  :data:`DISTORTIONS` is the registry, keyed by name.

The parameter tables are this suite's own choice, picked so that level 5 is
clearly visible on a 96x128 crop while level 1 is mild.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from robustbench_iqa.errors import InputError

Distortion = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
"""``f(img (H, W, 3) float in [0, 1], level in 1..5, rng) -> img``."""

LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)

# Rec. 601 luma weights, used for gray conversion (saturation change).
_LUMA = np.array([0.299, 0.587, 0.114])


def _param(table: tuple[float, ...], level: int) -> float:
    if level not in LEVELS:
        raise InputError(f"distortion level must be one of {LEVELS}, got {level!r}")
    return table[level - 1]


def gaussian_noise(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Additive white Gaussian noise, std ``s`` in {0.02, 0.04, 0.07, 0.11, 0.16}."""
    s = _param((0.02, 0.04, 0.07, 0.11, 0.16), level)
    return np.clip(img + s * rng.standard_normal(img.shape), 0.0, 1.0)


def gaussian_blur(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Isotropic Gaussian blur per channel, std in pixels {0.6, 1.0, 1.5, 2.2, 3.2}."""
    s = _param((0.6, 1.0, 1.5, 2.2, 3.2), level)
    return np.clip(ndimage.gaussian_filter(img, sigma=(s, s, 0.0), mode="reflect"), 0.0, 1.0)


def jpeg(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """JPEG compression through PIL at quality {50, 30, 18, 10, 5} (4:2:0 chroma)."""
    q = int(_param((50, 30, 18, 10, 5), level))
    buf = io.BytesIO()
    Image.fromarray(to_uint8(img)).save(buf, format="JPEG", quality=q)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0


def contrast(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Contrast reduction about the mean: ``m + c (x - m)``, c in {0.8, 0.65, 0.5, 0.35, 0.2}."""
    c = _param((0.8, 0.65, 0.5, 0.35, 0.2), level)
    m = img.mean()
    return np.clip(m + c * (img - m), 0.0, 1.0)


def saturation(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Colour desaturation: blend with the luma image, colour weight {0.75, 0.5, 0.3, 0.15, 0.0}."""
    w = _param((0.75, 0.5, 0.3, 0.15, 0.0), level)
    gray = (img @ _LUMA)[..., None]
    return np.clip(gray + w * (img - gray), 0.0, 1.0)


def quantization(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform colour quantization (posterize) to {24, 12, 7, 4, 3} levels per channel."""
    k = int(_param((24, 12, 7, 4, 3), level))
    return np.round(np.clip(img, 0.0, 1.0) * (k - 1)) / (k - 1)


DISTORTIONS: dict[str, Distortion] = {
    "gaussian-noise": gaussian_noise,
    "gaussian-blur": gaussian_blur,
    "jpeg": jpeg,
    "contrast": contrast,
    "saturation": saturation,
    "quantization": quantization,
}


def apply_distortion(
    img: np.ndarray, name: str, level: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Apply the registered distortion ``name`` at ``level`` (1..5) to ``img`` (H, W, 3) in [0, 1]."""
    if name not in DISTORTIONS:
        raise InputError(f"unknown distortion {name!r}; known: {', '.join(DISTORTIONS)}")
    arr = np.asarray(img, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise InputError(f"distortions need an (H, W, 3) RGB array, got shape {arr.shape}")
    gen = rng if rng is not None else np.random.default_rng(0)
    return DISTORTIONS[name](arr, level, gen)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float [0, 1] -> uint8 with rounding (the 8-bit image that is saved and scored)."""
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
