"""Executors: worker planning (threads x workers <= cores, one worker per GPU), the thread and process pools, make_executor."""

from __future__ import annotations

import os

import pytest

from ich import executors
from ich.executors import InlineExecutor, LocalExecutor, ThreadExecutor, make_executor, plan_workers


def test_cpu_workers_never_oversubscribe():
    assert plan_workers(None, 30, cores=2, gpus=[]) == (2, 1, [])
    assert plan_workers(1, 30, cores=2, gpus=[]) == (1, 2, [])
    assert plan_workers(8, 30, cores=4, gpus=[]) == (4, 1, [])
    assert plan_workers(None, 1, cores=4, gpus=[]) == (1, 4, [])      # never more workers than tasks


def test_one_worker_per_gpu():
    assert plan_workers(None, 30, cores=16, gpus=["0", "1", "2"]) == (3, 5, ["0", "1", "2"])
    assert plan_workers(2, 30, cores=16, gpus=["0", "1", "2"]) == (2, 8, ["0", "1"])


def test_bad_workers():
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        plan_workers(0, 3)


def test_ray_options_need_ray():
    with pytest.raises(ValueError, match="need --executor ray"):
        make_executor("local", ray_address="auto")


def test_unknown_executor():
    with pytest.raises(ValueError, match="did you mean 'local'"):
        make_executor("locla")


def _task(task: dict) -> dict:
    if task["x"] == 3:
        raise RuntimeError("three is bad")
    return {"y": task["x"] * 2, "pid": os.getpid(), "threads": os.environ.get("OMP_NUM_THREADS")}


def test_local_pool_runs_in_order_and_reports_errors():
    ex = LocalExecutor(2, n_tasks=5, cores=2, gpus=[], warm=False)
    started = []
    try:
        out = list(ex.map(_task, [{"x": i} for i in range(5)], on_start=lambda t: started.append(t["x"])))
    finally:
        ex.shutdown()
    assert started == [0, 1, 2, 3, 4]
    results = {t["x"]: (r, e) for t, r, e in out}
    assert results[2][0]["y"] == 4 and results[2][1] is None
    assert results[3][0] is None and "RuntimeError: three is bad" in results[3][1]
    assert {r["threads"] for r, e in results.values() if r} == {"1"}  # 2 workers x 1 thread on 2 cores
    assert len({r["pid"] for r, e in results.values() if r} - {os.getpid()}) >= 1


def test_thread_pool_runs_in_order_side_by_side_and_reports_errors():
    import threading

    both_running = threading.Barrier(2, timeout=30)     # breaks (and fails the task) unless two run at once
    seen_threads = []

    def task(t: dict) -> dict:
        import torch

        if t["x"] < 2:
            both_running.wait()
        seen_threads.append(torch.get_num_threads())
        return _task(t)

    ex = ThreadExecutor(2, n_tasks=5, cores=2)
    started = []
    out = list(ex.map(task, [{"x": i} for i in range(5)], on_start=lambda t: started.append(t["x"])))
    assert started == [0, 1, 2, 3, 4]
    results = {t["x"]: (r, e) for t, r, e in out}
    assert results[0][1] is None and results[1][1] is None, "the first two tasks did not run side by side"
    assert results[2][0]["y"] == 4 and results[3][0] is None and "RuntimeError: three is bad" in results[3][1]
    assert {r["pid"] for r, e in results.values() if r} == {os.getpid()}
    assert set(seen_threads) == {1}                      # 2 threads x 1 torch thread on 2 cores


def test_local_means_threads_for_cells_that_may_share_a_process_on_cpu(monkeypatch):
    monkeypatch.setattr(executors, "visible_gpus", lambda: [])
    assert isinstance(make_executor("local", workers=2, n_tasks=4, share_process=True), ThreadExecutor)
    assert isinstance(make_executor("local", workers=2, n_tasks=4, share_process=False), LocalExecutor)
    monkeypatch.setattr(executors, "visible_gpus", lambda: ["0"])      # one worker process per GPU
    assert isinstance(make_executor("local", n_tasks=4, share_process=True), LocalExecutor)


def test_inline_executor():
    out = list(InlineExecutor().map(_task, [{"x": 1}, {"x": 3}]))
    assert out[0][1]["y"] == 2 and "three is bad" in out[1][2]


@pytest.mark.parametrize("settle_s", [1.0, 0.0])
def test_pool_workers_die_with_their_parent(tmp_path, settle_s):
    """A study killed with kill -9 leaves no pool worker behind (each holds ~1 GB of torch), also when it is
    killed at once, while its workers are still starting (they were re-parented before their watch began)."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = (
        "import os, sys, time\n"
        "from ich.executors import make_executor\n"
        "pool = make_executor('local', workers=2, n_tasks=2)\n"
        "pool.start()\n"
        f"time.sleep({settle_s})\n"
        "kids = [p.name for p in __import__('pathlib').Path('/proc').iterdir() if p.name.isdigit()\n"
        "        and open(f'/proc/{p.name}/stat').read().rsplit(')', 1)[1].split()[1] == str(os.getpid())]\n"
        "open(sys.argv[1], 'w').write(' '.join(kids))\n"
        "time.sleep(600)\n")
    out = tmp_path / "kids"
    proc = subprocess.Popen([sys.executable, "-c", script, str(out)], cwd=Path(__file__).resolve().parents[1])
    deadline = time.time() + 120
    while not (out.exists() and out.read_text().strip()) and time.time() < deadline:
        time.sleep(0.2)
    kids = [int(k) for k in out.read_text().split()]
    assert kids, "the pool started no worker"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    def alive(pid: int) -> bool:
        try:
            return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except OSError:
            return False

    deadline = time.time() + 30
    while any(alive(k) for k in kids) and time.time() < deadline:
        time.sleep(0.2)
    assert not [k for k in kids if alive(k)], "pool workers outlived the study that started them"
