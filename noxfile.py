"""Sessions: tests, lint, verify (the research-CI gate), bench, docs (generated numbers) and site.

Settings are read from pyproject.toml (``[tool.robustbench_iqa.nox]``), not repeated here.
"""

from __future__ import annotations

import nox

PYPROJECT = nox.project.load_toml("pyproject.toml")
SETTINGS = PYPROJECT["tool"]["robustbench_iqa"]["nox"]
PYTHON = SETTINGS.get("python")

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True


def _install(session: nox.Session, *extras: str) -> None:
    spec = f".[{','.join(extras)}]" if extras else "."
    session.install("-e", spec)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The full fast test suite (slow tests are opt-in: `nox -s tests -- -m slow`); with the ray
    extra, so the Ray executor's tests run on a local cluster, and the fidelity extra, so the
    published models are compared with their official implementations."""
    _install(session, "dev", "ray", "fidelity")
    args = session.posargs or SETTINGS["tests"][1:]
    session.run(SETTINGS["tests"][0], *args)


@nox.session(python=PYTHON)
def fidelity(session: nox.Session) -> None:
    """The published models against their official implementations (the `fidelity` extra)."""
    _install(session, "dev", "fidelity")
    args = session.posargs or SETTINGS["fidelity"][1:]
    session.run(SETTINGS["fidelity"][0], *args)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff and mypy on the checkout itself (certify/, attacks/ and analysis/ are reached as
    ``robustbench_iqa.certify`` etc. through links inside ``robustbench_iqa/``, so mypy reads the
    one package tree a clone imports)."""
    _install(session, "dev")
    session.run("ruff", "check", "robustbench_iqa", "certify", "attacks", "analysis", "tests", "scripts")
    session.run("mypy", "-p", "robustbench_iqa")


@nox.session(python=PYTHON)
def verify(session: nox.Session) -> None:
    """The research-CI gate on the embedded default (configured in [tool.robustbench_iqa.verify]).

    Without arguments it starts over (``--fresh``) in runs/verify; ``nox -s verify -- --resume``
    continues a killed run.
    """
    _install(session)
    session.run("robustbench-iqa", "verify", *(session.posargs or ["--fresh"]))


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Re-measure the numbers README.md and docs/ quote (gate result, times, planted table, profile)."""
    _install(session)
    session.run("python", "scripts/readme_numbers.py", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Speed and memory of certification, as ratios to one undefended forward pass."""
    _install(session)
    session.run("robustbench-iqa", "bench", *session.posargs)


@nox.session(python=PYTHON)
def site(session: nox.Session) -> None:
    """Build the documentation site into site/ with warnings as errors (broken links and anchors,
    pages missing from the navigation, docstrings griffe cannot read); needs only PyPI."""
    session.install(*PYPROJECT["project"]["optional-dependencies"]["docs"])
    session.env["NO_MKDOCS_2_WARNING"] = "1"
    session.run("mkdocs", "build", "--strict", *session.posargs)
