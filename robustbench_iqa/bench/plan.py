"""Bounded cost per benchmark case: the sample count N a case may use within its time budget.

The sampling cases (``ms-predict``, ``dms-predict`` and their ideals) cost
about ``N * per_draw`` seconds, where ``per_draw`` is measured on one batch
before the case runs.  At the study's N = 2000 with the paper's 17x64 DnCNN at
384x512 that is hours on a CPU, so every such case is planned first:

* ``N * per_draw <= budget``: the case runs at the requested N;
* otherwise N is capped to the largest multiple of the batch size whose
  estimated cost fits (at least one batch), and the cap is reported with its
  reason (the ratio per draw, and so the ratio to the ideal, does not depend
  on N once N spans several batches);
* if one batch alone exceeds the budget the case is skipped, with its reason.

The other cases are planned the same way by :func:`plan_count` (a count of
spectral iterations or attack steps whose estimated cost fits) and
:func:`fits` (a case that runs whole or not at all, e.g. a memory subprocess).

Capped and skipped cases are listed after the table by ``robustbench-iqa
bench``; nothing is dropped silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from robustbench_iqa.errors import InputError


@dataclass(frozen=True)
class PlannedN:
    """The N a case runs at (``None``: skipped), the N asked for, and why they differ (``None``: they do not)."""

    n: int | None
    requested: int
    reason: str | None = None

    @property
    def skipped(self) -> bool:
        return self.n is None


def plan_n(requested: int, *, per_draw_s: float, budget_s: float, batch_size: int, repeats: int = 1) -> PlannedN:
    """The sample count a case may use so that ``repeats`` timed runs of ``n`` draws fit ``budget_s``.

    ``per_draw_s`` is the measured cost of one draw (one batch's time over its
    size).  The result is ``requested`` when it fits; else the largest multiple
    of ``min(batch_size, requested)`` that fits; else skipped.
    """
    if requested < 1 or batch_size < 1 or repeats < 1:
        raise InputError(f"requested, batch_size and repeats must be >= 1, got {requested}, {batch_size}, {repeats}")
    if not (math.isfinite(per_draw_s) and per_draw_s >= 0):
        raise InputError(f"per_draw_s must be finite and >= 0, got {per_draw_s!r}")
    if not (budget_s > 0):
        raise InputError(f"budget_s must be > 0, got {budget_s!r}")
    cost = requested * per_draw_s * repeats
    if cost <= budget_s:
        return PlannedN(requested, requested)
    batch = min(batch_size, requested)
    batches = math.floor(budget_s / (batch * per_draw_s * repeats))
    if batches < 1:
        return PlannedN(None, requested, f"skipped: one batch of {batch} draws takes about {batch * per_draw_s:.1f} s "
                                         f"x {repeats} run(s), over the case budget of {budget_s:.3g} s "
                                         f"(N={requested} would take about {cost:.0f} s)")
    n = batches * batch
    return PlannedN(n, requested, f"N capped from {requested} to {n}: N={requested} would take about {cost:.0f} s "
                                  f"({per_draw_s * 1e3:.1f} ms per draw x {repeats} run(s)), over the case budget "
                                  f"of {budget_s:.3g} s")


def plan_count(requested: int, *, unit_s: float, budget_s: float, what: str, runs: int = 1,
               fixed_s: float = 0.0, minimum: int = 1) -> PlannedN:
    """The largest count (iterations, attack steps) up to ``requested`` whose estimated cost fits ``budget_s``.

    The cost of ``runs`` runs at count ``k`` is estimated as ``fixed_s + runs * k * unit_s``
    (``unit_s``: the measured cost of one iteration or step; ``fixed_s``: what the case
    spends whatever ``k``, e.g. its probe).  The result is ``requested`` when it fits;
    else the largest ``k >= minimum`` that fits, with the reason; else skipped, with
    the reason.  ``what`` names the count in the reasons (``"max_iter"``, ``"steps"``).
    """
    if requested < 1 or runs < 1 or minimum < 1:
        raise InputError(f"requested, runs and minimum must be >= 1, got {requested}, {runs}, {minimum}")
    for name, v in (("unit_s", unit_s), ("fixed_s", fixed_s)):
        if not (math.isfinite(v) and v >= 0):
            raise InputError(f"{name} must be finite and >= 0, got {v!r}")
    if not (budget_s > 0):
        raise InputError(f"budget_s must be > 0, got {budget_s!r}")
    cost = fixed_s + runs * requested * unit_s
    if cost <= budget_s:
        return PlannedN(requested, requested)
    k = math.floor((budget_s - fixed_s) / (runs * unit_s)) if budget_s > fixed_s else 0
    how = f"{unit_s:.2f} s per unit x {runs} run(s)" + (f" + {fixed_s:.1f} s" if fixed_s else "")
    if k < minimum:
        return PlannedN(None, requested, f"skipped: {what}={minimum} would take about "
                                         f"{fixed_s + runs * minimum * unit_s:.1f} s ({how}), over the budget "
                                         f"of {budget_s:.0f} s ({what}={requested}: about {cost:.0f} s)")
    return PlannedN(k, requested, f"{what} capped from {requested} to {k}: {what}={requested} would take about "
                                  f"{cost:.0f} s ({how}), over the budget of {budget_s:.0f} s")


def fits(estimate_s: float, *, budget_s: float, what: str) -> str | None:
    """``None`` when a case estimated at ``estimate_s`` fits ``budget_s``; else why it is skipped."""
    if estimate_s <= budget_s:
        return None
    return f"skipped: {what} would take about {estimate_s:.1f} s, over the budget of {budget_s:.0f} s"
