"""Images as the Python API takes them, like pyiqa: tensors, file paths or PIL images.

``model(x, ref)`` (:meth:`robustbench_iqa.models.base.IQAModel.__call__`) accepts for ``x``
and ``ref`` a tensor (B, 3, H, W) or (3, H, W) in [0, 1]; a path (``str`` / ``pathlib.Path``)
of an image file, read by :func:`robustbench_iqa.data.images.load_image` at its native size;
a ``PIL.Image.Image``; or a list of paths / PIL images of one size.  Files and PIL images are
decoded by the suite's one set of rules (:mod:`robustbench_iqa.data.decode`: 8- and 16-bit,
gray and alpha handled), and moved to the model's device.  Anything else is one
:class:`~robustbench_iqa.errors.InputError` naming what is accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from robustbench_iqa.errors import InputError

ACCEPTED = "a torch.Tensor (B, 3, H, W) in [0, 1], an image file path, a PIL image, or a list of paths/PIL images"


def _is_pil(obj: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, Image.Image)


def is_image_like(obj: Any) -> bool:
    """Whether ``obj`` is a path, a PIL image, or a non-empty list of them (not a tensor)."""
    if isinstance(obj, (str, Path)) or _is_pil(obj):
        return True
    return isinstance(obj, (list, tuple)) and len(obj) > 0 and all(isinstance(o, (str, Path)) or _is_pil(o)
                                                                   for o in obj)


def _one(obj: Any, name: str) -> torch.Tensor:
    if isinstance(obj, (str, Path)):
        from robustbench_iqa.data.images import load_image

        return load_image(obj)
    from robustbench_iqa.data.decode import decode_pil

    return torch.from_numpy(decode_pil(obj, name=f"<PIL image {name}>")).permute(2, 0, 1).contiguous()


def as_images(obj: Any, *, name: str, device: torch.device | str) -> Any:
    """``obj`` as a float32 batch (B, 3, H, W) on ``device`` if it is a path, a PIL image or a list of
    them; tensors and None are returned unchanged; anything else raises :class:`InputError`."""
    if obj is None or isinstance(obj, torch.Tensor):
        return obj
    if not is_image_like(obj):
        raise InputError(f"{name} must be {ACCEPTED}; got {type(obj).__name__}")
    items: Sequence[Any] = obj if isinstance(obj, (list, tuple)) else [obj]
    xs = [_one(o, f"{name}[{i}]") for i, o in enumerate(items)]
    shapes = sorted({tuple(x.shape) for x in xs})
    if len(shapes) != 1:
        raise InputError(f"{name}: the images have different sizes {shapes}; give one size per call")
    return torch.stack(xs).to(device)
