"""Wall-clock timing of a callable and the ratios the benchmark reports.

Every figure of the benchmark is a *ratio to one undefended forward pass* of
the same model on the same input: ``ratio = t_case / t_forward``.  The ratio
is (to first order) independent of the machine, so figures measured on a CPU
and on a GPU, or by the FS-IQA study on an A100, can be compared.  Times are
the median of ``repeats`` runs after ``warmup`` runs (the median resists the
noise of a shared machine better than the mean).

Two clocks: ``"wall"`` (``time.perf_counter``, the default and the only one
that makes sense on a GPU) and ``"cpu"`` (``time.process_time``, the CPU time
of all threads of this process).  On a CPU shared with other jobs, wall times
swing with their load; CPU time with one torch thread (``--threads 1``)
measures the work itself and gives stable ratios.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from robustbench_iqa.errors import InputError

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


@dataclass(frozen=True)
class Timing:
    """Median and all run times of one timed call, in milliseconds, and its last result."""

    median_ms: float
    runs_ms: tuple[float, ...]
    result: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"median_ms": self.median_ms, "runs_ms": list(self.runs_ms)}


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so that wall-clock times cover it (no-op on the CPU)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_call(
    fn: Callable[[], Any],
    *,
    repeats: int = 3,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    budget_s: float | None = None,
    warm_fn: Callable[[], Any] | None = None,
    clock: str = "wall",
) -> Timing:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs.

    ``warm_fn`` (default ``fn``) is what the warm-up runs call: a cheaper call
    exercising the same code (e.g. fewer noise draws) is enough to pay for
    first-call costs.  With ``budget_s``, the warm-up runs count toward the
    budget and another timed run starts only if the runs so far plus one more
    (as long as the last) fit it; at least one run is always timed.
    """
    if clock not in CLOCKS:
        raise InputError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    now = CLOCKS[clock]
    if repeats < 1:
        raise InputError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise InputError(f"warmup must be >= 0, got {warmup}")
    start = now()
    for _ in range(warmup):
        (warm_fn or fn)()
    synchronize(device)
    runs: list[float] = []
    result: Any = None
    for _ in range(repeats):
        t0 = now()
        result = fn()
        synchronize(device)
        runs.append((now() - t0) * 1e3)
        if budget_s is not None and (now() - start) + runs[-1] / 1e3 > budget_s:
            break
    return Timing(median_ms=statistics.median(runs), runs_ms=tuple(runs), result=result)


def ratio(case_ms: float, forward_ms: float) -> float:
    """``case_ms / forward_ms``: the case's cost in units of one undefended forward pass."""
    if not (forward_ms > 0) or not math.isfinite(forward_ms):
        raise InputError(f"the forward time must be positive and finite, got {forward_ms!r}")
    if not (case_ms >= 0) or not math.isfinite(case_ms):
        raise InputError(f"the case time must be non-negative and finite, got {case_ms!r}")
    return case_ms / forward_ms


@dataclass(frozen=True)
class Target:
    """An upper limit on a ratio, e.g. ``Target(30.0, "<= 30x forward")``."""

    limit: float
    label: str

    def met(self, value: float) -> bool:
        return value <= self.limit

    def shortfall(self, value: float) -> float:
        """How many times over the limit ``value`` is (1.0 or less: met)."""
        return value / self.limit
