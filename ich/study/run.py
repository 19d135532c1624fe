"""Running a study: cells in a process pool (or Ray, or inline), resumable, with live progress."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Callable

from ich.config import check_choice
from ich.study.folder import (LOCK_FILE, PROGRESS_FILE, RUNS_DIR, StudyLock, append_event, cell_dir, cell_state,
                              check_same_spec, is_study, lock_spec, read_progress, read_study, write_progress)
from ich.study.spec import (EXECUTORS, StudyConfig, cell_config, check_budgets, plan_cells,
                            resolve_study)
from ich.study.summary import write_summary

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


# ------------------------------------------------------------------------------ one cell (runs in a worker)
def run_cell(task: dict) -> dict:
    """Train and evaluate one cell; meant for worker processes (``ich.executors``).

    Args:
        task: ``{"name", "run_dir", "config" (RunConfig dict), "pixel_slices", "device"}``.

    Returns:
        ``{"name", "state", "seconds", "fit_seconds", "train_seconds", "eval_seconds",
        "overhead_seconds", "started", "pid", "exam_auc"}``; a failed fit raises (the run is
        marked failed by ``fit``).
    """
    from ich import runs
    from ich.config import RunConfig
    from ich.evaluate import evaluate_run
    from ich.train import fit

    started = time.time()
    t0 = time.perf_counter()
    cfg = RunConfig.from_dict(task["config"])
    run_dir = Path(task["run_dir"])
    resume = False
    if runs.is_run(run_dir) and runs.read_config(run_dir) == cfg:
        if runs.read_status(run_dir).get("state") == "done":
            resume = True                                    # trained; only the evaluation is missing
        elif runs.has_checkpoint(run_dir):
            resume = runs.load_checkpoint(run_dir).get("last") is not None   # killed mid-training
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)   # an interrupted start without a checkpoint, or a failed run: start again
    t_fit = time.perf_counter()
    summary = fit(cfg, run_dir, resume=resume)
    fit_seconds = time.perf_counter() - t_fit
    if summary.get("state") != "done":
        raise RuntimeError(f"cell {task['name']} ended {summary.get('state')}")
    t_eval = time.perf_counter()
    k = int(task.get("pixel_slices", 0))
    result = evaluate_run(run_dir, pixel=k > 0, pixel_methods=("gradcam",), max_pixel_slices=k or None,
                          device=task.get("device", "cpu"))
    eval_seconds = time.perf_counter() - t_eval
    seconds = time.perf_counter() - t0
    train_seconds = float(summary.get("train_seconds") or 0.0)
    return {"name": task["name"], "state": "done", "seconds": round(seconds, 3), "fit_seconds": round(fit_seconds, 3),
            "train_seconds": round(train_seconds, 3), "eval_seconds": round(eval_seconds, 3),
            "overhead_seconds": round(seconds - train_seconds - eval_seconds, 3), "started": started,
            "pid": os.getpid(), "exam_auc": result["exam"]["auc"]}


# ------------------------------------------------------------------------------ the study
def prepare_embeddings(spec: StudyConfig, *, on_progress: Callable[[dict], None] | None = None) -> float:
    """Compute the fast path's slice embeddings once, before cells start (so workers never race for them).

    Returns seconds spent (0 when the cache was warm or the study does not use the fast path).
    """
    if spec.init in ("random",) or spec.init.startswith("imagenet:"):
        return 0.0
    cells = plan_cells(spec)
    cfg = cell_config(spec, cells[0])
    if cfg.model.finetune != "none":
        return 0.0
    import torch

    from ich.embed import default_cache_dir, embed_dataset
    from ich.models import build_model
    from ich.device import resolve_device, resolve_precision
    from ich.store import open_dataset

    t0 = time.perf_counter()
    device = resolve_device(cfg.train.device)
    precision = "bf16" if resolve_precision(cfg.train.precision, device) == "bf16" else "fp32"
    ds = open_dataset(cfg.data.dataset)
    model = build_model(cfg).to(device)
    if device.type == "cpu" and precision == "bf16":   # embed_dataset feeds channels_last input: match the
        model.encoder.to(memory_format=torch.channels_last)   # weights (2.6x faster; the checksum is unchanged)
    meta = {"windows": list(cfg.data.windows), "input_size": int(cfg.data.input_size or ds.size)}
    embed_dataset(ds, model.encoder, meta, default_cache_dir(cfg.model.init_path), device=device,
                  precision=precision, on_progress=on_progress)
    return time.perf_counter() - t0


def run_study(spec: StudyConfig, out: str | os.PathLike, *, executor: str = "local", workers: int | None = None,
              ray_address: str | None = None, cpus_per_cell: float | None = None, gpus_per_cell: float | None = None,
              on_progress: Callable[[dict], None] | None = None):
    """Run (or resume) a study into ``out``; returns the summary tables ``(cells, aggregate)``.

    Args:
        spec: the study (``make_study``); ``init="auto"`` is resolved first (see the module docstring).
        out: the study folder: new, or holding the same spec (finished cells are skipped).
        executor: ``"local"`` (a pool of worker processes), ``"ray"`` (one Ray task per cell) or
            ``"inline"`` (in this process, one cell after another: debugging and tests).
        workers: concurrent cells (local default: one per GPU, else one per CPU core; never more than cells).
        ray_address: a running Ray cluster (``ray://host:10001`` or ``auto``); None starts a local instance.
        cpus_per_cell, gpus_per_cell: Ray resources of each cell task (default 1 CPU, and 1 GPU when the
            driver sees one).
        on_progress: called with the progress dict after every cell event.

    Raises:
        ValueError / FileExistsError: another spec in ``out``, infeasible budgets, bad options.
        RuntimeError: another process is running this study.
    """
    from ich import executors

    check_choice("executor", executor, EXECUTORS)
    out = Path(out)
    t0 = time.perf_counter()
    if not spec.dataset:
        raise ValueError("the study needs a dataset: pass --dataset (a folder from `python -m ich import`)")
    from ich.store import open_dataset

    open_dataset(spec.dataset)     # a missing dataset fails before the study folder is created
    if is_study(out):          # fail fast, before any pretraining, when the folder holds another study
        check_same_spec(out, read_study(out)[0], spec, resolved=False)
    elif out.exists() and any(p.name not in (LOCK_FILE, PROGRESS_FILE) for p in out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a study folder; choose a new --out")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    old_term = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _raise_interrupt)   # `jobs cancel` sends SIGTERM: stop cleanly
    except ValueError:                                     # not the main thread
        old_term = None
    try:
        pool_for = functools.partial(executors.make_executor, executor, workers=workers,
                                     n_tasks=len(plan_cells(spec)), ray_address=ray_address,
                                     cpus_per_task=cpus_per_cell, gpus_per_task=gpus_per_cell)
        pool_for(share_process=False)      # bad executor options fail here, before any pretraining
        with StudyLock(out):
            return _run_locked(spec, out, t0, pool_for, on_progress)
    except Exception:
        if created and not is_study(out):   # failed before the spec was written: leave nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


def _run_locked(spec: StudyConfig, out: Path, t0: float, pool_for: Callable, on_progress):
    """The study under its lock; ``pool_for(share_process=...)`` makes the executor once the recipe is known."""
    def elapsed() -> float:
        return round(time.perf_counter() - t0, 3)

    def progress(**fields) -> None:
        _notify(on_progress, write_progress(out, elapsed_s=elapsed(), **fields))

    cells = plan_cells(spec)
    progress(state="preparing", done=0, total=len(cells), failed=0, running=0,
             started=time.strftime("%Y-%m-%dT%H:%M:%S"))
    pool = None
    running: dict[str, str] = {}                       # cells in flight: name -> run folder
    try:
        def on_pretrain(e: dict) -> None:
            step, steps = e.get("step", 0), e.get("steps")
            if step in (1, steps) or step % 10 == 0:
                progress(state="pretraining", detail=f"pretraining the encoder: step {step}/{steps}")

        spec, encoder = resolve_study(spec, on_progress=on_pretrain)
        check_budgets(spec)
        arm_configs = [cell_config(spec, c) for c in cells[:len(spec.arms)]]   # valid before anything is written
        # fast-path cells (frozen encoder) may share one process: threads on CPU (see ich.executors)
        pool = pool_for(share_process=all(cfg.model.finetune == "none" for cfg in arm_configs))
        lock_spec(out, spec, encoder)
        states = {c.name: cell_state(out, c) for c in cells}
        todo = [c for c in cells if states[c.name] != "done"]
        done = len(cells) - len(todo)
        arms_done = {c.arm for c in cells if states[c.name] == "done"}
        failed: set[str] = set()
        progress(state="preparing", done=done, encoder=encoder or None, detail="")
        if not todo:
            progress(state="done", running=0)
            return write_summary(out)
        tasks = [{"name": c.name, "run_dir": str(cell_dir(out, c)), "config": cell_config(spec, c).to_dict(),
                  "pixel_slices": spec.pixel_slices, "device": "auto", "arm": c.arm} for c in todo]
        (out / RUNS_DIR).mkdir(exist_ok=True)
        pool.start()                       # workers import torch while the embeddings are computed
        t_embed = time.perf_counter()
        prepare_embeddings(spec, on_progress=lambda e: progress(
            state="embedding", detail=f"embedding slices: {e['done']}/{e['total']}"))
        progress(embed_s=round(time.perf_counter() - t_embed, 2), detail="",
                 cells_from=time.time(), cells_done_before=done)    # the cells' own pace gives the time left
        def on_start(task):
            running[task["name"]] = task["run_dir"]
            append_event(out, {"cell": task["name"], "event": "start", "t": elapsed()})
            progress(state="running", running=len(running))

        for task, result, error in pool.map(run_cell, tasks, on_start=on_start):
            running.pop(task["name"], None)
            extra = {}
            if error is None:
                done += 1
                failed.discard(task["name"])
                arms_done.add(task["arm"])
                if len(arms_done) == len(spec.arms) and "first_point_s" not in read_progress(out):
                    extra["first_point_s"] = elapsed()   # every curve has its first point
                append_event(out, {"cell": task["name"], "event": "done", "t": elapsed(), **result})
            else:
                failed.add(task["name"])
                log.warning("cell %s failed: %s", task["name"], error)
                append_event(out, {"cell": task["name"], "event": "failed", "t": elapsed(), "error": error})
            write_summary(out)
            progress(state="running", done=done, failed=len(failed), running=len(running), last=task["name"], **extra)
    except KeyboardInterrupt:
        write_progress(out, state="cancelled", running=0, elapsed_s=elapsed())
        from ich import runs

        for run_dir in running.values():       # cells in threads of this process stop at their epoch's end
            runs.request_cancel(run_dir)
        raise
    finally:
        if pool is not None:
            pool.shutdown()
    progress(state="failed" if failed else "done", running=0)
    return write_summary(out)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _notify(fn, progress: dict) -> None:
    if fn is not None:
        fn(dict(progress))
