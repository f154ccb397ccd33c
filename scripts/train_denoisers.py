"""Train the shipped DMS / DMS-IQA denoisers of the embedded default models (reproducible, CPU).

For each model (``default-nr``, ``default-fr``) and loss (``dms``: Gaussian
denoising, pixel MSE on random patches; ``dms-iqa``: pixel MSE + score MSE +
rank loss through the frozen model, whole images) trains a small DnCNN at
``sigma`` on the 80/20 split (seed 0) of the embedded ``default`` dataset with
:func:`robustbench_iqa.certify.denoiser_training.train_denoiser`, and writes

- ``<out>/denoiser-{loss}-{model}-sigma{sigma:g}.safetensors`` (the names
  :func:`robustbench_iqa.certify.denoised.shipped_denoiser` looks for), and
- ``<out>/denoisers-training.json`` (settings + each denoiser's held-out report:
  PSNR of noisy and denoised vs clean, SRCC/PLCC of the defended and undefended
  model, seconds).

The ``dms`` loss does not involve the model, so with the same seed the ``dms``
denoisers of both models are the same network; only their held-out reports
(the defended model's SRCC/PLCC) differ.

    python scripts/train_denoisers.py            # writes robustbench_iqa/weights/
    python scripts/train_denoisers.py --epochs-dms 1 --epochs-dms-iqa 1 --out /tmp/w   # quick try
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from pathlib import Path
from typing import Any

import _checkout  # noqa: F401  (this checkout first on sys.path)
import torch

from robustbench_iqa.certify.denoised import shipped_denoiser
from robustbench_iqa.certify.denoiser import save_denoiser
from robustbench_iqa.certify.denoiser_training import LOSSES, train_denoiser
from robustbench_iqa.data.embedded import VERSION
from robustbench_iqa.data.registry import create_dataset
from robustbench_iqa.models.registry import create_model

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "robustbench_iqa" / "weights"
MODELS = ("default-nr", "default-fr")


def file_name(loss: str, model: str, sigma: float) -> str:
    """The checkpoint name that :func:`robustbench_iqa.certify.denoised.shipped_denoiser` expects."""
    return f"denoiser-{loss}-{model}-sigma{float(sigma):g}.safetensors"


def scrub(obj: Any) -> Any:
    """Drop machine paths (the dataset ``root``) from nested report dictionaries."""
    if isinstance(obj, dict):
        return {k: scrub(v) for k, v in obj.items() if k != "root"}
    if isinstance(obj, list):
        return [scrub(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--epochs-dms", type=int, default=10, help="epochs of the dms (pure denoising) denoisers")
    p.add_argument("--epochs-dms-iqa", type=int, default=6, help="epochs of the dms-iqa denoisers (whole images)")
    p.add_argument("--patch-size", type=int, default=48, help="dms training crop (dms-iqa uses whole images)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--depth", type=int, default=5, help="DnCNN conv layers (the paper's is 17)")
    p.add_argument("--width", type=int, default=32, help="DnCNN channels (the paper's is 64)")
    p.add_argument("--n-eval", type=int, default=8, help="noise draws per held-out image for SRCC/PLCC")
    p.add_argument("--eval-limit", type=int, default=64, help="held-out images in the report")
    p.add_argument("--seed", type=int, default=0, help="split, initialisation, noise and shuffling seed")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder of the weights and JSON")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is fastest on a shared machine; results may differ in the last bits)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    ds = create_dataset("default")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    epochs = {"dms": args.epochs_dms, "dms-iqa": args.epochs_dms_iqa}
    described = {k: v for k, v in ds.describe().items() if k != "root"}  # no machine paths
    config = {"dataset": described | {"version": VERSION},
              "split": {"seed": args.seed, "train_fraction": 0.8, "by": "group (reference)"},
              "sigma": args.sigma, "epochs": epochs, "lr": args.lr, "batch_size": args.batch_size,
              "patch_size": {"dms": args.patch_size, "dms-iqa": None},
              "denoiser": {"arch": "DnCNN", "depth": args.depth, "width": args.width, "batch_norm": True},
              "weights": {"dms": [1.0, 0.0, 0.0], "dms-iqa": [1.0, 0.1, 0.01]},
              "optimizer": "Adam + cosine LR", "n_eval": args.n_eval, "eval_limit": args.eval_limit,
              "correlations": "SRCC/PLCC of the raw (smoothed) model score with the dataset's quality labels on the "
                              "first eval_limit held-out images; default-fr is lower-is-better, so its correlations are negative",
              "seed": args.seed, "threads": args.threads, "torch": torch.__version__,
              "python": platform.python_version()}
    results: dict[str, dict[str, Any]] = {}
    for name in args.models:
        for loss in args.losses:
            torch.manual_seed(args.seed)  # train_denoiser draws from its own seeded generator; this is belt and braces
            model = create_model(name)
            t0, c0 = time.perf_counter(), time.process_time()
            den, report = train_denoiser(
                model, ds, sigma=args.sigma, loss=loss, epochs=epochs[loss], lr=args.lr,
                batch_size=args.batch_size, seed=args.seed, depth=args.depth, width=args.width,
                n_eval=args.n_eval, eval_limit=args.eval_limit,
                patch_size=args.patch_size if loss == "dms" else None, progress=True,
            )
            seconds, cpu_seconds = round(time.perf_counter() - t0, 1), round(time.process_time() - c0, 1)
            rep = scrub(report.to_dict())
            path = out / file_name(loss, name, args.sigma)
            save_denoiser(path, den, sigma=args.sigma, loss=loss, model=name,
                          extra=rep | {"seconds": seconds, "cpu_seconds": cpu_seconds})
            path.chmod(0o644)
            row = {"file": path.name, "model": name, "loss": loss, "sigma": args.sigma,
                   "psnr_noisy": rep["psnr_noisy"], "psnr_denoised": rep["psnr_denoised"],
                   "srcc": rep["srcc"], "plcc": rep["plcc"],
                   "srcc_undefended": rep["srcc_undefended"], "plcc_undefended": rep["plcc_undefended"],
                   "n_train": rep["n_train"], "n_test": rep["n_test"],
                   "seconds": seconds, "cpu_seconds": cpu_seconds,
                   "parameters": sum(q.numel() for q in den.parameters()),
                   "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                   "history": rep["history"]}
            results[path.name] = row
            print(json.dumps({k: v for k, v in row.items() if k != "history"}), flush=True)
    if out.resolve() == DEFAULT_OUT.resolve():  # the shipped files are where the defenses look
        for row in results.values():
            assert shipped_denoiser(row["loss"], row["model"], row["sigma"]) is not None, row["file"]
    meta_path = out / "denoisers-training.json"
    previous: dict[str, Any] = {}
    if meta_path.is_file():  # keep the record of a denoiser that was not retrained in this run
        previous = dict(json.loads(meta_path.read_text()).get("denoisers", {}))
    meta_path.write_text(json.dumps({"config": config, "denoisers": previous | results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
