"""The report: every file is written from the store, the CLI works, the HTML renders in Chromium."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from robustbench_iqa.analysis.audit import attacked_point_summary
from robustbench_iqa.analysis.correlation import logistic4
from robustbench_iqa.cli import main
from robustbench_iqa.report import build_report, to_markdown
from robustbench_iqa.store import ResultsStore, RowKey

TABLES = {"correlation", "audit", "guarantee", "stability", "beyond"}
STUDIES = ["audit", "beyond", "certify", "stability"]

CONFIG = {"models": ["m1", "m2"], "alpha": 0.999, "sigma": 0.25, "seed": 0}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _populate(store: ResultsStore, studies: set[str]) -> None:
    """Small synthetic rows of every study, in the columns the analysis modules document."""
    rng = np.random.default_rng(0)
    rows: list[tuple[RowKey, dict[str, object]]] = []
    for model in ("m1", "m2"):
        for defense, sigma, seed, i in np.ndindex(2, 2, 2, 12):
            d, s = ("fs-iqa", "ms")[defense], (0.1, 0.25)[sigma]
            t = rng.uniform(1, 5)
            rows.append((RowKey("correlation", model, d, s, f"img{i}", f"seed={seed}"),
                         {"score": float(logistic4(t + rng.normal(0, 0.4), 1, 0, 3, 0.7)), "target": t,
                          "seed": int(seed), "seconds_predict": 0.01, "seconds_certify": 0.4}))
        for i in range(16):
            m = rng.uniform(0.3, 0.7)
            rows.append((RowKey("audit", model, "fs-iqa", 0.25, f"img{i}", "l2"),
                         {"lower": m - 0.1, "upper": m + 0.1, "abstained": i == 0,
                          **attacked_point_summary(m + rng.normal(0, 0.05, 500)).iloc[0].to_dict(),
                          "feature_change": 0.1, "feature_radius": 0.25}))
            rows.append((RowKey("guarantee", model, "fs-iqa", 0.25, f"img{i}"),
                         {"eps_x": rng.exponential(0.1), "lower": m - 0.1, "upper": m + 0.1 + rng.uniform(0, 0.1),
                          "abstained": False}))
            for n, seed in np.ndindex(2, 3):
                nn = (100, 1000)[n]
                rows.append((RowKey("stability", model, "fs-iqa", 0.25, f"img{i}", f"n={nn},seed={seed}"),
                             {"n": nn, "seed": int(seed), "score": m + rng.normal(0, 0.1 / np.sqrt(nn))}))
            for defense, norm in np.ndindex(2, 3):
                d, nm = ("none", "fs-iqa")[defense], (0.02, 0.05, 0.1)[norm]
                rows.append((RowKey("beyond", model, d, 0.0 if d == "none" else 0.25, f"img{i}", f"l2={nm}"),
                             {"norm": nm, "clean": m, "adv": m * (1 + (2 if d == "none" else -0.3) * nm)}))
    store.put_many([(k, p) for k, p in rows if k.table in studies])


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    run = tmp_path_factory.mktemp("run")
    with ResultsStore.open(run, CONFIG) as store:
        _populate(store, TABLES | {"custom"})
        store.put(RowKey("custom", "m1", image="x"), {"v": 1})
    return run, build_report(run, progress=False)


def test_report_writes_every_table_and_figure(full_report: tuple[Path, object]) -> None:
    run, result = full_report
    out = run / "report"
    assert result.studies == STUDIES  # type: ignore[attr-defined]
    expected = {
        "certify_correlation", "certify_correlation_summary", "certify_correlation_groups", "audit_rates",
        "audit_images", "stability_stability", "stability_images", "beyond_curves", "certify_guarantee_bins",
    }
    for stem in expected:
        assert (out / f"{stem}.csv").stat().st_size > 0
        assert (out / f"{stem}.md").read_text().startswith("| ")
    for fig in ("certify_correlation", "audit_audit", "stability_stability", "beyond_beyond",
                "certify_guarantee"):
        assert (out / f"{fig}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"<svg" in (out / f"{fig}.svg").read_bytes()[:2000]
    for table in [*TABLES, "custom"]:
        assert (out / "data" / f"{table}.csv").exists() and (out / "data" / f"{table}.parquet").exists()
    assert any("custom" in n for n in result.notes)  # type: ignore[attr-defined]
    # The tables are computed from the store: one row per defense in the correlation table.
    table = pd.read_csv(out / "certify_correlation.csv")
    assert table["defense"].tolist() == ["fs-iqa", "ms"]
    assert pd.read_csv(out / "audit_rates.csv")["passed"].all()


def test_html_is_self_contained(full_report: tuple[Path, object]) -> None:
    run, _ = full_report
    page = (run / "report" / "report.html").read_text()
    srcs = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert len(srcs) == 5 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)="(?!data:)', page)  # no external resources
    assert page.count("<table") == 6
    assert '"alpha": 0.999' in html.unescape(page)


def test_cli_report_and_missing_studies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ResultsStore.open(tmp_path / "run", CONFIG) as store:
        _populate(store, {"beyond", "guarantee"})
        # an audit study whose rows lack the median CI: skipped with a note, not a crash
        store.put(RowKey("audit", "m1", "fs-iqa", 0.25, "a"), {"lower": 0.1, "upper": 0.2, "abstained": False})
    out = tmp_path / "out"
    assert main(["report", str(tmp_path / "run"), "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    # the audit row without its attacked estimate is not judged (the gate's finite check fails it)
    assert "studies: beyond, certify" in text
    assert (out / "report.html").exists() and (out / "beyond_beyond.png").exists()
    assert not (out / "audit_rates.csv").exists()


def test_cli_report_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2  # a directory without a store
    assert "no results store" in capsys.readouterr().err
    ResultsStore.open(tmp_path / "empty", CONFIG).close()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no rows" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "empty"), "--confidence", "1.5"]) == 2
    assert "--confidence" in capsys.readouterr().err


def test_markdown_table() -> None:
    md = to_markdown(pd.DataFrame({"a": [1.23456, float("nan")], "b|c": ["x|y", True]}))
    # a "|" in a column name is escaped too (unescaped, it would split the header into three cells)
    assert md.splitlines() == ["| a | b\\|c |", "| --- | --- |", "| 1.235 | x\\|y |", "| – | yes |"]


_CHECK = """<script>
window.addEventListener('load', () => {
  const out = document.createElement('pre');
  out.id = 'rbiqa-check';
  out.textContent = JSON.stringify({
    images: Array.from(document.images).map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0})),
    tables: document.querySelectorAll('table').length,
    rows: Array.from(document.querySelectorAll('table')).map(t => t.tBodies[0] ? t.tBodies[0].rows.length : 0),
  });
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_html_renders_in_headless_chromium(full_report: tuple[Path, object], tmp_path: Path) -> None:
    run, _ = full_report
    page = (run / "report" / "report.html").read_text()
    # A control image that must NOT decode, so the check can fail.
    control = '<img alt="control-broken" src="data:image/png;base64,AAAA">'
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", control + _CHECK + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
           probe.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    found = re.search(r'<pre id="rbiqa-check">(.*?)</pre>', dom, re.S)
    assert found, "the probe script did not run"
    check = json.loads(html.unescape(found.group(1)))
    decoded = {i["alt"]: i["ok"] for i in check["images"]}
    assert decoded.pop("control-broken") is False
    assert len(decoded) == 5 and all(decoded.values()), decoded
    assert check["tables"] == 6 and all(r > 0 for r in check["rows"])


def test_radius_kinds_say_what_each_defense_certifies() -> None:
    from robustbench_iqa.studies.certify import _main_radius_kind

    assert _main_radius_kind("fs-iqa") == "first-order"  # the IVE estimate
    assert {_main_radius_kind(d) for d in ("ms", "dms", "dms-iqa", "rs-reg", "cert-reg")} == {"input radius"}
    assert _main_radius_kind("not-registered") == "eps_x"
