"""Train the 1-Lipschitz embedded models ``default-nr-lip`` and ``default-fr-lip`` (reproducible, CPU).

Same data, split (80/20 by reference, seed 0), weak labels, augmentation, loss and
optimizer as ``scripts/train_embedded.py`` (whose functions it reuses); only the
backbone differs (:mod:`robustbench_iqa.models.lipschitz_embedded`).  Writes
``<out>/default-nr-lip.safetensors``, ``<out>/default-fr-lip.safetensors`` and
``<out>/embedded-lipschitz-training.json``: the settings, held-out SRCC/PLCC, and the
certified Lipschitz bound of each backbone at the dataset's image size.

    python scripts/train_embedded_lipschitz.py            # writes robustbench_iqa/weights/
    python scripts/train_embedded_lipschitz.py --epochs 2 --out /tmp/w   # quick try
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _checkout  # noqa: F401  (this checkout first on sys.path)
from train_embedded import heldout_metrics, load_arrays, train  # noqa: E402

from robustbench_iqa.data.embedded import VERSION, embedded_dataset  # noqa: E402
from robustbench_iqa.models.base import IQAModel  # noqa: E402
from robustbench_iqa.models.lipschitz_embedded import LipschitzFR, LipschitzNR  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "robustbench_iqa" / "weights"
RECORD = "embedded-lipschitz-training.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--crop", type=int, nargs=2, default=[64, 96], metavar=("H", "W"),
                   help="training crop size (evaluation uses whole images)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="split, initialisation and shuffling seed")
    p.add_argument("--cache", default=None, help="dataset cache folder (default: $RBIQA_CACHE/embedded-v1)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder of the weights and JSON")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is fastest on a shared machine; results may differ in the last bits)")
    p.add_argument("--models", nargs="+", default=["nr", "fr"], choices=["nr", "fr"])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    ds = embedded_dataset(root=Path(args.cache) if args.cache else None)
    train_ds, test_ds = ds.split(seed=args.seed, train_fraction=0.8)
    x_tr, r_tr, y_tr = load_arrays(train_ds)
    x_te, r_te, y_te = load_arrays(test_ds)
    size = (int(x_te.shape[-2]), int(x_te.shape[-1]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    described = {k: v for k, v in ds.describe().items() if k != "root"}  # no machine paths
    config = {"dataset": described | {"version": VERSION, "labels": ds.extra["labels"]},
              "split": {"seed": args.seed, "train_fraction": 0.8, "by": "group (reference)",
                        "n_train": len(train_ds), "n_test": len(test_ds)},
              "epochs": args.epochs, "lr": args.lr, "batch": args.batch, "seed": args.seed,
              "optimizer": "Adam + cosine LR", "loss": "MSE to weak label (FR: to 1 - label)",
              "threads": args.threads,
              "augmentation": f"random {args.crop[0]}x{args.crop[1]} crop + horizontal flip",
              "backbone": "1-Lipschitz: 1x1 spectrally normalized convs, SLL convs, abs, pixel_unshuffle; "
                          "NR mean+std pooling, FR per-stage RMS distances",
              "torch": torch.__version__, "python": platform.python_version()}
    results: dict[str, dict[str, object]] = {}
    for kind in args.models:
        torch.manual_seed(args.seed)  # initialisation of this script's models only
        model: IQAModel = LipschitzNR() if kind == "nr" else LipschitzFR()
        t0 = time.perf_counter()
        hist = train(model, x_tr, r_tr, y_tr, epochs=args.epochs, lr=args.lr, batch=args.batch,
                     crop=(args.crop[0], args.crop[1]), seed=args.seed)
        model.eval()
        metrics = heldout_metrics(model, x_te, r_te, y_te)
        train_metrics = heldout_metrics(model, x_tr, r_tr, y_tr)
        bound = model.lipschitz_bound(size)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        path = out / f"{model.name}.safetensors"
        save_file(state, str(path), metadata={"model": model.name, "dataset": VERSION,
                                              "heldout_srcc": f"{metrics['srcc']:.4f}",
                                              "heldout_plcc": f"{metrics['plcc']:.4f}"})
        path.chmod(0o644)
        row: dict[str, object] = {
            "heldout_srcc": metrics["srcc"], "heldout_plcc": metrics["plcc"],
            "train_srcc": train_metrics["srcc"], "train_plcc": train_metrics["plcc"],
            "final_train_mse": hist[-1], "seconds": round(time.perf_counter() - t0, 1),
            "parameters": sum(p.numel() for p in model.parameters()),
            "lipschitz_bound_backbone": bound.value, "lipschitz_bound_input_size": list(size)}
        results[model.name] = row
        print(json.dumps({"model": model.name, **row}))
    meta_path = out / RECORD
    previous: dict[str, object] = {}
    if meta_path.is_file():  # keep the record of a model that was not retrained in this run
        previous = dict(json.loads(meta_path.read_text()).get("models", {}))
    meta_path.write_text(json.dumps({"config": config, "models": previous | results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
