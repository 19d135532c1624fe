"""Executors for study cells: threads of this process (CPU fast path), a process pool (GPUs, image path) or Ray.

All (and ``InlineExecutor``, which runs tasks one by one in the calling process for debugging
and tests) expose the same small interface, used by ``study.run_study``::

    ex = make_executor("local", workers=2, n_tasks=30, share_process=True)
    ex.start()                                     # optional: spawn workers early (they import torch)
    for task, result, error in ex.map(fn, tasks, on_start=cb):
        ...                                        # in completion order; error is a one-line string or None
    ex.shutdown()

At most ``workers`` tasks are in flight, submitted in the given order, so a study's cell
order (every budget's first seed first) is also the order in which cells start.

``"local"`` means this machine, in one of two ways:

- ``ThreadExecutor`` (CPU, when the cells may share a process: the fast path, whose only random
  draws are the run's own generator and its locked initial weights, see ``train``): ``workers``
  threads of this process with ``cores // workers`` torch threads each. One copy of torch (about
  700 MiB resident for this CUDA build, even on CPU) and of the memory-mapped data serves every cell:
  the quick study's process tree peaks near 1 GB instead of 2.5 GB with two worker processes, at the
  same speed (torch releases the GIL inside its operators; measured 2026-12-02, BENCHMARKS.md).
  A cell that crashes the interpreter takes the study with it; the study resumes where it stopped.
- ``LocalExecutor`` (GPUs, and image-path cells, whose torchio augmentation draws from torch's
  global RNG): ``workers`` spawned processes kept alive for the whole study (the ~3-5 s torch
  import is paid once per worker, not per cell). On CPU each gets ``cores // workers`` torch
  threads; with CUDA GPUs there is one worker per GPU, pinned with ``CUDA_VISIBLE_DEVICES``
  before torch starts.

``RayExecutor`` submits each task as a Ray task with its CPU/GPU request to a running cluster
(``address``) or to a local Ray instance; the task writes to the same (shared) folder.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ich.config import check_choice

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

Result = tuple[dict, Any, "str | None"]


def cpu_cores() -> int:
    """CPU cores this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, os.cpu_count() or 1)


def visible_gpus() -> list[str]:
    """CUDA device ids this process may use ([] without CUDA), without initialising CUDA in torch."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # pragma: no cover - torch without CUDA support
        return []


def plan_workers(workers: int | None, n_tasks: int, *, cores: int | None = None,
                 gpus: Sequence[str] | None = None) -> tuple[int, int, list[str]]:
    """(workers, torch threads per worker, GPU ids) for a local pool.

    With GPUs: one worker per GPU (``workers`` may lower it). On CPU: ``workers`` (default: the
    cores) capped by the cores and the tasks, and ``cores // workers`` threads each.

    Raises:
        ValueError: ``workers`` < 1.
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer, not {workers!r}")
    cores = cores or cpu_cores()
    gpus = list(visible_gpus() if gpus is None else gpus)
    if gpus:
        n = min(workers or len(gpus), len(gpus), max(1, n_tasks))
        return n, max(1, cores // n), gpus[:n]
    n = max(1, min(workers or cores, cores, max(1, n_tasks)))
    return n, max(1, cores // n), []


# ------------------------------------------------------------------------------ local pool
def _init_worker(parent: int, threads: int, gpus: list[str], counter, warm: bool) -> None:
    """Pool initializer: pin a GPU and set thread counts before torch is imported, then warm the imports.

    ``parent`` is the pid of the process that created the pool (see ``_die_with_parent``)."""
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)          # read by torch when it is imported
    _die_with_parent(parent)
    if warm:
        import torch

        torch.set_num_threads(threads)
        warm_imports()


def _die_with_parent(parent: int, poll_s: float = 1.0) -> None:
    """End this pool worker when the study's process ``parent`` dies (even by kill -9), so no orphan keeps
    its memory.

    A daemon thread exits the worker within ``poll_s`` once its parent pid is not ``parent`` (it was
    re-parented). The pid comes from the pool's creator, not from ``os.getppid()`` here: a worker still
    starting up when the study was killed (slow imports on a busy machine) is already re-parented when
    this runs, and would otherwise wait for tasks forever. (Not ``PR_SET_PDEATHSIG``: it fires when the
    *thread* that started the worker ends, which need not be the study's main thread.)
    """
    import threading

    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="ich-parent-watch", daemon=True).start()


def warm_imports() -> None:
    """Import what a cell needs (~8-10 s on 2 busy cores: torch._dynamo via the first optimiser, sklearn,
    scipy, skimage, captum), so that a worker's first cell does not pay for it."""
    import torch

    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])   # imports torch._dynamo (~4 s), once
    import captum.attr  # noqa: F401
    import scipy.ndimage  # noqa: F401
    import scipy.stats  # noqa: F401
    import skimage.filters  # noqa: F401
    import skimage.measure  # noqa: F401
    import sklearn.metrics  # noqa: F401

    import ich.evaluate  # noqa: F401
    import ich.explain  # noqa: F401
    import ich.train  # noqa: F401


def _call(fn: Callable[[dict], Any], task: dict):
    try:
        return fn(task), None
    except Exception as err:  # noqa: BLE001 - reported as the task's error, the study goes on
        return None, f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=4)}"


def _noop() -> int:
    return os.getpid()


class LocalExecutor:
    """A pool of spawned worker processes, each running many tasks (see the module docstring)."""

    def __init__(self, workers: int | None = None, *, n_tasks: int = 1, cores: int | None = None,
                 gpus: Sequence[str] | None = None, warm: bool = True):
        self.workers, self.threads, self.gpus = plan_workers(workers, n_tasks, cores=cores, gpus=gpus)
        self.warm = warm      # import torch & co. in each worker at start (False: for light tasks)
        self._pool: ProcessPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"LocalExecutor(workers={self.workers}, threads={self.threads}, gpus={self.gpus})"

    def start(self) -> None:
        """Spawn the workers now (they import torch in the background)."""
        if self._pool is not None:
            return
        ctx = mp.get_context("spawn")
        counter = ctx.Value("i", 0)
        self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=_init_worker,
                                         initargs=(os.getpid(), self.threads, self.gpus, counter, self.warm))
        for _ in range(self.workers):      # spawning is on demand: one submission per worker starts them all
            self._pool.submit(_noop)

    def map(self, fn: Callable[[dict], Any], tasks: Sequence[dict],
            on_start: Callable[[dict], None] | None = None) -> Iterator[Result]:
        """Run ``fn(task)`` for every task, ``workers`` at a time in order; yield (task, result, error)."""
        self.start()
        pending = list(tasks)[::-1]
        inflight = {}
        while pending or inflight:
            while pending and len(inflight) < self.workers:
                task = pending.pop()
                inflight[self._pool.submit(_call, fn, task)] = task
                if on_start is not None:
                    on_start(task)
            finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            for fut in finished:
                task = inflight.pop(fut)
                try:
                    result, error = fut.result()
                except Exception as err:  # noqa: BLE001 - a worker died (killed, out of memory)
                    result, error = None, f"worker process failed: {type(err).__name__}: {err}"
                    self._restart()
                yield task, result, error

    def _restart(self) -> None:
        """A broken pool (a worker died) cannot take tasks: replace it."""
        if self._pool is not None and getattr(self._pool, "_broken", False):
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            self.start()

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


# ------------------------------------------------------------------------------ threads
class ThreadExecutor:
    """Tasks in ``workers`` threads of this process, ``cores // workers`` torch threads each (module docstring).

    When the study stops (``jobs cancel`` sends SIGTERM, the main thread raises), it asks its running
    cells to stop (``runs.request_cancel``: a run checks at every epoch's end) and ``shutdown`` waits
    for them, so the process ends cleanly within about a second; unfinished cells resume on the next
    run. The threads are daemons, so a cell that does not stop in time cannot keep the process alive.
    """

    def __init__(self, workers: int | None = None, *, n_tasks: int = 1, cores: int | None = None):
        self.workers, self.threads, _ = plan_workers(workers, n_tasks, cores=cores, gpus=[])
        self._threads: list[threading.Thread] = []

    def __repr__(self) -> str:
        return f"ThreadExecutor(workers={self.workers}, threads={self.threads})"

    def start(self) -> None:
        pass

    def map(self, fn: Callable[[dict], Any], tasks: Sequence[dict],
            on_start: Callable[[dict], None] | None = None) -> Iterator[Result]:
        """Run ``fn(task)`` for every task, ``workers`` at a time in order; yield (task, result, error)."""
        import torch

        old = torch.get_num_threads()
        torch.set_num_threads(self.threads)     # new threads take it at their first parallel operator
        finished: queue.Queue = queue.Queue()

        def work(task: dict) -> None:
            finished.put((task, *_call(fn, task)))

        pending, inflight = list(tasks)[::-1], 0
        try:
            while pending or inflight:
                while pending and inflight < self.workers:
                    task = pending.pop()
                    thread = threading.Thread(target=work, args=(task,), name=f"ich-cell-{task.get('name', '')}",
                                              daemon=True)
                    thread.start()
                    self._threads = [t for t in self._threads if t.is_alive()] + [thread]
                    inflight += 1
                    if on_start is not None:
                        on_start(task)
                while True:
                    try:
                        result = finished.get(timeout=0.5)    # a short wait keeps SIGTERM prompt
                        break
                    except queue.Empty:
                        continue
                inflight -= 1
                yield result
        finally:
            torch.set_num_threads(old)

    def shutdown(self, timeout: float = 60.0) -> None:
        """Wait (at most ``timeout`` seconds in all) for cells still running, e.g. after a cancel."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]
        if self._threads:
            log.warning("%d cell(s) still running after %.0f s; the process ends without them", len(self._threads),
                        timeout)


# ------------------------------------------------------------------------------ inline
class InlineExecutor:
    """Runs tasks one by one in the calling process (debugging, tests): no pool, no spawn cost.

    Torch uses ``threads`` threads during ``map`` (restored afterwards), as a pool worker would.
    """

    workers = 1

    def __init__(self, threads: int = 1):
        self.threads = threads

    def __repr__(self) -> str:
        return f"InlineExecutor(threads={self.threads})"

    def start(self) -> None:
        pass

    def map(self, fn: Callable[[dict], Any], tasks: Sequence[dict],
            on_start: Callable[[dict], None] | None = None) -> Iterator[Result]:
        import torch

        old = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            for task in tasks:
                if on_start is not None:
                    on_start(task)
                result, error = _call(fn, task)
                yield task, result, error
        finally:
            torch.set_num_threads(old)

    def shutdown(self) -> None:
        pass


# ------------------------------------------------------------------------------ ray
def _ray_call(fn: Callable[[dict], Any], task: dict, threads: int):
    import torch

    torch.set_num_threads(max(1, threads))
    return _call(fn, task)


class RayExecutor:
    """One Ray task per cell, with its CPU/GPU request (see the module docstring).

    Args:
        address: a running cluster (``"auto"``, ``"ray://head:10001"``); None starts a local instance
            (``num_cpus`` CPUs, no dashboard) that ``shutdown`` stops again.
        cpus_per_task, gpus_per_task: resources of each task (default 1 CPU; 1 GPU when the driver sees one).
        workers: tasks in flight at once (default: as many as the cluster's CPUs allow).
        num_cpus: CPUs of a local instance (default: all cores).
    """

    def __init__(self, address: str | None = None, *, cpus_per_task: float | None = None,
                 gpus_per_task: float | None = None, workers: int | None = None, num_cpus: int | None = None):
        try:
            import ray  # noqa: F401
        except ImportError as err:
            raise RuntimeError("the ray executor needs Ray: pip install -r requirements-ray.txt "
                               "(or use --executor local)") from err
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be a positive integer, not {workers!r}")
        for name, v in (("cpus_per_task", cpus_per_task), ("gpus_per_task", gpus_per_task)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
                raise ValueError(f"{name} must be a number >= 0, not {v!r}")
        self.address = address
        self.cpus_per_task = float(cpus_per_task or 1)
        self.gpus_per_task = float(gpus_per_task if gpus_per_task is not None else (1 if visible_gpus() else 0))
        self.workers = workers
        self.num_cpus = num_cpus
        self._started_here = False

    def __repr__(self) -> str:
        return (f"RayExecutor(address={self.address!r}, cpus_per_task={self.cpus_per_task}, "
                f"gpus_per_task={self.gpus_per_task})")

    def start(self) -> None:
        import ray

        if ray.is_initialized():
            return
        repo = str(Path(__file__).resolve().parents[1])
        env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)}}
        if self.address is None:
            ray.init(num_cpus=self.num_cpus or cpu_cores(), include_dashboard=False, runtime_env=env,
                     log_to_driver=False, configure_logging=False)
            self._started_here = True
        else:
            try:
                ray.init(address=self.address, runtime_env=env, log_to_driver=False, configure_logging=False)
            except ConnectionError as err:
                raise RuntimeError(f"no Ray cluster answers at --ray-address {self.address} ({err}); start one with "
                                   "`ray start --head`, or leave --ray-address out to use a local Ray instance") \
                    from err

    def map(self, fn: Callable[[dict], Any], tasks: Sequence[dict],
            on_start: Callable[[dict], None] | None = None) -> Iterator[Result]:
        import ray

        self.start()
        remote = ray.remote(num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task, max_retries=0)(_ray_call)
        limit = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1) // self.cpus_per_task))
        threads = max(1, int(self.cpus_per_task))
        pending = list(tasks)[::-1]
        inflight = {}
        while pending or inflight:
            while pending and len(inflight) < limit:
                task = pending.pop()
                inflight[remote.remote(fn, task, threads)] = task
                if on_start is not None:
                    on_start(task)
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                task = inflight.pop(ref)
                try:
                    result, error = ray.get(ref)
                except Exception as err:  # noqa: BLE001 - the task's worker died
                    result, error = None, f"ray task failed: {type(err).__name__}: {err}"
                yield task, result, error

    def shutdown(self) -> None:
        import ray

        if self._started_here and ray.is_initialized():
            ray.shutdown()
            self._started_here = False


EXECUTORS = ("local", "ray", "inline")


def make_executor(kind: str = "local", *, workers: int | None = None, n_tasks: int = 1, share_process: bool = False,
                  ray_address: str | None = None, cpus_per_task: float | None = None,
                  gpus_per_task: float | None = None):
    """The executor for ``kind`` (local | ray | inline).

    ``local`` is a ``ThreadExecutor`` when ``share_process`` (the tasks may run side by side in one
    process: the fast path) and no GPU is visible, else a ``LocalExecutor`` (worker processes).
    """
    check_choice("executor", kind, EXECUTORS)
    if kind != "ray" and (ray_address or cpus_per_task or gpus_per_task):
        raise ValueError("--ray-address, --cpus-per-cell and --gpus-per-cell need --executor ray")
    if kind == "inline":
        return InlineExecutor()
    if kind == "local":
        if share_process and not visible_gpus():
            return ThreadExecutor(workers, n_tasks=n_tasks)
        return LocalExecutor(workers, n_tasks=n_tasks)
    return RayExecutor(ray_address, cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task, workers=workers)
