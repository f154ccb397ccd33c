"""The ``robustbench-iqa`` (alias ``rbiqa``) command line.

Each subcommand lives in its own module of this package and exposes
``register(subparsers) -> None``, which adds its parser and sets
``func=run`` (a callable ``run(args) -> int``).  Modules are discovered, so a
new subcommand is a new file.  Exit codes: 0 success, 1 a check failed
(``verify``), 2 bad input (:class:`~robustbench_iqa.errors.InputError`, one
line on stderr), 3 an internal error (a bug: the traceback is printed), 130
interrupted.  A CI therefore never mistakes a crash for a failed check.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import NoReturn, TextIO

from robustbench_iqa.errors import InputError, ReproducibilityWarning

_ORDER = ["certify", "predict", "train", "attack", "train-denoiser", "report", "verify", "bench", "list"]


class _UsageError(Exception):
    """A command line argparse refuses; :func:`main` prints it as one ``error:`` line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, like every other bad input
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="robustbench-iqa",
        description="Certify, attack and audit the adversarial robustness of IQA models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    import robustbench_iqa.cli as pkg

    modules = sorted(
        (m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")),
    )
    for name in modules:
        mod = importlib.import_module(f"robustbench_iqa.cli.{name}")
        register = getattr(mod, "register", None)
        if register is not None:
            register(sub)
    # Present subcommands in a stable, meaningful order in --help.
    sub._choices_actions.sort(  # type: ignore[attr-defined]
        key=lambda a: _ORDER.index(a.dest) if a.dest in _ORDER else len(_ORDER)
    )
    return parser


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """The suite's own warnings as one ``warning: ...`` line; others as Python shows them."""
    if issubclass(category, ReproducibilityWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(args.func(args) or 0)
    except InputError as exc:
        for undo in getattr(args, "on_input_error", []):
            undo()
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug, not bad input: show where, with its own exit code
        traceback.print_exc()
        print("internal error (exit code 3): please report it with the traceback above", file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
