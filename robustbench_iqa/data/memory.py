"""Will it fit?  Memory checks made *before* an image is decoded, resized or certified.

An allocation that cannot succeed either fails with a traceback (torch's
allocator) or, worse, gets the process killed by the kernel's out-of-memory
killer with no message at all, after minutes of work.  So sizes are checked
against the memory this process can still use, and refused with a message that
says what the work would need and what is available:

* :func:`available_bytes`: ``MemAvailable`` of ``/proc/meminfo``, lowered to
  the room left under the process's cgroup limit (v2 ``memory.max``, v1
  ``memory.limit_in_bytes``) when there is one; ``psutil`` where ``/proc`` is
  absent; ``None`` (no check) where neither can tell.
* :func:`check_fits`: raise :class:`~robustbench_iqa.errors.InputError` when
  an estimate exceeds it.

The estimates themselves are plain products (pixels x bytes per pixel):
:data:`DECODE_BYTES_PER_PIXEL` for decoding a file into a float32 tensor, and
:data:`WORK_BYTES_PER_PIXEL` for the work of one image, from the peak resident
memory above the interpreter's baseline of the CLI on the embedded models
(``default-nr`` / ``default-fr``; 1 thread, CPU, 512x512 and 1024x1024):

===========  ===========================================  ======================  =========
kind         commands                                     measured, NR / FR       estimate
===========  ===========================================  ======================  =========
``forward``  ``predict`` (no defense, FS-IQA)             ~0 / ~300               512
``attack``   ``attack`` (no defense, FS-IQA EOT)          ~250 / ~700             1,024
``certify``  ``certify`` with FS-IQA                      ~1,500 / ~2,300         2,560
``noise``    MS, DMS, DMS-IQA, RS-Reg, Cert-Reg, any      ~10,000 / ~20,000       20,480
===========  ===========================================  ======================  =========

(bytes per pixel of the image; the noise defenses push 64 noisy copies of it
through the model at once.)  The estimate is the FR value rounded up, so it is
at most about twice the measured peak of the embedded models; larger published
models need more, so passing the check is no promise.
"""

from __future__ import annotations

import math
from pathlib import Path

from robustbench_iqa.errors import InputError

DECODE_BYTES_PER_PIXEL = 40
"""Decoding one pixel: the decoder's buffer (up to 16 bytes), the float32 RGB
array (12) and the tensor made from it (12)."""

WORK_BYTES_PER_PIXEL: dict[str, int] = {"forward": 512, "attack": 1024, "certify": 2560, "noise": 20480}
"""Peak working memory of one image's work, per pixel, by kind (see the module docstring)."""

GB = 1024**3


def _proc_meminfo() -> int | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup memory limit, or None without a limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if controllers == "":  # cgroup v2
            base = Path("/sys/fs/cgroup") / rel.lstrip("/")
            limit, usage = _read_int(base / "memory.max"), _read_int(base / "memory.current")
        elif "memory" in controllers.split(","):  # cgroup v1
            base = Path("/sys/fs/cgroup/memory") / rel.lstrip("/")
            limit = _read_int(base / "memory.limit_in_bytes")
            usage = _read_int(base / "memory.usage_in_bytes")
        else:
            continue
        if limit is not None and usage is not None and limit < 1 << 60:
            return max(0, limit - usage)
    return None


def available_bytes() -> int | None:
    """Memory this process can still allocate, in bytes (None: unknown, so nothing is refused)."""
    free = _proc_meminfo()
    if free is None:
        try:
            import psutil

            free = int(psutil.virtual_memory().available)
        except ImportError:
            return None
    room = _cgroup_room()
    return free if room is None else min(free, room)


def fmt_bytes(n: float) -> str:
    """``n`` bytes in GB, MB or KB, for messages."""
    if n >= GB:
        return f"{n / GB:.1f} GB"
    return f"{n / 1024**2:.0f} MB" if n >= 1024**2 else f"{n / 1024:.0f} KB"


def check_fits(need: float, *, what: str, hint: str = "") -> None:
    """Raise :class:`InputError` when ``need`` bytes exceed :func:`available_bytes`.

    ``what`` completes "<what> needs about N GB"; ``hint`` says how to make it fit.
    """
    free = available_bytes()
    if free is None or need <= free:
        return
    msg = f"{what} needs about {fmt_bytes(need)}, but only {fmt_bytes(free)} of memory is available"
    raise InputError(msg + (f"; {hint}" if hint else ""))


def max_pixels_within(free: float, bytes_per_pixel: float) -> int:
    """The largest pixel count whose estimate stays within ``free`` bytes."""
    return max(1, math.floor(free / bytes_per_pixel))
