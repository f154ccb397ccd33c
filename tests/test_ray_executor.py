"""verify on Ray: the rows of the in-process executor, through worker deaths and a killed driver.

The Ray tests share one local cluster (2 CPUs, 127.0.0.1 only, no dashboard) and one
reference: the tiny configuration run by the in-process executor.  Every Ray run must
write exactly its rows (timing fields aside) and its units, each once.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from robustbench_iqa.cli import main
from robustbench_iqa.errors import InputError
from robustbench_iqa.runner import VerifyConfig, load_config, run_verify
from robustbench_iqa.store import RESULTS_FILE, ResultsStore

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed (pip install 'robustbench_iqa[ray]')")

TINY: dict[str, Any] = {
    "models": ["default-nr"], "limit": 3, "n": 200, "batch_size": 1,
    "audit": {"n": 400, "steps": 2, "eot": 2, "resample_n": 0},
    "stability": {"repeats": 2, "limit": 1, "n": [200]},
    "beyond": {"limit": 1, "norms": [0.25], "steps": 2, "eot": 2},
}


def tiny() -> VerifyConfig:
    return VerifyConfig.from_mapping(TINY).validate()


def _toml(table: dict[str, Any]) -> str:
    head, subs = ["[tool.robustbench_iqa.verify]"], []
    for k, v in table.items():
        if isinstance(v, dict):
            subs.append(f"\n[tool.robustbench_iqa.verify.{k}]")
            subs += [f"{a} = {json.dumps(b)}" for a, b in v.items()]
        else:
            head.append(f"{k} = {json.dumps(v)}")
    return "\n".join(head + subs) + "\n"


def _rows(run: Path) -> list[str]:
    """Every row of a run, timing fields (``seconds*``) dropped, sorted."""
    con = sqlite3.connect(run / RESULTS_FILE)
    out = []
    for tbl, model, defense, sigma, image, extra, payload in con.execute(
            "SELECT tbl, model, defense, sigma, image, extra, payload FROM rows"):
        p = {k: v for k, v in json.loads(payload).items() if not k.startswith("seconds")}
        out.append(json.dumps([tbl, model, defense, sigma, image, extra, p], sort_keys=True))
    con.close()
    return sorted(out)


def _units(run: Path) -> list[tuple[str, int]]:
    """(unit key, its row count) of every stored unit, sorted."""
    with ResultsStore.open(run) as store:
        frame = store.units_frame()
    return sorted(zip(frame["key"], frame["rows"].astype(int)))


@dataclass(frozen=True)
class Reference:
    rows: list[str]
    units: list[tuple[str, int]]
    checks: list[dict[str, Any]]


# ------------------------------------------------------------- without Ray
def test_without_ray_the_executor_is_a_one_line_input_error(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.delitem(sys.modules, "robustbench_iqa.runner.ray_executor", raising=False)
    with pytest.raises(InputError, match=r"pip install 'robustbench_iqa\[ray\]'") as err:
        importlib.import_module("robustbench_iqa.runner.ray_executor")
    assert "\n" not in str(err.value)
    assert main(["verify", "--executor", "ray", "--no-progress", "--out", "unused"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {err.value}"


def test_ray_options_need_the_ray_executor(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--workers", "2", "--address", "auto", "--no-progress", "--out", "unused"]) == 2
    assert "--address, --workers need(s) --executor ray" in capsys.readouterr().err


@needs_ray
@pytest.mark.parametrize("options, message", [
    ({"address": "somewhere"}, "--address must be"),
    ({"workers": 0}, "workers must be >= 1"),
    ({"num_gpus_per_worker": 1.0}, "num_gpus_per_worker given but the run's device is 'cpu'"),
    ({"in_flight": 0}, "in_flight must be >= 1"),
])
def test_bad_executor_settings_are_input_errors(options: dict[str, Any], message: str) -> None:
    from robustbench_iqa.runner.ray_executor import RayExecutor

    with pytest.raises(InputError, match=message):
        RayExecutor(tiny(), **options)


def test_an_executor_built_for_another_config_is_refused(tmp_path: Path) -> None:
    from robustbench_iqa.runner.executor import LocalExecutor
    from robustbench_iqa.runner.workspace import Workspace

    cfg = tiny()
    other = VerifyConfig.from_mapping({**TINY, "seed": 1}).validate()

    class Bound(LocalExecutor):
        def __init__(self) -> None:
            super().__init__(Workspace(other))
            self.cfg = other

    with pytest.raises(InputError, match="another configuration"):
        run_verify(cfg, tmp_path / "run", report=False, progress=False, executor=Bound())


# ---------------------------------------------------------------- with Ray
def skip_if_timed_out(exc: BaseException, *, what: str) -> None:
    """Skip, with the reason and the machine's load, when ``exc`` is a timeout: a Ray cluster that
    cannot start in time on a loaded machine says nothing about this code; any other error is
    raised as it is."""
    text = f"{type(exc).__name__}: {exc}".strip()
    if isinstance(exc, TimeoutError) or any(w in text.lower() for w in ("timed out", "timeout", "time out")):
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        pytest.skip(f"{what} in time (load average {load:.1f} on {os.cpu_count()} CPUs): {text[:300]}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local 2-CPU Ray cluster on 127.0.0.1 for this module; yields its GCS address."""
    import ray

    from robustbench_iqa.runner.ray_executor import start_local_cluster

    tmp = tempfile.mkdtemp(prefix="rbiqa-ray-")  # short: Ray puts sockets in it
    with pytest.MonkeyPatch.context() as mp:
        # Ray's memory monitor kills workers when the whole machine is short of memory, whoever
        # uses it; on a shared test machine that is other processes.  Off for this cluster.
        mp.setenv("RAY_memory_monitor_refresh_ms", "0")
        try:
            start_local_cluster(num_cpus=2, temp_dir=tmp)
        except Exception as exc:
            ray.shutdown()
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            skip_if_timed_out(exc, what="the local Ray test cluster did not start")
            raise
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The tiny configuration run by the in-process executor (one torch thread, as the actors)."""
    out = tmp_path_factory.mktemp("local") / "run"
    outcome = run_verify(tiny(), out, report=False, progress=False)
    assert outcome.passed and outcome.units_run >= 5
    with ResultsStore.open(out) as store:
        checks = store.get_meta("gate")["checks"]
    return Reference(_rows(out), _units(out), checks)


@pytest.mark.parametrize(("exc", "skipped"), [
    (TimeoutError("GCS did not answer"), True),
    (RuntimeError("Timed out after 60 s waiting for the raylet"), True),
    (ConnectionError("the raylet timeout of 30 s passed"), True),
    (ValueError("num_cpus must be >= 0"), False),
])
def test_a_ray_cluster_timing_out_is_a_skip_with_its_reason(exc: BaseException, skipped: bool) -> None:
    if skipped:
        with pytest.raises(pytest.skip.Exception, match=r"did not start in time \(load average .*: "):
            skip_if_timed_out(exc, what="the local Ray test cluster did not start")
    else:
        skip_if_timed_out(exc, what="the local Ray test cluster did not start")  # returns: the caller raises


def _listening(pid: int) -> list[str]:
    """Listening TCP addresses of a process and its descendants."""
    psutil = pytest.importorskip("psutil")
    me = psutil.Process(pid)
    out = []
    for proc in [me, *me.children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="inet") if hasattr(proc, "net_connections") else proc.connections("inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        out += [c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN]
    return out


@needs_ray
def test_verify_on_ray_writes_the_rows_of_the_local_executor(
        cluster: str, reference: Reference, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from robustbench_iqa.runner.ray_executor import RayExecutor

    cfg = tiny()
    ex = RayExecutor(cfg, workers=2)
    ex.start()
    actors = {s.where for s in ex.slots}
    outcome = run_verify(cfg, tmp_path / "ray", report=False, progress=True, executor=ex)
    assert outcome.passed and outcome.units_run == len(reference.units)
    assert _rows(tmp_path / "ray") == reference.rows
    assert _units(tmp_path / "ray") == reference.units
    with ResultsStore.open(tmp_path / "ray") as store:
        assert store.get_meta("gate")["checks"] == reference.checks
        workers = set(store.units_frame()["worker"])
    # Both actors ran units, none of them in this process; each unit was received once.
    assert workers == actors and len(actors) == 2
    assert not any(w.endswith(f":{os.getpid()}") for w in workers)
    assert sorted(t.key for t in ex.timings) == [k for k, _ in reference.units]
    assert ex.slots == []  # closed by run_verify
    # The driver's progress bar counted every image, with a rate.
    err = capsys.readouterr().err
    total = sum(int(k.rsplit("/", 1)[1].split(":")[0]) for k, _ in reference.units)
    assert f"{total}/{total}" in err and "img/s" in err
    # The cluster listens on loopback only.
    addrs = _listening(os.getpid())
    assert addrs and all(a in ("127.0.0.1", "::1", "::ffff:127.0.0.1") for a in addrs), addrs


@needs_ray
def test_a_unit_failing_on_a_worker_is_the_error_of_the_local_executor(
        cluster: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An InputError raised inside a unit (two images of different sizes in one batch) is the
    same one-line error, exit code 2, on an actor as in this process."""
    from PIL import Image

    gen = __import__("numpy").random.default_rng(0)
    for name, h in (("a.png", 40), ("b.png", 48)):
        Image.fromarray(gen.integers(0, 255, (h, 64, 3), dtype="uint8")).save(tmp_path / name)
    (tmp_path / "scores.csv").write_text("image,score\na.png,1.0\nb.png,2.0\n")
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text(_toml({**TINY, "dataset": "csv", "root": str(tmp_path / "scores.csv"), "resize": "none",
                          "split": "all", "batch_size": 2, "studies": ["certify"]}))
    errors = []
    for executor in ("local", "ray"):
        assert main(["verify", "--config", str(cfg), "--executor", executor, "--no-progress", "--no-report",
                     "--out", str(tmp_path / executor)]) == 2
        errors.append(capsys.readouterr().err)
    assert errors[0] == errors[1] and errors[0].count("\n") == 1 and "different sizes" in errors[0], errors


class _KillAfterFirst:
    """Wraps a RayExecutor: kills actor 0 right after the first result has been handed on, with
    ``ray.kill`` (restartable or not) or by SIGKILL to its process."""

    name = "ray"

    def __init__(self, inner: Any, *, how: str) -> None:
        self.inner, self.how, self.cfg = inner, how, inner.cfg

    def start(self) -> None:
        self.inner.start()

    def map(self, units: Any, *, tick: Any = None) -> Iterator[Any]:
        import ray

        for i, res in enumerate(self.inner.map(units, tick=tick)):
            yield res
            if i == 0:
                slot = self.inner.slots[0]
                assert slot.queued >= 1, "nothing left to kill"
                if self.how == "sigkill":
                    os.kill(int(slot.where.rsplit(":", 1)[1]), signal.SIGKILL)
                else:
                    ray.kill(slot.actor, no_restart=self.how == "kill-for-good")

    def close(self) -> None:
        self.inner.close()


@needs_ray
@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill", "kill-for-good", "sigkill"])
def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(cluster: str, reference: Reference, tmp_path: Path,
                                                              how: str) -> None:
    from robustbench_iqa.runner.ray_executor import RayExecutor

    cfg = tiny()
    ex = RayExecutor(cfg, workers=2)
    ex.start()
    original = {s.where for s in ex.slots}
    outcome = run_verify(cfg, tmp_path / "run", report=False, progress=False, executor=_KillAfterFirst(ex, how=how))
    assert outcome.passed
    assert _rows(tmp_path / "run") == reference.rows
    assert _units(tmp_path / "run") == reference.units  # every unit once, with all its rows
    assert sorted(t.key for t in ex.timings) == [k for k, _ in reference.units]  # each received once
    with ResultsStore.open(tmp_path / "run") as store:
        workers = set(store.units_frame()["worker"])
    if how == "kill-for-good":  # the actor stayed dead: the driver resubmitted its units to the other one
        assert workers <= original and ex.resubmitted
    else:  # Ray restarted the actor (a new process) and re-ran its queued units there
        assert len(workers - original) == 1 and not ex.resubmitted


def _wait_for_units(run: Path, proc: subprocess.Popen[bytes], at_least: int, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    written = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
        try:
            con = sqlite3.connect(run / RESULTS_FILE, timeout=1)
            written = con.execute("SELECT COUNT(*) FROM units").fetchone()[0]
            con.close()
        except sqlite3.Error:
            continue
        if written >= at_least:
            break
    return written


@needs_ray
@pytest.mark.slow
@pytest.mark.parametrize("first, then", [("local", "ray"), ("ray", "local")])
def test_a_killed_driver_resumes_on_either_executor(cluster: str, reference: Reference, tmp_path: Path,
                                                    first: str, then: str) -> None:
    from robustbench_iqa.runner.ray_executor import RayExecutor

    cfgfile = tmp_path / "pyproject.toml"
    cfgfile.write_text(_toml(TINY))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "robustbench_iqa.cli", "verify", "--config", str(cfgfile), "--no-progress",
           "--no-report", "--threads", "1", "--out", str(out)]
    if first == "ray":  # a driver joining this module's cluster, killed with its units in flight
        cmd += ["--executor", "ray", "--address", cluster, "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        written = _wait_for_units(out, proc, 1)
        assert proc.poll() is None, "the run finished before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    stored = dict(_units(out))
    assert 1 <= written <= len(stored) < len(reference.units)
    with ResultsStore.open(out) as store:
        before = store.units_frame().set_index("key")["worker"].to_dict()

    cfg = load_config(cfgfile)
    executor = RayExecutor(cfg, workers=2) if then == "ray" else None
    outcome = run_verify(cfg, out, resume=True, report=False, progress=False, executor=executor)
    assert outcome.passed and outcome.units_run == len(reference.units) - len(stored)
    assert _rows(out) == reference.rows
    assert _units(out) == reference.units
    with ResultsStore.open(out) as store:
        after = store.units_frame().set_index("key")["worker"].to_dict()
    assert {k: after[k] for k in before} == before  # the units of the killed driver were kept, not re-run
