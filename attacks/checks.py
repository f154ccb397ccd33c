"""Attack-strength checks: signs that an attack failed rather than that a model is robust.

AutoAttack (Croce & Hein 2020, ``checks.py``) showed that a reported robustness is
only as good as the attack behind it, and listed the usual failures.  Adapted to
quality scores, each attacked image gets an :class:`ImageCheck` with these flags:

* ``no-progress``: the best recorded gain g(x') - g(x) is <= ``min_improvement``
  (0 by default): no iterate beat the clean image, so the clean image was returned;
* ``zero-gradient``: the gradient of the gain was exactly zero at some step
  (a flat or non-differentiable score, e.g. a quantizer or a saturated head);
* ``nonfinite-gradient``: the gradient had NaN/Inf entries at some step (they
  were replaced by 0 so the attack could go on);
* ``eot-disagreement``: the EOT gradient is noise-dominated.  The loop splits
  the n draws of the first step into two halves A, B and takes the gradients
  g_A, g_B of their means.  With per-draw gradients of mean mu and covariance
  Sigma, E||g_A - g_B||^2 = 4 tr(Sigma)/n and E||g_A + g_B||^2 = 4||mu||^2 + 4 tr(Sigma)/n,
  so with r = ||g_A - g_B|| / ||g_A + g_B||,

      q^2 = r^2 / (1 - r^2)  estimates  tr(Sigma) / (n ||mu||^2),

  the squared relative noise of the n-draw EOT gradient, and s = sqrt(n) q the
  relative spread of the per-draw gradients, sqrt(tr Sigma) / ||mu|| (stored as
  ``eot_spread`` with ``eot_draws`` = n).  The flag is q > ``max_eot_noise``
  (1 by default: the n-draw gradient is more noise than signal; r >= 1 gives q = inf).

Across two runs on the same images and budget, :func:`compare_white_black`
flags gradient masking when a black-box attack (no gradients) beats the
white-box one: per image where ``black > white + tol``; for the run when the
black-box mean gain is higher, or when the black-box attack wins on more images
than it loses (a lucky random start of the white-box attack on one image must
not hide that it failed on the others).  A one-sided sign test
(``scipy.stats.binomtest``, ties dropped) gives the p-value that the black-box
attack wins no more often than the white-box one.

The functions here are pure: they read numbers and return typed records that
the CLI, the results store and the report can show.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any, Protocol

import numpy as np
import torch
from scipy import stats

from robustbench_iqa.errors import InputError


class Flag(StrEnum):
    """What an attack-strength check found."""

    NO_PROGRESS = "no-progress"
    ZERO_GRADIENT = "zero-gradient"
    NONFINITE_GRADIENT = "nonfinite-gradient"
    EOT_DISAGREEMENT = "eot-disagreement"
    BLACK_BOX_STRONGER = "black-box-stronger"


IMAGE_FLAGS: tuple[Flag, ...] = (Flag.NO_PROGRESS, Flag.ZERO_GRADIENT, Flag.NONFINITE_GRADIENT,
                                 Flag.EOT_DISAGREEMENT)
"""The flags one run's records raise; ``black-box-stronger`` needs a second run (:func:`compare_white_black`)."""


class RecordLike(Protocol):
    """The fields of :class:`~robustbench_iqa.attacks.base.AttackRecord` the checks read."""

    @property
    def improvement(self) -> float: ...
    @property
    def zero_grad_steps(self) -> int: ...
    @property
    def nonfinite_grad_steps(self) -> int: ...
    @property
    def eot_spread(self) -> float | None: ...
    @property
    def eot_draws(self) -> int | None: ...


@dataclass(frozen=True)
class Thresholds:
    """When a check raises its flag (see the module doc)."""

    min_improvement: float = 0.0
    max_eot_noise: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_improvement) and self.min_improvement >= 0):
            raise InputError(f"min_improvement must be finite and >= 0, got {self.min_improvement!r}")
        if not (self.max_eot_noise > 0):
            raise InputError(f"max_eot_noise must be > 0, got {self.max_eot_noise!r}")


@dataclass(frozen=True)
class ImageCheck:
    """The checks of one attacked image: the measured quantities and the flags they raised."""

    improvement: float
    zero_grad_steps: int
    nonfinite_grad_steps: int
    eot_noise: float | None
    flags: tuple[Flag, ...]

    @property
    def ok(self) -> bool:
        return not self.flags

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["flags"] = ",".join(f.value for f in self.flags)
        return d


def eot_noise(spread: float | None, draws: int | None) -> float | None:
    """Relative noise q = s / sqrt(n) of an n-draw EOT gradient from the per-draw spread s."""
    if spread is None or draws is None:
        return None
    return float(spread) / math.sqrt(int(draws))


def check_record(rec: RecordLike, thresholds: Thresholds | None = None) -> ImageCheck:
    """Flags of one image's :class:`~robustbench_iqa.attacks.base.AttackRecord`."""
    t = Thresholds() if thresholds is None else thresholds
    flags: list[Flag] = []
    if not (rec.improvement > t.min_improvement):
        flags.append(Flag.NO_PROGRESS)
    if rec.zero_grad_steps > 0:
        flags.append(Flag.ZERO_GRADIENT)
    if rec.nonfinite_grad_steps > 0:
        flags.append(Flag.NONFINITE_GRADIENT)
    q = eot_noise(rec.eot_spread, rec.eot_draws)
    if q is not None and q > t.max_eot_noise:
        flags.append(Flag.EOT_DISAGREEMENT)
    return ImageCheck(float(rec.improvement), int(rec.zero_grad_steps), int(rec.nonfinite_grad_steps), q,
                      tuple(flags))


def check_records(records: Sequence[RecordLike], thresholds: Thresholds | None = None) -> list[ImageCheck]:
    """:func:`check_record` for every image of a run."""
    return [check_record(r, thresholds) for r in records]


def flag_counts(checks: Sequence[ImageCheck], flags: Sequence[Flag] = IMAGE_FLAGS) -> dict[str, int]:
    """How many images raised each of ``flags`` (every one listed, 0 included)."""
    return {f.value: sum(f in c.flags for c in checks) for f in flags}


def split_half_spread(grad_a: torch.Tensor, grad_b: torch.Tensor, draws: int) -> torch.Tensor:
    """Per-draw relative gradient spread s = sqrt(n) q from two half-sample gradients (B, ...) -> (B,).

    ``grad_a`` and ``grad_b`` are the gradients of the means of two disjoint halves
    of the ``draws`` = n EOT draws; see the module doc for q.  Images whose halves
    are both zero give NaN; r >= 1 gives +inf.
    """
    if grad_a.shape != grad_b.shape:
        raise InputError(f"half gradients differ in shape: {tuple(grad_a.shape)} and {tuple(grad_b.shape)}")
    a = grad_a.reshape(grad_a.shape[0], -1).double()
    b = grad_b.reshape(grad_b.shape[0], -1).double()
    diff, total = (a - b).norm(dim=1), (a + b).norm(dim=1)
    r2 = (diff / total).pow(2)
    q2 = torch.where(r2 < 1, r2 / (1 - r2).clamp_min(1e-300), torch.full_like(r2, math.inf))
    out = math.sqrt(draws) * q2.sqrt()
    return torch.where((diff == 0) & (total == 0), torch.full_like(out, math.nan), out).float()


@dataclass(frozen=True)
class MaskingCheck:
    """A white-box and a black-box attack on the same images and budget (see the module doc).

    ``black_better`` is per image; ``flagged`` is the run-level flag (black-box
    mean gain above the white-box one, or more black-box wins than losses);
    ``p_value`` is the one-sided sign test.
    """

    white_gain: float
    black_gain: float
    n_images: int
    n_black_better: int
    n_white_better: int
    p_value: float
    black_better: tuple[bool, ...]
    flagged: bool

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["black_better"] = list(self.black_better)
        return d


def compare_white_black(white_gain: Any, black_gain: Any, *, tol: float = 0.0) -> MaskingCheck:
    """Compare per-image gains of a white-box and a black-box attack (same images, same budget)."""
    w = np.asarray(white_gain, dtype=float).reshape(-1)
    b = np.asarray(black_gain, dtype=float).reshape(-1)
    if w.shape != b.shape or w.size == 0:
        raise InputError(f"white-box ({w.size}) and black-box ({b.size}) gains must be non-empty and equal in length")
    if not (np.isfinite(w).all() and np.isfinite(b).all()):
        raise InputError("attack gains contain NaN or Inf values")
    if not (math.isfinite(tol) and tol >= 0):
        raise InputError(f"tol must be finite and >= 0, got {tol!r}")
    black_better = b > w + tol
    white_better = w > b + tol
    k, m = int(black_better.sum()), int(white_better.sum())
    p = float(stats.binomtest(k, k + m, 0.5, alternative="greater").pvalue) if k + m > 0 else 1.0
    wm, bm = float(w.mean()), float(b.mean())
    flagged = bm > wm + tol or k > m
    return MaskingCheck(wm, bm, int(w.size), k, m, p, tuple(bool(v) for v in black_better), bool(flagged))


def mark_masking(checks: Sequence[ImageCheck], masking: MaskingCheck) -> list[ImageCheck]:
    """The white-box run's checks with ``black-box-stronger`` added where the black-box attack won."""
    if len(checks) != masking.n_images:
        raise InputError(f"{len(checks)} checks for a comparison of {masking.n_images} images")
    return [replace(c, flags=(*c.flags, Flag.BLACK_BOX_STRONGER)) if won else c
            for c, won in zip(checks, masking.black_better)]
