"""The benchmark's bounded cost per case: N capped or the case skipped, always said."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from robustbench_iqa.bench import model_cases
from robustbench_iqa.bench.plan import PlannedN, plan_n
from robustbench_iqa.cli import main
from robustbench_iqa.errors import InputError


def test_plan_runs_the_requested_n_when_it_fits() -> None:
    # 2000 draws x 10 ms x 3 repeats = 60 s: exactly the budget.
    assert plan_n(2000, per_draw_s=0.01, budget_s=60.0, batch_size=16, repeats=3) == PlannedN(2000, 2000)


def test_plan_caps_to_whole_batches_by_hand() -> None:
    # 2000 draws x 0.5 s = 1000 s > 60 s; one batch of 16 costs 8 s, so 7 batches (56 s) fit: N = 112.
    p = plan_n(2000, per_draw_s=0.5, budget_s=60.0, batch_size=16)
    assert p.n == 112 and p.requested == 2000 and not p.skipped
    assert p.reason is not None and "2000" in p.reason and "112" in p.reason
    # Repeats count: 2 repeats halve what fits (3 batches, 48 s of 60 s).
    assert plan_n(2000, per_draw_s=0.5, budget_s=60.0, batch_size=16, repeats=2).n == 48
    # Brute force: the planned N is the largest multiple of the batch whose cost fits.
    for per_draw in (0.001, 0.03, 0.2, 1.7):
        for budget in (1.0, 10.0, 100.0):
            p = plan_n(500, per_draw_s=per_draw, budget_s=budget, batch_size=16, repeats=2)
            fits = [k for k in range(16, 501, 16) if k * per_draw * 2 <= budget]
            want = 500 if 500 * per_draw * 2 <= budget else (max(fits) if fits else None)
            assert p.n == want, (per_draw, budget, p)


def test_plan_skips_when_one_batch_is_over_budget() -> None:
    p = plan_n(2000, per_draw_s=10.0, budget_s=60.0, batch_size=16)
    assert p.skipped and p.reason is not None and p.reason.startswith("skipped")


@pytest.mark.parametrize("kw", [{"per_draw_s": -1.0}, {"per_draw_s": float("nan")}, {"budget_s": 0.0}])
def test_plan_refuses_bad_input(kw: dict[str, Any]) -> None:
    args: dict[str, Any] = {"per_draw_s": 0.1, "budget_s": 1.0, "batch_size": 4, **kw}
    with pytest.raises(InputError):
        plan_n(8, **args)


def _bench(tmp_path: Path, *extra: str) -> dict[str, Any]:
    out = tmp_path / "bench.json"
    code = main(["bench", "--quick", "--no-memory", "--no-exact", "--no-progress", "--clock", "cpu",
                 "--models", "default-nr", "--methods", "lanczos", "--json-out", str(out), *extra])
    assert code == 0
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def test_bench_caps_sampling_cases_and_prints_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # Every draw "costs" 1 s and every case runs twice (--quick: one warm-up, one timed run; the
    # warm-up counts): with N = 8 for MS, 4 for DMS, batches of 4 and a 9 s budget (less the
    # probe's time), MS is capped to one batch (4 draws x 2 runs = 8 s) and DMS runs in full.
    seen: list[float] = []

    def fixed(requested: int, *, per_draw_s: float, **kw: Any) -> PlannedN:
        seen.append(per_draw_s)
        return plan_n(requested, per_draw_s=1.0, **kw)

    monkeypatch.setattr(model_cases, "plan_n", fixed)
    doc = _bench(tmp_path, "--case-budget-s", "9")
    assert seen and all(s > 0 for s in seen)  # the planner saw measured per-draw costs
    ns = {r["case"]: r["n"] for r in doc["rows"] if r["n"] is not None}
    assert ns["ms-predict"] == ns["ideal-forwards"] == 4
    assert ns["dms-predict"] == ns["ideal-dms"] == 4
    assert [k for k in doc["capped"] if "ms-predict" in k] == ["default-nr/ms-predict n=8"]
    out = capsys.readouterr().out
    assert "bounded cost: default-nr/ms-predict n=8: N capped from 8 to 4" in out


def test_bench_skips_a_case_over_budget_and_prints_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _bench(tmp_path, "--case-budget-s", "1e-9")
    cases = {r["case"] for r in doc["rows"]}
    assert not cases & {"ms-predict", "ideal-forwards", "dms-predict", "ideal-dms"}
    assert {"forward", "fs-predict", "fs-certify"} <= cases
    sampling = {k for k in doc["capped"] if "ms-predict" in k}
    assert sampling == {"default-nr/ms-predict n=8", "default-nr/dms-predict n=4"}
    out = capsys.readouterr().out
    assert out.count("bounded cost: ") == len(doc["capped"]) and "skipped: one batch" in out
