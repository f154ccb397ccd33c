"""Spectral norm of the Jacobian of a feature map, ||J_B(x)||_2, batched over images.

FS-IQA's Input Variation Estimator (Shumitskaya et al., Theorem 1 and Remark 1)
needs sigma_max(J_B(x)) for B = FTN o b : R^n -> R^m (n = 3*H*W, m = 512).
The Jacobian is never materialized (except by ``method="exact"``, the test
reference): both iterative methods work on the small m x m operator

    M = J J^T,    M u = J (J^T u),    sigma_max(J) = sqrt(lambda_max(M)),

with one vector-Jacobian product (J^T u, a backward pass through the graph of a
single forward pass) and one Jacobian-vector product (J v, by the
double-backward trick through the graph of g(u0) = J^T u0, which is linear in
u0; see :func:`_operator`) per iteration.  Neither product re-runs the forward
pass, so one iteration costs about two backward passes.  Working in the m-dimensional output
space keeps every stored vector 512 floats long, whatever the image size.

``fn`` must map a batch (B, ...) to (B, m) *per sample* (no interaction across
the batch, i.e. eval mode): then J is block diagonal and one batched product
serves every image; each image converges (and is frozen) on its own.

Both estimates approach sigma_max from below (a Rayleigh quotient / the top
Ritz value never exceed lambda_max), so an under-converged estimate overstates
eps_x = sigma_f / ||J||_2.  Iterations stop on a relative tolerance, and the
result says how converged each estimate is.

- ``"power"``: power iteration on M; the stopping quantity is the relative
  change of successive estimates.
- ``"lanczos"``: Lanczos on M with full re-orthogonalization (Golub & Van Loan,
  Matrix Computations, Sec. 10.1); the top Ritz value theta has residual
  r = |beta_k s_k| and some eigenvalue of M lies in [theta - r, theta + r]
  (the Ritz-pair residual bound, ibid. Sec. 10.1.4); the stopping quantity is the
  implied relative error bound on sigma, (sqrt(theta + r) - sqrt(theta)) / sqrt(theta).
- ``"exact"``: the full Jacobian by reverse mode and its largest singular value
  (torch.linalg.matrix_norm(ord=2)); for small inputs only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import torch
from torch.func import jacrev, jvp

from robustbench_iqa.errors import InputError


class SpectralMethod(StrEnum):
    POWER = "power"
    LANCZOS = "lanczos"
    EXACT = "exact"


@dataclass(frozen=True)
class SpectralNormEstimate:
    """Per-image estimates of ||J_B(x)||_2.

    ``value`` (B,); ``iterations`` (B,) operator applications used per image;
    ``rel_change`` (B,) the stopping quantity (0 for exact);
    ``converged`` (B,) whether it fell below ``rtol``;
    ``output`` (B, m) the value B(x) of the forward pass the estimate used
    (so callers need not run the forward pass again).
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


FeatureMap = Callable[[torch.Tensor], torch.Tensor]


def _random_unit(shape: tuple[int, ...], *, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    dev = generator.device if generator is not None else like.device
    u = torch.randn(shape, generator=generator, device=dev, dtype=like.dtype).to(like.device)
    return u / u.norm(dim=-1, keepdim=True).clamp_min(1e-30)


def _operator(fn: FeatureMap, x: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """B(x) and the map u -> J J^T u on (B, m), from one forward pass.

    ``J^T u`` is a backward pass through the retained graph of the forward pass.
    ``J v`` uses the double-backward trick: at the first product, g(u0) = J^T u0
    is computed with ``create_graph=True`` (u0 a leaf); g is linear in u0, so
    d<g(u0), v>/du0 = J v for any v: one backward pass through g's graph, with
    no recomputation of B(x) (which ``torch.func.jvp`` would redo at every
    call, and ``torch.func.linearize`` would trace at a cost of tens of forward
    passes).  Models whose operations lack double-backward support fall back to
    ``torch.func.jvp``.  The products are exact (same autograd derivatives).
    """
    x = x.detach()
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        out = fn(xg)
    if out.dim() != 2 or out.shape[0] != x.shape[0]:
        raise InputError(f"the feature map must return shape (B, m), got {tuple(out.shape)}")
    if not out.requires_grad:  # B does not depend on x: J = 0
        return out.detach(), lambda u: torch.zeros_like(u)
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
        if not forward_mode and g is not None and u0 is not None:
            try:
                with torch.enable_grad():
                    (jv,) = torch.autograd.grad(g, u0, v, retain_graph=True, allow_unused=True,
                                                materialize_grads=True)
                return jv
            except RuntimeError:  # an operation without double backward: forward mode instead
                forward_mode = True
        return jvp(fn, (x,), (v,))[1]

    def matvec(u: torch.Tensor) -> torch.Tensor:
        return jv_of(jtu_of(u)).detach()

    return out.detach(), matvec


def _power(
    matvec: Callable[[torch.Tensor], torch.Tensor], out: torch.Tensor, *, rtol: float, max_iter: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    bsz = out.shape[0]
    u = _random_unit(tuple(out.shape), like=out, generator=generator)
    lam = torch.zeros(bsz, dtype=out.dtype, device=out.device)
    rel = torch.full_like(lam, float("inf"))
    iters = torch.zeros(bsz, dtype=torch.long, device=out.device)
    active = torch.ones(bsz, dtype=torch.bool, device=out.device)
    for _ in range(max_iter):
        w = matvec(u)
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
    return lam.sqrt(), iters, rel, rel < rtol, u


def _lanczos(
    matvec: Callable[[torch.Tensor], torch.Tensor], out: torch.Tensor, *, rtol: float, max_iter: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    bsz, m = out.shape
    dt, dev = torch.float64, out.device
    max_iter = min(max_iter, m)
    q = _random_unit((bsz, m), like=out, generator=generator).to(dt)
    basis = torch.zeros(bsz, max_iter + 1, m, dtype=dt, device=dev)
    basis[:, 0] = q
    alphas = torch.zeros(bsz, max_iter, dtype=dt, device=dev)
    betas = torch.zeros(bsz, max_iter, dtype=dt, device=dev)
    sig = torch.zeros(bsz, dtype=dt, device=dev)
    vec = q.clone()  # Ritz vector of the largest Ritz value
    rel = torch.full((bsz,), float("inf"), dtype=dt, device=dev)
    iters = torch.zeros(bsz, dtype=torch.long, device=dev)
    active = torch.ones(bsz, dtype=torch.bool, device=dev)
    for k in range(max_iter):
        w = matvec(basis[:, k].to(out.dtype)).to(dt)
        a = (w * basis[:, k]).sum(-1)
        alphas[:, k] = torch.where(active, a, alphas[:, k])
        # Full re-orthogonalization against the basis so far (twice is enough).
        vs = basis[:, : k + 1]
        for _ in range(2):
            w = w - torch.einsum("bkm,bk->bm", vs, torch.einsum("bkm,bm->bk", vs, w))
        b = w.norm(dim=-1)
        betas[:, k] = b
        # Ritz values of the (k+1) x (k+1) tridiagonal T_k.
        t = torch.diag_embed(alphas[:, : k + 1])
        if k > 0:
            off = betas[:, :k]
            t = t + torch.diag_embed(off, offset=1) + torch.diag_embed(off, offset=-1)
        evals, evecs = torch.linalg.eigh(t)
        theta = evals[:, -1].clamp_min(0.0)
        resid = (b * evecs[:, -1, -1]).abs()
        s_now = theta.sqrt()
        s_hi = (theta + resid).sqrt()
        new_rel = torch.where(s_now > 0, (s_hi - s_now) / s_now.clamp_min(1e-300), torch.zeros_like(s_now))
        sig = torch.where(active, s_now, sig)
        ritz = torch.einsum("bkm,bk->bm", basis[:, : k + 1], evecs[:, :, -1])
        vec = torch.where(active[:, None], ritz, vec)
        rel = torch.where(active, new_rel, rel)
        iters = iters + active.long()
        invariant = b <= 1e-12 * theta.clamp_min(1e-300).sqrt()  # Krylov space exhausted: exact
        rel = torch.where(active & invariant, torch.zeros_like(rel), rel)
        active = active & (rel >= rtol) & ~invariant
        if not bool(active.any()):
            break
        basis[:, k + 1] = torch.where(b[:, None] > 0, w / b.clamp_min(1e-300)[:, None], basis[:, k + 1])
    vec = vec / vec.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    return sig.to(out.dtype), iters, rel.to(out.dtype), rel < rtol, vec.to(out.dtype)


def _exact(fn: FeatureMap, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach()
    values = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]

        def single(z: torch.Tensor) -> torch.Tensor:
            return fn(z[None])[0]

        jac = jacrev(single)(xi[0])  # (m, *input_shape)
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
) -> SpectralNormEstimate:
    """Estimate ||J_fn(x_i)||_2 for every image x_i of the batch ``x``.

    Args:
        fn: per-sample feature map (B, ...) -> (B, m), differentiable.
        x: input batch.
        method: ``"lanczos"`` (default), ``"power"`` or ``"exact"``.
        rtol: relative tolerance on the estimate (see module docstring).
        max_iter: at most this many operator applications (J J^T products).
        generator: source of the random start vector.
    """
    method = SpectralMethod(method)
    if not (rtol > 0):
        raise InputError(f"rtol must be > 0, got {rtol!r}")
    if max_iter < 1:
        raise InputError(f"max_iter must be >= 1, got {max_iter!r}")
    if method is SpectralMethod.EXACT:
        val, out = _exact(fn, x)
        bsz = x.shape[0]
        return SpectralNormEstimate(
            value=val.detach(),
            iterations=torch.zeros(bsz, dtype=torch.long),
            rel_change=torch.zeros(bsz, dtype=val.dtype),
            converged=torch.ones(bsz, dtype=torch.bool),
            method=method,
            output=out.detach(),
        )
    out, matvec = _operator(fn, x)
    solver = _power if method is SpectralMethod.POWER else _lanczos
    val, iters, rel, conv, vec = solver(matvec, out, rtol=rtol, max_iter=max_iter, generator=generator)
    return SpectralNormEstimate(
        value=val, iterations=iters, rel_change=rel, converged=conv, method=method, output=out,
        output_vector=vec,
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
