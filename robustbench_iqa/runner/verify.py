"""The research-CI gate: run every active study into the store, then judge it once.

:func:`run_verify` takes the run directory's lock, checks everything that can be
checked before anything is written (models, defenses, checkpoints, the dataset: each
built once, into the workspace the in-process executor then uses), opens the store
(refusing a different configuration, resuming with ``resume=True``, starting over with
``fresh=True``), runs the units of work not yet stored on the chosen executor,
evaluates the gate from the store alone (:mod:`robustbench_iqa.runner.gate`),
optionally writes the report, and returns a :class:`VerifyOutcome` whose ``passed``
decides the exit code.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustbench_iqa.errors import InputError
from robustbench_iqa.outputs import record_written, remove_written
from robustbench_iqa.provenance import run_config
from robustbench_iqa.runlock import RunLock
from robustbench_iqa.runner.config import VerifyConfig
from robustbench_iqa.runner.executor import Executor, LocalExecutor, execute
from robustbench_iqa.runner.gate import evaluate
from robustbench_iqa.runner.plan import Plan
from robustbench_iqa.runner.record import protocol_notes, scores_record
from robustbench_iqa.runner.workspace import (
    Workspace,
    check_checkpoint_keys,
    dataset_settings,
    defense_identity,
    weights_identity,
)
from robustbench_iqa.store import RESULTS_FILE, ResultsStore
from robustbench_iqa.studies.base import Check

REPORT_ERROR = "report-error.txt"
"""Written in the run directory when building the report failed with an internal error."""


@dataclass
class VerifyOutcome:
    """What the gate found: every check, the summary table, where the run and report are."""

    run_dir: Path
    checks: list[Check]
    summary: list[dict[str, Any]]
    report: Path | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    units_run: int = 0
    report_error: str | None = None
    """Why the report could not be written (the verdict above stands; see :attr:`exit_code`)."""

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def exit_code(self) -> int:
        """0 every check ran and passed, 1 a check failed (whatever the report did), 3 the checks
        passed but the report asked for could not be written."""
        if not self.passed:
            return 1
        return 3 if self.report_error is not None else 0

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]


def verify_run_config(cfg: VerifyConfig, ws: Workspace) -> dict[str, Any]:
    """The run configuration stored with the results: settings, weights and artifact hashes, versions."""
    models = {m: ws.model(m) for m in cfg.models}
    return run_config(
        kind="verify", **cfg.to_dict(), data=dataset_settings(cfg), scores=scores_record(cfg, ws),
        weights_sha256={m: weights_identity(cfg, m) for m in cfg.models},
        protocols={m: dict(getattr(models[m], "protocol", {}) or {}) for m in cfg.models},
        checkpoints_sha256={f"{m}:{d}@{s:g}": defense_identity(ws.defense(m, d, s))
                            for m in cfg.models for d, s in cfg.defense_cases()},
    )


def preflight(cfg: VerifyConfig, ws: Workspace) -> Plan:
    """Build every model and defense once (into ``ws``) and plan the inputs, before anything is
    written: a bad name, a missing checkpoint or an empty dataset fails at once (exit 2)."""
    check_checkpoint_keys(cfg)
    plan = Plan.build(cfg, ws)
    if not plan.units():
        raise InputError(f"verify: the configuration selects no work, so no check could run (studies "
                         f"{list(cfg.active_studies())} on defenses {list(cfg.defenses)}: e.g. the audit of an "
                         f"empirical defense); add a certified defense or a study that applies")
    for m in cfg.models:
        for d, s in cfg.defense_cases():
            ws.defense(m, d, s)
    return plan


def _remove_run(out: Path) -> None:
    """Delete what a run wrote in ``out`` (the store, and the report files its manifest lists:
    :mod:`robustbench_iqa.outputs`), nothing else: a user's file in ``report/``, or a ``report``
    that is a link, is kept."""
    for name in (RESULTS_FILE, RESULTS_FILE + "-wal", RESULTS_FILE + "-shm", REPORT_ERROR):
        p = out / name
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.exists():
            raise InputError(f"{p} is not a file the suite wrote (a {'directory' if p.is_dir() else 'special file'}); "
                             f"remove it or give another --out")
    remove_written(out / "report")


def open_run(out: Path, config: dict[str, Any], *, resume: bool, fresh: bool) -> ResultsStore:
    """The run's store; the caller holds the run directory's lock (so no other run is live in it)."""
    if fresh or (not resume and _is_empty(out)):
        _remove_run(out)  # a store that never got a row holds nothing to keep
    if not resume and (out / RESULTS_FILE).exists():
        raise InputError(f"{out} already holds a run: pass --resume to continue it, --fresh to start "
                         f"over, or --out to write elsewhere")
    try:
        return ResultsStore.open(out, config, resume=resume)
    except InputError as exc:
        if "--fresh" in str(exc):
            raise
        raise InputError(f"{exc} (or --fresh to start over)") from None


def _is_empty(out: Path) -> bool:
    """A store with no row and no unit (or whose creation never committed)."""
    if not (out / RESULTS_FILE).exists():
        return False
    try:
        with ResultsStore.open(out) as old:
            return old.count() == 0 and not old.done_units()
    except InputError as exc:
        return "no run configuration" in str(exc)


def run_verify(
    cfg: VerifyConfig, out_dir: str | Path, *, resume: bool = False, fresh: bool = False,
    report: bool = True, progress: bool = True, executor: Executor | None = None,
) -> VerifyOutcome:
    """Run the gate (see the module docstring).  ``executor``: default in-process."""
    cfg = cfg.validate()
    t0 = time.perf_counter()
    out = Path(out_dir)
    notes: list[str] = []
    lock = RunLock(out).acquire()
    try:
        # With another executor this workspace only plans and identifies (units run on its
        # workers): build it on the CPU so that no GPU holds a second copy of every model.
        ws = Workspace(cfg if executor is None else dataclasses.replace(cfg, device="cpu"))
        plan = preflight(cfg, ws)
        config = verify_run_config(cfg, ws)
    except BaseException:
        if not (out / RESULTS_FILE).exists():
            lock.discard()  # nothing was written: leave no lock file (or run dir) behind
        else:
            lock.release()
        raise
    notes += plan.notes
    notes += protocol_notes(config)
    with lock:
        runner = executor if executor is not None else LocalExecutor(ws)
        with open_run(out, config, resume=resume, fresh=fresh) as store:
            try:
                ran = execute(store, cfg, plan.units(), runner, progress=progress)
            finally:
                runner.close()
            gate = evaluate(store, cfg)
        audited = {(c.model, c.defense) for c in gate.checks if c.name == "certificate audit"}
        if "audit" in cfg.active_studies():
            for m in cfg.models:
                for d in cfg.defenses:
                    if not cfg.certified(d):
                        notes.append(f"{m} ({d}): empirical defense, no certificate to audit (scored only)")
                    elif (m, d) not in audited:
                        notes.append(f"{m} ({d}): no audit (its guarantee is not a bound on the smoothed output)")
        path, report_error = None, None
        if report:
            path, report_error = _write_report(out, notes, progress=progress)
    return VerifyOutcome(out, gate.checks, gate.summary, path, time.perf_counter() - t0, notes, ran,
                         report_error=report_error)


def _write_report(out: Path, notes: list[str], *, progress: bool) -> tuple[Path | None, str | None]:
    """Build the run's report; a failure of any kind is returned as a message, never raised, so
    that it cannot hide the verdict already stored (the caller prints both)."""
    # The report loads matplotlib and seaborn: imported only when a report is written.
    from robustbench_iqa.report import build_report

    try:
        res = build_report(out, progress=progress)
        record_written(res.out_dir, res.files)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - any report failure is shown after the verdict
        msg = " ".join(str(exc).split())
        if isinstance(exc, InputError):
            return None, msg
        import traceback

        where = out / REPORT_ERROR
        try:
            where.write_text(traceback.format_exc(), encoding="utf-8")
            return None, f"{type(exc).__name__}: {msg} (internal error; traceback in {where})"
        except OSError:
            return None, f"{type(exc).__name__}: {msg} (internal error)"
    notes += [n for n in res.notes if n not in notes]
    return res.html, None
