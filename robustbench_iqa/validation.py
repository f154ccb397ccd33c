"""Checks on images and hyper-parameters, run before any model sees them.

Following the practice of AutoAttack's ``checks.py``: the model is never fed
garbage silently.  Each check raises :class:`~robustbench_iqa.errors.InputError`
with a message that names the problem.
"""

from __future__ import annotations

import math

import torch

from robustbench_iqa.errors import InputError


def check_images(x: torch.Tensor, *, name: str = "x") -> torch.Tensor:
    """Validate a batch of RGB images in [0, 1] with shape (B, 3, H, W).

    A single image of shape (3, H, W) is promoted to a batch of one.
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise InputError(f"{name} must have shape (B, 3, H, W), got {tuple(x.shape)}")
    if x.shape[1] != 3:
        raise InputError(f"{name} must have 3 (RGB) channels, got {x.shape[1]} in shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InputError(f"{name} is an empty batch")
    if not x.is_floating_point():
        raise InputError(f"{name} must be a floating-point tensor in [0, 1], got dtype {x.dtype}")
    xd = x.detach()
    if not bool(torch.isfinite(xd).all()):
        raise InputError(f"{name} contains NaN or Inf values")
    lo, hi = float(xd.min()), float(xd.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(f"{name} must have values in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
    return x


def check_pair(x: torch.Tensor, ref: torch.Tensor | None, *, full_reference: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate the inputs of an NR (``ref is None``) or FR (``ref`` given) model."""
    x = check_images(x, name="x")
    if full_reference:
        if ref is None:
            raise InputError("this is a full-reference model: a reference image `ref` is required")
        ref = check_images(ref, name="ref")
        if ref.shape[0] == 1 and x.shape[0] > 1:
            ref = ref.expand(x.shape[0], -1, -1, -1)
        if ref.shape != x.shape:
            raise InputError(
                f"FR pair of different sizes: x has shape {tuple(x.shape)}, ref has shape {tuple(ref.shape)}"
            )
    elif ref is not None:
        raise InputError("this is a no-reference model: do not pass a reference image")
    return x, ref


def check_sigma(sigma: float) -> float:
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise InputError(f"sigma must be a finite number > 0, got {sigma!r}")
    return float(sigma)


def check_alpha(alpha: float) -> float:
    """The confidence level of a certificate, in [0.5, 1).

    In this suite ``alpha`` is the *confidence* (e.g. 0.999, as in the FS-IQA paper), not
    the error probability of Cohen et al. 2019 (their alpha = 0.001).  A value below 0.5
    is almost certainly the other convention (a confidence of 0.1% certifies nothing),
    so it is refused rather than silently used.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise InputError(f"alpha (confidence level) must be a number in [0.5, 1), got {alpha!r}")
    if alpha < 0.5:
        raise InputError(
            f"alpha={alpha!r} is below 0.5: alpha is the confidence level of the certificate (e.g. 0.999), "
            f"not the error probability of Cohen et al. (e.g. 0.001); for an error of {alpha:g} pass "
            f"alpha={1 - alpha:g}"
        )
    if not alpha < 1.0:
        raise InputError(f"alpha (confidence level) must be < 1 (no finite sample gives confidence 1), got {alpha!r}")
    return float(alpha)


def check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"the sample count n must be a positive integer, got {n!r}")
    return n


def check_finite_scores(scores: torch.Tensor, *, what: str = "model output") -> torch.Tensor:
    if not bool(torch.isfinite(scores).all()):
        raise InputError(f"{what} contains NaN or Inf values")
    return scores
