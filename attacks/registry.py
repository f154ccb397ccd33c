"""The attacks by name, in one place: :func:`list_attacks`, :func:`create_attack`, :func:`attack_info`.

Each attack class registers itself next to its definition with :func:`register_attack`,
declaring what it needs (``threat``: the norms it supports; ``gradient``: whether it
needs gradients of the score, i.e. white-box; ``reference``: the paper), so a new
attack is one new module in this package.  Settings are the class's keyword-only
arguments: a setting it does not take raises (``stpe_size=0.3`` is a typo, not an
FGSM), and ``None`` means "the class default".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from robustbench_iqa.options import Option, signature_options
from robustbench_iqa.registry import Registry

ATTACKS: Registry[Any] = Registry("attack", package="robustbench_iqa.attacks")

C = TypeVar("C", bound=Callable[..., Any])


def register_attack(name: str, *, threat: tuple[str, ...] = ("linf", "l2"), gradient: bool = True,
                    reference: str = "", description: str = "") -> Callable[[C], C]:
    """Class decorator registering an attack under ``name`` with its metadata."""
    return ATTACKS.register(name, description=description, threat=tuple(threat), gradient=bool(gradient),
                            reference=reference)


def list_attacks(*, gradient: bool | None = None) -> list[str]:
    return ATTACKS.names() if gradient is None else ATTACKS.names(gradient=gradient)


def attack_info(name: str) -> dict[str, Any]:
    """Registered metadata of ``name`` (threat models, whether it needs gradients, reference)."""
    return {"name": name, "description": ATTACKS.describe(name), **ATTACKS.metadata(name.lower())}


def attack_options(name: str) -> dict[str, Option]:
    """The options attack ``name`` declares: the keyword-only arguments of its class (or factory),
    with their annotations and defaults (:mod:`robustbench_iqa.options`); nothing is built."""
    return signature_options(ATTACKS.factory(name.lower()))


def create_attack(name: str, **settings: Any) -> Any:
    """Build attack ``name`` with ``settings`` (its keyword-only arguments; ``None`` = default)."""
    return ATTACKS.create(name.lower(), **{k: v for k, v in settings.items() if v is not None})
