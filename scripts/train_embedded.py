"""Train the embedded default models ``default-nr`` and ``default-fr`` (reproducible, CPU).

Builds (or reuses) the embedded ``default`` dataset, splits it 80/20 by
reference (seed 0), trains both CNNs with MSE to the weak labels (FR: to
``1 - label``, a distance), prints held-out SRCC/PLCC (scipy.stats) and writes
``<out>/default-nr.safetensors``, ``<out>/default-fr.safetensors`` and
``<out>/embedded-training.json`` (config + held-out metrics).

    python scripts/train_embedded.py            # writes robustbench_iqa/weights/
    python scripts/train_embedded.py --epochs 5 --out /tmp/w   # quick try
"""

from __future__ import annotations

import argparse
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
from tqdm import tqdm

from robustbench_iqa.data.base import IQADataset
from robustbench_iqa.data.embedded import VERSION, embedded_dataset
from robustbench_iqa.models.base import IQAModel
from robustbench_iqa.models.embedded import EmbeddedFR, EmbeddedNR

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "robustbench_iqa" / "weights"


def load_arrays(ds: IQADataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All images, references (B, 3, H, W) and labels (B,) of ``ds`` as tensors."""
    xs, refs = zip(*(ds.load(i) for i in range(len(ds))), strict=True)
    y = torch.tensor([s.score for s in ds], dtype=torch.float32)
    return torch.stack(xs), torch.stack(refs), y  # type: ignore[arg-type]


def predict(model: IQAModel, x: torch.Tensor, ref: torch.Tensor, *, batch: int = 64) -> torch.Tensor:
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            r = ref[i : i + batch] if model.full_reference else None
            out.append(model(x[i : i + batch], r))
    return torch.cat(out)


def heldout_metrics(model: IQAModel, x: torch.Tensor, ref: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """SRCC/PLCC of the model's *quality* (negated for lower-better models) with the labels."""
    s = predict(model, x, ref).numpy().astype(np.float64)
    q = -s if model.lower_better else s
    return {"srcc": float(stats.spearmanr(q, y.numpy()).statistic),
            "plcc": float(stats.pearsonr(q, y.numpy()).statistic)}


def augment(xb: torch.Tensor, rb: torch.Tensor, crop: tuple[int, int], g: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random crop of size ``crop`` and random horizontal flip for x and ref.

    The distortions are spatially uniform, so a crop keeps its image's label.
    """
    (h, w), (H, W) = crop, xb.shape[-2:]
    top = int(torch.randint(0, H - h + 1, (1,), generator=g))
    left = int(torch.randint(0, W - w + 1, (1,), generator=g))
    xb, rb = xb[..., top : top + h, left : left + w], rb[..., top : top + h, left : left + w]
    flip = (torch.rand(len(xb), generator=g) < 0.5)[:, None, None, None]
    return torch.where(flip, xb.flip(-1), xb), torch.where(flip, rb.flip(-1), rb)


def train(model: IQAModel, x: torch.Tensor, ref: torch.Tensor, y: torch.Tensor, *,
          epochs: int, lr: float, batch: int, crop: tuple[int, int], seed: int) -> list[float]:
    """Adam + cosine learning rate, MSE to the target, random crops and flips."""
    g = torch.Generator().manual_seed(seed)
    target = 1.0 - y if model.lower_better else y
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    history = []
    for _ in tqdm(range(epochs), desc=f"train {model.name}", file=sys.stderr):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        total = 0.0
        for i in range(0, len(x), batch):
            idx = perm[i : i + batch]
            xb, rb = augment(x[idx], ref[idx], crop, g)
            pred = model(xb, rb if model.full_reference else None)
            loss = torch.nn.functional.mse_loss(pred, target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        history.append(total / len(x))
    return history


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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    described = {k: v for k, v in ds.describe().items() if k != "root"}  # no machine paths
    config = {"dataset": described | {"version": VERSION, "labels": ds.extra["labels"]},
              "split": {"seed": args.seed, "train_fraction": 0.8, "by": "group (reference)",
                        "n_train": len(train_ds), "n_test": len(test_ds)},
              "epochs": args.epochs, "lr": args.lr, "batch": args.batch, "seed": args.seed,
              "optimizer": "Adam + cosine LR", "loss": "MSE to weak label (FR: to 1 - label)",
              "threads": args.threads, "augmentation": f"random {args.crop[0]}x{args.crop[1]} crop + horizontal flip", "torch": torch.__version__,
              "python": platform.python_version()}
    results: dict[str, dict[str, float]] = {}
    for kind in args.models:
        torch.manual_seed(args.seed)  # initialisation of this script's models only
        model: IQAModel = EmbeddedNR() if kind == "nr" else EmbeddedFR()
        t0 = time.perf_counter()
        hist = train(model, x_tr, r_tr, y_tr, epochs=args.epochs, lr=args.lr, batch=args.batch,
                     crop=(args.crop[0], args.crop[1]), seed=args.seed)
        metrics = heldout_metrics(model, x_te, r_te, y_te)
        train_metrics = heldout_metrics(model, x_tr, r_tr, y_tr)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(out / f"{model.name}.safetensors"),
                  metadata={"model": model.name, "dataset": VERSION,
                            "heldout_srcc": f"{metrics['srcc']:.4f}", "heldout_plcc": f"{metrics['plcc']:.4f}"})
        (out / f"{model.name}.safetensors").chmod(0o644)
        row = {"heldout_srcc": metrics["srcc"], "heldout_plcc": metrics["plcc"],
               "train_srcc": train_metrics["srcc"], "train_plcc": train_metrics["plcc"],
               "final_train_mse": hist[-1], "seconds": round(time.perf_counter() - t0, 1),
               "parameters": sum(p.numel() for p in model.parameters())}
        results[model.name] = row
        print(json.dumps({"model": model.name, **row}))
    meta_path = out / "embedded-training.json"
    previous: dict[str, object] = {}
    if meta_path.is_file():  # keep the record of a model that was not retrained in this run
        previous = dict(json.loads(meta_path.read_text()).get("models", {}))
    meta_path.write_text(json.dumps({"config": config, "models": previous | results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
