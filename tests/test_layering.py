"""The package is built in floors: every first-party import goes down, none goes up or sideways.

A *unit* is a first-level part of ``robustbench_iqa``: a subpackage (``models``, ``certify``, ...)
or a top-level module (``store``, ``report``, ...); the folders ``certify/``, ``attacks/`` and
``analysis/`` beside the package count as ``robustbench_iqa.certify`` and so on (they are reached
through links inside the package).  Every import counts, wherever it stands: at module level,
inside a function (a lazy import) and under ``if TYPE_CHECKING:``, since each of them is a
dependency that a reader, a type checker or a later call follows.  The graph of units must have
no cycle, and every edge must go to a strictly lower floor of :data:`FLOORS`.

The checker is run on the source tree with :mod:`ast` (nothing is imported), and on a planted
package tree to show that it can fail.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "robustbench_iqa"
LINKED = ("certify", "attacks", "analysis")
"""Top-level folders reached as ``robustbench_iqa.<name>``."""

FLOORS: tuple[tuple[str, frozenset[str]], ...] = (
    ("foundation", frozenset({
        "robustbench_iqa", "errors", "mode", "orientation", "safe_cells", "headline", "outputs",
        "allocator", "run_protocol",
    })),
    ("ground", frozenset({
        "registry", "validation", "runlock", "plugins", "order_statistics", "provenance",
        "defense_protocol",
    })),
    ("settings, data and Lipschitz machinery", frozenset({"typed_config", "data", "lipschitz"})),
    ("options, store and analysis", frozenset({"options", "store", "analysis"})),
    ("models", frozenset({"models"})),
    ("attacks", frozenset({"attacks"})),
    ("defenses", frozenset({"certify"})),
    ("studies and benchmarks", frozenset({"studies", "bench"})),
    ("report", frozenset({"report"})),
    ("runner", frozenset({"runner"})),
    ("command line", frozenset({"cli"})),
)
"""The floors, bottom first.  A unit may import only units of lower floors."""


@dataclass(frozen=True)
class Edge:
    """One first-party import between two units: where it stands and how it is reached."""

    source: str
    target: str
    where: str
    """``path:line`` of the import statement."""
    kind: str
    """``"module"`` (module level), ``"function"`` (inside a function) or ``"type-checking"``."""

    def __str__(self) -> str:
        return f"{self.where}: {self.source} -> {self.target} ({self.kind})"


def module_files(root: Path, package: str = PACKAGE, linked: Iterable[str] = LINKED) -> dict[str, Path]:
    """Dotted module name -> source file, for the package and the linked top-level folders."""
    linked = tuple(linked)
    out: dict[str, Path] = {}
    trees = [(root / package, package)] + [(root / name, f"{package}.{name}") for name in linked]
    for base, dotted in trees:
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base)
            if base == root / package and rel.parts[0] in linked:
                continue  # the links inside the package: counted once, from the top-level folder
            parts = [dotted, *rel.with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def unit_of(module: str, package: str = PACKAGE) -> str:
    parts = module.split(".")
    return package if len(parts) == 1 else parts[1]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module) -> Iterator[tuple[ast.stmt | ast.Call, str]]:
    """Every import node of ``tree`` with its context: module, function or type-checking."""

    def walk(node: ast.AST, kind: str) -> Iterator[tuple[ast.stmt | ast.Call, str]]:
        for child in ast.iter_child_nodes(node):
            here = kind
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                here = "function" if kind == "module" else kind
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, here
            elif isinstance(child, ast.Call):
                yield child, here
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), "type-checking")
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), here)
                continue
            yield from walk(child, here)

    yield from walk(tree, "module")


def _targets(node: ast.stmt | ast.Call, module: str, is_package: bool, known: Mapping[str, Path]) -> list[str]:
    """The first-party modules an import statement (or ``importlib.import_module("...")``) reaches."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            here = module.split(".") if is_package else module.split(".")[:-1]
            base = here[: len(here) - node.level + 1]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        # ``from pkg import sub`` reaches the submodule ``pkg.sub`` when there is one.
        subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known]
        return subs or [mod]
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str):
        return [node.args[0].value]
    return []


def import_graph(root: Path, package: str = PACKAGE, linked: Iterable[str] = LINKED) -> list[Edge]:
    """Every first-party import between two different units of the tree at ``root``."""
    known = module_files(root, package, linked)
    edges: list[Edge] = []
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, kind in _imports(tree):
            for target in _targets(node, module, path.name == "__init__.py", known):
                if target != package and not target.startswith(package + "."):
                    continue
                a, b = unit_of(module, package), unit_of(target, package)
                if a != b:
                    edges.append(Edge(a, b, f"{path.relative_to(root)}:{node.lineno}", kind))
    return edges


def cycles(edges: Iterable[Edge]) -> list[list[str]]:
    """The strongly connected components of more than one unit (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def floor_of(floors: tuple[tuple[str, frozenset[str]], ...]) -> dict[str, int]:
    return {unit: i for i, (_, units) in enumerate(floors) for unit in units}


def not_downward(edges: Iterable[Edge], floors: tuple[tuple[str, frozenset[str]], ...]) -> list[Edge]:
    """The edges that do not go to a strictly lower floor (or touch a unit on no floor)."""
    level = floor_of(floors)
    return [e for e in edges
            if e.source not in level or e.target not in level or level[e.target] >= level[e.source]]


def _explain(edges: Iterable[Edge], floors: tuple[tuple[str, frozenset[str]], ...]) -> str:
    level = floor_of(floors)

    def name(u: str) -> str:
        return f"{u} [{floors[level[u]][0]}]" if u in level else f"{u} [on no floor]"

    return "\n".join(f"  {e.where}: {name(e.source)} imports {name(e.target)} ({e.kind})"
                     for e in sorted(edges, key=lambda e: e.where))


# ------------------------------------------------------------------------ the source tree
@pytest.fixture(scope="module")
def graph() -> list[Edge]:
    return import_graph(REPO)


def test_the_units_import_each_other_without_a_cycle(graph: list[Edge]) -> None:
    found = cycles(graph)
    detail = "\n".join(
        f"cycle {comp}:\n" + _explain([e for e in graph if e.source in comp and e.target in comp], FLOORS)
        for comp in found)
    assert not found, f"import cycles between units (lazy and type-checking imports count):\n{detail}"


def test_every_import_goes_down_a_floor(graph: list[Edge]) -> None:
    bad = not_downward(graph, FLOORS)
    assert not bad, ("imports that do not go to a lower floor (move the shared piece down, or "
                     "place a new unit on a floor of FLOORS):\n" + _explain(bad, FLOORS))


def test_every_unit_stands_on_exactly_one_floor(graph: list[Edge]) -> None:
    units = {unit_of(m) for m in module_files(REPO)}
    declared = [u for _, us in FLOORS for u in us]
    assert len(declared) == len(set(declared)), "a unit is declared on two floors"
    assert units == set(declared), (f"units without a floor: {sorted(units - set(declared))}; "
                                    f"floors naming no unit: {sorted(set(declared) - units)}")


# ------------------------------------------------------------------- the checker can fail
def _write(root: Path, files: Mapping[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text), encoding="utf-8")


PLANTED_FLOORS = (("low", frozenset({"pkg", "low"})), ("high", frozenset({"high", "linked"})))


def test_the_checker_reports_a_planted_upward_and_a_planted_lazy_import(tmp_path: Path) -> None:
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low/__init__.py": "",
        "pkg/low/base.py": "VALUE = 1\n",
        # planted: an upward import at module level, written relative to the package
        "pkg/low/up.py": "from ..high import top\n",
        # planted: an upward import hidden inside a function
        "pkg/low/lazy.py": """\
            def later():
                from pkg.high.top import THING
                return THING
            """,
        # planted: an upward import for the type checker only, into a linked top-level folder
        "pkg/low/typed.py": """\
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from pkg.linked.mod import Thing
            """,
        "pkg/high/__init__.py": "",
        # downward, relative and absolute: allowed
        "pkg/high/top.py": "from ..low import base\nfrom pkg.low.base import VALUE\nTHING = VALUE\n",
        "linked/__init__.py": "",
        "linked/mod.py": "import importlib\nBASE = importlib.import_module('pkg.low.base')\nclass Thing: ...\n",
    })
    edges = import_graph(tmp_path, "pkg", ("linked",))
    where = {(e.where, e.source, e.target, e.kind) for e in edges}
    assert (str(Path("pkg/low/up.py")) + ":1", "low", "high", "module") in where
    assert (str(Path("pkg/low/lazy.py")) + ":2", "low", "high", "function") in where
    assert (str(Path("pkg/low/typed.py")) + ":3", "low", "linked", "type-checking") in where
    assert (str(Path("pkg/high/top.py")) + ":1", "high", "low", "module") in where  # relative import resolved
    assert (str(Path("linked/mod.py")) + ":2", "linked", "low", "module") in where  # import_module("...")

    bad = not_downward(edges, PLANTED_FLOORS)
    assert sorted(e.where for e in bad) == sorted(
        str(Path(p)) for p in ("pkg/low/lazy.py:2", "pkg/low/typed.py:3", "pkg/low/up.py:1"))
    text = _explain(bad, PLANTED_FLOORS)
    assert "pkg/low/lazy.py:2: low [low] imports high [high] (function)" in text.replace("\\", "/")
    assert cycles(edges) == [["high", "linked", "low"]]

    # Without the planted imports the same tree passes.
    for rel in ("pkg/low/up.py", "pkg/low/lazy.py", "pkg/low/typed.py"):
        (tmp_path / rel).unlink()
    edges = import_graph(tmp_path, "pkg", ("linked",))
    assert not not_downward(edges, PLANTED_FLOORS) and not cycles(edges)


def test_a_unit_on_no_floor_is_reported(tmp_path: Path) -> None:
    _write(tmp_path, {"pkg/__init__.py": "", "pkg/low.py": "", "pkg/stray.py": "from pkg import low\n"})
    bad = not_downward(import_graph(tmp_path, "pkg", ()), PLANTED_FLOORS)
    assert [(e.source, e.target) for e in bad] == [("stray", "low")]
    assert "stray [on no floor]" in _explain(bad, PLANTED_FLOORS)


def test_the_contributing_page_shows_the_floors_the_test_enforces() -> None:
    """docs/contributing.md's floor table lists exactly :data:`FLOORS`, bottom first."""
    text = (REPO / "docs" / "contributing.md").read_text()
    section = text.split("### How the package is layered", 1)[1]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ") and not ln.startswith("| floor")]
    shown = [frozenset(u.split("(")[0].strip(" `") for u in ln.strip("|").split("|")[1].split(",")) for ln in rows]
    assert shown == [units for _, units in FLOORS]
