"""The research-CI gate: certify, audit, stability and beyond-certificate studies, then checks.

:func:`run_verify` runs every (model, defense) of a :class:`VerifyConfig` into
the results store of ``out_dir`` (resumable), evaluates the checks of
:mod:`robustbench_iqa.runner.checks` from the store alone, optionally writes the
report (:func:`robustbench_iqa.analysis.report.build_report`), and returns a
:class:`VerifyOutcome` whose ``passed`` decides the exit code.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustbench_iqa.errors import InputError
from robustbench_iqa.runner import jobs
from robustbench_iqa.runner.checks import Check, all_checks, summary_rows
from robustbench_iqa.runner.config import VerifyConfig
from robustbench_iqa.runner.context import (
    build_defense,
    build_model,
    check_checkpoint_keys,
    checkpoint_identity,
    dataset_settings,
    load_images,
    weights_identity,
)
from robustbench_iqa.store import RESULTS_FILE, ResultsStore, run_config


@dataclass
class VerifyOutcome:
    """What the gate found: every check, the summary table, where the run and report are."""

    run_dir: Path
    checks: list[Check]
    summary: list[dict[str, Any]]
    report: Path | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]


def verify_run_config(cfg: VerifyConfig) -> dict[str, Any]:
    """The run configuration stored with the results: settings, weights hashes, versions."""
    return run_config(
        kind="verify", **cfg.to_dict(), data=dataset_settings(cfg),
        weights_sha256={m: weights_identity(cfg, m) for m in cfg.models},
        checkpoints_sha256={f"{m}:{d}@{s:g}": checkpoint_identity(cfg.at_sigma(s), m, d)
                            for m in cfg.models for d in cfg.defenses for s in cfg.sigmas()},
    )


def preflight(cfg: VerifyConfig) -> None:
    """Build every model and defense once before anything is written, so that a bad name or a
    missing checkpoint fails at once (exit 2) instead of midway through a run."""
    check_checkpoint_keys(cfg)
    for name in cfg.models:
        model = build_model(cfg, name)
        if not load_images(dataclasses.replace(cfg, limit=1), model):
            raise InputError(f"verify: dataset {cfg.dataset!r} ({cfg.split}) has no images")
        for sigma in cfg.sigmas():
            for dname in cfg.defenses:
                build_defense(cfg.at_sigma(sigma), model, dname)


def _remove_run(out: Path) -> None:
    """Delete what a run writes in ``out`` (the store and its report), nothing else."""
    for name in (RESULTS_FILE, RESULTS_FILE + "-wal", RESULTS_FILE + "-shm"):
        (out / name).unlink(missing_ok=True)
    if (out / "report").is_dir():
        shutil.rmtree(out / "report")


def open_run(out_dir: str | Path, cfg: VerifyConfig, *, resume: bool, fresh: bool) -> ResultsStore:
    out = Path(out_dir)
    if (out / RESULTS_FILE).exists() and not fresh:
        with ResultsStore.open(out) as old:
            empty = old.count() == 0
        fresh = empty  # a run that never wrote a row holds nothing to keep
    if fresh:
        _remove_run(out)
    if not resume and (out / RESULTS_FILE).exists():
        raise InputError(f"{out} already holds a run: pass --resume to continue it, --fresh to start "
                         f"over, or --out to write elsewhere")
    try:
        return ResultsStore.open(out, verify_run_config(cfg), resume=resume)
    except InputError as exc:
        raise InputError(f"{exc} (or --fresh to start over)") from None


def run_verify(
    cfg: VerifyConfig, out_dir: str | Path, *, resume: bool = False, fresh: bool = False,
    report: bool = True, progress: bool = True,
) -> VerifyOutcome:
    """Run the gate (see the module docstring)."""
    cfg = cfg.validate()
    t0 = time.perf_counter()
    notes: list[str] = []
    preflight(cfg)
    with open_run(out_dir, cfg, resume=resume, fresh=fresh) as store:
        for name in cfg.models:
            model = build_model(cfg, name)
            images = load_images(cfg, model)
            if not images:
                raise InputError(f"verify: dataset {cfg.dataset!r} ({cfg.split}) has no images")
            for sigma in cfg.sigmas():
                sub = cfg.at_sigma(sigma)
                for dname in cfg.defenses:
                    defense = build_defense(sub, model, dname)
                    for job in (jobs.certify_and_audit, jobs.accuracy_seeds, jobs.stability, jobs.beyond):
                        job(store, sub, model, dname, defense, images, progress=progress)
        checks = all_checks(store, cfg)
        summary = summary_rows(store, cfg, checks)
        audited = {(c.model, c.defense) for c in checks if c.name == "certificate audit"}
        for m in cfg.models:
            for d in cfg.defenses:
                if (m, d) not in audited:
                    notes.append(f"{m} ({d}): no audit (its guarantee is not a bound on the smoothed output)")
    path = None
    if report:
        from robustbench_iqa.analysis.report import build_report  # matplotlib is loaded only here

        res = build_report(out_dir, progress=progress)
        path = res.html
        notes += res.notes
    return VerifyOutcome(Path(out_dir), checks, summary, path, time.perf_counter() - t0, notes)
