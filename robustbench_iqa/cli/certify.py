"""``robustbench-iqa certify``: certified scores, bounds and radii, one row per image."""

from __future__ import annotations

import argparse
import time

import torch
from tqdm.auto import tqdm

from certify.bounds import require_indices
from robustbench_iqa.cli import _common as c
from robustbench_iqa.cli._defense import add_defense_args, build_defense, certify_options
from robustbench_iqa.validation import check_alpha, check_n, check_sigma

MEDIAN_DEFENSES = ("fs-iqa", "ms", "dms", "dms-iqa")
COLUMNS = ["image", "score", "lower", "upper", "eps_x", "spectral_norm", "abstained", "reason"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("certify", help="certified score with lower/upper bounds and input radius",
                       description="Certify IQA scores: score, lower, upper, eps_x per image.")
    c.add_model_args(p)
    c.add_input_args(p)
    add_defense_args(p, certify=True)
    c.add_output_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    c.check_input_args(args)
    check_sigma(args.sigma)
    check_n(args.n)
    check_alpha(args.alpha)
    opts = certify_options(args)
    if args.defense in MEDIAN_DEFENSES:  # fail fast, before any model is built
        require_indices(args.n, sigma=args.sigma, eps=opts.get("eps", args.sigma), alpha=args.alpha)
    model = c.build_model(args)
    defense = build_defense(args, model)
    total, items = c.iter_items(args, model)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    with tqdm(total=total, desc=f"certify {args.model} ({args.defense})", unit="img",
               disable=not c.progress_enabled(args)) as bar:
        rows = []
        for chunk in c.batches(items, args.batch_size):
            x, ref = c.stack(chunk, args.device)
            t0 = time.perf_counter()
            results = defense.certify(x, ref, n=args.n, alpha=args.alpha, generator=gen, **opts)
            dt = (time.perf_counter() - t0) / len(chunk)
            for it, r in zip(chunk, results):
                row = {"image": it.name, **r.to_dict(), "target": it.score, "seconds": dt}
                row.pop("statement", None)
                rows.append(row)
                if args.json:
                    c.emit([row], as_json=True, columns=COLUMNS)
            bar.update(len(chunk))
    if not args.json:
        c.emit(rows, as_json=False, columns=COLUMNS)
    return 0
