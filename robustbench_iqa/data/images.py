"""Reading images from disk into [0, 1] RGB tensors at a working size, with clear errors.

Files are decoded by :func:`robustbench_iqa.data.decode.decode_image` (by their
real bit depth and mode, EXIF orientation applied, alpha composited over white;
see that module).  Memory is checked before anything large is allocated
(:mod:`robustbench_iqa.data.memory`): a working size whose resize cannot fit is
refused with what it would need.  ``max_pixels`` downscales larger images, only
when asked.  An FR reference of another size than its image is refused unless
``resize_ref`` asks to resize it (:func:`load_pair`).

A note on scale: the certified input radius ``eps_x`` (and any L2 budget) is an
L2 norm over the whole image, so it grows with the pixel count (about with
sqrt(3 H W) for the same per-pixel change) and is not comparable across working
sizes; compare runs at one size, or per-pixel radii ``eps_x / sqrt(3 H W)``.
"""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from robustbench_iqa.data.decode import check_image_path, decode_image, image_size
from robustbench_iqa.data.memory import check_fits
from robustbench_iqa.errors import InputError

__all__ = ["Resize", "check_image_path", "decode_image", "fit_size", "image_size", "limit_pixels", "load_image",
           "load_pair", "parse_size", "save_image"]


class Resize(StrEnum):
    """How images are brought to the working size (H, W).

    ``none`` keeps the native size; ``resize`` rescales (bilinear, antialiased);
    ``center-crop`` crops the centre (after a resize of the short side if the
    image is smaller than the crop).  The FS-IQA study works at 384x512.
    """

    NONE = "none"
    RESIZE = "resize"
    CENTER_CROP = "center-crop"


def load_image(
    path: str | Path,
    *,
    size: tuple[int, int] | None = None,
    resize: Resize | str = Resize.RESIZE,
    max_pixels: int | None = None,
) -> torch.Tensor:
    """Load ``path`` as a float32 tensor (3, H, W) in [0, 1] (see the module docstring).

    ``max_pixels``: downscale (antialiased, aspect kept) an image with more
    pixels, before ``size``/``resize`` apply; None keeps the native size.
    Raises :class:`InputError` naming the file for anything it cannot decode
    faithfully.
    """
    p = check_image_path(path)
    x = torch.from_numpy(decode_image(p)).permute(2, 0, 1).contiguous()
    x = limit_pixels(x, max_pixels)
    return fit_size(x, size, Resize(resize))


def load_pair(
    path: str | Path,
    ref: str | Path,
    *,
    size: tuple[int, int] | None = None,
    resize: Resize | str = Resize.RESIZE,
    max_pixels: int | None = None,
    resize_ref: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """An FR pair: the image and its reference, on one pixel grid.

    The two files must have the same (upright) size: an FR model compares them
    pixel by pixel, so a reference of another size is refused, unless
    ``resize_ref`` asks to resize it to the image's size first (bilinear,
    antialiased).  Then both go through ``max_pixels``/``size``/``resize``
    alike.
    """
    p, r = check_image_path(path), check_image_path(ref)
    hw_x, hw_r = image_size(p), image_size(r)
    if hw_x != hw_r and not resize_ref:
        raise InputError(
            f"FR pair of different sizes: image {p} is {hw_x[0]}x{hw_x[1]} (HxW), reference {r} is "
            f"{hw_r[0]}x{hw_r[1]}; give a reference of the same size, or ask to resize it (--resize-ref)"
        )
    x = load_image(p, max_pixels=max_pixels, size=size, resize=resize)
    y = torch.from_numpy(decode_image(r)).permute(2, 0, 1).contiguous()
    if hw_x != hw_r:
        y = fit_size(y, hw_x, Resize.RESIZE)
    y = fit_size(limit_pixels(y, max_pixels), size, Resize(resize))
    return x, y


# -- sizes ----------------------------------------------------------------------------------------------
def limit_pixels(x: torch.Tensor, max_pixels: int | None) -> torch.Tensor:
    """Downscale an image (3, H, W) with more than ``max_pixels`` pixels to at most that many."""
    if max_pixels is None:
        return x
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 64:
        raise InputError(f"max_pixels must be an integer >= 64, got {max_pixels!r}")
    h, w = x.shape[-2:]
    if h * w <= max_pixels:
        return x
    s = math.sqrt(max_pixels / (h * w))
    hw = (max(1, math.floor(h * s)), max(1, math.floor(w * s)))
    return fit_size(x, hw, Resize.RESIZE)


def fit_size(x: torch.Tensor, size: tuple[int, int] | None, resize: Resize) -> torch.Tensor:
    """Bring an image (3, H, W) to ``size`` by the policy ``resize``."""
    if size is None or resize is Resize.NONE or tuple(x.shape[-2:]) == tuple(size):
        return x
    h, w = size
    check_fits(2.0 * x.shape[0] * h * w * x.element_size(), what=f"resizing to {h}x{w} (HxW)",
               hint="use a smaller size")
    if resize is Resize.RESIZE:
        y = F.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
        return y.clamp(0.0, 1.0)
    H, W = x.shape[-2:]
    if H < h or W < w:
        scale = max(h / H, w / W)
        x = F.interpolate(
            x[None], size=(max(h, round(H * scale)), max(w, round(W * scale))),
            mode="bilinear", align_corners=False, antialias=True,
        )[0].clamp(0.0, 1.0)
        H, W = x.shape[-2:]
    top, left = (H - h) // 2, (W - w) // 2
    return x[:, top : top + h, left : left + w].contiguous()


def save_image(x: torch.Tensor, path: str | Path) -> None:
    """Write a (3, H, W) tensor in [0, 1] as an 8-bit PNG."""
    arr = (x.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


DEFAULT_SIZE = "default"
"""``size="default"``: the dataset's own working size (KonIQ-10k, KADID-10k: 384x512)."""
NATIVE_SIZE = "native"
"""``size="native"`` (or ``size=None`` in the API): every image at its own size, not resized."""


def parse_dataset_size(text: str | None) -> tuple[int, int] | str | None:
    """A dataset ``--size`` value: ``"384x512"`` -> (384, 512); ``"native"`` -> None (no
    resize); ``"default"`` or no value -> :data:`DEFAULT_SIZE` (the dataset's own size)."""
    if text is None or text.strip().lower() == DEFAULT_SIZE:
        return DEFAULT_SIZE
    if text.strip().lower() == NATIVE_SIZE:
        return None
    return parse_size(text)


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"384x512"`` -> (384, 512); None stays None (the dataset's own size).

    A size whose image tensor alone (float32 RGB) cannot fit in memory is refused.
    """
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"size must look like HxW (e.g. 384x512), got {text!r}") from None
    if h < 8 or w < 8:
        raise InputError(f"size is too small: {text}")
    check_fits(12.0 * h * w, what=f"an image of size {text} (HxW)", hint="use a smaller size")
    return h, w
