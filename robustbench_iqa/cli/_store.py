"""``--out RUN_DIR`` / ``--resume`` for commands that write their rows to a results store."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from robustbench_iqa.errors import InputError

if TYPE_CHECKING:
    import torch

    from robustbench_iqa.runlock import RunLock
    from robustbench_iqa.store import ResultsStore


def add_store_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("results store")
    g.add_argument("--out", default=None, metavar="RUN_DIR",
                   help="also write every row, as soon as it exists, to RUN_DIR/results.sqlite "
                        "(then `robustbench-iqa report RUN_DIR`)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out, skipping rows it has")


class StoreRun:
    """The store of ``--out`` held under the run directory's lock (``None`` store without ``--out``)."""

    def __init__(self, store: ResultsStore | None, lock: RunLock | None) -> None:
        self.store, self.lock = store, lock

    def __enter__(self) -> ResultsStore | None:
        return self.store

    def __exit__(self, *exc: object) -> None:
        if self.store is not None:
            self.store.close()
        if self.lock is not None:
            self.lock.release()


def open_store(args: argparse.Namespace, kind: str, settings: Mapping[str, Any]) -> StoreRun:
    """The store of ``--out`` with the command's configuration (``with open_store(...) as store``)."""
    from robustbench_iqa.runlock import RunLock
    from robustbench_iqa.store import ResultsStore, file_sha256, run_config

    if args.out is None:
        if args.resume:
            raise InputError("--resume needs --out RUN_DIR")
        return StoreRun(None, None)
    weights = args.weights
    if weights is not None and weights not in ("pretrained", "pretrained-base"):
        weights = file_sha256(weights)
    checkpoint = getattr(args, "checkpoint", None)
    config = run_config(kind=kind, model=args.model, weights=weights, dataset=args.dataset, root=args.root,
                        split=args.split, limit=args.limit, images=list(args.image), refs=list(args.ref),
                        size=args.size, resize=args.resize, seed=args.seed, device=args.device,
                        checkpoint_sha256=file_sha256(checkpoint) if checkpoint else None, **settings)
    lock = RunLock(args.out).acquire()
    try:
        store = ResultsStore.open(args.out, config, resume=args.resume)
    except BaseException:
        lock.release()
        raise
    return StoreRun(store, lock)


def item_generator(args: argparse.Namespace, *parts: object) -> torch.Generator:
    """A generator seeded from ``--seed`` and the input's identity, so a resumed run draws the same noise."""
    import torch

    from robustbench_iqa.runner.workspace import derived_seed

    return torch.Generator(device="cpu").manual_seed(derived_seed(args.seed, *parts))
