"""What a study receives from the runner: the run's settings, its plan, a workspace, a certified batch.

A study (:class:`robustbench_iqa.studies.base.Study`) is handed these by whoever runs it, and
sees them only through the protocols below: the runner's
:class:`~robustbench_iqa.runner.config.VerifyConfig`,
:class:`~robustbench_iqa.runner.plan.Plan` and
:class:`~robustbench_iqa.runner.workspace.Workspace` meet them structurally, so the studies sit
below the runner and never import it.  The concrete values a study itself builds and hands on
(:class:`Batch`, :class:`CertifiedBatch`) and the :class:`Stopwatch` that times it live here too.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from robustbench_iqa.studies.base import Unit

if TYPE_CHECKING:
    from robustbench_iqa.certify.defense import CertifiedDefense
    from robustbench_iqa.certify.result import CertifiedScore
    from robustbench_iqa.models.base import IQAModel


class DefenseSettings(Protocol):
    """The options of one defense name of the run (``[verify.defense.<name>]``) that a study reads."""

    @property
    def certify(self) -> Mapping[str, Any]:
        """Settings of the defense's ``certify`` (over the run-wide ``tau`` and ``eps``)."""
        ...


class RunConfig(Protocol):
    """The run's settings as a study reads them (met by :class:`~robustbench_iqa.runner.config.VerifyConfig`)."""

    @property
    def models(self) -> tuple[str, ...]: ...

    @property
    def n(self) -> int: ...

    @property
    def alpha(self) -> float: ...

    @property
    def seed(self) -> int: ...

    @property
    def batch_size(self) -> int: ...

    def section(self, study: str) -> Any:
        """The settings of ``study`` (its Config dataclass; defaults if not configured)."""
        ...

    def defense_cases(self) -> tuple[tuple[str, float], ...]:
        """The (defense, sigma) pairs of the run, in order."""
        ...

    def certified(self, defense: str) -> bool:
        """Whether ``defense`` has a certificate (the empirical ones predict only)."""
        ...

    def defense_table(self, name: str) -> DefenseSettings:
        """The options of defense name ``name``."""
        ...

    def globals(self) -> dict[str, Any]:
        """The run-wide settings by name."""
        ...


class StudyPlan(Protocol):
    """The plan of a run as a study reads it to list its units (met by :class:`~robustbench_iqa.runner.plan.Plan`)."""

    @property
    def cfg(self) -> RunConfig: ...

    def images(self, model: str, limit: int | None = None) -> list[str]:
        """The input identities of ``model``, in plan order (the first ``limit``)."""
        ...


@dataclass(frozen=True)
class Batch:
    """Inputs of one unit on the workspace's device: identities, names, images, references, labels."""

    ids: tuple[str, ...]
    names: tuple[str, ...]
    x: torch.Tensor
    ref: torch.Tensor | None
    targets: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx: list[int]) -> Batch:
        return Batch(tuple(self.ids[i] for i in idx), tuple(self.names[i] for i in idx), self.x[idx],
                     None if self.ref is None else self.ref[idx], tuple(self.targets[i] for i in idx))


@dataclass
class CertifiedBatch:
    """A batch just certified by the ``certify`` study, handed to ``stage = "certify"`` studies."""

    unit: Unit
    model: IQAModel
    defense: CertifiedDefense
    batch: Batch
    certificates: list[CertifiedScore]
    clean_scores: torch.Tensor
    """The undefended model's scores of the clean images (B,)."""


class StudyWorkspace(Protocol):
    """Models, defenses, inputs and seeds as a study uses them to run one unit (met by
    :class:`~robustbench_iqa.runner.workspace.Workspace`)."""

    @property
    def cfg(self) -> RunConfig: ...

    @property
    def device(self) -> torch.device: ...

    def model(self, name: str) -> IQAModel: ...

    def defense(self, model: str, name: str, sigma: float) -> CertifiedDefense: ...

    def batch(self, model: str, ids: tuple[str, ...]) -> Batch:
        """The images ``ids`` (input identities of the plan) as one batch on the device."""
        ...

    def generator(self, unit: Unit, *parts: object) -> torch.Generator:
        """A fresh generator on the device, seeded from the run seed, the unit's key and ``parts``."""
        ...

    def warm_up(self, model: str, defense: str, sigma: float, batch: Batch) -> None:
        """Run the model and defense once before anything is timed."""
        ...

    def timed(self, step: str) -> AbstractContextManager[None]:
        """Add the wall seconds of the block to the unit's time of ``step``."""
        ...

    def tick(self, fraction: float) -> None:
        """Report the fraction of the unit's images done."""
        ...


class Stopwatch:
    """Seconds of a block, synchronising the device so that GPU time is counted."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0

    def __enter__(self) -> Stopwatch:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - self._t0
