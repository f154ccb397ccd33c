"""Executors run units of work; the driver writes every unit's rows to the store as it completes.

An executor maps units to :class:`UnitResult` values (rows, seconds, worker), in any
order.  :class:`LocalExecutor` runs them one after another in this process, with one
:class:`~robustbench_iqa.runner.workspace.Workspace` (models and defenses built once);
the Ray executor (:mod:`robustbench_iqa.runner.ray_executor`, optional) runs them on
actors.  :func:`execute` is the single writer: it skips the units already stored
(whichever executor wrote them), writes each result with its unit record in one
transaction, and shows a progress bar over images with throughput and ETA.  Units
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

if TYPE_CHECKING:
    from robustbench_iqa.runner.config import VerifyConfig
    from robustbench_iqa.runner.workspace import Workspace
    from robustbench_iqa.store import ResultsStore
    from robustbench_iqa.studies.base import Unit


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
    from robustbench_iqa.studies.base import get_study

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

    Returns the number of units run now.  The progress bar counts images (a unit of k
    images advances it by k) and shows images/s and the time left.
    """
    from tqdm.auto import tqdm

    bound = getattr(executor, "cfg", None)
    if bound is not None and bound.to_dict() != cfg.to_dict():
        raise InputError(f"the {executor.name} executor was built for another configuration than this run's")
    done = store.done_units()
    todo = [u for u in units if u.key not in done]
    total = sum(max(1, len(u.images)) for u in todo)
    if todo:
        executor.start()  # a cluster's startup is not counted in the images/s
    partial: dict[str, float] = {}

    with tqdm(total=total, unit="img", desc="verify", disable=not progress, smoothing=0.1,
              bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]") as bar:
        def tick(unit: Unit, fraction: float) -> None:  # progress inside a running unit
            k = max(1, len(unit.images))
            new = min(max(fraction, 0.0), 1.0) * k
            bar.update(new - partial.get(unit.key, 0.0))
            partial[unit.key] = new

        for res in executor.map(todo, tick=tick):
            info = {**res.unit.info(), "steps": res.steps or {}}
            store.put_unit(res.unit.key, study=res.unit.study, info=info, rows=res.rows,
                           seconds=res.seconds, worker=res.worker)
            bar.set_postfix_str(f"{res.unit.study} {res.unit.model} ({res.unit.defense})", refresh=False)
            bar.update(max(1, len(res.unit.images)) - partial.pop(res.unit.key, 0.0))
    return len(todo)
