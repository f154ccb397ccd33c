"""The options of a defense, as the defense declares them, and the artifact it is built from.

A defense's options are (:mod:`robustbench_iqa.options`):

* the keyword-only arguments of its registered factory other than ``model`` and ``sigma``
  (``trim``, ``certificate``, ``p_valid``, ``batch_size``, ...), stage ``"build"``;
* the fields of its ``certify_settings`` dataclass (FS-IQA ``tau``, ``method``; the
  input-space defenses' ``eps``), stage ``"certify"``.  The class is the factory itself
  (a class registered directly) or the factory's return annotation.

:func:`split_options` checks a mapping of values (from ``--option KEY=VALUE`` or a
``[tool.robustbench_iqa.verify.defense.<name>]`` table) against them, with a did-you-mean
hint on an unknown key, and splits it into the factory's keywords and ``certify``'s.

A trained defense names the keyword that takes its artifact at registration
(``register_defense(..., artifact="checkpoint")``): :func:`artifact_option` is how the
command line's ``--checkpoint`` and the verify config's ``checkpoints`` reach it, so no
caller knows which defense calls its artifact what.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from robustbench_iqa.certify.defense import DEFENSES
from robustbench_iqa.errors import InputError
from robustbench_iqa.options import Option, dataclass_options, returned_class, signature_options

FIXED = ("model", "sigma")
"""Factory arguments every defense takes; they are not options."""


def defense_options(name: str) -> dict[str, Option]:
    """The options of defense ``name`` (see the module doc), without building it."""
    factory = DEFENSES.factory(name)
    opts = signature_options(factory, skip=FIXED, stage="build")
    cls = returned_class(factory)
    settings = getattr(cls, "certify_settings", None) if cls is not None else None
    if settings is not None:
        for key, opt in dataclass_options(settings, stage="certify").items():
            if key in opts:
                raise InputError(f"defense {name!r} declares {key!r} both as a factory keyword and as a "
                                 f"certify setting ({settings.__name__}); rename one")
            opts[key] = opt
    return opts


@dataclass(frozen=True)
class DefenseOptions:
    """Checked option values of one defense, split by who takes them."""

    build: dict[str, Any] = field(default_factory=dict)
    certify: dict[str, Any] = field(default_factory=dict)

    def all(self) -> dict[str, Any]:
        return {**self.build, **self.certify}


def split_options(name: str, values: Mapping[str, Any], *, where: str) -> DefenseOptions:
    """``values`` checked against the options of defense ``name`` and split into factory keywords
    and ``certify`` settings; an unknown key or a wrong type raises :class:`InputError` naming ``where``."""
    from robustbench_iqa.options import check_values

    opts = defense_options(name)
    checked = check_values(opts, values, where=where)
    return DefenseOptions({k: v for k, v in checked.items() if opts[k].stage == "build"},
                          {k: v for k, v in checked.items() if opts[k].stage == "certify"})


def artifact_option(name: str) -> str | None:
    """The factory keyword that takes the trained artifact of defense ``name`` (None: it takes none)."""
    meta = DEFENSES.metadata(name)
    key = meta.get("artifact")
    if key is None and meta.get("trained"):
        raise InputError(f"defense {name!r} is registered as trained but names no artifact keyword "
                         f"(register_defense(..., artifact='...'))")
    return None if key is None else str(key)
