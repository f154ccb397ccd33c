"""Measure FS-IQA's three input radii side by side on held-out images of the embedded dataset.

For each model: the first-order radius sigma_f / ||J_B(x)||_2 (``eps_x``), the certified
Lipschitz radius sigma_f / L and the certified local radius, per image; their median and
quartiles; and, for each radius, how often the feature-space attack (the audit's own,
started along the top singular direction) pushes ||B(x') - B(x)||_2 above sigma_f inside
it (the IVE premise failing).  Writes ``<out>/radii-<model>-sigma<s>.json``.

    python scripts/measure_radii.py --models default-nr default-fr --limit 50
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import _checkout  # noqa: F401  (this checkout first on sys.path)
import numpy as np
import torch

from robustbench_iqa.attacks.feature_space import feature_space_attack
from robustbench_iqa.certify.defense import create_defense
from robustbench_iqa.certify.fs_iqa import FeatureSmoothedIQA
from robustbench_iqa.certify.spectral import top_input_direction
from robustbench_iqa.data.embedded import embedded_dataset
from robustbench_iqa.models.registry import create_model

KINDS = ("eps_x_first_order", "eps_x_lipschitz", "eps_x_local")


def summary(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"q1": float(q1), "median": float(med), "q3": float(q3), "n": int(v.size)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["default-nr", "default-fr"])
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--limit", type=int, default=50, help="held-out images (the first of the seeded split)")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--alpha", type=float, default=0.999)
    p.add_argument("--attack-steps", type=int, default=20)
    p.add_argument("--no-local", action="store_true", help="skip the (slower) local radius")
    p.add_argument("--out", default="runs/radii")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    _, test = embedded_dataset().split(seed=0, train_fraction=0.8)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        model = create_model(name)
        fs = create_defense("fs-iqa", model, sigma=args.sigma)
        assert isinstance(fs, FeatureSmoothedIQA)
        rows = []
        t0 = time.perf_counter()
        for i in range(min(args.limit, len(test))):
            x, ref = test.load(i)
            x = x[None]
            r = ref[None] if model.full_reference else None  # type: ignore[index]
            gen = torch.Generator().manual_seed(args.seed + i)
            est = fs.spectral_estimate(x, r, generator=gen)
            local = None if args.no_local else fs.local_radii(x, r)
            cert = fs.certify_from_estimate(est, n=args.n, alpha=args.alpha, generator=gen,
                                            input_size=(x.shape[-2], x.shape[-1]), local_radii=local)[0]
            row: dict[str, object] = {"image": test.samples[i].name, "abstained": cert.abstained,
                                      "spectral_norm": cert.spectral_norm, "lipschitz_bound": cert.lipschitz_bound,
                                      "width": cert.width}
            def feature_map(z: torch.Tensor, fs: FeatureSmoothedIQA = fs, r: torch.Tensor | None = r) -> torch.Tensor:
                return fs.normalized_features(z, r)

            direction = None if est.output_vector is None else top_input_direction(feature_map, x, est.output_vector)
            for kind in KINDS:
                eps = getattr(cert, kind)
                row[kind] = eps
                if eps is None:
                    continue
                att = feature_space_attack(feature_map, x, float(eps),
                                           steps=args.attack_steps, restarts=1, direction=direction,
                                           generator=torch.Generator().manual_seed(args.seed + 10_000 + i))
                row[f"{kind}_feature_ratio"] = float(att.feature_change[0]) / args.sigma
            rows.append(row)
            print(json.dumps(row), flush=True)
        res: dict[str, object] = {"model": name, "sigma": args.sigma, "n": args.n, "alpha": args.alpha,
                                  "images": len(rows), "seconds": round(time.perf_counter() - t0, 1)}
        for kind in KINDS:
            vals = [float(r[kind]) for r in rows if r.get(kind) is not None]  # type: ignore[arg-type]
            ratios = [float(r[f"{kind}_feature_ratio"]) for r in rows if f"{kind}_feature_ratio" in r]  # type: ignore[arg-type]
            if vals:
                res[kind] = summary(vals) | {
                    "premise_failed": int(sum(q > 1.0 for q in ratios)), "attacked": len(ratios),
                    "max_feature_ratio": max(ratios) if ratios else None}
        (out / f"radii-{name}-sigma{args.sigma:g}.json").write_text(json.dumps({"summary": res, "rows": rows},
                                                                              indent=1) + "\n")
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
