"""Spectral norm of the Jacobian of a feature map, ||J_B(x)||_2, batched over images.

FS-IQA's Input Variation Estimator (Shumitskaya et al., Theorem 1 and Remark 1)
needs sigma_max(J_B(x)) for B = FTN o b : R^n -> R^m (n = 3*H*W, m = 512).
The Jacobian is never materialized (except by ``method="exact"``, the test
reference).  The iterative methods work on the small m x m operator

    M = J J^T,    M u = J (J^T u),    sigma_max(J) = sqrt(lambda_max(M)),

with vector-Jacobian products (J^T u, a backward pass through the graph of a
single forward pass) and Jacobian-vector products (J v, by the double-backward
trick through the graph of g(u0) = J^T u0, which is linear in u0; see
:func:`_operator`).  Neither product re-runs the forward pass.  Working in the
m-dimensional output space keeps every stored vector m floats long, whatever
the image size.

``fn`` must map a batch (B, ...) to (B, m) *per sample* (no interaction across
the batch, i.e. eval mode): then J is block diagonal and one batched product
serves every image; each image converges (and is frozen) on its own.

What each method returns and guarantees
---------------------------------------
- ``"lanczos"`` (default): Lanczos on M with full re-orthogonalization (Golub &
  Van Loan, Matrix Computations, Sec. 10.1) from a start vector drawn uniformly
  on the unit sphere of R^m, read as a Golub-Kahan bidiagonalization of J
  (ibid. Sec. 10.4): the estimate is updated after *every* Jacobian product.
  After k products J^T q_1..J^T q_k it is the top Ritz value theta_k of
  T_k = Q_k^T M Q_k on the Krylov space K_k(M, q_1); after the following J
  product it is the top Ritz value of J^T J on J^T K_k(M, q_1), computed from
  T_k and beta_k alone (the pencil (T_k^2 + beta_k^2 e_k e_k^T, T_k)), which is
  at least theta_k.  ``value`` is the square root of the largest of these.
  Every such value is a Rayleigh quotient, so **the estimate never exceeds
  ||J||_2** (up to floating-point rounding): an under-converged estimate is too
  small, and eps_x = sigma_f / value is then too large.  It is the
  **first-order estimate** FS-IQA uses by default, not a bound.

  *Stopping rule.*  After each product the residual of the previous estimate
  is known: for the Ritz pair (theta, u) of M, ||M u - theta u|| = |beta_k s_k|
  (ibid. Sec. 10.1.4); for the J^T J Ritz pair (theta', v), ||J^T J v - theta' v||
  from T_{k+1}.  Either way an eigenvalue of M (or of J^T J) lies within the
  residual r of the Ritz value, i.e. *some* singular value of J lies within
  ``rel_change`` = sqrt(1 + r / theta) - 1 (relative) of the estimate one
  product before the final one.  Iteration stops when ``rel_change < rtol``.
  What this guarantees: the returned value is within ``rtol`` of a singular
  value of J (it is at least the checked estimate and at most sigma_max).
  What it does *not* guarantee: that this singular value is sigma_max.  A start
  vector nearly orthogonal to the top singular vector lets the iteration settle
  on a lower singular value with a small residual first; with a small spectral
  gap this happens to a measurable fraction of random starts (measured with
  sigma_2 well separated from the rest: at sigma_2 / sigma_1 = 0.975, 1.9% of
  starts stop more than 1% low; at 0.9, 0.3% stop 10% low, on sigma_2; see
  ``tests/test_spectral.py``).  Only the upper bound below quantifies that risk.

  *Upper bound* (``delta`` given).  For a PSD m x m matrix and a start uniform
  on the sphere, the top Ritz value theta_k after k matrix-vector products
  satisfies, whatever the spectrum (no gap assumption),

      P(theta_k < (1 - e) lambda_max) <= 1.648 sqrt(m) exp(-sqrt(e) (2k - 1))

  (Kuczynski & Wozniakowski, "Estimating the largest eigenvalue by the power
  and Lanczos algorithms with a random start", SIAM J. Matrix Anal. Appl. 13(4),
  1992, their bound for the Lanczos algorithm; stated for positive definite
  matrices, it extends to PSD ones by continuity: theta_k(M + eta I) =
  theta_k(M) + eta).  Solving for e at a fixed k = ``bound_iter`` and failure
  probability ``delta`` gives e(k, delta) = (ln(1.648 sqrt(m) / delta) / (2k - 1))^2,
  and

      upper_bound = value / sqrt(1 - e(k, delta)) >= ||J||_2
      with probability >= 1 - delta over the random start vector.

  k is fixed in advance (not chosen from the data); the iteration runs at
  least k products J^T q (fewer only if the Krylov space becomes invariant,
  when the Ritz value is exact), and ``value`` only grows with further
  products, so the bound holds as stated.  Rounding of the float32 products is
  orders of magnitude below e.  The slack 1 / sqrt(1 - e) - 1 depends only on
  (k, m, delta): at m = 512, delta = 1e-3 it is 20% at k = 10, 3.9% at k = 20,
  1.4% at k = 32, 0.6% at k = 50 (:func:`kw_relative_error`).

- ``"power"``: power iteration on M; the estimate is a Rayleigh quotient (a
  lower bound of ||J||_2^2) and the stopping quantity is the relative change of
  successive estimates, a heuristic that says nothing about the distance to
  sigma_max (power iteration converges linearly in sigma_2^2 / sigma_1^2; it
  "converges" well below the norm when the gap is small).  It is kept as an
  estimator; FS-IQA refuses to certify from it.
- ``"exact"``: the full Jacobian by reverse mode and its largest singular value
  (torch.linalg.matrix_norm(ord=2)); for small inputs only.  Its
  ``upper_bound`` is the value itself (delta = 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import torch
from torch.func import jacrev, jvp

from robustbench_iqa.certify.linearize import LinearizedOps
from robustbench_iqa.errors import InputError

KW_CONSTANT = 1.648
"""The constant of the Kuczynski-Wozniakowski Lanczos bound, 1.648 sqrt(m) exp(-sqrt(e)(2k-1))."""

DEFAULT_BOUND_ITER = 32
"""Products J^T q behind the default upper bound (slack 1.4% at m = 512, delta = 1e-3)."""


class SpectralMethod(StrEnum):
    POWER = "power"
    LANCZOS = "lanczos"
    EXACT = "exact"


@dataclass(frozen=True)
class SpectralNormEstimate:
    """Per-image estimates of ||J_B(x)||_2 (see the module docstring for what each guarantees).

    ``value`` (B,): the estimate; for ``lanczos`` and ``power`` a Rayleigh
    quotient, never above ||J||_2 up to rounding (a first-order estimate, not a bound);
    ``iterations`` (B,): products J^T q used (the Krylov dimension k; for ``power``
    the J J^T products; 0 for ``exact``);
    ``rel_change`` (B,): the stopping quantity (Lanczos: a singular value of J lies
    within this relative distance of the estimate one product before the last;
    power: the relative change of the last step; 0 for exact);
    ``converged`` (B,): whether it fell below ``rtol``;
    ``output`` (B, m): the value B(x) of the forward pass the estimate used
    (so callers need not run the forward pass again);
    ``products`` (B,): Jacobian products used (J^T u and J v together).
    """

    value: torch.Tensor
    iterations: torch.Tensor
    rel_change: torch.Tensor
    converged: torch.Tensor
    method: SpectralMethod
    output: torch.Tensor
    output_vector: torch.Tensor | None = None
    """(B, m) unit top eigenvector of J J^T (the top left singular vector of J), from the
    iterative methods; :func:`top_input_direction` turns it into the input direction."""
    upper_bound: torch.Tensor | None = None
    """(B,) an upper bound of ||J||_2 that holds for each image with probability
    >= 1 - ``delta`` over the random start (Lanczos, Kuczynski-Wozniakowski), or exactly
    (``exact``, delta = 0); None unless requested."""
    delta: float | None = None
    """Failure probability of ``upper_bound`` (None: no bound was requested)."""
    bound_iter: int | None = None
    """The k of the upper bound: products J^T q it rests on (fixed in advance)."""
    products: torch.Tensor | None = None


FeatureMap = Callable[[torch.Tensor], torch.Tensor]
Product = Callable[[torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------ the bound
def kw_failure_probability(k: int, m: int, e: float) -> float:
    """Kuczynski-Wozniakowski: P(theta_k < (1 - e) lambda_max) <= 1.648 sqrt(m) exp(-sqrt(e)(2k - 1)), capped at 1.

    theta_k is the top Ritz value of k Lanczos steps (k matrix-vector products) on a
    PSD m x m matrix from a start vector uniform on the unit sphere; e in (0, 1].
    """
    if k < 1 or m < 1 or not (0 < e <= 1):
        raise InputError(f"need k >= 1, m >= 1 and 0 < e <= 1, got k={k}, m={m}, e={e}")
    return min(1.0, KW_CONSTANT * math.sqrt(m) * math.exp(-math.sqrt(e) * (2 * k - 1)))


def kw_relative_error(k: int, m: int, delta: float) -> float:
    """The e at which :func:`kw_failure_probability` (k, m, e) equals ``delta``.

    e = (ln(1.648 sqrt(m) / delta) / (2k - 1))^2; a value >= 1 means k products
    cannot bound lambda_max at this delta (the bound is vacuous).  Returns 0 when
    1.648 sqrt(m) <= delta (no failure to exclude).
    """
    if k < 1 or m < 1 or not (0 < delta < 1):
        raise InputError(f"need k >= 1, m >= 1 and 0 < delta < 1, got k={k}, m={m}, delta={delta}")
    log_term = math.log(KW_CONSTANT * math.sqrt(m) / delta)
    return max(0.0, log_term / (2 * k - 1)) ** 2


def kw_sigma_factor(k: int, m: int, delta: float) -> float:
    """1 / sqrt(1 - e(k, m, delta)): the factor from the k-step estimate of sigma_max to its upper bound (inf if vacuous)."""
    e = kw_relative_error(k, m, delta)
    return math.inf if e >= 1 else 1.0 / math.sqrt(1.0 - e)


def bound_iterations(m: int, delta: float, slack: float) -> int:
    """The fewest products k whose upper bound exceeds the k-step estimate by at most ``slack`` (relative)."""
    if not (slack > 0):
        raise InputError(f"slack must be > 0, got {slack!r}")
    # 1/sqrt(1-e) <= 1 + slack  <=>  sqrt(e) <= sqrt(1 - (1 + slack)^-2)
    root = math.sqrt(1.0 - (1.0 + slack) ** -2)
    log_term = math.log(KW_CONSTANT * math.sqrt(m) / delta)
    return max(1, math.ceil((log_term / root + 1) / 2))


# ------------------------------------------------------------- the operator
def _random_unit(shape: tuple[int, ...], *, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    dev = generator.device if generator is not None else like.device
    u = torch.randn(shape, generator=generator, device=dev, dtype=like.dtype).to(like.device)
    return u / u.norm(dim=-1, keepdim=True).clamp_min(1e-30)


def _operator(fn: FeatureMap, x: torch.Tensor) -> tuple[torch.Tensor, Product, Product]:
    """B(x) and the products u -> J^T u ((B, m) -> (B, ...)) and v -> J v, from one forward pass.

    ``J^T u`` is a backward pass through the retained graph of the forward pass.
    ``J v`` uses the double-backward trick: at the first product, g(u0) = J^T u0
    is computed with ``create_graph=True`` (u0 a leaf); g is linear in u0, so
    d<g(u0), v>/du0 = J v for any v: one backward pass through g's graph, with
    no recomputation of B(x).  The forward pass runs under
    :class:`~robustbench_iqa.certify.linearize.LinearizedOps`, which records
    conv2d, eval batch norm, SiLU and GELU with first-order backward formulas
    (same values and derivatives), so that this second differentiation is cheap.
    Measured on the benchmark models (CPU, one thread): a J v costs 0.3-0.9
    forward passes this way (1-2.6 through PyTorch's own double-backward
    formulas), ``torch.func.jvp`` (which re-runs the forward pass) 1.7-3.7, and
    ``torch.func.linearize`` traces for 20-40 forward passes before its first
    product; batched products (``is_grads_batched``, block Krylov) cost no less
    per vector on the CPU.  Models whose operations lack double-backward support
    fall back to ``torch.func.jvp``.  The products are exact (the same
    derivatives, up to floating-point rounding).
    """
    x = x.detach()
    with torch.enable_grad(), LinearizedOps():
        xg = x.clone().requires_grad_(True)
        out = fn(xg)
    if out.dim() != 2 or out.shape[0] != x.shape[0]:
        raise InputError(f"the feature map must return shape (B, m), got {tuple(out.shape)}")
    if not out.requires_grad:  # B does not depend on x: J = 0
        return out.detach(), lambda u: torch.zeros_like(x), lambda v: torch.zeros_like(out)
    u0: torch.Tensor | None = None  # leaf cotangent of the retained graph g(u0) = J^T u0
    g: torch.Tensor | None = None
    forward_mode = False  # fall back to torch.func.jvp (no double backward, or J^T u0 constant)

    def jtu_of(u: torch.Tensor) -> torch.Tensor:
        nonlocal u0, g, forward_mode
        u = u.to(out.dtype)
        with torch.enable_grad():
            if g is None:  # first product: keep the graph of u0 -> J^T u0
                u0 = u.detach().clone().requires_grad_(True)
                (g,) = torch.autograd.grad(out, xg, u0, retain_graph=True, create_graph=True,
                                           allow_unused=True, materialize_grads=True)
                forward_mode = not g.requires_grad
                return g.detach()
            (jtu,) = torch.autograd.grad(out, xg, u, retain_graph=True, allow_unused=True,
                                         materialize_grads=True)
        return jtu

    def jv_of(v: torch.Tensor) -> torch.Tensor:
        nonlocal forward_mode
        v = v.to(x.dtype)
        if not forward_mode and g is not None and u0 is not None:
            try:
                with torch.enable_grad():
                    (jv,) = torch.autograd.grad(g, u0, v, retain_graph=True, allow_unused=True,
                                                materialize_grads=True)
                return jv.detach()
            except RuntimeError:  # an operation without double backward: forward mode instead
                forward_mode = True
        return jvp(fn, (x,), (v,))[1].detach()

    return out.detach(), jtu_of, jv_of


# ------------------------------------------------------------------- power
def _power(
    jt: Product, jv: Product, out: torch.Tensor, *, rtol: float, max_iter: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    bsz = out.shape[0]
    u = _random_unit(tuple(out.shape), like=out, generator=generator)
    lam = torch.zeros(bsz, dtype=out.dtype, device=out.device)
    rel = torch.full_like(lam, float("inf"))
    iters = torch.zeros(bsz, dtype=torch.long, device=out.device)
    active = torch.ones(bsz, dtype=torch.bool, device=out.device)
    for _ in range(max_iter):
        w = jv(jt(u)).to(out.dtype)
        new_lam = (w * u).sum(-1).clamp_min(0.0)  # Rayleigh quotient u^T M u, ||u|| = 1
        new_sig, old_sig = new_lam.sqrt(), lam.sqrt()
        new_rel = (new_sig - old_sig).abs() / new_sig.clamp_min(1e-30)
        lam = torch.where(active, new_lam, lam)
        rel = torch.where(active, new_rel, rel)
        iters = iters + active.long()
        wn = w.norm(dim=-1, keepdim=True)
        u = torch.where(active[:, None] & (wn > 0), w / wn.clamp_min(1e-30), u)
        active = active & (rel >= rtol) & (wn[:, 0] > 0)
        if not bool(active.any()):
            break
    zero = lam <= 0
    rel = torch.where(zero, torch.zeros_like(rel), rel)  # J = 0: exactly zero, nothing to converge
    return lam.sqrt(), iters, rel, rel < rtol, u, 2 * iters


# ----------------------------------------------------------------- Lanczos
def _tridiagonal(alphas: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """(B, k, k) symmetric tridiagonal from diagonals (B, k) and off-diagonals (B, k-1)."""
    t = torch.diag_embed(alphas)
    if betas.shape[-1] > 0:
        t = t + torch.diag_embed(betas, offset=1) + torch.diag_embed(betas, offset=-1)
    return t


def _bidiagonal_top(
    t: torch.Tensor, mu: torch.Tensor, vecs: torch.Tensor, beta: torch.Tensor, null_tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top Ritz value of J^T J on J^T K_k(M, q_1) and its coefficients c (B, k), c^T T c = 1.

    With Y = J^T Q_k: ||J Y c||^2 = c^T (T^2 + beta^2 e_k e_k^T) c (since M Q_k = Q_k T + beta
    q_{k+1} e_k^T) and ||Y c||^2 = c^T T c; ``mu``, ``vecs`` is the eigendecomposition of T.
    Directions where T is numerically singular (Y c = 0 up to rounding; then J Y c = 0 too)
    are dropped, which keeps the value a Rayleigh quotient.
    """
    k = t.shape[-1]
    a = t @ t
    a[:, k - 1, k - 1] += beta * beta
    keep = mu > null_tol * mu[:, -1:].clamp_min(1e-300)
    scale = torch.where(keep, mu.clamp_min(1e-300).rsqrt(), torch.zeros_like(mu))
    vr = vecs * scale[:, None, :]
    s = vr.transpose(1, 2) @ a @ vr
    ev, w = torch.linalg.eigh((s + s.transpose(1, 2)) / 2)
    return ev[:, -1].clamp_min(0.0), (vr @ w[:, :, -1:])[:, :, 0]


def _combine(basis: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """sum_j coef[b, j] basis[b, j] for (B, k, m) and (B, k): (B, m)."""
    return torch.bmm(coef[:, None, :], basis)[:, 0]


def _lanczos(
    jt: Product, jv: Product, out: torch.Tensor, *, rtol: float, max_iter: int, min_iter: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    bsz, m = out.shape
    dt, dev = torch.float64, out.device
    eps = torch.finfo(out.dtype).eps
    null_tol = 1e3 * eps  # eigenvalues of T below this (relative) are rounding of the products
    max_iter = min(max_iter, m)
    q = _random_unit((bsz, m), like=out, generator=generator).to(dt)
    basis = torch.zeros(bsz, max_iter + 1, m, dtype=dt, device=dev)
    basis[:, 0] = q
    alphas = torch.zeros(bsz, max_iter, dtype=dt, device=dev)
    betas = torch.zeros(bsz, max_iter, dtype=dt, device=dev)
    lam = torch.zeros(bsz, dtype=dt, device=dev)  # the estimate of lambda_max(M) = sigma_max^2
    coef = torch.zeros(bsz, max_iter + 1, dtype=dt, device=dev)  # its left singular vector in the basis
    coef[:, 0] = 1.0
    rel = torch.full((bsz,), float("inf"), dtype=dt, device=dev)
    n_jt = torch.zeros(bsz, dtype=torch.long, device=dev)
    n_j = torch.zeros(bsz, dtype=torch.long, device=dev)
    active = torch.ones(bsz, dtype=torch.bool, device=dev)
    converged = torch.zeros(bsz, dtype=torch.bool, device=dev)

    def relative(resid: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """sqrt(1 + r / theta) - 1: a singular value lies within this of sqrt(theta) (relative)."""
        r = (1 + resid / theta.clamp_min(1e-300)).sqrt() - 1
        return torch.where(theta > 0, r, torch.where(resid > 0, torch.full_like(r, float("inf")), torch.zeros_like(r)))

    def take(better: torch.Tensor, new_lam: torch.Tensor, new_coef: torch.Tensor) -> None:
        nonlocal lam, coef
        lam = torch.where(better, new_lam, lam)
        padded = torch.zeros_like(coef)
        padded[:, : new_coef.shape[1]] = new_coef
        coef = torch.where(better[:, None], padded, coef)

    pending: tuple[torch.Tensor, torch.Tensor] | None = None  # J^T J Ritz value and residual coefficients
    for k in range(max_iter):
        # ---- J^T q_k: completes T_{k+1} (alpha_k = ||J^T q_k||^2)
        y = jt(basis[:, k].to(out.dtype))
        yf = y.reshape(bsz, -1).to(dt)
        alphas[:, k] = torch.where(active, (yf * yf).sum(-1), alphas[:, k])
        n_jt = n_jt + active.long()
        # Before min_iter nothing can stop and later estimates dominate earlier ones (the sequence
        # theta_1 <= theta'_1 <= theta_2 <= ... is monotone), so the small eigenproblems are skipped.
        if k + 2 < min(min_iter, max_iter):
            w = jv(y).reshape(bsz, m).to(dt)
            n_j = n_j + active.long()
            vs = basis[:, : k + 1]
            for _ in range(2):
                w = w - _combine(vs, torch.bmm(vs, w[:, :, None])[:, :, 0])
            b = w.norm(dim=-1)
            dead = b <= 8 * eps * alphas[:, : k + 1].amax(-1)  # invariant Krylov space: add no direction
            b = torch.where(dead, torch.zeros_like(b), b)
            betas[:, k] = torch.where(active, b, betas[:, k])
            basis[:, k + 1] = torch.where((b > 0)[:, None], w / b.clamp_min(1e-300)[:, None], basis[:, k + 1])
            continue
        t = _tridiagonal(alphas[:, : k + 1], betas[:, :k])
        evals, evecs = torch.linalg.eigh(t)
        theta = evals[:, -1].clamp_min(0.0)
        stop = torch.zeros_like(active)
        if pending is not None:  # residual of the J^T J Ritz pair of the previous product, from T_{k+1}
            gk_lam, gk_d = pending
            res = (gk_d[:, None, :] @ t @ gk_d[:, :, None])[:, 0, 0].clamp_min(0.0).sqrt()
            rel_prev = relative(res, gk_lam)
            stop = active & (rel_prev < rtol) & (n_jt >= min_iter)
            rel = torch.where(stop, rel_prev, rel)
        if k + 1 == m:  # K_m(M, q_1) is all of R^m: T_m is similar to M, theta is exact
            full = active & ~stop
            rel = torch.where(full, torch.zeros_like(rel), rel)
            stop = stop | full
        take(active & (theta > lam), theta, evecs[:, :, -1])
        converged = converged | stop
        active = active & ~stop
        if not bool(active.any()):
            break
        # ---- J (J^T q_k) = M q_k: beta_k and q_{k+1}
        w = jv(y).reshape(bsz, m).to(dt)
        n_j = n_j + active.long()
        vs = basis[:, : k + 1]
        for _ in range(2):  # full re-orthogonalization (twice is enough)
            w = w - _combine(vs, torch.bmm(vs, w[:, :, None])[:, :, 0])
        b = w.norm(dim=-1)
        betas[:, k] = torch.where(active, b, betas[:, k])
        rel_now = relative(b * evecs[:, -1, -1].abs(), theta)  # Ritz residual of (theta, ritz)
        invariant = b <= 8 * eps * theta  # Krylov space invariant: theta is exact
        stop = active & (((rel_now < rtol) & (n_jt >= min_iter)) | invariant)
        rel = torch.where(stop, rel_now, rel)
        basis[:, k + 1] = torch.where((b > 0)[:, None], w / b.clamp_min(1e-300)[:, None], basis[:, k + 1])
        # The J^T J Ritz value on J^T K_{k+1}: at least theta, from T_{k+1} and beta_k.
        gk_lam, c = _bidiagonal_top(t, evals, evecs, b, null_tol)
        jv_c = torch.cat([(t @ c[:, :, None])[:, :, 0], (b * c[:, -1])[:, None]], dim=1)  # Q^T J Y c
        take(active & ~invariant & (gk_lam > lam), gk_lam, jv_c)
        d = jv_c.clone()
        d[:, : k + 1] -= gk_lam[:, None] * c  # J^T J v - theta' v = Y_{k+2} d
        pending = (gk_lam, d)
        converged = converged | stop
        active = active & ~stop
        if k == max_iter - 1 or not bool(active.any()):
            break
    vec = _combine(basis, coef)
    vec = vec / vec.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    return lam.sqrt().to(out.dtype), n_jt, rel.to(out.dtype), converged, vec.to(out.dtype), n_jt + n_j


def _exact(fn: FeatureMap, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sigma_max of each image's Jacobian block, the full batch passing through ``fn``.

    Image i's row is replaced by the variable and the others kept, so that a feature map
    that pairs row i with row i of something else (an FR reference batch) is differentiated
    as it is called.
    """
    x = x.detach()
    values = []
    for i in range(x.shape[0]):

        def single(z: torch.Tensor, i: int = i) -> torch.Tensor:
            return fn(torch.cat([x[:i], z[None], x[i + 1 :]]))[i]

        jac = jacrev(single, chunk_size=64)(x[i])  # (m, *input_shape), 64 products at a time
        values.append(torch.linalg.matrix_norm(jac.reshape(jac.shape[0], -1), ord=2))
    with torch.no_grad():
        out = fn(x)
    return torch.stack(values), out


def jacobian_spectral_norm(
    fn: FeatureMap,
    x: torch.Tensor,
    *,
    method: SpectralMethod | str = SpectralMethod.LANCZOS,
    rtol: float = 1e-3,
    max_iter: int = 100,
    generator: torch.Generator | None = None,
    delta: float | None = None,
    bound_iter: int = DEFAULT_BOUND_ITER,
) -> SpectralNormEstimate:
    """Estimate ||J_fn(x_i)||_2 for every image x_i of the batch ``x``.

    Args:
        fn: per-sample feature map (B, ...) -> (B, m), differentiable.
        x: input batch.
        method: ``"lanczos"`` (default), ``"power"`` or ``"exact"``.
        rtol: tolerance of the stopping rule (Lanczos: a singular value of J lies within
            ``rtol`` of the estimate, relative; not necessarily the largest -- see the
            module docstring; power: relative change of successive estimates).
        max_iter: at most this many iterations (Lanczos: products J^T q, each followed by
            at most one product J v; power: J J^T products).
        generator: source of the random start vector (uniform on the unit sphere).
        delta: with ``"lanczos"``, also return ``upper_bound``, a bound on ||J||_2 that
            fails with probability at most ``delta`` over the start vector
            (Kuczynski-Wozniakowski); ``"exact"`` returns its value as the bound.
        bound_iter: the k of that bound: at least this many products J^T q are made
            before stopping (at most ``max_iter``); more products tighten it.
    """
    method = SpectralMethod(method)
    if not (rtol > 0):
        raise InputError(f"rtol must be > 0, got {rtol!r}")
    if max_iter < 1:
        raise InputError(f"max_iter must be >= 1, got {max_iter!r}")
    if delta is not None:
        if not (0 < delta < 1):
            raise InputError(f"delta (the upper bound's failure probability) must lie in (0, 1), got {delta!r}")
        if method is SpectralMethod.POWER:
            raise InputError("the power method has no upper bound; use method='lanczos' with delta, or 'exact'")
        if bound_iter < 1 or bound_iter > max_iter:
            raise InputError(f"bound_iter must lie in [1, max_iter={max_iter}], got {bound_iter!r}")
    if method is SpectralMethod.EXACT:
        val, out = _exact(fn, x)
        bsz = x.shape[0]
        return SpectralNormEstimate(
            value=val.detach(),
            iterations=torch.zeros(bsz, dtype=torch.long, device=val.device),
            rel_change=torch.zeros(bsz, dtype=val.dtype, device=val.device),
            converged=torch.ones(bsz, dtype=torch.bool, device=val.device),
            method=method,
            output=out.detach(),
            upper_bound=None if delta is None else val.detach(),
            delta=None if delta is None else 0.0,
            products=torch.zeros(bsz, dtype=torch.long, device=val.device),
        )
    out, jt, jv = _operator(fn, x)
    if method is SpectralMethod.POWER:
        val, iters, rel, conv, vec, prods = _power(jt, jv, out, rtol=rtol, max_iter=max_iter, generator=generator)
        return SpectralNormEstimate(value=val, iterations=iters, rel_change=rel, converged=conv, method=method,
                                    output=out, output_vector=vec, products=prods)
    m = out.shape[1]
    val, iters, rel, conv, vec, prods = _lanczos(
        jt, jv, out, rtol=rtol, max_iter=max_iter, min_iter=1 if delta is None else bound_iter, generator=generator
    )
    upper = None
    if delta is not None:
        factor = kw_sigma_factor(bound_iter, m, delta)
        if math.isinf(factor):
            raise InputError(
                f"bound_iter={bound_iter} products cannot bound ||J||_2 at delta={delta:g} for m={m} outputs "
                f"(the bound is vacuous); use bound_iter >= {bound_iterations(m, delta, 0.05)}"
            )
        upper = val * factor
    return SpectralNormEstimate(
        value=val, iterations=iters, rel_change=rel, converged=conv, method=method, output=out,
        output_vector=vec, upper_bound=upper, delta=delta, bound_iter=None if delta is None else bound_iter,
        products=prods,
    )


def top_input_direction(fn: FeatureMap, x: torch.Tensor, output_vector: torch.Tensor) -> torch.Tensor:
    """Unit input directions v = J^T u / ||J^T u|| (B, ...) for the top left singular vectors u.

    For the top singular triple (sigma, u, v) of J = J_fn(x), J^T u = sigma v, so this is
    the direction in which B changes fastest to first order: ||J v|| = ||J||_2.  One
    vector-Jacobian product (one backward pass).
    """
    x = x.detach()
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        out = fn(xg)
        (g,) = torch.autograd.grad(out, xg, output_vector.to(out.dtype), allow_unused=True,
                                   materialize_grads=True)
    norm = g.reshape(g.shape[0], -1).norm(dim=1).clamp_min(1e-30)
    return (g / norm.reshape(-1, *([1] * (g.dim() - 1)))).detach()
