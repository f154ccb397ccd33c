"""The ``robustbench-iqa`` (alias ``rbiqa``) command line.

Each subcommand lives in its own module of this package and exposes
``register(subparsers) -> None``, which adds its parser and sets
``func=run`` (a callable ``run(args) -> int``).  Modules are discovered, so a
new subcommand is a new file.  Only the chosen subcommand's module is imported,
and subcommand modules import torch and the rest inside ``run``, so ``--help``
and argument errors answer at once.  Exit codes: 0 success, 1 a check failed
(``verify``), 2 bad input (:class:`~robustbench_iqa.errors.InputError`, one
line on stderr), 3 an internal error (a bug: the traceback is printed), 130
interrupted (with the exact command that resumes the run, when it wrote one).  A CI therefore
never mistakes a crash for a failed check.  Every subcommand takes ``--plugin MODULE`` (and
reads ``$ROBUSTBENCH_IQA_PLUGINS``) to import a user's module first
(:mod:`robustbench_iqa.plugins`); whatever a plugin does, ``sys.exit(0)`` included, it never
turns into exit code 0.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import pkgutil
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from robustbench_iqa.errors import DataWarning, InputError, ReproducibilityWarning

_ORDER = ["certify", "predict", "train", "attack", "train-denoiser", "report", "verify", "bench", "weights", "list"]


class _UsageError(Exception):
    """A command line argparse refuses; :func:`main` prints it as one ``error:`` line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, like every other bad input
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


def _commands() -> dict[str, str]:
    """Subcommand name -> module name, discovered from this package's files without importing them."""
    import robustbench_iqa.cli as pkg

    names = (m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))
    return {n.replace("_", "-"): n for n in names}


def _summary(module: str) -> str:
    """The first line of a subcommand module's docstring, read without importing it (fast --help)."""
    import robustbench_iqa.cli as pkg

    path = Path(pkg.__path__[0]) / f"{module}.py"
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    except (OSError, SyntaxError):
        return ""
    first = doc.strip().splitlines()[0] if doc.strip() else ""
    return first.split(":", 1)[1].strip() if first.startswith("``") and ":" in first else first


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (the others are listed by name and summary)."""
    parser = _Parser(
        prog="robustbench-iqa",
        description="Certify, attack and audit the adversarial robustness of IQA models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    commands = _commands()
    for name in sorted(commands, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n)):
        if name == command:
            mod = importlib.import_module(f"robustbench_iqa.cli.{commands[name]}")
            mod.register(sub)
            _add_plugin_arg(sub.choices[name])
        else:
            sub.add_parser(name, help=_summary(commands[name]), add_help=False)
    return parser


def _add_plugin_arg(p: argparse.ArgumentParser, *, dest: str = "plugins") -> None:
    """``--plugin MODULE`` (repeatable) on every subcommand: see :mod:`robustbench_iqa.plugins`."""
    p.add_argument("--plugin", action="append", default=argparse.SUPPRESS if dest != "plugins" else [],
                   metavar="MODULE", dest=dest,
                   help="import MODULE first (repeatable; also $ROBUSTBENCH_IQA_PLUGINS=mod1,mod2): "
                        "a user's module that registers models, datasets, defenses or studies")
    for action in p._actions:  # nested subcommands (`weights check`) take it after their own name too
        if isinstance(action, argparse._SubParsersAction):
            for nested in action.choices.values():
                _add_plugin_arg(nested, dest="nested_plugins")


def _plugins(args: argparse.Namespace) -> list[str]:
    """Every ``--plugin`` given, before and after a nested subcommand's name."""
    return [*getattr(args, "plugins", []), *getattr(args, "nested_plugins", [])]


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """The suite's own warnings as one ``warning: ...`` line; others as Python shows them."""
    if issubclass(category, (ReproducibilityWarning, DataWarning)):
        print(f"warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: Sequence[str] | None = None) -> int:
    args_list = [*(sys.argv[1:] if argv is None else argv)]  # (`list` is also the name of a subcommand module)
    command = next((a for a in args_list if not a.startswith("-")), None)
    parser = build_parser(command if command in _commands() else None)
    try:
        args = parser.parse_args(args_list)
    except _UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            from robustbench_iqa.allocator import retain_freed_memory
            from robustbench_iqa.models.weights import no_unpickling
            from robustbench_iqa.plugins import load_plugins

            retain_freed_memory()  # large tensors reuse freed pages (see robustbench_iqa.allocator)
            with no_unpickling():  # no file is unpickled by any code the command calls
                load_plugins(_plugins(args))
                return int(args.func(args) or 0)
    except SystemExit as exc:  # foreign code (a plugin's model, say) ending the process: never a verdict
        print(f"error: the command was ended by sys.exit({exc.code!r}) in code it called (a plugin?); "
              f"it produced no result", file=sys.stderr)
        return 2
    except InputError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        from robustbench_iqa.cli._interrupt import interrupted_message

        print(interrupted_message(args, args_list), file=sys.stderr)  # with the command that resumes
        return 130
    except Exception:  # a bug, not bad input: show where, with its own exit code
        traceback.print_exc()
        print("internal error (exit code 3): please report it with the traceback above", file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
