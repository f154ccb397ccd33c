"""The gate's summary reads in order: headline columns first, a terminal table within 100 columns,
and the report's headline visible in a 1280 px browser window."""

from __future__ import annotations

import html
import json
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from robustbench_iqa.headline import cell, fit_table, order_columns, summary_columns
from robustbench_iqa.report import build_report
from robustbench_iqa.store import ResultsStore, RowKey

HEADLINE = ["model", "defense", "sigma", "radius_kind", "gate"]

# A summary row as the default gate writes it (19 evidence columns; 287 characters in one line).
EVIDENCE = {
    "images": 50, "abstained": 0, "mean_width": 0.0254, "median_eps_x": 0.137,
    "median_eps_x_per_value": 0.000715, "median_eps_x_lipschitz": 4.43e-08, "violations": "0/50",
    "inconclusive": 1, "premise_failed": "1/50", "max_feature_ratio": 1.41, "stability_%": 0.0367,
    "quality_gain@0.25_undefended": 0.0432, "quality_gain@0.25_defended": 0.029,
    "s/img_predict": 0.00592, "s/img_certify": 0.0547,
}


def _rows() -> list[dict[str, object]]:
    out = []
    for model, s in (("default-fr", 0.25), ("default-nr", 0.25), ("a-much-longer-model-name", 0.5)):
        out.append({"model": model, "defense": "fs-iqa", "sigma": s, **EVIDENCE,
                    "radius_kind": "first-order (estimate)", "gate": "PASS", "mean_width": float("nan")})
    return out


def test_headline_columns_come_first_then_the_evidence_in_given_order() -> None:
    cols = list(_rows()[0])
    shuffled = sorted(cols)  # the store keeps the stored summary's keys sorted
    ordered = order_columns(shuffled)
    assert ordered[:5] == HEADLINE
    first = ["images", "abstained", "violations", "inconclusive", "premise_failed", "median_eps_x",
             "median_eps_x_lipschitz", "mean_width"]  # the evidence the verdict rests on
    assert ordered[5:13] == first
    assert ordered[13:] == [c for c in shuffled if c not in HEADLINE + first]  # the rest: as given
    assert sorted(ordered) == sorted(cols)  # nothing lost, nothing doubled
    # without a radius kind (or with another name for it) the rest still follows the rule
    assert order_columns(["violations", "gate", "sigma", "model", "defense"]) == \
        ["model", "defense", "sigma", "gate", "violations"]
    assert order_columns(["x", "radius kind", "verdict", "model"]) == ["model", "radius kind", "verdict", "x"]
    assert summary_columns([{"b": 1, "model": "m"}, {"a": 2, "images": 3}]) == ["model", "images", "b", "a"]


def _parse_blocks(text: str) -> list[list[dict[str, str]]]:
    blocks = []
    for chunk in text.split("\n\n"):
        lines = chunk.splitlines()
        header = re.split(r"\s{2,}", lines[0].strip())
        assert set(lines[1].replace(" ", "")) == {"-"}
        blocks.append([dict(zip(header, re.split(r"\s{2,}", line.strip()), strict=True)) for line in lines[2:]])
    return blocks


@pytest.mark.parametrize("width", [100, 80, 72, 200])
def test_terminal_summary_fits_the_width_and_shows_every_value_once_by_its_row(width: int) -> None:
    rows = _rows()
    random.Random(width).shuffle(rows)
    text = fit_table(rows, width=width)
    assert max(len(line) for line in text.splitlines()) <= width
    one_line = len("  ".join(max(len(k), *(len(cell(r[k])) for r in rows)) * "x" for k in rows[0]))
    assert one_line > 250  # the layout it replaces wrapped on any terminal
    blocks = _parse_blocks(text)
    assert (len(blocks) == 1) == (width >= one_line)
    seen: dict[str, int] = {}
    for block in blocks:
        assert len(block) == len(rows)
        for parsed, row in zip(block, rows, strict=True):
            # every block names its row: model, defense and sigma repeat in each
            assert (parsed["model"], parsed["defense"], parsed["sigma"]) == \
                (row["model"], row["defense"], cell(row["sigma"]))
            for k, v in parsed.items():
                assert v == cell(row[k]), k
        for k in block[0]:
            seen[k] = seen.get(k, 0) + 1
    keys = {"model", "defense", "sigma"}
    assert {k: n for k, n in seen.items() if k not in keys} == {k: 1 for k in rows[0] if k not in keys}
    assert list(_parse_blocks(text)[0][0])[:5] == HEADLINE  # the first block opens with the headline
    assert not re.search(r"\bnan\b", text) and re.search(r"(^|\s)-(\s|$)", text, re.M)  # missing: a dash


def test_fit_table_refuses_a_width_too_small() -> None:
    with pytest.raises(ValueError, match="width"):
        fit_table(_rows(), width=10)


@pytest.fixture(scope="module")
def gate_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    with ResultsStore.open(run, {"models": ["default-nr"], "seed": 0}) as store:
        store.put(RowKey("custom", "default-nr", image="x"), {"v": 1})
        store.put_meta("gate", {"passed": True, "checks": [], "summary": _rows(),
                                "columns": summary_columns(_rows())})
    return build_report(run, progress=False).html


def test_report_headline_columns_in_order(gate_report: Path) -> None:
    page = gate_report.read_text()
    gate = page[page.index('<section id="gate">'):]
    header = re.findall(r"<th>(.*?)</th>", gate[: gate.index("</thead>")])
    assert [html.unescape(h) for h in header] == order_columns(_rows()[0])
    assert header[:5] == HEADLINE


def test_the_gate_stores_its_column_order(tmp_path: Path) -> None:
    from robustbench_iqa.runner.gate import GateResult

    stored = GateResult([], _rows()).to_dict()
    assert stored["columns"] == order_columns(_rows()[0])
    with ResultsStore.open(tmp_path, {"seed": 0}) as store:
        store.put_meta("gate", stored)
        back = store.get_meta("gate")
    assert list(back["summary"][0]) == sorted(_rows()[0])  # why the order is stored beside the rows
    assert back["columns"] == stored["columns"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

_PROBE = """<script>
window.addEventListener('load', () => {
  const th = Array.from(document.querySelectorAll('#gate thead th'));
  const out = document.createElement('pre');
  out.id = 'rbiqa-probe';
  out.textContent = JSON.stringify({
    viewport: window.innerWidth,
    page: document.documentElement.scrollWidth,
    heads: th.map(h => ({text: h.textContent, right: h.getBoundingClientRect().right})),
  });
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_report_headline_is_in_view_at_1280px(gate_report: Path, tmp_path: Path) -> None:
    probe = tmp_path / "probe.html"
    probe.write_text(gate_report.read_text().replace("</body>", _PROBE + "</body>"))
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
              f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900", "--virtual-time-budget=5000"]
    dom = subprocess.run([*common, "--dump-dom", probe.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    found = re.search(r'<pre id="rbiqa-probe">(.*?)</pre>', dom, re.S)
    assert found, "the probe script did not run"
    got = json.loads(html.unescape(found.group(1)))
    assert got["viewport"] == 1280
    heads = {h["text"]: h["right"] for h in got["heads"]}
    assert all(heads[c] <= 1280 for c in HEADLINE), heads  # model ... verdict on the first screen
    assert max(heads.values()) > 1280  # the evidence goes on to the right (the control: it can fail)
    assert got["page"] <= 1280  # ... inside its own scrolling box: the page itself does not widen
    shot = tmp_path / "report-1280.png"
    subprocess.run([*common, f"--screenshot={shot}", gate_report.as_uri()], capture_output=True,
                   timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
