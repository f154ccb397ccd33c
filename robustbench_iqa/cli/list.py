"""``robustbench-iqa list``: the registered models, datasets, defenses and attacks, with their metadata."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("list", help="list models, datasets, defenses and attacks")
    p.add_argument("what", nargs="?", choices=["models", "datasets", "defenses", "attacks"], default=None,
                   help="only this kind (default: all)")
    p.add_argument("--mode", choices=["nr", "fr"], default=None, help="models: only NR or FR ones")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustbench_iqa.attacks.registry import ATTACKS
    from robustbench_iqa.certify.defense import DEFENSES
    from robustbench_iqa.data.registry import DATASETS
    from robustbench_iqa.models.registry import MODELS, list_models

    def show(title: str, names: list[str], describe: object, meta: object) -> None:
        print(f"{title}:")
        for n in names:
            extra = meta(n) if callable(meta) else ""  # type: ignore[operator]
            print(f"  {n:<20} {describe(n) if callable(describe) else ''}{extra}")  # type: ignore[operator]

    def model_meta(n: str) -> str:
        m = MODELS.metadata(n)
        if not m:
            return ""
        better = "lower=better" if m["lower_better"] else "higher=better"
        return f"  [{m['mode'].upper()}, {better}, range {m['score_range'][0]:g}..{m['score_range'][1]:g}]"

    if args.what in (None, "models"):
        show("models", list_models(mode=args.mode), MODELS.describe, model_meta)
    if args.what in (None, "datasets"):
        show("datasets", DATASETS.names(), DATASETS.describe, None)
    if args.what in (None, "defenses"):
        def defense_meta(n: str) -> str:
            m = DEFENSES.metadata(n)
            if m.get("certified", True):
                return f"  [{m['space']} noise, {m['statistic']}]"
            kind = "randomized" if m.get("randomized", True) else "deterministic"
            return f"  [{m['space']} transform, {kind}, no certificate]"

        show("defenses", DEFENSES.names(), DEFENSES.describe, defense_meta)
    if args.what in (None, "attacks"):
        show("attacks", ATTACKS.names(), ATTACKS.describe,
             lambda n: f"  [{'/'.join(ATTACKS.metadata(n)['threat'])}, "
                       f"{'white-box' if ATTACKS.metadata(n)['gradient'] else 'black-box'}]")
    return 0
