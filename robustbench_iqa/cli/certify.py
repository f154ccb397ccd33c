"""``robustbench-iqa certify``: certified scores, bounds and radii, one row per image."""

from __future__ import annotations

import argparse
import sys
import time

import torch
from tqdm.auto import tqdm

from robustbench_iqa.certify.bounds import require_indices
from robustbench_iqa.cli import _common as c
from robustbench_iqa.cli._defense import add_defense_args, build_defense, certify_options
from robustbench_iqa.cli._store import add_store_args, image_generator, open_store
from robustbench_iqa.store import RowKey
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
    add_store_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    c.check_input_args(args)
    check_sigma(args.sigma)
    check_n(args.n)
    check_alpha(args.alpha)
    opts = certify_options(args)
    if args.defense in MEDIAN_DEFENSES:  # fail fast, before any model is built
        require_indices(args.n, sigma=args.sigma, eps=opts.get("eps", args.sigma), alpha=args.alpha)
    store = open_store(args, "certify", {"defense": args.defense, "sigma": args.sigma, "n": args.n,
                                         "alpha": args.alpha, **opts})
    try:
        return _certify_all(args, opts, store)
    finally:
        if store is not None:
            store.close()


def _certify_all(args: argparse.Namespace, opts: dict[str, object], store: object) -> int:
    """Certify every input; with a store, image by image with per-image seeds, skipping done rows."""
    from robustbench_iqa.store import ResultsStore

    model = c.build_model(args)
    defense = build_defense(args, model)
    total, items = c.iter_items(args, model)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    st = store if isinstance(store, ResultsStore) else None
    with tqdm(total=total, desc=f"certify {args.model} ({args.defense})", unit="img",
              disable=not c.progress_enabled(args)) as bar:
        rows = []
        skipped = 0
        for chunk in c.batches(items, 1 if st is not None else args.batch_size):
            key = RowKey("guarantee", model.name, args.defense, args.sigma, chunk[0].name)
            if st is not None and st.done(key):
                skipped += 1
                done = next(st.iter_rows_for(key))
                row = {"image": key.image, **{k: v for k, v in done.items() if k not in RowKey.__dataclass_fields__}}
                rows.append(row)
                if args.json:
                    c.emit([row], as_json=True, columns=COLUMNS)
                bar.update(1)
                continue
            x, ref = c.stack(chunk, args.device)
            g = gen if st is None else image_generator(args, chunk[0].name)
            t0 = time.perf_counter()
            results = defense.certify(x, ref, n=args.n, alpha=args.alpha, generator=g, **opts)
            dt = (time.perf_counter() - t0) / len(chunk)
            for it, r in zip(chunk, results):
                row = {"image": it.name, **r.to_dict(), "target": it.score, "seconds": dt}
                row.pop("statement", None)
                rows.append(row)
                if args.json:
                    c.emit([row], as_json=True, columns=COLUMNS)
            if st is not None:
                r, it = results[0], chunk[0]
                st.put_many([
                    (key, {"eps_x": r.eps_x, "lower": r.lower, "upper": r.upper, "score": r.score,
                           "abstained": r.abstained, "spectral_norm": r.spectral_norm,
                           "reason": r.reason.value if r.reason else None, "seconds": dt}),
                    (RowKey("correlation", model.name, args.defense, args.sigma, it.name),
                     {"score": r.score, "target": it.score, "seconds_certify": dt,
                      "lower_better": bool(defense.lower_better)}),
                ])
            bar.update(len(chunk))
    if skipped:
        print(f"resumed: {skipped} image(s) were already in {args.out} (shown from the store)", file=sys.stderr)
    if not args.json:
        c.emit(rows, as_json=False, columns=COLUMNS)
    return 0
