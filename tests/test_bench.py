"""The benchmark harness: quick run end to end, ratio arithmetic, memory measurement.

No assertion depends on how fast anything ran (timings on a shared machine are noise).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from robustbench_iqa.bench import (
    BenchConfig,
    BenchRun,
    CaseKind,
    CaseResult,
    CaseSpec,
    SubjectSpec,
    Target,
    cpu_peak_mb,
    format_table,
    in_subprocess,
    measure_peak_mb,
    ratio,
    shortfalls,
    time_call,
)
from robustbench_iqa.cli import main
from robustbench_iqa.errors import InputError

QUICK_CASES = {
    "forward", "fs-predict", "fs-certify", "spectral-power", "spectral-lanczos", "spectral-exact",
    "ideal-forwards", "ms-predict", "ideal-dms", "dms-predict", "attack-ifgsm", "peer-bim",
}


def test_quick_run_writes_well_formed_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, md = tmp_path / "bench.json", tmp_path / "results.md"
    code = main(["bench", "--quick", "--no-memory", "--no-progress", "--clock", "cpu", "--models", "default-nr,no-such-model",
                 "--json-out", str(out), "--results-out", str(md)])
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["format"] == "robustbench_iqa.bench/1"
    assert {"cpu", "logical_cores", "torch"} <= set(doc["machine"])
    assert "no-such-model" in doc["unavailable"]
    rows = doc["rows"]
    assert {r["case"] for r in rows} == QUICK_CASES
    forward_ms = next(r["ms"] for r in rows if r["case"] == "forward")
    for r in rows:
        assert r["model"] == "default-nr"
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0, r
        assert math.isfinite(r["ms"]) and r["ms"] > 0, r
        # Small-input rows are ratios to the forward pass at their own size.
        unit = forward_ms if r["size"] == [32, 48] else r["forward_ms"]
        assert r["ratio"] == pytest.approx(r["ms"] / unit)
    forward = [r for r in rows if r["case"] == "forward"]
    assert [r["ratio"] for r in forward] == [1.0]
    cert = next(r for r in rows if r["case"] == "fs-certify")
    assert cert["iterations"] >= 1 and cert["target"].startswith("<= 20x")
    assert cert["products"] >= cert["iterations"]
    # At the quick main size the Jacobian is small: the reference is the exact SVD.
    main_ref = next(r for r in rows if r["size"] == [32, 48] and r.get("role") == "reference")
    assert main_ref["case"] == "spectral-exact" and main_ref["reference"] == "exact SVD"
    assert cert["rel_error"] == pytest.approx(abs(cert["norm"] - main_ref["norm"]) / main_ref["norm"])
    # The spectral methods are compared with the exact Jacobian on the small input.
    small = {r["case"]: r for r in rows if r["size"] == [12, 12]}
    assert set(small) == {"spectral-exact", "spectral-power", "spectral-lanczos"}
    assert small["spectral-lanczos"]["rel_error"] <= 1e-3
    assert small["spectral-lanczos"]["norm"] <= small["spectral-exact"]["norm"] * (1 + 1e-5)
    table = capsys.readouterr().out
    assert "fs-certify" in table and "peak MB" in table
    assert "| fs-certify |" in md.read_text()


def test_ratio_and_targets_by_hand() -> None:
    # 450 ms against a 15 ms forward pass is 30 forward passes: exactly at a 30x target.
    assert ratio(450.0, 15.0) == 30.0
    target = Target(30.0, "<= 30x")
    assert target.met(ratio(450.0, 15.0))
    assert not target.met(ratio(451.5, 15.0))
    assert target.shortfall(ratio(900.0, 15.0)) == pytest.approx(2.0)
    # MS: 2000 draws at 1.1x the ideal 2000 forwards.
    ms_target = Target(1.1 * ratio(2000 * 15.0, 15.0), "<= 1.1x")
    assert ms_target.limit == pytest.approx(2200.0)
    with pytest.raises(InputError):
        ratio(1.0, 0.0)
    with pytest.raises(InputError):
        ratio(float("nan"), 1.0)


def test_table_reports_missed_targets() -> None:
    run = BenchRun(config=BenchConfig(models=("m",)))
    run.rows = [
        CaseResult("m", "forward", (8, 8), None, 10.0, 1.0),
        CaseResult("m", "fs-certify", (8, 8), 2000, 600.0, 60.0, target="<= 30x", met=False,
                   extra={"over_target": Target(30.0, "").shortfall(60.0), "rel_error": 0.0}),
    ]
    text = format_table(run)
    assert "NO" in text and "2.00x over target" in text
    assert shortfalls(run) == ["target missed: m fs-certify (<= 30x): ratio 60.0, 2.00x over the limit"]


def test_time_call_median_of_repeats_after_warmup() -> None:
    calls = {"run": 0, "warm": 0}

    def run() -> int:
        calls["run"] += 1
        return calls["run"]

    def warm() -> None:
        calls["warm"] += 1

    t = time_call(run, repeats=5, warmup=2, warm_fn=warm)
    assert calls == {"run": 5, "warm": 2}
    assert len(t.runs_ms) == 5 and t.result == 5
    assert t.median_ms == sorted(t.runs_ms)[2]
    with pytest.raises(InputError):
        time_call(run, repeats=0)


_SIZE_MB = 64


def _peak_of_a_large_allocation() -> float:
    def allocate() -> float:
        x = torch.ones(_SIZE_MB * 1024 * 1024 // 4)  # touched pages: resident
        return float(x[-1])

    return cpu_peak_mb(allocate)


def test_cpu_peak_sees_a_large_allocation() -> None:
    # In a fresh process, as the harness measures: in this one, earlier tests leave freed but
    # resident pages that the allocation may reuse without raising the RSS.
    peak = in_subprocess(_peak_of_a_large_allocation)
    assert _SIZE_MB * 0.9 <= peak <= _SIZE_MB * 3


def test_memory_of_a_case_in_a_subprocess_is_positive() -> None:
    spec = SubjectSpec(model="default-nr", size=(16, 16))
    peak = in_subprocess(measure_peak_mb, CaseSpec(subject=spec, kind=CaseKind.FS_PREDICT, n=2000))
    # 2000 noisy 512-d feature vectors alone are 4 MB.
    assert peak > 1.0 and math.isfinite(peak)


@pytest.mark.parametrize("argv", [
    ["--size", "3x3"], ["--fs-n", "10"], ["--repeats", "0"], ["--memory-n", "a,b"], ["--models", ","],
    ["--threads", "0"], ["--device", "cuda:0", "--clock", "cpu"],
])
def test_bad_options_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--quick", "--no-memory", "--no-progress", *argv]) == 2
    assert capsys.readouterr().err.startswith("error:")


def test_reference_from_independent_starts_when_the_jacobian_is_large(monkeypatch: pytest.MonkeyPatch) -> None:
    import robustbench_iqa.bench.config as config
    import robustbench_iqa.bench.harness as harness
    import robustbench_iqa.bench.model_cases as model_cases

    monkeypatch.setattr(model_cases, "EXACT_MAX_JACOBIAN", 0)  # as at 384x512: no exact SVD
    cfg = BenchConfig(models=("default-nr",), size=(32, 48), repeats=1, warmup=0, fs_n=64, ms_n=4, dms_n=2,
                      batch_size=2, denoiser=(3, 8), memory=False, exact=False, progress=False, clock="cpu",
                      methods=("lanczos", "lanczos-upper"))
    rows = {r.case: r for r in harness.run_bench(cfg).rows}
    ref = rows["spectral-reference"].extra
    assert ref["role"] == "reference" and len(ref["start_norms"]) == config.REFERENCE_STARTS
    assert ref["norm"] == max(ref["start_norms"]) and ref["spread"] < 1e-5
    # The first start's upper bound brackets the reference; the measured runs share no start with it.
    assert ref["upper_bound"] >= ref["norm"] and ref["upper_over"] < 0.02
    lanczos = rows["spectral-lanczos"].extra
    assert lanczos["rel_error"] == pytest.approx(abs(lanczos["norm"] - ref["norm"]) / ref["norm"])
    assert cfg.seed not in ref["seeds"] and len(set(ref["seeds"])) == config.REFERENCE_STARTS
    upper = rows["spectral-lanczos-upper"].extra
    assert upper["upper_bound"] >= ref["norm"] and upper["delta"] == config.BOUND_DELTA


def test_unknown_spectral_method_is_refused() -> None:
    with pytest.raises(InputError, match="unknown spectral-norm method"):
        BenchConfig(models=("default-nr",), methods=("lanczos", "svd")).validate()


def test_fs_certify_times_the_first_order_certificate_without_the_global_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fs-certify case is the FS-IQA study's certification (noise draws, bounds, the Jacobian's
    norm): the certified global Lipschitz bound is a separate, cached cost (minutes for a VGG-16 at
    384x512) and must not be paid inside the first timed (or warm-up) certification."""
    from robustbench_iqa.bench.cases import CaseKind, CaseSpec, make_case
    from robustbench_iqa.bench.subjects import SubjectSpec, build_subject

    spec = SubjectSpec(model="default-fr", size=(16, 16))
    subject = build_subject(spec)
    calls: list[object] = []

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(args)
        raise AssertionError("the global Lipschitz bound was computed inside fs-certify")

    monkeypatch.setattr(type(subject.model), "lipschitz_bound", counting)
    run, warm = make_case(subject, CaseSpec(subject=spec, kind=CaseKind.FS_CERTIFY, n=200))
    (res,) = run()
    warm()
    assert calls == [] and res.eps_x is not None and res.eps_x_lipschitz is None


def test_a_certificate_carries_the_product_count_of_its_own_estimate() -> None:
    """fs-certify's `products` come from the certification's own estimate (no second, untimed
    Jacobian estimate): the count equals that of the same estimate run on its own."""
    import torch

    from robustbench_iqa.bench.subjects import SubjectSpec, build_subject

    s = build_subject(SubjectSpec(model="default-fr", size=(16, 16)))
    (res,) = s.fs.certify(s.x, s.ref, n=200, generator=torch.Generator().manual_seed(3), lipschitz=False)
    est = s.fs.spectral_estimate(s.x, s.ref, generator=torch.Generator().manual_seed(3))
    assert est.products is not None and res.evidence.products == int(est.products[0]) >= 1
    assert res.spectral_norm == float(est.value[0])
