"""Hours of the Tables 1-2 workload on N GPUs: from the FS-IQA paper's A100 times, and from a run's store.

    python benchmarks/cost_model.py [RUN_DIR] [--images 2015] [--workers 1 8 64] [--efficiency 0.95]

Without RUN_DIR: the paper's per-image times with certification on an A100 (Tables
1-2, all six defenses) times 3 models x 3 sigmas x the test images, on N GPUs.
With RUN_DIR (a pilot ``verify`` run, e.g. 20 images of the real config): the
measured seconds per image of every (study, model, defense, sigma, part) in its
store, scaled to ``--images`` images per model, on N workers of the kind that ran
it (see :mod:`robustbench_iqa.runner.cost`).  ``--efficiency``: the fraction of
worker time spent in units (``benchmarks/ray_throughput.py`` measures it).
"""

from __future__ import annotations

import argparse
import sys

import _checkout  # noqa: F401  (this checkout first on sys.path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default=None, help="a run directory holding results.sqlite")
    ap.add_argument("--images", type=int, default=2015, help="images per model (default: KonIQ-10k's test split)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 8, 64], help="GPUs / workers (default: 1 8 64)")
    ap.add_argument("--efficiency", type=float, default=1.0, help="fraction of worker time in units (default 1)")
    args = ap.parse_args()

    from robustbench_iqa.runner.cost import (
        PAPER_A100_SECONDS,
        TABLES_1_2,
        paper_hours,
        project,
        run_inputs,
        unit_costs,
    )
    from robustbench_iqa.store import ResultsStore

    print(f"FS-IQA paper, A100 s/image with certification: NR {PAPER_A100_SECONDS['nr']}, FR {PAPER_A100_SECONDS['fr']}")
    for w in TABLES_1_2:
        hours = ", ".join(f"{n} GPU(s): {paper_hours(w, gpus=n, efficiency=args.efficiency):.1f} h" for n in args.workers)
        print(f"  {w.name}, {w.models} models x {w.sigmas} sigmas x {w.images} images: {hours}")
    if args.run is None:
        return 0
    with ResultsStore.open(args.run) as store:
        costs = unit_costs(store)
        inputs = run_inputs(store)
    print(f"\n{args.run}: {int(costs['units'].sum())} units, inputs per model {inputs}")
    table = project(costs, inputs=inputs, images=args.images, workers=1)
    cols = ["study", "model", "defense", "sigma", "part", "units", "images", "s_per_image", "projected_images",
            "projected_hours"]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    total = float(table["projected_hours"].sum())
    hours = ", ".join(f"{n} worker(s): {total / (n * args.efficiency):.2f} h" for n in args.workers)
    print(f"projected at {args.images} images per model: {hours}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
