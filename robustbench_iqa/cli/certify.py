"""``robustbench-iqa certify``: certified scores, bounds and radii, one row per image."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from robustbench_iqa.cli import _common as c
from robustbench_iqa.cli._defense import (
    add_defense_args,
    build_defense,
    certify_settings,
    defense_options,
    preflight,
    require_certified,
    resolve_sigma,
)
from robustbench_iqa.cli._executor import add_executor_args, check_executor_args, ray_items
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
    add_executor_args(p, what="the images")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustbench_iqa.validation import check_alpha, check_n, check_sigma

    check_executor_args(args, needs_out=True)
    c.check_input_args(args)
    require_certified(args)
    args.sigma = resolve_sigma(args)
    check_sigma(args.sigma)
    check_n(args.n)
    check_alpha(args.alpha)
    if args.batch_size < 1:
        from robustbench_iqa.errors import InputError

        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    preflight(args)  # fail fast, before any model is built
    c.apply_threads(args)
    state = build_certifier(args)
    built = defense_options(args).build  # recorded with the run (only when given: older runs resume)
    with open_store(args, "certify", {"defense": args.defense, "sigma": args.sigma, "n": args.n,
                                      "alpha": args.alpha, **state.settings,
                                      **({"options": built} if built else {})}) as store:
        return _certify_all(args, state, store)


@dataclass(frozen=True)
class Certifier:
    """What certifying one image needs: the arguments, the model, the defense and its settings."""

    args: argparse.Namespace
    model: Any
    defense: Any
    settings: dict[str, Any]


def build_certifier(args: argparse.Namespace) -> Certifier:
    """The model, defense and settings of the arguments (on the driver, and once on each Ray actor)."""
    model = c.build_model(args)
    defense = build_defense(args, model)
    return Certifier(args, model, defense, certify_settings(args, defense))


def certify_item(state: Certifier, item: c.Item) -> dict[str, Any]:
    """One input certified with its own seed (``item_generator(args, item.id)``): the shown row and
    the store's ``guarantee`` and ``correlation`` payloads (the same on any executor, in any order)."""
    import torch

    from robustbench_iqa.runner.workspace import Stopwatch
    from robustbench_iqa.studies.certify import CorrelationRow, guarantee_row, scale_of

    args, defense = state.args, state.defense
    x, ref = c.stack([item], args.device)
    with Stopwatch(torch.device(args.device)) as t:
        r = defense.certify(x, ref, n=args.n, alpha=args.alpha, generator=item_generator(args, item.id),
                            **state.settings)[0]
    dt = t.seconds
    shown = {"image": item.name, **r.to_dict(), "target": item.score, "seconds": dt,
             **c.score_labels(state.model, defense)}
    shown.pop("statement", None)
    pixels = int(x.shape[-1] * x.shape[-2])
    return {"shown": shown,
            "guarantee": guarantee_row(r, alpha=args.alpha, n=args.n, seconds=dt, batch=1, pixels=pixels,
                                       scorer=defense).payload(),
            "correlation": CorrelationRow(r.score, item.score if item.score is not None else float("nan"),
                                          bool(defense.lower_better), None, dt, 1, args.seed,
                                          **scale_of(defense)).payload()}


def _certify_all(args: argparse.Namespace, state: Certifier, store: Any) -> int:
    """Certify every input; with a store, image by image with per-input seeds, skipping stored rows
    (with ``--executor ray`` the images not stored run on Ray actors, and this process writes their rows)."""
    import torch
    from tqdm.auto import tqdm

    from robustbench_iqa.runner.workspace import Stopwatch
    from robustbench_iqa.store import RowKey
    from robustbench_iqa.studies.certify import CorrelationRow, GuaranteeRow

    model, defense, settings = state.model, state.defense, state.settings
    labels = c.score_labels(model, defense)
    total, items = c.iter_items(args, model)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    device = torch.device(args.device)
    rows: list[dict[str, Any] | None] = []
    skipped = 0

    def keys(it: c.Item) -> tuple[RowKey, RowKey]:
        return (RowKey(GuaranteeRow.table, model.name, args.defense, args.sigma, it.id),
                RowKey(CorrelationRow.table, model.name, args.defense, args.sigma, it.id))

    def stored(out: dict[str, Any], it: c.Item, at: int) -> None:
        g, r = keys(it)
        store.put_many([(g, out["guarantee"]), (r, out["correlation"])])
        rows[at] = out["shown"]
        if args.json:
            c.emit([out["shown"]], as_json=True, columns=COLUMNS)
        bar.update(1)

    def todo() -> Iterator[tuple[int, c.Item]]:
        """The inputs not yet stored, with their row positions; the stored ones shown from the store."""
        nonlocal skipped
        for it in items:
            rows.append(None)
            key = keys(it)[0]
            if store.done(key):
                skipped += 1
                done = next(store.iter_rows_for(key))
                row = {"image": it.name, **{k: v for k, v in done.items() if k not in RowKey.__dataclass_fields__},
                       **labels}
                rows[-1] = row
                if args.json:
                    c.emit([row], as_json=True, columns=COLUMNS)
                bar.update(1)
                continue
            yield len(rows) - 1, it

    with tqdm(total=total, desc=f"certify {args.model} ({args.defense})", unit="img",
              disable=not c.progress_enabled(args)) as bar:
        if store is not None:
            pool = ray_items(args, build_certifier, certify_item)
            if pool is None:
                for at, it in todo():
                    stored(certify_item(state, it), it, at)
            else:
                try:
                    for at, it, out in pool.map(todo()):
                        stored(out, it, at)
                finally:
                    pool.close()
        else:
            for chunk in c.batches(items, args.batch_size):
                x, ref = c.stack(chunk, args.device)
                with Stopwatch(device) as t:
                    results = defense.certify(x, ref, n=args.n, alpha=args.alpha, generator=gen, **settings)
                dt = t.seconds / len(chunk)
                for it, r in zip(chunk, results):
                    row = {"image": it.name, **r.to_dict(), "target": it.score, "seconds": dt, **labels}
                    row.pop("statement", None)
                    rows.append(row)
                    if args.json:
                        c.emit([row], as_json=True, columns=COLUMNS)
                bar.update(len(chunk))
    if skipped:
        print(f"resumed: {skipped} image(s) were already in {args.out} (shown from the store)", file=sys.stderr)
    if not args.json:
        shown = [r for r in rows if r is not None]
        c.emit(shown, as_json=False, columns=table_columns(shown))
    return 0


SOUND_RADII = ("eps_x_lipschitz", "eps_x_local")


def table_columns(rows: list[dict[str, Any]]) -> list[str]:
    """:data:`COLUMNS`, with the sound FS-IQA radii after ``eps_x`` (the first-order one) when any row has one."""
    sound = [k for k in SOUND_RADII if any(r.get(k) is not None for r in rows)]
    at = COLUMNS.index("eps_x") + 1
    return COLUMNS[:at] + sound + COLUMNS[at:] + c.label_columns(rows)
