"""The attacks by name, in one place (``list_attacks`` / ``create_attack``)."""

from __future__ import annotations

import inspect
from typing import Any

from robustbench_iqa.attacks.base import GradientAttack
from robustbench_iqa.attacks.gradient import FGSM, IFGSM, MIFGSM, PGD
from robustbench_iqa.attacks.perceptual import TextureMaskedAttack

from robustbench_iqa.errors import InputError

_ATTACKS: dict[str, type[GradientAttack]] = {
    "fgsm": FGSM,
    "ifgsm": IFGSM,
    "mifgsm": MIFGSM,
    "pgd": PGD,
    "texture": TextureMaskedAttack,
}


def list_attacks() -> list[str]:
    return sorted(_ATTACKS)


def create_attack(name: str, **settings: Any) -> GradientAttack:
    """Build attack ``name``; settings it does not take (e.g. ``steps`` for FGSM) are ignored.

    ``None`` values are dropped so that class defaults apply.
    """
    key = name.lower()
    if key not in _ATTACKS:
        raise InputError(f"unknown attack {name!r}; known attacks: {', '.join(list_attacks())}")
    cls = _ATTACKS[key]
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in settings.items() if k in accepted and v is not None}
    return cls(**kwargs)
