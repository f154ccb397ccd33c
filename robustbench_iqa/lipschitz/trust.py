"""What a certified bound may assume about a layer: nothing it did not read.

A Lipschitz bound is computed from a layer's *parameters* (a convolution's ``weight``,
a BatchNorm's running statistics) under the assumption that the layer computes the
textbook function of its class.  That assumption fails silently when

- the layer's class is a *subclass* of the bounded type that overrides ``forward``
  (timm's ``StdConv2d`` standardises its weight in ``forward``; a conv that scales its
  output): ``isinstance(m, nn.Conv2d)`` is true, the raw ``.weight`` is not the operator;
- ``forward`` is replaced on the instance (``m.forward = ...``);
- a forward hook or forward-pre hook is registered on the module, or globally
  (``torch.nn.modules.module.register_module_forward_hook``): a hook may replace the
  input or the output (``torch.nn.utils.weight_norm`` and ``spectral_norm`` are
  pre-hooks that rewrite the weight).

:func:`require_exact` refuses all of these by name (:class:`BoundUnavailableError`):
a layer is bounded only when ``type(m)`` is *exactly* one of the bounded classes, its
``forward`` is the class's own, and no hook can run.  Layers that certify themselves
(a ``lipschitz_bound`` method) are accepted only when the class that defines
``lipschitz_bound`` also defines the ``forward`` that runs (a subclass that overrides
``forward`` without re-certifying is refused).
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules import module as _module

from robustbench_iqa.errors import BoundUnavailableError

__all__ = [
    "global_hooks_registered",
    "require_container",
    "require_exact",
    "require_no_hooks",
    "require_self_certified",
]


_GLOBAL_HOOK_TABLES = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_forward_hooks_always_called",
    "_global_forward_hooks_with_kwargs",
)


def global_hooks_registered() -> bool:
    """True when any global module forward or forward-pre hook is registered."""
    return any(bool(getattr(_module, name, None)) for name in _GLOBAL_HOOK_TABLES)


def _describe(m: nn.Module) -> str:
    return f"{type(m).__module__}.{type(m).__qualname__}"


def require_no_hooks(m: nn.Module) -> None:
    """Refuse ``m`` when a forward / forward-pre hook (its own or global) or an instance ``forward`` can change it."""
    if global_hooks_registered():
        raise BoundUnavailableError(
            "cannot bound a network while a global module forward hook is registered "
            "(torch.nn.modules.module.register_module_forward_hook / _pre_hook): it may change any layer's output")
    if m._forward_hooks or m._forward_pre_hooks:
        raise BoundUnavailableError(
            f"cannot bound {type(m).__name__} ({_describe(m)}): it has a forward or forward-pre hook, "
            "which may change its input or output (weight_norm / spectral_norm are such hooks)")
    if "forward" in vars(m):
        raise BoundUnavailableError(
            f"cannot bound {type(m).__name__} ({_describe(m)}): its forward is replaced on the instance")


def require_exact(m: nn.Module, types: type | tuple[type, ...]) -> None:
    """Refuse ``m`` unless ``type(m)`` is exactly one of ``types``, unchanged and hook-free (module docstring)."""
    allowed = types if isinstance(types, tuple) else (types,)
    if type(m) not in allowed:
        names = ", ".join(t.__name__ for t in allowed)
        raise BoundUnavailableError(
            f"cannot bound layer type {type(m).__name__} ({_describe(m)}): only the exact classes {names} are "
            "bounded (a subclass may compute something else in its forward)")
    require_no_hooks(m)


def _owner(cls: type, attr: str) -> type | None:
    for c in cls.__mro__:
        if attr in vars(c):
            return c
    return None


def require_self_certified(m: nn.Module) -> None:
    """Refuse a self-certifying layer whose running ``forward`` is not the one its ``lipschitz_bound`` certifies."""
    cls = type(m)
    if _owner(cls, "forward") is not _owner(cls, "lipschitz_bound"):
        raise BoundUnavailableError(
            f"cannot bound {cls.__name__} ({_describe(m)}): it overrides forward without its own lipschitz_bound")
    require_no_hooks(m)


def require_container(m: nn.Module) -> None:
    """A plain ``nn.Sequential`` (exact class, no hooks), whose children are checked one by one."""
    require_exact(m, nn.Sequential)
