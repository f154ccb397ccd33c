"""The suite grows one file at a time: a toy defense and a toy study run through verify, untouched.

Also the seams a research repo meets: its own ``analysis/`` (or ``certify/``, ``attacks/``) folder
shadows nothing of the suite, ``robustbench_iqa.analysis`` imports no torch, ``--help`` answers at once,
and every package folder of the source tree is installed.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from robustbench_iqa.certify.defense import DEFENSES, Estimate, Statistic
from robustbench_iqa.certify.result import CertifiedScore, Guarantee
from robustbench_iqa.runner import VerifyConfig, run_verify
from robustbench_iqa.store import ResultsStore
from robustbench_iqa.studies.base import (
    STUDIES,
    Check,
    Record,
    Row,
    RunData,
    Study,
    Unit,
    batched,
    finite,
    record,
)

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------- a toy defense
@dataclass(frozen=True)
class _NoSettings:
    pass


class ClippedMeanDefense(torch.nn.Module):
    """Mean of the model's score under input noise, bounded trivially by its score range (a toy)."""

    statistic = Statistic.MEAN
    eot_aggregate = "mean"
    certify_settings = _NoSettings

    def __init__(self, model: Any, *, sigma: float) -> None:
        super().__init__()
        self.model, self.sigma = model, sigma
        self.mode, self.lower_better, self.score_range = model.mode, model.lower_better, (0.0, 1.0)
        self.name = f"toy-mean({model.name})"

    def noisy_scores(self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        e = torch.randn((x.shape[0], n, *x.shape[1:]), generator=generator) * self.sigma
        z = (x[:, None] + e).clamp(0, 1).reshape(-1, *x.shape[1:])
        r = None if ref is None else ref[:, None].expand(-1, n, *ref.shape[1:]).reshape(-1, *ref.shape[1:])
        return self.model(z, r).reshape(x.shape[0], n).clamp(0, 1)

    def predict(self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.noisy_scores(x, ref, n=n, generator=generator).mean(dim=1)

    def certify(self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int, alpha: float,
                generator: torch.Generator | None = None) -> list[CertifiedScore]:
        s = self.predict(x, ref, n=n, generator=generator)
        return [CertifiedScore(float(v), 0.0, 1.0, 0.1, False, guarantee=Guarantee.MEAN_BOUNDS, defense="toy")
                for v in s]

    def estimate(self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int, confidence: float,
                 generator: torch.Generator | None = None) -> list[Estimate]:
        v = self.noisy_scores(x, ref, n=n, generator=generator).detach().double()
        half = math.sqrt(math.log(2 / (1 - confidence)) / (2 * n))
        return [Estimate(float(m), float(m) - half, float(m) + half, n, confidence) for m in v.mean(dim=1)]

    def audit_premise(self, x: Any, ref: Any, certificates: list[Any], *, attacked: Any, steps: int,
                      generator: Any = None) -> list[dict[str, float]]:
        return [{} for _ in certificates]

    def identity(self) -> dict[str, Any]:
        return {"defense": "toy-mean", "sigma": self.sigma, "artifact_sha256": None}


# ----------------------------------------------------------------- a toy study
@dataclass(frozen=True)
class BrightnessRow(Row):
    table = "brightness"
    mean: float = finite(math.nan)
    score: float = math.nan


@dataclass(frozen=True)
class BrightnessConfig:
    max_mean: float = 1.0


class BrightnessStudy(Study):
    """Records each image's mean brightness next to the defended score; fails if any exceeds max_mean."""

    name = "brightness"
    title = "Brightness"
    tables = (BrightnessRow,)
    Config = BrightnessConfig

    def units(self, plan: Any) -> list[Unit]:
        cfg = plan.cfg
        return [Unit(self.name, m, d, float(s), ids) for m in cfg.models for s in cfg.sigmas()
                for d in cfg.defenses for ids in batched(plan.images(m), cfg.batch_size)]

    def run(self, unit: Unit, ws: Any) -> list[Record]:
        b = ws.batch(unit.model, unit.images)
        pred = ws.defense(unit.model, unit.defense, unit.sigma).predict(
            b.x, b.ref, n=20, generator=ws.generator(unit))
        return [record(BrightnessRow(float(b.x[i].mean()), float(pred[i])), unit, image)
                for i, image in enumerate(b.ids)]

    def checks(self, data: RunData, cfg: Any) -> list[Check]:
        limit = cfg.section(self.name).max_mean
        return [Check("brightness", *g, bool((df["mean"] <= limit).all()), f"max {df['mean'].max():.3f}")
                for g, df in data.groups(BrightnessRow)]


def test_a_new_defense_and_study_run_through_verify_without_touching_other_files(tmp_path: Path) -> None:
    with DEFENSES.override("toy-mean", ClippedMeanDefense, space="input", statistic="mean"), \
            STUDIES.override("brightness", BrightnessStudy, stage=None, default=False, tables=("brightness",)):
        table = {"models": ["default-nr"], "defenses": ["toy-mean"], "limit": 3, "n": 50, "batch_size": 2,
                 "studies": ["certify", "audit", "brightness"],
                 "audit": {"n": 200, "steps": 2, "eot": 2, "resample_n": 0},
                 "brightness": {"max_mean": 0.99}}
        outcome = run_verify(VerifyConfig.from_mapping(table), tmp_path / "run", report=True, progress=False)
        names = {c.name for c in outcome.checks}
        assert {"brightness", "certificate audit", "abstentions", "finite (brightness)"} <= names
        assert outcome.passed, outcome.failures
        with ResultsStore.open(tmp_path / "run") as store:
            assert store.count("brightness") == 3 and store.count("audit") == 3
            assert store.config["sections"]["brightness"] == {"max_mean": 0.99}
        # Its settings are typed from the dataclass: a wrong type or key is refused.
        with pytest.raises(Exception, match="verify.brightness.max_mean"):
            VerifyConfig.from_mapping({**table, "brightness": {"max_mean": "high"}})
        with pytest.raises(Exception, match="did you mean 'max_mean'"):
            VerifyConfig.from_mapping({**table, "brightness": {"max_maen": 1.0}})
    assert "brightness" not in STUDIES and "toy-mean" not in DEFENSES


# ------------------------------------------------ a study staged after certify
@dataclass(frozen=True)
class SeenRow(Row):
    table = "seen"
    lower: float = math.nan


class SeenStudy(Study):
    """Staged after certify: records the lower bound of each certificate it is handed."""

    name = "seen"
    tables = (SeenRow,)
    stage = "certify"
    default = False

    def on_certified(self, batch: Any, ws: Any) -> list[Record]:
        return [record(SeenRow(float(c.lower) if c.lower is not None else math.nan), batch.unit, image)
                for c, image in zip(batch.certificates, batch.batch.ids)]


def test_the_runner_hands_the_certified_batch_to_the_staged_studies(tmp_path: Path) -> None:
    """The certify study returns its rows and its batch; the runner, not the study, runs the staged ones."""
    from robustbench_iqa.runner.executor import run_unit
    from robustbench_iqa.runner.plan import Plan
    from robustbench_iqa.runner.workspace import CertifiedBatch, Workspace

    with STUDIES.override("seen", SeenStudy, stage="certify", default=False, tables=("seen",)):
        cfg = VerifyConfig.from_mapping({"models": ["default-nr"], "defenses": ["ms"], "limit": 2, "n": 200,
                                         "alpha": 0.99, "studies": ["certify", "seen"]})
        ws = Workspace(cfg)
        unit = next(u for u in Plan.build(cfg, ws).units() if u.study == "certify")
        own, batch = STUDIES.create("certify").run_stage(unit, ws)
        assert isinstance(batch, CertifiedBatch) and {r.key.table for r in own} == {"correlation", "guarantee"}
        rows = run_unit(unit, ws).rows
        seen = {k.image: p["lower"] for k, p in rows if k.table == "seen"}
        lowers = {k.image: p["lower"] for k, p in rows if k.table == "guarantee"}
        assert seen == lowers and len(seen) == 2


# ---------------------------------------------------------- installation seams
def test_a_research_repos_own_folders_shadow_nothing(tmp_path: Path) -> None:
    """A working directory with its own analysis/, certify/ and attacks/ packages (on sys.path first)."""
    for name in ("analysis", "certify", "attacks"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("ORIGIN = 'research repo'\n")
    (tmp_path / "analysis" / "audit.py").write_text("x = 1\n")
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, '.')
        import analysis.audit, certify, attacks  # the research repo's own modules are the ones found
        assert analysis.audit.x == 1 and certify.ORIGIN == attacks.ORIGIN == 'research repo'
        from robustbench_iqa.runner.gate import evaluate
        from robustbench_iqa.analysis.audit import verdict
        from robustbench_iqa.certify import create_defense
        from robustbench_iqa.attacks import create_attack
        import robustbench_iqa.analysis as ra
        assert not hasattr(ra, 'ORIGIN') and ra.__name__ == 'robustbench_iqa.analysis'
        print('ok')
    """)
    env = {**os.environ, "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_analysis_imports_no_torch_and_help_is_fast() -> None:
    code = ("import sys, time; import robustbench_iqa.analysis, robustbench_iqa.analysis.audit, "
            "robustbench_iqa.analysis.correlation; print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "False", proc.stderr
    # --help and an argument error: CPU time of the whole process, well under a second.
    for args in (["--help"], ["certify", "--help"], ["verify", "--limit", "0"], ["attack", "--n", "x"]):
        probe = ("import resource, sys, runpy; sys.argv = ['robustbench-iqa', *sys.argv[1:]]\n"
                 "try:\n    from robustbench_iqa.cli import main; code = main(sys.argv[1:])\n"
                 "except SystemExit as e:\n    code = e.code\n"
                 "r = resource.getrusage(resource.RUSAGE_SELF); print(r.ru_utime + r.ru_stime)\n"
                 "import sys as s; print('torch' in s.modules)")
        proc = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True)
        lines = proc.stdout.strip().splitlines()
        cpu, torch_loaded = float(lines[-2]), lines[-1]
        assert torch_loaded == "False" and cpu < 1.0, (args, cpu, proc.stderr[-300:])


def test_every_package_folder_is_installed() -> None:
    """Every package folder is listed in pyproject, and the top-level folders certify/, attacks/
    and analysis/ are reached through links inside robustbench_iqa/ (one tree for every tool)."""
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "package-dir" not in cfg
    pkg = REPO / "robustbench_iqa"
    folders = {"robustbench_iqa"}
    for name in sorted(p.name for p in pkg.iterdir() if (p / "__init__.py").is_file()):
        folders.add(f"robustbench_iqa.{name}")
    for top in ("certify", "attacks", "analysis"):
        link = pkg / top
        assert link.is_symlink() and link.resolve() == (REPO / top).resolve(), top
    assert folders == set(cfg["packages"])


def test_a_clone_imports_its_own_code_throughout(tmp_path: Path) -> None:
    """With the shared environment's editable install pointing elsewhere, a second checkout run
    from its own root imports robustbench_iqa *and* its certify/attacks/analysis from itself."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    for top in ("certify", "attacks", "analysis"):
        link = clone / "robustbench_iqa" / top
        if not link.exists():  # the clone predates the links (not committed yet): make them
            link.symlink_to(Path("..") / top)
    probe = ("import robustbench_iqa, robustbench_iqa.certify as c, robustbench_iqa.attacks as a, "
             "robustbench_iqa.analysis as n; print(robustbench_iqa.__file__); print(c.__file__); "
             "print(a.__file__); print(n.__file__)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=clone, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(clone)})
    assert out.returncode == 0, out.stderr[-500:]
    for line in out.stdout.split():
        assert Path(line).absolute().is_relative_to(clone), line
