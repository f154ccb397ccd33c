"""Progress and time left of a run, weighted by what each unit of work is expected to cost.

Units differ in cost by orders of magnitude: an input-space defense (MS, DMS) pushes
every one of its ``n`` noise draws through the whole model, FS-IQA one forward pass and
a few Jacobian products; a stability unit is a fraction of a certify unit.  Counting
images would move the bar at the cheap units' pace and then stall.  So the bar counts
expected seconds:

* a unit's expected cost is its images times the seconds per image of its group
  (study, model, defense, sigma, part): the median measured so far in this run's store
  (units already stored, e.g. before a ``--resume``, and units finished now), as
  :func:`robustbench_iqa.runner.cost.unit_costs` measures it;
* a group not measured yet gets a prior, :func:`prior_weight` (relative: a certify unit
  with FS-IQA is 1, an input-space defense ``n / FEATURE_FORWARDS`` times more, a
  stability unit 0.1), scaled to seconds by the median ratio of measured seconds to
  prior seen so far;
* finished units count with their measured seconds, running units with the fraction
  of their images done times their expectation, so the count never exceeds the total,
  and the time left is the expected seconds left times the wall seconds per compute
  second seen so far (below 1 with many workers).  Until a unit has finished it is
  unknown and shown as ``?``; it is never negative.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from robustbench_iqa.studies.base import Unit

if TYPE_CHECKING:
    from robustbench_iqa.runner.config import VerifyConfig
    from robustbench_iqa.store import ResultsStore

FEATURE_FORWARDS = 20.0
"""Forward-pass equivalents of one FS-IQA certificate (a forward pass, 2 x ~6 Jacobian products and
the noisy head scores; 12-28x a forward pass measured by ``robustbench-iqa bench``)."""

STUDY_WEIGHT = {"stability": 0.1}
"""Per-image cost of a study relative to a certify unit (with its audit) of the same defense;
studies not listed weigh 1 (the gate profile: certify with audit 0.44 s per image, beyond 0.46,
stability 0.04)."""

Group = tuple[str, str, str, float, str]


def group_of(unit: Unit) -> Group:
    return (unit.study, unit.model, unit.defense, float(unit.sigma), unit.part)


def prior_weight(unit: Unit, *, n: int, space: str | None) -> float:
    """Relative cost per image of ``unit`` before anything was measured.

    ``space`` is the defense's noise space (``"input"``: every draw is a forward pass of the
    whole model, so ``n / FEATURE_FORWARDS`` times a feature-space certificate).
    """
    draws = max(1.0, n / FEATURE_FORWARDS) if space == "input" else 1.0
    return STUDY_WEIGHT.get(unit.study, 1.0) * draws


def _space(defense: str) -> str | None:
    from robustbench_iqa.certify.defense import DEFENSES

    try:
        meta = DEFENSES.metadata(defense) if defense in DEFENSES else {}
        # a transform without noise (jpeg, ...) costs about one forward pass, whatever its space
        return str(meta.get("space")) if meta and meta.get("noise", True) else None
    except Exception:  # an unknown or lazily failing entry: no prior knowledge, weight 1
        return None


class CostEstimate:
    """Expected seconds of units: measured medians per group, else a scaled prior."""

    def __init__(self, *, n: int) -> None:
        self.n = n
        self.measured: dict[Group, list[float]] = defaultdict(list)
        self.ratios: list[float] = []
        self._spaces: dict[str, str | None] = {}

    @classmethod
    def for_run(cls, store: ResultsStore, cfg: VerifyConfig) -> CostEstimate:
        """Seeded with the units ``store`` already holds (a resumed run knows its costs)."""
        est = cls(n=cfg.n)
        frame = store.units_frame()
        for r in frame.to_dict("records") if not frame.empty else ():
            images = max(1, int(r.get("images") or 1))
            group = (str(r.get("study")), str(r.get("model")), str(r.get("defense", "none")),
                     float(r.get("sigma") or 0.0), str(r.get("part") or ""))
            est._record(group, float(r.get("seconds") or 0.0) / images)
        return est

    def prior(self, unit: Unit) -> float:
        if unit.defense not in self._spaces:
            self._spaces[unit.defense] = _space(unit.defense)
        return prior_weight(unit, n=self.n, space=self._spaces[unit.defense])

    def _record(self, group: Group, per_image: float) -> None:
        if math.isfinite(per_image) and per_image >= 0:
            self.measured[group].append(per_image)

    def observe(self, unit: Unit, seconds: float) -> None:
        """A finished unit's compute seconds."""
        per_image = seconds / max(1, len(unit.images))
        self._record(group_of(unit), per_image)
        prior = self.prior(unit)
        if prior > 0 and math.isfinite(per_image):
            self.ratios.append(per_image / prior)

    def per_image(self, unit: Unit) -> float:
        got = self.measured.get(group_of(unit))
        if got:
            return statistics.median(got)
        scale = statistics.median(self.ratios) if self.ratios else 1.0
        return self.prior(unit) * scale

    def expected(self, unit: Unit) -> float:
        return self.per_image(unit) * max(1, len(unit.images))

    @property
    def calibrated(self) -> bool:
        """Whether the expectations are in seconds (a unit of this run was measured)."""
        return bool(self.ratios) or bool(self.measured)


class WeightedProgress:
    """The state behind the bar: done and left in expected seconds, images, time left."""

    def __init__(self, units: Iterable[Unit], estimate: CostEstimate) -> None:
        self.estimate = estimate
        self.pending: dict[str, Unit] = {u.key: u for u in units}
        self.fraction: dict[str, float] = {}
        self.done_seconds = 0.0
        self.images_total = sum(max(1, len(u.images)) for u in self.pending.values())
        self.images_done = 0.0
        self._expected: dict[str, float] = {}
        self._reestimate()

    def _reestimate(self) -> None:
        self._expected = {k: self.estimate.expected(u) for k, u in self.pending.items()}

    def tick(self, unit: Unit, fraction: float) -> None:
        """A running unit reports the fraction of its images done (clamped to [0, 1])."""
        if unit.key in self.pending:
            self.fraction[unit.key] = min(max(float(fraction), 0.0), 1.0)

    def finish(self, unit: Unit, seconds: float) -> None:
        if self.pending.pop(unit.key, None) is None:
            return
        self.fraction.pop(unit.key, None)
        self.done_seconds += max(0.0, float(seconds))
        self.images_done += max(1, len(unit.images))
        self.estimate.observe(unit, seconds)
        self._reestimate()

    @property
    def left(self) -> float:
        """Expected seconds of compute left (running units: their part not done)."""
        return sum(e * (1.0 - self.fraction.get(k, 0.0)) for k, e in self._expected.items())

    @property
    def total(self) -> float:
        running = sum(e * self.fraction.get(k, 0.0) for k, e in self._expected.items())
        return self.done_seconds + running + self.left

    @property
    def done(self) -> float:
        """Seconds done: finished units as measured, running ones by their fraction (<= total)."""
        return self.total - self.left

    @property
    def images(self) -> float:
        running = sum(max(1, len(self.pending[k].images)) * f for k, f in self.fraction.items())
        return self.images_done + running

    def time_left(self, wall: float) -> float | None:
        """Seconds of wall time left, or None while no unit has been measured."""
        if not self.estimate.calibrated or self.done_seconds <= 0:
            return None if self.pending else 0.0
        return max(0.0, self.left * wall / max(self.done, self.done_seconds))
