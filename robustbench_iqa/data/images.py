"""Reading images from disk into [0, 1] RGB tensors, with clear errors."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from robustbench_iqa.errors import InputError


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
) -> torch.Tensor:
    """Load ``path`` as a float tensor (3, H, W) in [0, 1].

    Raises :class:`InputError` for a missing or unreadable file.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"image file not found: {p}")
    try:
        with Image.open(p) as im:
            im.load()
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot read image {p}: {exc}") from None
    arr = np.asarray(rgb, dtype=np.float32) / 255.0
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
    return fit_size(x, size, Resize(resize))


def fit_size(x: torch.Tensor, size: tuple[int, int] | None, resize: Resize) -> torch.Tensor:
    """Bring an image (3, H, W) to ``size`` by the policy ``resize``."""
    if size is None or resize is Resize.NONE or tuple(x.shape[-2:]) == tuple(size):
        return x
    h, w = size
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
    """``"384x512"`` -> (384, 512); None stays None."""
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"size must look like HxW (e.g. 384x512), got {text!r}") from None
    if h < 8 or w < 8:
        raise InputError(f"size is too small: {text}")
    return h, w
