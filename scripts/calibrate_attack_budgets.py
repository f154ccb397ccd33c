"""Calibrate every attack's budget to a visible-quality floor on the embedded images (CPU).

For each registered attack (the sparse attack excepted: its budget is a pixel
count with a closed-form PSNR bound, see :mod:`robustbench_iqa.attacks.sparse`),
each threat model it supports and each floor of
:data:`robustbench_iqa.attacks.calibration.FLOORS` (PSNR >= 40 dB, SSIM >= 0.9), runs
:func:`robustbench_iqa.attacks.calibration.calibrate_budget` on the first ``--images``
test images of the embedded ``default`` dataset (96x128, 80/20 split seed 0) against
the ``--models`` (default ``default-nr``; target: increase quality), and writes

- ``<out>/attack-budgets.json``: settings, and per (attack, norm, floor, model) the
  calibrated eps, the mean PSNR/SSIM it gave over the changed images and the probes;
- with ``--merge-into FILE`` (e.g. the shipped ``attacks/attack-budgets.json``, which
  :mod:`robustbench_iqa.attacks.presets` reads), FILE with the rows of the calibrated
  attacks replaced and every other row kept (a new attack is calibrated alone);
- the preset table on stdout (the smallest eps over the models).

    OMP_NUM_THREADS=1 python scripts/calibrate_attack_budgets.py --out /tmp/budgets   # ~15 min on 2 cores
    python scripts/calibrate_attack_budgets.py --attacks NEW --out /tmp/b --merge-into attacks/attack-budgets.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from functools import partial
from pathlib import Path
from typing import Any

import _checkout  # noqa: F401  (this checkout first on sys.path)
import torch

from robustbench_iqa.attacks.calibration import FLOORS, calibrate_budget
from robustbench_iqa.attacks.objective import Objective
from robustbench_iqa.attacks.presets import PresetTable
from robustbench_iqa.attacks.registry import (
    ATTACKS,
    attack_info,
    attack_options,
    create_attack,
    list_attacks,
)
from robustbench_iqa.data.registry import create_dataset
from robustbench_iqa.models.registry import create_model

HI = {"linf": 64 / 255, "l2": 8.0}
"""Upper end of the search per threat model (pixel units; L2 at 96x128)."""


def settings_for(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The effort of attack ``name``, from the options it declares: ``queries`` for a query attack,
    ``steps`` for an iterative one (``--uap-steps`` for one trained by ``fit``, e.g. the UAP)."""
    options = attack_options(name)
    if "queries" in options:
        return {"queries": args.queries}
    if "steps" in options:
        trained = hasattr(ATTACKS.factory(name), "fit")
        return {"steps": args.uap_steps if trained else args.steps}
    return {}


def make_attack(eps: float, *, name: str, norm: str, settings: dict[str, Any], obj: Objective,
                tx: torch.Tensor, tr: torch.Tensor | None) -> Any:
    """The attack at budget ``eps``; one trained on data (a UAP) is fitted on (tx, tr) first, with a fixed seed."""
    atk = create_attack(name, eps=eps, norm=norm, **settings)
    if hasattr(atk, "fit"):
        atk.fit(obj, tx, tr, generator=torch.Generator().manual_seed(0))
    return atk


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--train-images", type=int, default=8, help="UAP training images (train split)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--uap-steps", type=int, default=20)
    p.add_argument("--iterations", type=int, default=7)
    p.add_argument("--attacks", nargs="*", default=None)
    p.add_argument("--models", nargs="*", default=["default-nr"])
    p.add_argument("--merge-into", type=Path, default=None,
                   help="calibration file to update with these rows (rows of other attacks are kept)")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train, test = create_dataset("default").split(seed=0)
    x, ref = (torch.stack(t) for t in zip(*(test.load(i) for i in range(args.images)), strict=True))
    tx, tref = (torch.stack(t) for t in zip(*(train.load(i) for i in range(args.train_images)), strict=True))
    names = args.attacks or [n for n in list_attacks() if n != "sparse"]
    rows: list[dict[str, Any]] = []
    for model_name in args.models:
        model = create_model(model_name)
        r, tr = (ref, tref) if model.full_reference else (None, None)
        obj = Objective.from_model(model)
        for name in names:
            for norm in attack_info(name)["threat"]:
                settings = settings_for(name, args)
                make = partial(make_attack, name=name, norm=norm, settings=settings, obj=obj, tx=tx, tr=tr)

                for floor_name, floor in FLOORS.items():
                    t0 = time.perf_counter()
                    cal = calibrate_budget(make, obj, x, r, floor=floor, hi=HI[norm], iterations=args.iterations)
                    row = {"attack": name, "norm": norm, "floor": floor_name, "model": model_name,
                           "settings": settings, **cal.to_dict(), "seconds": round(time.perf_counter() - t0, 2)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"models": args.models, "images": args.images, "size": list(x.shape[-2:]), "train_images": args.train_images,
            "iterations": args.iterations, "hi": HI, "torch": torch.__version__, "python": platform.python_version()}
    calibration = {"settings": meta, "rows": rows}
    (args.out / "attack-budgets.json").write_text(json.dumps(calibration, indent=1))
    if args.merge_into is not None:
        calibration = merged(json.loads(args.merge_into.read_text()), calibration)
        args.merge_into.write_text(json.dumps(calibration, indent=1) + "\n")
    table = PresetTable.from_calibration(calibration)
    for (a, n, f), eps in sorted(table.eps.items()):
        print(f"{a:20s} {n:5s} {f:8s} {eps:.4g}{'  (capped)' if (a, n, f) in table.capped else ''}")


def merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``old`` with the rows of ``new``'s attacks replaced by ``new``'s rows; the settings must agree
    (beyond the models and the versions), or the presets would mix two protocols."""
    volatile = ("models", "torch", "python")
    a = {k: v for k, v in old["settings"].items() if k not in volatile}
    b = {k: v for k, v in new["settings"].items() if k not in volatile}
    if a != b:
        raise SystemExit(f"error: the calibration settings differ from the merged file's: {a} != {b}")
    redone = {r["attack"] for r in new["rows"]}
    return {"settings": old["settings"], "rows": [r for r in old["rows"] if r["attack"] not in redone] + new["rows"]}


if __name__ == "__main__":
    main()
