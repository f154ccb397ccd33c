"""The benchmark's time budgets: one per case, one per model, and the clock that spends them.

Every case has an estimated cost, made *before* it runs from unit costs measured
earlier in the same run (the forward pass, the warm-up certification's time per
spectral iteration, a one-step attack probe, the first memory subprocess), and
is capped or skipped to fit ``case_budget_s`` (see :mod:`~robustbench_iqa.bench.plan`).
The cases of a model run in priority order (the targets first); each case's
budget is also at most what is left of the model's ``model_budget_s``, and once
that is spent the model's remaining cases are skipped.  Every cap and skip is
recorded with its reason (``BenchRun.capped``).

The budgets are spent on :func:`cost_clock`: wall-clock time with ``clock="wall"``;
with ``clock="cpu"``, the CPU time of this process *and its finished children*
(the memory subprocesses), which on an idle machine with one thread is the
wall time.
"""

from __future__ import annotations

import contextlib
import math
import resource
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from robustbench_iqa.errors import InputError


def _cpu_with_children() -> float:
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


COST_CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": _cpu_with_children}


def cost_clock(clock: str) -> Callable[[], float]:
    """The clock budgets are spent on for a run timed with ``clock`` (``"wall"`` or ``"cpu"``)."""
    if clock not in COST_CLOCKS:
        raise InputError(f"clock must be one of {', '.join(COST_CLOCKS)}, got {clock!r}")
    return COST_CLOCKS[clock]


class ModelBudget:
    """What one model may spend, in seconds of ``now``, from its creation on.

    ``case_budget(case_s)`` is the budget of the next case: ``case_s``, or less
    when less of the model's budget is left.  ``spent_reason()`` is ``None``
    while some budget is left, and otherwise why the remaining cases are skipped.
    """

    def __init__(self, total_s: float, *, now: Callable[[], float]) -> None:
        if not (total_s > 0):
            raise InputError(f"model budget must be > 0, got {total_s!r}")
        self.total_s, self._now = total_s, now
        self._start = now()

    @property
    def spent_s(self) -> float:
        return self._now() - self._start

    @property
    def left_s(self) -> float:
        return self.total_s - self.spent_s

    def case_budget(self, case_s: float) -> float:
        """The budget of the next case: ``case_s``, at most what is left (and > 0 while some is)."""
        return max(min(case_s, self.left_s), 1e-9)

    def spent_reason(self) -> str | None:
        if self.left_s > 0:
            return None
        return f"skipped: the model's budget of {self.total_s:g} s is spent ({self.spent_s:.0f} s used)"


class BudgetExceeded(Exception):
    """A call ran past its time limit (see :func:`time_limit`)."""


CPU_TO_WALL = 3.0
"""Wall seconds allowed per CPU second by :func:`time_limit` under the ``"cpu"`` clock (a shared machine)."""


@contextlib.contextmanager
def time_limit(seconds: float, *, clock: str) -> Iterator[None]:
    """Raise :class:`BudgetExceeded` in the block once ``seconds`` have passed.

    A Unix wall-clock interval timer (``ITIMER_REAL``) whose handler raises between two Python
    bytecodes, so the block stops after the torch operation running at that moment.  Under the
    ``"cpu"`` clock the limit is ``CPU_TO_WALL * seconds`` of wall time: a CPU-time timer
    (``ITIMER_PROF``) is not used because on the development machine arming it froze the
    process' CPU clock (``time.process_time``) for the rest of the run.  Where there is no
    such timer (another OS, or not the main thread) the block runs unlimited.
    """
    if clock not in COST_CLOCKS:
        raise InputError(f"clock must be one of {', '.join(COST_CLOCKS)}, got {clock!r}")
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if usable and seconds <= 0:
        raise BudgetExceeded(f"with no time left ({seconds:.1f} s)")
    if not usable or not math.isfinite(seconds):
        yield
        return
    limit = seconds * (CPU_TO_WALL if clock == "cpu" else 1.0)

    def handler(_signum: int, _frame: Any) -> None:
        raise BudgetExceeded(f"over its limit of {limit:.0f} s")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
