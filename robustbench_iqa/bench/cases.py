"""The benchmark cases: each one a unit of work on a :class:`~robustbench_iqa.bench.subjects.Subject`.

=================  ==========================================================
``forward``        one undefended forward pass ``model(x, ref)`` (the unit)
``fs-predict``     FS-IQA no-certification mode, ``fs.predict(x, n=N)``
``fs-certify``     FS-IQA certification, ``fs.certify``: spectral norm of the
                   Jacobian to ``rtol`` plus the percentile bounds
``ms-predict``     input-space median smoothing (MS), N noisy forwards
``dms-predict``    MS with a DnCNN denoiser in front (DMS), untrained weights
``ideal-forwards`` the ideal cost of MS: N forwards of the clean input in
                   batches, no noise, no sorting ("N forward passes")
``ideal-dms``      the same through denoiser + model
``spectral``       ``jacobian_spectral_norm`` alone with one method (with
                   ``delta`` set: Lanczos and its Kuczynski-Wozniakowski
                   upper bound after ``bound_iter`` products)
=================  ==========================================================

A :class:`CaseSpec` is picklable so that the memory subprocess can rebuild
the case; :func:`make_case` turns it into a zero-argument callable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch
from torch import nn

from robustbench_iqa.bench.memory import cpu_peak_mb, cuda_peak_mb
from robustbench_iqa.bench.subjects import Subject, SubjectSpec, build_subject
from robustbench_iqa.certify.spectral import DEFAULT_BOUND_ITER, jacobian_spectral_norm
from robustbench_iqa.errors import InputError


class CaseKind(StrEnum):
    FORWARD = "forward"
    FS_PREDICT = "fs-predict"
    FS_CERTIFY = "fs-certify"
    MS_PREDICT = "ms-predict"
    DMS_PREDICT = "dms-predict"
    IDEAL_FORWARDS = "ideal-forwards"
    IDEAL_DMS = "ideal-dms"
    SPECTRAL = "spectral"


class DefenseUnavailable(InputError):
    """An input-space defense cannot be built in this installation."""


@dataclass(frozen=True)
class CaseSpec:
    """One case: its kind, the sample count N and the options the kind uses."""

    subject: SubjectSpec
    kind: CaseKind
    n: int = 0
    batch_size: int = 16
    method: str = "lanczos"
    rtol: float = 1e-3
    max_iter: int = 200
    alpha: float = 0.999
    denoiser: tuple[int, int] = (17, 64)
    seed: int = 0
    delta: float | None = None
    bound_iter: int = DEFAULT_BOUND_ITER


def denoiser_module(depth: int, width: int, *, seed: int, device: torch.device) -> nn.Module:
    """An untrained DnCNN (Zhang et al. 2017) of the given depth and width."""
    from robustbench_iqa.certify.denoiser import DnCNN

    den = DnCNN(depth=depth, width=width)
    den.reset_parameters(torch.Generator().manual_seed(seed))
    return den.to(device).eval()


def input_defense(subject: Subject, case: CaseSpec) -> Any:
    """``create_defense("ms"|"dms", ...)`` for the subject, or :class:`DefenseUnavailable`."""
    try:
        from robustbench_iqa.certify.defense import create_defense
    except ImportError as exc:
        raise DefenseUnavailable(f"robustbench_iqa.certify.defense cannot be imported: {exc}") from None
    name = "dms" if case.kind is CaseKind.DMS_PREDICT else "ms"
    opts: dict[str, Any] = {"batch_size": case.batch_size}
    if name == "dms":
        opts["denoiser"] = denoiser_module(*case.denoiser, seed=case.seed, device=subject.device)
    try:
        return create_defense(name, subject.model, sigma=subject.spec.sigma, **opts)
    except (InputError, ImportError, KeyError, TypeError) as exc:
        raise DefenseUnavailable(f"defense {name!r} is unavailable: {exc}") from None


def _generator(subject: Subject, seed: int) -> torch.Generator:
    return torch.Generator(device=subject.device).manual_seed(seed)


def _ideal(subject: Subject, case: CaseSpec, front: nn.Module | None) -> Callable[[], Any]:
    """N forwards of the clean input in batches of ``batch_size`` (the floor of any input-space defense)."""
    bs = max(1, min(case.batch_size, case.n))
    xb = subject.x.expand(bs, *subject.x.shape[1:]).contiguous()
    rb = None if subject.ref is None else subject.ref.expand(bs, *subject.ref.shape[1:]).contiguous()

    @torch.no_grad()
    def run() -> torch.Tensor:
        outs = []
        for start in range(0, case.n, bs):
            c = min(bs, case.n - start)
            z = xb[:c] if front is None else front(xb[:c])
            outs.append(subject.model(z, None if rb is None else rb[:c]))
        return torch.cat(outs)

    return run


def make_case(subject: Subject, case: CaseSpec) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """``(run, warm)``: the case as a callable, and a cheaper one for warm-up runs."""
    x, ref, fs, model = subject.x, subject.ref, subject.fs, subject.model
    kind, n = case.kind, case.n
    if kind is CaseKind.FORWARD:

        @torch.no_grad()
        def forward() -> torch.Tensor:
            return model(x, ref)

        return forward, forward
    if kind is CaseKind.FS_PREDICT:

        def fs_predict(k: int = n) -> torch.Tensor:
            return fs.predict(x, ref, n=k, generator=_generator(subject, case.seed))

        return fs_predict, fs_predict
    if kind is CaseKind.FS_CERTIFY:

        def fs_certify() -> Any:
            return fs.certify(x, ref, n=n, alpha=case.alpha, tau=0.0, generator=_generator(subject, case.seed),
                              method=case.method, rtol=case.rtol, max_iter=case.max_iter, lipschitz=False)

        return fs_certify, fs_certify
    if kind is CaseKind.SPECTRAL:

        def feature_map(z: torch.Tensor) -> torch.Tensor:
            return fs.normalized_features(z, ref)

        def spectral() -> Any:
            return jacobian_spectral_norm(feature_map, x, method=case.method, rtol=case.rtol,
                                          max_iter=max(case.max_iter, case.bound_iter if case.delta else 1),
                                          generator=torch.Generator().manual_seed(case.seed), delta=case.delta,
                                          bound_iter=case.bound_iter)

        return spectral, spectral
    if kind in (CaseKind.MS_PREDICT, CaseKind.DMS_PREDICT):
        defense = input_defense(subject, case)

        def smoothed(k: int = n) -> torch.Tensor:
            return defense.predict(x, ref, n=k, generator=_generator(subject, case.seed))

        return smoothed, lambda: smoothed(min(n, case.batch_size))
    if kind in (CaseKind.IDEAL_FORWARDS, CaseKind.IDEAL_DMS):
        front = denoiser_module(*case.denoiser, seed=case.seed, device=subject.device) if kind is CaseKind.IDEAL_DMS else None
        run = _ideal(subject, case, front)
        warm = _ideal(subject, CaseSpec(case.subject, kind, n=min(n, case.batch_size), batch_size=case.batch_size), front)
        return run, warm
    raise InputError(f"unknown benchmark case {kind!r}")


def measure_peak_mb(case: CaseSpec) -> float:
    """Peak memory (MB) of one run of ``case``, its subject built afresh in this process.

    Called in a spawned subprocess on the CPU (see :mod:`robustbench_iqa.bench.memory`).
    """
    subject = build_subject(case.subject)
    run, _ = make_case(subject, case)
    if subject.device.type == "cuda":
        return cuda_peak_mb(run, subject.device)
    return cpu_peak_mb(run)
