"""Checks on images and hyper-parameters, run before any model sees them.

Following the practice of AutoAttack's ``checks.py``: the model is never fed
garbage silently.  Each check raises :class:`~robustbench_iqa.errors.InputError`
with a message that names the problem.
"""

from __future__ import annotations

import math
import numbers

import torch

from robustbench_iqa.errors import InputError

MAX_SAMPLES = 10_000_000
"""Largest accepted sample count ``n`` (the search limit of :func:`robustbench_iqa.certify.bounds.min_samples`)."""

IMAGE_DTYPE = torch.float32
"""The dtype images are computed in: float64, float16 and bfloat16 images are converted to it."""

RANGE_TOLERANCE = 1e-6
"""Float tolerance of the [0, 1] range check of images: values in [-1e-6, 1 + 1e-6] (a resize or a
colour conversion rounding a pixel to 1.0000001) are accepted and clamped into [0, 1]; anything
further out is refused.  The one check, with this tolerance, of every entry point: the command
line, every defense's and attack's inputs, :meth:`IQAModel.check_inputs` and ``model(path)``."""


def check_images(x: torch.Tensor, *, name: str = "x") -> torch.Tensor:
    """Validate a batch of RGB images in [0, 1] with shape (B, 3, H, W).

    Values within :data:`RANGE_TOLERANCE` outside [0, 1] are clamped into it; values further
    out are refused, the message giving the range with 9 significant digits.

    A single image of shape (3, H, W) is promoted to a batch of one.  Floating
    dtypes other than float32 (float64, float16, bfloat16) are converted to
    float32, the dtype every model of the suite computes in (its 24-bit
    mantissa holds any 16-bit image exactly); integer images are refused, since
    their scale (255? 65535?) is not known here.
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
        raise InputError(f"{name} must be a floating-point tensor in [0, 1], got dtype {x.dtype} "
                         f"(divide 8-bit images by 255)")
    if x.dtype != IMAGE_DTYPE:
        x = x.to(IMAGE_DTYPE)
    xd = x.detach()
    if not bool(torch.isfinite(xd).all()):
        raise InputError(f"{name} contains NaN or Inf values")
    lo, hi = float(xd.min()), float(xd.max())
    if lo < -RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
        far = max(-lo, hi - 1.0)
        raise InputError(f"{name} must have values in [0, 1] (tolerance {RANGE_TOLERANCE:g}), got range "
                         f"[{lo:.9g}, {hi:.9g}], {far:.3g} outside; rescale (8-bit images: divide by 255) or clamp")
    if lo < 0.0 or hi > 1.0:
        x = x.clamp(0.0, 1.0)
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


def _is_real(v: object) -> bool:
    """A real number (Python or numpy scalar), not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check_sigma(sigma: float, *, name: str = "sigma") -> float:
    if not (_is_real(sigma) and math.isfinite(float(sigma)) and float(sigma) > 0):
        raise InputError(f"{name} must be a finite number > 0, got {sigma!r}")
    return float(sigma)


def check_alpha(alpha: float, *, name: str = "alpha (confidence level)") -> float:
    """The confidence level of a certificate, in [0.5, 1).

    In this suite ``alpha`` is the *confidence* (e.g. 0.999, as in the FS-IQA paper), not
    the error probability of Cohen et al. 2019 (their alpha = 0.001).  A value below 0.5
    is almost certainly the other convention (a confidence of 0.1% certifies nothing),
    so it is refused rather than silently used.  numpy scalars are accepted.
    """
    if not _is_real(alpha) or not math.isfinite(float(alpha)):
        raise InputError(f"{name} must be a number in [0.5, 1), got {alpha!r}")
    alpha = float(alpha)
    if alpha < 0.5:
        raise InputError(
            f"alpha={alpha!r} is below 0.5: alpha is the confidence level of the certificate (e.g. 0.999), "
            f"not the error probability of Cohen et al. (e.g. 0.001); for an error of {alpha:g} pass "
            f"alpha={1 - alpha:g}"
        )
    if not alpha < 1.0:
        raise InputError(f"{name} must be < 1 (no finite sample gives confidence 1), got {alpha!r}")
    return float(alpha)


def check_n(n: int, *, name: str = "the sample count n") -> int:
    """A sample count: an integer (Python or numpy) in [1, :data:`MAX_SAMPLES`]."""
    if not (isinstance(n, numbers.Integral) and not isinstance(n, bool) and int(n) >= 1):
        raise InputError(f"{name} must be a positive integer, got {n!r}")
    if int(n) > MAX_SAMPLES:
        raise InputError(f"{name} must be at most {MAX_SAMPLES:,}, got {int(n):,}")
    return int(n)


def check_finite(value: float, *, name: str) -> float:
    """A finite real number (Python or numpy scalar)."""
    if not (_is_real(value) and math.isfinite(float(value))):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_budget(eps: float, norm: str, *, hw: tuple[int, int] | None = None, name: str = "eps") -> float:
    """An attack budget in [0, 1] pixel units that can still constrain anything.

    Images live in the cube [0, 1]^(3HW), so an Linf budget of 1 already reaches
    every image and an L2 budget of sqrt(3 H W) (the cube's diameter) does too:
    a larger budget is a typo (e.g. 8 meant as 8/255), and is refused.  The L2
    limit is checked once the image size ``hw`` is known.
    """
    eps = check_finite(eps, name=name)
    if eps < 0:
        raise InputError(f"{name} must be >= 0, got {eps!r}")
    kind = str(norm).lower()
    if kind == "linf" and eps > 1:
        raise InputError(f"{name}={eps:g} is beyond the Linf range of [0, 1] images (at most 1; "
                         f"budgets are in [0, 1] pixel units, e.g. 8/255 = {8 / 255:.4g})")
    if kind == "l2" and hw is not None:
        limit = math.sqrt(3 * int(hw[0]) * int(hw[1]))
        if eps > limit:
            raise InputError(f"{name}={eps:g} is beyond the L2 diameter sqrt(3HW) = {limit:.4g} of "
                             f"{hw[0]}x{hw[1]} images in [0, 1]")
    return eps


def check_device(device: torch.device | str | None) -> torch.device:
    """A device this machine has: ``cpu``, ``cuda``/``cuda:N`` with CUDA present, ``mps`` where available.

    Anything else (a typo such as ``gpu0``, a GPU that is absent, ``meta``, which holds
    no data) raises :class:`InputError` before any model is built.
    """
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} requested, but CUDA is not available on this machine; use cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise InputError(f"device {device!r} requested, but this machine has {count} CUDA device(s)")
        return dev
    if dev.type == "mps":
        if torch.backends.mps.is_available():
            return dev
        raise InputError(f"device {device!r} requested, but MPS is not available on this machine; use cpu")
    raise InputError(f"device {device!r} is not supported; use cpu, cuda, cuda:N or mps")


def check_finite_scores(scores: torch.Tensor, *, what: str = "model output") -> torch.Tensor:
    if not bool(torch.isfinite(scores).all()):
        raise InputError(f"{what} contains NaN or Inf values")
    return scores



MIN_SIDE = 8
"""Smallest image side any model scores.  Below it an image holds too little structure for a
score or a certificate to mean anything (a feature network with three stride-2 stages maps
8 pixels to one), whatever the network would compute; models whose network needs more say so
(:func:`min_image_size`)."""


def min_image_size(model: object) -> tuple[int, int]:
    """The smallest (H, W) that ``model`` scores: at least :data:`MIN_SIDE` per side, and at least
    the network's own limit ``model.net_min_size`` (e.g. LPIPS's AlexNet: 31) unless the model's
    protocol resizes every image to a fixed ``input_size`` first."""
    lo = [MIN_SIDE, MIN_SIDE]
    net = getattr(model, "net_min_size", None)
    fixed = isinstance(getattr(model, "input_size", None), tuple)
    if net is not None and not fixed:
        lo = [max(lo[0], int(net[0])), max(lo[1], int(net[1]))]
    return lo[0], lo[1]


def check_image_size(hw: tuple[int, int] | torch.Size, *, minimum: tuple[int, int] = (MIN_SIDE, MIN_SIDE),
                     what: str = "image", model: str | None = None) -> None:
    """Refuse an image smaller than ``minimum`` (H, W), naming the size that works."""
    h, w = int(hw[-2]), int(hw[-1])
    if h < minimum[0] or w < minimum[1]:
        who = f"model {model!r}" if model else "a model"
        raise InputError(f"{what} is {h}x{w} (HxW), smaller than {who} scores: give an image of at least "
                         f"{minimum[0]}x{minimum[1]} (HxW), or resize it (--size HxW)")
