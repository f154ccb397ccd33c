"""The benchmark run: every case of every model, as ratios to one forward pass.

For each model (the embedded defaults, and DBCNN / LPIPS backbones with
random weights where registered), at the main input size (384x512 as in the
FS-IQA study):

1. ``forward``: one undefended forward pass -- the unit of every ratio;
2. ``fs-predict`` (N = ``fs_n``): target <= 1.2x forward;
3. ``fs-certify``: target <= 20x forward with the spectral norm within 1% of
   the reference (the study's ratio is about 6.9 s / 33 ms = 209x, A100,
   384x512, N = 2000);
4. ``ms-predict`` / ``dms-predict`` (N = ``ms_n``): target <= 1.1x the ideal
   cost of N batched forward passes (``ideal-forwards``);
5. the spectral-norm methods side by side against a reference that does not
   share their random start: the exact Jacobian's largest singular value
   (``torch.linalg.matrix_norm(ord=2)``) where the Jacobian fits in
   ``EXACT_MAX_JACOBIAN`` entries (the small size ``exact_size`` always), and
   otherwise the largest of ``REFERENCE_STARTS`` Lanczos runs converged to
   ``1e-6`` from independent starts (seeds offset by ``REFERENCE_SEED_OFFSET``
   from the measured runs'); the first of them also gives the
   Kuczynski-Wozniakowski upper bound at ``REFERENCE_DELTA``, so the norm lies in
   [reference, bound] with probability >= 1 - ``REFERENCE_DELTA``;
6. peak memory per case (one subprocess per case on the CPU), for
   N in ``memory_n`` to show that it does not grow with N.

Before any timing, one untimed certification runs, so that the forward pass
(the unit) and the cases are all timed with the allocator in its steady state.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from robustbench_iqa.bench.cases import (
    CaseKind,
    CaseSpec,
    DefenseUnavailable,
    make_case,
    measure_peak_mb,
)
from robustbench_iqa.bench.memory import cuda_peak_mb, in_subprocess
from robustbench_iqa.bench.peers import attack_pair, official_forward
from robustbench_iqa.bench.plan import PlannedN, plan_n
from robustbench_iqa.bench.subjects import ModelUnavailable, Subject, SubjectSpec, build_subject
from robustbench_iqa.bench.timing import CLOCKS, Target, Timing, ratio, time_call
from robustbench_iqa.certify.bounds import min_samples
from robustbench_iqa.errors import InputError

DEFAULT_MODELS: tuple[str, ...] = ("default-nr", "default-fr", "st-lpips-alex", "dbcnn", "lpips")
PREDICT_TARGET = Target(1.2, "<= 1.2x forward")
CERTIFY_TARGET = Target(20.0, "<= 20x forward, norm within 1%")
MS_TARGET_FACTOR = 1.1
ATTACK_TARGET = Target(1.05, "<= 1.05x torchattacks BIM")
SPECTRAL_ACCURACY = 0.01
REFERENCE_RTOL = 1e-6
REFERENCE_STARTS = 3
REFERENCE_SEED_OFFSET = 1_000_003
REFERENCE_DELTA = 1e-3
EXACT_MAX_JACOBIAN = 2**25
"""The reference is the exact SVD when the Jacobian (m x 3HW) has at most this many entries."""
UPPER_METHOD = "lanczos-upper"
"""A ``--methods`` entry: Lanczos with its upper bound at ``BOUND_DELTA`` (``bound_iter`` products)."""
BOUND_DELTA = 1e-3
SPECTRAL_METHODS = ("power", "lanczos", "exact", UPPER_METHOD)
CERTIFY_ALPHA = 0.999


@dataclass(frozen=True)
class BenchConfig:
    """Settings of one benchmark run (see ``robustbench-iqa bench --help``)."""

    models: tuple[str, ...] = DEFAULT_MODELS
    size: tuple[int, int] = (384, 512)
    exact_size: tuple[int, int] = (48, 64)
    device: str = "cpu"
    repeats: int = 3
    warmup: int = 1
    fs_n: int = 2000
    ms_n: int = 2000
    dms_n: int = 2000
    batch_size: int = 16
    denoiser: tuple[int, int] = (17, 64)
    memory_n: tuple[int, ...] = (500, 2000, 8000)
    methods: tuple[str, ...] = ("power", "lanczos")
    rtol: float = 1e-3
    max_iter: int = 200
    sigma: float = 0.25
    seed: int = 0
    memory: bool = True
    exact: bool = True
    budget_s: float = 60.0
    case_budget_s: float = 60.0
    peers: bool = True
    attack_steps: int = 10
    clock: str = "wall"
    progress: bool = True

    def validate(self) -> BenchConfig:
        for name in ("repeats", "fs_n", "ms_n", "dms_n", "batch_size", "max_iter", "attack_steps"):
            if getattr(self, name) < 1:
                raise InputError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise InputError(f"warmup must be >= 0, got {self.warmup}")
        if any(v < 8 for v in (*self.size, *self.exact_size)):
            raise InputError(f"image sizes must be at least 8x8, got {self.size} and {self.exact_size}")
        if not self.models:
            raise InputError("no models to benchmark")
        if not (0 < self.rtol < 1):
            raise InputError(f"rtol must be in (0, 1), got {self.rtol}")
        unknown = [m for m in self.methods if m not in SPECTRAL_METHODS]
        if unknown:
            raise InputError(f"unknown spectral-norm method(s) {', '.join(unknown)}; choose from {', '.join(SPECTRAL_METHODS)}")
        need = min_samples(sigma=self.sigma, eps=self.sigma, alpha=CERTIFY_ALPHA)
        if min(self.fs_n, *self.memory_n) < need:
            raise InputError(f"FS-IQA certification at alpha={CERTIFY_ALPHA} needs N >= {need}; "
                             f"got fs-n={self.fs_n}, memory-n={','.join(map(str, self.memory_n))}")
        if not (self.case_budget_s > 0):
            raise InputError(f"case-budget-s must be > 0, got {self.case_budget_s}")
        if self.clock not in CLOCKS:
            raise InputError(f"clock must be one of {', '.join(CLOCKS)}, got {self.clock!r}")
        if self.clock == "cpu" and torch.device(self.device).type != "cpu":
            raise InputError("the cpu clock measures CPU time; use --clock wall on a GPU")
        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"device {self.device!r} requested but CUDA is not available")
        return self


@dataclass
class CaseResult:
    """One row of the benchmark: a case of one model."""

    model: str
    case: str
    size: tuple[int, int]
    n: int | None
    ms: float | None
    ratio: float | None
    target: str | None = None
    met: bool | None = None
    peak_mb: float | None = None
    runs_ms: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "case": self.case, "size": list(self.size), "n": self.n, "ms": self.ms,
            "ratio": self.ratio, "target": self.target, "met": self.met, "peak_mb": self.peak_mb,
            "runs_ms": self.runs_ms, **self.extra,
        }


@dataclass
class BenchRun:
    """All rows of a run, the models that could not be measured, and the configuration."""

    config: BenchConfig
    rows: list[CaseResult] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    capped: dict[str, str] = field(default_factory=dict)
    """Cases run at a smaller N than asked, or skipped, to bound their cost (see :mod:`~robustbench_iqa.bench.plan`)."""
    notes: dict[str, str] = field(default_factory=dict)


class _Runner:
    def __init__(self, config: BenchConfig, bar: Any) -> None:
        self.config, self.bar = config, bar

    def time(self, subject: Subject, case: CaseSpec, *, warmup: int | None = None, repeats: int | None = None) -> Timing:
        run, warm = make_case(subject, case)
        self.bar.set_postfix_str(f"{case.subject.model} {case.kind.value} n={case.n} {case.method}")
        t = time_call(run, repeats=self.config.repeats if repeats is None else repeats, warmup=self.config.warmup if warmup is None else warmup,
                      device=subject.device, budget_s=self.config.budget_s, warm_fn=warm, clock=self.config.clock)
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
        "rel_change": float(est.rel_change[0]), "converged": bool(est.converged[0]),
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


def _method_case(base: CaseSpec, method: str) -> tuple[str, CaseSpec]:
    """The row name and case of one ``--methods`` entry."""
    if method == UPPER_METHOD:
        return f"spectral-{UPPER_METHOD}", replace(base, kind=CaseKind.SPECTRAL, method="lanczos", delta=BOUND_DELTA)
    return f"spectral-{method}", replace(base, kind=CaseKind.SPECTRAL, method=method)


def _reference(runner: _Runner, subject: Subject, base: CaseSpec, fwd_ms: float) -> tuple[float, CaseResult]:
    """The reference norm of the subject's input and its row (see the module docstring, item 5)."""
    with torch.no_grad():
        m = int(subject.fs.normalized_features(subject.x, subject.ref).shape[1])
    size = base.subject.size
    if m * subject.x[0].numel() <= EXACT_MAX_JACOBIAN:
        t = runner.time(subject, replace(base, kind=CaseKind.SPECTRAL, method="exact"), warmup=0, repeats=1)
        value = float(t.result.value[0])
        return value, CaseResult(
            model=base.subject.model, case="spectral-exact", size=size, n=None, ms=t.median_ms,
            ratio=ratio(t.median_ms, fwd_ms), runs_ms=list(t.runs_ms),
            extra={**_spectral_extra(t.result, None), "role": "reference", "reference": "exact SVD",
                   "forward_ms": fwd_ms},
        )
    runs = []
    for i in range(REFERENCE_STARTS):
        c = replace(base, kind=CaseKind.SPECTRAL, method="lanczos", rtol=REFERENCE_RTOL, max_iter=1024,
                    seed=base.seed + REFERENCE_SEED_OFFSET + i, delta=REFERENCE_DELTA if i == 0 else None)
        runs.append(runner.time(subject, c, warmup=0, repeats=1))  # the reference; its time is not a target
    values = [float(t.result.value[0]) for t in runs]
    value = max(values)
    upper = float(runs[0].result.upper_bound[0])
    ms = statistics.median(t.median_ms for t in runs)
    extra = {
        "role": "reference", "reference": f"lanczos, {REFERENCE_STARTS} independent starts, rtol {REFERENCE_RTOL:g}",
        "norm": value, "start_norms": values, "seeds": [base.seed + REFERENCE_SEED_OFFSET + i for i in range(REFERENCE_STARTS)],
        "spread": (value - min(values)) / value if value > 0 else 0.0,
        "iterations": max(int(t.result.iterations[0]) for t in runs),
        "products": max(int(t.result.products[0]) for t in runs),
        "upper_bound": upper, "delta": REFERENCE_DELTA, "upper_over": upper / value - 1 if value > 0 else 0.0,
        "forward_ms": fwd_ms,
    }
    return value, CaseResult(model=base.subject.model, case="spectral-reference", size=size, n=None,
                             ms=ms, ratio=ratio(ms, fwd_ms), runs_ms=[t.median_ms for t in runs], extra=extra)


def _peer_cases(runner: _Runner, subject: Subject, fwd_ms: float) -> Iterator[CaseResult]:
    """The official forward pass (where one is known) and I-FGSM against torchattacks' BIM
    (:mod:`robustbench_iqa.bench.peers`), timed in this process like every other case."""
    cfg, spec = runner.config, subject.spec

    def timed(fn: Callable[[], Any], label: str) -> Timing:
        runner.bar.set_postfix_str(f"{spec.model} {label}")
        return time_call(fn, repeats=cfg.repeats, warmup=cfg.warmup, device=subject.device, budget_s=cfg.budget_s,
                         clock=cfg.clock)

    def result(label: str, t: Timing, n: int | None = None, **kw: Any) -> CaseResult:
        return CaseResult(model=spec.model, case=label, size=spec.size, n=n, ms=t.median_ms,
                          ratio=ratio(t.median_ms, fwd_ms), runs_ms=list(t.runs_ms), **kw)

    official = official_forward(subject)
    if official is not None:
        t = timed(official, "peer-forward")
        yield result("peer-forward", t, extra={"peer": "official package forward",
                                                "suite_over_peer": fwd_ms / t.median_ms})
    suite, peer = attack_pair(subject, steps=cfg.attack_steps)
    tp = timed(peer, "peer-bim")
    ts = timed(suite, "attack-ifgsm")
    over = ts.median_ms / tp.median_ms
    yield result("peer-bim", tp, cfg.attack_steps, extra={"peer": "torchattacks.BIM"})
    yield result("attack-ifgsm", ts, cfg.attack_steps, target=ATTACK_TARGET.label, met=ATTACK_TARGET.met(over),
                 extra={"suite_over_peer": over, "over_target": ATTACK_TARGET.shortfall(over)})


def _plan_sampling(runner: _Runner, subject: Subject, c: CaseSpec, ci: CaseSpec) -> PlannedN:
    """The N the sampling case ``c`` and its ideal ``ci`` may use within the case budget.

    One draw of each is run twice (the second timed with the run's clock; a batch of one
    costs at least its share of a full batch on a CPU, so the estimate errs on the safe side);
    their sum, times the timed repeats (and the memory run), is the estimated cost per draw.
    A single draw keeps the probe itself cheap: DMS with the 17x64 DnCNN at 384x512 costs
    seconds per draw on one CPU thread.
    """
    cfg = runner.config
    probe_n = 1
    now = CLOCKS[cfg.clock]
    spent = 0.0
    for spec in (replace(ci, n=probe_n), replace(c, n=probe_n)):
        try:
            run, _ = make_case(subject, spec)
        except DefenseUnavailable:
            continue  # reported when the case itself is built
        run()  # first-call costs are not per-draw costs
        t0 = now()
        run()
        spent += now() - t0
    repeats = cfg.repeats + (1 if cfg.memory else 0)
    return plan_n(c.n, per_draw_s=spent / probe_n, budget_s=cfg.case_budget_s, batch_size=c.batch_size,
                  repeats=repeats)


def _model_cases(run: BenchRun, runner: _Runner, name: str) -> Iterator[CaseResult]:
    cfg = run.config
    spec = SubjectSpec(model=name, size=cfg.size, device=cfg.device, seed=cfg.seed, sigma=cfg.sigma)
    subject = build_subject(spec)
    if subject.note:
        run.notes[name] = subject.note

    def case(kind: CaseKind, **kw: Any) -> CaseSpec:
        opts: dict[str, Any] = {"batch_size": cfg.batch_size, "rtol": cfg.rtol, "max_iter": cfg.max_iter,
                                "denoiser": cfg.denoiser, "seed": cfg.seed, **kw}
        return CaseSpec(subject=spec, kind=kind, **opts)

    def row(c: CaseSpec, t: Timing, fwd_ms: float, *, name_: str | None = None, **kw: Any) -> CaseResult:
        return CaseResult(model=name, case=name_ or c.kind.value, size=c.subject.size, n=c.n or None, ms=t.median_ms,
                          ratio=ratio(t.median_ms, fwd_ms), runs_ms=list(t.runs_ms), **kw)

    # Steady state first: the allocator serves fresh large blocks with new pages, and their page
    # faults count in the CPU clock (default-nr, 384x512: a forward pass took 40 ms of CPU time
    # in a fresh process, 24 ms once a certification had run).  One untimed certification puts
    # every case, the unit included, in the state certification leaves the process in.
    make_case(subject, case(CaseKind.FS_CERTIFY, n=cfg.fs_n))[0]()
    fwd_case = case(CaseKind.FORWARD)
    fwd = runner.time(subject, fwd_case)
    yield row(fwd_case, fwd, fwd.median_ms, peak_mb=runner.peak(subject, fwd_case),
              extra={"feature_dim": subject.feature_dim})
    f = fwd.median_ms
    if cfg.peers:
        yield from _peer_cases(runner, subject, f)

    c = case(CaseKind.FS_PREDICT, n=cfg.fs_n)
    t = runner.time(subject, c)
    r = ratio(t.median_ms, f)
    yield row(c, t, f, target=PREDICT_TARGET.label, met=PREDICT_TARGET.met(r), peak_mb=runner.peak(subject, c),
              extra={"over_target": PREDICT_TARGET.shortfall(r)})

    reference, ref_row = _reference(runner, subject, case(CaseKind.SPECTRAL), f)
    yield ref_row
    for method in cfg.methods:
        label, c = _method_case(case(CaseKind.SPECTRAL), method)
        t = runner.time(subject, c)
        yield row(c, t, f, name_=label, extra=_spectral_extra(t.result, reference))

    c = case(CaseKind.FS_CERTIFY, n=cfg.fs_n)
    t = runner.time(subject, c)
    r = ratio(t.median_ms, f)
    cert = t.result[0]
    rel_err = abs(cert.spectral_norm - reference) / reference if reference > 0 else 0.0
    ok = CERTIFY_TARGET.met(r) and rel_err <= SPECTRAL_ACCURACY
    # The same estimate again, untimed, for its product count (certify returns the norm only).
    est = subject.fs.spectral_estimate(subject.x, subject.ref, rtol=c.rtol, max_iter=c.max_iter,
                                       generator=torch.Generator(device=subject.device).manual_seed(c.seed))
    yield row(c, t, f, target=CERTIFY_TARGET.label, met=ok, peak_mb=runner.peak(subject, c),
              extra={"iterations": cert.spectral_iterations, "norm": cert.spectral_norm, "rel_error": rel_err,
                     "rel_change": cert.spectral_rel_change, "over_target": CERTIFY_TARGET.shortfall(r),
                     "products": int(est.products[0]) if est.products is not None else None,
                     "same_estimate": float(est.value[0]) == cert.spectral_norm,
                     "study_ratio": 6.9 / 0.033})

    for kind, ideal_kind, n in ((CaseKind.MS_PREDICT, CaseKind.IDEAL_FORWARDS, cfg.ms_n),
                                (CaseKind.DMS_PREDICT, CaseKind.IDEAL_DMS, cfg.dms_n)):
        planned = _plan_sampling(runner, subject, case(kind, n=n), case(ideal_kind, n=n))
        if planned.reason is not None:
            run.capped[f"{name}/{kind.value} n={n}"] = planned.reason
        if planned.n is None:
            runner.bar.update(2)
            continue
        n = planned.n
        ci = case(ideal_kind, n=n)
        ti = runner.time(subject, ci)
        yield row(ci, ti, f, extra={"per_draw_ms": ti.median_ms / n})
        c = case(kind, n=n)
        try:
            t = runner.time(subject, c)
        except DefenseUnavailable as exc:
            runner.bar.update(1)
            run.unavailable[f"{name}/{kind.value}"] = str(exc)
            continue
        r, limit = ratio(t.median_ms, f), MS_TARGET_FACTOR * ratio(ti.median_ms, f)
        target = Target(limit, f"<= {MS_TARGET_FACTOR}x {n} forwards")
        yield row(c, t, f, target=target.label, met=target.met(r), peak_mb=runner.peak(subject, c),
                  extra={"ratio_to_ideal": t.median_ms / ti.median_ms, "per_draw_ms": t.median_ms / n,
                         "ratio_to_n_single_forwards": r / n,
                         "extrapolated_ratio_n2000": r * 2000 / n})

    if cfg.memory:
        for n in cfg.memory_n:
            for kind in (CaseKind.FS_PREDICT, CaseKind.FS_CERTIFY):
                c = case(kind, n=n)
                runner.bar.set_postfix_str(f"{name} memory {kind.value} n={n}")
                yield CaseResult(model=name, case=f"memory-{kind.value}", size=cfg.size, n=n, ms=None, ratio=None,
                                 peak_mb=runner.peak(subject, c))
                runner.bar.update(1)

    if cfg.exact:
        try:
            yield from _exact_cases(run, runner, name)
        except (RuntimeError, InputError) as exc:  # e.g. an architecture that needs a larger input
            run.unavailable[f"{name}/spectral-exact"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"


def _exact_cases(run: BenchRun, runner: _Runner, name: str) -> Iterator[CaseResult]:
    """The spectral-norm methods against the exact Jacobian on a small input."""
    cfg = run.config
    spec = SubjectSpec(model=name, size=cfg.exact_size, device=cfg.device, seed=cfg.seed, sigma=cfg.sigma)
    subject = build_subject(spec)
    base = CaseSpec(subject=spec, kind=CaseKind.FORWARD, seed=cfg.seed, max_iter=cfg.max_iter, rtol=cfg.rtol)
    f = runner.time(subject, base).median_ms
    exact_case = replace(base, kind=CaseKind.SPECTRAL, method="exact")
    t = runner.time(subject, exact_case, warmup=0, repeats=1)  # the reference; its time is not a target
    exact = float(t.result.value[0])
    rows = [("spectral-exact", t)]
    for method in cfg.methods:
        if method == "exact":
            continue
        label, c = _method_case(base, method)
        rows.append((label, runner.time(subject, c)))
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
        yield CaseResult(model=name, case=label, size=cfg.exact_size, n=None, ms=tm.median_ms,
                         ratio=ratio(tm.median_ms, f), target=target, met=met, runs_ms=list(tm.runs_ms),
                         extra={**extra, "forward_ms": f})


def count_steps(config: BenchConfig) -> int:
    """Progress-bar length per model (an estimate; the bar only informs)."""
    per_model = 2 + REFERENCE_STARTS + len(config.methods) + 1 + 4
    per_model += 2 * len(config.memory_n) if config.memory else 0
    per_model += (2 + len(config.methods)) if config.exact else 0
    return per_model * len(config.models)


def run_bench(config: BenchConfig, *, on_row: Callable[[CaseResult], None] | None = None) -> BenchRun:
    """Run every case of ``config``; ``on_row`` sees each row as soon as it is measured."""
    config = config.validate()
    run = BenchRun(config=config)
    with tqdm(total=count_steps(config), desc="bench", unit="case", disable=not config.progress) as bar:
        runner = _Runner(config, bar)
        for name in config.models:
            try:
                for r in _model_cases(run, runner, name):
                    run.rows.append(r)
                    if on_row is not None:
                        on_row(r)
            except ModelUnavailable as exc:
                run.unavailable[name] = str(exc)
    return run
