"""A small process pool for CPU-bound loading stages (header scan, decoding): ordered results, bounded memory."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager


def _init_worker() -> None:
    """One compute thread per worker, without importing torch (1.9 s and ~700 MiB per worker on a quiet
    2-core machine; most imports never need it: only a resize does, and it imports torch itself)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and shuts the pool down
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the CLI's handler inherited by fork: a worker just ends
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # read by torch when this worker first imports it
        os.environ[var] = "1"
    torch = sys.modules.get("torch")  # already loaded when forked from a process that had imported it
    if torch is not None:
        torch.set_num_threads(1)


class WorkerPool:
    """A process pool for the import stages (header scan, decoding); ``workers=1`` runs inline.

    Use as a context manager; one pool serves every stage of an import, so processes start
    once. Workers return compact int16 arrays (a pool returning float32 was 2x slower than
    serial, testing-notes.md).
    """

    def __init__(self, workers: int = 1):
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be a positive integer, not {workers!r}")
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def map_ordered(self, fn: Callable, tasks: Sequence[tuple], *, in_flight: int | None = None) -> Iterator:
        """Yield ``fn(*task)`` for each task, in order.

        At most ``in_flight`` (default 2 x workers) results are pending at once, so memory stays
        bounded whatever the number of tasks. A worker's exception is raised here.
        """
        if self.workers == 1 or len(tasks) <= 1:
            for t in tasks:
                yield fn(*t)
            return
        if self._executor is None:
            self._executor = ProcessPoolExecutor(max_workers=self.workers, initializer=_init_worker)
        limit = in_flight or 2 * self.workers
        pending = []
        it = iter(tasks)
        try:
            for t in it:
                pending.append(self._executor.submit(fn, *t))
                if len(pending) >= limit:
                    break
            while pending:
                result = pending.pop(0).result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(self._executor.submit(fn, *nxt))
                yield result
        finally:
            for fut in pending:
                fut.cancel()


@contextmanager
def maybe_pool(pool: WorkerPool | None, workers: int):
    if pool is not None:
        yield pool
    else:
        with WorkerPool(workers) as wp:
            yield wp


def map_ordered(fn: Callable, tasks: Sequence[tuple], *, workers: int = 1) -> Iterator:
    """One-off ``WorkerPool(workers).map_ordered(fn, tasks)`` (the pool closes when the iterator ends)."""
    with WorkerPool(workers) as wp:
        yield from wp.map_ordered(fn, tasks)
