"""``--executor {local,ray}`` and the Ray options, for the commands that can run on a Ray cluster."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from robustbench_iqa.cli import _common as c
from robustbench_iqa.errors import InputError

if TYPE_CHECKING:
    from robustbench_iqa.runner.ray_items import Build, RayItems, Work

RAY_FLAGS = {"--address": "address", "--workers": "workers", "--cpus-per-worker": "cpus_per_worker",
             "--gpus-per-worker": "gpus_per_worker"}


def add_executor_args(p: argparse.ArgumentParser, *, what: str = "units") -> None:
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help=f"where {what} run: in this process (default) or on a Ray cluster (pip install "
                        "robustbench_iqa[ray])")
    r = p.add_argument_group("Ray (with --executor ray)")
    r.add_argument("--address", default=None,
                   help="Ray cluster: 'auto' (the one `ray start` runs on this machine), 'ray://HOST:PORT', "
                        "'HOST:PORT', or omitted for a new local one on 127.0.0.1")
    r.add_argument("--workers", type=c.positive_int, default=None,
                   help="actors, each holding the models (default: one per GPU of the cluster when the device is "
                        "cuda, else one per CPU)")
    r.add_argument("--cpus-per-worker", type=c.positive_int, default=None,
                   help="CPU cores (and torch threads) per actor (default: 1)")
    r.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs per actor when the device is cuda (default: 1; 0.5 puts two actors on a GPU)")


def check_executor_args(args: argparse.Namespace, *, needs_out: bool = False) -> None:
    """Ray options only with ``--executor ray``; with ``needs_out``, ``--executor ray`` only with ``--out``."""
    if args.executor != "ray":
        given = [flag for flag, dest in RAY_FLAGS.items() if getattr(args, dest) is not None]
        if given:
            raise InputError(f"{', '.join(given)} need(s) --executor ray")
    elif needs_out and args.out is None:
        raise InputError("--executor ray needs --out RUN_DIR (the driver writes each image's rows there)")
    else:
        import robustbench_iqa.runner.ray_executor  # noqa: F401  (without Ray: the install hint, before any work)


def ray_items(args: argparse.Namespace, build: Build, work: Work) -> RayItems | None:
    """The Ray pool for ``--executor ray`` (``work(build(args), item)`` per image), else None."""
    if args.executor != "ray":
        return None
    from robustbench_iqa.runner.ray_items import RayItems

    return RayItems(build, work, args, address=args.address, workers=args.workers,
                    num_cpus_per_worker=args.cpus_per_worker, num_gpus_per_worker=args.gpus_per_worker)
