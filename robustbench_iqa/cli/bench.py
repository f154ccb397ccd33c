"""``robustbench-iqa bench``: speed and memory of certification, as ratios to one forward pass.

Prints the table (case, ratio to forward, target, met?, ms, peak MB), then one
line per missed target; ``--json-out`` writes every row for tracking and
``--results-out`` the Markdown results file the documentation quotes (docs/performance.md).  ``--quick``
is a tiny preset for tests and smoke runs; explicit options override it.

Every case has a bounded cost (``--case-budget-s``, estimated before it runs) and every model a
budget (``--model-budget-s``) spent on its cases in priority order; every cap and skip is printed
after the table ("bounded cost: ...") and written into the JSON and Markdown results.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from robustbench_iqa.cli._common import (
    device,
    parse_size,
    positive_float,
    positive_int,
    sample_count,
    seed,
)
from robustbench_iqa.errors import InputError

if TYPE_CHECKING:
    from robustbench_iqa.bench.harness import BenchConfig

DEFAULT_MODELS = ("default-nr", "default-fr", "st-lpips-alex", "dbcnn", "lpips")

QUICK: dict[str, Any] = {
    "models": ("default-nr", "default-fr"), "size": (32, 48), "exact_size": (12, 12), "repeats": 1, "warmup": 1,
    "fs_n": 64, "ms_n": 8, "dms_n": 4, "batch_size": 4, "denoiser": (3, 8), "memory_n": (64, 256),
    "max_iter": 64, "budget_s": 5.0,
}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("bench", help="benchmark certification speed and memory (ratios to one forward pass)",
                       description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--models", default=None,
                   help=f"comma-separated model names (default: {','.join(DEFAULT_MODELS)}; unregistered ones are reported)")
    p.add_argument("--size", default=None, help="main input size HxW (default 384x512, as in the FS-IQA study)")
    p.add_argument("--exact-size", default=None, help="input size for the exact-Jacobian comparison (default 48x64)")
    p.add_argument("--device", type=device, default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--repeats", type=positive_int, default=None, help="timed runs per case; the median is reported (default 3)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up runs per case (default 1)")
    p.add_argument("--fs-n", type=sample_count, default=None, help="FS-IQA noise draws N (default 2000)")
    p.add_argument("--ms-n", type=sample_count, default=None, help="MS noise draws N (default 2000)")
    p.add_argument("--dms-n", type=sample_count, default=None, help="DMS noise draws N (default 2000)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="noisy images per forward for MS/DMS (default 16)")
    p.add_argument("--denoiser", default=None, help="DnCNN DEPTHxWIDTH for DMS (default 17x64, the paper's)")
    p.add_argument("--memory-n", default=None, help="comma-separated N for the memory cases (default 500,2000,8000)")
    p.add_argument("--methods", default=None, help="spectral-norm methods to compare (default power,lanczos)")
    p.add_argument("--rtol", type=positive_float, default=None, help="spectral-norm relative tolerance (default 1e-3)")
    p.add_argument("--max-iter", type=positive_int, default=None, help="spectral-norm iteration limit (default 200)")
    p.add_argument("--budget-s", type=positive_float, default=None,
                   help="at most this many seconds of warm-up and timed runs per case, after the first timed run "
                        "(default 60; the case budget applies too)")
    p.add_argument("--case-budget-s", type=positive_float, default=None,
                   help="estimated time limit of each case, warm-up included: N (MS/DMS), max_iter (spectral "
                        "methods and reference), attack steps (peers) are capped, and repeats or memory "
                        "subprocesses skipped, to fit; every cap is printed with its reason (default 30)")
    p.add_argument("--model-budget-s", type=positive_float, default=None,
                   help="time limit of each model's cases, run in priority order (forward, fs-predict, fs-certify "
                        "and its reference, peers, spectral methods, MS/DMS, memory, exact): once spent, the "
                        "model's remaining cases are skipped and listed (default 150; the clock of --clock, with "
                        "the memory subprocesses' CPU time under --clock cpu)")
    p.add_argument("--clock", choices=["wall", "cpu"], default=None,
                   help="wall-clock time (default) or this process' CPU time (stable on a busy CPU, with --threads 1)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads for the run (default: torch's)")
    p.add_argument("--seed", type=seed, default=None, help="seed of weights, input and noise (default 0)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--no-peers", action="store_true",
                   help="skip the peers (the official forward pass where known, torchattacks' BIM against I-FGSM)")
    p.add_argument("--attack-steps", type=positive_int, default=None,
                   help="steps of I-FGSM and of torchattacks' BIM in the peer comparison (default 10)")
    p.add_argument("--no-exact", action="store_true", help="skip the exact-Jacobian comparison")
    p.add_argument("--quick", action="store_true", help="tiny preset for tests and smoke runs")
    p.add_argument("--json-out", default=None, help="write the results as JSON to this path")
    p.add_argument("--results-out", default=None, help="write the Markdown results file to this path")
    p.add_argument("--comment", default="", help="a remark recorded with the results (e.g. machine load)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def _csv(text: str | None, cast: type = str) -> tuple[Any, ...] | None:
    if text is None:
        return None
    try:
        vals = tuple(cast(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"cannot parse the list {text!r}") from None
    if not vals:
        raise InputError(f"empty list {text!r}")
    return vals


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The :class:`BenchConfig` of the command line: defaults, then ``--quick``, then explicit options."""
    import torch

    from robustbench_iqa.bench.harness import BenchConfig

    values: dict[str, Any] = dict(QUICK) if args.quick else {}
    denoiser = parse_size(args.denoiser) if args.denoiser is not None else None
    explicit: dict[str, Any] = {
        "models": _csv(args.models), "size": parse_size(args.size), "exact_size": parse_size(args.exact_size),
        "device": args.device, "repeats": args.repeats, "warmup": args.warmup, "fs_n": args.fs_n, "ms_n": args.ms_n,
        "dms_n": args.dms_n, "batch_size": args.batch_size, "denoiser": denoiser,
        "memory_n": _csv(args.memory_n, int), "methods": _csv(args.methods), "rtol": args.rtol,
        "max_iter": args.max_iter, "budget_s": args.budget_s, "case_budget_s": args.case_budget_s,
        "model_budget_s": args.model_budget_s, "attack_steps": args.attack_steps, "seed": args.seed, "clock": args.clock,
    }
    values.update({k: v for k, v in explicit.items() if v is not None})
    values.setdefault("device", "cuda" if torch.cuda.is_available() else "cpu")
    values["memory"] = not args.no_memory
    values["exact"] = not args.no_exact
    values["peers"] = not args.no_peers
    values["progress"] = not args.no_progress
    return BenchConfig(**values).validate()


def run(args: argparse.Namespace) -> int:
    import torch

    from robustbench_iqa.bench.harness import BenchRun, CaseResult, run_bench
    from robustbench_iqa.bench.report import (
        format_table,
        machine_info,
        shortfalls,
        to_json,
        write_json,
        write_markdown,
    )

    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    config = config_from_args(args)

    partial = BenchRun(config=config)

    def show(r: CaseResult) -> None:
        # Each row is written as soon as it is measured, so an interrupted run keeps what it measured.
        if args.json_out:
            write_json(to_json(partial, machine_info(config.device)), args.json_out)
        if not args.no_progress:
            ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
            peak = "" if r.peak_mb is None else f", peak {r.peak_mb:.1f} MB"
            print(f"  {r.model} {r.case} n={r.n}: {ratio}{peak}", file=sys.stderr)

    result = run_bench(config, on_row=show, into=partial)
    machine = machine_info(config.device)
    print(format_table(result))
    for line in shortfalls(result):
        print(line)
    if args.json_out:
        doc = to_json(result, machine)
        if args.comment:
            doc["comment"] = args.comment
        write_json(doc, args.json_out)
    if args.results_out:
        write_markdown(result, machine, args.results_out, comment=args.comment)
    return 0
