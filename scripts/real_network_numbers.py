"""FS-IQA on the real trained ST-LPIPS networks: radii, premise failures, gate, accuracy, cost.

For each model (default: ``st-lpips-alex`` FR and ``st-lpips-alex-nr`` NR, with their shipped FS-IQA
heads) and each sigma_f, on held-out images of the embedded ``default`` dataset (``--limit`` at
96x128 and ``--large`` at 384x512), this script measures and writes as a Markdown table:

* the input radii of FS-IQA's certificate by kind: first order (sigma_f / ||J_B(x)||, Lanczos),
  Lipschitz (sigma_f / certified global Lip(FTN o b)) and local (certified local bound), as median
  [first quartile, third quartile]; a radius the model cannot have is shown as ``n/a`` with why;
* premise failures under a strong feature-space attack inside each radius: the number of images
  where ||B(x + u) - B(x)||_2 > sigma_f was reached with ||u||_2 <= radius (``--steps`` steps,
  ``--restarts`` random starts plus the top singular direction and its negative), and the largest
  feature change in units of sigma_f;
* the gate's verdict (``robustbench-iqa verify --quick`` settings, one model and sigma at a time);
* SRCC/PLCC against the embedded weak labels, undefended (the model's own score) and defended
  (FS-IQA's smoothed median);
* FS certify's cost (CPU time, one thread, n = 2000) as a ratio to one forward pass at 384x512.

    python scripts/real_network_numbers.py                      # writes benchmarks/results-real-networks.md
                                                                # and the README's table (block real-networks)
    python scripts/real_network_numbers.py --limit 2 --large 0 --no-gate --steps 20   # a quick look

CPU time is measured with ``time.process_time`` at one thread; on a shared machine it still varies.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _checkout  # noqa: F401  (this checkout first on sys.path)
import numpy as np
import torch
from scipy import stats

from robustbench_iqa.attacks.feature_space import feature_space_attack
from robustbench_iqa.certify.defense import create_defense
from robustbench_iqa.certify.spectral import top_input_direction
from robustbench_iqa.data.registry import create_dataset
from robustbench_iqa.errors import BoundUnavailableError, InputError
from robustbench_iqa.models import IQAModel, create_model

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("first_order", "lipschitz", "local")
SMALL, LARGE = (96, 128), (384, 512)


@dataclass
class Images:
    x: torch.Tensor
    ref: torch.Tensor | None
    labels: list[float]


def load_images(model: IQAModel, size: tuple[int, int], limit: int, seed: int) -> Images:
    """The first ``limit`` held-out images (seeded 80/20 split by reference) at ``size``."""
    ds = create_dataset("default", size=size)
    _, test = ds.split(seed=seed)
    test = test.head(limit)
    pairs = [test.load(i) for i in range(len(test))]
    x = torch.stack([a for a, _ in pairs])
    ref = torch.stack([r for _, r in pairs]) if model.full_reference else None  # type: ignore[misc]
    return Images(x, ref, [s.score for s in test.samples])


def quartiles(values: list[float]) -> str:
    if not values:
        return "-"
    q1, med, q3 = np.percentile(np.asarray(values, dtype=np.float64), [25, 50, 75])
    return f"{med:.3g} [{q1:.3g}, {q3:.3g}]"


def lipschitz_reason(model: IQAModel, size: tuple[int, int]) -> str:
    try:
        model.lipschitz_bound(size)
    except (BoundUnavailableError, InputError) as exc:
        return str(exc).splitlines()[0]
    return ""


def radii_and_premise(fs: Any, model: IQAModel, imgs: Images, *, n: int, steps: int, restarts: int,
                      seed: int) -> dict[str, Any]:
    """Certify every image, then attack inside each kind of radius (module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    certs = fs.certify(imgs.x, imgs.ref, n=n, alpha=0.999, generator=gen, lipschitz=True, local_radius=True)
    size = (int(imgs.x.shape[-2]), int(imgs.x.shape[-1]))
    sigma = float(fs.sigma)
    out: dict[str, Any] = {"abstained": sum(c.abstained for c in certs), "images": len(certs)}
    for kind in KINDS:
        radii = [getattr(c, f"eps_x_{kind}") for c in certs]
        idx = [i for i, (c, r) in enumerate(zip(certs, radii, strict=True)) if not c.abstained and r is not None]
        entry: dict[str, Any] = {"radii": [float(radii[i]) for i in idx]}
        if not idx:
            entry["why"] = (lipschitz_reason(model, size) if kind == "lipschitz" else
                            "the certified local bound is implemented for the embedded models only"
                            if kind == "local" else "every image abstained")
            out[kind] = entry
            continue
        xs = imgs.x[idx]
        rs = None if imgs.ref is None else imgs.ref[idx]

        def fmap(z: torch.Tensor, rs: torch.Tensor | None = rs) -> torch.Tensor:
            return fs.normalized_features(z, rs)

        budget = torch.tensor([float(radii[i]) for i in idx], dtype=xs.dtype)
        vectors = [getattr(certs[i].evidence, "output_vector", None) for i in idx]
        start = None
        if all(v is not None for v in vectors):
            start = top_input_direction(fmap, xs, torch.stack(vectors))  # type: ignore[arg-type]
        fa = feature_space_attack(fmap, xs, budget, steps=steps, restarts=restarts, direction=start,
                                  generator=torch.Generator().manual_seed(seed + 1))
        entry["failures"] = int(fa.premise_failed(sigma).sum())
        entry["max_change_over_sigma"] = float(fa.feature_change.max()) / sigma
        out[kind] = entry
    return out


def accuracy(model: IQAModel, fs: Any, imgs: Images, *, n: int, seed: int) -> dict[str, float]:
    """SRCC/PLCC of quality (a distance negated) with the weak labels, undefended and defended."""
    gen = torch.Generator().manual_seed(seed)
    und, dfd = [], []
    with torch.no_grad():
        for s in range(0, len(imgs.x), 16):
            x = imgs.x[s:s + 16]
            r = None if imgs.ref is None else imgs.ref[s:s + 16]
            und += model(x, r).tolist()
            dfd += fs.predict(x, r, n=n, generator=gen).tolist()
    sign = -1.0 if model.lower_better else 1.0
    fsign = -1.0 if fs.lower_better else 1.0
    y = np.asarray(imgs.labels)
    u, d = sign * np.asarray(und), fsign * np.asarray(dfd)
    return {"srcc_undefended": float(stats.spearmanr(u, y).statistic),
            "plcc_undefended": float(stats.pearsonr(u, y).statistic),
            "srcc_defended": float(stats.spearmanr(d, y).statistic),
            "plcc_defended": float(stats.pearsonr(d, y).statistic), "images": len(y)}


def cpu_seconds(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return float(np.median(times))


def certify_cost(model: IQAModel, fs: Any, imgs: Images, *, n: int, repeats: int) -> dict[str, float]:
    """CPU seconds of one forward and one FS certify (one image at 384x512) and their ratio."""
    x = imgs.x[:1]
    r = None if imgs.ref is None else imgs.ref[:1]
    with torch.no_grad():
        model(x, r)  # warm-up
        fwd = cpu_seconds(lambda: model(x, r), repeats)
    cert = cpu_seconds(lambda: fs.certify(x, r, n=n, generator=torch.Generator().manual_seed(0),
                                          lipschitz=False), repeats)
    return {"forward_s": fwd, "certify_s": cert, "ratio": cert / fwd}


def gate(model: str, sigma: float, limit: int) -> dict[str, Any]:
    """The verdict of ``verify`` (the repository's config, one model and sigma, ``limit`` images)."""
    from robustbench_iqa.runner import load_config, run_verify

    cfg = load_config(ROOT / "pyproject.toml", models=[model], limit=limit, sigma=sigma)
    with tempfile.TemporaryDirectory() as d:
        res = run_verify(cfg, Path(d) / "run", report=False, progress=False)
    return {"passed": bool(res.passed), "failed": sorted({c.name for c in res.failures})}


def settings_line(cfg: dict[str, Any]) -> str:
    if not cfg.get("measured", True):
        sigmas = cfg.get("gate_sigmas") or cfg["sigmas"]
        return (f"- {', '.join(cfg['models'])} ({cfg['date']}, sigma_f {', '.join(f'{s:g}' for s in sigmas)}): "
                f"gate only, `verify` with the repository's settings on {cfg['gate_limit']} images.")
    sig = ", ".join(f"{v:g}" for v in cfg.get("sigmas", []))
    return (f"- {', '.join(cfg['models'])} ({cfg['date']}, sigma_f {sig}, torch {cfg['torch']}, {cfg['threads']} thread, CPU "
            f"{cfg['cpu']}): the first {cfg['limit']} held-out images of the embedded `default` dataset at 96x128 "
            f"and {cfg['large']} at 384x512{'' if cfg.get('large_radii', True) else ' (cost only)'}, "
            f"{cfg['acc_limit']} for SRCC/PLCC; n = {cfg['n']}, alpha = 0.999; "
            f"feature attack {cfg['steps']} steps and {cfg['restarts']} random start(s) at 96x128 "
            f"({cfg['large_steps']} and {cfg['large_restarts']} at 384x512), plus the top singular direction and "
            f"its negative" + (f"; gate: `verify` with the repository's settings on {cfg['gate_limit']} images."
                                if cfg.get("gated") else "; no gate in this run."))


def summary(results: dict[str, Any]) -> list[str]:
    """One plain line per model: how often the feature attack broke each radius, and the gate."""
    out = []
    for model in dict.fromkeys(r["model"] for r in results["radii"] + results["gate"]):
        parts = []
        rows = [r for r in results["radii"] if r["model"] == model]
        for kind in KINDS:
            got = [r[kind] for r in rows if "failures" in r[kind]]
            if got:
                fails, total = sum(e["failures"] for e in got), sum(len(e["radii"]) for e in got)
                worst = max(e["max_change_over_sigma"] for e in got)
                parts.append(f"{kind.replace('_', '-')} radius broken on {fails} of {total} certified images "
                             f"(largest feature change {worst:.3g} sigma_f)")
            elif rows:
                parts.append(f"no {kind.replace('_', '-')} radius")
        gates = [r for r in results["gate"] if r["model"] == model]
        if gates:
            verdicts = ", ".join(f"{'PASS' if g['passed'] else 'FAIL'} at {g['sigma']:g}"
                                 for g in sorted(gates, key=lambda g: g["sigma"]))
            parts.append(f"gate {verdicts}")
        out.append(f"- `{model}`: " + "; ".join(parts) + ".")
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# FS-IQA on real trained networks (ST-LPIPS)", "",
        "Generated by `python scripts/real_network_numbers.py` (see its docstring).  Radii are median "
        "[quartiles] over the images that did not abstain; a failure is an image where the feature attack "
        "moved B(x) by more than sigma_f inside the radius.  CPU times are single-thread process times on a "
        "shared, busy 2-core machine.  Settings:", "",
        *[settings_line(cfg) for cfg in results["settings"]], "",
        "## Summary", "",
        *summary(results), "",
        "## Radii and premise failures", "",
        "| model | sigma_f | size | first-order eps_x | failures | Lipschitz eps_x | failures | local eps_x "
        "| failures | max feature change / sigma_f (first order) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes: dict[str, str] = {}
    for row in results["radii"]:
        cells = [row["model"], f"{row['sigma']:g}", row["size"]]
        for kind in KINDS:
            e = row[kind]
            if "why" in e:
                key = f"{kind}: {e['why']}"
                notes.setdefault(key, f"({len(notes) + 1})")
                cells += [f"n/a {notes[key]}", "-"]
            else:
                cells += [quartiles(e["radii"]), f"{e['failures']} / {len(e['radii'])}"]
        fo = row["first_order"]
        cells.append(f"{fo['max_change_over_sigma']:.3g}" if "max_change_over_sigma" in fo else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"{mark} {text}  " for text, mark in notes.items()]
    lines += ["", "## Gate verdict per sigma (`verify`, quick settings)", "",
              "| model | sigma_f | verdict | failed checks |", "|---|---|---|---|"]
    for row in sorted(results["gate"], key=lambda r: (r["model"], r["sigma"])):
        lines.append(f"| {row['model']} | {row['sigma']:g} | {'PASS' if row['passed'] else 'FAIL'} | "
                     f"{', '.join(row['failed']) or '-'} |")
    if not results["gate"]:
        lines.append("| (not run) | | | |")
    lines += ["", "## Accuracy against the embedded weak labels (held-out images)", "",
              "| model | sigma_f | images | SRCC undefended | PLCC undefended | SRCC FS-IQA | PLCC FS-IQA |",
              "|---|---|---|---|---|---|---|"]
    for row in results["accuracy"]:
        lines.append(f"| {row['model']} | {row['sigma']:g} | {row['images']} | {row['srcc_undefended']:.3f} | "
                     f"{row['plcc_undefended']:.3f} | {row['srcc_defended']:.3f} | {row['plcc_defended']:.3f} |")
    lines += ["", "## FS certify cost at 384x512 (CPU time, 1 thread, n as in the settings)", "",
              "| model | sigma_f | forward (s) | FS certify (s) | ratio |", "|---|---|---|---|---|"]
    for row in results["cost"]:
        lines.append(f"| {row['model']} | {row['sigma']:g} | {row['forward_s']:.3f} | {row['certify_s']:.3f} | "
                     f"{row['ratio']:.1f}x |")
    if not results["cost"]:
        lines.append("| (not run) | | | | |")
    return "\n".join(lines) + "\n"


def _median(values: list[float]) -> str:
    return f"{float(np.median(np.asarray(values, dtype=np.float64))):.2g}" if values else "-"


def readme_table(results: dict[str, Any]) -> str:
    """The README's real-network table (block ``real-networks``): one row per model and sigma_f.

    Radii are medians over the certified images at 96x128; ``broken`` counts the certified
    images, at every size measured, where the feature attack moved B(x) past sigma_f inside that
    radius; ``gate`` is the verdict of ``verify``; SRCC is undefended -> FS-IQA's median; the
    cost is FS certify over one forward pass at 384x512 (CPU, one thread).  A ``-`` is a number
    this run did not measure.  Rendered from the same results as the Markdown file.
    """
    keys = list(dict.fromkeys((r["model"], r["sigma"]) for k in ("radii", "gate", "accuracy", "cost")
                              for r in results[k]))
    order = list(dict.fromkeys(m for m, _ in keys))
    keys.sort(key=lambda k: (order.index(k[0]), k[1]))
    lines = ["| model | sigma_f | first-order eps_x | broken | Lipschitz eps_x | broken | local eps_x | broken "
             "| gate | SRCC undefended -> FS-IQA | FS certify / forward |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, sigma in keys:
        rows = [r for r in results["radii"] if (r["model"], r["sigma"]) == (model, sigma)]
        cells = [f"`{model}`", f"{sigma:g}"]
        for kind in KINDS:
            small = [v for r in rows if r["size"] == "96x128" for v in r[kind].get("radii", [])]
            got = [r[kind] for r in rows if "failures" in r[kind]]
            broken = (f"{sum(e['failures'] for e in got)} / {sum(len(e['radii']) for e in got)}" if got else "-")
            cells += [_median(small), broken]
        gates = [g for g in results["gate"] if (g["model"], g["sigma"]) == (model, sigma)]
        cells.append(", ".join("PASS" if g["passed"] else f"FAIL ({', '.join(g['failed'])})" for g in gates) or "-")
        acc = [a for a in results["accuracy"] if (a["model"], a["sigma"]) == (model, sigma)]
        cells.append(f"{acc[-1]['srcc_undefended']:.2f} -> {acc[-1]['srcc_defended']:.2f}" if acc else "-")
        cost = [c for c in results["cost"] if (c["model"], c["sigma"]) == (model, sigma)]
        cells.append(f"{cost[-1]['ratio']:.1f}x" if cost else "-")
        lines.append("| " + " | ".join(cells) + " |")
    dates = sorted({str(b.get("date")) for b in results["settings"]})
    lines += ["", f"Measured {', '.join(dates)} on one thread of a shared 2-core x86_64 CPU by "
              "`python scripts/real_network_numbers.py`; settings, quartiles and the 384x512 rows: "
              "`benchmarks/results-real-networks.md`."]
    return "\n".join(lines)


def write_readme(results: dict[str, Any]) -> list[Path]:
    """Rewrite the ``real-networks`` block in every page holding it (README.md, docs/models.md)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from readme_numbers import write_blocks
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return write_blocks({"real-networks": readme_table(results)})


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every number of the module docstring for ``args.models`` (one settings block)."""
    torch.set_num_threads(1)
    results: dict[str, Any] = {"radii": [], "gate": [], "accuracy": [], "cost": [], "settings": [{
        "models": args.models, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": 1,
        "cpu": platform.processor() or platform.machine(), "limit": args.limit, "large": args.large,
        "acc_limit": args.acc_limit, "n": args.n, "steps": args.steps, "restarts": args.restarts,
        "large_steps": args.large_steps, "large_restarts": args.large_restarts, "sigmas": args.sigmas,
        "large_radii": args.large_radii,
        "gate_sigmas": args.gate_sigmas if args.gate_sigmas is not None else args.sigmas,
        "gate_limit": args.gate_limit, "gated": not args.no_gate, "measured": not args.no_measure}]}
    for name in args.models:
        model = create_model(name)
        if not args.no_measure:
            small = load_images(model, SMALL, args.limit, args.seed)
            large = load_images(model, LARGE, args.large, args.seed) if args.large > 0 else None
            acc = load_images(model, SMALL, args.acc_limit, args.seed)
        for sigma in args.sigmas:
            if not args.no_measure:
                measure_one(results, args, name, model, sigma, small, large, acc)
            if not args.no_gate and (args.gate_sigmas is None or sigma in args.gate_sigmas):
                results["gate"].append({"model": name, "sigma": sigma, **gate(name, sigma, limit=args.gate_limit)})
                print(json.dumps(results["gate"][-1]), flush=True)
    return results


def measure_one(results: dict[str, Any], args: argparse.Namespace, name: str, model: IQAModel, sigma: float,
                small: Images, large: Images | None, acc: Images) -> None:
    fs = create_defense("fs-iqa", model, sigma=sigma)
    for size, imgs in (("96x128", small), ("384x512", large if args.large_radii else None)):
        if imgs is None:
            continue
        big = size == "384x512"
        row = radii_and_premise(fs, model, imgs, n=args.n, steps=args.large_steps if big else args.steps,
                                restarts=args.large_restarts if big else args.restarts, seed=args.seed)
        results["radii"].append({"model": name, "sigma": sigma, "size": size, **row})
        print(json.dumps({"model": name, "sigma": sigma, "size": size,
                          **{k: {kk: vv for kk, vv in row[k].items() if kk != "radii"} for k in KINDS}}), flush=True)
    results["accuracy"].append({"model": name, "sigma": sigma, **accuracy(model, fs, acc, n=500, seed=args.seed)})
    print(json.dumps(results["accuracy"][-1]), flush=True)
    if large is not None and sigma in args.cost_sigmas:
        results["cost"].append({"model": name, "sigma": sigma,
                                **certify_cost(model, fs, large, n=args.n, repeats=args.repeats)})
        print(json.dumps(results["cost"][-1]), flush=True)


def normalized(part: dict[str, Any]) -> dict[str, Any]:
    """A results file of any version of this script: settings as a list of blocks with every key."""
    blocks = part["settings"] if isinstance(part["settings"], list) else [part["settings"]]
    models = list(dict.fromkeys(r["model"] for k in ("radii", "accuracy", "gate") for r in part[k]))
    acc = {r["images"] for r in part["accuracy"]}
    for b in blocks:
        b.setdefault("models", models)
        b.setdefault("acc_limit", acc.pop() if len(acc) == 1 else "-")
        b.setdefault("gate_limit", "-")
    return {**part, "settings": blocks}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["st-lpips-alex", "st-lpips-alex-nr"])
    p.add_argument("--sigmas", nargs="+", type=float, default=[0.1, 0.25, 0.5])
    p.add_argument("--limit", type=int, default=8, help="held-out images at 96x128")
    p.add_argument("--large", type=int, default=1, help="held-out images at 384x512 (0: none, no cost)")
    p.add_argument("--acc-limit", type=int, default=64, help="held-out images for SRCC/PLCC")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--steps", type=int, default=100, help="feature-attack steps at 96x128")
    p.add_argument("--restarts", type=int, default=4, help="feature-attack random starts at 96x128")
    p.add_argument("--large-steps", type=int, default=10, help="feature-attack steps at 384x512")
    p.add_argument("--large-restarts", type=int, default=0, help="feature-attack random starts at 384x512")
    p.add_argument("--no-large-radii", dest="large_radii", action="store_false",
                   help="use the 384x512 images for the cost only (no radii or attack there)")
    p.add_argument("--cost-sigmas", nargs="+", type=float, default=[0.25], help="sigmas whose cost is timed")
    p.add_argument("--gate-sigmas", nargs="+", type=float, default=None, help="sigmas gated (default: all)")
    p.add_argument("--repeats", type=int, default=3, help="timing repeats (median)")
    p.add_argument("--no-gate", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gate-limit", type=int, default=8, help="images of each gate run")
    p.add_argument("--no-measure", action="store_true", help="only the gate (radii, accuracy and cost skipped)")
    p.add_argument("--render", nargs="+", default=None, metavar="JSON",
                   help="measure nothing: write the Markdown of earlier runs' JSON files together")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results-real-networks.md")
    p.add_argument("--no-readme", dest="readme", action="store_false",
                   help="do not rewrite the README's real-network table (block real-networks)")
    args = p.parse_args(argv)
    if args.render:
        parts = [normalized(json.loads(Path(f).read_text())) for f in args.render]
        results = {k: [r for part in parts for r in part[k]] for k in ("radii", "gate", "accuracy", "cost", "settings")}
    else:
        results = measure(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(results))
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    if args.readme:
        for page in write_readme(results):
            print(f"wrote {page.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
