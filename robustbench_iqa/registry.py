"""One registry class for every kind of thing the suite builds by name.

Models, datasets, defenses, attacks and studies each have one :class:`Registry`
(pyiqa's ``utils/registry.py`` and ``DEFAULT_CONFIGS`` are the model):

* **Registration** is a decorator next to the thing it registers,
  ``@MODELS.register("default-nr", mode="nr", lower_better=False, ...)``, so a new
  model, dataset, defense, attack or study is one new file: the registry imports
  every module of its ``package`` on first use (modules whose name starts with
  ``_`` are skipped), and those imports run the decorators.
* **Lazy entries** ``registry.add("name", "package.module:attr", **metadata)`` name
  their factory without importing it; so do the ``robustbench_iqa.<kind>``
  entry points of installed plugins.
* **Metadata** (``description`` and any keyword given at registration) is
  queryable without building anything: ``MODELS.names(mode="fr")``.
* **Strict arguments**: :meth:`Registry.create` checks every keyword against the
  factory's signature before calling it, so a typo (``chunk_sise=10``) raises an
  :class:`~robustbench_iqa.errors.InputError` with a did-you-mean hint instead of
  being swallowed.  Unknown names get the same hint.
* **Scoped overrides** for tests: ``with MODELS.override("toy", factory): ...``
  registers an entry for the duration of the block only.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from typing import Any, Generic, TypeVar

from robustbench_iqa.errors import InputError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def did_you_mean(word: str, choices: list[str] | tuple[str, ...] | set[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(str(word), sorted(str(c) for c in choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_keywords(fn: Callable[..., Any], kwargs: Mapping[str, Any], *, what: str) -> None:
    """Raise :class:`InputError` for keywords ``fn`` does not accept (with a did-you-mean hint).

    A function that takes ``**kwargs`` accepts everything; the suite's own factories never do.
    """
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items()
                if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for key in kwargs:
        if key not in accepted:
            raise InputError(f"{what} takes no argument {key!r}{did_you_mean(key, accepted)} "
                             f"(it takes: {', '.join(accepted) or 'none'})")


def strict_kwargs(what: str, kwargs: Mapping[str, Any], accepted: tuple[str, ...] | list[str]) -> None:
    """For the rare function that must take ``**kwargs``: refuse keys outside ``accepted``."""
    for key in kwargs:
        if key not in accepted:
            raise InputError(f"{what} takes no argument {key!r}{did_you_mean(key, accepted)} "
                             f"(it takes: {', '.join(accepted) or 'none'})")


def checked_keywords(fn: F) -> F:
    """Decorator: a keyword ``fn`` does not take raises :class:`InputError` with a did-you-mean hint.

    Python itself raises a bare ``TypeError`` for an unexpected keyword; public methods that
    users call with many keywords (``certify(n=..., alpha=..., tau=...)``) say which one was meant.
    """
    params = inspect.signature(fn).parameters
    accepted = tuple(n for n, p in params.items()
                     if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                     and n != "self")
    names = frozenset(accepted)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not names.issuperset(kwargs):
            strict_kwargs(f"{fn.__qualname__}()", kwargs, accepted)
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered name: its factory (or ``"module:attr"``), description and metadata."""

    name: str
    target: Callable[..., T] | str
    description: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    plugin: bool = False
    """From an installed plugin's entry point: its metadata is on the decorator it imports."""

    def factory(self) -> Callable[..., T]:
        """The factory, importing ``module:attr`` targets on first use."""
        if callable(self.target):
            return self.target
        module, _, attr = self.target.partition(":")
        if not module or not attr:
            raise InputError(f"lazy entry {self.name!r}: target must look like 'package.module:attr', "
                             f"got {self.target!r}")
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            raise InputError(f"{self.name!r} needs module {module!r}, which cannot be imported: {exc}") from None
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise InputError(f"{self.name!r}: module {module!r} has no attribute {attr!r}")
            obj = getattr(obj, part)
        if not callable(obj):
            raise InputError(f"{self.name!r}: {self.target!r} is not callable")
        return obj


class Registry(Generic[T]):
    """Names -> factories of one kind of thing (see the module docstring).

    Args:
        kind: what is registered, in messages (``"model"``, ``"defense"``, ...).
        package: a package whose modules register entries when imported; imported
            on first use.
        plural: the kind in plural (default ``kind + "s"``; ``"studies"``), naming the entry-point
            group ``robustbench_iqa.<plural>`` of installed plugins.
    """

    def __init__(self, kind: str, *, package: str | None = None, plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        """In the entry-point group of installed plugins, ``robustbench_iqa.<plural>``."""
        self.package = package
        self._entries: dict[str, Entry[T]] = {}
        self._prefixes: dict[str, Entry[T]] = {}
        self._discovered = package is None
        self._plugins_loaded = False

    # ---------------------------------------------------------------- adding
    def register(self, name: str, *, description: str = "", replace: bool = False,
                 **metadata: Any) -> Callable[[F], F]:
        """Decorator: register the decorated factory (or class) under ``name``."""
        def deco(factory: F) -> F:
            self.add(name, factory, description=description or _first_line(factory), replace=replace,
                     **metadata)
            return factory

        return deco

    def add(self, name: str, target: Callable[..., T] | str, *, description: str = "",
            replace: bool = False, **metadata: Any) -> None:
        """Register ``target`` (a callable, or a lazy ``"module:attr"``) under ``name``."""
        if not isinstance(name, str) or not name or ":" in name:
            raise ValueError(f"{self.kind} names are non-empty and contain no ':', got {name!r}")
        old = self._entries.get(name)
        if old is not None and not replace and old.target is not target and not _resolves(old, target):
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = Entry(name, target, description, dict(metadata))

    def register_prefix(self, prefix: str, *, description: str = "",
                        **metadata: Any) -> Callable[[F], F]:
        """Decorator: ``factory(rest, **kwargs)`` builds every name ``"prefix:rest"``."""
        def deco(factory: F) -> F:
            self._prefixes[prefix] = Entry(f"{prefix}:<name>", factory, description or _first_line(factory),
                                           dict(metadata))
            return factory

        return deco

    @contextmanager
    def override(self, name: str, target: Callable[..., T] | str, *, description: str = "",
                 **metadata: Any) -> Iterator[None]:
        """Register ``name`` for the duration of a ``with`` block (tests), then restore."""
        self._discover()
        old = self._entries.get(name)
        self._entries[name] = Entry(name, target, description, dict(metadata))
        try:
            yield
        finally:
            if old is None:
                self._entries.pop(name, None)
            else:
                self._entries[name] = old

    # --------------------------------------------------------------- reading
    def _discover(self) -> None:
        if not self._discovered:
            self._discovered = True  # first, so that modules importing the registry do not recurse
            pkg = importlib.import_module(self.package)  # type: ignore[arg-type]
            for info in pkgutil.iter_modules(pkg.__path__):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{self.package}.{info.name}")
        if not self._plugins_loaded:
            self._plugins_loaded = True
            for ep in importlib_metadata.entry_points(group=f"robustbench_iqa.{self.plural}"):
                if ep.name not in self._entries:
                    self._entries[ep.name] = Entry(ep.name, ep.value, f"plugin {ep.value}", {}, plugin=True)

    def names(self, **where: Any) -> list[str]:
        """Registered names, sorted; ``where`` keeps entries whose metadata equal the given values."""
        self._discover()
        return sorted(n for n, e in self._entries.items()
                      if all(_matches(e.metadata.get(k), v) for k, v in where.items()))

    def prefixes(self) -> list[str]:
        self._discover()
        return sorted(self._prefixes)

    def __contains__(self, name: object) -> bool:
        self._discover()
        return isinstance(name, str) and (name in self._entries or self._prefix_entry(name) is not None)

    def _prefix_entry(self, name: str) -> Entry[T] | None:
        prefix, sep, _ = name.partition(":")
        return self._prefixes.get(prefix) if sep else None

    def entry(self, name: str) -> Entry[T]:
        """The entry of ``name``; :class:`InputError` with a did-you-mean hint if unknown."""
        self._discover()
        if not isinstance(name, str):
            raise InputError(f"a {self.kind} name must be a string, got {type(name).__name__}")
        if name in self._entries:
            return self._entries[name]
        pe = self._prefix_entry(name)
        if pe is not None:
            return pe
        known = list(self._entries) + [f"{p}:<name>" for p in self._prefixes]
        raise InputError(f"unknown {self.kind} {name!r}{did_you_mean(name, list(self._entries))}; "
                         f"known {self.kind}s: {', '.join(sorted(known))}")

    def metadata(self, name: str) -> Mapping[str, Any]:
        """The metadata given at registration (``{}`` for prefix names: known only once built).

        A plugin's entry point names only its factory; its metadata is on the plugin's decorator,
        so an entry point without metadata is imported (once) to read it."""
        e = self.entry(name)
        if e.plugin and isinstance(e.target, str):
            e.factory()
            e = self.entry(name)
        return {} if e.name.endswith(":<name>") else dict(e.metadata)

    def describe(self, name: str) -> str:
        return self.entry(name).description

    # -------------------------------------------------------------- building
    def factory(self, name: str) -> Callable[..., T]:
        return self.entry(name).factory()

    def create(self, name: str, /, *args: Any, **kwargs: Any) -> T:
        """Build ``name`` with ``args``/``kwargs``, refusing keywords its factory does not take."""
        e = self.entry(name)
        fn = e.factory()
        if e.name.endswith(":<name>"):
            check_keywords(fn, kwargs, what=f"{self.kind} {name!r}")
            return fn(name.partition(":")[2], *args, **kwargs)
        check_keywords(fn, kwargs, what=f"{self.kind} {name!r}")
        return fn(*args, **kwargs)


def _resolves(lazy: Entry[Any], target: Any) -> bool:
    """Whether ``target`` is the object a lazy ``"module:attr"`` entry (an installed plugin's entry
    point) names: importing the plugin runs its decorator, which registers the same factory with its
    metadata in place of the lazy entry."""
    if not isinstance(lazy.target, str) or isinstance(target, str):
        return False
    module, _, attr = lazy.target.partition(":")
    return getattr(target, "__module__", None) == module and getattr(target, "__qualname__", None) == attr


def _matches(value: Any, wanted: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, str) or isinstance(wanted, str):
        return str(value).lower() == str(wanted).lower()
    return bool(value == wanted)


def _first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""
