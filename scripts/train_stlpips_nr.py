"""Fit the ridge head of ``st-lpips-alex-nr`` (reproducible, CPU, about a minute).

The frozen ST-LPIPS AlexNet trunk's pooled stage features b(x) (D = 1152) of the embedded
``default`` dataset are computed once; on the seeded 80/20 split by reference (seed 0, the split
of ``robustbench-iqa train``) the features are standardised with the training mean and standard
deviation and a ridge regression ``w = (Z^T Z + lam I)^-1 Z^T (y - mean y)`` is solved in closed
form, ``lam`` chosen by 5-fold cross-validation on the training split.  Writes
``<out>/st-lpips-alex-nr-head.safetensors`` and ``<out>/st-lpips-alex-nr-head.json`` (settings,
held-out SRCC/PLCC by scipy.stats).

    python scripts/train_stlpips_nr.py            # writes robustbench_iqa/weights/
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys
import time
from pathlib import Path

import _checkout  # noqa: F401  (this checkout first on sys.path)
import numpy as np
import torch
from safetensors.torch import save_file
from scipy import stats

from robustbench_iqa.certify.training import extract_features
from robustbench_iqa.data.registry import create_dataset
from robustbench_iqa.models.base import Backbone
from robustbench_iqa.models.stlpips import STLPIPSNR, _trunk_and_source

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "robustbench_iqa" / "weights"
LAMBDAS = (1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)


def ridge(z: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    """Closed-form ridge on standardised features: (w, intercept)."""
    c = float(y.mean())
    w = np.linalg.solve(z.T @ z + lam * np.eye(z.shape[1]), z.T @ (y - c))
    return w, c


def choose_lambda(z: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = 5) -> float:
    """The ridge penalty of least cross-validated MSE (folds by reference group)."""
    uniq = np.unique(groups)
    rng = np.random.default_rng(0)
    fold_of = dict(zip(uniq, rng.permutation(len(uniq)) % folds, strict=True))
    f = np.array([fold_of[g] for g in groups])
    best, best_mse = LAMBDAS[0], float("inf")
    for lam in LAMBDAS:
        err = 0.0
        for k in range(folds):
            tr, te = f != k, f == k
            w, c = ridge(z[tr], y[tr], lam)
            err += float(((z[te] @ w + c - y[te]) ** 2).sum())
        if err < best_mse:
            best, best_mse = lam, err
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ds = create_dataset("default")
    train, test = ds.split(seed=args.seed)
    trunk, _, source = _trunk_and_source("alex", None)
    model = STLPIPSNR("alex", trunk).eval()
    backbone = Backbone(model).eval()
    f_tr, y_tr = extract_features(backbone, train, full_reference=False, progress=False)
    f_te, y_te = extract_features(backbone, test, full_reference=False, progress=False)
    mean, std = f_tr.double().mean(0), f_tr.double().std(0).clamp_min(1e-8)
    z_tr = ((f_tr.double() - mean) / std).numpy()
    groups = np.array([s.group if getattr(s, "group", None) is not None else i for i, s in enumerate(train)])
    lam = choose_lambda(z_tr, y_tr.double().numpy(), groups)
    w, c = ridge(z_tr, y_tr.double().numpy(), lam)
    with torch.no_grad():
        model.feat_mean.copy_(mean.float())
        model.feat_std.copy_(std.float())
        model.weight.copy_(torch.from_numpy(w).float())
        model.bias.fill_(c)
        pred_te = model.head(f_te).double().numpy()
        pred_tr = model.head(f_tr).double().numpy()
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(model.head_state(), str(args.out / "st-lpips-alex-nr-head.safetensors"))
    record = {
        "model": "st-lpips-alex-nr",
        "trunk": {"package": "stlpips-pytorch", "version": importlib.metadata.version("stlpips-pytorch"),
                  "file": "stlpips_pytorch/weights/vST0.0/alex_shift_tolerant.pth",
                  "sha256": source.files[0].sha256},
        "features": "per-channel spatial means of the 5 ST-LPIPS AlexNet stages (D = 1152), frozen",
        "head": "standardise (training mean/std), ridge regression, closed form",
        "lambda": lam, "lambda_grid": list(LAMBDAS), "cv": "5-fold by reference group on the training split",
        "dataset": ds.describe(), "split": {"seed": args.seed, "train_fraction": 0.8, "by": "group (reference)",
                                            "n_train": len(train), "n_test": len(test)},
        "heldout_srcc": float(stats.spearmanr(pred_te, y_te.numpy()).statistic),
        "heldout_plcc": float(stats.pearsonr(pred_te, y_te.numpy()).statistic),
        "train_srcc": float(stats.spearmanr(pred_tr, y_tr.numpy()).statistic),
        "train_plcc": float(stats.pearsonr(pred_tr, y_tr.numpy()).statistic),
        "seconds": round(time.perf_counter() - t0, 1), "threads": 1,
        "torch": torch.__version__, "python": platform.python_version(),
    }
    (args.out / "st-lpips-alex-nr-head.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: record[k] for k in ("lambda", "heldout_srcc", "heldout_plcc", "seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
