"""A Ray worker killed by Ray's memory monitor: its job is resubmitted, then reported in one line.

Ray raises ``OutOfMemoryError`` (not an actor error) for a task whose worker the memory
monitor killed; the driver must treat it as a lost worker (resubmit), and after the
allowed resubmissions give one ``InputError`` that keeps the rows already stored
(``--resume``) and says how to use less memory -- never an exit-3 traceback with 0 rows.
"""

from __future__ import annotations

import time
from collections import deque
from types import SimpleNamespace

import pytest

ray = pytest.importorskip("ray")

from robustbench_iqa.errors import InputError  # noqa: E402
from robustbench_iqa.runner import ray_executor as rx  # noqa: E402


def _pool(resubmits: int = 2) -> rx.RayPool:
    pool = rx.RayPool("cpu", resubmits=resubmits)
    pool.slots = [rx._Slot(0, actor=None)]
    return pool


def test_memory_kills_are_resubmittable() -> None:
    assert any(issubclass(ray.exceptions.OutOfMemoryError, c) for c in rx._OOM)


def test_a_memory_kill_is_resubmitted_then_reported(capsys) -> None:  # type: ignore[no-untyped-def]
    pool = _pool(resubmits=2)
    job = SimpleNamespace(key="certify/default-nr/0")
    task = rx._Task(job, 0, time.time())
    queue: deque = deque()  # type: ignore[type-arg]
    tries: dict[str, int] = {}
    oom = ray.exceptions.OutOfMemoryError("Task was killed due to the node running low on memory.\nlong details")
    for _ in range(2):
        pool._lost(task, oom, queue, tries)
        assert queue.popleft() is job
    assert pool.resubmitted == [job.key, job.key]
    err = capsys.readouterr().err
    assert err.count("killed by Ray's memory monitor; resubmitted") == 2
    with pytest.raises(InputError) as info:
        pool._lost(task, oom, queue, tries)
    msg = str(info.value)
    assert "\n" not in msg and "memory monitor 3 times" in msg and "--resume" in msg and "--batch-size" in msg
    assert pool.slots[0].alive  # the actor itself is not dead: Ray restarts its worker process
