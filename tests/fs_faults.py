"""Folders that cannot be written: read-only and full, made for real where the test can.

* read-only: ``chmod 555`` for a normal user; root ignores permissions, so for
  root a read-only tmpfs is mounted instead (skipped where mounting is not
  allowed);
* full: a small tmpfs filled to the last byte (mounting needs root; skipped
  otherwise).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _mount_tmpfs(where: Path, options: str) -> bool:
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    return r.returncode == 0


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)  # lazy: also when a file is still open


@contextlib.contextmanager
def readonly_dir(parent: Path) -> Iterator[Path]:
    """An existing folder in which no file can be created."""
    d = parent / "readonly"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        try:
            yield d
        finally:
            d.chmod(0o755)
        return
    if not _mount_tmpfs(d, "ro,size=64k"):
        pytest.skip("cannot make a read-only folder here (root without permission to mount tmpfs)")
    try:
        yield d
    finally:
        _umount(d)


@contextlib.contextmanager
def full_dir(parent: Path) -> Iterator[Path]:
    """A folder on a file system with no free byte left (inodes remain: empty files can be created)."""
    d = parent / "full"
    d.mkdir()
    if not _mount_tmpfs(d, "size=256k"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        fd = os.open(d / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            with contextlib.suppress(OSError):  # ENOSPC ends the loop
                while os.write(fd, b"\0" * 4096) > 0:
                    pass
        finally:
            os.close(fd)
        yield d
    finally:
        _umount(d)
