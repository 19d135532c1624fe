"""Executors: worker planning (threads x workers <= cores, one worker per GPU), the local pool, make_executor."""

from __future__ import annotations

import os

import pytest

from ich.executors import InlineExecutor, LocalExecutor, make_executor, plan_workers


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


def test_inline_executor():
    out = list(InlineExecutor().map(_task, [{"x": 1}, {"x": 3}]))
    assert out[0][1]["y"] == 2 and "three is bad" in out[1][2]
