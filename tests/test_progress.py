"""The run's progress bar is weighted by each unit's expected cost: the time left is close to the
truth on mixed-cost work, never negative, and the bar never runs past its total."""

from __future__ import annotations

import random
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from robustbench_iqa.runner.config import VerifyConfig
from robustbench_iqa.runner.executor import UnitResult, execute
from robustbench_iqa.runner.progress import (
    FEATURE_FORWARDS,
    CostEstimate,
    WeightedProgress,
    prior_weight,
)
from robustbench_iqa.store import ResultsStore, RowKey
from robustbench_iqa.studies.base import Unit

N = 2000


def _units(defense: str, count: int, images: int = 8, study: str = "certify") -> list[Unit]:
    return [Unit(study, "m", defense, 0.25, tuple(f"{defense}{i}-{j}" for j in range(images)))
            for i in range(count)]


def test_prior_weights_an_input_space_defense_by_its_draws() -> None:
    fs, ms = _units("fs-iqa", 1)[0], _units("ms", 1)[0]
    assert prior_weight(fs, n=N, space="feature") == 1.0
    assert prior_weight(ms, n=N, space="input") == pytest.approx(N / FEATURE_FORWARDS)
    assert prior_weight(ms, n=10, space="input") == 1.0  # never below one forward pass per draw set
    est = CostEstimate(n=N)
    assert est.prior(ms) == pytest.approx(N / FEATURE_FORWARDS)  # read from the defense registry
    assert est.prior(_units("jpeg", 1)[0]) == 1.0  # a transform without noise draws
    assert est.prior(_units("fs-iqa", 1, study="stability")[0]) == pytest.approx(0.1)


def _true_seconds(unit: Unit) -> float:
    per_image = {"fs-iqa": 0.5, "ms": 40.0}[unit.defense]  # 80x: the prior's 100x is not exact
    return per_image * len(unit.images)


def test_time_left_on_mixed_cost_work_is_close_to_the_truth() -> None:
    """FS-IQA units first, then MS units 80x dearer per image: after the first FS-IQA unit the
    weighted estimate is within 30% of the true time left, where counting images is 40x off."""
    units = _units("fs-iqa", 6) + _units("ms", 6)
    state = WeightedProgress(units, CostEstimate(n=N))
    assert state.time_left(0.0) is None  # nothing measured yet: unknown, not a guess
    wall = 0.0
    for k, u in enumerate(units[:-1]):
        wall += _true_seconds(u)
        state.finish(u, _true_seconds(u))
        truth = sum(_true_seconds(v) for v in units[k + 1:])
        left = state.time_left(wall)
        assert left is not None and abs(left - truth) <= 0.3 * truth, (k, left, truth)
        by_images = wall / state.images_done * sum(len(v.images) for v in units[k + 1:])
        if k == 0:
            assert truth / by_images > 30  # what an image-counting bar says at this point
    state.finish(units[-1], _true_seconds(units[-1]))
    assert state.time_left(wall) == 0.0 and state.done == state.total


def test_progress_never_runs_past_its_total() -> None:
    rng = random.Random(0)
    units = _units("fs-iqa", 10) + _units("ms", 5, images=3) + _units("fs-iqa", 4, study="stability")
    state = WeightedProgress(units, CostEstimate(n=N))
    wall = 0.0
    for u in rng.sample(units, len(units)):
        for f in (-0.5, 0.2, 0.7, 1.0, 1.7):  # fractions a unit may report, even out of range
            state.tick(u, f)
            assert 0 <= state.done <= state.total
            left = state.time_left(wall + 1)
            assert left is None or left >= 0
        seconds = rng.uniform(0, 50)  # actual costs far from the expectation
        wall += seconds
        state.finish(u, seconds)
        assert 0 <= state.done <= state.total
        assert state.images <= state.images_total
    assert state.done == state.total and state.images == state.images_total


def test_a_resumed_run_starts_from_the_costs_it_measured(tmp_path: Path) -> None:
    with ResultsStore.open(tmp_path, {"kind": "test"}) as store:
        for i, seconds in enumerate([30.0, 10.0, 12.0]):
            u = _units("ms", 3, images=2)[i]
            store.put_unit(u.key, study="certify", info=u.info(),
                           rows=[(RowKey("guarantee", "m", "ms", 0.25, f"x{i}"), {"score": 1.0})],
                           seconds=seconds, worker="w")
        est = CostEstimate.for_run(store, VerifyConfig.from_mapping({"n": N}).validate())
    assert est.calibrated
    assert est.per_image(_units("ms", 1)[0]) == pytest.approx(6.0)  # median of 15, 5, 6 s per image
    assert est.expected(_units("ms", 1, images=4)[0]) == pytest.approx(24.0)


class _Fake:
    """An executor that reports progress inside each unit and takes no time."""

    name = "fake"

    def start(self) -> None:
        pass

    def map(self, units: Sequence[Unit], *, tick=None) -> Iterator[UnitResult]:  # type: ignore[no-untyped-def]
        for u in units:
            for f in (0.25, 0.5, 1.0, 1.0000001):
                if tick is not None:
                    tick(u, f)
            yield UnitResult(u, [(RowKey("custom", u.model, u.defense, u.sigma, u.images[0]), {"v": 1})],
                             _true_seconds(u) / 1000, "w")

    def close(self) -> None:
        pass


def test_the_bar_shows_no_warning_and_no_negative_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    units = _units("fs-iqa", 5) + _units("ms", 3)
    cfg = VerifyConfig.from_mapping({"n": N}).validate()
    with ResultsStore.open(tmp_path, {"kind": "test"}) as store, warnings.catch_warnings():
        warnings.simplefilter("error")  # a TqdmWarning ("clamping frac") would fail here
        assert execute(store, cfg, units, _Fake(), progress=True) == len(units)
        assert execute(store, cfg, units, _Fake(), progress=True) == 0  # all stored: nothing left
    err = capsys.readouterr().err
    assert "<-" not in err and "clamping" not in err
    final = [s for s in re.split(r"[\r\n]", err) if "img" in s][-1]
    assert "100%" in final and "64/64 img" in final and "<00:00, " in final and "img/s]" in final
