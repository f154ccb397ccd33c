"""``robustbench-iqa predict``: defended scores without certification (fast mode)."""

from __future__ import annotations

import argparse
import time

from robustbench_iqa.cli import _common as c
from robustbench_iqa.cli._defense import (
    add_defense_args,
    build_defense,
    defense_options,
    resolve_sigma,
)

COLUMNS = ["image", "score", "target", "seconds"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("predict", help="defended score without certification (fast mode)",
                       description="Predict defended (or, with --defense none, undefended) IQA scores.")
    c.add_model_args(p)
    c.add_input_args(p)
    add_defense_args(p, certify=False)
    c.add_output_args(p)
    c.add_threads_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from robustbench_iqa.validation import check_finite_scores, check_n

    c.check_input_args(args)
    check_n(args.n)
    args.sigma = resolve_sigma(args)
    defense_options(args)  # checked before any model is built
    c.apply_threads(args)
    model = c.build_model(args)
    defense = None if args.defense == "none" else build_defense(args, model)
    labels = c.score_labels(model, defense)
    total, items = c.iter_items(args, model)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    with tqdm(total=total, desc=f"predict {args.model} ({args.defense})", unit="img",
               disable=not c.progress_enabled(args)) as bar:
        rows = []
        for chunk in c.batches(items, args.batch_size):
            x, ref = c.stack(chunk, args.device)
            t0 = time.perf_counter()
            with torch.no_grad():
                if defense is None:
                    x, ref = model.check_inputs(x, ref)
                    s = model(x, ref)
                else:
                    s = defense.predict(x, ref, n=args.n, generator=gen)
            check_finite_scores(s)
            dt = (time.perf_counter() - t0) / len(chunk)
            for it, v in zip(chunk, s.tolist()):
                row = {"image": it.name, "score": v, "target": it.score, "seconds": dt, "defense": args.defense,
                       **labels}
                rows.append(row)
                if args.json:
                    c.emit([row], as_json=True, columns=COLUMNS)
            bar.update(len(chunk))
    if not args.json:
        c.emit(rows, as_json=False, columns=COLUMNS + c.label_columns(rows))
    return 0
