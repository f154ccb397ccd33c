"""Regenerate the measured blocks of README.md and the documentation pages (``nox -s docs``).

Every number the README and ``docs/*.md`` quote about the gate is produced here, on the
machine it runs on, and written between ``<!-- BEGIN generated:NAME -->`` and
``<!-- END generated:NAME -->`` markers, in every file that holds them, with the date,
the machine, the torch version and a reference speed of the machine (single-thread
sgemm GFLOPS and one ``default-nr`` forward pass), so that times can be compared
across machines.  Blocks:

* ``verify`` (README.md): the gate's headline table on the default configuration (this
  repository's ``[tool.robustbench_iqa.verify]``), with its wall and CPU time;
  ``verify-full`` (docs/gate.md): every column of the same run;
* ``quick``: wall and CPU time of ``verify --quick``;
* ``planted``: "Can the gate see a wrong certificate?": per model (both embedded models and
  their Lipschitz-trained versions), the honest run's verdict and its detection power (the
  planted certificates the same run, on the same images, shows to be wrong: first-order radius
  inflated x1.5 and x2, interval shrunk 30% and 50%, sound radius inflated x2), then whole runs
  with the radius claimed x1.5, x2, x3, x10 (default audit settings);
* ``profile`` (docs/performance.md): the per-step breakdown of the default gate (also
  written to benchmarks/results-gate.md).

Usage: ``python scripts/readme_numbers.py [--only NAME ...] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _checkout  # noqa: F401  (this checkout first on sys.path)

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PLANTED_IMAGES = 50
"""Held-out images per model of the planted-certificate table."""
PAGES = [README, *sorted((REPO / "docs").rglob("*.md"))]
"""The files whose generated blocks this script rewrites."""


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def reference_speed() -> str:
    """The measuring machine's speed, to read its times by: single-thread sgemm GFLOPS (1024^3,
    best of 5) and one ``default-nr`` forward pass of a 96x128 image (best of 5)."""
    import torch

    from robustbench_iqa import create_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
        best = min(_seconds(lambda: a @ b) for _ in range(5))
        model = create_model("default-nr")
        x = torch.rand(1, 3, 96, 128)
        with torch.no_grad():
            model(x)
            fwd = min(_seconds(lambda: model(x)) for _ in range(5))
    finally:
        torch.set_num_threads(threads)
    return f"sgemm {2 * 1024 ** 3 / best / 1e9:.0f} GFLOPS on 1 thread, default-nr forward {fwd * 1e3:.1f} ms"


def _seconds(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


_SPEED: list[str] = []


def _machine(threads: int) -> str:
    import torch

    if not _SPEED:
        _SPEED.append(reference_speed())
    cores = os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"measured {time.strftime('%Y-%m-%d')} on {platform.machine()} with {cores} cores (load {load:.1f}), "
            f"torch {torch.__version__}, {threads} torch thread(s), CPU; {_SPEED[0]}")


def _timed_verify(cfg: Any, out: Path) -> tuple[Any, float, float]:
    from robustbench_iqa.runner import run_verify

    wall0, cpu0 = time.perf_counter(), _cpu()
    outcome = run_verify(cfg, out, report=True, progress=False)  # as the command runs: report included
    return outcome, time.perf_counter() - wall0, _cpu() - cpu0


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "–" if v != v else f"{v:.3g}"
    return str(v)


def _table(rows: list[dict[str, Any]], cols: list[str]) -> list[str]:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return lines + ["| " + " | ".join(_fmt(r.get(c, "–")) for c in cols) + " |" for r in rows]


def verify_tables(summary: list[dict[str, Any]], timing: str) -> dict[str, str]:
    """The ``verify`` block (README: the headline columns) and ``verify-full`` (docs/gate.md: every
    column), both in the order the report and the terminal show them."""
    from robustbench_iqa.headline import EVIDENCE, KEYS, RADIUS_KIND, VERDICT, summary_columns

    full = summary_columns(summary)
    short = [c for c in full if c in (*KEYS, *RADIUS_KIND, *VERDICT, *EVIDENCE)]
    return {"verify": "\n".join([*_table(summary, short), "", timing]),
            "verify-full": "\n".join([*_table(summary, full), "", timing])}


def block_verify(tmp: Path, threads: int) -> dict[str, str]:
    from robustbench_iqa.runner import load_config

    cfg = load_config(REPO / "pyproject.toml")
    outcome, wall, cpu = _timed_verify(cfg, tmp / "verify")
    result = "PASSED" if outcome.passed else "FAILED"
    timing = f"`robustbench-iqa verify`: {result} in {wall:.0f} s wall, {cpu:.0f} s CPU ({_machine(threads)})."
    return verify_tables(outcome.summary, timing)


def block_quick(tmp: Path, threads: int) -> str:
    from robustbench_iqa.cli.verify import QUICK
    from robustbench_iqa.runner import load_config

    cfg = load_config(REPO / "pyproject.toml", limit=QUICK["limit"])
    outcome, wall, cpu = _timed_verify(cfg, tmp / "quick")
    return (f"`robustbench-iqa verify --quick`: {'PASSED' if outcome.passed else 'FAILED'} in {wall:.0f} s wall, "
            f"{cpu:.0f} s CPU ({_machine(threads)}).")


def block_planted(tmp: Path, threads: int) -> str:
    from robustbench_iqa.certify.defense import DEFENSES, create_defense
    from robustbench_iqa.certify.result import CertifiedScore
    from robustbench_iqa.runner import VerifyConfig, run_verify

    def inflated(factor: float) -> Any:
        def build(model: Any, *, sigma: float) -> Any:
            fs = create_defense("fs-iqa", model, sigma=sigma)
            certify = fs.certify

            def wrapped(*a: Any, **k: Any) -> list[CertifiedScore]:
                return [r if r.abstained else CertifiedScore(**{**r.__dict__, "eps_x": r.eps_x * factor})
                        for r in certify(*a, **k)]

            fs.certify = wrapped  # type: ignore[method-assign]
            return fs

        return build

    def config(model: str, defense: str) -> Any:
        return VerifyConfig.from_mapping({"models": [model], "defenses": [defense], "limit": PLANTED_IMAGES,
                                          "studies": ["certify", "audit"]})

    models = ("default-nr", "default-fr", "default-nr-lip", "default-fr-lip")
    power: list[list[str]] = []
    planted_cols: list[str] = []
    for model in models:
        outcome = run_verify(config(model, "fs-iqa"), tmp / f"honest-{model}", report=False, progress=False)
        checks = {c.name: c.detail for c in outcome.checks if c.model == model}
        seen = dict(part.rsplit(" ", 1) for part in
                    checks.get("detection power", "").removeprefix("this run detects: ").split(", ") if part)
        planted_cols += [k for k in seen if k not in planted_cols]
        radius = outcome.summary[0].get("radius", "first_order") if outcome.summary else "–"
        power.append([model, radius, "PASS" if outcome.passed else "FAIL", *[seen.get(k, "–") for k in planted_cols]])
    head = ["model", "certified radius", "honest", *[f"detects {k}" for k in planted_cols]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r + ["–"] * (len(head) - len(r))) + " |" for r in power]

    factors = (1.0, 1.5, 2.0, 3.0, 10.0)
    rows = []
    for model in ("default-nr", "default-fr"):
        cells = [model]
        for f in factors:
            name = f"fs-iqa-x{f:g}"
            with DEFENSES.override(name, inflated(f), space="feature", statistic="median"):
                outcome = run_verify(config(model, name), tmp / f"planted-{model}-{f:g}", report=False,
                                     progress=False)
            failed = sorted({c.name for c in outcome.failures})
            cells.append("PASS" if outcome.passed else "FAIL (" + ", ".join(failed) + ")")
        rows.append(cells)
    head = ["model", *[f"eps_x x{f:g}" for f in factors]]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", f"({PLANTED_IMAGES} held-out images per model, default audit settings; {_machine(threads)}.)"]
    return "\n".join(lines)


def block_profile(tmp: Path, threads: int) -> str:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gate_profile

    out = REPO / "benchmarks" / "results-gate.md"
    gate_profile.main(["--threads", str(threads), "--config", str(REPO / "pyproject.toml"), "--markdown", str(out)])
    return out.read_text().strip()


BLOCKS: dict[str, Any] = {"verify": block_verify, "quick": block_quick, "planted": block_planted, "profile": block_profile}


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- BEGIN generated:{re.escape(name)} -->\n).*?(\n<!-- END generated:{re.escape(name)} -->)",
                      re.S)


def replace_block(text: str, name: str, body: str) -> str:
    pattern = _pattern(name)
    if not pattern.search(text):
        raise SystemExit(f"no generated:{name} block")
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), text)


def write_blocks(bodies: dict[str, str], pages: list[Path] | None = None) -> list[Path]:
    """Write each block into every page that holds its markers; a block found nowhere is an error."""
    written, found = [], set()
    for page in pages if pages is not None else PAGES:
        text = page.read_text()
        new = text
        for name, body in bodies.items():
            if _pattern(name).search(new):
                new = replace_block(new, name, body)
                found.add(name)
        if new != text:
            page.write_text(new)
            written.append(page)
    missing = sorted(set(bodies) - found)
    if missing:
        raise SystemExit(f"no page holds the generated block(s) {', '.join(missing)}")
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=list(BLOCKS), default=list(BLOCKS))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            print(f"measuring {name} ...", flush=True)
            body = BLOCKS[name](Path(tmp), args.threads)
            bodies = body if isinstance(body, dict) else {name: body}
            for page in write_blocks(bodies):
                print(f"wrote {page.relative_to(REPO)}", flush=True)
            print("\n\n".join(bodies.values()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
