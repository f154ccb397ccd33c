"""The verify gate: passes on the embedded default, fails on a planted violation, resumes exactly."""

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
from robustbench_iqa.runner.context import derived_seed
from robustbench_iqa.store import RESULTS_FILE, ResultsStore

SMALL = {
    "models": ["default-nr", "default-fr"], "limit": 3, "n": 2000, "audit_n": 2000, "attack_steps": 3,
    "eot": 4, "stability_repeats": 3, "stability_limit": 1, "stability_n": [200, 2000], "beyond_limit": 2,
    "beyond_norms": [0.05, 0.25],
}


def _toml(table: dict[str, Any]) -> str:
    lines = ["[tool.robustbench_iqa.verify]"]
    for k, v in table.items():
        if isinstance(v, dict):  # a TOML inline table
            v_text = "{ " + ", ".join(f"{json.dumps(a)} = {json.dumps(b)}" for a, b in v.items()) + " }"
        else:
            v_text = json.dumps(v)
        lines.append(f"{k} = {v_text}")
    return "\n".join(lines) + "\n"


def _config_file(tmp_path: Path, **extra: Any) -> Path:
    p = tmp_path / "pyproject.toml"
    p.write_text(_toml({**SMALL, **extra}))
    return p


def _narrowed(model: Any, *, sigma: float, **options: Any) -> Any:
    """FS-IQA whose certificate is deliberately broken: bounds shrunk to score +- 1e-6.

    FS-IQA's ``certify`` is ``spectral_estimate`` then ``certify_from_estimate`` (which the
    runner calls directly), so breaking the latter breaks every path to a certificate.
    """
    fs = create_defense("fs-iqa", model, sigma=sigma, **options)
    certify_from_estimate = fs.certify_from_estimate

    def broken(*args: Any, **kwargs: Any) -> list[CertifiedScore]:
        out = []
        for r in certify_from_estimate(*args, **kwargs):
            if not r.abstained:
                r = CertifiedScore(**{**r.__dict__, "lower": r.score - 1e-6, "upper": r.score + 1e-6})
            out.append(r)
        return out

    fs.certify_from_estimate = broken  # type: ignore[method-assign]
    return fs


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
        assert store.count("stability") == 2 * 1 * 2 * 3
        assert store.count("beyond") == 2 * 2 * 2 * 2  # models x {none, fs-iqa} x norms x images
        audit = store.frame("audit")
        assert set(audit["guarantee"]) == {"percentile_bounds"}
        # Every attacked point stayed inside its certified radius.
        assert (audit["attack_l2"] <= audit["eps_x"] * (1 + 1e-5)).all()
        assert store.config["weights_sha256"]["default-nr"] != store.config["weights_sha256"]["default-fr"]
        assert store.config["versions"]["torch"] == torch.__version__
        assert store.config["data"]["size"] == [96, 128] and store.config["data"]["resize"] == "resize"
    html = (out / "report" / "report.html").read_text()
    for study in ("audit", "stability", "beyond", "guarantee", "correlation"):
        assert study in html
    # Running again without --resume is refused with a clear message; --resume adds nothing.
    assert main(["verify", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["verify", "--config", str(cfg), "--out", str(out), "--no-progress", "--resume",
                 "--no-report"]) == 0
    with ResultsStore.open(out) as store:
        assert store.count("audit") == 6 and store.count("stability") == 12


@pytest.fixture
def narrowed_defense() -> Any:
    """Registers the broken defense for one test only."""
    with DEFENSES.override("test-narrowed-fs-iqa", _narrowed, space="feature", statistic="median"):
        yield "test-narrowed-fs-iqa"


def test_verify_fails_on_a_planted_violation(tmp_path: Path, narrowed_defense: str) -> None:
    cfg = VerifyConfig(**{**{k: tuple(v) if isinstance(v, list) else v for k, v in SMALL.items()},
                          "models": ("default-nr",), "defenses": (narrowed_defense,),
                          "stability_n": (2000,)})
    outcome = run_verify(cfg, tmp_path / "run", report=False, progress=False)
    assert not outcome.passed
    failed = {c.name for c in outcome.failures}
    assert failed == {"certificate audit"}, outcome.failures
    with ResultsStore.open(tmp_path / "run") as store:
        audit = store.frame("audit")
    # Independent check: the attacked medians' intervals lie outside the narrowed bounds.
    outside = (audit["median_ci_low"] > audit["upper"]) | (audit["median_ci_high"] < audit["lower"])
    assert outside.sum() >= 2


def test_verify_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(_toml({"modles": ["default-nr"]}))
    assert main(["verify", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "unknown keys" in capsys.readouterr().err
    bad.write_text(_toml({"alpha": 1.5}))
    assert main(["verify", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "alpha" in capsys.readouterr().err
    assert main(["verify", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(Exception, match="stability_repeats"):
        load_config(_config_file(tmp_path, stability_repeats=1))


def test_derived_seeds_are_stable_and_distinct() -> None:
    a = derived_seed(0, "audit", "default-nr", "fs-iqa", "img1")
    assert a == derived_seed(0, "audit", "default-nr", "fs-iqa", "img1")
    others = {derived_seed(s, "audit", m, "fs-iqa", i) for s in (0, 1) for m in ("a", "b") for i in ("x", "y")}
    assert len(others) == 8 and 0 <= a < 2**63


def _rows(run: Path) -> list[str]:
    """All rows, timing fields dropped (they differ between runs by nature)."""
    con = sqlite3.connect(run / RESULTS_FILE)
    out = []
    for study, model, defense, sigma, image, extra, payload in con.execute(
            "SELECT study, model, defense, sigma, image, extra, payload FROM rows"):
        p = {k: v for k, v in json.loads(payload).items() if not k.startswith("seconds")}
        out.append(json.dumps([study, model, defense, sigma, image, extra, p], sort_keys=True))
    con.close()
    return sorted(out)


def test_killed_verify_resumes_to_the_rows_of_an_uninterrupted_run(tmp_path: Path) -> None:
    cfg = _config_file(tmp_path, models=["default-nr"], limit=5, beyond_limit=1, beyond_norms=[0.25],
                       stability_n=[2000], stability_repeats=2)
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    # Both runs in subprocesses with one thread, so that floating-point reductions match.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def command(out: Path, *more: str) -> list[str]:
        return [sys.executable, "-m", "robustbench_iqa.cli", "verify", "--config", str(cfg), "--no-progress",
                "--no-report", "--out", str(out), *more]

    assert subprocess.run(command(clean), env=env, capture_output=True).returncode == 0
    proc = subprocess.Popen(command(crashed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 240
    written = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        try:
            con = sqlite3.connect(crashed / RESULTS_FILE, timeout=1)
            written = con.execute("SELECT COUNT(*) FROM rows WHERE study='audit'").fetchone()[0]
            con.close()
        except sqlite3.Error:
            continue
        if written >= 2:
            break
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= written < 5
    resumed = subprocess.run(command(crashed, "--resume"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert _rows(crashed) == _rows(clean)


def test_verify_over_several_sigmas_keeps_them_apart(tmp_path: Path) -> None:
    cfg = load_config(_config_file(tmp_path, models=["default-fr"], limit=2, sigma=[0.1, 0.25],
                                   beyond_limit=1, beyond_norms=[0.25], stability_n=[2000], stability_repeats=2))
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


def test_config_type_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for table, message in [({"alpha": "0.9"}, "`alpha` must be a number"), ({"n": 2.5}, "`n` must be an integer"),
                           ({"checkpoints": "x.safetensors"}, "`checkpoints` must be a table"),
                           ({"device": "gpu"}, "unknown device"), ({"resize": "bogus"}, "resize must be one of"),
                           ({"models": ["nope"]}, "unknown model"),
                           ({"checkpoints": {"default-nr@0.1": "x"}}, "matches no configured model")]:
        bad = tmp_path / "bad.toml"
        bad.write_text(_toml({**SMALL, **table}))
        out = tmp_path / "never"
        assert main(["verify", "--config", str(bad), "--out", str(out), "--no-progress"]) == 2, table
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (table, err)
        assert not (out / RESULTS_FILE).exists()  # nothing was written before the inputs were checked
    other = tmp_path / "other.toml"
    other.write_text("[tool.something]\nx = 1\n")
    assert main(["verify", "--config", str(other)]) == 2
    assert "no [tool.robustbench_iqa.verify] table" in capsys.readouterr().err
    # A bare name where a list is expected is a one-item list.
    assert load_config(_config_file(tmp_path, models="default-nr")).models == ("default-nr",)


def test_fresh_removes_only_the_run(tmp_path: Path) -> None:
    cfg = VerifyConfig(models=("default-fr",), limit=1, n=500, audit_n=500, alpha=0.99, attack_steps=1, eot=2,
                       stability_repeats=2, stability_limit=1, stability_n=(500,), beyond_limit=1,
                       beyond_norms=(0.25,))
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
    from robustbench_iqa.runner.checks import all_checks
    from robustbench_iqa.store import RowKey

    cfg = VerifyConfig(models=("m",), stability_n=(10,), n=10)
    with ResultsStore.open(tmp_path / "r", {"kind": "test"}) as store:
        nan = float("nan")
        store.put(RowKey("audit", "m", "fs-iqa", 0.25, "a"),
                  {"lower": 0.0, "upper": 1.0, "abstained": False, "attacked_median": nan,
                   "median_ci_low": nan, "median_ci_high": nan})
        store.put(RowKey("audit", "m", "fs-iqa", 0.25, "b"),
                  {"lower": 0.0, "upper": 1.0, "abstained": False, "attacked_median": 0.5,
                   "median_ci_low": 0.4, "median_ci_high": 0.6})
        for r in range(2):
            store.put(RowKey("stability", "m", "fs-iqa", 0.25, "a", f"n=10,seed={r}"),
                      {"n": 10, "seed": r, "score": [0.5, nan][r]})
        checks = {c.name: c for c in all_checks(store, cfg)}
    assert not checks["finite (audit)"].passed and not checks["finite (stability)"].passed
    assert checks["certificate audit"].passed  # judged on the finite row alone
    assert "1/1" not in checks["certificate audit"].detail and "0/1 violations" in checks["certificate audit"].detail


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

    cfg = VerifyConfig(models=("default-nr", "default-fr"), limit=5, n=500, audit_n=500, alpha=0.99,
                       attack_steps=1, eot=2, stability_repeats=2, stability_limit=1, stability_n=(500,),
                       beyond_limit=1, beyond_norms=(0.25,), accuracy_seeds=(0, 1, 2))
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
