"""Import a user's modules (plugins) before anything is built: one mechanism for every entry point.

A research repository registers its own models, datasets, defenses or studies in a
module of its own (``@register_model(...)`` etc.) and names it in one of three
places, all read by :func:`load_plugins`:

* ``--plugin MODULE`` on any command of the CLI (repeatable);
* the environment variable ``ROBUSTBENCH_IQA_PLUGINS`` (comma-separated module names);
* ``plugins = ["mod", ...]`` in the ``[tool.robustbench_iqa.verify]`` table.

A plugin runs arbitrary code, so whatever goes wrong in it is the plugin's
problem, never a verdict: an import failure, a syntax error, any exception and even
``sys.exit(...)`` inside the module become one :class:`~robustbench_iqa.errors.InputError`
naming the module (the CLI prints it as ``error: ...`` with exit code 2).  In
particular a plugin that calls ``sys.exit(0)`` can never make a gate exit 0 without
its checks.  ``KeyboardInterrupt`` still interrupts.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterable
from typing import Any

from robustbench_iqa.errors import InputError

ENV_VAR = "ROBUSTBENCH_IQA_PLUGINS"
"""Environment variable: comma-separated module names imported by every command."""

_LOADED: list[str] = []
"""Every plugin module imported by :func:`import_plugin` in this process, in order."""

_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def plugin_names(value: Any, *, where: str) -> tuple[str, ...]:
    """``value`` (a module name or a list of them) as a tuple of valid dotted module names.

    Raises :class:`InputError` naming ``where`` for anything else (a number, an empty or
    malformed name)."""
    items = [value] if isinstance(value, str) else value
    if items is None:
        return ()
    if not isinstance(items, (list, tuple)):
        raise InputError(f"{where} must be a list of module names, got {value!r}")
    out: list[str] = []
    for mod in items:
        if not isinstance(mod, str) or not _MODULE.match(mod.strip()):
            raise InputError(f"{where} must be a list of module names (like 'mypkg.models'), got {mod!r}")
        if mod.strip() not in out:
            out.append(mod.strip())
    return tuple(out)


def env_plugins(environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """The module names of ``$ROBUSTBENCH_IQA_PLUGINS`` (empty entries ignored)."""
    raw = (os.environ if environ is None else environ).get(ENV_VAR, "")
    return plugin_names([s for s in (p.strip() for p in raw.split(",")) if s], where=f"${ENV_VAR}")


def import_plugin(name: str, *, where: str) -> None:
    """Import one plugin module; every failure (including ``SystemExit``) is one InputError."""
    try:
        importlib.import_module(name)
        if name not in _LOADED:
            _LOADED.append(name)
    except KeyboardInterrupt:
        raise
    except SyntaxError as exc:
        raise InputError(f"{where}: cannot import {name!r}: syntax error in {exc.filename} line "
                         f"{exc.lineno}: {exc.msg}") from None
    except ImportError as exc:
        raise InputError(f"{where}: cannot import {name!r}: {_one_line(exc)}") from None
    except SystemExit as exc:
        raise InputError(f"{where}: plugin {name!r} called sys.exit({exc.code!r}) while being imported; "
                         f"a plugin must only register things") from None
    except BaseException as exc:  # noqa: BLE001 - a plugin is foreign code: any failure is the plugin's
        raise InputError(f"{where}: plugin {name!r} failed while being imported: "
                         f"{type(exc).__name__}: {_one_line(exc)}") from None


def load_plugins(names: Iterable[str] = (), *, where: str = "--plugin", environ: bool = True) -> tuple[str, ...]:
    """Import ``names`` and (with ``environ``) those of ``$ROBUSTBENCH_IQA_PLUGINS``, in that order.

    Returns every module name imported (each once)."""
    given = plugin_names(list(names), where=where)
    from_env = env_plugins() if environ else ()
    done: list[str] = []
    for name, src in [*((n, where) for n in given), *((n, f"${ENV_VAR}") for n in from_env)]:
        if name in done:
            continue
        import_plugin(name, where=src)
        done.append(name)
    return tuple(done)


def loaded_plugins() -> tuple[str, ...]:
    """The plugin modules imported so far in this process (a worker of another process imports the same)."""
    return tuple(_LOADED)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
