"""Speed and memory benchmark of certification (``robustbench-iqa bench``, ``nox -s bench``).

Every figure is a ratio to one undefended forward pass of the same model on
the same input; see :mod:`robustbench_iqa.bench.harness` for the cases and
targets.
"""

from robustbench_iqa.bench.cases import CaseKind, CaseSpec, make_case, measure_peak_mb
from robustbench_iqa.bench.harness import BenchConfig, BenchRun, CaseResult, run_bench
from robustbench_iqa.bench.memory import cpu_peak_mb, cuda_peak_mb, in_subprocess
from robustbench_iqa.bench.report import format_table, machine_info, shortfalls, to_json
from robustbench_iqa.bench.subjects import Subject, SubjectSpec, build_subject
from robustbench_iqa.bench.timing import Target, Timing, ratio, time_call

__all__ = [
    "BenchConfig",
    "BenchRun",
    "CaseKind",
    "CaseResult",
    "CaseSpec",
    "Subject",
    "SubjectSpec",
    "Target",
    "Timing",
    "build_subject",
    "cpu_peak_mb",
    "cuda_peak_mb",
    "format_table",
    "in_subprocess",
    "machine_info",
    "make_case",
    "measure_peak_mb",
    "ratio",
    "run_bench",
    "shortfalls",
    "time_call",
    "to_json",
]
