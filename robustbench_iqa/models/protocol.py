"""Evaluation-protocol options shared by the published models: input sizes and resizing.

A model's protocol (how an image is brought to the network: resize, crops) changes its score
as much as its weights do, so each published model takes its protocol as keyword options of
its factory, reports them in :attr:`IQAModel.protocol`, and the runner records them.  Sizes
are given as ``(H, W)``, ``[H, W]``, ``"HxW"``, a single int (a square), or ``None`` /
``"native"`` (the image as it is given).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from robustbench_iqa.errors import InputError

Size = tuple[int, int] | Sequence[int] | str | int | None
NATIVE = "native"


def parse_size(value: Size, *, what: str) -> tuple[int, int] | None:
    """``value`` as ``(H, W)``, or None for the native size; :class:`InputError` otherwise."""
    if value is None or (isinstance(value, str) and value.strip().lower() == NATIVE):
        return None
    try:
        if isinstance(value, str):
            parts = value.lower().replace(",", "x").split("x")
            hw = tuple(int(p) for p in parts)
        elif isinstance(value, int):
            hw = (value, value)
        else:
            hw = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be HxW (e.g. 384x512), an int or 'native', got {value!r}") from None
    if len(hw) == 1:
        hw = (hw[0], hw[0])
    if len(hw) != 2 or min(hw) < 1:
        raise InputError(f"{what} must be HxW with positive sides (e.g. 384x512), got {value!r}")
    return (hw[0], hw[1])


def size_text(size: tuple[int, int] | None) -> str:
    """``(384, 512)`` -> ``"384x512"``; None -> ``"native"`` (the form recorded with runs)."""
    return NATIVE if size is None else f"{size[0]}x{size[1]}"


def resize_to(x: torch.Tensor, size: tuple[int, int] | None, *, mode: str = "bilinear") -> torch.Tensor:
    """Resize a batch (B, 3, H, W) to ``size`` with antialiasing (as PIL does); None or an equal
    size returns ``x`` itself."""
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)
