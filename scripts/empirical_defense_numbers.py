"""The measured table of the empirical defenses on the embedded default models (a few CPU minutes).

For each embedded model and each empirical defense (and the undefended model), on the
held-out split of the embedded ``default`` dataset (seed 0):

* SRCC / PLCC of the defended score with the dataset's labels, on every held-out image;
* mean gain (quality direction, the model's score units) of I-FGSM (Linf, ``--eps``,
  ``--steps`` steps, raise the quality) on the first ``--limit`` held-out images:
  *transfer* (the adversarial images made against the undefended model, scored by the
  defense), *adaptive* (the attack through the defense: BPDA for jpeg and bit-depth, the true
  gradient otherwise, EOT over ``--eot`` draws for random-resize) and, for the quantizers,
  *masked* (the plain gradient of the un-approximated transform: zero), with the number of
  images the attack-strength checks flagged ``zero-gradient``.

Prints a Markdown table.  ``python scripts/empirical_defense_numbers.py [--limit 32]``.
"""

from __future__ import annotations

import argparse
import platform
import time

import _checkout  # noqa: F401  (this checkout first on sys.path)
import numpy as np
import torch
from scipy import stats

from robustbench_iqa.attacks.checks import Flag
from robustbench_iqa.attacks.eot import eot_objective
from robustbench_iqa.attacks.gradient import IFGSM
from robustbench_iqa.attacks.objective import Objective
from robustbench_iqa.certify.defense import DEFENSES, create_defense, list_defenses
from robustbench_iqa.data.registry import create_dataset
from robustbench_iqa.models.registry import create_model

MODELS = ("default-nr", "default-fr")


def _load(ds, full_reference: bool) -> tuple[torch.Tensor, torch.Tensor | None, np.ndarray]:
    xs, refs = zip(*(ds.load(i) for i in range(len(ds))), strict=True)
    ref = torch.stack(refs) if full_reference else None  # type: ignore[arg-type]
    return torch.stack(xs), ref, np.array([s.score for s in ds.samples], dtype=float)


def _predict(score, x, ref, batch: int = 32) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([score(x[s : s + batch], None if ref is None else ref[s : s + batch])
                          for s in range(0, len(x), batch)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--eps", type=float, default=4 / 255)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--limit", type=int, default=32, help="held-out images attacked")
    p.add_argument("--eot", type=int, default=8, help="EOT draws per step (random-resize)")
    p.add_argument("--n", type=int, default=32, help="draws of random-resize's recorded prediction")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    _, test = create_dataset("default").split(seed=0)
    attack = IFGSM(eps=args.eps, steps=args.steps)
    print(f"I-FGSM Linf eps={args.eps * 255:g}/255, {args.steps} steps, raise quality, first {args.limit} "
          f"held-out images; SRCC/PLCC on all {len(test)} held-out images; torch {torch.__version__}, "
          f"python {platform.python_version()}, {args.threads} thread(s)\n")
    print("| model | defense | SRCC | PLCC | gain transfer | gain adaptive | gain masked (zero-grad flags) |")
    print("|---|---|---|---|---|---|---|")
    for model_name in MODELS:
        model = create_model(model_name)
        x, ref, y = _load(test, model.full_reference)
        xa, ra = x[: args.limit], None if ref is None else ref[: args.limit]
        base = attack.run(Objective.from_model(model), xa, ra)
        obj0 = Objective.from_model(model)
        s0 = _predict(model, x, ref).numpy()
        print(f"| {model_name} | none | {stats.spearmanr(s0, y).statistic:.3f} | {stats.pearsonr(s0, y).statistic:.3f} "
              f"| – | {float(base.improvements.mean()):.4f} | – |")
        for name in list_defenses(certified=False):
            d = create_defense(name, model, sigma=0.0)
            randomized = DEFENSES.metadata(name)["randomized"]

            def score(xb, rb, d=d, randomized=randomized):
                gen = torch.Generator().manual_seed(0)
                return d.predict(xb, rb, n=args.n if randomized else 1, generator=gen)

            s = _predict(score, x, ref).numpy()
            transfer = obj0.gain(_predict(score, base.adv, ra)) - obj0.gain(_predict(score, xa, ra))
            obj = eot_objective(d, n=args.eot if randomized else 1, eval_n=args.n if randomized else 1,
                                generator=torch.Generator().manual_seed(0))
            adaptive = attack.run(obj, xa, ra)
            masked = "–"
            if name in ("jpeg", "bit-depth"):
                plain = attack.run(eot_objective(create_defense(name, model, sigma=0.0, gradient="exact"), n=1,
                                                 eval_n=1), xa, ra)
                flagged = sum(Flag.ZERO_GRADIENT in c.flags for c in plain.checks)
                masked = f"{float(plain.improvements.mean()):.4f} ({flagged}/{len(xa)})"
            print(f"| {model_name} | {name} | {stats.spearmanr(s, y).statistic:.3f} | "
                  f"{stats.pearsonr(s, y).statistic:.3f} | {float(transfer.mean()):.4f} | "
                  f"{float(adaptive.improvements.mean()):.4f} | {masked} |", flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s wall")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
