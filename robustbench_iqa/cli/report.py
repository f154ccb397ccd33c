"""``robustbench-iqa report RUN_DIR``: tables, figures and an HTML page from a run's store."""

from __future__ import annotations

import argparse

from robustbench_iqa.cli import _common as c
from robustbench_iqa.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "report",
        help="tables (CSV, Markdown), figures (PNG, SVG) and an HTML page from a run",
        description="Read RUN_DIR/results.sqlite and write a report of every study it holds.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory holding results.sqlite")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/report)")
    p.add_argument("--confidence", type=c.probability, default=0.95,
                   help="level of Clopper-Pearson intervals and confidence bands (default: 0.95)")
    p.add_argument("--bins", type=c.positive_int, default=10, help="quantile bins of eps_x (default: 10)")
    p.add_argument("--interval", choices=["t", "bootstrap"], default="t",
                   help="confidence band of the beyond-certificate curves (default: t)")
    p.add_argument("--seed", type=c.seed, default=0, help="seed of the bootstrap (default: 0)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here so that `robustbench-iqa --help` does not load matplotlib.
    from pathlib import Path

    from robustbench_iqa.report import build_report
    from robustbench_iqa.studies.base import ReportOptions

    run_dir = Path(args.run_dir)
    if run_dir.is_file():
        raise InputError(f"RUN_DIR {run_dir} is a file; give the run directory that holds results.sqlite")
    if not run_dir.exists():
        raise InputError(f"run dir {run_dir} does not exist")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise InputError(f"--out {args.out} is a file; give a folder for the report")
    if not (0.0 < args.confidence < 1.0):
        raise InputError(f"--confidence must lie in (0, 1), got {args.confidence}")
    if args.bins < 1:
        raise InputError(f"--bins must be >= 1, got {args.bins}")
    options = ReportOptions(confidence=args.confidence, bins=args.bins, interval=args.interval, seed=args.seed)
    from robustbench_iqa.outputs import record_written

    result = build_report(args.run_dir, args.out, options=options, progress=c.progress_enabled(args))
    record_written(result.out_dir, result.files)
    for note in result.notes:
        print(f"note: {note}")
    print(f"studies: {', '.join(result.studies) or 'none'}")
    print(f"wrote {len(result.files)} files to {result.out_dir}")
    print(f"html: {result.html}")
    return 0
