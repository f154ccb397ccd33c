"""Build frozen dataclasses from TOML/JSON values, checked against their annotations.

``build(cls, values, where=...)`` turns a mapping into ``cls(**values)`` after checking
every value against the field's annotation (``int``, ``float``, ``str``, ``bool``,
``X | None``, ``tuple[int, ...]``, ``dict[str, str]``, unions such as
``float | tuple[float, ...]``), converting lists to tuples and ints to floats where a
float is expected, and refusing unknown keys with a did-you-mean hint.  Every error is
an :class:`~robustbench_iqa.errors.InputError` naming the key as ``where.key``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar, Union

from robustbench_iqa.errors import InputError
from robustbench_iqa.registry import did_you_mean

T = TypeVar("T")


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        parts = [a for a in typing.get_args(tp) if a is not type(None)]
        text = " or ".join(_describe(a) for a in parts)
        return text + (" (or omitted)" if type(None) in typing.get_args(tp) else "")
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(tp)[0])}s"
    if origin is dict:
        return "a table of name = \"value\" entries"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against annotation ``tp`` (lists become tuples); InputError otherwise."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        # A bare value stands for a one-item list only where no scalar option fits.
        for opt in sorted((o for o in options if o is not type(None)), key=lambda o: typing.get_origin(o) is tuple):
            try:
                return coerce(value, opt, where)
            except InputError:
                continue
        raise InputError(f"`{where}` must be {_describe(tp)}, got {value!r}")
    if origin is tuple:
        item = typing.get_args(tp)[0]
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        return tuple(coerce(v, item, f"{where}[{i}]") for i, v in enumerate(items))
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in value.items()):
            raise InputError(f"`{where}` must be {_describe(tp)}, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(f"`{where}` must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"`{where}` must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"`{where}` must be a number, got {value!r}")
        if not math.isfinite(value):
            raise InputError(f"`{where}` must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str) or not value:
            raise InputError(f"`{where}` must be a non-empty string, got {value!r}")
        return value
    raise AssertionError(f"unsupported annotation {tp!r} at {where}")  # pragma: no cover


def build(cls: type[T], values: Mapping[str, Any], *, where: str) -> T:
    """``cls(**values)`` with every value checked against its annotation (see the module doc)."""
    if not isinstance(values, Mapping):
        raise InputError(f"`{where}` must be a table of settings, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in values:
        if key not in names:
            raise InputError(f"unknown key `{where}.{key}`{did_you_mean(key, names)} "
                             f"(known: {', '.join(names) or 'none'})")
    return cls(**{k: coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()})


def as_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
