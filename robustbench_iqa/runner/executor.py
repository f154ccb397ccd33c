"""Executors run units of work; the driver writes every unit's rows to the store as it completes.

An executor maps units to :class:`UnitResult` values (rows, seconds, worker), in any
order.  :class:`LocalExecutor` runs them one after another in this process, with one
:class:`~robustbench_iqa.runner.workspace.Workspace` (models and defenses built once);
the Ray executor (:mod:`robustbench_iqa.runner.ray_executor`, optional) runs them on
actors.  :func:`execute` is the single writer: it skips the units already stored
(whichever executor wrote them), writes each result with its unit record in one
transaction, and shows a progress bar weighted by each unit's expected cost, with the time left.  Units
derive their randomness from their keys, so the rows do not depend on the executor,
the order or restarts.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from robustbench_iqa.errors import InputError
from robustbench_iqa.store import RowKey
from robustbench_iqa.studies.base import Unit, get_study

if TYPE_CHECKING:
    from robustbench_iqa.runner.config import VerifyConfig
    from robustbench_iqa.runner.workspace import Workspace
    from robustbench_iqa.store import ResultsStore


@dataclass(frozen=True)
class UnitResult:
    """The rows of one unit (as ``(key, payload)`` pairs), its compute seconds and who ran it."""

    unit: Unit
    rows: list[tuple[RowKey, dict[str, object]]]
    seconds: float
    worker: str
    steps: dict[str, float] | None = None
    """Seconds per named step inside the unit (``Workspace.timed``), for the gate's profile."""


def run_unit(unit: Unit, ws: Workspace) -> UnitResult:
    """Run one unit of work in ``ws`` (what every executor calls, wherever it runs)."""
    ws.step_seconds = {}
    t0 = time.perf_counter()
    study = get_study(unit.study)
    records, handoff = study.run_stage(unit, ws)
    if handoff is not None:  # the runner owns the order: the studies staged after this one, in turn
        for name in ws.cfg.active_studies():
            staged = get_study(name)
            if staged.stage == study.name:
                records = [*records, *staged.on_certified(handoff, ws)]
    return UnitResult(unit, [r.as_pair() for r in records], time.perf_counter() - t0,
                      f"{socket.gethostname()}:{os.getpid()}", dict(ws.step_seconds))


Tick = Callable[["Unit", float], None]
"""``tick(unit, fraction)``: a running unit reports the fraction of its images done."""


class Executor(Protocol):
    """Runs units and yields their results as they complete (any order)."""

    name: str

    def start(self) -> None:
        """Get ready to run units (connect, build workers); called before the progress bar starts."""

    def map(self, units: Sequence[Unit], *, tick: Tick | None = None) -> Iterator[UnitResult]: ...

    def close(self) -> None: ...


class LocalExecutor:
    """Units one after another in this process, with one workspace."""

    name = "local"

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def start(self) -> None:
        pass  # the workspace was built by the preflight

    def map(self, units: Sequence[Unit], *, tick: Tick | None = None) -> Iterator[UnitResult]:
        for unit in units:
            self.ws.progress = None if tick is None else (lambda f, u=unit: tick(u, f))  # type: ignore[misc]
            yield run_unit(unit, self.ws)
        self.ws.progress = None

    def close(self) -> None:
        pass


def execute(store: ResultsStore, cfg: VerifyConfig, units: Sequence[Unit], executor: Executor, *,
            progress: bool = True) -> int:
    """Run the units not yet in ``store`` on ``executor``, writing each as it completes.

    Returns the number of units run now.  The progress bar is weighted by each unit's expected
    cost (:mod:`robustbench_iqa.runner.progress`) and shows the images done and the time left.
    """
    from tqdm.auto import tqdm

    from robustbench_iqa.runner.progress import CostEstimate, WeightedProgress

    bound = getattr(executor, "cfg", None)
    if bound is not None and bound.to_dict() != cfg.to_dict():
        raise InputError(f"the {executor.name} executor was built for another configuration than this run's")
    done = store.done_units()
    todo = [u for u in units if u.key not in done]
    state = WeightedProgress(todo, CostEstimate.for_run(store, cfg))
    if todo:
        executor.start()  # a cluster's startup is not counted in the time left
    t0 = time.perf_counter()
    last = ""

    with tqdm(total=max(state.total, 1e-9), disable=not progress, bar_format="{desc}: {percentage:3.0f}%|{bar}|",
              desc="verify") as bar:
        shown = [0.0]

        def show(force: bool = False) -> None:
            now = time.perf_counter()
            if bar.disable or (not force and now - shown[0] < bar.mininterval):
                return
            shown[0] = now
            left = state.time_left(now - t0)
            bar.bar_format = ("{desc}: {percentage:3.0f}%|{bar}| " + f"{state.images:.0f}/{state.images_total} img "
                              f"[{tqdm.format_interval(now - t0)}<"
                              f"{'?' if left is None else tqdm.format_interval(left)}, "
                              f"{state.images / max(now - t0, 1e-9):.3g} img/s] {last}")
            bar.total = max(state.total, 1e-9)
            bar.n = min(state.done, bar.total)  # never past the total: no clamping, no negative time
            bar.refresh()

        def tick(unit: Unit, fraction: float) -> None:  # progress inside a running unit
            state.tick(unit, fraction)
            show()

        for res in executor.map(todo, tick=tick):
            info = {**res.unit.info(), "steps": res.steps or {}}
            store.put_unit(res.unit.key, study=res.unit.study, info=info, rows=res.rows,
                           seconds=res.seconds, worker=res.worker)
            state.finish(res.unit, res.seconds)
            last = f"{res.unit.study} {res.unit.model} ({res.unit.defense})".replace("{", "{{").replace("}", "}}")
            show(force=True)
    return len(todo)
