"""The cost model: seconds per image from a store's units, projected hours, the paper's Tables 1-2."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustbench_iqa.errors import InputError
from robustbench_iqa.runner.cost import TABLES_1_2, paper_hours, project, run_inputs, unit_costs
from robustbench_iqa.store import ResultsStore, RowKey


def _store(tmp_path: Path) -> ResultsStore:
    store = ResultsStore.open(tmp_path, {"kind": "test"})
    # certify: 3 units of 4 images of the run's 10 inputs (the first unit also built the model) + one of 2.
    for i, (images, seconds) in enumerate([(4, 40.0), (4, 8.0), (2, 4.0)]):
        store.put_unit(f"certify/m/fs-iqa/0.25//{i}", study="certify",
                       info={"model": "m", "defense": "fs-iqa", "sigma": 0.25, "part": "", "images": images},
                       rows=[(RowKey("guarantee", "m", "fs-iqa", 0.25, f"img{i}"), {"score": 1.0})],
                       seconds=seconds, worker="w")
    # beyond at one norm: 2 images (a limit of its own), 1 s each.
    store.put_unit("beyond/m/none/0//l2=0.1", study="beyond",
                   info={"model": "m", "defense": "none", "sigma": 0.0, "part": "l2=0.1", "images": 2},
                   rows=[], seconds=2.0, worker="w")
    return store


def test_seconds_per_image_are_medians_over_units_and_scale_to_the_target(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        costs = unit_costs(store)
        inputs = run_inputs(store)
    assert inputs == {"m": 10}
    cert = costs[costs["study"] == "certify"].iloc[0]
    assert (cert["units"], cert["images"], cert["seconds"]) == (3, 10, 52.0)
    assert cert["s_per_image"] == pytest.approx(2.0)  # median of 10, 2, 2: the model build does not count
    out = project(costs, inputs=inputs, images=1000, workers=4, efficiency=0.5)
    cert, beyond = out[out["study"] == "certify"].iloc[0], out[out["study"] == "beyond"].iloc[0]
    assert cert["projected_images"] == 1000 and beyond["projected_images"] == 2  # beyond keeps its own limit
    assert cert["projected_hours"] == pytest.approx(2.0 * 1000 / 3600)
    assert out["wall_hours"].iloc[0] == pytest.approx((2000 + 2) / 3600 / (4 * 0.5))


def test_the_papers_tables_1_2_workload() -> None:
    nr, fr = TABLES_1_2
    # Table 1: 3 x 4.2 + 2 x 7.9 + 6.9 = 35.3 s per image per (model, sigma); 2,015 test images.
    assert paper_hours(nr, gpus=1) == pytest.approx(35.3 * 9 * 2015 / 3600)  # ~178 A100-hours
    assert paper_hours(fr, gpus=8) == pytest.approx((3 * 6.9 + 2 * 10.5 + 7.5) * 9 * 2000 / 3600 / 8)
    with pytest.raises(InputError, match="workers must be >= 1"):
        paper_hours(nr, gpus=0)
    with pytest.raises(InputError, match="efficiency"):
        paper_hours(nr, gpus=1, efficiency=1.5)


def test_an_empty_store_has_no_costs(tmp_path: Path) -> None:
    with ResultsStore.open(tmp_path, {"kind": "test"}) as store, pytest.raises(InputError, match="no units"):
        unit_costs(store)
