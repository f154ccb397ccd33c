"""Reading the suite's safetensors checkpoints: tensors plus a metadata dict, clear errors.

Checkpoints are safetensors files (never unrestricted pickle) whose metadata
carries a ``format`` tag naming what they hold (FS-IQA heads, a denoiser).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from robustbench_iqa.errors import InputError


def read_checkpoint(path: str | Path, *, fmt: str, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of the checkpoint ``path``, which must carry format tag ``fmt``.

    Raises :class:`InputError` naming ``what`` (e.g. "FS-IQA checkpoint") when the
    file is missing, unreadable, or of another format.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} not found: {p}")
    try:
        tensors = load_file(str(p))
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"cannot read {what} {p}: {exc}") from None
    if meta.get("format") != fmt:
        raise InputError(f"{p} is not a valid {what}: format tag {meta.get('format')!r}, expected {fmt!r}")
    return tensors, meta
