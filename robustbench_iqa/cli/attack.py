"""``robustbench-iqa attack``: attack an IQA model (or a defended one) and score its robustness.

One row per image (image, clean_score, adv_score, l2, linf, iterations, gain),
then a summary with the absolute gain, relative gain and robustness score
(:mod:`robustbench_iqa.attacks.scores`), each with a t-interval.  With ``--defense`` the
defense is attacked through EOT over its noise (:mod:`robustbench_iqa.attacks.eot`) and the
recorded scores are the defense's predictions with ``--n`` draws.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import torch
from tqdm.auto import tqdm

from robustbench_iqa.attacks.eot import Aggregate, NoiseMode, eot_objective
from robustbench_iqa.attacks.objective import Objective, Target
from robustbench_iqa.attacks.registry import create_attack, list_attacks
from robustbench_iqa.attacks.scores import summarize
from robustbench_iqa.attacks.threat import ThreatModel
from robustbench_iqa.cli import _common as c
from robustbench_iqa.cli._defense import build_defense
from robustbench_iqa.cli._store import add_store_args, image_generator, open_store
from robustbench_iqa.errors import InputError
from robustbench_iqa.store import ResultsStore, RowKey
from robustbench_iqa.validation import check_budget, check_n, check_sigma

COLUMNS = ["image", "clean_score", "adv_score", "gain", "l2", "linf", "iterations"]
SUMMARY_KEYS = ["absolute_gain", "relative_gain", "robustness"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("attack", help="attack IQA scores (I-FGSM, PGD, ...) and report robustness",
                       description="Attack an IQA model or a certified defense; per-image rows and a summary.")
    c.add_model_args(p)
    c.add_input_args(p)
    g = p.add_argument_group("attack")
    g.add_argument("--attack", default="ifgsm", choices=list_attacks(), help="attack (default: ifgsm)")
    g.add_argument("--norm", default="linf", choices=[t.value for t in ThreatModel], help="threat model")
    g.add_argument("--eps", type=c.nonneg_float, default=4 / 255, help="budget in [0, 1] pixel units (default: 4/255)")
    g.add_argument("--steps", type=c.positive_int, default=10, help="gradient steps (default: 10)")
    g.add_argument("--step-size", type=c.positive_float, default=None, help="step size (default: per attack)")
    g.add_argument("--target", default="increase", choices=[t.value for t in Target],
                   help="raise (increase) or lower (decrease) the apparent quality, or move toward --target-score")
    g.add_argument("--target-score", type=c.finite_float, default=None, help="score for --target toward")
    g.add_argument("--confidence", type=c.probability, default=0.95, help="confidence of the summary intervals")
    d = p.add_argument_group("defense (optional)")
    d.add_argument("--defense", default="none", help="none (default), fs-iqa, ms, dms, dms-iqa, rs-reg, cert-reg")
    d.add_argument("--sigma", type=c.positive_float, default=0.25, help="noise standard deviation (default: 0.25)")
    d.add_argument("--eot", type=c.sample_count, default=8, help="noise draws per EOT gradient (default: 8)")
    d.add_argument("--eot-aggregate", default="mean", choices=[a.value for a in Aggregate])
    d.add_argument("--eot-noise", default="fresh", choices=[m.value for m in NoiseMode])
    d.add_argument("--n", type=c.sample_count, default=500, help="noise draws of the recorded defended scores (default: 500)")
    d.add_argument("--checkpoint", default=None, help="trained FS-IQA heads, or denoiser for dms/dms-iqa")
    d.add_argument("--batch-size", type=c.positive_int, default=4, help="images per batch (default: 4)")
    c.add_output_args(p)
    add_store_args(p)
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    c.check_input_args(args)
    check_budget(args.eps, args.norm, name="--eps")
    if args.steps < 1:
        raise InputError(f"--steps must be >= 1, got {args.steps}")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.target == "toward" and args.target_score is None:
        raise InputError("--target toward needs --target-score")
    if args.defense != "none":
        check_sigma(args.sigma)
        check_n(args.eot, name="--eot")
        check_n(args.n, name="--n")


def build_objective(
    args: argparse.Namespace, model: Any, defense: Any = None, generator: torch.Generator | None = None,
) -> tuple[Objective, bool, tuple[float, float]]:
    """The objective, the attacked score's ``lower_better`` and its ``score_range``.

    With ``--defense``, ``defense`` is the built defense (built here if None) and
    ``generator`` drives the EOT noise (default: one seeded by ``--seed``).
    """
    if args.defense == "none":
        obj = Objective.from_model(model, target=args.target, target_score=args.target_score)
        return obj, bool(model.lower_better), tuple(model.score_range)  # type: ignore[return-value]
    defense = build_defense(args, model) if defense is None else defense
    gen = torch.Generator(device="cpu").manual_seed(args.seed) if generator is None else generator
    obj = eot_objective(defense, n=args.eot, aggregate=args.eot_aggregate, noise=args.eot_noise,
                        generator=gen, target=args.target, target_score=args.target_score,
                        eval_n=args.n, eval_seed=args.seed)
    return obj, bool(defense.lower_better), tuple(defense.score_range)  # type: ignore[return-value]


def _store_settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("attack", "norm", "eps", "steps", "step_size", "target", "target_score", "defense")
    out = {k: getattr(args, k) for k in keys}
    if args.defense != "none":
        out.update({k: getattr(args, k) for k in ("sigma", "eot", "eot_aggregate", "eot_noise", "n", "checkpoint")})
    return out


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    attack = create_attack(args.attack, eps=args.eps, steps=args.steps, step_size=args.step_size, norm=args.norm)
    store = open_store(args, "attack", _store_settings(args))
    try:
        rows = _attack_all(args, attack, store)
    finally:
        if store is not None:
            store.close()
    return _report(args, rows)


def _attack_all(args: argparse.Namespace, attack: Any, store: ResultsStore | None) -> list[dict[str, Any]]:
    """Attack every input; with a store, image by image with per-image seeds, skipping done rows."""
    model = c.build_model(args)
    defense = None if args.defense == "none" else build_defense(args, model)
    objective, lower_better, score_range = build_objective(args, model, defense)
    total, items = c.iter_items(args, model)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    sign = -1.0 if lower_better else 1.0
    sigma = 0.0 if args.defense == "none" else args.sigma
    extra = f"{args.attack},{args.norm}={args.eps:g},{args.target}"
    rows: list[dict[str, Any]] = []
    with tqdm(total=total, desc=f"{args.attack} {args.model} ({args.defense})", unit="img",
              disable=not c.progress_enabled(args)) as bar:
        for chunk in c.batches(items, args.batch_size if store is None else 1):
            key = RowKey("attack", model.name, args.defense, sigma, chunk[0].name, extra)
            if store is not None and store.done(key):
                done = next(store.iter_rows_for(key))
                rows.append({k: v for k, v in done.items() if k not in ("study", "model", "sigma", "extra")})
                bar.update(1)
                continue
            if store is not None:  # per-image noise, so a resumed run equals an uninterrupted one
                gen = image_generator(args, chunk[0].name, "attack")
                objective, _, _ = build_objective(args, model, defense, image_generator(args, chunk[0].name, "eot"))
            x, ref = c.stack(chunk, args.device)
            check_budget(args.eps, args.norm, hw=tuple(x.shape[-2:]), name="--eps")  # type: ignore[arg-type]
            result = attack.run(objective, x, ref, generator=gen)
            for it, rec in zip(chunk, result.records):
                row = {"image": it.name, **rec.to_dict(), "gain": sign * (rec.adv_score - rec.clean_score),
                       "attack": args.attack, "norm": args.norm, "eps": args.eps, "defense": args.defense,
                       "lower_better": lower_better, "score_range": list(score_range)}
                rows.append(row)
                if args.json:
                    c.emit([row], as_json=True, columns=COLUMNS)
            if store is not None:
                store.put(key, rows[-1])
            bar.update(len(chunk))
    return rows


def _report(args: argparse.Namespace, rows: list[dict[str, Any]]) -> int:
    lower_better = bool(rows[0]["lower_better"]) if rows else False
    score_range = tuple(rows[0]["score_range"]) if rows else (0.0, 1.0)
    summary = summarize([r["clean_score"] for r in rows], [r["adv_score"] for r in rows],
                        score_range=score_range, lower_better=lower_better, confidence=args.confidence)  # type: ignore[arg-type]
    out = {"summary": True, "model": args.model, "attack": args.attack, "norm": args.norm, "eps": args.eps,
           "defense": args.defense, **summary.to_dict()}
    if args.json:
        c.emit([{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}],
               as_json=True, columns=[])
    else:
        c.emit(rows, as_json=False, columns=COLUMNS)
        print()
        for key in SUMMARY_KEYS:
            print(f"{key:>14}: {out[key]:.4g}  [{out[key + '_low']:.4g}, {out[key + '_high']:.4g}]  "
                  f"(n={out[key + '_n']})")
        print(f"{'unchanged':>14}: {out['n_unchanged']} of {out['n_images']} images (excluded from robustness)")
    return 0
