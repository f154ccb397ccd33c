"""Certified upper bounds on the spectral norm of dense and convolutional layers.

**Gram iteration** (Delattre, Barthelemy, Araujo, Allauzen, ICML 2023, "Efficient
Bound of Lipschitz Constant for Convolutional Layers by Gram Iteration", Alg. 1).
For a matrix A let A_0 = A and A_{t+1} = (A_t / f_t)^H (A_t / f_t) with
f_t = ||A_t||_F (the rescaling only avoids overflow).  Then
||A_{t+1}||_2 = ||A_t||_2^2 / f_t^2, so with r_0 = 0, r_{t+1} = 2 (r_t + ln f_t):

    ||A||_2 = exp((r_T + ln ||A_T||_2) / 2^T) <= exp((r_T + ln ||A_T||_F) / 2^T).

The right-hand side is an upper bound for every T (||M||_2 <= ||M||_F); it exceeds
||A||_2 by at most the factor rank(A)^(1 / 2^(T+1)) (1.00003 for rank 64 at T = 16), and
much less when the top singular value is separated.

**Convolutions as implemented** (``torch.nn.Conv2d``: cross-correlation, zero
padding (p_top, p_bottom) x (p_left, p_right), stride s, no dilation, one group).
The bound below is valid for the layer on the given input size, including zero
padding and stride (it is not the circular-convolution norm applied blindly):

1. *Polyphase form* (stride).  Write each kernel offset a = s q + r, 0 <= r < s.
   With x_r[t] = x_pad[s t + r] (the s^2 polyphase components of the zero-padded
   input, a permutation of its entries), y[i] = sum_{r,q} K[s q + r] x_r[i + q]: a
   stride-1 correlation with C_in s^2 input channels and the polyphase kernel
   K_p[(c, r), q] = K[c, s q + r] (zero where s q + r >= k).
2. *Embedding* (zero padding).  Let N >= n + p_total be a multiple of s and
   M = N / s.  Extend the zero-padded input by zeros to length N (an isometry:
   only zeros are added) and evaluate the polyphase correlation circularly on Z_M.
   Every tap used by an output i < n_out reads index s (i + q) + r <= n + p_total - 1 < N,
   so no index wraps around and the layer's output is the restriction of the
   circular output to i < n_out (a coordinate projection, norm <= 1).  Hence

       ||conv||_2 <= ||circular polyphase correlation on Z_M x Z_M||_2
                   = max_{w in the M_h x M_w DFT grid} ||K_p^(w)||_2,

   the last equality because the 2-D DFT (unitary) block-diagonalizes a
   multi-channel circular correlation into the C_out x (C_in s^2) matrices K_p^(w)
   (the DFT of the polyphase kernel; correlation conjugates them, which keeps
   their norms).
3. Each ||K_p^(w)||_2 is bounded by Gram iteration; the maximum over the grid is
   the bound.

For stride 1 and a large input the bound approaches the continuous supremum
sup_w ||K^(w)||_2, the norm of the convolution on all of Z^2.

Floating point: everything runs in float64 (complex128), and the result is
multiplied by (1 + 1e-9), far above the rounding error of T = 16 rescaled
squarings of matrices this small (the relative rounding error of A_T grows like 2^T n eps,
and its 2^T-th root brings it back to about n eps).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from robustbench_iqa.errors import BoundUnavailableError, InputError
from robustbench_iqa.lipschitz.trust import require_exact

__all__ = [
    "DEFAULT_ITERATIONS",
    "SAFETY",
    "UNIVERSAL_GRID",
    "autocorrelation",
    "check_conv_supported",
    "checked_norm",
    "conv2d_spectral_bound",
    "conv_layer_bound",
    "conv_operator_matrix",
    "conv_output_size",
    "conv_padding",
    "gram_iteration_bound",
    "matrix_spectral_bound",
    "max_frequency_bound",
    "max_gram_iteration_bound",
    "polyphase_kernel",
]


DEFAULT_ITERATIONS = 16
SAFETY = 1.0 + 1e-9
"""Relative margin covering floating-point rounding of the bounds."""


def gram_iteration_bound(mats: torch.Tensor, *, iterations: int = DEFAULT_ITERATIONS) -> torch.Tensor:
    """Upper bounds of ||A_i||_2 for a batch of matrices ``mats`` (..., p, q), real or complex.

    Gram iteration with per-matrix rescaling (module docstring); zero matrices give 0.
    Returns a float64 tensor of shape ``mats.shape[:-2]``.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise InputError(f"iterations must be a positive integer, got {iterations!r}")
    if mats.dim() < 2:
        raise InputError(f"expected a batch of matrices (..., p, q), got shape {tuple(mats.shape)}")
    a = mats.to(torch.complex128 if mats.is_complex() else torch.float64)
    peak = a.abs().amax(dim=(-2, -1)) if a.numel() else torch.zeros(a.shape[:-2], dtype=torch.float64)
    if not bool(torch.isfinite(peak).all()):
        raise BoundUnavailableError("cannot bound a matrix whose entries are not finite")
    peak = torch.where(peak > 0, peak, torch.ones_like(peak))
    if bool((peak != 1).any()):  # bound A / max|A| (no under- or overflow in the squarings), scale back
        a = a / peak[..., None, None]
    return peak * _gram_iteration_bound(a, iterations)


def _gram_iteration_bound(a: torch.Tensor, iterations: int) -> torch.Tensor:
    if a.shape[-2] < a.shape[-1]:
        a = a.mH  # same spectral norm, smaller Gram matrix
    log_scale = torch.zeros(a.shape[:-2], dtype=torch.float64, device=a.device)
    for _ in range(iterations):
        f = torch.linalg.matrix_norm(a, ord="fro")
        safe = torch.where(f > 0, f, torch.ones_like(f))
        log_scale = 2.0 * (log_scale + torch.log(safe))
        a = a / safe[..., None, None]
        a = a.mH @ a
    f = torch.linalg.matrix_norm(a, ord="fro")
    bound = torch.exp((log_scale + torch.log(f.clamp_min(1e-300))) / 2.0**iterations)
    return torch.where(f > 0, bound * SAFETY, torch.zeros_like(bound))


def max_gram_iteration_bound(mats: torch.Tensor, *, iterations: int = DEFAULT_ITERATIONS) -> float:
    """Upper bound of max_i ||A_i||_2 over a batch of matrices (..., p, q): Gram iteration with pruning.

    Same bound as ``gram_iteration_bound(mats).max()``, computed faster: after each
    step, matrices whose current upper bound is below the largest current *lower* bound
    max_j exp((r_j + ln(||A_j,t||_F / sqrt(d))) / 2^t) (||M||_2 >= ||M||_F / sqrt(d) for a
    d x d matrix) cannot hold the maximum; their current upper bound (which the
    iteration only lowers) is kept aside and they are dropped.  The result is the
    largest of the kept-aside and the final upper bounds, hence still >= max_i ||A_i||_2.
    Before the first step the same is done with the cheap upper bound
    min(||A||_F, sqrt(||A||_1 ||A||_inf)) against the largest exact norm (SVD, rounded down by
    1e-9) of the 16 most promising matrices.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise InputError(f"iterations must be a positive integer, got {iterations!r}")
    a = mats.to(torch.complex128 if mats.is_complex() else torch.float64)
    a = a.reshape(-1, *a.shape[-2:])
    peak = float(a.abs().max()) if a.numel() else 0.0
    if not math.isfinite(peak):
        raise BoundUnavailableError("cannot bound a matrix whose entries are not finite")
    if peak == 0.0:
        return 0.0
    if peak != 1.0:  # bound A / max|A| (no under- or overflow in the squarings), scale back
        a = a / peak
    return peak * _max_gram_iteration_bound(a, iterations)


def _max_gram_iteration_bound(a: torch.Tensor, iterations: int) -> float:
    if a.shape[-2] < a.shape[-1]:
        a = a.mH
    a = a.contiguous()
    dropped = 0.0
    if a.shape[0] > 16:
        # Cheap first pruning: upper_i = min(||A_i||_F, sqrt(||A_i||_1 ||A_i||_inf)) >= ||A_i||_2, and
        # a lower bound of the maximum from the exact norms of the 16 largest candidates.
        mag = a.abs()
        upper0 = torch.minimum(torch.linalg.matrix_norm(a, ord="fro"),
                               (mag.sum(dim=-2).amax(dim=-1) * mag.sum(dim=-1).amax(dim=-1)).sqrt())
        top = torch.topk(upper0, 16).indices
        lower0 = float(torch.linalg.svdvals(a[top]).amax()) * (1.0 - 1e-9)
        keep = upper0 >= lower0
        if bool((~keep).any()):
            dropped = float(upper0[~keep].max())
            a = a[keep]
    log_scale = torch.zeros(a.shape[0], dtype=torch.float64, device=a.device)
    for t in range(iterations + 1):
        f = torch.linalg.matrix_norm(a, ord="fro")
        if not bool((f > 0).any()):
            return dropped
        log_f = torch.log(f.clamp_min(1e-300))
        upper = torch.where(f > 0, torch.exp((log_scale + log_f) / 2.0**t), torch.zeros_like(f))
        if t == iterations:
            return max(dropped, float(upper.max())) * SAFETY
        lower = torch.exp((log_scale + log_f - 0.5 * math.log(a.shape[-1])) / 2.0**t)
        keep = (upper >= float(lower[f > 0].max())) & (f > 0)
        if bool((~keep).any()):
            dropped = max(dropped, float(upper[~keep].max()))
            a, f, log_scale, log_f = a[keep], f[keep], log_scale[keep], log_f[keep]
        log_scale = 2.0 * (log_scale + log_f)
        a = a / f[:, None, None]
        a = a.mH @ a
    raise AssertionError("unreachable")


def matrix_spectral_bound(weight: torch.Tensor) -> float:
    """Upper bound of ||W||_2 for one matrix (a Linear layer's weight): the exact value, rounded up.

    The largest singular value from LAPACK's SVD in float64, times (1 + 1e-9): the SVD is
    backward stable (the computed values are exact for W + E with ||E||_2 <= c(m, n) eps ||W||_2),
    so the margin covers its rounding for any layer of realistic size.  Unlike Gram
    iteration, this is tight even when all singular values are equal (orthogonal W).
    """
    if weight.dim() != 2:
        raise InputError(f"expected a matrix, got shape {tuple(weight.shape)}")
    w = weight.detach().to(torch.float64)
    if w.numel() == 0:
        return 0.0
    peak = float(w.abs().max())
    if not math.isfinite(peak):
        raise BoundUnavailableError("cannot bound a matrix whose entries are not finite")
    if peak == 0.0:
        return 0.0
    return checked_norm(peak * float(torch.linalg.svdvals(w / peak).max()) * SAFETY, w, "a matrix")


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """Total zero padding (top + bottom, left + right) of ``conv`` as torch applies it."""
    pad = conv.padding
    if isinstance(pad, str):
        if pad == "valid":
            return 0, 0
        if pad == "same":  # torch pads dilation * (k - 1) in total per dimension
            return tuple(d * (k - 1) for d, k in zip(_pair(conv.dilation), _pair(conv.kernel_size), strict=True))  # type: ignore[return-value]
        raise InputError(f"unknown padding {pad!r} of {type(conv).__name__}")
    ph, pw = _pair(pad)  # type: ignore[arg-type]
    return 2 * ph, 2 * pw


def check_conv_supported(conv: nn.Module) -> nn.Conv2d:
    """The layer as an ``nn.Conv2d`` this module can bound, or :class:`BoundUnavailableError` naming why not.

    The class must be exactly ``nn.Conv2d`` (a subclass may transform its weight or output in
    ``forward``), with no hooks and no replaced ``forward`` (:mod:`robustbench_iqa.lipschitz.trust`).
    """
    require_exact(conv, nn.Conv2d)
    assert isinstance(conv, nn.Conv2d)
    if _pair(conv.dilation) != (1, 1):
        raise BoundUnavailableError(f"cannot bound Conv2d with dilation={conv.dilation} (only dilation 1 is supported)")
    if conv.padding_mode != "zeros":
        raise BoundUnavailableError(f"cannot bound Conv2d with padding_mode={conv.padding_mode!r} (only 'zeros' is supported)")
    return conv


def checked_norm(value: float, weight: torch.Tensor, what: str) -> float:
    """``value`` as a certified norm of ``weight``: refused when non-finite, or zero for a non-zero weight."""
    if not math.isfinite(value) or value < 0:
        raise BoundUnavailableError(f"the certified norm of {what} is {value}: refusing a non-finite bound")
    if value == 0.0 and bool((weight != 0).any()):
        raise BoundUnavailableError(f"the certified norm of {what} underflowed to 0 for a non-zero weight")
    return value


def conv_output_size(conv: nn.Conv2d, input_size: tuple[int, int]) -> tuple[int, int]:
    """Spatial output size of ``conv`` on an input of ``input_size`` (H, W)."""
    pads = conv_padding(conv)
    out = []
    for n, p, k, s in zip(input_size, pads, _pair(conv.kernel_size), _pair(conv.stride), strict=True):  # type: ignore[arg-type]
        out.append((n + p - k) // s + 1)
    if min(out) < 1:
        raise InputError(f"input size {input_size} is too small for {conv}")
    return out[0], out[1]


def polyphase_kernel(weight: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """K_p (C_out, C_in s_h s_w, ceil(k_h/s_h), ceil(k_w/s_w)) with K_p[(c, r), q] = K[c, s q + r]."""
    o, c, kh, kw = weight.shape
    sh, sw = stride
    qh, qw = math.ceil(kh / sh), math.ceil(kw / sw)
    kp = weight.new_zeros((o, c, sh, sw, qh, qw))
    for r in range(sh):
        for s in range(sw):
            sub = weight[:, :, r::sh, s::sw]
            kp[:, :, r, s, : sub.shape[2], : sub.shape[3]] = sub
    return kp.reshape(o, c * sh * sw, qh, qw)


UNIVERSAL_GRID = 128
"""DFT grid (per dimension) of the size-independent bound; also used when the exact grid is larger."""


def conv2d_spectral_bound(
    weight: torch.Tensor, *, stride: int | tuple[int, int] = 1, padding: tuple[int, int] = (0, 0),
    input_size: tuple[int, int] | None, iterations: int = DEFAULT_ITERATIONS,
) -> float:
    """Certified upper bound of the operator norm (L2 -> L2) of a zero-padded, strided correlation.

    ``weight`` (C_out, C_in, k_h, k_w); ``padding`` the *total* zero padding per dimension
    (top + bottom, left + right); ``input_size`` (H, W) of the layer's input, or None for a
    bound valid on every input size.  See the module docstring for the proof that this
    bounds the layer exactly as torch computes it.

    With ``input_size``, the maximum over the exact embedding grid M = ceil((n + p)/s)
    (when M_h M_w <= UNIVERSAL_GRID^2; beyond that the size-independent bound is used,
    which is valid for every size).  Size-independent: the supremum over the continuous
    torus of ||K_p^(w)||_2 bounds every grid's maximum, and it is bounded by the maximum on
    a G x G grid plus delta = sum_{a,b} ||K_p[:, :, a, b]||_2 (pi/G)(|a - a0| + |b - b0|):
    multiplying K_p^(w) by the unimodular exp(i w . (a0, b0)) (a0, b0 the kernel centre)
    keeps its norm, and then |e^{-i w.z} - e^{-i w'.z}| <= |(w - w').z| with
    |w_h - w'_h|, |w_w - w'_w| <= pi / G to the nearest grid point.
    """
    if weight.dim() != 4:
        raise InputError(f"expected a Conv2d weight (C_out, C_in, k_h, k_w), got shape {tuple(weight.shape)}")
    w64 = weight.detach().to(torch.float64)
    peak = float(w64.abs().max()) if w64.numel() else 0.0
    if not math.isfinite(peak):
        raise BoundUnavailableError("cannot bound a convolution whose weight is not finite")
    if peak == 0.0:
        return 0.0
    if peak != 1.0:  # bound W / max|W| (no under- or overflow in the Gram squarings), then scale back
        w64 = w64 / peak
    return peak * _conv2d_spectral_bound(w64, _pair(stride), padding, input_size, iterations)


def _conv2d_spectral_bound(w64: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int],
                           input_size: tuple[int, int] | None, iterations: int) -> float:
    sh, sw = stride
    kp = polyphase_kernel(w64, (sh, sw))
    qh, qw = kp.shape[2:]
    if input_size is not None:
        grid = []
        for n, p, s, q in zip(input_size, padding, (sh, sw), (qh, qw), strict=True):
            m = math.ceil((int(n) + int(p)) / s)  # N = s M >= n + p_total
            grid.append(max(m, q))  # a larger circular domain is still a valid embedding
        if grid[0] * grid[1] <= UNIVERSAL_GRID**2:
            return max_frequency_bound(kp, (grid[0], grid[1]), iterations=iterations)
    g = UNIVERSAL_GRID
    tap_norms = torch.linalg.matrix_norm(kp.permute(2, 3, 0, 1), ord=2)  # (q_h, q_w)
    a = (torch.arange(qh, dtype=torch.float64) - (qh - 1) / 2).abs()
    b = (torch.arange(qw, dtype=torch.float64) - (qw - 1) / 2).abs()
    delta = float((tap_norms * (math.pi / g) * (a[:, None] + b[None, :])).sum()) * SAFETY
    return max_frequency_bound(kp, (g, g), iterations=iterations) + delta


def max_frequency_bound(
    kernel: torch.Tensor, grid: tuple[int, int], *, iterations: int = DEFAULT_ITERATIONS,
    chunk_entries: int = 1 << 21,
) -> float:
    """max over the M_h x M_w DFT grid of a certified bound of ||K^(w)||_2 (K real, (O, C, q_h, q_w)).

    Works on the Gram matrices G(w) = K^(w) K^(w)^H (the smaller side: the kernel is
    transposed when C < O, which keeps every norm), ||K^(w)||_2 = ||G(w)||_2^(1/2).  G(w) is
    the DFT of the kernel's autocorrelation, G(w) = sum_d R(d) exp(-i w.d) with
    R(d) = sum_b K_(b+d) K_b^T (a (2q-1) x (2q-1) real kernel, one conv2d), evaluated
    directly for chunks of frequencies (about ``chunk_entries`` entries at a time): this
    skips the first and most expensive product of Gram iteration.  The real R gives
    G(-w) = conj G(w), with the same norm, so the half-plane w_w in [0, pi] covers the grid.
    """
    mh, mw = grid
    k = kernel.to(torch.float64)
    if k.shape[1] < k.shape[0]:
        k = k.transpose(0, 1)
    o, _, qh, qw = k.shape
    auto = autocorrelation(k).to(torch.complex128)  # R(d), d + (q - 1)
    offs_h, offs_w = torch.meshgrid(torch.arange(2 * qh - 1, dtype=torch.float64) - (qh - 1),
                                    torch.arange(2 * qw - 1, dtype=torch.float64) - (qw - 1), indexing="ij")
    offs_h, offs_w = offs_h.reshape(-1), offs_w.reshape(-1)
    auto_flat = auto.permute(2, 3, 0, 1).reshape(-1, o * o)  # (offsets, O*O)
    u, v = torch.meshgrid(torch.arange(mh, dtype=torch.float64), torch.arange(mw // 2 + 1, dtype=torch.float64),
                          indexing="ij")
    wh, ww = (2 * math.pi / mh) * u.reshape(-1), (2 * math.pi / mw) * v.reshape(-1)
    step = max(1, chunk_entries // (o * o))
    best = 0.0
    for start in range(0, wh.numel(), step):
        fh, fw = wh[start : start + step], ww[start : start + step]
        phase = torch.exp(-1j * (fh[:, None] * offs_h[None, :] + fw[:, None] * offs_w[None, :]))
        gram = (phase @ auto_flat).reshape(-1, o, o)  # G(w) = sum_d R(d) exp(-i w.d), one product
        best = max(best, max_gram_iteration_bound(gram, iterations=iterations))
    return math.sqrt(best)


def autocorrelation(k: torch.Tensor) -> torch.Tensor:
    """R(d) = sum_b K_(b+d) K_b^T for d + (q - 1) in [0, 2q - 1)^2, shape (O, O, 2q_h - 1, 2q_w - 1).

    Equal to ``conv2d(k, k, padding=q - 1)``, computed as one matrix product per offset d over
    the valid taps only (BLAS; the float64 convolution is several times slower).
    """
    o, c, qh, qw = k.shape
    kt = k.permute(2, 3, 0, 1)  # (q_h, q_w, O, C)
    out = k.new_zeros((o, o, 2 * qh - 1, 2 * qw - 1))
    for a in range(-(qh - 1), qh):
        for b in range(-(qw - 1), qw):
            h0, h1 = max(0, -a), min(qh, qh - a)
            w0, w1 = max(0, -b), min(qw, qw - b)
            left = kt[h0 + a : h1 + a, w0 + b : w1 + b].permute(2, 0, 1, 3).reshape(o, -1)
            right = kt[h0:h1, w0:w1].permute(2, 0, 1, 3).reshape(o, -1)
            out[:, :, a + qh - 1, b + qw - 1] = left @ right.T
    return out


def conv_layer_bound(
    conv: nn.Module, input_size: tuple[int, int], *, scale: torch.Tensor | None = None,
    iterations: int = DEFAULT_ITERATIONS,
) -> float:
    """Certified bound of ||x -> diag(scale) conv(x)|| (bias ignored) on inputs of ``input_size``.

    ``scale`` (C_out,) folds a following per-channel affine map (an eval-mode BatchNorm)
    into the kernel, which is exact: diag(scale) K is again a correlation kernel.
    """
    conv = check_conv_supported(conv)
    w = conv.weight.detach().to(torch.float64)
    if not bool(torch.isfinite(w).all()):
        raise BoundUnavailableError(f"cannot bound {type(conv).__name__}: its weight is not finite")
    if scale is not None:
        w = w * scale.detach().to(torch.float64).reshape(-1, 1, 1, 1)
    g = conv.groups
    if g == 1:
        groups = [w]
    else:  # block diagonal over the groups: the norm is the largest group's norm
        per = w.shape[0] // g
        stacked = w.reshape(g, per, *w.shape[1:])
        groups = list(torch.unique(stacked.reshape(g, -1), dim=0).reshape(-1, per, *w.shape[1:]))  # identical groups once
    best = 0.0
    for wg in groups:
        best = max(best, conv2d_spectral_bound(wg, stride=conv.stride, padding=conv_padding(conv),  # type: ignore[arg-type]
                                               input_size=input_size, iterations=iterations))
    return checked_norm(best, w, f"Conv2d {conv.in_channels}->{conv.out_channels}")


def conv_operator_matrix(conv: nn.Conv2d, input_size: tuple[int, int]) -> torch.Tensor:
    """The dense matrix (out_numel, in_numel) of ``conv`` without bias, in float64 (small inputs only).

    The reference for the tests: its largest singular value is the exact operator norm.
    """
    c = conv.in_channels
    h, w = input_size
    n = c * h * w
    eye = torch.eye(n, dtype=torch.float64).reshape(n, c, h, w)
    weight = conv.weight.detach().to(torch.float64)
    out = torch.nn.functional.conv2d(eye, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return out.reshape(n, -1).T
