"""Peak memory of one benchmark case.

* GPU: ``torch.cuda.max_memory_allocated`` after resetting the peak, minus the
  memory allocated before the case (the model and inputs are not counted).
* CPU: ``tracemalloc`` does not see torch's allocations, so each case runs in
  a fresh *subprocess* (spawned, so nothing is inherited) that builds its
  model and input, records its resident set size (RSS), runs the case once and
  reports the peak RSS during the case minus the RSS before it.  The peak is
  ``getrusage(RUSAGE_SELF).ru_maxrss`` when the case raised it, otherwise the
  maximum of RSS samples taken every millisecond by a watcher thread (the
  process' earlier peak, e.g. while importing, can exceed the case's own).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_MB = 1024.0 * 1024.0


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc/self/statm``; else the peak so far)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:
        return max_rss_bytes()


def max_rss_bytes() -> int:
    """Peak RSS of this process so far (``ru_maxrss`` is in KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


class _RssWatcher(threading.Thread):
    """Samples the RSS every ``interval`` seconds and keeps the maximum."""

    def __init__(self, interval: float = 1e-3) -> None:
        super().__init__(daemon=True)
        self.interval, self.peak, self._stop_event = interval, current_rss_bytes(), threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, current_rss_bytes())
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, current_rss_bytes())
        return self.peak


def cpu_peak_mb(fn: Callable[[], Any]) -> float:
    """Peak RSS increase (MB) while ``fn()`` runs in *this* process.

    Meaningful in a fresh process (see the module docstring); the harness
    calls it in a spawned subprocess per case.
    """
    before_rss, before_max = current_rss_bytes(), max_rss_bytes()
    watcher = _RssWatcher()
    watcher.start()
    try:
        fn()
    finally:
        sampled = watcher.stop()
    after_max = max_rss_bytes()
    peak = after_max if after_max > before_max else sampled
    return max(peak - before_rss, 0) / _MB


def cuda_peak_mb(fn: Callable[[], Any], device: torch.device | str) -> float:
    """Peak CUDA memory allocated (MB) by ``fn()`` beyond what was allocated before."""
    dev = torch.device(device)
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    before = torch.cuda.memory_allocated(dev)
    fn()
    torch.cuda.synchronize(dev)
    return max(torch.cuda.max_memory_allocated(dev) - before, 0) / _MB


def _child(target: Callable[..., float], args: tuple[Any, ...], threads: int, queue: Any) -> None:
    try:
        torch.set_num_threads(threads)
        queue.put(("ok", target(*args)))
    except BaseException as exc:  # reported to the parent, which raises it
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def in_subprocess(target: Callable[..., float], *args: Any, timeout_s: float = 1800.0) -> float:
    """Run ``target(*args)`` (a picklable top-level function) in a spawned process; return its value."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(target, args, torch.get_num_threads(), queue))
    proc.start()
    try:
        status, value = queue.get(timeout=timeout_s)
    finally:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()
    if status != "ok":
        raise RuntimeError(f"memory measurement failed in the subprocess: {value}")
    return float(value)
