"""``robustbench-iqa train-denoiser``: train the DnCNN of DMS or DMS-IQA for one model and sigma.

Writes a safetensors checkpoint (usable as ``--defense dms|dms-iqa --checkpoint PATH``)
and prints the held-out report as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from robustbench_iqa.cli import _common as c
from robustbench_iqa.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "train-denoiser", help="train the denoiser of DMS or DMS-IQA",
        description="Train a DnCNN denoiser at one sigma on the seeded 80/20 split; report held-out PSNR and "
                    "the SRCC/PLCC of the defended (median-smoothed) score.",
    )
    c.add_model_args(p)
    c.add_training_data_args(p)
    p.add_argument("--sigma", type=c.positive_float, default=0.25, help="input-noise sigma (default: 0.25)")
    p.add_argument("--loss", choices=("dms", "dms-iqa"), default="dms", help="dms (pixel MSE) or dms-iqa (composite)")
    p.add_argument("--w-pix", type=c.nonneg_float, default=None, help="weight of the pixel MSE (dms-iqa; default 1)")
    p.add_argument("--w-score", type=c.nonneg_float, default=None, help="weight of the score MSE (dms-iqa; default 0.1)")
    p.add_argument("--w-rank", type=c.nonneg_float, default=None, help="weight of the rank loss (dms-iqa; default 0.01)")
    p.add_argument("--epochs", type=c.positive_int, default=10)
    p.add_argument("--lr", type=c.positive_float, default=1e-3)
    p.add_argument("--batch-size", type=c.positive_int, default=8, help="images per training step (default: 8)")
    p.add_argument("--depth", type=c.positive_int, default=5, help="DnCNN conv layers (default 5; the paper's is 17)")
    p.add_argument("--width", type=c.positive_int, default=32, help="DnCNN channels (default 32; the paper's is 64)")
    p.add_argument("--n-eval", type=c.sample_count, default=8, help="noise draws per held-out image for SRCC/PLCC (default 8)")
    p.add_argument("--eval-limit", type=c.positive_int, default=64, help="held-out images used for the report (default 64)")
    p.add_argument("--patch-size", type=c.positive_int, default=None,
                   help="dms only: train on random crops of this size (default 48)")
    p.add_argument("--seed", type=c.seed, default=0, help="split, initialization and noise seed")
    p.add_argument("--out", required=True,
                   help="checkpoint file (*.safetensors) or folder (file named denoiser-LOSS-MODEL-sigmaS.safetensors)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _weights(args: argparse.Namespace) -> tuple[float, float, float] | None:
    given = (args.w_pix, args.w_score, args.w_rank)
    if all(v is None for v in given):
        return None
    if args.loss == "dms":
        raise InputError("--w-pix/--w-score/--w-rank apply to --loss dms-iqa only")
    defaults = (1.0, 0.1, 0.01)
    return tuple(d if v is None else v for v, d in zip(given, defaults))  # type: ignore[return-value]


def output_path(out: str, *, loss: str, model: str, sigma: float) -> Path:
    p = Path(out)
    if p.suffix == ".safetensors":
        return p
    return p / f"denoiser-{loss}-{model}-sigma{sigma:g}.safetensors"


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def run(args: argparse.Namespace) -> int:
    c.check_limit(args.limit)
    weights = _weights(args)
    model = c.build_model(args)
    from robustbench_iqa.data.registry import create_dataset

    ds = create_dataset(args.dataset, root=args.root, size=c.parse_dataset_size(args.size), resize=args.resize,
                        **c.dataset_options(args))
    ds = ds.head(args.limit)
    path = output_path(args.out, loss=args.loss, model=model.name, sigma=args.sigma)
    c.check_output_dir(path.parent)  # before the training, not at its end
    from robustbench_iqa.certify.denoiser_training import train_denoiser

    _, report = train_denoiser(
        model, ds, sigma=args.sigma, loss=args.loss, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        weights=weights, seed=args.seed, device=args.device, depth=args.depth, width=args.width,
        n_eval=args.n_eval, eval_limit=args.eval_limit, patch_size=args.patch_size, out=path, progress=c.progress_enabled(args),
    )
    summary = {k: _finite(v) for k, v in report.to_dict().items() if k not in ("history", "config")}
    summary.update(model=model.name, loss=args.loss, sigma=args.sigma, weights=report.config["weights"],
                   checkpoint=str(path), final_loss=report.history[-1]["loss"] if report.history else None)
    print(json.dumps(summary))
    return 0
