"""Cheaper exact Jacobian products: first-order backward formulas for conv2d, eval batch norm, SiLU and GELU.

The spectral estimate (:mod:`robustbench_iqa.certify.spectral`) takes J v by the
double-backward trick: the backward pass g(u0) = J^T u0 is recorded with
``create_graph=True`` and differentiated again with respect to u0.  Autograd
then differentiates PyTorch's *backward formulas*, which are written for the
general case.  Measured with ``torch.profiler`` (torch 2.14, CPU): the second
derivative of ``convolution_backward`` also evaluates the weight-gradient
convolution conv(ggI, gO) although no weight needs a gradient; the one of
``native_batch_norm_backward`` runs the training-mode formula (fills, sums and
products over the whole activation) in eval mode; that of ``silu_backward``
recomputes the sigmoid.  On the benchmark models this made one J v cost 1.8-2.6
forward passes.

Inside :class:`LinearizedOps`, the forward pass records these four operations
as small :class:`torch.autograd.Function` s with the *same forward* (the native
call: outputs are bitwise identical) and a backward written with forward
operations only:

- ``conv2d(x, w, b)`` (frozen w, b): J^T g is the native input gradient; when
  the backward pass is itself recorded (``create_graph=True``) it is written as
  conv_transpose2d(g, w) with the output padding that restores x's size (the
  adjoint of a strided, padded, dilated, grouped convolution), whose
  derivative with respect to g is conv2d again;
- ``batch_norm`` in eval mode (running statistics, frozen affine): the map is
  x -> x * s + t per channel with s = weight / sqrt(running_var + eps), so
  J^T g = g * s;
- ``silu`` and ``gelu`` (elementwise f): J^T g = g * f'(x), with f'(x) computed
  once in the forward pass by the native backward kernel applied to ones
  (``silu_backward(1, x)``, ``gelu_backward(1, x)``), i.e. the same derivative.

Each backward is linear in g, so the double-backward pass through it is a
first-order pass through conv2d and products with saved constants: the same
Jacobian, cheaper (one J v then cost 0.3-0.9 forward passes on the same models).
Everything else (other operations, trainable weights, string padding, inputs
that do not need a gradient) runs unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[1])) if len(v) == 2 else (int(v[0]), int(v[0]))
    return (int(v), int(v))


class _Conv2d(torch.autograd.Function):
    """conv2d with a frozen weight; backward = the adjoint convolution."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride: Any, padding: Any,
                dilation: Any, groups: int) -> torch.Tensor:
        ctx.save_for_backward(x, w)  # as native conv2d does; the input gradient reads x's layout only
        ctx.geometry = (tuple(x.shape), _pair(stride), _pair(padding), _pair(dilation), int(groups))
        return F.conv2d(x, w, b, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w = ctx.saved_tensors
        shape, stride, pad, dil, groups = ctx.geometry
        if not torch.is_grad_enabled():  # a plain J^T product: the native input-gradient kernel
            gx = torch.ops.aten.convolution_backward(
                g, x, w, None, list(stride), list(pad), list(dil), False, [0, 0], groups, [True, False, False]
            )[0]
            return gx, None, None, None, None, None, None
        # Recorded for a second differentiation: the same map as a forward operation.
        out_pad = tuple(
            shape[2 + i] - ((g.shape[2 + i] - 1) * stride[i] - 2 * pad[i] + dil[i] * (w.shape[2 + i] - 1) + 1)
            for i in range(2)
        )
        gx = F.conv_transpose2d(g, w, None, stride, pad, out_pad, groups, dil)
        return gx, None, None, None, None, None, None


class _ChannelScale(torch.autograd.Function):
    """Eval-mode batch norm: the native forward; backward g * weight / sqrt(running_var + eps)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, w: torch.Tensor | None,
                b: torch.Tensor | None, eps: float) -> torch.Tensor:
        scale = torch.rsqrt(var + eps)
        if w is not None:
            scale = scale * w
        ctx.save_for_backward(scale.reshape(1, -1, *([1] * (x.dim() - 2))))
        return F.batch_norm(x, mean, var, w, b, False, 0.0, eps)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (scale,) = ctx.saved_tensors
        return g * scale, None, None, None, None, None


class _Elementwise(torch.autograd.Function):
    """y = f(x) elementwise: the native forward; backward g * f'(x), f'(x) saved in the forward pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor],
                df: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(df(x))
        return f(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (d,) = ctx.saved_tensors
        return g * d, None, None


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], i: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[i] if i < len(args) else default


def _frozen(*ts: torch.Tensor | None) -> bool:
    return all(t is None or not t.requires_grad for t in ts)


class LinearizedOps(TorchFunctionMode):
    """Context manager: record conv2d, eval batch norm, SiLU and GELU with first-order backward formulas.

    Values and first derivatives are those of the native operations (module
    docstring); only the graph of the backward pass is cheaper to differentiate
    again.  Meant for the one graph-building forward pass of a Jacobian estimate.
    """

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.conv2d:
            x, w, b = _arg(args, kwargs, 0, "input", None), _arg(args, kwargs, 1, "weight", None), _arg(args, kwargs, 2, "bias", None)
            padding = _arg(args, kwargs, 4, "padding", 0)
            if (isinstance(x, torch.Tensor) and x.requires_grad and x.dim() == 4 and isinstance(w, torch.Tensor)
                    and _frozen(w, b) and not isinstance(padding, str)):
                return _Conv2d.apply(x, w, b, _arg(args, kwargs, 3, "stride", 1), padding,
                                     _arg(args, kwargs, 5, "dilation", 1), _arg(args, kwargs, 6, "groups", 1))
        elif func is F.batch_norm:
            x = _arg(args, kwargs, 0, "input", None)
            mean, var = _arg(args, kwargs, 1, "running_mean", None), _arg(args, kwargs, 2, "running_var", None)
            w, b = _arg(args, kwargs, 3, "weight", None), _arg(args, kwargs, 4, "bias", None)
            training, eps = _arg(args, kwargs, 5, "training", False), _arg(args, kwargs, 7, "eps", 1e-5)
            if (not training and isinstance(x, torch.Tensor) and x.requires_grad and x.dim() >= 2
                    and mean is not None and var is not None and _frozen(mean, var, w, b)):
                return _ChannelScale.apply(x, mean, var, w, b, float(eps))
        elif func is F.silu:
            x = _arg(args, kwargs, 0, "input", None)
            if isinstance(x, torch.Tensor) and x.requires_grad and not _arg(args, kwargs, 1, "inplace", False):
                return _Elementwise.apply(x, F.silu, lambda z: torch.ops.aten.silu_backward(torch.ones_like(z), z))
        elif func is F.gelu:
            x, approx = _arg(args, kwargs, 0, "input", None), _arg(args, kwargs, 1, "approximate", "none")
            if isinstance(x, torch.Tensor) and x.requires_grad:
                return _Elementwise.apply(
                    x, lambda z: F.gelu(z, approximate=approx),
                    lambda z: torch.ops.aten.gelu_backward(torch.ones_like(z), z, approximate=approx),
                )
        return func(*args, **kwargs)
