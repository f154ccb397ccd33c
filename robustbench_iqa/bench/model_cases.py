"""The cases of one model, in priority order, each within its budget.

:class:`ModelCases` runs what :mod:`robustbench_iqa.bench.harness` describes for
one model: it measures the unit costs (forward pass, time per spectral
iteration, attack step, draw, memory subprocess) as it goes, and caps or skips
each later case so that its estimated cost fits its budget
(:mod:`~robustbench_iqa.bench.budget`, :mod:`~robustbench_iqa.bench.plan`).
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch

from robustbench_iqa.bench.budget import BudgetExceeded, ModelBudget, cost_clock, time_limit
from robustbench_iqa.bench.cases import (
    CaseKind,
    CaseSpec,
    DefenseUnavailable,
    make_case,
    measure_peak_mb,
)
from robustbench_iqa.bench.config import (
    ATTACK_TARGET,
    BOUND_DELTA,
    CERTIFY_TARGET,
    EXACT_MAX_JACOBIAN,
    MS_TARGET_FACTOR,
    PREDICT_TARGET,
    REFERENCE_DELTA,
    REFERENCE_RTOL,
    REFERENCE_SEED_OFFSET,
    REFERENCE_STARTS,
    SPECTRAL_ACCURACY,
    UPPER_METHOD,
    WARMUP_ITER,
    BenchConfig,
    BenchRun,
    CaseResult,
)
from robustbench_iqa.bench.memory import cuda_peak_mb, in_subprocess
from robustbench_iqa.bench.peers import attack_pair, official_forward
from robustbench_iqa.bench.plan import PlannedN, fits, plan_count, plan_n
from robustbench_iqa.bench.subjects import Subject, SubjectSpec, build_subject
from robustbench_iqa.bench.timing import CLOCKS, Target, Timing, ratio, time_call
from robustbench_iqa.certify.spectral import DEFAULT_BOUND_ITER, kw_sigma_factor
from robustbench_iqa.errors import InputError

BATCH_SLOWDOWN = 2.0
"""Per-draw cost of a batch over that of a single draw, assumed when planning MS/DMS (see :meth:`ModelCases._probe_per_draw`)."""


class Runner:
    def __init__(self, config: BenchConfig, bar: Any) -> None:
        self.config, self.bar = config, bar

    def time(self, subject: Subject, case: CaseSpec, *, budget_s: float, warmup: int | None = None,
             repeats: int | None = None) -> Timing:
        """Time ``case``: warm-up and timed runs stop within ``min(budget_s, --budget-s)`` (at least one timed run)."""
        run, warm = make_case(subject, case)
        cfg = self.config
        self.bar.set_postfix_str(f"{case.subject.model} {case.kind.value} n={case.n} {case.method}")
        t = time_call(run, repeats=cfg.repeats if repeats is None else repeats, warmup=cfg.warmup if warmup is None else warmup,
                      device=subject.device, budget_s=min(budget_s, cfg.budget_s), warm_fn=warm, clock=cfg.clock)
        self.bar.update(1)
        return t

    def peak(self, subject: Subject, case: CaseSpec) -> float | None:
        if not self.config.memory:
            return None
        if subject.device.type == "cuda":
            return cuda_peak_mb(make_case(subject, case)[0], subject.device)
        return in_subprocess(measure_peak_mb, case)


def _spectral_extra(est: Any, reference: float | None) -> dict[str, Any]:
    value = float(est.value[0])
    extra: dict[str, Any] = {
        "method": est.method.value, "iterations": int(est.iterations[0]), "norm": value,
        "rel_change": _finite(float(est.rel_change[0])), "converged": bool(est.converged[0]),
    }
    if est.products is not None:
        extra["products"] = int(est.products[0])
    if est.upper_bound is not None:
        extra.update(upper_bound=float(est.upper_bound[0]), delta=est.delta, bound_iter=est.bound_iter)
    if reference is not None and reference > 0:
        extra["rel_error"] = abs(value - reference) / reference
        if est.upper_bound is not None:
            extra["upper_over"] = float(est.upper_bound[0]) / reference - 1
    return extra


def _finite(v: float) -> float | None:
    """``v``, or ``None`` where it is not finite (e.g. the change after a single iteration): JSON has no inf."""
    return v if math.isfinite(v) else None


def _method_case(base: CaseSpec, method: str) -> tuple[str, CaseSpec]:
    """The row name and case of one ``--methods`` entry."""
    if method == UPPER_METHOD:
        return f"spectral-{UPPER_METHOD}", replace(base, kind=CaseKind.SPECTRAL, method="lanczos", delta=BOUND_DELTA)
    return f"spectral-{method}", replace(base, kind=CaseKind.SPECTRAL, method=method)


@dataclass
class _Units:
    """Unit costs measured on a model, in seconds of the timing clock, that later estimates use."""

    forward_s: float = 0.0
    cert_s: float = 0.0
    """A certification's time: the warm-up's (``WARMUP_ITER`` iterations) until fs-certify has run."""
    cert_iterations: int = 1
    warm_s: float = 0.0
    """The warm-up certification's time (first-call costs included)."""
    predict_s: float | None = None
    spawn_s: float | None = None
    """What one memory subprocess costs beyond its case (start, imports, building the subject)."""

    @property
    def per_iter_s(self) -> float:
        """One spectral iteration (a J^T q and a J v product), from the warm-up certification.

        A certification's time less the predict part, over its iterations plus one (the forward
        pass with graph and the first backward cost about one iteration): an over-estimate, on
        the safe side.
        """
        rest = self.cert_s - (self.predict_s or 0.0)
        return max(rest, 0.5 * self.cert_s) / (self.cert_iterations + 1)


@dataclass
class _PendingCertify:
    row: CaseResult
    norm: float
    ratio_met: bool


class ModelCases:
    """The cases of one model in priority order, each within its budget (see :mod:`~robustbench_iqa.bench.budget`)."""

    def __init__(self, run: BenchRun, runner: Runner, name: str) -> None:
        cfg = run.config
        self.run, self.runner, self.name, self.cfg = run, runner, name, cfg
        self.cost_now = cost_clock(cfg.clock)
        self.budget = ModelBudget(cfg.model_budget_s, now=self.cost_now)
        self.spec = SubjectSpec(model=name, size=cfg.size, device=cfg.device, seed=cfg.seed, sigma=cfg.sigma)
        self.subject = build_subject(self.spec)
        if self.subject.note:
            run.notes[name] = self.subject.note
        self.units = _Units()
        self.reference: float | None = None
        self.reference_note = "the reference was not measured"
        self.pending: _PendingCertify | None = None
        self.no_certify = ""
        """Why no certification can run (the warm-up was stopped), or empty."""

    # -- helpers -------------------------------------------------------------------------------
    def case(self, kind: CaseKind, **kw: Any) -> CaseSpec:
        cfg = self.cfg
        opts: dict[str, Any] = {"batch_size": cfg.batch_size, "rtol": cfg.rtol, "max_iter": cfg.max_iter,
                                "denoiser": cfg.denoiser, "seed": cfg.seed, **kw}
        return CaseSpec(subject=self.spec, kind=kind, **opts)

    def row(self, c: CaseSpec, t: Timing, *, name_: str | None = None, **kw: Any) -> CaseResult:
        return CaseResult(model=self.name, case=name_ or c.kind.value, size=c.subject.size, n=c.n or None,
                          ms=t.median_ms, ratio=ratio(t.median_ms, self.f_ms), runs_ms=list(t.runs_ms), **kw)

    @property
    def f_ms(self) -> float:
        return self.units.forward_s * 1e3

    @functools.cached_property
    def out_dim(self) -> int:
        """m, the dimension of the feature map whose Jacobian's norm is estimated."""
        s = self.subject
        with torch.no_grad():
            return int(s.fs.normalized_features(s.x, s.ref).shape[1])

    def cap(self, label: str, reason: str) -> None:
        self.run.capped[f"{self.name}/{label}"] = reason

    def cap_outcome(self, label: str, *, converged: bool, iterations: int) -> None:
        """Say, after a capped spectral run, whether the cap bound (it did not if the run converged)."""
        key = f"{self.name}/{label}"
        if key in self.run.capped and "capped" in self.run.capped[key]:
            self.run.capped[key] += (f"; did not bind: converged after {iterations} iterations" if converged
                                     else "; bound: stopped unconverged")

    def case_budget(self) -> float:
        return self.budget.case_budget(self.cfg.case_budget_s)

    def timed(self, c: CaseSpec, *, budget_s: float | None = None, **kw: Any) -> Timing:
        return self.runner.time(self.subject, c, budget_s=self.case_budget() if budget_s is None else budget_s, **kw)

    def peak(self, c: CaseSpec, run_s: float) -> float | None:
        """Peak memory of ``c`` in a subprocess, if its estimated cost fits (else recorded as skipped)."""
        if not self.cfg.memory:
            return None
        if self.subject.device.type != "cuda":
            why = self.budget.spent_reason()
            if why is None and self.units.spawn_s is not None:
                why = fits(self.units.spawn_s + run_s, budget_s=self.case_budget(),
                           what="the memory subprocess (start, imports, model, one run)")
            if why is not None:
                self.cap(f"{c.kind.value} n={c.n} peak memory", why)
                return None
        t0 = self.cost_now()
        peak = self.runner.peak(self.subject, c)
        spent = self.cost_now() - t0
        if self.subject.device.type != "cuda":
            self.units.spawn_s = max(self.units.spawn_s or 0.0, spent - run_s, 0.0)
        return peak

    # -- the stages, in priority order ---------------------------------------------------------
    def stages(self) -> list[tuple[str, Callable[[], Iterator[CaseResult]], bool]]:
        """``(label, stage, always)``: the warm-up, forward and fs-predict always run (fs-certify plans
        itself against what is left); the rest while the model's budget lasts."""
        cfg = self.cfg
        out: list[tuple[str, Callable[[], Iterator[CaseResult]], bool]] = [
            ("warm-up", self._warm_up, True), ("forward", self._forward, True),
            ("fs-predict", self._fs_predict, True), ("fs-certify", self._fs_certify, True),
            ("spectral-reference", self._reference, False),
        ]
        if cfg.peers:
            out.append(("peers", self._peers, False))
        out += [(f"spectral-{m}", partial(self._method, m), False) for m in cfg.methods]
        out += [(CaseKind.MS_PREDICT.value, partial(self._sampling, CaseKind.MS_PREDICT), False),
                (CaseKind.DMS_PREDICT.value, partial(self._sampling, CaseKind.DMS_PREDICT), False)]
        if cfg.memory:
            out += [(f"memory-{k.value} n={n}", partial(self._memory, k, n), False)
                    for n in cfg.memory_n for k in (CaseKind.FS_PREDICT, CaseKind.FS_CERTIFY)]
        if cfg.exact:
            out.append(("exact", self._exact, False))
        return out

    def cases(self) -> Iterator[CaseResult]:
        for label, stage, always in self.stages():
            why = None if always else self.budget.spent_reason()
            if why is not None:
                self.cap(label, why)
            else:
                t0 = self.cost_now()
                self.runner.bar.set_postfix_str(f"{self.name} {label}")
                yield from stage()
                self.run.spent_s[f"{self.name}/{label}"] = self.cost_now() - t0
            if self.pending is not None and label != "fs-certify":
                yield self._finish_certify()
        if self.pending is not None:
            yield self._finish_certify()

    def _warm_up(self) -> Iterator[CaseResult]:
        # Steady state first: the allocator serves fresh large blocks with new pages, and their page
        # faults count in the CPU clock (default-nr, 384x512: a forward pass took 40 ms of CPU time
        # in a fresh process, 24 ms once a certification had run).  One untimed certification puts
        # every case, the unit included, in the state certification leaves the process in.  It stops
        # after WARMUP_ITER iterations (it only has to exercise the code), and its time is the first
        # estimate of an iteration's cost, which bounds fs-certify itself.
        # It is stopped (after the torch operation running then) when the model's budget runs out:
        # first-call costs can be large (92 s of CPU for st-lpips-alex at 384x512, 7 s afterwards),
        # and a VGG-16 network's exceed any CPU budget.
        now = CLOCKS[self.cfg.clock]
        t0 = now()
        try:
            with time_limit(self.budget.left_s, clock=self.cfg.clock):
                make_case(self.subject, self.case(CaseKind.FS_CERTIFY, n=self.cfg.fs_n, max_iter=WARMUP_ITER))[0]()
        except BudgetExceeded as exc:
            self.no_certify = (f"the warm-up certification ({WARMUP_ITER} spectral iteration, untimed) was stopped "
                               f"({exc}, what was left of the model's budget)")
            self.cap("warm-up", f"stopped: {self.no_certify}; give the model more time (--model-budget-s), a "
                                f"smaller --size or a GPU")
            return iter(())
        self.units.cert_s = self.units.warm_s = now() - t0
        self.units.cert_iterations = WARMUP_ITER
        return iter(())

    def _forward(self) -> Iterator[CaseResult]:
        c = self.case(CaseKind.FORWARD)
        t = self.timed(c)
        self.units.forward_s = t.median_ms / 1e3
        yield self.row(c, t, peak_mb=self.peak(c, self.units.forward_s), extra={"feature_dim": self.subject.feature_dim})

    def _fs_predict(self) -> Iterator[CaseResult]:
        c = self.case(CaseKind.FS_PREDICT, n=self.cfg.fs_n)
        t = self.timed(c)
        self.units.predict_s = t.median_ms / 1e3
        r = ratio(t.median_ms, self.f_ms)
        yield self.row(c, t, target=PREDICT_TARGET.label, met=PREDICT_TARGET.met(r),
                       peak_mb=self.peak(c, self.units.predict_s), extra={"over_target": PREDICT_TARGET.shortfall(r)})

    def _fs_certify(self) -> Iterator[CaseResult]:
        # The target may use what is left of the model's budget (not only one case budget): max_iter
        # is capped so that one run fits it; a capped run that did not converge says so.
        c = self.case(CaseKind.FS_CERTIFY, n=self.cfg.fs_n)
        u = self.units
        if self.no_certify:
            self.cap("fs-certify", f"skipped: {self.no_certify}")
            self.reference_note = "fs-certify was skipped"
            return iter(())

        def planned() -> PlannedN:
            return plan_count(c.max_iter, unit_s=u.per_iter_s, budget_s=max(self.budget.left_s, 1e-9),
                              what="max_iter", fixed_s=(u.predict_s or 0.0) + u.per_iter_s)

        plan = planned()
        if plan.reason is not None and self.budget.left_s >= u.warm_s:
            # The warm-up's time includes first-call costs (77 s of CPU for the first certification
            # of st-lpips-vgg at 64x96, 0.34 s for the second): time a steady-state estimate of
            # WARMUP_ITER iterations (at most the warm-up's cost, which is left), then plan again.
            s, now = self.subject, CLOCKS[self.cfg.clock]
            t0 = now()
            s.fs.spectral_estimate(s.x, s.ref, rtol=c.rtol, max_iter=WARMUP_ITER,
                                   generator=torch.Generator(device=s.device).manual_seed(c.seed))
            u.cert_s, u.cert_iterations = now() - t0 + (u.predict_s or 0.0), WARMUP_ITER
            plan = planned()
        if plan.reason is not None:
            self.cap("fs-certify", plan.reason if plan.n is not None else
                     f"{plan.reason}; give the model more time (--model-budget-s), a smaller --size or a GPU")
        if plan.n is None:
            self.reference_note = "fs-certify was skipped"
            return iter(())
        c = replace(c, max_iter=plan.n)
        try:  # planned to fit what is left; stopped if it does not
            with time_limit(self.budget.left_s, clock=self.cfg.clock):
                t = self.timed(c, warmup=0)  # the warm-up certification was this very call (fewer iterations)
        except BudgetExceeded as exc:
            self.cap("fs-certify", f"stopped: it ran {exc} (what was left of the model's budget)")
            self.reference_note = "fs-certify was stopped"
            return iter(())
        r = ratio(t.median_ms, self.f_ms)
        cert = t.result[0]
        u.cert_s, u.cert_iterations = t.median_ms / 1e3, max(int(cert.spectral_iterations), 1)
        self.cap_outcome("fs-certify", converged=float(cert.spectral_rel_change) < c.rtol,
                         iterations=int(cert.spectral_iterations))
        products = getattr(cert.evidence, "products", None)  # the certification's own estimate's count
        row = self.row(c, t, target=CERTIFY_TARGET.label, met=None, peak_mb=self.peak(c, t.median_ms / 1e3),
                       extra={"iterations": cert.spectral_iterations, "norm": cert.spectral_norm,
                              "rel_change": _finite(cert.spectral_rel_change), "over_target": CERTIFY_TARGET.shortfall(r),
                              "products": products,
                              "study_ratio": 6.9 / 0.033})
        converged = float(cert.spectral_rel_change) < c.rtol
        if c.max_iter < self.cfg.max_iter:
            row.extra.update(max_iter=c.max_iter, converged=converged)
        if not converged:
            # Stopped by max_iter: the time is a lower bound of a converged certification's.
            row.extra["warning"] = f"spectral norm not converged within max_iter={c.max_iter}: the ratio is a lower bound"
            if CERTIFY_TARGET.met(r):
                row.extra.update(norm_checked=False, norm_check="not checked: the estimate did not converge")
                return iter((row,))
        self.pending = _PendingCertify(row, cert.spectral_norm, CERTIFY_TARGET.met(r))
        return iter(())

    def _finish_certify(self) -> CaseResult:
        """fs-certify's row with its norm check: met only if the ratio is met *and* the norm was checked."""
        assert self.pending is not None
        p, self.pending = self.pending, None
        row = p.row
        if self.reference is None:
            row.extra.update(norm_checked=False, norm_check=f"not checked: {self.reference_note}")
            row.met = False if not p.ratio_met else None
            return row
        rel_err = abs(p.norm - self.reference) / self.reference if self.reference > 0 else 0.0
        row.extra.update(norm_checked=True, rel_error=rel_err,
                         norm_check=f"within {SPECTRAL_ACCURACY:.0%}" if rel_err <= SPECTRAL_ACCURACY
                         else f"off by {rel_err:.2%}")
        row.met = p.ratio_met and rel_err <= SPECTRAL_ACCURACY
        return row

    def _reference(self) -> Iterator[CaseResult]:
        """The reference norm of the subject's input (module docstring, item 5), within the case budget."""
        s, base, m = self.subject, self.case(CaseKind.SPECTRAL), self.out_dim
        budget = self.case_budget()
        exact_s = m * self.units.per_iter_s  # m vector-Jacobian products (measured: about one iteration each)
        if m * s.x[0].numel() <= EXACT_MAX_JACOBIAN and exact_s <= budget:
            t = self.timed(replace(base, method="exact"), warmup=0, repeats=1)
            self.reference = float(t.result.value[0])
            yield self.row(base, t, name_="spectral-exact",
                           extra={**_spectral_extra(t.result, None), "role": "reference", "reference": "exact SVD",
                                  "forward_ms": self.f_ms})
            return
        # Fewer starts before fewer iterations: a start at rtol 1e-6 needs about twice the iterations
        # of fs-certify's rtol (measured: 9 for 6, 21 for 12), and an unconverged reference checks nothing.
        need = 2 * self.units.cert_iterations + 2
        for starts in range(REFERENCE_STARTS, 0, -1):
            plan = plan_count(1024, unit_s=self.units.per_iter_s, budget_s=budget, what="max_iter", runs=starts)
            if plan.n is not None and plan.n >= need:
                break
        if plan.reason is not None:
            fewer = (f"{starts} start(s) instead of {REFERENCE_STARTS} (each needs about {need} iterations); "
                     if starts < REFERENCE_STARTS else "")
            self.cap("spectral-reference", fewer + plan.reason)
        if plan.n is None:
            self.reference_note = f"the reference was skipped ({plan.reason})"
            return
        cap = plan.n
        bound_iter = min(DEFAULT_BOUND_ITER, cap)
        bounded = math.isfinite(kw_sigma_factor(bound_iter, m, REFERENCE_DELTA))  # else too few products to bound
        seeds = [base.seed + REFERENCE_SEED_OFFSET + i for i in range(starts)]
        runs = []
        for i, seed_ in enumerate(seeds):
            c = replace(base, method="lanczos", rtol=REFERENCE_RTOL, max_iter=cap, seed=seed_,
                        delta=REFERENCE_DELTA if i == 0 and bounded else None, bound_iter=bound_iter)
            runs.append(self.timed(c, warmup=0, repeats=1))  # the reference; its time is not a target
        values = [float(t.result.value[0]) for t in runs]
        value = max(values)
        converged = all(bool(t.result.converged[0]) for t in runs)
        upper = float(runs[0].result.upper_bound[0]) if bounded else None
        ms = statistics.median(t.median_ms for t in runs)
        extra: dict[str, Any] = {
            "role": "reference", "reference": f"lanczos, {starts} independent start(s), rtol {REFERENCE_RTOL:g}",
            "norm": value, "start_norms": values, "seeds": seeds,
            "spread": (value - min(values)) / value if value > 0 else 0.0,
            "iterations": max(int(t.result.iterations[0]) for t in runs),
            "products": max(int(t.result.products[0]) for t in runs),
            "upper_bound": upper, "delta": REFERENCE_DELTA, "bound_iter": bound_iter,
            "upper_over": upper / value - 1 if upper is not None and value > 0 else None,
            "forward_ms": self.f_ms, "max_iter": cap, "converged": converged,
        }
        self.cap_outcome("spectral-reference", converged=converged, iterations=extra["iterations"])
        if converged:
            self.reference = value
        else:
            extra["warning"] = f"may not have converged: max_iter capped at {cap} (rtol {REFERENCE_RTOL:g} not reached)"
            self.reference_note = f"the reference did not converge within its capped max_iter={cap}"
        yield CaseResult(model=self.name, case="spectral-reference", size=self.cfg.size, n=None, ms=ms,
                         ratio=ratio(ms, self.f_ms), runs_ms=[t.median_ms for t in runs], extra=extra)

    def _peers(self) -> Iterator[CaseResult]:
        """The official forward pass (where one is known) and I-FGSM against torchattacks' BIM
        (:mod:`robustbench_iqa.bench.peers`), with the step count capped to the case budget."""
        cfg, s = self.cfg, self.subject
        clock = CLOCKS[cfg.clock]

        def timed(fn: Callable[[], Any], label: str, budget_s: float) -> Timing:
            self.runner.bar.set_postfix_str(f"{self.name} {label}")
            return time_call(fn, repeats=cfg.repeats, warmup=cfg.warmup, device=s.device, budget_s=budget_s,
                             clock=cfg.clock)

        def result(label: str, t: Timing, n: int | None = None, **kw: Any) -> CaseResult:
            return CaseResult(model=self.name, case=label, size=s.spec.size, n=n, ms=t.median_ms,
                              ratio=ratio(t.median_ms, self.f_ms), runs_ms=list(t.runs_ms), **kw)

        official = official_forward(s)
        if official is not None:
            t = timed(official, "peer-forward", self.case_budget())
            yield result("peer-forward", t, extra={"peer": "official package forward",
                                                    "suite_over_peer": self.f_ms / t.median_ms})
        start = self.cost_now()
        # A one-step probe of each attack: its second run's time is the cost of one step (and the
        # per-run overhead), on the safe side.
        unit = 0.0
        for fn in attack_pair(s, steps=1):
            fn()
            t0 = clock()
            fn()
            unit += clock() - t0
        budget = self.case_budget() - (self.cost_now() - start)
        plan = plan_count(cfg.attack_steps, unit_s=unit, budget_s=max(budget, 1e-9), what="steps",
                          runs=cfg.warmup + 1)
        if plan.reason is not None:
            self.cap("peer-bim / attack-ifgsm", plan.reason + " (both attacks run the same steps; the ratio is per step)")
        if plan.n is None:
            return
        steps = plan.n
        suite, peer = attack_pair(s, steps=steps)
        left = max(budget, 1e-9)
        tp = timed(peer, "peer-bim", left / 2)
        ts = timed(suite, "attack-ifgsm", left / 2)
        over = ts.median_ms / tp.median_ms
        yield result("peer-bim", tp, steps, extra={"peer": "torchattacks.BIM", "steps_requested": cfg.attack_steps})
        yield result("attack-ifgsm", ts, steps, target=ATTACK_TARGET.label, met=ATTACK_TARGET.met(over),
                     extra={"suite_over_peer": over, "over_target": ATTACK_TARGET.shortfall(over),
                            "steps_requested": cfg.attack_steps})

    def _capped_spectral(self, base: CaseSpec, method: str, per_iter_s: float, label: str) -> CaseSpec | None:
        """The method's case with ``max_iter`` capped to the case budget (``None``: skipped, recorded)."""
        label_, c = _method_case(base, method)
        plan = plan_count(c.max_iter, unit_s=per_iter_s, budget_s=self.case_budget(), what="max_iter",
                          runs=self.cfg.warmup + 1)
        if plan.reason is not None:
            self.cap(label, plan.reason)
        if plan.n is None:
            return None
        if plan.n < c.max_iter:
            c = replace(c, max_iter=plan.n, bound_iter=min(c.bound_iter, plan.n))
            if c.delta is not None and not math.isfinite(kw_sigma_factor(c.bound_iter, self.out_dim, c.delta)):
                self.cap(label, f"skipped: {plan.n} products cannot give a finite upper bound at delta={c.delta:g}")
                return None
        return c

    def _method(self, method: str) -> Iterator[CaseResult]:
        label = f"spectral-{method}"
        if method == "exact":  # no iterations to cap: m vector-Jacobian products per run
            m = self.out_dim
            why = fits((self.cfg.warmup + 1) * m * self.units.per_iter_s, budget_s=self.case_budget(),
                       what=f"the exact Jacobian ({m} products per run)")
            if why is not None:
                self.cap(label, why)
                return
            c: CaseSpec | None = replace(self.case(CaseKind.SPECTRAL), method="exact")
        else:
            c = self._capped_spectral(self.case(CaseKind.SPECTRAL), method, self.units.per_iter_s, label)
        if c is None:
            return
        t = self.timed(c)
        extra = _spectral_extra(t.result, self.reference)
        self.cap_outcome(label, converged=extra["converged"], iterations=extra["iterations"])
        if c.max_iter < self.cfg.max_iter:
            extra["max_iter"] = c.max_iter
        yield self.row(c, t, name_=label, extra=extra)

    def _sampling(self, kind: CaseKind) -> Iterator[CaseResult]:
        cfg = self.cfg
        ideal_kind, n = ((CaseKind.IDEAL_FORWARDS, cfg.ms_n) if kind is CaseKind.MS_PREDICT
                         else (CaseKind.IDEAL_DMS, cfg.dms_n))
        start = self.cost_now()
        per_draw = self._probe_per_draw(self.case(kind, n=1), self.case(ideal_kind, n=1))
        budget = max(self.case_budget() - (self.cost_now() - start), 1e-9)
        # The least the case costs: the warm-up and one timed run of the ideal and of the defense
        # (``per_draw`` is both), and the memory run; further repeats only run while they fit.
        repeats = cfg.warmup + 1 + (1 if cfg.memory else 0)
        planned = plan_n(n, per_draw_s=per_draw, budget_s=budget, batch_size=cfg.batch_size, repeats=repeats)
        if planned.reason is not None:
            self.cap(f"{kind.value} n={n}", planned.reason)
        if planned.n is None:
            self.runner.bar.update(2)
            return
        n = planned.n
        ci = self.case(ideal_kind, n=n)
        share = budget / (3 if cfg.memory else 2)  # the ideal, the defense (and its memory run)
        ti = self.timed(ci, budget_s=share)
        yield self.row(ci, ti, extra={"per_draw_ms": ti.median_ms / n})
        c = self.case(kind, n=n)
        try:
            t = self.timed(c, budget_s=share)
        except DefenseUnavailable as exc:
            self.runner.bar.update(1)
            self.run.unavailable[f"{self.name}/{kind.value}"] = str(exc)
            return
        r, limit = ratio(t.median_ms, self.f_ms), MS_TARGET_FACTOR * ratio(ti.median_ms, self.f_ms)
        target = Target(limit, f"<= {MS_TARGET_FACTOR}x {n} forwards")
        yield self.row(c, t, target=target.label, met=target.met(r), peak_mb=self.peak(c, t.median_ms / 1e3),
                       extra={"ratio_to_ideal": t.median_ms / ti.median_ms, "per_draw_ms": t.median_ms / n,
                              "ratio_to_n_single_forwards": r / n, "extrapolated_ratio_n2000": r * 2000 / n})

    def _probe_per_draw(self, c: CaseSpec, ci: CaseSpec) -> float:
        """Seconds per draw of the sampling case ``c`` plus its ideal ``ci``, from one draw of each.

        One draw of each is run twice (the second timed with the run's clock), and the time is
        multiplied by ``BATCH_SLOWDOWN``: on a CPU a batch of 16 images at 384x512 costs up to
        2.9x 16 single passes (its activations no longer fit in cache; measured), and a planned
        MS case overran its budget by 1.23x without the factor.
        A single draw keeps the probe itself cheap: DMS with the 17x64 DnCNN at 384x512 costs
        seconds per draw on one CPU thread.
        """
        now = CLOCKS[self.cfg.clock]
        spent = 0.0
        for spec in (ci, c):
            try:
                run, _ = make_case(self.subject, spec)
            except DefenseUnavailable:
                continue  # reported when the case itself is built
            run()  # first-call costs are not per-draw costs
            t0 = now()
            run()
            spent += now() - t0
        return spent * BATCH_SLOWDOWN

    def _memory(self, kind: CaseKind, n: int) -> Iterator[CaseResult]:
        """Peak memory of FS predict / certify at N = ``n`` (skipped, with its reason, when over budget)."""
        u, fs_n = self.units, self.cfg.fs_n
        per_draw = max((u.predict_s or u.forward_s) - u.forward_s, 0.0) / fs_n
        run_s = (u.forward_s if kind is CaseKind.FS_PREDICT else u.cert_s) + per_draw * max(n - (
            0 if kind is CaseKind.FS_PREDICT else fs_n), 0)
        c = self.case(kind, n=n)
        self.runner.bar.set_postfix_str(f"{self.name} memory {kind.value} n={n}")
        peak = self.peak(c, run_s)
        self.runner.bar.update(1)
        if peak is not None:
            yield CaseResult(model=self.name, case=f"memory-{kind.value}", size=self.cfg.size, n=n, ms=None,
                             ratio=None, peak_mb=peak)

    def _exact(self) -> Iterator[CaseResult]:
        try:
            yield from self._exact_cases()
        except (RuntimeError, InputError) as exc:  # e.g. an architecture that needs a larger input
            self.run.unavailable[f"{self.name}/spectral-exact"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"

    def _exact_cases(self) -> Iterator[CaseResult]:
        """The spectral-norm methods against the exact Jacobian on a small input."""
        cfg = self.cfg
        spec = SubjectSpec(model=self.name, size=cfg.exact_size, device=cfg.device, seed=cfg.seed, sigma=cfg.sigma)
        subject = build_subject(spec)
        base = CaseSpec(subject=spec, kind=CaseKind.FORWARD, seed=cfg.seed, max_iter=cfg.max_iter, rtol=cfg.rtol)
        budget = self.case_budget()
        f = self.runner.time(subject, base, budget_s=budget).median_ms
        # One iteration at the small size, scaled from the main size by the forward passes' ratio.
        per_iter = self.units.per_iter_s * f / self.f_ms
        with torch.no_grad():
            m = int(subject.fs.normalized_features(subject.x, subject.ref).shape[1])
        why = fits(m * per_iter, budget_s=budget, what=f"the exact Jacobian ({m} products) at "
                                                             f"{cfg.exact_size[0]}x{cfg.exact_size[1]}")
        if why is not None:
            self.cap("spectral-exact", why + "; the small-size comparison is skipped")
            return
        exact_case = replace(base, kind=CaseKind.SPECTRAL, method="exact")
        t = self.runner.time(subject, exact_case, warmup=0, repeats=1, budget_s=budget)  # the reference
        exact = float(t.result.value[0])
        rows = [("spectral-exact", t)]
        for method in cfg.methods:
            if method == "exact" or self.budget.spent_reason() is not None:
                if method != "exact":
                    self.cap(f"spectral-{method} {cfg.exact_size[0]}x{cfg.exact_size[1]}", self.budget.spent_reason() or "")
                continue
            label = f"spectral-{method}"
            c = self._capped_spectral(base, method, per_iter, f"{label} {cfg.exact_size[0]}x{cfg.exact_size[1]}")
            if c is not None:
                rows.append((label, self.runner.time(subject, c, budget_s=self.case_budget())))
        for label, tm in rows:
            is_ref = label == "spectral-exact"
            extra = _spectral_extra(tm.result, None if is_ref else exact)
            target = None if is_ref else f"rel. error <= {SPECTRAL_ACCURACY:.0%}"
            met = None if is_ref else extra["rel_error"] <= SPECTRAL_ACCURACY
            if is_ref:
                extra.update(role="reference", reference="exact SVD")
            elif "upper_over" in extra:  # the bound's own check: at or above the exact norm
                met = extra["upper_over"] >= 0
                target = "upper bound >= exact"
            yield CaseResult(model=self.name, case=label, size=cfg.exact_size, n=None, ms=tm.median_ms,
                             ratio=ratio(tm.median_ms, f), target=target, met=met, runs_ms=list(tm.runs_ms),
                             extra={**extra, "forward_ms": f})

