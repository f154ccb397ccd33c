"""``robustbench-iqa verify``: the research-CI gate (exit 0 pass, 1 a check failed, 2 bad input)."""

from __future__ import annotations

import argparse
import json
import math
import sys

from robustbench_iqa.cli import _common as c
from robustbench_iqa.cli._executor import add_executor_args, check_executor_args

QUICK = {"limit": 8, "models": None}
"""``--quick``: the same studies and checks on fewer images (research CI on every push)."""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "verify",
        help="research-CI gate: certify, audit, stability, beyond-certificate; non-zero exit on failure",
        description="Run the gate configured in [tool.robustbench_iqa.verify] of pyproject.toml "
                    "(defaults: the embedded NR and FR models on the embedded dataset, offline). "
                    "Exit code 0 when every check ran and passed, 1 when one fails, 2 on bad input (a config "
                    "that selects no check included), 3 on an internal error (also when every check passed but "
                    "the report could not be written; the verdict is printed first).",
    )
    p.add_argument("--config", default=None,
                   help="a pyproject.toml with a [tool.robustbench_iqa.verify] table (default: ./pyproject.toml "
                        "if present, else built-in defaults)")
    p.add_argument("--out", default="runs/verify", help="run directory (default: runs/verify)")
    p.add_argument("--resume", action="store_true", help="continue the run already in --out")
    p.add_argument("--fresh", action="store_true", help="delete the run already in --out and start over")
    p.add_argument("--quick", action="store_true",
                   help="the same studies and checks on 8 images per model (a fast CI preset)")
    p.add_argument("--models", nargs="+", default=None, help="override the models")
    p.add_argument("--defenses", nargs="+", default=None, help="override the defenses")
    p.add_argument("--limit", type=c.positive_int, default=None, help="override the number of images")
    c.add_split_args(p, override=True)
    p.add_argument("--batch-size", type=c.positive_int, default=None, help="images per unit of work")
    p.add_argument("--device", type=c.device, default=None, help="torch device (default: the config's, cpu)")
    c.add_threads_arg(p)
    add_executor_args(p)
    p.add_argument("--no-report", action="store_true", help="skip the HTML/CSV/figure report")
    p.add_argument("--json", action="store_true", help="print the checks and summary as JSON lines")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustbench_iqa.runner import load_config, run_verify

    if args.resume and args.fresh:
        from robustbench_iqa.errors import InputError

        raise InputError("give --resume or --fresh, not both")
    c.apply_threads(args)
    limit = args.limit if args.limit is not None else (QUICK["limit"] if args.quick else None)
    cfg = load_config(args.config, models=args.models, defenses=args.defenses, limit=limit,
                      device=args.device, batch_size=args.batch_size, split=args.split,
                      split_seed=args.split_seed)
    executor = None
    check_executor_args(args)
    if args.executor == "ray":
        from robustbench_iqa.runner.ray_executor import RayExecutor

        executor = RayExecutor(cfg, address=args.address, workers=args.workers,
                               num_cpus_per_worker=args.cpus_per_worker, num_gpus_per_worker=args.gpus_per_worker)
    outcome = run_verify(cfg, args.out, resume=args.resume, fresh=args.fresh, report=not args.no_report,
                         progress=c.progress_enabled(args), executor=executor)
    if args.json:
        for chk in outcome.checks:
            print(json.dumps({"check": chk.name, "model": chk.model, "defense": chk.defense,
                              "sigma": chk.sigma, "passed": chk.passed, "detail": chk.detail}))
        for row in outcome.summary:
            clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
            print(json.dumps({"summary": clean}, default=str, allow_nan=False))
    else:
        from robustbench_iqa.headline import fit_table

        print(fit_table(outcome.summary, width=100))  # headline columns first; no line wider than 100
        print()
        for chk in outcome.checks:
            if not chk.passed or not chk.name.startswith("finite"):
                mark = "ok  " if chk.passed else "FAIL"
                print(f"{mark} {chk.name:<18} {chk.model} ({chk.defense}, sigma={chk.sigma:g}): {chk.detail}")
    for note in outcome.notes:
        print(f"note: {note}")
    if outcome.report is not None:
        print(f"report: {outcome.report}")
    verdict = "PASSED" if outcome.passed else f"FAILED ({len(outcome.failures)} check(s))"
    radii = sorted({str(row["radius"]) for row in outcome.summary if row.get("radius")})
    if radii:  # the radius kind(s) the verdict is about (the `radius` column of the summary)
        verdict += f" (radius: {', '.join(radii)})"
    print(f"verify {verdict} in {outcome.seconds:.0f} s ({outcome.units_run} units run); results in {outcome.run_dir}")
    if outcome.report_error is not None:  # after the verdict, which it never hides
        print(f"error: the report could not be written: {outcome.report_error}", file=sys.stderr)
    return outcome.exit_code
