"""Throughput of verify's units on the in-process executor and on Ray, and Ray's overhead per unit.

    python benchmarks/ray_throughput.py [--config pyproject.toml] [--workers 1 2] [--limit N]

Runs the configured verify units (default: the embedded default of ./pyproject.toml)
into a fresh store per executor (the in-process one before and after the Ray runs,
as the load of a shared machine changes), each actor and the in-process run with one
torch thread, and prints per executor: units, images, wall seconds of the execution (the
cluster's startup and the actors' model building are shown apart), images/s, the
compute seconds the store records (``unit s``: mean per unit, wall clock inside the
unit), the CPU seconds per unit (of the actors' processes; of the whole process for the
in-process executor: when they stay equal and ``unit s`` grows, the workers wait for
cores, not for Ray), and the workers' utilization (compute seconds / (wall x workers)).  For Ray, the overhead per unit:

* driver: the driver's time per unit (submitting it, fetching its result, and the
  single writer's transaction), against the mean compute seconds of a unit;
* gap: how long an actor sat idle between the end of one unit and the start of its
  next one (units are queued ahead, so this is the scheduling cost a worker sees);
* latency: from a unit's end on its actor to its result in the driver.

Requires the ``ray`` extra.  A local Ray cluster (127.0.0.1, as many CPUs as the
machine has, unless --cpus) is started once and shut down at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _checkout  # noqa: F401  (this checkout first on sys.path)

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


class _TimedWriter:
    """Wraps an executor and measures the time the driver spends between results (the writer)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.cfg = inner, inner.name, getattr(inner, "cfg", None)
        self.writer_seconds = 0.0

    def start(self) -> None:
        self.inner.start()

    def map(self, units: Any, *, tick: Any = None) -> Iterator[Any]:
        for res in self.inner.map(units, tick=tick):
            t0 = time.perf_counter()
            yield res
            self.writer_seconds += time.perf_counter() - t0

    def close(self) -> None:
        self.inner.close()


def _run(cfg: Any, executor: Any, ws: Any, plan: Any) -> dict[str, Any]:
    from robustbench_iqa.runner.executor import execute
    from robustbench_iqa.runner.verify import verify_run_config
    from robustbench_iqa.store import ResultsStore

    units = plan.units()
    timed = _TimedWriter(executor)
    with tempfile.TemporaryDirectory(prefix="rbiqa-bench-") as tmp, \
            ResultsStore.open(Path(tmp), verify_run_config(cfg, ws)) as store:
        t0 = time.perf_counter()
        timed.start()
        startup = time.perf_counter() - t0
        t0, cpu0 = time.perf_counter(), time.process_time()
        execute(store, cfg, units, timed, progress=False)
        wall, driver_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        frame = store.units_frame()
    executor.close()
    images = int(sum(max(1, len(u.images)) for u in units))
    compute = float(frame["seconds"].sum())
    workers = int(frame["worker"].nunique())
    out = {"executor": executor.name, "workers": workers, "units": len(units), "images": images,
           "startup_s": startup, "wall_s": wall, "images_per_s": images / wall, "compute_s": compute,
           "mean_unit_s": compute / len(units), "median_unit_s": float(frame["seconds"].median()),
           "utilization": compute / (wall * workers), "writer_s_per_unit": timed.writer_seconds / len(units)}
    timings = getattr(executor, "timings", None)
    cpu = sum(t.cpu_seconds for t in timings) if timings else driver_cpu
    out["cpu_s_per_unit"] = cpu / len(units)
    if timings:
        by_worker: dict[str, list[Any]] = {}
        for t in timings:
            by_worker.setdefault(t.worker, []).append(t)
        gaps = []
        for ts in by_worker.values():
            ts.sort(key=lambda t: t.started)
            gaps += [b.started - max(a.finished, b.submitted) for a, b in zip(ts, ts[1:])]
        latency = [t.received - t.finished for t in timings]
        driver = executor.dispatch_seconds / len(units) + out["writer_s_per_unit"]
        out.update({
            "driver_s_per_unit": driver,
            "driver_pct_of_unit": 100 * driver / out["mean_unit_s"],
            "gap_s_median": statistics.median(gaps) if gaps else 0.0,
            "gap_s_mean": statistics.fmean(gaps) if gaps else 0.0,
            "gap_pct_of_unit": 100 * (statistics.fmean(gaps) if gaps else 0.0) / out["mean_unit_s"],
            "latency_s_median": statistics.median(latency),
        })
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="pyproject.toml with [tool.robustbench_iqa.verify] (default: ./)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts (default: 1 2)")
    ap.add_argument("--limit", type=int, default=None, help="override the images per model")
    ap.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: all)")
    ap.add_argument("--local", choices=["first", "last", "both"], default="both",
                    help="run the in-process executor before the Ray runs, after them, or both (default: both; "
                         "on a shared machine the load changes between runs)")
    ap.add_argument("--json-out", default=None, help="write the rows as JSON to this file")
    args = ap.parse_args()

    import ray
    import torch

    from robustbench_iqa.runner import load_config
    from robustbench_iqa.runner.executor import LocalExecutor
    from robustbench_iqa.runner.ray_executor import RayExecutor, start_local_cluster
    from robustbench_iqa.runner.verify import preflight
    from robustbench_iqa.runner.workspace import Workspace

    torch.set_num_threads(1)
    cfg = load_config(args.config, limit=args.limit)
    ws = Workspace(cfg)
    plan = preflight(cfg, ws)
    rows: list[dict[str, Any]] = []
    if args.local in ("first", "both"):
        rows.append(_run(cfg, LocalExecutor(ws), ws, plan))
        print(json.dumps(rows[-1]), file=sys.stderr)
    tmp = tempfile.mkdtemp(prefix="rbiqa-ray-")
    start_local_cluster(num_cpus=args.cpus, temp_dir=tmp)
    try:
        for n in args.workers:
            rows.append(_run(cfg, RayExecutor(cfg, workers=n), ws, plan))
            print(json.dumps(rows[-1]), file=sys.stderr)
    finally:
        ray.shutdown()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    if args.local in ("last", "both"):
        rows.append(_run(cfg, LocalExecutor(ws), ws, plan))
        print(json.dumps(rows[-1]), file=sys.stderr)

    print(f"{rows[0]['units']} units, {rows[0]['images']} images; torch {torch.__version__}, "
          f"{os.cpu_count()} CPU(s), 1 torch thread per worker")
    print(f"{'executor':<10}{'workers':>8}{'startup s':>10}{'wall s':>9}{'img/s':>8}{'unit s':>8}{'cpu s':>7}{'util':>6}"
          f"{'driver/unit':>13}{'gap/unit':>10}{'latency':>9}")
    for r in rows:
        extra = (f"{r['driver_s_per_unit'] * 1e3:>8.1f} ms{'':1}{r['gap_s_mean'] * 1e3:>7.1f} ms"
                 f"{r['latency_s_median'] * 1e3:>6.1f} ms" if "driver_s_per_unit" in r else
                 f"{r['writer_s_per_unit'] * 1e3:>8.1f} ms")
        print(f"{r['executor']:<10}{r['workers']:>8}{r['startup_s']:>10.1f}{r['wall_s']:>9.1f}"
              f"{r['images_per_s']:>8.2f}{r['mean_unit_s']:>8.2f}{r['cpu_s_per_unit']:>7.2f}{r['utilization']:>6.0%}"
              f"{extra}")
    for r in rows:
        if r["executor"] != "ray":
            continue
        print(f"ray x{r['workers']}: driver time per unit {r['driver_pct_of_unit']:.2f}% and actor gap per unit "
              f"{r['gap_pct_of_unit']:.2f}% of a unit's mean compute ({r['mean_unit_s']:.2f} s)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
