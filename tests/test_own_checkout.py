"""A checkout runs its own code: its tests, its scripts and benchmarks, and its Ray workers.

An environment may hold an install of the package from somewhere else (a release, or the
editable install of another clone sharing the environment).  The tests put the checkout first
(``[tool.pytest.ini_options] pythonpath``); a script run as ``python scripts/x.py`` imports
``scripts/_checkout.py`` (or ``benchmarks/_checkout.py``) first; a Ray worker gets the driver's
package folder first on its ``PYTHONPATH``.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import robustbench_iqa

REPO = Path(__file__).resolve().parents[1]
SCRIPT_DIRS = ("scripts", "benchmarks")
HOOKS = {"mkdocs_cli_reference.py", "griffe_sphinx_roles.py"}
"""Site-build hooks loaded by mkdocs, not run as scripts (the first puts the checkout on the path itself)."""


def _first_party_imports(tree: ast.Module) -> list[int]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [node.lineno for a in node.names if a.name.split(".")[0] == "robustbench_iqa"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "robustbench_iqa":
            out.append(node.lineno)
    return out


def test_the_tests_import_this_checkout() -> None:
    assert Path(robustbench_iqa.__file__).resolve().is_relative_to(REPO)


@pytest.mark.parametrize("path", [p for d in SCRIPT_DIRS for p in sorted((REPO / d).glob("*.py"))
                                  if p.name not in HOOKS and p.name != "_checkout.py"],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_script_puts_its_checkout_first_before_importing_the_package(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    uses = _first_party_imports(tree)
    if not uses:
        pytest.skip("does not import robustbench_iqa")
    boot = [n.lineno for n in tree.body if isinstance(n, ast.Import) and any(a.name == "_checkout" for a in n.names)]
    assert boot, f"{path.name} imports robustbench_iqa without `import _checkout` first"
    assert boot[0] < min(uses), f"{path.name}: `import _checkout` (line {boot[0]}) comes after line {min(uses)}"


@pytest.mark.parametrize("folder", SCRIPT_DIRS)
def test_a_script_run_from_elsewhere_imports_this_checkout(folder: str, tmp_path: Path) -> None:
    """As ``python <checkout>/<folder>/x.py`` run from another directory: the folder is
    ``sys.path[0]``; after ``import _checkout`` the package is this checkout's."""
    code = (f"import sys; sys.path[0] = {str(REPO / folder)!r}; import _checkout; "
            "import robustbench_iqa; print(robustbench_iqa.__file__)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout.strip()
    assert Path(out).resolve().is_relative_to(REPO), out


def test_ray_workers_get_the_drivers_package_first(monkeypatch: pytest.MonkeyPatch) -> None:
    from robustbench_iqa.runner.ray_executor import package_runtime_env

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/elsewhere/a", "/elsewhere/b"]))
    path = package_runtime_env()["env_vars"]["PYTHONPATH"].split(os.pathsep)
    assert Path(path[0]).resolve() == REPO and path[1:] == ["/elsewhere/a", "/elsewhere/b"]
    monkeypatch.delenv("PYTHONPATH")
    assert [Path(p).resolve() for p in package_runtime_env()["env_vars"]["PYTHONPATH"].split(os.pathsep)] == [REPO]


def test_the_local_cluster_and_a_joined_one_are_given_that_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    from robustbench_iqa.runner import ray_executor
    from robustbench_iqa.runner.config import VerifyConfig

    seen: list[dict[str, Any]] = []

    class Context:
        address_info = {"node_ip_address": "127.0.0.1"}

    def init(**kwargs: Any) -> Context:
        seen.append(kwargs)
        return Context()

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    ray_executor.start_local_cluster(num_cpus=1, temp_dir="/tmp/unused")
    ray_executor.RayExecutor(VerifyConfig(), address="127.0.0.1:6379")._connect()
    assert len(seen) == 2
    assert all(kw["runtime_env"] == ray_executor.package_runtime_env() for kw in seen)
