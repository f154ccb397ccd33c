"""Benchmark output: the machine, the table, the JSON document and the results file.

The JSON document (``--json-out``) holds the machine (CPU model, cores,
torch version, GPU), the configuration and one object per row; the results
file written for the README (``benchmarks/results-<device>.md``) quotes the
same table with the machine it ran on.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

import torch

from robustbench_iqa.bench.harness import BenchRun, CaseResult

COLUMNS = ("model", "case", "size", "n", "ratio", "target", "met", "ms", "peak MB", "notes")


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU model, core counts, torch version and (for CUDA) the GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu, "logical_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": device,
    }
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _fmt(v: float | None, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}"


def _notes(r: CaseResult) -> str:
    e = r.extra
    parts = []
    if "iterations" in e:
        parts.append(f"it={e['iterations']}")
    if e.get("products") is not None:
        parts.append(f"products={e['products']}")
    if "rel_error" in e:
        parts.append(f"err={e['rel_error']:.1e}")
    if e.get("upper_over") is not None:
        parts.append(f"bound {e['upper_over']:+.2%} (delta={e['delta']:g})")
    if e.get("role"):
        parts.append(f"{e['role']}: {e['reference']}" if e.get("reference") else e["role"])
    if "spread" in e:
        parts.append(f"spread {e['spread']:.1e}")
    if "ratio_to_ideal" in e:
        parts.append(f"{e['ratio_to_ideal']:.2f}x ideal")
    if "peer" in e:
        parts.append(f"peer: {e['peer']}")
    if "suite_over_peer" in e:
        parts.append(f"suite/peer {e['suite_over_peer']:.3f}x")
    if "max_iter" in e:
        parts.append(f"max_iter capped to {e['max_iter']}")
    if e.get("steps_requested") not in (None, r.n):
        parts.append(f"steps capped from {e['steps_requested']}")
    if "norm_check" in e:
        parts.append(f"norm {e['norm_check']}")
    if e.get("warning"):
        parts.append(e["warning"])
    if r.met is False and "over_target" in e:
        parts.append(f"{e['over_target']:.2f}x over target")
    elif r.met is False and "ratio_to_ideal" in e:
        parts.append(f"{e['ratio_to_ideal'] / 1.1:.2f}x over target")
    return ", ".join(parts)


def table_rows(run: BenchRun) -> list[list[str]]:
    out = []
    for r in run.rows:
        met = ("unchecked" if r.extra.get("norm_checked") is False else "-") if r.met is None else ("yes" if r.met else "NO")
        out.append([r.model, r.case, f"{r.size[0]}x{r.size[1]}", "-" if r.n is None else str(r.n),
                    _fmt(r.ratio), r.target or "-", met, _fmt(r.ms), _fmt(r.peak_mb), _notes(r)])
    return out


def format_table(run: BenchRun, *, markdown: bool = False) -> str:
    """The table: case, ratio to forward, target, met?, absolute ms, peak MB (and notes)."""
    rows = table_rows(run)
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(COLUMNS)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    for name, why in run.unavailable.items():
        lines.append(f"{'- ' if markdown else ''}unavailable: {name}: {why}")
    for name, why in run.capped.items():
        lines.append(f"{'- ' if markdown else ''}bounded cost: {name}: {why}")
    for name, why in run.notes.items():
        lines.append(f"{'- ' if markdown else ''}note: {name}: {why}")
    return "\n".join(lines)


def shortfalls(run: BenchRun) -> list[str]:
    """One line per missed target, saying by how much."""
    lines = []
    for r in run.rows:
        if r.met is False:
            e = r.extra
            how = ""
            if "over_target" in e:
                how = f"{e['over_target']:.2f}x over the limit"
            elif "ratio_to_ideal" in e:
                how = f"{e['ratio_to_ideal']:.2f}x the ideal (limit 1.1x)"
            elif "rel_error" in e:
                how = f"relative error {e['rel_error']:.2e}"
            if r.case == "fs-certify" and e.get("rel_error", 0.0) > 0.01:
                how += f"; spectral norm off by {e['rel_error']:.2%}"
            lines.append(f"target missed: {r.model} {r.case} ({r.target}): ratio {_fmt(r.ratio)}, {how}")
    return lines


def to_json(run: BenchRun, machine: dict[str, Any]) -> dict[str, Any]:
    cfg = dataclasses.asdict(run.config)
    return {
        "format": "robustbench_iqa.bench/1",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "config": cfg,
        "rows": [r.to_dict() for r in run.rows],
        "unavailable": run.unavailable,
        "capped": run.capped,
        "spent_s": run.spent_s,
        "notes": run.notes,
        "shortfalls": shortfalls(run),
    }


def write_json(doc: dict[str, Any], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return p


def write_markdown(run: BenchRun, machine: dict[str, Any], path: str | Path, *, comment: str = "") -> Path:
    """The results file the README quotes: machine, settings, table, missed targets."""
    cfg = run.config
    head = [
        f"# Benchmark results ({machine['device']})",
        "",
        f"- machine: {machine['cpu']}, {machine['logical_cores']} logical cores, torch {machine['torch']} "
        f"({machine['torch_threads']} threads){', GPU ' + machine['gpu'] if 'gpu' in machine else ''}",
        f"- settings: size {cfg.size[0]}x{cfg.size[1]}, FS N={cfg.fs_n}, MS N={cfg.ms_n}, DMS N={cfg.dms_n} "
        f"(DnCNN {cfg.denoiser[0]}x{cfg.denoiser[1]}), batch {cfg.batch_size}, rtol {cfg.rtol:g}, "
        f"median of {cfg.repeats} after {cfg.warmup} warm-up, {cfg.clock} clock",
        f"- budgets: {cfg.case_budget_s:g} s per case, {cfg.model_budget_s:g} s per model ({cfg.clock} clock); "
        f"every cap and skip is listed after the table (\"bounded cost\")",
    ]
    if "load_average" in machine:
        head.append(f"- load average at the end: {', '.join(f'{v:.2f}' for v in machine['load_average'])}")
    if comment:
        head.append(f"- {comment}")
    body = ["", format_table(run, markdown=True), ""]
    body += [f"- {s}" for s in shortfalls(run)]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join(head + body) + "\n")
    return p
