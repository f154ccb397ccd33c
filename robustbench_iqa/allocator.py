"""Keep freed memory in the process, so that large tensors reuse pages instead of faulting in new ones.

PyTorch's CPU allocator takes every tensor from the C library's ``malloc``.  glibc serves an
allocation above its mmap threshold (128 KiB at first, growing up to 32 MiB) with a fresh
``mmap`` and gives it back with ``munmap`` when the tensor is freed, so every forward pass on a
large batch page-faults all of its activations in again: the kernel zeroes each 4 KiB page.
Measured on one CPU thread, default-fr, median smoothing with N = 2000 at 96x128 (2 images,
64 noisy images per pass): 17.2 s user and **29.7 s system** time; default-nr at 384x512, a
batch of 16: 29 ms user + 51 ms system per image.  With the two settings below the same runs
take 15.3 s user + 2.4 s system, and 22 ms + 5 ms per image, with identical scores.

:func:`retain_freed_memory` sets, through ``mallopt``:

* ``M_MMAP_MAX = 0``: no allocation is served by ``mmap``; all come from the heap, whose freed
  blocks are reused by the next allocation of that size;
* ``M_TRIM_THRESHOLD = 1 GiB``: free memory at the top of the heap is returned to the system only
  above that amount.

The process then keeps up to its peak memory (plus 1 GiB) mapped until it exits.  It is a
process-wide setting, so library code never calls it: the command line does, once, before a
command runs.  ``ROBUSTBENCH_IQA_MALLOC=system`` keeps the C library's defaults.  Elsewhere than
glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30
ENV = "ROBUSTBENCH_IQA_MALLOC"


def retain_freed_memory() -> bool:
    """Set glibc's ``M_MMAP_MAX`` to 0 and ``M_TRIM_THRESHOLD`` to 1 GiB; ``True`` if both were set."""
    if not sys.platform.startswith("linux") or os.environ.get(ENV, "").strip().lower() == "system":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
