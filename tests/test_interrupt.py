"""Ctrl-C prints the exact command that continues the run, and that command gives the rows of an
uninterrupted run."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest

import robustbench_iqa.runner.executor as executor_mod
from robustbench_iqa.cli import main
from robustbench_iqa.cli._interrupt import interrupted_message, resume_command
from robustbench_iqa.store import RESULTS_FILE, ResultsStore

CONFIG = """
[tool.robustbench_iqa.verify]
models = ["default-nr"]
studies = ["certify"]
limit = 3
batch_size = 1
n = 100
seed = 0
"""


def _rows(run: Path) -> list[tuple[object, ...]]:
    with ResultsStore.open(run) as store:
        frame = store.frame("guarantee")
    cols = [c for c in frame.columns if not c.startswith("seconds")]
    return sorted(map(tuple, frame[cols].astype(str).to_numpy()))


def test_ctrl_c_prints_the_resume_command_and_it_completes_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text(CONFIG)
    argv = ["verify", "--config", str(cfg), "--out", str(tmp_path / "run dir"), "--fresh", "--no-report",
            "--no-progress"]
    real, calls = executor_mod.run_unit, []

    def interrupt_second(unit, ws):  # type: ignore[no-untyped-def]
        calls.append(unit)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(unit, ws)

    monkeypatch.setattr(executor_mod, "run_unit", interrupt_second)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "continue with" in err
    command = err.strip().splitlines()[-1].strip()
    words = shlex.split(command)  # pasteable: the space in the run dir is quoted
    assert words[0] == "robustbench-iqa" and words[-1] == "--resume" and "--fresh" not in words
    assert words[1:-1] == [a for a in argv if a != "--fresh"]
    monkeypatch.setattr(executor_mod, "run_unit", real)
    assert main(words[1:]) == 0  # the printed command, as a user pastes it
    resumed = _rows(tmp_path / "run dir")
    assert len(resumed) == 3
    assert main([*argv[:4], str(tmp_path / "straight"), *argv[5:]]) == 0
    assert resumed == _rows(tmp_path / "straight")  # the same rows as an uninterrupted run


def test_no_resume_command_without_a_stored_run(tmp_path: Path) -> None:
    args = argparse.Namespace(out=str(tmp_path), resume=False)
    assert resume_command(args, ["verify", "--out", str(tmp_path)]) is None  # nothing was stored
    assert interrupted_message(args, []) == "interrupted"
    assert interrupted_message(None, []) == "interrupted"
    assert resume_command(argparse.Namespace(out=None, resume=False), ["certify"]) is None
    (tmp_path / RESULTS_FILE).write_bytes(b"")
    cmd = resume_command(args, ["verify", "--fre", "--out", str(tmp_path), "--quick"])
    assert cmd == shlex.join(["robustbench-iqa", "verify", "--out", str(tmp_path), "--quick", "--resume"])
    # a command without a resumable run (no --resume flag) gets no resume line
    assert resume_command(argparse.Namespace(out=str(tmp_path)), ["report"]) is None
