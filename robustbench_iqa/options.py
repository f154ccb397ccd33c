"""Options declared once, where they are taken: a factory's keyword-only arguments or a settings dataclass.

A defense or an attack states its options in one place (foolbox 3 style): the
keyword-only arguments of its factory or class, and for a certified defense the fields
of its ``certify_settings`` dataclass.  :func:`signature_options` and
:func:`dataclass_options` read them as :class:`Option` values (name, annotation,
default); the command line (``--option KEY=VALUE``, :func:`parse_assignment`) and the
verify config (a TOML table) hand values to :func:`check_values`, which refuses an
unknown key with a did-you-mean hint and a value of the wrong type, naming where it came
from.  Nothing here knows any defense or attack by name.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import tomllib
import types
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from robustbench_iqa.errors import InputError
from robustbench_iqa.registry import did_you_mean

EMPTY = inspect.Parameter.empty


@dataclass(frozen=True)
class Option:
    """One declared option: its name, type annotation (``Any`` if unknown), default and stage.

    ``stage`` says who takes it: ``"build"`` (the factory or constructor) or ``"certify"``
    (a defense's ``certify`` call).
    """

    name: str
    annotation: Any = Any
    default: Any = None
    stage: str = "build"

    @property
    def type_text(self) -> str:
        return _type_text(self.annotation)


def _type_text(a: Any) -> str:
    if isinstance(a, str):
        return a
    if typing.get_origin(a) in (Union, types.UnionType):
        return " | ".join("None" if p is type(None) else _type_text(p) for p in typing.get_args(a))
    if typing.get_origin(a) is not None:
        return str(a).replace("typing.", "")
    return getattr(a, "__name__", None) or str(a).replace("typing.", "")


def _hints(obj: Any) -> dict[str, Any]:
    try:
        target = obj.__init__ if inspect.isclass(obj) and not dataclasses.is_dataclass(obj) else obj
        return typing.get_type_hints(target)
    except Exception:  # names only imported for type checking: the options stay untyped
        return {}


def signature_options(fn: Callable[..., Any], *, skip: Collection[str] = (), stage: str = "build") -> dict[str, Option]:
    """The keyword arguments of ``fn`` (a function or a class), less ``skip``, as options."""
    hints = _hints(fn)
    out: dict[str, Option] = {}
    for name, p in inspect.signature(fn).parameters.items():
        if name in skip or name == "self" or p.kind not in (inspect.Parameter.KEYWORD_ONLY,
                                                            inspect.Parameter.POSITIONAL_OR_KEYWORD):
            continue
        out[name] = Option(name, hints.get(name, Any), None if p.default is EMPTY else p.default, stage)
    return out


def dataclass_options(cls: type, *, stage: str) -> dict[str, Option]:
    """The fields of the settings dataclass ``cls`` as options."""
    hints = _hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        out[f.name] = Option(f.name, hints.get(f.name, Any), default, stage)
    return out


def returned_class(factory: Callable[..., Any]) -> type | None:
    """The class ``factory`` builds: itself if it is a class, else its return annotation (if resolvable)."""
    if inspect.isclass(factory):
        return factory
    ret = _hints(factory).get("return")
    return ret if inspect.isclass(ret) else None


# ----------------------------------------------------------------- values
def parse_assignment(text: str, *, flag: str = "--option") -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> ``(key, value)``; VALUE is read as a TOML value (``0.1``, ``true``, ``[1, 2]``,
    ``"text"``), and a bare word that is no TOML value is a string (``certificate=radius``)."""
    key, sep, raw = str(text).partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key.isidentifier():
        raise InputError(f"{flag} takes KEY=VALUE (e.g. {flag} trim=0.2), got {text!r}")
    raw = raw.strip()
    if not raw:
        raise InputError(f"{flag} {key}: the value is empty")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def parse_assignments(items: Collection[str] | None, *, flag: str = "--option") -> dict[str, Any]:
    """Repeated ``KEY=VALUE`` flags as a mapping; a key given twice is refused."""
    out: dict[str, Any] = {}
    for text in items or ():
        key, value = parse_assignment(text, flag=flag)
        if key in out:
            raise InputError(f"{flag} {key} is given twice")
        out[key] = value
    return out


def check_values(options: Mapping[str, Option], values: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """``values`` checked against ``options``: an unknown key raises with a did-you-mean hint and the
    known keys; a value that fits no part of its annotation raises naming ``where.key``."""
    if not isinstance(values, Mapping):
        raise InputError(f"`{where}` must be a table of options, got {values!r}")
    out = {}
    for key, value in values.items():
        if key not in options:
            raise InputError(f"unknown option `{where}.{key}`{did_you_mean(key, list(options))} "
                             f"(options: {', '.join(sorted(options)) or 'none'})")
        out[key] = coerce_option(value, options[key].annotation, f"{where}.{key}")
    return out


def coerce_option(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against the annotation ``tp``; annotations this cannot check (a module, a
    callable) accept the value as it is and leave the check to the factory."""
    try:
        return _coerce(value, tp, where)
    except _Unchecked:
        return value


def _coerce(value: Any, tp: Any, where: str) -> Any:
    from robustbench_iqa.typed_config import coerce

    if tp is Any or isinstance(tp, str):
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        parts = typing.get_args(tp)
        if value is None and type(None) in parts:
            return None
        unchecked = False
        for part in parts:
            if part is type(None):
                continue
            try:
                return _coerce(value, part, where)
            except InputError:
                continue
            except _Unchecked:
                unchecked = True
        if unchecked:
            return value
        raise InputError(f"`{where}` must be {_describe(tp)}, got {value!r}")
    if inspect.isclass(tp) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise InputError(f"`{where}` must be one of {', '.join(repr(m.value) for m in tp)}, "
                             f"got {value!r}") from None
    if tp is Path:
        if not isinstance(value, (str, Path)) or not str(value):
            raise InputError(f"`{where}` must be a path, got {value!r}")
        return value
    if tp in (int, float, str, bool) or origin in (tuple, dict):
        return coerce(value, tp, where)
    raise _Unchecked


class _Unchecked(Exception):
    """An annotation this module does not check."""


def _describe(tp: Any) -> str:
    parts = [a for a in typing.get_args(tp) if a is not type(None)]
    names = [getattr(a, "__name__", str(a)) for a in parts]
    return " or ".join(names) + (" (or omitted)" if type(None) in typing.get_args(tp) else "")
