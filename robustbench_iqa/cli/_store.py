"""``--out RUN_DIR`` / ``--resume`` for commands that write their rows to a results store."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from robustbench_iqa.errors import InputError
from robustbench_iqa.runner.context import derived_seed
from robustbench_iqa.store import RESULTS_FILE, ResultsStore, file_sha256, run_config


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
                        size=args.size, resize=args.resize, max_pixels=getattr(args, "max_pixels", None),
                        resize_ref=bool(getattr(args, "resize_ref", False)), seed=args.seed, device=args.device,
                        checkpoint_sha256=file_sha256(checkpoint) if checkpoint else None, **settings)
    run = Path(args.out)
    new_dir, new_store = not run.exists(), not (run / RESULTS_FILE).exists()
    store = ResultsStore.open(run, config, resume=args.resume)
    if new_store:
        on_input_error(args, lambda: _discard_if_empty(run, remove_dir=new_dir))
    return store


def on_input_error(args: argparse.Namespace, undo: Callable[[], None]) -> None:
    """Register ``undo`` to run when the command ends with an InputError (see ``robustbench_iqa.cli.main``)."""
    args.on_input_error = [*getattr(args, "on_input_error", []), undo]


def _discard_if_empty(run: Path, *, remove_dir: bool) -> None:
    """Remove the store this command created if the command failed before its first row.

    A bad input met after the store was opened (an unreadable image, weights
    that do not fit) then leaves no half-made run behind that a rerun would
    have to ``--resume`` or delete.
    """
    try:
        with ResultsStore.open(run) as st:
            empty = st.count() == 0
    except InputError:
        return
    if empty:
        with contextlib.suppress(OSError):  # best effort: the error message matters more
            for name in (RESULTS_FILE, RESULTS_FILE + "-wal", RESULTS_FILE + "-shm"):
                (run / name).unlink(missing_ok=True)
            if remove_dir:
                run.rmdir()


def image_generator(args: argparse.Namespace, *parts: object) -> torch.Generator:
    """A generator seeded from ``--seed`` and the image's identity, so a resumed run draws the same noise."""
    return torch.Generator(device="cpu").manual_seed(derived_seed(args.seed, *parts))
