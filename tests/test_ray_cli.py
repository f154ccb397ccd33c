"""certify and attack with ``--out --executor ray``: the stored rows of the in-process executor.

Shares the local 2-CPU Ray cluster fixture (127.0.0.1 only) of ``test_ray_executor``;
the reference is the same command run in this process.
"""

from __future__ import annotations

import importlib
import os
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from robustbench_iqa.cli import main
from robustbench_iqa.errors import InputError
from robustbench_iqa.store import RESULTS_FILE
from tests.test_ray_executor import _rows, cluster, needs_ray  # noqa: F401  (cluster: the fixture)

TINY = ["--dataset", "default", "--limit", "3", "--no-progress"]
COMMANDS = {
    "certify": ["certify", "--model", "default-nr", "--n", "300", *TINY],
    "attack": ["attack", "--model", "default-fr", "--steps", "2", *TINY],
    # EOT over FS-IQA's noise: draws from each image's own generators
    "attack-defended": ["attack", "--model", "default-nr", "--steps", "2", "--defense", "fs-iqa", "--eot", "2",
                        "--n", "50", *TINY],
}
TABLES = {"certify": {"guarantee", "correlation"}, "attack": {"attack"}, "attack-defended": {"attack"}}


def _run(command: str, out: Path, *extra: str) -> None:
    assert main([*COMMANDS[command], "--out", str(out), *extra]) == 0


@pytest.fixture
def actors_used(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``host:pid`` of the actor that computed each image received by the driver."""
    from robustbench_iqa.runner.ray_items import RayItems

    seen: list[str] = []
    results = RayItems.results

    def spy(self: RayItems, jobs: Any) -> Iterator[Any]:
        for got in results(self, jobs):
            seen.append(self.slots[got[0].slot].where)
            yield got

    monkeypatch.setattr(RayItems, "results", spy)
    return seen


def _on_actors(seen: list[str], images: int) -> None:
    assert len(seen) == images and not any(w.endswith(f":{os.getpid()}") for w in seen), seen


@needs_ray
@pytest.mark.parametrize("command", ["certify", "attack", "attack-defended"])
def test_ray_writes_the_rows_of_the_local_executor(cluster: str, tmp_path: Path, command: str,  # noqa: F811
                                                   actors_used: list[str]) -> None:
    _run(command, tmp_path / "local")
    assert actors_used == []
    _run(command, tmp_path / "ray", "--executor", "ray", "--workers", "2")
    _on_actors(actors_used, 3)
    local, ray = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert {r.split('"', 2)[1] for r in local} == TABLES[command]
    assert len(local) == 3 * len(TABLES[command])
    assert ray == local


@needs_ray
def test_ray_resume_completes_a_store_to_the_local_rows(cluster: str, tmp_path: Path,  # noqa: F811
                                                        capsys: pytest.CaptureFixture[str],
                                                        actors_used: list[str]) -> None:
    _run("certify", tmp_path / "local")
    local = _rows(tmp_path / "local")
    _run("certify", tmp_path / "ray")
    con = sqlite3.connect(tmp_path / "ray" / RESULTS_FILE)
    with con:
        first = con.execute("SELECT image FROM rows ORDER BY image LIMIT 1").fetchone()[0]
        con.execute("DELETE FROM rows WHERE image != ?", (first,))
        assert con.execute("SELECT count(*) FROM rows").fetchone()[0] == 2
    con.close()
    capsys.readouterr()
    _run("certify", tmp_path / "ray", "--resume", "--executor", "ray", "--workers", "2")
    assert "resumed: 1 image(s)" in capsys.readouterr().err
    _on_actors(actors_used, 2)
    assert _rows(tmp_path / "ray") == local


@pytest.mark.parametrize("command", ["certify", "attack"])
def test_ray_needs_out(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*COMMANDS[command], "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --executor ray needs --out") and err.count("\n") == 1
    assert main([*COMMANDS[command], "--out", str(tmp_path / "run"), "--workers", "2"]) == 2
    assert capsys.readouterr().err == "error: --workers need(s) --executor ray\n"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["certify", "attack"])
def test_without_ray_the_install_hint(command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.delitem(sys.modules, "robustbench_iqa.runner.ray_executor", raising=False)
    monkeypatch.delitem(sys.modules, "robustbench_iqa.runner.ray_items", raising=False)
    with pytest.raises(InputError) as hint:
        importlib.import_module("robustbench_iqa.runner.ray_items")
    assert main([*COMMANDS[command], "--out", str(tmp_path / "run"), "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {hint.value}\n" and "pip install 'robustbench_iqa[ray]'" in err
    assert not (tmp_path / "run" / RESULTS_FILE).exists()
