"""``robustbench-iqa attack``: attack an IQA model (or a defended one) and score its robustness.

One row per image (image, clean_score, adv_score, l2, linf, iterations, gain,
and the attack-strength flags of :mod:`robustbench_iqa.attacks.checks`), then a
summary with the absolute gain, relative gain and robustness score
(:mod:`robustbench_iqa.attacks.scores`), each with a t-interval, and how many
images raised each flag.  With ``--defense`` the
defense is attacked through EOT over its noise (:mod:`robustbench_iqa.attacks.eot`) and the
recorded scores are the defense's predictions with ``--n`` draws.  An empirical defense
(``jpeg``, ``bit-depth``, ``median``, ``gaussian-blur``, ``resize``, ``purifier``) is
deterministic: EOT over it costs one forward pass per step, and the attack differentiates
through BPDA where the transform has no useful gradient (:mod:`robustbench_iqa.certify.purification`);
``random-resize`` is randomized and attacked through EOT over its draws.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from robustbench_iqa.cli import _common as c
from robustbench_iqa.cli._defense import SIGMA_HELP, build_defense, resolve_sigma
from robustbench_iqa.cli._executor import add_executor_args, check_executor_args, ray_items
from robustbench_iqa.cli._store import add_store_args, item_generator, open_store
from robustbench_iqa.errors import InputError

if TYPE_CHECKING:
    import torch

    from robustbench_iqa.attacks.objective import Objective
    from robustbench_iqa.store import ResultsStore
    from robustbench_iqa.studies.attack import AttackRow

NORMS = ("linf", "l2")
TARGETS = ("increase", "decrease", "toward")

COLUMNS = ["image", "clean_score", "adv_score", "gain", "l2", "linf", "iterations", "flags"]
SUMMARY_KEYS = ["absolute_gain", "relative_gain", "robustness"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("attack", help="attack IQA scores (I-FGSM, PGD, ...) and report robustness",
                       description="Attack an IQA model or a certified defense; per-image rows and a summary.")
    c.add_model_args(p)
    c.add_input_args(p)
    g = p.add_argument_group("attack")
    g.add_argument("--attack", default="ifgsm", help="attack (default: ifgsm; `robustbench-iqa list attacks`)")
    g.add_argument("--norm", default="linf", choices=NORMS, help="threat model")
    g.add_argument("--eps", type=c.nonneg_float, default=4 / 255, help="budget in [0, 1] pixel units (default: 4/255)")
    g.add_argument("--steps", type=c.positive_int, default=None, help="gradient steps (default: the attack's, 10 for iterative ones)")
    g.add_argument("--step-size", type=c.positive_float, default=None, help="step size (default: per attack)")
    g.add_argument("--target", default="increase", choices=TARGETS,
                   help="raise (increase) or lower (decrease) the apparent quality, or move toward --target-score")
    g.add_argument("--target-score", type=c.finite_float, default=None, help="score for --target toward")
    g.add_argument("--confidence", type=c.probability, default=0.95, help="confidence of the summary intervals")
    s = p.add_argument_group("attack settings (optional; default: the attack's own)")
    s.add_argument("--restarts", type=c.positive_int, default=None, help="gradient attacks: restarts (later ones start at random)")
    s.add_argument("--random-start", action=argparse.BooleanOptionalAction, default=None,
                   help="gradient attacks: start at a random point of the ball (PGD: on, I-FGSM: off)")
    s.add_argument("--queries", type=c.positive_int, default=None, help="black-box attacks: queries per image")
    s.add_argument("--pixels", type=c.positive_int, default=None, help="sparse attack: pixels that may change")
    s.add_argument("--perturbation", default=None, help="uap: a trained perturbation file (UniversalPerturbation.save)")
    s.add_argument("--attack-option", action="append", default=None, metavar="KEY=VALUE",
                   help="any keyword the attack declares (repeatable; `robustbench-iqa list attacks --options`), "
                        "e.g. madc hold=mse; VALUE is read as TOML (0.1, true) or else as a word")
    d = p.add_argument_group("defense (optional)")
    d.add_argument("--defense", default="none",
                   help="none (default), fs-iqa, ms, dms, dms-iqa, rs-reg, cert-reg; empirical (predict only): jpeg, "
                        "bit-depth, median, gaussian-blur, resize, random-resize, purifier "
                        "(`robustbench-iqa list defenses`)")
    d.add_argument("--sigma", type=c.positive_float, default=None, help=SIGMA_HELP)
    d.add_argument("--eot", type=c.sample_count, default=8, help="noise draws per EOT gradient (default: 8)")
    d.add_argument("--eot-aggregate", default=None, choices=("mean", "soft-median"),
                   help="how EOT aggregates the noisy scores (default: the defense's own, e.g. soft-median "
                        "for median smoothing)")
    d.add_argument("--eot-noise", default="fresh", choices=("fresh", "fixed"))
    d.add_argument("--n", type=c.sample_count, default=500, help="noise draws of the recorded defended scores (default: 500)")
    d.add_argument("--checkpoint", default=None, help="trained FS-IQA heads, or denoiser for dms/dms-iqa")
    d.add_argument("--option", action="append", default=None, metavar="KEY=VALUE",
                   help="an option the defense declares (repeatable), e.g. cert-reg trim=0.2")
    d.add_argument("--batch-size", type=c.positive_int, default=4, help="images per batch (default: 4)")
    c.add_output_args(p)
    c.add_threads_arg(p)
    add_store_args(p)
    add_executor_args(p, what="the images")
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    from robustbench_iqa.validation import check_budget, check_n

    c.check_input_args(args)
    check_budget(args.eps, args.norm, name="--eps")
    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be >= 1, got {args.steps}")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.target == "toward" and args.target_score is None:
        raise InputError("--target toward needs --target-score")
    args.sigma = resolve_sigma(args)
    from robustbench_iqa.cli._defense import defense_options

    attack_option_values(args), defense_options(args)  # checked before any model is built
    if args.defense != "none":
        check_n(args.eot, name="--eot")
        check_n(args.n, name="--n")


def build_objective(
    args: argparse.Namespace, model: Any, defense: Any = None, generator: torch.Generator | None = None,
) -> tuple[Objective, bool, tuple[float, float]]:
    """The objective, the attacked score's ``lower_better`` and its ``score_range``.

    With ``--defense``, ``defense`` is the built defense (built here if None) and
    ``generator`` drives the EOT noise (default: one seeded by ``--seed``).
    """
    import torch

    from robustbench_iqa.attacks.eot import eot_objective
    from robustbench_iqa.attacks.objective import Objective

    if args.defense == "none":
        obj = Objective.from_model(model, target=args.target, target_score=args.target_score)
        return obj, bool(model.lower_better), tuple(model.score_range)  # type: ignore[return-value]
    defense = build_defense(args, model) if defense is None else defense
    gen = torch.Generator(device="cpu").manual_seed(args.seed) if generator is None else generator
    aggregate = args.eot_aggregate or defense.eot_aggregate
    obj = eot_objective(defense, n=args.eot, aggregate=aggregate, noise=args.eot_noise,
                        generator=gen, target=args.target, target_score=args.target_score,
                        eval_n=args.n, eval_seed=args.seed)
    return obj, bool(defense.lower_better), tuple(defense.score_range)  # type: ignore[return-value]


def _store_settings(args: argparse.Namespace) -> dict[str, Any]:
    from robustbench_iqa.cli._defense import defense_options

    keys = ("attack", "norm", "eps", "steps", "step_size", "target", "target_score", "defense", *ATTACK_SETTINGS)
    out = {k: getattr(args, k) for k in keys}
    if args.defense != "none":
        out.update({k: getattr(args, k) for k in ("sigma", "eot", "eot_aggregate", "eot_noise", "n", "checkpoint")})
    # recorded only when given, so that runs stored before these options existed still resume
    extra, built = attack_option_values(args), defense_options(args).build
    out.update({**({"attack_options": extra} if extra else {}), **({"options": built} if built else {})})
    return out


ATTACK_SETTINGS = ("restarts", "random_start", "queries", "pixels", "perturbation")


def run(args: argparse.Namespace) -> int:
    check_executor_args(args, needs_out=True)
    _check_args(args)
    c.apply_threads(args)
    attack = _create_attack(args)
    with open_store(args, "attack", _store_settings(args)) as store:
        rows = _attack_all(args, attack, store)
    return _report(args, rows)


def attack_option_values(args: argparse.Namespace) -> dict[str, Any]:
    """``--attack-option KEY=VALUE`` values, checked against the options ``--attack`` declares."""
    from robustbench_iqa.attacks.registry import ATTACKS, attack_options
    from robustbench_iqa.options import check_values, parse_assignments

    given = parse_assignments(args.attack_option, flag="--attack-option")
    if not given:
        return {}
    ATTACKS.entry(args.attack.lower())  # an unknown attack: its own did-you-mean
    for k in ("eps", "steps", "step_size", "norm", *ATTACK_SETTINGS):
        if k in given:
            raise InputError(f"--attack-option {k}=...: use --{k.replace('_', '-')}")
    try:
        return check_values(attack_options(args.attack), given, where=args.attack.lower())
    except InputError as exc:
        raise InputError(f"--attack-option: {exc}") from None


def _create_attack(args: argparse.Namespace) -> Any:
    from robustbench_iqa.attacks.registry import create_attack

    return create_attack(args.attack, eps=args.eps, steps=args.steps, step_size=args.step_size, norm=args.norm,
                         **{k: getattr(args, k) for k in ATTACK_SETTINGS}, **attack_option_values(args))


@dataclass(frozen=True)
class Attacker:
    """What attacking one image needs: the arguments, the attack, the model and the defense (or None)."""

    args: argparse.Namespace
    attack: Any
    model: Any
    defense: Any
    lower_better: bool
    score_range: tuple[float, float]


def build_attacker(args: argparse.Namespace, attack: Any = None) -> Attacker:
    """The attack (built here if None), model and defense of the arguments (on the driver, and once on
    each Ray actor)."""
    model = c.build_model(args)
    defense = None if args.defense == "none" else build_defense(args, model)
    _, lower_better, score_range = build_objective(args, model, defense)
    return Attacker(args, _create_attack(args) if attack is None else attack, model, defense, lower_better,
                    (float(score_range[0]), float(score_range[1])))


def attack_row(state: Attacker, rec: Any, chk: Any) -> AttackRow:
    """The stored row of one attacked image (its record and its attack-strength checks)."""
    from robustbench_iqa.studies.attack import AttackRow

    args, sign = state.args, -1.0 if state.lower_better else 1.0
    return AttackRow(rec.clean_score, rec.adv_score, rec.l2, rec.linf, rec.iterations,
                     sign * (rec.adv_score - rec.clean_score), args.attack, args.norm, args.eps,
                     args.target, state.lower_better, state.score_range,
                     str(chk.to_dict()["flags"]), rec.improvement, rec.evaluations, rec.zero_grad_steps,
                     rec.nonfinite_grad_steps, rec.eot_spread)


def attack_item(state: Attacker, item: c.Item) -> dict[str, Any]:
    """One input attacked with its own seeds (``item_generator(args, item.id, "attack" / "eot")``): the
    store's ``attack`` payload (the same on any executor, in any order)."""
    from robustbench_iqa.validation import check_budget

    args = state.args
    gen = item_generator(args, item.id, "attack")
    objective, _, _ = build_objective(args, state.model, state.defense, item_generator(args, item.id, "eot"))
    x, ref = c.stack([item], args.device)
    check_budget(args.eps, args.norm, hw=tuple(x.shape[-2:]), name="--eps")  # type: ignore[arg-type]
    result = state.attack.run(objective, x, ref, generator=gen)
    return attack_row(state, result.records[0], result.checks[0]).payload()


def _attack_all(args: argparse.Namespace, attack: Any, store: ResultsStore | None) -> list[dict[str, Any]]:
    """Attack every input; with a store, image by image with per-input seeds, skipping stored rows
    (with ``--executor ray`` the images not stored run on Ray actors, and this process writes their rows)."""
    import torch
    from tqdm.auto import tqdm

    from robustbench_iqa.store import RowKey
    from robustbench_iqa.studies.attack import AttackRow
    from robustbench_iqa.validation import check_budget

    state = build_attacker(args, attack)
    model = state.model
    total, items = c.iter_items(args, model)
    sigma = 0.0 if args.defense == "none" else args.sigma
    extra = f"{args.attack},{args.norm}={args.eps:g},{args.target}"
    rows: list[dict[str, Any] | None] = []

    def key(it: c.Item) -> RowKey:
        return RowKey(AttackRow.table, model.name, args.defense, sigma, it.id, extra)

    labels = c.score_labels(model, state.defense)

    def shown(payload: dict[str, Any], it: c.Item, at: int) -> None:
        row = rows[at] = {"image": it.name, **payload, "defense": args.defense, **labels}
        if args.json:
            c.emit([row], as_json=True, columns=COLUMNS)

    def stored(payload: dict[str, Any], it: c.Item, at: int) -> None:
        store.put(key(it), payload)  # type: ignore[union-attr]
        shown(payload, it, at)
        bar.update(1)

    def todo() -> Iterator[tuple[int, c.Item]]:
        """The inputs not yet stored, with their row positions; the stored ones shown from the store."""
        for it in items:
            rows.append(None)
            if store.done(key(it)):  # type: ignore[union-attr]
                done = next(store.iter_rows_for(key(it)))  # type: ignore[union-attr]
                rows[-1] = {"image": it.name, **{k: v for k, v in done.items() if k not in RowKey.__dataclass_fields__},
                            **labels}
                bar.update(1)
                continue
            yield len(rows) - 1, it

    with tqdm(total=total, desc=f"{args.attack} {args.model} ({args.defense})", unit="img",
              disable=not c.progress_enabled(args)) as bar:
        if store is not None:  # per-input noise, so a resumed run equals an uninterrupted one
            pool = ray_items(args, build_attacker, attack_item)
            if pool is None:
                for at, it in todo():
                    stored(attack_item(state, it), it, at)
            else:
                try:
                    for at, it, payload in pool.map(todo()):
                        stored(payload, it, at)
                finally:
                    pool.close()
        else:
            objective, _, _ = build_objective(args, model, state.defense)
            gen = torch.Generator(device="cpu").manual_seed(args.seed)
            for chunk in c.batches(items, args.batch_size):
                x, ref = c.stack(chunk, args.device)
                check_budget(args.eps, args.norm, hw=tuple(x.shape[-2:]), name="--eps")  # type: ignore[arg-type]
                result = attack.run(objective, x, ref, generator=gen)
                for it, rec, chk in zip(chunk, result.records, result.checks):
                    rows.append(None)
                    shown(attack_row(state, rec, chk).payload(), it, len(rows) - 1)
                bar.update(len(chunk))
    return [r for r in rows if r is not None]


def _report(args: argparse.Namespace, rows: list[dict[str, Any]]) -> int:
    from robustbench_iqa.attacks.checks import IMAGE_FLAGS
    from robustbench_iqa.attacks.scores import summarize

    lower_better = bool(rows[0]["lower_better"]) if rows else False
    score_range = tuple(rows[0]["score_range"]) if rows else (0.0, 1.0)
    summary = summarize([r["clean_score"] for r in rows], [r["adv_score"] for r in rows],
                        score_range=score_range, lower_better=lower_better, confidence=args.confidence)  # type: ignore[arg-type]
    flags = {f.value: sum(f.value in str(r.get("flags", "")).split(",") for r in rows) for f in IMAGE_FLAGS}
    labels: dict[str, Any] = {k: rows[0][k] for k in ("orientation", "score_range", "weights") if k in rows[0]} \
        if rows else {}
    out = {"summary": True, "model": args.model, "attack": args.attack, "norm": args.norm, "eps": args.eps,
           "defense": args.defense, **summary.to_dict(), "flags": flags, **labels}
    if args.json:
        c.emit([{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}],
               as_json=True, columns=[])
    else:
        c.emit(rows, as_json=False, columns=COLUMNS + c.label_columns(rows))
        print()
        for key in SUMMARY_KEYS:
            print(f"{key:>14}: {out[key]:.4g}  [{out[key + '_low']:.4g}, {out[key + '_high']:.4g}]  "
                  f"(n={out[key + '_n']})")
        print(f"{'unchanged':>14}: {out['n_unchanged']} of {out['n_images']} images (excluded from robustness)")
        raised = ", ".join(f"{k} {v}" for k, v in flags.items() if v) or "none"
        print(f"{'flags':>14}: {raised} (of {out['n_images']} images; see robustbench_iqa.attacks.checks)")
    return 0
