"""Units of work on a Ray cluster: one actor per device slot, one writer on the driver.

:class:`RayExecutor` implements the :class:`~robustbench_iqa.runner.executor.Executor`
protocol.  It starts one Ray actor per device slot (a GPU when the run's device is
``cuda``, else a share of CPU cores; declared with ``num_gpus`` / ``num_cpus`` so a
node with 8 GPUs runs 8 actors and a cluster runs them all).  Each actor holds one
:class:`~robustbench_iqa.runner.workspace.Workspace`: it builds every model and
defense once (the same preflight as the driver's) and serves many units.  The driver
keeps at most ``in_flight`` units queued per actor (so an actor never waits for its
next unit) and yields each :class:`~robustbench_iqa.runner.executor.UnitResult` as it
completes (``ray.wait``); :func:`~robustbench_iqa.runner.executor.execute` writes it.

Faults.  Actors are created with ``max_restarts`` and ``max_task_retries``: when a
worker process or its node dies, Ray restarts the actor (rebuilding its workspace)
and re-runs the units queued on it.  A unit whose actor is gone for good (restarts
spent, or killed with ``no_restart``) is resubmitted to another actor, at most
``resubmits`` times.  Nothing is lost or written twice: a unit's randomness derives
from its key, so a re-run gives the same rows, the driver yields each unit once, and
the store records a unit with its rows in one transaction (a unit already recorded is
a no-op).

Clusters.  A Ray connection this process already has is used as it is; else
``address=None`` starts a local cluster on 127.0.0.1 (no dashboard, a temporary directory, shut down
by :meth:`RayExecutor.close`); its workers inherit this process's environment.
``address="auto"`` joins the cluster started on this machine with ``ray start``, and
``"ray://HOST:PORT"`` (Ray Client) or ``"HOST:PORT"`` (the head's GCS) a remote one.
On a multi-node cluster every node needs the same install (Python, Ray,
robustbench_iqa with its extras, torch) and the same dataset, checkpoint and weights
paths: workers load images and weights from their own disk, and refuse inputs whose
content hash differs from the driver's plan.

Ray is optional (``pip install 'robustbench_iqa[ray]'``); importing this module
without it raises :class:`~robustbench_iqa.errors.InputError` saying so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustbench_iqa.errors import InputError
from robustbench_iqa.runner.executor import Tick, UnitResult, run_unit
from robustbench_iqa.studies.base import Unit

INSTALL = "pip install 'robustbench_iqa[ray]'"

try:
    import ray
    import ray.exceptions as _rx
except ImportError:  # pragma: no cover - exercised by a test that hides ray
    raise InputError(f"the Ray executor needs Ray: {INSTALL}") from None

if TYPE_CHECKING:
    from robustbench_iqa.runner.config import VerifyConfig

_END = object()
"""The end of a job source."""

LOCAL_OBJECT_STORE = 200 * 2**20
"""Object store of a local cluster (bytes): results are a few kB of rows per unit."""

_ACTOR_GONE = tuple(getattr(_rx, n) for n in ("RayActorError", "ObjectLostError", "OwnerDiedError",
                                              "WorkerCrashedError", "NodeDiedError") if hasattr(_rx, n))
"""Errors meaning the unit did not run to completion for a reason other than its own code."""
_OOM = tuple(getattr(_rx, n) for n in ("OutOfMemoryError",) if hasattr(_rx, n))
"""Ray's memory monitor killed the worker running the job: resubmitted like a lost actor."""
_ACTOR_DEAD = tuple(getattr(_rx, n) for n in ("ActorDiedError",) if hasattr(_rx, n))
"""Errors meaning the actor is gone for good (no more restarts)."""


# ------------------------------------------------------------------ worker
class UnitWorker:
    """The actor: a workspace built once (models, defenses, the run's inputs), many units."""

    def __init__(self, cfg: VerifyConfig, threads: int, plugins: tuple[str, ...] = ()) -> None:
        import torch

        from robustbench_iqa.plugins import load_plugins

        torch.set_num_threads(threads)
        # a research repo's registrations, as on the driver (its config's, its --plugin and env ones)
        load_plugins([*cfg.plugins, *plugins], where="plugins", environ=False)
        from robustbench_iqa.runner.verify import preflight
        from robustbench_iqa.runner.workspace import Workspace

        if cfg.device.startswith("cuda"):  # Ray gives the actor its own GPU(s) as cuda:0
            cfg = dataclasses.replace(cfg, device="cuda")
        self.ws = Workspace(cfg)
        preflight(cfg, self.ws)
        self.where = f"{socket.gethostname()}:{os.getpid()}"

    def ready(self) -> str:
        """Where this actor runs (``host:pid``), once its workspace is built."""
        return self.where

    def run(self, unit: Unit) -> tuple[UnitResult, float, float, float]:
        """The unit's result, the wall-clock times (``time.time()``) it started and ended, and the
        CPU seconds this process spent on it."""
        started, cpu = time.time(), time.process_time()
        res = run_unit(unit, self.ws)
        return res, started, time.time(), time.process_time() - cpu


# -------------------------------------------------------------- bookkeeping
@dataclass(frozen=True)
class UnitTiming:
    """When one unit was submitted, ran and was received (``time.time()`` seconds)."""

    key: str
    images: int
    worker: str
    submitted: float
    started: float
    finished: float
    received: float
    seconds: float
    """Compute seconds measured inside the unit (what the store records)."""
    cpu_seconds: float
    """CPU seconds of the actor's process during the unit (all its threads)."""


@dataclass
class _Slot:
    """One device slot: its actor, how many units are queued on it, whether it is alive."""

    index: int
    actor: Any
    where: str = ""
    """``host:pid`` of the actor's first process (a restarted actor gets another pid)."""
    queued: int = 0
    alive: bool = True


@dataclass(frozen=True)
class _Task:
    job: Any
    """What was sent to the actor's ``run`` (a unit, or any picklable value with a ``key``)."""
    slot: int
    submitted: float


class RayPool:
    """Actors on a Ray cluster, each serving many keyed jobs; results to the driver as they complete.

    The mechanics shared by :class:`RayExecutor` (units of ``verify``) and
    :class:`~robustbench_iqa.runner.ray_items.RayItems` (the images of ``certify`` /
    ``attack``): connecting (or starting a loopback-only local cluster), one actor per
    device slot, ``in_flight`` jobs queued per actor, restarts and resubmission of jobs
    whose actor died, and closing.  A subclass names its actor (:meth:`_actor`), whose
    ``ready()`` returns where it runs and whose ``run(job)`` returns ``(result,
    started, finished, cpu_seconds)``; every job has a string ``key``.

    ``workers``: number of actors (default: every slot the cluster has: its GPUs divided
    by ``num_gpus_per_worker`` when ``device`` is cuda, else its CPUs divided by
    ``num_cpus_per_worker``).  ``num_gpus_per_worker`` (default 1 on cuda; a fraction
    shares a GPU), ``num_cpus_per_worker`` (default 1; also the actor's torch threads).
    ``in_flight``: units queued per actor.  ``max_restarts`` / ``max_task_retries``: Ray's
    restarts of a dead actor and re-runs of its queued units; ``resubmits``: how often the
    driver resubmits a unit whose actor is gone for good.  ``num_cpus`` / ``num_gpus``:
    resources of a local cluster this executor starts (default: detected).
    """

    name = "ray"
    what = "unit"
    """What a job is called in messages."""

    def __init__(self, device: str, *, address: str | None = None, workers: int | None = None,
                 num_gpus_per_worker: float | None = None, num_cpus_per_worker: float | None = None,
                 in_flight: int = 2, max_restarts: int = 3, max_task_retries: int = 3, resubmits: int = 3,
                 num_cpus: int | None = None, num_gpus: int | None = None) -> None:
        self.device = device
        self.address = _check_address(address)
        self.cuda = device.startswith("cuda")
        if workers is not None and workers < 1:
            raise InputError(f"ray: workers must be >= 1, got {workers}")
        if num_gpus_per_worker is not None and not (num_gpus_per_worker > 0):
            raise InputError(f"ray: num_gpus_per_worker must be > 0, got {num_gpus_per_worker}")
        if num_gpus_per_worker is not None and not self.cuda:
            raise InputError(f"ray: num_gpus_per_worker given but the run's device is {device!r} "
                             "(set device = \"cuda\")")
        if num_cpus_per_worker is not None and not (num_cpus_per_worker > 0):
            raise InputError(f"ray: num_cpus_per_worker must be > 0, got {num_cpus_per_worker}")
        for name, v in (("in_flight", in_flight), ("max_restarts", max_restarts + 1),
                        ("max_task_retries", max_task_retries + 1), ("resubmits", resubmits + 1)):
            if v < 1:
                raise InputError(f"ray: {name} must be >= {1 if name == 'in_flight' else 0}")
        self.workers = workers
        self.gpus_per_worker = (1.0 if num_gpus_per_worker is None else float(num_gpus_per_worker)) if self.cuda else 0.0
        self.cpus_per_worker = 1.0 if num_cpus_per_worker is None else float(num_cpus_per_worker)
        self.in_flight = in_flight
        self.max_restarts = max_restarts
        self.max_task_retries = max_task_retries
        self.resubmits = resubmits
        self.local_resources = {"num_cpus": num_cpus, "num_gpus": num_gpus}
        self.slots: list[_Slot] = []
        self.dispatch_seconds = 0.0
        """Driver time spent submitting jobs and fetching their results (not waiting)."""
        self.startup_seconds = 0.0
        """Seconds to connect (or start a cluster) and build every actor."""
        self.resubmitted: list[str] = []
        """Keys of the jobs resubmitted because their actor was gone (in order)."""
        self._owns_connection = False
        self._tmp: str | None = None

    # ---------------------------------------------------------------- startup
    @property
    def actors(self) -> list[Any]:
        """The live actors' handles (e.g. to kill one in a fault test)."""
        return [s.actor for s in self.slots if s.alive]

    def _actor(self, threads: int) -> tuple[type, tuple[Any, ...]]:
        """The actor class and its constructor's arguments (``threads``: its torch threads)."""
        raise NotImplementedError

    def start(self) -> None:
        """Connect (or start a local cluster) and build the actors; waits until all are ready."""
        if self.slots:
            return
        t0 = time.perf_counter()
        self._connect()
        n = self._worker_count()
        threads = max(1, int(round(self.cpus_per_worker)))
        actor, init = self._actor(threads)
        cls: Any = ray.remote(actor).options(
            num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker, max_restarts=self.max_restarts,
            max_task_retries=self.max_task_retries)
        self.slots = [_Slot(i, cls.remote(*init)) for i in range(n)]
        try:
            for slot, where in zip(self.slots, ray.get([s.actor.ready.remote() for s in self.slots])):
                slot.where = where
        except _rx.RayTaskError as exc:
            self.close()
            raise _unwrap(exc, "building a worker") from None
        except _ACTOR_GONE as exc:
            self.close()
            raise _start_failure(exc) from None
        self.startup_seconds = time.perf_counter() - t0

    def _connect(self) -> None:
        if ray.is_initialized():  # this process's own connection: used, and left open by close()
            return
        if self.address is None:
            self._start_local()
            return
        host = self.address.rpartition(":")[0].strip("[]")
        local = host in LOOPBACK
        try:
            with _loopback_only() if local else contextlib.nullcontext():
                ray.init(address=self.address, _node_ip_address="127.0.0.1" if local else None,
                         configure_logging=False, runtime_env=package_runtime_env())
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise InputError(f"ray: cannot connect to the cluster at {self.address!r}: {_first_line(exc)}") from None
        self._owns_connection = True

    def _start_local(self) -> None:
        self._tmp = tempfile.mkdtemp(prefix="rbiqa-ray-")
        start_local_cluster(num_cpus=self.local_resources["num_cpus"], num_gpus=self.local_resources["num_gpus"],
                            temp_dir=self._tmp)
        self._owns_connection = True

    def _worker_count(self) -> int:
        res = ray.cluster_resources()
        if self.cuda:
            gpus = float(res.get("GPU", 0.0))
            if gpus <= 0:
                raise InputError(f"ray: the run's device is {self.device!r} but the Ray cluster has no GPU")
            cap = int(math.floor(gpus / self.gpus_per_worker + 1e-9))
            what = f"{gpus:g} GPU(s) at {self.gpus_per_worker:g} per worker"
        else:
            cpus = float(res.get("CPU", 0.0))
            cap = int(math.floor(cpus / self.cpus_per_worker + 1e-9))
            what = f"{cpus:g} CPU(s) at {self.cpus_per_worker:g} per worker"
        if cap < 1 or (self.workers is not None and self.workers > cap):
            raise InputError(f"ray: the cluster has room for {cap} worker(s) ({what}); asked for "
                             f"{self.workers or 1}")
        return cap if self.workers is None else self.workers

    # ------------------------------------------------------------------ work
    def results(self, jobs: Iterable[Any]) -> Iterator[tuple[_Task, Any, float, float, float]]:
        """Run ``jobs`` on the actors; yield ``(task, result, started, finished, cpu_seconds)`` once per
        job key, as each completes (any order).

        ``jobs`` is drawn lazily, as actors have room (an iterator of images loaded on demand stays
        ``in_flight`` per actor ahead); no cluster is started when it is empty.
        """
        source = iter(jobs)
        first = next(source, _END)
        if first is _END:
            return
        self.start()
        queue: deque[Any] = deque([first])  # drawn from source, or lost by their actor: submitted first
        more = True
        pending: dict[Any, _Task] = {}
        tries: dict[str, int] = {}
        delivered: set[str] = set()
        try:
            while queue or pending or more:
                t0 = time.perf_counter()
                more = self._submit(queue, source if more else None, pending)
                self.dispatch_seconds += time.perf_counter() - t0
                if not pending:
                    if not (queue or more):
                        break
                    left = f"{len(queue)}{'+' if more else ''}"
                    raise InputError(f"ray: every worker died; {left} {self.what}(s) were not run (the "
                                     f"{self.what}s done are stored: rerun with --resume)")
                ready, _ = ray.wait(list(pending), num_returns=1)
                t0 = time.perf_counter()
                ref = ready[0]
                task = pending.pop(ref)
                slot = self.slots[task.slot]
                slot.queued -= 1
                try:
                    res, started, finished, cpu = ray.get(ref)
                except (*_ACTOR_GONE, *_OOM) as exc:
                    self._lost(task, exc, queue, tries)
                    continue
                except _rx.RayTaskError as exc:
                    raise _unwrap(exc, f"{self.what} {task.job.key}") from None
                except _rx.RayError as exc:  # anything else Ray says: one line, the rows done are stored
                    raise InputError(f"ray: {self.what} {task.job.key} failed: {_first_line(exc)} (the "
                                     f"{self.what}s done are stored: rerun with --resume)") from None
                finally:
                    self.dispatch_seconds += time.perf_counter() - t0
                if task.job.key in delivered:
                    continue
                delivered.add(task.job.key)
                yield task, res, started, finished, cpu
        finally:
            for ref in pending:  # the consumer stopped early (an error, an interrupt)
                try:
                    ray.cancel(ref, force=False)
                except Exception:  # already finished, or the connection is down
                    pass

    def _submit(self, queue: deque[Any], source: Iterator[Any] | None, pending: dict[Any, _Task]) -> bool:
        """Fill every live actor up to ``in_flight`` queued jobs, least loaded first, from ``queue``
        and then from ``source``; whether ``source`` may have more."""
        live = [s for s in self.slots if s.alive]
        while live:
            slot = min(live, key=lambda s: (s.queued, s.index))
            if slot.queued >= self.in_flight:
                break
            if not queue:
                nxt = _END if source is None else next(source, _END)
                if nxt is _END:
                    return False
                queue.append(nxt)
            job = queue.popleft()
            pending[slot.actor.run.remote(job)] = _Task(job, slot.index, time.time())
            slot.queued += 1
        return source is not None

    def _lost(self, task: _Task, exc: BaseException, queue: deque[Any], tries: dict[str, int]) -> None:
        """A job whose actor died: mark a dead actor, put the job back at the front of the queue."""
        if isinstance(exc, _ACTOR_DEAD):
            self.slots[task.slot].alive = False
        key = task.job.key
        n = tries.get(key, 0) + 1
        oom = isinstance(exc, _OOM) or "memory monitor" in str(exc).lower() or "OutOfMemory" in str(exc)
        why = "killed by Ray's memory monitor" if oom else f"lost its worker ({type(exc).__name__})"
        if n > self.resubmits:
            hint = " (give fewer images per unit: --batch-size, or fewer --workers)" if oom else ""
            raise InputError(f"ray: {self.what} {key} {why} {n} times (last: {_first_line(exc)}); the "
                             f"{self.what}s done are stored: rerun with --resume{hint}")
        tries[key] = n
        self.resubmitted.append(key)
        print(f"ray: {self.what} {key} {why}; resubmitted", file=sys.stderr)
        queue.appendleft(task.job)

    # ----------------------------------------------------------------- close
    def close(self) -> None:
        """Stop the actors; shut down the connection or the local cluster this executor started."""
        for s in self.slots:
            try:
                ray.kill(s.actor, no_restart=True)
            except Exception:  # already gone, or the connection is down
                pass
        self.slots = []
        if self._owns_connection and ray.is_initialized():
            ray.shutdown()
        self._owns_connection = False
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


class RayExecutor(RayPool):
    """Units of ``verify`` on Ray actors (:class:`UnitWorker`), results to the driver as they
    complete (see the module docstring and :class:`RayPool` for the settings)."""

    def __init__(self, cfg: VerifyConfig, *, address: str | None = None, workers: int | None = None,
                 num_gpus_per_worker: float | None = None, num_cpus_per_worker: float | None = None,
                 in_flight: int = 2, max_restarts: int = 3, max_task_retries: int = 3, resubmits: int = 3,
                 num_cpus: int | None = None, num_gpus: int | None = None) -> None:
        super().__init__(cfg.device, address=address, workers=workers, num_gpus_per_worker=num_gpus_per_worker,
                         num_cpus_per_worker=num_cpus_per_worker, in_flight=in_flight, max_restarts=max_restarts,
                         max_task_retries=max_task_retries, resubmits=resubmits, num_cpus=num_cpus,
                         num_gpus=num_gpus)
        self.cfg = cfg
        self.timings: list[UnitTiming] = []
        """One entry per unit received, in the order received (for throughput and overhead)."""

    def _actor(self, threads: int) -> tuple[type, tuple[Any, ...]]:
        from robustbench_iqa.plugins import loaded_plugins

        return UnitWorker, (self.cfg, threads, loaded_plugins())

    def map(self, units: Sequence[Unit], *, tick: Tick | None = None) -> Iterator[UnitResult]:
        """Run ``units`` on the actors; yield each result once, as it completes (any order).

        ``tick`` is not called: the driver's progress advances by whole units.
        """
        if not units:
            return
        for task, res, started, finished, cpu in self.results(units):
            self.timings.append(UnitTiming(res.unit.key, len(res.unit.images), res.worker, task.submitted,
                                           started, finished, time.time(), res.seconds, cpu))
            yield res


def package_runtime_env() -> dict[str, Any]:
    """Ray's runtime environment of this driver's jobs: workers import the driver's package.

    A worker is a fresh interpreter; it finds ``robustbench_iqa`` on its own ``sys.path``, which
    holds the environment's install (perhaps the editable install of another clone sharing the
    environment) and the driver's working directory, not the folder the driver imported the
    package from.  The folder above the driver's package goes first on the workers'
    ``PYTHONPATH``, so that every unit runs the driver's code; on a cluster whose machines lack
    that folder the entry is inert and the machines' own install is used.
    """
    import robustbench_iqa

    root = str(Path(robustbench_iqa.__file__).resolve().parents[1])
    rest = os.environ.get("PYTHONPATH")
    return {"env_vars": {"PYTHONPATH": os.pathsep.join([root, rest] if rest else [root])}}


def start_local_cluster(*, num_cpus: int | None = None, num_gpus: int | None = None, temp_dir: str,
                        object_store_memory: int = LOCAL_OBJECT_STORE) -> None:
    """``ray.init`` of a one-node cluster that listens on 127.0.0.1 only, without dashboard.

    ``temp_dir``: Ray's session files and logs (keep the path short: it holds sockets).
    """
    with _loopback_only():
        ctx = ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, _temp_dir=temp_dir,
                       _node_ip_address="127.0.0.1", object_store_memory=object_store_memory,
                       configure_logging=False, runtime_env=package_runtime_env())
    ip = str(getattr(ctx, "address_info", {}).get("node_ip_address", "127.0.0.1"))
    if ip not in LOOPBACK:
        warnings.warn(f"the local Ray cluster uses address {ip}, not loopback only", RuntimeWarning, stacklevel=2)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Ray's local-only mode while a cluster starts or a driver joins one on 127.0.0.1.

    On Linux Ray resolves 127.0.0.1 to the machine's outward address (and binds its
    servers to every interface) unless told the cluster is local-only, the mode it
    uses on Windows and macOS.  This sets that mode (the environment variable, which
    the started processes inherit, and Ray's flag in this process) and restores both.
    """
    env_key = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    old_env = os.environ.get(env_key)
    os.environ[env_key] = "0"
    constants = _ray_constants()
    old_flag = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if old_flag is not None:
        constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if old_flag is not None:
            constants.ENABLE_RAY_CLUSTER = old_flag
        if old_env is None:
            os.environ.pop(env_key, None)
        else:
            os.environ[env_key] = old_env


def _check_address(address: str | None) -> str | None:
    if address is None or address == "auto" or address.startswith("ray://"):
        return address
    host, sep, port = address.rpartition(":")
    if sep and host and port.isdigit():
        return address
    raise InputError(f"ray: --address must be 'auto', 'ray://HOST:PORT' or 'HOST:PORT', got {address!r}")


def _ray_constants() -> Any:
    try:
        from ray._private import ray_constants
    except ImportError:
        return None
    return ray_constants


def _unwrap(exc: Any, what: str) -> BaseException:
    """The exception a unit raised on its worker: an InputError stays one (exit code 2)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, InputError):
        return InputError(str(cause))
    if isinstance(cause, BaseException):
        return cause
    return RuntimeError(f"{what} failed on a Ray worker:\n{exc}")


def _start_failure(exc: BaseException) -> InputError:
    """Why an actor could not start, in one line (its constructor's exception, if it raised one)."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if ln.strip()]
    last = lines[-1] if lines else type(exc).__name__
    prefix = f"{InputError.__module__}.{InputError.__name__}: "
    if last.startswith(prefix):
        return InputError(f"on a Ray worker: {last[len(prefix):]}")
    hint = (" (every node needs the same install: Python, Ray, robustbench_iqa, torch)"
            if "ModuleNotFoundError" in last or "ImportError" in last else "")
    return InputError(f"ray: a worker failed to start: {last}{hint}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
