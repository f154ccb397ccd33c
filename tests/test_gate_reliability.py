"""The gate never goes green without its checks, and a report failure never hides its verdict.

* a config that selects no check (``studies = []``) or lists a name twice: exit 2, one line;
* the report crashing after the gate: the verdict is printed first, then one ``error:`` line;
  exit 1 for a FAIL whatever the report did, 3 for a PASS whose report was lost (never 0);
* ``--fresh`` removes only the files the suite wrote (a user's file in ``report/`` and a
  ``report`` that is a link survive; no crash).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from robustbench_iqa.cli import main
from robustbench_iqa.outputs import MANIFEST, record_written, remove_written
from robustbench_iqa.store import RESULTS_FILE

TINY = ('[tool.robustbench_iqa.verify]\nmodels = ["default-fr"]\nlimit = 1\nn = 200\nbatch_size = 1\n'
        'studies = ["certify"]\n')


def _cfg(tmp_path: Path, text: str = TINY) -> Path:
    p = tmp_path / "pyproject.toml"
    p.write_text(text)
    return p


def _verify(cfg: Path, out: Path, *more: str) -> list[str]:
    return ["verify", "--config", str(cfg), "--out", str(out), "--no-progress", "--threads", "1", *more]


def _one_error(capsys: pytest.CaptureFixture[str], rc: int, *names: str) -> None:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), (rc, err)
    for n in names:
        assert n in lines[0], (n, lines[0])


@pytest.mark.parametrize("extra, names", [
    ("studies = []", ["`studies` is empty", "no check"]),
    ('models = ["default-nr", "default-nr"]', ["`models` lists 'default-nr' twice"]),
    ('defenses = ["fs-iqa", "fs-iqa"]', ["`defenses` lists 'fs-iqa' twice"]),
    ("sigma = [0.25, 0.25]", ["`sigma` lists 0.25 twice"]),
    ('studies = ["certify", "certify"]', ["`studies` lists 'certify' twice"]),
])
def test_configs_that_select_no_check_or_repeat_a_name(tmp_path, capsys, extra: str, names) -> None:  # type: ignore[no-untyped-def]
    text = "\n".join(ln for ln in TINY.splitlines() if not ln.startswith(extra.split(" ")[0] + " ")) + "\n" + extra
    out = tmp_path / "run"
    _one_error(capsys, main(_verify(_cfg(tmp_path, text + "\n"), out)), *names)
    assert not (out / RESULTS_FILE).exists()


def _broken_report(*a, **k):  # type: ignore[no-untyped-def]
    raise RuntimeError("figure backend exploded")


@pytest.mark.parametrize("fail", [False, True])
def test_report_failure_never_hides_the_verdict(tmp_path, capsys, monkeypatch, fail: bool) -> None:  # type: ignore[no-untyped-def]
    import robustbench_iqa.report as report
    import robustbench_iqa.runner.verify as rv
    from robustbench_iqa.studies.base import Check

    monkeypatch.setattr(report, "build_report", _broken_report)
    if fail:
        real = rv.evaluate

        def failing(store, cfg):  # type: ignore[no-untyped-def]
            res = real(store, cfg)
            res.checks.append(Check("planted", "default-fr", "fs-iqa", 0.25, False, "planted failure"))
            return res

        monkeypatch.setattr(rv, "evaluate", failing)
    out = tmp_path / "run"
    rc = main(_verify(_cfg(tmp_path), out))
    got = capsys.readouterr()
    assert "Traceback" not in got.err
    verdict = [ln for ln in got.out.splitlines() if ln.startswith("verify ")]
    assert len(verdict) == 1 and verdict[0].startswith("verify FAILED" if fail else "verify PASSED"), got.out
    errors = [ln for ln in got.err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "report could not be written" in errors[0] and "exploded" in errors[0]
    assert rc == (1 if fail else 3)
    assert (out / "report-error.txt").read_text().count("figure backend exploded") >= 1


def test_fresh_keeps_what_the_suite_did_not_write(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg = _cfg(tmp_path)
    out = tmp_path / "run"
    assert main(_verify(cfg, out)) == 0
    report = out / "report"
    written = {p.relative_to(report) for p in report.rglob("*") if p.is_file()} - {Path(MANIFEST)}
    assert Path("report.html") in written and any(p.parts[0] == "data" for p in written)
    (report / "my-notes.md").write_text("mine")
    (report / "data" / "mine.csv").write_text("a,b\n")
    assert main(_verify(cfg, out, "--fresh")) == 0
    assert (report / "my-notes.md").read_text() == "mine" and (report / "data" / "mine.csv").exists()
    # the second run wrote its own report again; a third fresh run without report keeps only mine
    assert main(_verify(cfg, out, "--fresh", "--no-report")) == 0
    left = sorted(p.relative_to(report).as_posix() for p in report.rglob("*") if p.is_file())
    assert left == ["data/mine.csv", "my-notes.md"]


def test_fresh_with_a_report_link_keeps_its_target(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg = _cfg(tmp_path)
    out = tmp_path / "run"
    assert main(_verify(cfg, out, "--no-report")) == 0
    elsewhere = tmp_path / "precious"
    elsewhere.mkdir()
    (elsewhere / "report.html").write_text("not the suite's")
    record_written(elsewhere, [elsewhere / "report.html"])  # even a manifest there is not followed
    (out / "report").symlink_to(elsewhere, target_is_directory=True)
    assert main(_verify(cfg, out, "--fresh", "--no-report")) == 0
    assert (elsewhere / "report.html").read_text() == "not the suite's"


def test_remove_written_stays_inside_its_folder(tmp_path: Path) -> None:
    folder, outside = tmp_path / "report", tmp_path / "outside.txt"
    folder.mkdir()
    outside.write_text("keep")
    (folder / "a.csv").write_text("x")
    (folder / "link.csv").symlink_to(outside)
    (folder / MANIFEST).write_text('["a.csv", "../outside.txt", "link.csv", "/etc/hostname"]')
    kept = remove_written(folder)
    assert outside.read_text() == "keep" and not (folder / "a.csv").exists()
    assert (folder / "link.csv").is_symlink() and kept == [folder / "link.csv"]


def test_a_config_whose_studies_have_no_work_is_refused(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    text = ('[tool.robustbench_iqa.verify]\nmodels = ["default-nr"]\ndefenses = ["jpeg"]\nstudies = ["audit"]\n'
            'limit = 1\nn = 200\n')
    out = tmp_path / "run"
    _one_error(capsys, main(_verify(_cfg(tmp_path, text), out)), "selects no work", "audit", "jpeg")
    assert not out.exists()


def test_a_judging_study_that_judges_nothing_fails_the_gate(tmp_path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from robustbench_iqa.studies.base import get_study

    monkeypatch.setattr(type(get_study("certify")), "checks", lambda self, data, cfg: [])
    rc = main(_verify(_cfg(tmp_path), tmp_path / "run", "--no-report"))
    out = capsys.readouterr().out
    assert rc == 1 and "study 'certify' is active but produced no check" in out and "verify FAILED" in out


def test_the_verdict_line_names_the_radius_kind_it_audited(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With the audit in the run, the final line says which radius the verdict is about: the sound
    Lipschitz radius by default on a model that has one (the first-order one is audited too, as an estimate)."""
    text = ('[tool.robustbench_iqa.verify]\nmodels = ["default-nr-lip"]\nlimit = 1\nn = 200\n'
            'studies = ["certify", "audit"]\n[tool.robustbench_iqa.verify.audit]\nn = 200\nsteps = 2\neot = 2\n'
            'bounds_n = 400\npremise_steps = 2\n')
    main(_verify(_cfg(tmp_path, text), tmp_path / "run", "--no-report"))
    out = capsys.readouterr().out
    verdict = [ln for ln in out.splitlines() if ln.startswith("verify ")]
    assert len(verdict) == 1, out
    assert "(radius: lipschitz)" in verdict[0], verdict
