"""``--out RUN_DIR`` / ``--resume`` for commands that write their rows to a results store."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Mapping
from pathlib import Path
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
    """The store of ``--out`` held under the run directory's lock (``None`` store without ``--out``).

    A store this command created is removed again if the command fails on bad input before its
    first row (an unreadable image, weights that do not fit), so no half-made run is left behind
    that a rerun would have to ``--resume`` or delete.  It is removed under the lock, so never a
    live run's.
    """

    def __init__(self, store: ResultsStore | None, lock: RunLock | None, *, created: bool = False) -> None:
        self.store, self.lock = store, lock
        self.created = created

    def __enter__(self) -> ResultsStore | None:
        return self.store

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        empty = False
        try:
            if self.store is not None:
                empty = exc_type is not None and issubclass(exc_type, InputError) and self.created \
                    and self.store.count() == 0
                self.store.close()
                if empty:
                    _discard(self.store.path)
        finally:
            if self.lock is not None:
                if empty:
                    self.lock.discard()
                else:
                    self.lock.release()


def open_store(args: argparse.Namespace, kind: str, settings: Mapping[str, Any]) -> StoreRun:
    """The store of ``--out`` with the command's configuration (``with open_store(...) as store``)."""
    from robustbench_iqa.provenance import file_sha256, run_config
    from robustbench_iqa.runlock import RunLock
    from robustbench_iqa.store import RESULTS_FILE, ResultsStore

    if args.out is None:
        if args.resume:
            raise InputError("--resume needs --out RUN_DIR")
        return StoreRun(None, None)
    weights = args.weights
    if weights is not None and weights not in ("pretrained", "pretrained-base", "random"):
        weights = file_sha256(weights)
    checkpoint = getattr(args, "checkpoint", None)
    if args.dataset:  # how the part was chosen (official set, or seeded split), recorded with the run
        from robustbench_iqa.cli._common import load_dataset

        settings = {**settings, "split_record": dict(load_dataset(args).selection)}
    config = run_config(kind=kind, model=args.model, weights=weights, dataset=args.dataset, root=args.root,
                        dataset_options=getattr(args, "dataset_option", []),
                        split=args.split, split_seed=getattr(args, "split_seed", 0), limit=args.limit, images=list(args.image), refs=list(args.ref),
                        size=args.size, resize=args.resize, max_pixels=getattr(args, "max_pixels", None),
                        resize_ref=bool(getattr(args, "resize_ref", False)), seed=args.seed, device=args.device,
                        checkpoint_sha256=file_sha256(checkpoint) if checkpoint else None, **settings)
    run = Path(args.out)
    lock = RunLock(run).acquire()
    new_store = not (run / RESULTS_FILE).exists()
    try:
        store = ResultsStore.open(run, config, resume=args.resume)
    except BaseException:
        if new_store:
            lock.discard()
        else:
            lock.release()
        raise
    return StoreRun(store, lock, created=new_store)


def _discard(path: Path) -> None:
    """Delete the store files at ``path`` (a store this command created and never wrote a row to)."""
    with contextlib.suppress(OSError):  # best effort: the error message matters more
        for name in (path.name, path.name + "-wal", path.name + "-shm"):
            (path.parent / name).unlink(missing_ok=True)


def item_generator(args: argparse.Namespace, *parts: object) -> torch.Generator:
    """A generator seeded from ``--seed`` and the input's identity, so a resumed run draws the same noise."""
    import torch

    from robustbench_iqa.runner.workspace import derived_seed

    return torch.Generator(device=torch.device(args.device)).manual_seed(derived_seed(args.seed, *parts))
