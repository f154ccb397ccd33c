"""What Ctrl-C prints: the exact command that continues the interrupted run.

A command that writes a resumable run (``verify``, and ``certify`` / ``attack`` with
``--out``) stores every finished unit as it completes, so an interrupted run loses only
the work in flight.  :func:`interrupted_message` says so and gives the command line to
paste: the same arguments without ``--fresh`` (which would delete what was stored) and
with ``--resume``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

PROG = "robustbench-iqa"
_DROP = ("--fresh", "--resume")


def _prog() -> str:
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name if name in (PROG, "rbiqa") else PROG


def _dropped(token: str) -> bool:
    """``--fresh`` / ``--resume`` or an unambiguous abbreviation argparse accepted for them."""
    return token.startswith("--") and len(token) > 3 and any(flag.startswith(token) for flag in _DROP)


def resume_command(args: argparse.Namespace, argv: Sequence[str]) -> str | None:
    """The command line that continues the run of ``argv``, or None when it wrote no run to resume."""
    from robustbench_iqa.store import RESULTS_FILE

    out = getattr(args, "out", None)
    if out is None or not hasattr(args, "resume") or not (Path(out) / RESULTS_FILE).exists():
        return None
    kept = [a for a in argv if not _dropped(a)]
    return shlex.join([_prog(), *kept, "--resume"])


def interrupted_message(args: argparse.Namespace | None, argv: Sequence[str]) -> str:
    """One or two lines for stderr after Ctrl-C."""
    command = resume_command(args, argv) if args is not None else None
    if command is None:
        return "interrupted"
    return f"interrupted: every finished unit is stored in {args.out}; continue with\n  {command}"  # type: ignore[union-attr]
