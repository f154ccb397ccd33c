"""``robustbench-iqa train``: fit FS-IQA's FTN + scorer on a frozen backbone.

The heads are fitted on the train part of the dataset and scored on its test part, the parts
every other command and ``verify`` use (:meth:`~robustbench_iqa.data.base.IQADataset.split`):
KonIQ-10k's official ``training`` and ``test`` sets where its sets file is present, else the
seeded 80/20 split by reference with ``--split-seed`` (default 0, like verify; not ``--seed``,
so that another training seed never moves test images into training).  The checkpoint
records both parts.  Backbone features are computed once and reused for every sigma and epoch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from robustbench_iqa.cli import _common as c
from robustbench_iqa.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("train", help="train FS-IQA heads (FTN + scorer) on a frozen backbone",
                       description="Train FS-IQA heads on the train part (the official training set where the "
                                   "dataset has one, else the seeded 80/20 split) and report SRCC/PLCC on the test part.")
    c.add_model_args(p)
    c.add_training_data_args(p)
    p.add_argument("--sigma", type=c.positive_float, nargs="+", default=[0.25], help="one or more sigma_f values")
    p.add_argument("--epochs", type=c.positive_int, default=300)
    p.add_argument("--lr", type=c.positive_float, default=3e-3)
    p.add_argument("--split-seed", type=c.seed, default=0,
                   help="seed of the seeded split of a dataset without an official one (default: 0, the split "
                        "every other command and verify use)")
    p.add_argument("--seed", type=c.seed, default=0, help="training seed (initialization, noise); the split's is --split-seed")
    p.add_argument("--n-eval", type=c.sample_count, default=2000, help="noise draws for the held-out evaluation")
    p.add_argument("--out", default="checkpoints", help="output folder (default: ./checkpoints)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustbench_iqa.certify.fs_iqa import save_fs_checkpoint
    from robustbench_iqa.certify.training import evaluate_heads, extract_features, fit_fs_heads
    from robustbench_iqa.models.base import Backbone
    from robustbench_iqa.validation import check_sigma

    sigmas = [check_sigma(s) for s in args.sigma]
    c.check_limit(args.limit)
    c.check_output_dir(args.out)  # before hours of training, not at the end
    model = c.build_model(args)
    from robustbench_iqa.data.registry import create_dataset

    ds = create_dataset(args.dataset, root=args.root, size=c.parse_dataset_size(args.size), resize=args.resize,
                        **c.dataset_options(args))
    train, test = (part.head(args.limit) for part in ds.split(seed=args.split_seed))
    if len(train) < 2 or len(test) < 3:
        raise InputError(f"dataset {ds.name!r} has too few samples for a train/test split "
                         f"({len(train)} train, {len(test)} test; at least 2 and 3)")
    backbone = Backbone(model).eval()
    fr, prog = model.full_reference, not args.no_progress
    f_tr, y_tr = extract_features(backbone, train, full_reference=fr, device=args.device, progress=prog)
    f_te, y_te = extract_features(backbone, test, full_reference=fr, device=args.device, progress=prog)
    out = Path(args.out)
    for s in sigmas:
        ftn, scorer, hist = fit_fs_heads(f_tr, y_tr, sigma=s, epochs=args.epochs, lr=args.lr,
                                         seed=args.seed, device=args.device, progress=prog)
        srcc, plcc = evaluate_heads(ftn, scorer, f_te, y_te, sigma=s, n=args.n_eval, seed=args.seed)
        path = out / f"fs-iqa-{model.name}-sigma{s:g}.safetensors"
        extra = {"dataset": ds.describe(), "train_split": dict(train.selection),
                 "test_split": dict(test.selection), "seed": args.seed, "epochs": args.epochs, "lr": args.lr,
                 "heldout_srcc": srcc, "heldout_plcc": plcc, "n_train": len(train), "n_test": len(test),
                 "weights": args.weights, "weights_origin": str(getattr(model, "weights_origin", "unknown"))}
        save_fs_checkpoint(path, ftn, scorer, sigma=s, model=model.name, higher_better=ds.higher_better,
                           score_range=ds.score_range, extra=extra)
        print(json.dumps({"model": model.name, "sigma": s, "checkpoint": str(path), "heldout_srcc": srcc,
                          "heldout_plcc": plcc, "n_train": len(train), "n_test": len(test),
                          "split": test.selection.get("kind"), "final_mse": hist[-1]}))
    return 0
