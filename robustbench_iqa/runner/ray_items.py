"""The images of a command (``certify``, ``attack``) on Ray actors, one row payload per image.

:class:`RayItems` is a :class:`~robustbench_iqa.runner.ray_executor.RayPool` whose
actors (:class:`ItemWorker`) each build the command's state once (its model, defense
and attack) by a picklable top-level function of the parsed command-line arguments,
then apply a second one to image after image.  The driver ships each image as an
:class:`ItemJob` (its tensors, name, target score and identity), receives the
function's plain result as it completes, and is the only writer to the store.  The
function must draw its randomness from the image's identity (``item_generator(args,
item.id)``), so a result does not depend on the actor, the order or a restart.

Ray is optional; importing this module without it raises
:class:`~robustbench_iqa.errors.InputError` with the install hint.
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from robustbench_iqa.runner.ray_executor import RayPool

Build = Callable[[argparse.Namespace], Any]
"""Builds an actor's state from the command's arguments (top-level, so it pickles by name)."""
Work = Callable[[Any, Any], Any]
"""``work(state, item)``: the plain result of one image (an object with ``name``, ``x``, ``ref``,
``score`` and ``id``, as :class:`robustbench_iqa.cli._common.Item`)."""


@dataclass(frozen=True)
class ItemJob:
    """One image sent to an actor: its position in the command's inputs and the input itself."""

    key: str
    """``"<index>:<id>"``: unique per input even when one file is given twice."""
    index: int
    item: Any


class ItemWorker:
    """The actor: the command's state built once from its arguments, many images."""

    def __init__(self, build: Build, work: Work, args: dict[str, Any], threads: int) -> None:
        import torch

        from robustbench_iqa.plugins import load_plugins

        torch.set_num_threads(threads)
        args = dict(args)
        load_plugins(args.pop("_plugins", ()), where="plugins", environ=False)  # the driver's, as imported there
        ns = argparse.Namespace(**args)
        if str(ns.device).startswith("cuda"):  # Ray gives the actor its own GPU(s) as cuda:0
            ns.device = "cuda"
        self.state = build(ns)
        self.work = work
        self.where = f"{socket.gethostname()}:{os.getpid()}"

    def ready(self) -> str:
        """Where this actor runs (``host:pid``), once its state is built."""
        return self.where

    def run(self, job: ItemJob) -> tuple[Any, float, float, float]:
        """The image's result, the wall-clock times it started and ended, and the process's CPU seconds."""
        started, cpu = time.time(), time.process_time()
        out = self.work(self.state, job.item)
        return out, started, time.time(), time.process_time() - cpu


class RayItems(RayPool):
    """``work(build(args), item)`` for every item, on Ray actors (settings as :class:`RayPool`).

    ``args``: the parsed arguments (their ``device`` picks GPU or CPU slots); sent to every
    actor as a plain dict, without ``func``.
    """

    what = "image"

    def __init__(self, build: Build, work: Work, args: argparse.Namespace, *, address: str | None = None,
                 workers: int | None = None, num_gpus_per_worker: float | None = None,
                 num_cpus_per_worker: float | None = None, in_flight: int = 2, max_restarts: int = 3,
                 max_task_retries: int = 3, resubmits: int = 3, num_cpus: int | None = None,
                 num_gpus: int | None = None) -> None:
        super().__init__(args.device, address=address, workers=workers, num_gpus_per_worker=num_gpus_per_worker,
                         num_cpus_per_worker=num_cpus_per_worker, in_flight=in_flight, max_restarts=max_restarts,
                         max_task_retries=max_task_retries, resubmits=resubmits, num_cpus=num_cpus,
                         num_gpus=num_gpus)
        self.build, self.work = build, work
        self.args = {k: v for k, v in vars(args).items() if k != "func"}

    def _actor(self, threads: int) -> tuple[type, tuple[Any, ...]]:
        from robustbench_iqa.plugins import loaded_plugins

        return ItemWorker, (self.build, self.work, {**self.args, "_plugins": loaded_plugins()}, threads)

    def map(self, items: Iterable[tuple[int, Any]]) -> Iterator[tuple[int, Any, Any]]:
        """``(index, item, result)`` for every ``(index, item)``, as each completes (any order)."""
        jobs = (ItemJob(f"{i}:{it.id}", i, it) for i, it in items)
        for task, out, _started, _finished, _cpu in self.results(jobs):
            yield task.job.index, task.job.item, out
