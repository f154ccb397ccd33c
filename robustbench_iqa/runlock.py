"""One live run per run directory: an exclusive lock held while a run writes into it.

``RUN_DIR/.lock`` is locked with ``fcntl.flock`` (exclusive, non-blocking) for as long as
a run (``verify``, ``certify --out``, ``attack --out``) has the directory open, and holds
the owner's pid, host, command line and start time.  The kernel releases the lock
when the process ends, however it ends (``kill -9`` included), so a stale lock file
never blocks a later run: liveness is the lock itself, not the pid in the file.
A second run on the same directory gets an :class:`~robustbench_iqa.errors.InputError`
naming the live run, before it reads, deletes or writes anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from robustbench_iqa.errors import InputError

LOCK_FILE = ".lock"


class RunLock:
    """``with RunLock(run_dir):`` holds the run directory's lock (see the module docstring)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None
        self._created_dir = False

    def acquire(self) -> RunLock:
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise InputError(f"run dir {self.run_dir} is not a directory")
        self._created_dir = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create run dir {self.run_dir}: {exc.strerror or exc}") from None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if self._created_dir:
                with contextlib.suppress(OSError):
                    self.run_dir.rmdir()
            raise InputError(f"cannot write to run dir {self.run_dir}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise InputError(f"{self.run_dir} is in use by a live run ({owner}); wait for it to finish, "
                             f"or write elsewhere with --out") from None
        except OSError as exc:
            os.close(fd)
            raise InputError(f"cannot lock run dir {self.run_dir}: {exc.strerror or exc}") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except OSError:
            pass  # the lock itself is what matters; the owner text is a courtesy
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def discard(self) -> None:
        """Release the lock of a run that wrote nothing: remove the lock file (while still holding
        it, so a process that opened it meanwhile fails to lock it rather than taking over), and the
        run dir if this lock created it and it is now empty."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
        self.release()
        if self._created_dir:
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self if self.held else self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _read_owner(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return "owner unknown"
    parts = [f"pid {info['pid']}" if "pid" in info else "",
             f"on {info['host']}" if "host" in info else "",
             f"since {info['started']}" if "started" in info else "",
             f"`{info['command']}`" if info.get("command") else ""]
    return " ".join(p for p in parts if p) or "owner unknown"
