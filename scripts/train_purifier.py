"""Train the shipped adversarial purifier of the embedded default models (``--defense purifier``).

One DnCNN purifier for both ``default-nr`` and ``default-fr``, trained on I-FGSM examples of
both on the training split of the embedded ``default`` dataset
(:mod:`robustbench_iqa.certify.purifier_training`), with every random draw from ``--seed``.
Writes

- ``<out>/purifier-default.safetensors`` (the name :func:`robustbench_iqa.certify.purifier.shipped_purifier`
  looks for; settings and report in its metadata), and
- ``<out>/purifier-training.json`` (settings, the held-out report per model: PSNR of the
  purified clean images, SRCC/PLCC of the defended and undefended model, PSNR and score
  gains under I-FGSM undefended / transferred / adaptive, seconds, SHA-256).

    python scripts/train_purifier.py              # writes robustbench_iqa/weights/ (a few CPU minutes)
    python scripts/train_purifier.py --epochs 1 --eval-limit 8 --out /tmp/p   # quick try
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from pathlib import Path

import _checkout  # noqa: F401  (this checkout first on sys.path)
import torch

from robustbench_iqa.certify.denoiser import save_denoiser
from robustbench_iqa.certify.purifier import LOSS, SHIPPED_NAME, shipped_purifier
from robustbench_iqa.certify.purifier_training import train_purifier
from robustbench_iqa.data.embedded import VERSION
from robustbench_iqa.data.registry import create_dataset
from robustbench_iqa.models.registry import create_model

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "robustbench_iqa" / "weights"
MODELS = ("default-nr", "default-fr")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--patch-size", type=int, default=48, help="training crop (the network is fully convolutional)")
    p.add_argument("--eps", type=float, nargs="+", default=[2 / 255, 4 / 255, 8 / 255],
                   help="Linf budgets of the training I-FGSM examples (one drawn per image)")
    p.add_argument("--steps", type=int, default=10, help="I-FGSM steps (training examples and the report)")
    p.add_argument("--depth", type=int, default=5, help="DnCNN conv layers")
    p.add_argument("--width", type=int, default=32, help="DnCNN channels")
    p.add_argument("--clean-weight", type=float, default=0.0, help="weight of the identity term on clean crops")
    p.add_argument("--eval-eps", type=float, default=4 / 255, help="Linf budget of the held-out attacks")
    p.add_argument("--eval-limit", type=int, default=64, help="held-out images attacked in the report")
    p.add_argument("--seed", type=int, default=0, help="split, crops, attack draws, initialisation, shuffling")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder of the weights and JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    ds = create_dataset("default")
    models = [create_model(m) for m in MODELS]
    t0, c0 = time.perf_counter(), time.process_time()
    net, report = train_purifier(
        models, ds, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, patch_size=args.patch_size,
        eps_choices=args.eps, steps=args.steps, depth=args.depth, width=args.width, clean_weight=args.clean_weight,
        seed=args.seed,
        eval_eps=args.eval_eps, eval_limit=args.eval_limit, progress=True,
    )
    seconds, cpu_seconds = round(time.perf_counter() - t0, 1), round(time.process_time() - c0, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rep = report.to_dict() | {"seconds": seconds, "cpu_seconds": cpu_seconds}
    path = save_denoiser(out / SHIPPED_NAME, net, sigma=0.0, loss=LOSS, model=",".join(MODELS), extra=rep)
    path.chmod(0o644)
    if out.resolve() == DEFAULT_OUT.resolve():
        assert shipped_purifier() is not None
    described = {k: v for k, v in ds.describe().items() if k != "root"}  # no machine paths
    record = {
        "config": report.config | {
            "dataset": described | {"version": VERSION},
            "split": {"seed": args.seed, "train_fraction": 0.8, "by": "group (reference)"},
            "purifier": {"arch": "DnCNN", "depth": args.depth, "width": args.width, "batch_norm": True},
            "loss": "mean ||P(adv) - clean||^2 + clean_weight mean ||P(clean) - clean||^2",
            "optimizer": "Adam + cosine LR",
            "report": "test split; SRCC/PLCC on every held-out image; attacks on the first eval_limit: I-FGSM "
                      "(Linf, eval_eps, raise quality); gains in quality direction (default-fr is lower-is-better, "
                      "its correlations are negative)",
            "threads": args.threads, "torch": torch.__version__, "python": platform.python_version()},
        "file": path.name,
        "parameters": sum(q.numel() for q in net.parameters()),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "n_train": report.n_train, "n_test": report.n_test,
        "heldout": report.per_model,
        "history": report.history,
        "seconds": seconds, "cpu_seconds": cpu_seconds,
    }
    (out / "purifier-training.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({"file": path.name, "heldout": report.per_model, "seconds": seconds}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
