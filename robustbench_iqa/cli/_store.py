"""``--out RUN_DIR`` / ``--resume`` for commands that write their rows to a results store."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import torch

from robustbench_iqa.errors import InputError
from robustbench_iqa.runner.context import derived_seed
from robustbench_iqa.store import ResultsStore, file_sha256, run_config


def add_store_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("results store")
    g.add_argument("--out", default=None, metavar="RUN_DIR",
                   help="also write every row, as soon as it exists, to RUN_DIR/results.sqlite "
                        "(then `robustbench-iqa report RUN_DIR`)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out, skipping rows it has")


def open_store(args: argparse.Namespace, kind: str, settings: Mapping[str, Any]) -> ResultsStore | None:
    """The store of ``--out`` with the command's configuration, or None without ``--out``."""
    if args.out is None:
        if args.resume:
            raise InputError("--resume needs --out RUN_DIR")
        return None
    weights = args.weights
    if weights is not None and weights not in ("pretrained", "pretrained-base"):
        weights = file_sha256(weights)
    checkpoint = getattr(args, "checkpoint", None)
    config = run_config(kind=kind, model=args.model, weights=weights, dataset=args.dataset, root=args.root,
                        split=args.split, limit=args.limit, images=list(args.image), refs=list(args.ref),
                        size=args.size, resize=args.resize, seed=args.seed, device=args.device,
                        checkpoint_sha256=file_sha256(checkpoint) if checkpoint else None, **settings)
    return ResultsStore.open(args.out, config, resume=args.resume)


def image_generator(args: argparse.Namespace, *parts: object) -> torch.Generator:
    """A generator seeded from ``--seed`` and the image's identity, so a resumed run draws the same noise."""
    return torch.Generator(device="cpu").manual_seed(derived_seed(args.seed, *parts))
