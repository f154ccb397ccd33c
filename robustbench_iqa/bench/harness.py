"""The benchmark run: every case of every model, as ratios to one forward pass.

For each model (the embedded defaults, and DBCNN / LPIPS backbones with
random weights where registered), at the main input size (384x512 as in the
FS-IQA study):

Settings, targets and rows: :mod:`~robustbench_iqa.bench.config`; one model's cases:
:mod:`~robustbench_iqa.bench.model_cases`.

1. ``forward``: one undefended forward pass -- the unit of every ratio;
2. ``fs-predict`` (N = ``fs_n``): target <= 1.2x forward;
3. ``fs-certify``: target <= 20x forward with the spectral norm within 1% of
   the reference (the study's ratio is about 6.9 s / 33 ms = 209x, A100,
   384x512, N = 2000); the first-order certificate the study times (noise draws, bounds,
   the Jacobian's norm), without ``eps_x_lipschitz``, whose certified global bound is
   computed once per model and size and cached (minutes for a VGG-16 at 384x512 on a CPU);
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
6. the peers: the official forward pass where known, torchattacks' BIM against
   the suite's I-FGSM (:mod:`~robustbench_iqa.bench.peers`);
7. peak memory per case (one subprocess per case on the CPU), for
   N in ``memory_n`` to show that it does not grow with N.

Before any timing, one untimed certification (``WARMUP_ITER`` spectral
iterations) runs, so that the forward pass (the unit) and the cases are all
timed with the allocator in its steady state.

Bounded cost (:mod:`~robustbench_iqa.bench.budget`, :mod:`~robustbench_iqa.bench.plan`).
A model's cases run in priority order: the targets (forward, fs-predict,
fs-certify) and fs-certify's reference, then the peers, the spectral methods,
MS and DMS, the memory cases and the exact-Jacobian comparison.  Each case's
cost (its warm-up included) is estimated before it runs from unit costs
measured earlier, and it is fitted to ``case_budget_s`` (at most what is left
of ``model_budget_s``): the reference's and the methods' ``max_iter`` (from the
time per spectral iteration), the attack steps of the peers (from a one-step
probe), N of MS/DMS (from a one-draw probe) are capped; memory subprocesses
are skipped when their estimate (the first one's overhead plus the case's run)
does not fit.  Timed repeats stop when another would overrun.  fs-certify may
use what is left of the model's budget (its ``max_iter`` is capped to fit it;
a run that stopped unconverged says so and its ratio is a lower bound; it is
skipped when not even one iteration fits; it and the warm-up are stopped by a
timer when the model's budget runs out).  Once
the model's budget is spent, its remaining cases are skipped.  Every cap and
skip is recorded with its reason in ``BenchRun.capped``.  fs-certify's target
("norm within 1%") is met only if the norm was checked against a converged
reference; otherwise its row says ``norm_checked: false`` and why, and ``met``
is ``None`` (or ``False`` when the ratio alone misses).
"""

from __future__ import annotations

from collections.abc import Callable

from tqdm.auto import tqdm

from robustbench_iqa.bench.config import REFERENCE_STARTS, BenchConfig, BenchRun, CaseResult
from robustbench_iqa.bench.model_cases import ModelCases, Runner
from robustbench_iqa.bench.subjects import ModelUnavailable


def count_steps(config: BenchConfig) -> int:
    """Progress-bar length per model (an estimate; the bar only informs)."""
    per_model = 2 + REFERENCE_STARTS + len(config.methods) + 1 + 4
    per_model += 2 * len(config.memory_n) if config.memory else 0
    per_model += (2 + len(config.methods)) if config.exact else 0
    return per_model * len(config.models)


def run_bench(config: BenchConfig, *, on_row: Callable[[CaseResult], None] | None = None,
              into: BenchRun | None = None) -> BenchRun:
    """Run every case of ``config``; ``on_row`` sees each row as soon as it is measured.

    ``into``: the run to fill (its caps, skips and notes grow as they are decided, so that a
    caller writing partial results sees them); by default a new one.
    """
    config = config.validate()
    run = BenchRun(config=config) if into is None else into
    with tqdm(total=count_steps(config), desc="bench", unit="case", disable=not config.progress) as bar:
        runner = Runner(config, bar)
        for name in config.models:
            try:
                for r in ModelCases(run, runner, name).cases():
                    run.rows.append(r)
                    if on_row is not None:
                        on_row(r)
            except ModelUnavailable as exc:
                run.unavailable[name] = str(exc)
    return run
