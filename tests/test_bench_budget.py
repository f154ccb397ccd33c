"""The benchmark's budgets: capped counts, repeats within a case budget, a model budget in priority order.

Costs are fake (a clock that only moves when a fake case says so), so no assertion depends on
how fast this machine is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from robustbench_iqa.bench import harness, model_cases, timing
from robustbench_iqa.bench.budget import BudgetExceeded, ModelBudget, time_limit
from robustbench_iqa.bench.plan import PlannedN, fits, plan_count
from robustbench_iqa.bench.timing import Target, time_call
from robustbench_iqa.cli import main
from robustbench_iqa.errors import InputError


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


# -- plan_count: the largest count whose estimated cost fits -------------------------------------

def test_plan_count_keeps_the_request_when_it_fits() -> None:
    # 1 s fixed + 2 runs x 10 steps x 0.45 s = 10 s: exactly the budget.
    assert plan_count(10, unit_s=0.45, budget_s=10.0, what="steps", runs=2, fixed_s=1.0) == PlannedN(10, 10)


def test_plan_count_caps_by_hand_and_by_brute_force() -> None:
    # 200 iterations x 0.5 s x 2 runs = 200 s > 30 s; (30 - 2) / (0.5 x 2) = 28 iterations fit.
    p = plan_count(200, unit_s=0.5, budget_s=30.0, what="max_iter", runs=2, fixed_s=2.0)
    assert p.n == 28 and p.reason is not None and p.reason.startswith("max_iter capped from 200 to 28")
    for unit in (0.01, 0.3, 2.0):
        for budget in (0.5, 5.0, 50.0):
            for fixed in (0.0, 1.0):
                p = plan_count(40, unit_s=unit, budget_s=budget, what="steps", runs=3, fixed_s=fixed, minimum=2)
                ok = [k for k in range(2, 41) if fixed + 3 * k * unit <= budget]
                want = 40 if 40 in ok else (max(ok) if ok else None)
                assert p.n == want, (unit, budget, fixed, p)
                assert (p.reason is None) == (want == 40)
                if want is None:
                    assert p.reason is not None and p.reason.startswith("skipped: steps=2")


@pytest.mark.parametrize("kw", [{"unit_s": -1.0}, {"unit_s": float("inf")}, {"budget_s": 0.0}, {"runs": 0},
                                {"fixed_s": float("nan")}])
def test_plan_count_refuses_bad_input(kw: dict[str, Any]) -> None:
    args: dict[str, Any] = {"unit_s": 0.1, "budget_s": 1.0, "what": "steps", **kw}
    with pytest.raises(InputError):
        plan_count(8, **args)


def test_fits_says_why_not() -> None:
    assert fits(30.0, budget_s=30.0, what="x") is None
    why = fits(30.5, budget_s=30.0, what="the memory subprocess")
    assert why is not None and why.startswith("skipped: the memory subprocess would take about 30.5 s")


# -- the model budget and time_call's repeats ----------------------------------------------------

def test_model_budget_on_a_fake_clock() -> None:
    clock = FakeClock()
    b = ModelBudget(100.0, now=clock)
    assert b.case_budget(30.0) == 30.0 and b.spent_reason() is None
    clock.t = 85.0
    assert b.case_budget(30.0) == pytest.approx(15.0)  # only what is left
    clock.t = 100.0
    why = b.spent_reason()
    assert why is not None and "budget of 100 s is spent (100 s used)" in why
    with pytest.raises(InputError):
        ModelBudget(0.0, now=clock)


def test_time_call_counts_the_warmup_and_stops_before_overrunning(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setitem(timing.CLOCKS, "fake", clock)
    calls = []

    def run(cost: float = 4.0) -> None:
        calls.append(cost)
        clock.t += cost

    # 1 warm-up (4 s) + runs of 4 s within 10 s: after the first timed run 8 s are spent and another
    # 4 s would overrun, so only one is timed although 5 were asked.
    t = time_call(run, repeats=5, warmup=1, budget_s=10.0, clock="fake")
    assert len(calls) == 2 and t.runs_ms == (4000.0,)
    calls.clear()
    t = time_call(run, repeats=5, warmup=1, budget_s=12.0, clock="fake")  # 4 + 4 + 4 = 12 fits
    assert len(calls) == 3 and len(t.runs_ms) == 2
    calls.clear()
    t = time_call(run, repeats=3, warmup=0, budget_s=1.0, clock="fake")  # at least one timed run
    assert len(calls) == 1


# -- the harness: priority order, skipped cases listed, unchecked norms never "met" --------------

def _config(**kw: Any) -> harness.BenchConfig:
    opts: dict[str, Any] = {
        "models": ("default-nr",), "size": (32, 48), "exact_size": (12, 12), "repeats": 1, "warmup": 0,
        "fs_n": 64, "ms_n": 4, "dms_n": 2, "batch_size": 2, "denoiser": (3, 8), "memory": False, "exact": False,
        "progress": False, "clock": "cpu", "methods": ("lanczos",), "max_iter": 64, **kw,
    }
    return harness.BenchConfig(**opts)


def test_a_slow_case_spends_the_model_budget_and_the_rest_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(model_cases, "cost_clock", lambda name: clock)

    def slow_peers(self: Any) -> Iterator[harness.CaseResult]:
        clock.t += 70.0  # the peers "take" 70 s of a 50 s model budget
        return iter(())

    monkeypatch.setattr(model_cases.ModelCases, "_peers", slow_peers)
    run = harness.run_bench(_config(model_budget_s=50.0, case_budget_s=30.0))
    cases = [r.case for r in run.rows]
    # The targets and the reference ran before the slow case; nothing after it.
    assert cases[:2] == ["forward", "fs-predict"]
    assert "fs-certify" in cases and any(r.extra.get("role") == "reference" for r in run.rows)
    assert not set(cases) & {"spectral-lanczos", "ms-predict", "dms-predict", "ideal-forwards", "ideal-dms"}
    skipped = {k: v for k, v in run.capped.items() if "model's budget" in v}
    assert set(skipped) == {"default-nr/spectral-lanczos", "default-nr/ms-predict", "default-nr/dms-predict"}
    assert all(v == "skipped: the model's budget of 50 s is spent (70 s used)" for v in skipped.values())
    cert = next(r for r in run.rows if r.case == "fs-certify")
    assert cert.extra["norm_checked"] is True  # its reference ran first


def test_an_unchecked_norm_is_never_reported_as_met(monkeypatch: pytest.MonkeyPatch) -> None:
    # A target any ratio meets: "met" would then hinge on the norm check alone.
    monkeypatch.setattr(model_cases, "CERTIFY_TARGET", Target(1e12, "<= 1e12x forward, norm within 1%"))
    # No time left after the targets: the reference is skipped, so the norm is not checked.
    monkeypatch.setattr(model_cases.ModelCases, "_reference", lambda self: iter(()))
    run = harness.run_bench(_config(peers=False))
    cert = next(r for r in run.rows if r.case == "fs-certify")
    assert not any(r.extra.get("role") == "reference" for r in run.rows)
    assert cert.met is None and cert.extra["norm_checked"] is False
    assert cert.extra["norm_check"] == "not checked: the reference was not measured"
    assert "rel_error" not in cert.extra

    # And when fs-certify spends the model's budget: the reference is skipped and listed, the norm
    # not checked.
    monkeypatch.undo()
    monkeypatch.setattr(model_cases, "CERTIFY_TARGET", Target(1e12, "<= 1e12x forward, norm within 1%"))
    clock = FakeClock()
    monkeypatch.setattr(model_cases, "cost_clock", lambda name: clock)
    certify = model_cases.ModelCases._fs_certify

    def spending(self: Any) -> Iterator[harness.CaseResult]:
        out = certify(self)
        clock.t += 1000.0
        return out

    monkeypatch.setattr(model_cases.ModelCases, "_fs_certify", spending)
    run = harness.run_bench(_config(model_budget_s=500.0, peers=False))
    cert = next(r for r in run.rows if r.case == "fs-certify")
    assert cert.met is None and cert.extra["norm_check"] == "not checked: the reference was not measured"
    assert run.capped["default-nr/spectral-reference"].startswith("skipped: the model's budget of 500 s")
    from robustbench_iqa.bench.report import format_table

    line = next(ln for ln in format_table(run).splitlines() if " fs-certify " in ln)
    assert "unchecked" in line and " yes " not in line


def test_a_capped_reference_that_did_not_converge_checks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_cases, "CERTIFY_TARGET", Target(1e12, "<= 1e12x forward, norm within 1%"))
    monkeypatch.setattr(model_cases, "EXACT_MAX_JACOBIAN", 0)  # as at 384x512: a Lanczos reference

    def one_iteration(requested: int, **kw: Any) -> PlannedN:
        return PlannedN(1, requested, "max_iter capped from 1024 to 1 (fake)") if requested == 1024 else \
            plan_count(requested, **kw)

    monkeypatch.setattr(model_cases, "plan_count", one_iteration)
    run = harness.run_bench(_config(peers=False))
    rows = {r.case: r for r in run.rows}
    ref = rows["spectral-reference"].extra
    assert ref["converged"] is False and ref["max_iter"] == 1 and "may not have converged" in ref["warning"]
    cert = rows["fs-certify"]
    assert cert.met is None and cert.extra["norm_checked"] is False
    assert "did not converge" in cert.extra["norm_check"]
    reason = run.capped["default-nr/spectral-reference"]
    assert reason.startswith("1 start(s) instead of 3")  # no count of starts fits: one start, capped
    assert reason.endswith("max_iter capped from 1024 to 1 (fake); bound: stopped unconverged")


def test_quick_bench_prints_and_writes_every_cap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, md = tmp_path / "b.json", tmp_path / "b.md"
    code = main(["bench", "--quick", "--no-memory", "--no-exact", "--no-progress", "--clock", "cpu",
                 "--models", "default-nr", "--methods", "lanczos", "--model-budget-s", "1e-6",
                 "--json-out", str(out), "--results-out", str(md)])
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["config"]["model_budget_s"] == 1e-6
    # The forward pass and fs-predict always run; the warm-up certification is stopped at once (no
    # budget left), so fs-certify is skipped, and so is the rest.
    assert {r["case"] for r in doc["rows"]} == {"forward", "fs-predict"}
    want = {f"default-nr/{c}" for c in ("spectral-reference", "peers", "spectral-lanczos", "ms-predict",
                                        "dms-predict")}
    assert set(doc["capped"]) == want | {"default-nr/warm-up", "default-nr/fs-certify"}
    assert doc["capped"]["default-nr/warm-up"].startswith("stopped: the warm-up certification")
    assert "--model-budget-s" in doc["capped"]["default-nr/warm-up"]
    assert doc["capped"]["default-nr/fs-certify"].startswith("skipped: the warm-up certification")
    printed = capsys.readouterr().out
    text = md.read_text()
    for key in want:
        assert f"bounded cost: {key}: skipped: the model's budget" in printed
        assert f"- bounded cost: {key}: skipped" in text
    assert "budgets: 30 s per case, 1e-06 s per model" in text


def test_a_tight_reference_budget_drops_starts_before_iterations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_cases, "EXACT_MAX_JACOBIAN", 0)  # as at 384x512: a Lanczos reference
    seen: list[int] = []

    def fake(requested: int, *, runs: int = 1, **kw: Any) -> PlannedN:
        if requested != 1024:
            return plan_count(requested, runs=runs, **kw)
        seen.append(runs)
        # Budget for 30 iterations in all: 10 per start with 3 starts, 15 with 2, 30 with 1.
        n = 30 // runs
        return PlannedN(n, requested, f"max_iter capped from 1024 to {n} (fake)")

    monkeypatch.setattr(model_cases, "plan_count", fake)
    run = harness.run_bench(_config(peers=False, fs_n=64))
    rows = {r.case: r for r in run.rows}
    cert_it = rows["fs-certify"].extra["iterations"]
    need = 2 * cert_it + 2
    # The most starts whose capped max_iter still reaches the iterations a start needs.
    want = next((k for k in (3, 2, 1) if 30 // k >= need), 1)
    assert want < 3  # default-nr needs 5-6 iterations at rtol 1e-3, so 12-14 here: the budget is tight
    assert seen == [3, 2, 1][: 4 - want]
    ref = rows["spectral-reference"].extra
    assert len(ref["seeds"]) == want and ref["max_iter"] == 30 // want
    reason = run.capped["default-nr/spectral-reference"]
    assert (f"{want} start(s) instead of 3" in reason) == (want < 3)


@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_time_limit_stops_a_long_call(clock: str) -> None:
    t0 = time.perf_counter()
    with pytest.raises(BudgetExceeded, match="over its limit"), time_limit(0.2, clock=clock):
        while True:  # busy: CPU time passes as fast as wall time
            pass
    assert time.perf_counter() - t0 < 5.0
    # A block that ends in time is untouched, and the timer is off afterwards.
    with time_limit(5.0, clock=clock):
        x = sum(range(1000))
    assert x == 499500
    time.sleep(0.05)
    with pytest.raises(BudgetExceeded):
        with time_limit(-1.0, clock=clock):
            pass
