"""``robustbench-iqa list``: the registered models, datasets, defenses, attacks and studies, with their
metadata; ``--options`` adds the options each defense and attack declares (``--option KEY=VALUE``)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("list", help="list models, datasets, defenses, attacks and studies")
    p.add_argument("what", nargs="?", choices=["models", "datasets", "defenses", "attacks", "studies"],
                   default=None, help="only this kind (default: all)")
    p.add_argument("--mode", choices=["nr", "fr"], default=None, help="models: only NR or FR ones")
    p.add_argument("--options", action="store_true",
                   help="defenses and attacks: also the options each declares (KEY: type = default)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustbench_iqa.attacks.registry import ATTACKS
    from robustbench_iqa.certify.defense import DEFENSES
    from robustbench_iqa.data.registry import DATASETS
    from robustbench_iqa.models.registry import MODELS, list_models

    def show(title: str, names: list[str], describe: object, meta: object, options: object = None) -> None:
        print(f"{title}:")
        for n in names:
            extra = meta(n) if callable(meta) else ""  # type: ignore[operator]
            print(f"  {n:<20} {describe(n) if callable(describe) else ''}{extra}")  # type: ignore[operator]
            if args.options and callable(options):
                for line in _option_lines(options(n)):
                    print(f"      {line}")

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
            space = m.get("space", "?")
            if m.get("certified", True):
                return f"  [{space} noise, {m.get('statistic', '?')}]"
            kind = "randomized" if m.get("randomized", True) else "deterministic"
            return f"  [{space} transform, {kind}, no certificate]"

        from robustbench_iqa.certify.options import defense_options

        show("defenses", DEFENSES.names(), DEFENSES.describe, defense_meta, defense_options)
    if args.what in (None, "attacks"):
        from robustbench_iqa.attacks.registry import attack_options

        def attack_meta(n: str) -> str:
            m = ATTACKS.metadata(n)
            return (f"  [{'/'.join(m.get('threat', ()))}, "
                    f"{'white-box' if m.get('gradient', True) else 'black-box'}]")

        show("attacks", ATTACKS.names(), ATTACKS.describe, attack_meta, attack_options)
    if args.what in (None, "studies"):
        from robustbench_iqa.studies.base import STUDIES

        def study_meta(n: str) -> str:
            m = STUDIES.metadata(n)
            parts = ["default" if m.get("default") else "opt-in"]
            if m.get("stage"):
                parts.append(f"after {m['stage']}")
            return f"  [{', '.join(parts)}; tables: {', '.join(m.get('tables', ())) or '-'}]"

        show("studies", STUDIES.names(), STUDIES.describe, study_meta)
    return 0


def _option_lines(options: dict[str, Any]) -> list[str]:
    """``KEY: type = default`` per option (``[certify]`` for a defense's certify settings)."""
    return [f"{o.name}: {o.type_text} = {o.default!r}" + ("  [certify]" if o.stage == "certify" else "")
            for o in options.values()] or ["(no options)"]
