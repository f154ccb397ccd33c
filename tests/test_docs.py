"""The README and the documentation pages (docs/*.md) hold only examples that work: every verify
configuration parses and validates, every Python block runs (in a fresh interpreter) and prints,
every `robustbench-iqa` command line parses with the real parser, nothing is a literal `[--flag]`,
and every generated block has its generator."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from robustbench_iqa.runner import VerifyConfig

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def _script(name: str):  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(REPO / "scripts"))


def _block(page: Path, name: str) -> str:
    return page.read_text().split(f"<!-- BEGIN generated:{name} -->\n")[1].split(f"\n<!-- END generated:{name} -->")[0]


def _blocks(lang: str) -> list[tuple[str, str]]:
    out = []
    for page in PAGES:
        for block in re.findall(rf"```{lang}\n(.*?)```", page.read_text(), re.S):
            out.append((str(page.relative_to(REPO)), block))
    return out


def _ids(blocks: list[tuple[str, str]]) -> list[str]:
    return [f"{page}:{i}" for i, (page, _) in enumerate(blocks)]


VERIFY = [(p, b) for p, b in _blocks("toml") if "[tool.robustbench_iqa.verify]" in b]
PYTHON = _blocks("python")
BASH = _blocks("bash")


def test_the_pages_show_verify_configs_and_python() -> None:
    assert len(VERIFY) >= 3 and len(PYTHON) >= 2 and len(BASH) >= 8
    assert len((REPO / "README.md").read_bytes()) < 8000  # the README stays about one screen


@pytest.mark.parametrize("block", [b for _, b in VERIFY], ids=_ids(VERIFY))
def test_verify_config_is_valid(block: str) -> None:
    table = tomllib.loads(block)["tool"]["robustbench_iqa"]["verify"]
    cfg = VerifyConfig.from_mapping(table).validate()
    assert cfg.models and cfg.defense_cases()


@pytest.mark.parametrize("block", [b for _, b in PYTHON], ids=_ids(PYTHON))
def test_python_block_runs(block: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, env=env,
                          timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip()  # the example shows its result


def _command_lines() -> list[tuple[str, str]]:
    out = []
    for page, block in BASH:
        for line in block.splitlines():
            line = line.split(" # ")[0].split("  #")[0]
            if "robustbench-iqa " in line and not line.lstrip().startswith("#"):
                out.append((page, line[line.index("robustbench-iqa "):].split(";")[0].split("&&")[0].strip()))
    return out


COMMANDS = _command_lines()


def test_no_example_holds_a_literal_optional_flag() -> None:
    for page in PAGES:
        for block in re.findall(r"```(?:bash|text|toml)?\n(.*?)```", page.read_text(), re.S):
            assert not re.search(r"\[--", block), f"{page.name}: {block}"


@pytest.mark.parametrize("line", [c for _, c in COMMANDS], ids=_ids(COMMANDS))
def test_every_documented_command_line_parses(line: str) -> None:
    from robustbench_iqa.cli import build_parser

    # a GPU is this machine's question, not the example's: parse `--device cuda` as cpu
    words = ["cpu" if w == "cuda" else w for w in shlex.split(line)[1:]]
    command = next(w for w in words if not w.startswith("-"))
    parser = build_parser(command)
    args = parser.parse_args(words)  # an unknown flag or a bad value raises (exit 2 at the CLI)
    assert args.command == command


def test_every_generated_block_has_its_generator(tmp_path: Path) -> None:
    readme_numbers = _script("readme_numbers")
    text = "\n".join(p.read_text() for p in PAGES)
    found = set(re.findall(r"<!-- BEGIN generated:([a-z][a-z0-9-]*) -->", text))
    assert found == set(re.findall(r"<!-- END generated:([a-z][a-z0-9-]*) -->", text))
    made = {*readme_numbers.BLOCKS, "verify-full"}  # block_verify writes verify and verify-full
    assert made <= found  # nox -s docs has a place for everything it measures
    # printed by scripts/empirical_defense_numbers.py and scripts/real_network_numbers.py
    assert found - made == {"empirical", "real-networks"}
    # write_blocks rewrites the block in every page holding it and refuses one found nowhere
    a, b = tmp_path / "a.md", tmp_path / "b.md"
    a.write_text("x\n<!-- BEGIN generated:quick -->\nold\n<!-- END generated:quick -->\ny\n")
    b.write_text("no block\n")
    assert readme_numbers.write_blocks({"quick": "new"}, [a, b]) == [a]
    assert a.read_text() == "x\n<!-- BEGIN generated:quick -->\nnew\n<!-- END generated:quick -->\ny\n"
    with pytest.raises(SystemExit, match="verify-full"):
        readme_numbers.write_blocks({"verify-full": "t"}, [b])


def test_every_page_is_in_the_site_navigation() -> None:
    nav = (REPO / "mkdocs.yml").read_text()
    for page in (REPO / "docs").rglob("*.md"):
        assert str(page.relative_to(REPO / "docs")) in nav, page


def _table_cells(block: str) -> tuple[list[str], list[list[str]]]:
    lines = [ln for ln in block.splitlines() if ln.startswith("|")]
    split = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return split[0], split[2:]


def test_the_readme_table_is_the_headline_of_the_full_table() -> None:
    """The shipped blocks agree with each other and with the generator's layout: the README's
    table is the gate page's table cut to the headline columns, row for row."""
    readme_numbers = _script("readme_numbers")

    head, rows = _table_cells(_block(REPO / "README.md", "verify"))
    full_head, full_rows = _table_cells(_block(REPO / "docs" / "gate.md", "verify-full"))
    assert head[:5] == ["model", "defense", "sigma", "radius", "gate"] and rows and len(rows) == len(full_rows)
    for row, full in zip(rows, full_rows, strict=True):
        assert row == [full[full_head.index(c)] for c in head]
    # the generator makes the same layout: the headline from summary rows in any key order, the
    # rest of the columns in the order the studies gave them
    shuffled = [dict(sorted(zip(full_head, r, strict=True))) for r in full_rows]
    assert _table_cells(readme_numbers.verify_tables(shuffled, "timing")["verify"]) == (head, rows)
    given = [dict(zip(full_head, r, strict=True)) for r in full_rows]
    assert _table_cells(readme_numbers.verify_tables(given, "timing")["verify-full"]) == (full_head, full_rows)


def test_sphinx_roles_become_code_spans_on_the_site() -> None:
    rewrite_roles = _script("griffe_sphinx_roles").rewrite_roles
    text = ("see :class:`~robustbench_iqa.certify.result.RadiusKind`, :func:`create_model`, "
            ":meth:`FeatureSmoothedIQA.lipschitz_bound` and :py:mod:`the gate <robustbench_iqa.runner>`; "
            "a ``literal`` and an :unknown:`role` stay")
    assert rewrite_roles(text) == ("see `RadiusKind`, `create_model`, `FeatureSmoothedIQA.lipschitz_bound` and "
                                   "`the gate`; a ``literal`` and an :unknown:`role` stay")


def test_the_site_lists_every_command_and_option() -> None:
    """The generated command-line reference holds every subcommand (nested ones too) and every
    option string its parser accepts, and the page has the marker the hook replaces."""
    import argparse

    from robustbench_iqa.cli import _commands, build_parser

    hook = _script("mkdocs_cli_reference")
    page = (REPO / "docs" / "cli.md").read_text()
    assert hook.MARKER in page
    text = hook.on_page_markdown(page, None, None, None)
    assert hook.MARKER not in text

    def walk(parser: argparse.ArgumentParser, prefix: str) -> list[tuple[str, str]]:
        found = [(prefix, o) for a in parser._actions for o in a.option_strings]
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    found += [(f"{prefix} {name}".strip(), "")] + walk(sub, f"{prefix} {name}".strip())
        return found

    expected = []
    for command in _commands():
        sub = next(a for a in build_parser(command)._actions if isinstance(a, argparse._SubParsersAction))
        expected += [(command, "")] + walk(sub.choices[command], command)
    assert len(expected) > 100
    sections = dict(re.findall(r"### `robustbench-iqa ([^`]+)`\n\n```text\n(.*?)```", text, re.S))
    for command, option in expected:
        assert command in sections, command
        assert option in sections[command], (command, option)


def test_the_real_network_table_is_rendered_from_the_shipped_results() -> None:
    """README.md and docs/models.md show exactly what the shipped results file renders to, and so
    does the full Markdown file: no hand-edited number, no stale table after a re-run."""
    import json

    rn = _script("real_network_numbers")
    results = rn.normalized(json.loads((REPO / "benchmarks" / "results-real-networks.json").read_text()))
    table = rn.readme_table(results)
    for page in (REPO / "README.md", REPO / "docs" / "models.md"):
        assert _block(page, "real-networks") == table, page
    assert (REPO / "benchmarks" / "results-real-networks.md").read_text() == rn.markdown(results)
    # every registered real network is in it, FR and NR, with a gate verdict and a cost
    for model in ("st-lpips-alex", "st-lpips-vgg", "st-lpips-alex-nr"):
        rows = [ln for ln in table.splitlines() if ln.startswith(f"| `{model}` |")]
        assert rows, model
        assert any("PASS" in r or "FAIL" in r for r in rows), model
        assert any(r.rstrip(" |").endswith("x") for r in rows), model


def test_the_real_network_table_counts_what_it_says() -> None:
    """A hand-made results file: medians at 96x128 only, failures summed over sizes, a gate's
    failed checks named, an unmeasured cell shown as '-'."""
    rn = _script("real_network_numbers")

    def kind(radii: list[float], failures: int) -> dict[str, object]:
        return {"radii": radii, "failures": failures, "max_change_over_sigma": 2.0}

    radii = [
        {"model": "m", "sigma": 0.25, "size": "96x128", "first_order": kind([0.1, 0.3, 0.2], 2),
         "lipschitz": kind([1e-9, 1e-9, 1e-9], 0), "local": {"radii": [], "why": "not available"}},
        {"model": "m", "sigma": 0.25, "size": "384x512", "first_order": kind([9.0], 1),
         "lipschitz": kind([5e-9], 0), "local": {"radii": [], "why": "not available"}},
    ]
    results = {"radii": radii, "gate": [{"model": "m", "sigma": 0.25, "passed": False, "failed": ["a", "b"]},
                                        {"model": "m", "sigma": 0.5, "passed": True, "failed": []}],
               "accuracy": [{"model": "m", "sigma": 0.25, "srcc_undefended": 0.5, "srcc_defended": 0.25}],
               "cost": [], "settings": [{"date": "2026-01-01"}]}
    rows = [ln.strip("|").split("|") for ln in rn.readme_table(results).splitlines()[2:4]]
    cells = [[c.strip() for c in r] for r in rows]
    assert cells[0] == ["`m`", "0.25", "0.2", "3 / 4", "1e-09", "0 / 4", "-", "-", "FAIL (a, b)",
                        "0.50 -> 0.25", "-"]
    assert cells[1] == ["`m`", "0.5", "-", "-", "-", "-", "-", "-", "PASS", "-", "-"]


def test_the_st_lpips_heldout_table_is_the_training_record() -> None:
    """docs/models.md's held-out SRCC / PLCC table shows the shipped record's numbers, for every
    network whose FS-IQA heads ship, at every sigma shipped (no hand-typed drift)."""
    import json

    record = json.loads((REPO / "robustbench_iqa" / "weights" / "fs-iqa-st-lpips-heads.json").read_text())
    text = (REPO / "docs" / "models.md").read_text()
    section = text.split("Held-out SRCC / PLCC on the 210 images", 1)[1]
    head, rows = _table_cells("\n".join(ln for ln in section.splitlines()[:12] if ln.startswith("|")))
    sigmas = [c.split("=")[1] for c in head[2:]]
    shown = {r[0].split("`")[1]: r[1:] for r in rows}
    assert set(shown) == set(record["heldout"]) == set(record["undefended"])
    for model, cells in shown.items():
        und = record["undefended"][model]
        assert cells[0] == f"{und['srcc']:.3f} / {und['plcc']:.3f}", model
        for sigma, cell in zip(sigmas, cells[1:], strict=True):
            got = record["heldout"][model][sigma]
            assert cell == f"{got['srcc']:.3f} / {got['plcc']:.3f}", (model, sigma)
    for model in record["heldout"]:
        for sigma in record["heldout"][model]:
            assert (REPO / "robustbench_iqa" / "weights" / f"fs-iqa-{model}-sigma{sigma}.safetensors").is_file()
