"""Regenerate the measured blocks of README.md (``nox -s docs``).

Every number the README quotes about the gate is produced here, on the machine it
runs on, and written between ``<!-- BEGIN generated:NAME -->`` and
``<!-- END generated:NAME -->`` markers with the date, the machine and the torch
version.  Blocks:

* ``verify``: the gate's summary table on the default configuration (this repository's
  ``[tool.robustbench_iqa.verify]``), with its wall and CPU time;
* ``quick``: wall and CPU time of ``verify --quick``;
* ``planted``: "Can the gate see a wrong certificate?": per model (both embedded models and
  their Lipschitz-trained versions), the honest run's verdict and its detection power (the
  planted certificates the same run, on the same images, shows to be wrong: first-order radius
  inflated x1.5 and x2, interval shrunk 30% and 50%, sound radius inflated x2), then whole runs
  with the radius claimed x1.5, x2, x3, x10 (default audit settings);
* ``profile``: the per-step breakdown of the default gate (also written to
  benchmarks/results-gate.md).

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

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PLANTED_IMAGES = 50
"""Held-out images per model of the planted-certificate table."""


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _machine(threads: int) -> str:
    import torch

    cores = os.cpu_count()
    return (f"measured {time.strftime('%Y-%m-%d')} on {platform.machine()} with {cores} cores, "
            f"torch {torch.__version__}, {threads} torch thread(s), CPU")


def _timed_verify(cfg: Any, out: Path) -> tuple[Any, float, float]:
    from robustbench_iqa.runner import run_verify

    wall0, cpu0 = time.perf_counter(), _cpu()
    outcome = run_verify(cfg, out, report=True, progress=False)  # as the command runs: report included
    return outcome, time.perf_counter() - wall0, _cpu() - cpu0


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "–" if v != v else f"{v:.3g}"
    return str(v)


def block_verify(tmp: Path, threads: int) -> str:
    from robustbench_iqa.runner import load_config

    cfg = load_config(REPO / "pyproject.toml")
    outcome, wall, cpu = _timed_verify(cfg, tmp / "verify")
    cols = ["model", "defense", "sigma", "images", "abstained", "mean_width", "median_eps_x",
            "median_eps_x_per_value", "median_eps_x_lipschitz", "radius", "violations", "inconclusive", "premise_failed", "max_feature_ratio",
            "stability_%", "quality_gain@0.25_undefended", "quality_gain@0.25_defended", "s/img_predict",
            "s/img_certify", "gate"]
    cols = [c for c in cols if any(c in r for r in outcome.summary)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "–")) for c in cols) + " |" for r in outcome.summary]
    verdict = "PASSED" if outcome.passed else "FAILED"
    lines += ["", f"`robustbench-iqa verify`: {verdict} in {wall:.0f} s wall, {cpu:.0f} s CPU "
                  f"({_machine(threads)})."]
    return "\n".join(lines)


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


BLOCKS = {"verify": block_verify, "quick": block_quick, "planted": block_planted, "profile": block_profile}


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- BEGIN generated:{name} -->\n).*?(\n<!-- END generated:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no generated:{name} block")
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=list(BLOCKS), default=list(BLOCKS))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    text = README.read_text()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            print(f"measuring {name} ...", flush=True)
            body = BLOCKS[name](Path(tmp), args.threads)
            text = replace_block(text, name, body)
            README.write_text(text)
            print(body, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
