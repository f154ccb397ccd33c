"""``robustbench-iqa certify``: certified scores, bounds and radii, one row per image."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from robustbench_iqa.cli import _common as c
from robustbench_iqa.cli._defense import (
    add_defense_args,
    build_defense,
    certify_settings,
    require_certified,
    resolve_sigma,
)
from robustbench_iqa.cli._store import add_store_args, item_generator, open_store

COLUMNS = ["image", "score", "lower", "upper", "eps_x", "spectral_norm", "abstained", "reason"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("certify", help="certified score with lower/upper bounds and input radius",
                       description="Certify IQA scores: score, lower, upper, eps_x per image.")
    c.add_model_args(p)
    c.add_input_args(p)
    add_defense_args(p, certify=True)
    c.add_output_args(p)
    c.add_threads_arg(p)
    add_store_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustbench_iqa.certify.bounds import require_indices
    from robustbench_iqa.validation import check_alpha, check_n, check_sigma

    c.check_input_args(args)
    require_certified(args)
    args.sigma = resolve_sigma(args)
    check_sigma(args.sigma)
    check_n(args.n)
    check_alpha(args.alpha)
    if args.batch_size < 1:
        from robustbench_iqa.errors import InputError

        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.defense in ("fs-iqa", "ms", "dms", "dms-iqa"):  # fail fast, before any model is built
        eps = args.sigma if args.defense == "fs-iqa" else (args.eps if args.eps is not None else args.sigma / 2)
        require_indices(args.n, sigma=args.sigma, eps=eps, alpha=args.alpha)
    c.apply_threads(args)
    model = c.build_model(args)
    defense = build_defense(args, model)
    settings = certify_settings(args, defense)
    with open_store(args, "certify", {"defense": args.defense, "sigma": args.sigma, "n": args.n,
                                      "alpha": args.alpha, **settings}) as store:
        return _certify_all(args, model, defense, settings, store)


def _certify_all(args: argparse.Namespace, model: Any, defense: Any, settings: dict[str, Any], store: Any) -> int:
    """Certify every input; with a store, image by image with per-input seeds, skipping stored rows."""
    import torch
    from tqdm.auto import tqdm

    from robustbench_iqa.runner.workspace import Stopwatch
    from robustbench_iqa.store import RowKey
    from robustbench_iqa.studies.certify import CorrelationRow, GuaranteeRow, guarantee_row

    total, items = c.iter_items(args, model)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    device = torch.device(args.device)
    rows: list[dict[str, Any]] = []
    skipped = 0
    with tqdm(total=total, desc=f"certify {args.model} ({args.defense})", unit="img",
              disable=not c.progress_enabled(args)) as bar:
        for chunk in c.batches(items, 1 if store is not None else args.batch_size):
            key = RowKey(GuaranteeRow.table, model.name, args.defense, args.sigma, chunk[0].id)
            if store is not None and store.done(key):
                skipped += 1
                done = next(store.iter_rows_for(key))
                row = {"image": chunk[0].name, **{k: v for k, v in done.items() if k not in RowKey.__dataclass_fields__}}
                rows.append(row)
                if args.json:
                    c.emit([row], as_json=True, columns=COLUMNS)
                bar.update(1)
                continue
            x, ref = c.stack(chunk, args.device)
            g = gen if store is None else item_generator(args, chunk[0].id)
            with Stopwatch(device) as t:
                results = defense.certify(x, ref, n=args.n, alpha=args.alpha, generator=g, **settings)
            dt = t.seconds / len(chunk)
            for it, r in zip(chunk, results):
                row = {"image": it.name, **r.to_dict(), "target": it.score, "seconds": dt}
                row.pop("statement", None)
                rows.append(row)
                if args.json:
                    c.emit([row], as_json=True, columns=COLUMNS)
            if store is not None:
                r, it = results[0], chunk[0]
                pixels = int(x.shape[-1] * x.shape[-2])
                store.put_many([
                    (key, guarantee_row(r, alpha=args.alpha, n=args.n, seconds=dt, batch=1, pixels=pixels).payload()),
                    (RowKey(CorrelationRow.table, model.name, args.defense, args.sigma, it.id),
                     CorrelationRow(r.score, it.score if it.score is not None else float("nan"),
                                    bool(defense.lower_better), None, dt, 1, args.seed).payload()),
                ])
            bar.update(len(chunk))
    if skipped:
        print(f"resumed: {skipped} image(s) were already in {args.out} (shown from the store)", file=sys.stderr)
    if not args.json:
        c.emit(rows, as_json=False, columns=table_columns(rows))
    return 0


SOUND_RADII = ("eps_x_lipschitz", "eps_x_local")


def table_columns(rows: list[dict[str, Any]]) -> list[str]:
    """:data:`COLUMNS`, with the sound FS-IQA radii after ``eps_x`` (the first-order one) when any row has one."""
    sound = [k for k in SOUND_RADII if any(r.get(k) is not None for r in rows)]
    at = COLUMNS.index("eps_x") + 1
    return COLUMNS[:at] + sound + COLUMNS[at:]
