"""The verify gate: passes on the embedded default, fails on planted violations, resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from robustbench_iqa.certify.defense import DEFENSES, create_defense
from robustbench_iqa.certify.result import CertifiedScore
from robustbench_iqa.cli import main
from robustbench_iqa.runner import VerifyConfig, load_config, run_verify
from robustbench_iqa.runner.workspace import derived_seed
from robustbench_iqa.store import RESULTS_FILE, ResultsStore

SMALL: dict[str, Any] = {
    "models": ["default-nr", "default-fr"], "limit": 3, "n": 500, "batch_size": 2,
    "audit": {"n": 1000, "steps": 3, "eot": 4, "resample_n": 2000},
    "stability": {"repeats": 3, "limit": 1, "n": [200, 500]},
    "beyond": {"limit": 2, "norms": [0.05, 0.25], "steps": 3, "eot": 2},
}


def small(**over: Any) -> VerifyConfig:
    """A tiny configuration (nested sections merged key by key)."""
    table = json.loads(json.dumps(SMALL))
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(table.get(k), dict):
            table[k] = {**table[k], **v}
        else:
            table[k] = v
    return VerifyConfig.from_mapping(table).validate()


def _toml(table: dict[str, Any]) -> str:
    head, subs = ["[tool.robustbench_iqa.verify]"], []
    for k, v in table.items():
        if isinstance(v, dict) and k not in ("checkpoints", "weights"):
            subs.append(f"\n[tool.robustbench_iqa.verify.{k}]")
            subs += [f"{a} = {json.dumps(b)}" for a, b in v.items()]
        elif isinstance(v, dict):  # a TOML inline table
            head.append(f"{k} = " + "{ " + ", ".join(f"{json.dumps(a)} = {json.dumps(b)}" for a, b in v.items()) + " }")
        else:
            head.append(f"{k} = {json.dumps(v)}")
    return "\n".join(head + subs) + "\n"


def _config_file(tmp_path: Path, **extra: Any) -> Path:
    p = tmp_path / "pyproject.toml"
    p.write_text(_toml({**SMALL, **extra}))
    return p


# ------------------------------------------------------------------ passing
def test_verify_passes_on_the_embedded_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config_file(tmp_path)
    out = tmp_path / "run"
    assert main(["verify", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "verify PASSED" in text and "default-nr" in text and "default-fr" in text
    with ResultsStore.open(out) as store:
        assert store.count("audit") == 2 * 3
        assert store.count("guarantee") == 2 * 3
        assert store.count("correlation") == 2 * 3 * 2  # undefended + defended
        assert store.count("stability") == 2 * 1 * 2 * 3  # models x images x n x repeats
        assert store.count("beyond") == 2 * 2 * 2 * 2  # models x {none, fs-iqa} x norms x images
        audit = store.frame("audit")
        assert set(audit["guarantee"]) == {"percentile_bounds"}
        # Every attacked point stayed inside its certified radius.
        assert (audit["attack_l2"] <= audit["eps_x"] * (1 + 1e-5)).all()
        assert store.config["weights_sha256"]["default-nr"] != store.config["weights_sha256"]["default-fr"]
        assert store.config["versions"]["torch"] == torch.__version__
        assert store.config["data"]["size"] == [96, 128] and store.config["data"]["resize"] == "resize"
        gate = store.get_meta("gate")
        assert gate["passed"] is True and {c["name"] for c in gate["checks"]} >= {
            "certificate audit", "premise", "abstentions", "stability", "inconclusive", "bounds recomputed",
            "sound radius (lipschitz)", "certified radius", "detection power"}
        # Inputs are keyed by name and content: "<name>#<12 hex digits>".
        assert all("#" in i and len(i.split("#")[1]) == 12 for i in audit["image"])
    html = (out / "report" / "report.html").read_text()
    for section in ("Gate: PASSED", "audit", "stability", "beyond", "guarantee", "correlation"):
        assert section in html
    # Running again without --resume is refused with a clear message; --resume adds nothing.
    assert main(["verify", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["verify", "--config", str(cfg), "--out", str(out), "--no-progress", "--resume",
                 "--no-report"]) == 0
    assert "(0 units run)" in capsys.readouterr().out
    with ResultsStore.open(out) as store:
        assert store.count("audit") == 6 and store.count("stability") == 12


# ------------------------------------------------------- planted violations
def _narrowed(model: Any, *, sigma: float) -> Any:
    """FS-IQA whose certificate is deliberately broken: bounds shrunk to score +- 1e-6."""
    fs = create_defense("fs-iqa", model, sigma=sigma)
    certify = fs.certify

    def broken(*args: Any, **kwargs: Any) -> list[CertifiedScore]:
        return [r if r.abstained else CertifiedScore(**{**r.__dict__, "lower": r.score - 1e-6,
                                                        "upper": r.score + 1e-6})
                for r in certify(*args, **kwargs)]

    fs.certify = broken  # type: ignore[method-assign]
    return fs


def _inflated(factor: float) -> Any:
    """FS-IQA whose certified radius is claimed ``factor`` times larger than the IVE's."""
    def build(model: Any, *, sigma: float) -> Any:
        fs = create_defense("fs-iqa", model, sigma=sigma)
        certify = fs.certify

        def inflated(*args: Any, **kwargs: Any) -> list[CertifiedScore]:
            return [r if r.abstained else CertifiedScore(**{**r.__dict__, "eps_x": r.eps_x * factor})
                    for r in certify(*args, **kwargs)]

        fs.certify = inflated  # type: ignore[method-assign]
        return fs

    return build


def test_verify_fails_on_planted_narrow_bounds(tmp_path: Path) -> None:
    with DEFENSES.override("narrowed", _narrowed, space="feature", statistic="median"):
        cfg = small(models=["default-nr"], defenses=["narrowed"], studies=["certify", "audit"])
        outcome = run_verify(cfg, tmp_path / "run", report=False, progress=False)
    assert not outcome.passed
    assert {c.name for c in outcome.failures} == {"certificate audit", "bounds recomputed"}, outcome.failures
    with ResultsStore.open(tmp_path / "run") as store:
        audit = store.frame("audit")
    # Independent check: the attacked medians' intervals lie outside the narrowed bounds.
    outside = (audit["median_ci_low"] > audit["upper"]) | (audit["median_ci_high"] < audit["lower"])
    assert outside.sum() >= 2


def _planted(tmp_path: Path, factor: float, model: str, **audit: Any) -> Any:
    name = f"fs-iqa-x{factor:g}"
    with DEFENSES.override(name, _inflated(factor), space="feature", statistic="median"):
        cfg = small(models=[model], defenses=[name], limit=8, batch_size=4, studies=["certify", "audit"],
                    audit=audit)
        return run_verify(cfg, tmp_path / f"run-{model}-{factor:g}", report=False, progress=False)


@pytest.mark.parametrize("factor", [1.5, 3.0])
def test_inflated_radius_fails_the_premise_check(tmp_path: Path, factor: float) -> None:
    outcome = _planted(tmp_path, factor, "default-nr")
    assert "premise" in {c.name for c in outcome.failures}, outcome.checks


@pytest.mark.slow
@pytest.mark.parametrize("model", ["default-nr", "default-fr"])
@pytest.mark.parametrize("factor", [1.0, 1.5, 2.0, 3.0, 10.0])
def test_planted_violation_table_with_the_default_audit(tmp_path: Path, model: str, factor: float) -> None:
    """The gate with its default audit settings: the true radius passes, every inflated one fails."""
    defaults = {"n": 4000, "steps": 10, "eot": 8, "resample_n": 16000}
    outcome = _planted(tmp_path, factor, model, **defaults)
    assert outcome.passed is (factor == 1.0), [(c.name, c.detail) for c in outcome.failures or outcome.checks]


def test_every_image_abstaining_fails_the_abstention_check(tmp_path: Path) -> None:
    """tau above every Jacobian norm: all abstain; the gate fails with exit 1, not an error."""
    cfg = small(models=["default-nr"], tau=1e9, studies=["certify", "audit"])
    outcome = run_verify(cfg, tmp_path / "run", report=True, progress=False)
    assert not outcome.passed
    assert {c.name for c in outcome.failures} == {"abstentions"}, outcome.failures


# ------------------------------------------------------------------ config
def test_verify_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    for table, message in [
        ({"modles": ["default-nr"]}, "did you mean 'models'"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": 0.001}, "confidence"),
        ({"audit": {"stpes": 3}}, "verify.audit.stpes"),
        ({"stability": {"repeats": 1}}, "repeats must be >= 2"),
        ({"stability_repeats": 3}, "verify.stability.repeats"),  # a key that moved into a sub-table
        ({"studies": ["audti"]}, "did you mean 'audit'"),
    ]:
        bad.write_text(_toml(table))
        assert main(["verify", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2, table
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (table, err)
    assert main(["verify", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "not found" in capsys.readouterr().err
    binary = tmp_path / "binary.toml"
    binary.write_bytes(bytes(range(256)) * 4)
    assert main(["verify", "--config", str(binary)]) == 2
    assert "not a UTF-8 text" in capsys.readouterr().err


def test_config_type_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for table, message in [({"alpha": "0.9"}, "`verify.alpha` must be a number"),
                           ({"n": 2.5}, "`verify.n` must be an integer"),
                           ({"checkpoints": "x.safetensors"}, "`verify.checkpoints` must be a table"),
                           ({"device": "gpu"}, "device"), ({"resize": "bogus"}, "resize must be one of"),
                           ({"models": ["nope"]}, "unknown model"),
                           ({"checkpoints": {"default-nr@0.1": "x"}}, "matches no configured model")]:
        bad = tmp_path / "bad.toml"
        bad.write_text(_toml({**SMALL, **table}))
        out = tmp_path / "never"
        assert main(["verify", "--config", str(bad), "--out", str(out), "--no-progress"]) == 2, table
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (table, err)
        assert not out.exists()  # nothing was written before the inputs were checked
    other = tmp_path / "other.toml"
    other.write_text("[tool.something]\nx = 1\n")
    assert main(["verify", "--config", str(other)]) == 2
    assert "no [tool.robustbench_iqa.verify] table" in capsys.readouterr().err
    # A bare name where a list is expected is a one-item list.
    assert load_config(_config_file(tmp_path, models="default-nr")).models == ("default-nr",)


def test_derived_seeds_are_stable_and_distinct() -> None:
    a = derived_seed(0, "audit", "default-nr", "fs-iqa", "img1")
    assert a == derived_seed(0, "audit", "default-nr", "fs-iqa", "img1")
    others = {derived_seed(s, "audit", m, "fs-iqa", i) for s in (0, 1) for m in ("a", "b") for i in ("x", "y")}
    assert len(others) == 8 and 0 <= a < 2**63


# ---------------------------------------------------------- kill and resume
def _rows(run: Path) -> list[str]:
    """All rows, timing fields dropped (they differ between runs by nature)."""
    con = sqlite3.connect(run / RESULTS_FILE)
    out = []
    for tbl, model, defense, sigma, image, extra, payload in con.execute(
            "SELECT tbl, model, defense, sigma, image, extra, payload FROM rows"):
        p = {k: v for k, v in json.loads(payload).items() if not k.startswith("seconds")}
        out.append(json.dumps([tbl, model, defense, sigma, image, extra, p], sort_keys=True))
    con.close()
    return sorted(out)


def test_killed_verify_resumes_to_the_rows_of_an_uninterrupted_run(tmp_path: Path) -> None:
    cfg = _config_file(tmp_path, models=["default-nr"], limit=6, batch_size=1,
                       beyond={"limit": 1, "norms": [0.25]}, stability={"n": [500], "repeats": 2})
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    # Both runs in subprocesses with one thread, so that floating-point reductions match.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def command(out: Path, *more: str) -> list[str]:
        return [sys.executable, "-m", "robustbench_iqa.cli", "verify", "--config", str(cfg), "--no-progress",
                "--no-report", "--threads", "1", "--out", str(out), *more]

    assert subprocess.run(command(clean), env=env, capture_output=True).returncode == 0
    proc = subprocess.Popen(command(crashed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 240
    written = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:
            con = sqlite3.connect(crashed / RESULTS_FILE, timeout=1)
            written = con.execute("SELECT COUNT(*) FROM rows WHERE tbl='audit'").fetchone()[0]
            con.close()
        except sqlite3.Error:
            continue
        if written >= 2:
            break
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= written < 6
    resumed = subprocess.run(command(crashed, "--resume"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert _rows(crashed) == _rows(clean)


def test_a_second_run_on_a_live_run_dir_is_refused(tmp_path: Path) -> None:
    """Two real processes: the second exits 2 naming the live run, and deletes nothing."""
    cfg = _config_file(tmp_path, models=["default-nr"], limit=40, batch_size=1)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "robustbench_iqa.cli", "verify", "--config", str(cfg),
                              "--out", str(out), "--no-progress", "--no-report"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (out / RESULTS_FILE).exists():
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended too soon"
        for extra in ([], ["--fresh"], ["--resume"]):
            other = tmp_path / "other.toml"
            other.write_text(_toml({**SMALL, "limit": 2}))
            second = subprocess.run([sys.executable, "-m", "robustbench_iqa.cli", "verify", "--config", str(other),
                                     "--out", str(out), "--no-progress", *extra], env=env, capture_output=True,
                                    text=True)
            assert second.returncode == 2, (extra, second.stderr)
            assert "in use by a live run" in second.stderr and f"pid {first.pid}" in second.stderr
            assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    with ResultsStore.open(out) as store:  # the first run's store, untouched by the refused ones
        assert store.config["limit"] == 40 and store.count("guarantee") >= 1


# --------------------------------------------------------------- the rest
def test_verify_over_several_sigmas_keeps_them_apart(tmp_path: Path) -> None:
    cfg = small(models=["default-fr"], limit=2, sigma=[0.1, 0.25], studies=["certify", "audit"])
    outcome = run_verify(cfg, tmp_path / "run", report=False, progress=False)
    assert outcome.passed, outcome.failures
    assert {(r["sigma"], r["images"]) for r in outcome.summary} == {(0.1, 2), (0.25, 2)}
    assert {c.sigma for c in outcome.checks if c.name == "certificate audit"} == {0.1, 0.25}
    with ResultsStore.open(tmp_path / "run") as store:
        g = store.frame("guarantee")
        heads = store.config["checkpoints_sha256"]
    assert sorted(g["sigma"].unique()) == [0.1, 0.25]
    # Each row's radius is its own sigma over its spectral norm (IVE; heads differ per sigma).
    ratio = g["eps_x"] * g["spectral_norm"] / g["sigma"]
    assert (ratio - 1.0).abs().max() < 1e-9
    assert heads["default-fr:fs-iqa@0.1"] != heads["default-fr:fs-iqa@0.25"] and None not in heads.values()


def test_empirical_defenses_are_scored_once_at_sigma_zero_and_never_certified(tmp_path: Path) -> None:
    cfg = small(models=["default-nr"], limit=2, sigma=[0.1, 0.25], defenses=["fs-iqa", "jpeg"],
                studies=["certify", "audit", "stability"])
    assert cfg.defense_cases() == (("fs-iqa", 0.1), ("jpeg", 0.0), ("fs-iqa", 0.25))
    outcome = run_verify(cfg, tmp_path / "run", report=False, progress=False)
    assert outcome.passed, outcome.failures
    with ResultsStore.open(tmp_path / "run") as store:
        g, corr = store.frame("guarantee"), store.frame("correlation")
    assert set(g["defense"]) == {"fs-iqa"}  # no certificate for the empirical defense
    jpeg = corr[corr["defense"] == "jpeg"]
    assert len(jpeg) == 2 and set(jpeg["sigma"]) == {0.0} and jpeg["seconds_certify"].isna().all()
    assert not any(c.defense == "jpeg" for c in outcome.checks if c.name in ("certificate audit", "abstentions"))
    assert any("jpeg" in n and "empirical" in n for n in outcome.notes)


def test_fresh_removes_only_the_run(tmp_path: Path) -> None:
    cfg = small(models=["default-fr"], limit=1, studies=["certify"])
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    run_verify(cfg, out, report=False, progress=False)
    run_verify(cfg, out, fresh=True, report=False, progress=False)
    assert (out / "notes.txt").read_text() == "mine"
    with ResultsStore.open(out) as store:
        assert store.count("guarantee") == 1


def test_heads_of_another_model_are_refused() -> None:
    from robustbench_iqa import InputError, create_model
    from robustbench_iqa.certify.fs_iqa import shipped_checkpoint

    with pytest.raises(InputError, match="trained on model 'default-fr'"):
        create_defense("fs-iqa", create_model("default-nr"), sigma=0.25,
                       checkpoint=shipped_checkpoint("default-fr", 0.25))


def test_non_finite_results_fail_the_gate_instead_of_aborting_it(tmp_path: Path) -> None:
    from robustbench_iqa.runner.gate import evaluate
    from robustbench_iqa.store import RowKey

    cfg = small(models=["m"], stability={"n": [10]}, n=10, studies=["audit", "stability"])
    with ResultsStore.open(tmp_path / "r", {"kind": "test"}) as store:
        nan = float("nan")
        base = {"lower": 0.0, "upper": 1.0, "abstained": False, "guarantee": "percentile_bounds", "alpha": 0.999,
                "confidence": 0.9999}
        store.put(RowKey("audit", "m", "fs-iqa", 0.25, "a"),
                  {**base, "attacked_median": nan, "median_ci_low": nan, "median_ci_high": nan})
        store.put(RowKey("audit", "m", "fs-iqa", 0.25, "b"),
                  {**base, "attacked_median": 0.5, "median_ci_low": 0.4, "median_ci_high": 0.6})
        for r in range(2):
            store.put(RowKey("stability", "m", "fs-iqa", 0.25, "a", f"n=10,seed={r}"),
                      {"n": 10, "seed": r, "score": [0.5, nan][r]})
        checks = {c.name: c for c in evaluate(store, cfg).checks}
    assert not checks["finite (audit)"].passed and not checks["finite (stability)"].passed
    assert checks["certificate audit"].passed  # judged on the finite row alone
    assert "0/1 violations" in checks["certificate audit"].detail


def test_an_internal_error_exits_3_with_its_traceback(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import robustbench_iqa.cli.list as list_cmd

    def boom(args: Any) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(list_cmd, "run", boom)
    assert main(["list"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "a bug" in err and "internal error" in err


def test_accuracy_over_seeds_is_averaged_across_models_and_seeds(tmp_path: Path) -> None:
    from robustbench_iqa.analysis import correlation

    cfg = small(limit=5, accuracy={"seeds": [0, 1, 2]}, studies=["certify", "accuracy"])
    run_verify(cfg, tmp_path / "run", report=False, progress=False)
    with ResultsStore.open(tmp_path / "run") as store:
        rows = store.frame("correlation")
    defended = rows[rows["defense"] == "fs-iqa"]
    assert sorted(defended["seed"].astype(int).unique()) == [0, 1, 2] and len(defended) == 2 * 5 * 3
    # Different seeds draw different noise: the same image gets (slightly) different scores.
    per_image = defended.groupby(["model", "image"])["score"].nunique()
    assert (per_image == 3).all()
    summary = correlation.summarize(correlation.per_group(rows)).set_index("defense")
    assert int(summary.loc["fs-iqa", "groups"]) == 2 * 3  # models x seeds
