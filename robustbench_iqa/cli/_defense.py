"""Building a certified defense from command-line arguments."""

from __future__ import annotations

import argparse
from typing import Any

from robustbench_iqa.certify.defense import CertifiedDefense, create_defense
from robustbench_iqa.cli import _common as c
from robustbench_iqa.models.base import IQAModel


def add_defense_args(p: argparse.ArgumentParser, *, certify: bool) -> None:
    g = p.add_argument_group("defense")
    g.add_argument("--defense", default="fs-iqa",
                   help="fs-iqa (default), ms, dms, dms-iqa, rs-reg, cert-reg" + ("" if certify else ", or none"))
    g.add_argument("--sigma", type=c.positive_float, default=0.25, help="noise standard deviation (default: 0.25)")
    g.add_argument("--n", type=c.sample_count, default=2000, help="noise draws per image (default: 2000)")
    g.add_argument("--checkpoint", default=None,
                   help="trained FS-IQA heads, or denoiser for dms/dms-iqa (default: shipped)")
    g.add_argument("--batch-size", type=c.positive_int, default=4, help="images per batch (default: 4)")
    if certify:
        g.add_argument("--alpha", type=c.probability, default=0.999, help="confidence level (default: 0.999)")
        g.add_argument("--tau", type=c.nonneg_float, default=1e-3,
                       help="FS-IQA: abstain when ||J_B(x)||_2 < tau (default: 0.001)")
        g.add_argument("--eps", type=c.positive_float, default=None,
                       help="input-space defenses: L2 radius to certify (default: sigma / 2)")
        g.add_argument("--method", choices=["lanczos", "power", "exact"], default="lanczos",
                       help="FS-IQA spectral-norm method (default: lanczos)")
        g.add_argument("--rtol", type=c.positive_float, default=1e-3, help="relative tolerance of the spectral norm")
        g.add_argument("--max-iter", type=c.positive_int, default=100, help="most Jacobian products per image")


def build_defense(args: argparse.Namespace, model: IQAModel) -> CertifiedDefense:
    options: dict[str, Any] = {}
    if args.checkpoint is not None:
        options["checkpoint" if args.defense == "fs-iqa" else "denoiser"] = args.checkpoint
    return create_defense(args.defense, model, sigma=args.sigma, **options)


def certify_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of ``defense.certify`` for the chosen defense."""
    if args.defense == "fs-iqa":
        return {"tau": args.tau, "method": args.method, "rtol": args.rtol, "max_iter": args.max_iter}
    return {"eps": args.eps if args.eps is not None else args.sigma / 2}
