"""Profile of the verify gate: wall and CPU time, and seconds per study and per step.

Runs ``robustbench-iqa verify`` in this process (one torch thread unless --threads
says otherwise) on the given config (default: ./pyproject.toml's, the README's main
job), then reads the per-unit, per-step seconds the run recorded in its store
(``units`` table: ``Workspace.timed`` steps such as certify.certify,
audit.attack-increase, audit.estimate, audit.premise, beyond.attack-defended,
stability.predict) and prints the breakdown.  ``--markdown FILE`` writes it as a
Markdown table (benchmarks/results-gate.md is this script's output).

    python benchmarks/gate_profile.py                 # the default gate
    python benchmarks/gate_profile.py --quick         # the --quick preset
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import _checkout  # noqa: F401  (this checkout first on sys.path)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="pyproject.toml with the verify table (default: ./pyproject.toml)")
    p.add_argument("--quick", action="store_true", help="the verify --quick preset (8 images per model)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--markdown", default=None, help="also write the breakdown as Markdown to this file")
    args = p.parse_args(argv)

    import torch

    from robustbench_iqa.cli.verify import QUICK
    from robustbench_iqa.runner import load_config, run_verify
    from robustbench_iqa.store import ResultsStore

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, limit=QUICK["limit"] if args.quick else None)
    with tempfile.TemporaryDirectory() as tmp:
        wall0, cpu0 = time.perf_counter(), _cpu()
        outcome = run_verify(cfg, Path(tmp) / "run", report=False, progress=False)
        wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
        with ResultsStore.open(Path(tmp) / "run") as store:
            units = store.units_frame()
    per_study: dict[str, float] = defaultdict(float)
    per_step: dict[str, float] = defaultdict(float)
    images: dict[str, int] = defaultdict(int)
    for _, u in units.iterrows():
        per_study[u["study"]] += float(u["seconds"])
        images[u["study"]] += int(u["images"])
        for step, sec in (u.get("steps") or {}).items():
            per_step[step] += float(sec)
    lines = [
        f"verify {'--quick ' if args.quick else ''}on {', '.join(cfg.models)} ({cfg.limit if not args.quick else QUICK['limit']} "
        f"images per model), torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
        f"{time.strftime('%Y-%m-%d')}",
        "",
        f"gate: {'PASSED' if outcome.passed else 'FAILED'}; wall {wall:.1f} s, CPU {cpu:.1f} s "
        f"(model building, planning and the gate's judgement included)",
        "",
        "| study | seconds | share | image-units |",
        "|---|---|---|---|",
    ]
    total = sum(per_study.values()) or 1.0
    for name, sec in sorted(per_study.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {sec:.1f} | {sec / total:.0%} | {images[name]} |")
    lines += ["", "| step | seconds | share |", "|---|---|---|"]
    for name, sec in sorted(per_step.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {sec:.1f} | {sec / total:.0%} |")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0 if outcome.passed else 1


if __name__ == "__main__":
    sys.exit(main())
