"""The benchmark's settings, its targets and its rows: what a run is asked and what it returns.

See :mod:`robustbench_iqa.bench.harness` for the cases and the budgets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from robustbench_iqa.bench.timing import CLOCKS, Target
from robustbench_iqa.certify.bounds import min_samples
from robustbench_iqa.errors import InputError

DEFAULT_MODELS: tuple[str, ...] = ("default-nr", "default-fr", "st-lpips-alex", "dbcnn", "lpips")
PREDICT_TARGET = Target(1.2, "<= 1.2x forward")
CERTIFY_TARGET = Target(20.0, "<= 20x forward, norm within 1%")
MS_TARGET_FACTOR = 1.1
ATTACK_TARGET = Target(1.05, "<= 1.05x torchattacks BIM")
SPECTRAL_ACCURACY = 0.01
REFERENCE_RTOL = 1e-6
REFERENCE_STARTS = 3
REFERENCE_SEED_OFFSET = 1_000_003
REFERENCE_DELTA = 1e-3
EXACT_MAX_JACOBIAN = 2**25
"""The reference is the exact SVD when the Jacobian (m x 3HW) has at most this many entries."""
UPPER_METHOD = "lanczos-upper"
"""A ``--methods`` entry: Lanczos with its upper bound at ``BOUND_DELTA`` (``bound_iter`` products)."""
BOUND_DELTA = 1e-3
SPECTRAL_METHODS = ("power", "lanczos", "exact", UPPER_METHOD)
CERTIFY_ALPHA = 0.999
WARMUP_ITER = 1
"""Spectral iterations of the untimed warm-up certification (it exercises the code; its time is the first cost estimate)."""


@dataclass(frozen=True)
class BenchConfig:
    """Settings of one benchmark run (see ``robustbench-iqa bench --help``)."""

    models: tuple[str, ...] = DEFAULT_MODELS
    size: tuple[int, int] = (384, 512)
    exact_size: tuple[int, int] = (48, 64)
    device: str = "cpu"
    repeats: int = 3
    warmup: int = 1
    fs_n: int = 2000
    ms_n: int = 2000
    dms_n: int = 2000
    batch_size: int = 16
    denoiser: tuple[int, int] = (17, 64)
    memory_n: tuple[int, ...] = (500, 2000, 8000)
    methods: tuple[str, ...] = ("power", "lanczos")
    rtol: float = 1e-3
    max_iter: int = 200
    sigma: float = 0.25
    seed: int = 0
    memory: bool = True
    exact: bool = True
    budget_s: float = 60.0
    case_budget_s: float = 30.0
    model_budget_s: float = 150.0
    peers: bool = True
    attack_steps: int = 10
    clock: str = "wall"
    progress: bool = True

    def validate(self) -> BenchConfig:
        for name in ("repeats", "fs_n", "ms_n", "dms_n", "batch_size", "max_iter", "attack_steps"):
            if getattr(self, name) < 1:
                raise InputError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise InputError(f"warmup must be >= 0, got {self.warmup}")
        if any(v < 8 for v in (*self.size, *self.exact_size)):
            raise InputError(f"image sizes must be at least 8x8, got {self.size} and {self.exact_size}")
        if not self.models:
            raise InputError("no models to benchmark")
        if not (0 < self.rtol < 1):
            raise InputError(f"rtol must be in (0, 1), got {self.rtol}")
        unknown = [m for m in self.methods if m not in SPECTRAL_METHODS]
        if unknown:
            raise InputError(f"unknown spectral-norm method(s) {', '.join(unknown)}; choose from {', '.join(SPECTRAL_METHODS)}")
        need = min_samples(sigma=self.sigma, eps=self.sigma, alpha=CERTIFY_ALPHA)
        if min(self.fs_n, *self.memory_n) < need:
            raise InputError(f"FS-IQA certification at alpha={CERTIFY_ALPHA} needs N >= {need}; "
                             f"got fs-n={self.fs_n}, memory-n={','.join(map(str, self.memory_n))}")
        for name in ("case_budget_s", "model_budget_s", "budget_s"):
            if not (getattr(self, name) > 0):
                raise InputError(f"{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.clock not in CLOCKS:
            raise InputError(f"clock must be one of {', '.join(CLOCKS)}, got {self.clock!r}")
        if self.clock == "cpu" and torch.device(self.device).type != "cpu":
            raise InputError("the cpu clock measures CPU time; use --clock wall on a GPU")
        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"device {self.device!r} requested but CUDA is not available")
        return self


@dataclass
class CaseResult:
    """One row of the benchmark: a case of one model."""

    model: str
    case: str
    size: tuple[int, int]
    n: int | None
    ms: float | None
    ratio: float | None
    target: str | None = None
    met: bool | None = None
    peak_mb: float | None = None
    runs_ms: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "case": self.case, "size": list(self.size), "n": self.n, "ms": self.ms,
            "ratio": self.ratio, "target": self.target, "met": self.met, "peak_mb": self.peak_mb,
            "runs_ms": self.runs_ms, **self.extra,
        }


@dataclass
class BenchRun:
    """All rows of a run, the models that could not be measured, and the configuration."""

    config: BenchConfig
    rows: list[CaseResult] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    capped: dict[str, str] = field(default_factory=dict)
    """Cases run at a smaller N than asked, or skipped, to bound their cost (see :mod:`~robustbench_iqa.bench.plan`)."""
    notes: dict[str, str] = field(default_factory=dict)
    spent_s: dict[str, float] = field(default_factory=dict)
    """Seconds each stage of each model took, on the budgets' clock (:func:`~robustbench_iqa.bench.budget.cost_clock`)."""

