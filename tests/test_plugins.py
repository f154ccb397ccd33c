"""A model, a defense, an attack and a study installed from OUTSIDE the package (a plugin module with
its entry points in a folder on the path), run through the CLI, verify (with the defense's own
options from the config) and report, with no edit to the suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.plugin_fixture import ENTRY_POINTS, PLUGIN

REPO = Path(__file__).resolve().parents[1]

CONFIG = """
[tool.robustbench_iqa.verify]
models = ["plugin-contrast"]
defenses = ["quantile", "quantile-low"]
limit = 2
n = 400
alpha = 0.99
batch_size = 2
studies = ["certify", "audit", "contrast"]

[tool.robustbench_iqa.verify.audit]
n = 400
steps = 2
eot = 4
resample_n = 0

[tool.robustbench_iqa.verify.contrast]
max_contrast = 0.99

[tool.robustbench_iqa.verify.defense.quantile-low]
defense = "quantile"
q = 0.2
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the plugin as an installed distribution: its module and its entry points."""
    root = tmp_path_factory.mktemp("plugin-site")
    (root / "iqa_plugin.py").write_text(PLUGIN)
    info = root / "iqa_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: iqa-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    (root / "pyproject.toml").write_text(CONFIG)
    return root


def cli(site: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "robustbench_iqa.cli", *argv], cwd=site, env=env,
                          capture_output=True, text=True, timeout=600)


def rows(out: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_the_plugin_is_listed_with_its_options(site: Path) -> None:
    p = cli(site, "list", "--options")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "plugin-contrast" in out and "[NR, higher=better" in out
    assert "quantile " in out and "[input noise, quantile]" in out
    assert "q: float = 0.5" in out and "eps: float | None = None  [certify]" in out
    assert "plugin-ifgsm" in out and "shrink: float = 0.8" in out
    assert "contrast" in out.split("studies:")[1]


@pytest.mark.slow
def test_the_plugin_defense_certifies_through_the_cli_with_its_own_option(site: Path) -> None:
    base = ["certify", "--model", "plugin-contrast", "--dataset", "default", "--limit", "2", "--defense",
            "quantile", "--n", "400", "--alpha", "0.99", "--json", "--no-progress"]
    got = {}
    for q in ("0.3", "0.7"):
        p = cli(site, *base, "--option", f"q={q}")
        assert p.returncode == 0, p.stderr[-2000:]
        got[q] = rows(p.stdout)
    for lo, hi in zip(got["0.3"], got["0.7"]):
        for r in (lo, hi):
            assert r["lower"] <= r["score"] <= r["upper"] and r["eps_x"] == 0.125 and not r["abstained"]
        assert lo["score"] <= hi["score"]  # the same draws: a lower quantile is no larger
    p = cli(site, *base, "--option", "qq=0.3")
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "did you mean 'q'" in p.stderr, p.stderr
    p = cli(site, *base, "--n", "5")  # the defense's own preflight, before any model is built
    assert p.returncode == 2 and "too few for the quantile bounds" in p.stderr, p.stderr


@pytest.mark.slow
def test_the_plugin_attack_hits_the_plugin_defense_through_its_own_aggregate(site: Path) -> None:
    p = cli(site, "attack", "--model", "plugin-contrast", "--dataset", "default", "--limit", "1",
            "--attack", "plugin-ifgsm", "--attack-option", "shrink=0.5", "--steps", "3", "--eps", "0.03",
            "--defense", "quantile", "--option", "q=0.3", "--sigma", "0.1", "--eot", "4", "--n", "64",
            "--json", "--no-progress")
    assert p.returncode == 0, p.stderr[-2000:]
    row = rows(p.stdout)[0]
    assert row["linf"] <= 0.03 + 1e-6 and row["gain"] >= 0


@pytest.mark.slow
def test_the_plugin_runs_through_verify_and_report(site: Path) -> None:
    run = site / "run"
    p = cli(site, "verify", "--out", str(run), "--no-report", "--json", "--no-progress")
    assert p.returncode in (0, 1), p.stderr[-3000:]  # 1: a check failed (the verdict), not an error
    checks = [r for r in rows(p.stdout) if "check" in r]
    names = {(c["check"], c["defense"]) for c in checks}
    for d in ("quantile", "quantile-low"):
        assert ("certificate audit", d) in names and ("contrast", d) in names, names
    failed = [c for c in checks if not c["passed"]]
    assert not failed, failed
    audit = [c["detail"] for c in checks if c["check"] == "certificate audit"]
    assert all("0/2 violations" in d for d in audit), audit  # both images audited, per defense name
    p = cli(site, "report", str(run), "--no-progress")
    assert p.returncode == 0, p.stderr[-3000:]
    html = Path(p.stdout.split("html: ")[1].strip()).read_text()
    assert "quantile-low" in html and "Certificate audit" in html
    assert (run / "report" / "data" / "contrast.csv").is_file()  # the plugin study's rows are exported
