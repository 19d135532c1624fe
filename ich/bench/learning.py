"""Learning benchmarks: the quick study (speed and the few-label table), label-free pretraining, embedding."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np

from ich.bench.core import BenchContext, unmet, figure, goal, torch_profile


# ------------------------------------------------------------------------------ 5. study
def _tree_pids(pid: int) -> list[int]:
    """A process and all its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return out


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants, summed (shared pages count once per process)."""
    total = 0
    for p in _tree_pids(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            continue
    return total


def _tree_pss(pid: int) -> int:
    """Proportional set size of a process tree (``Pss`` of /proc/PID/smaps_rollup): a page shared by k
    processes counts 1/k in each, so torch's libraries and the memory-mapped dataset count once."""
    total = 0
    for p in _tree_pids(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:")) * 1024
        except (OSError, ValueError, StopIteration):
            continue
    return total


class PeakRSS:
    """Samples the memory of a process tree (default: this one) in a thread: ``peak`` (RSS summed) and
    ``peak_pss``, in bytes."""

    def __init__(self, interval: float = 0.25, pid: int | None = None):
        self.interval, self.peak, self.peak_pss = interval, 0, 0
        self.pid = os.getpid() if pid is None else pid
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        self.peak = max(self.peak, _tree_rss(self.pid))
        self.peak_pss = max(self.peak_pss, _tree_pss(self.pid))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def bench_study(ctx: BenchContext) -> dict:
    """Wall time of the quick study preset, of the first point of each curve, per cell and per-cell overhead;
    peak RSS of the process tree."""
    from ich.study import StudyConfig, make_study, read_events, read_progress

    dataset = ctx.store()
    if ctx.quick:
        import torch

        from ich.models import build_encoder, save_encoder

        torch.manual_seed(0)
        enc_path = ctx.workdir / "data" / "encoders" / "quick.pt"
        save_encoder(enc_path, build_encoder("compact", width=8, embed_dim=16),
                     {"windows": ["brain"], "input_size": 32, "method": "random"})
        spec = StudyConfig(dataset=str(dataset), supervisions=("weak", "strong"), budgets=(4,), seeds=(0,),
                           preset="tiny", init=str(enc_path), finetune="none", pixel_slices=2,
                           overrides=(("train.epochs", 2),), name="bench-quick")
        executor = "inline"
    else:
        from ich.study.spec import default_encoder_path

        built = default_encoder_path(ctx.dataset) if ctx.dataset else None   # the one `make run` pretrained
        spec = make_study("quick", dataset=str(dataset),
                          init=str(built) if built is not None and built.is_file() else "auto")
        executor = "local"
    out = ctx.workdir / "study"
    if out.exists():
        shutil.rmtree(out)
    ctx.say(f"running the {'tiny' if ctx.quick else 'quick'} study ({executor} executor)")
    t0 = time.perf_counter()
    said = [""]

    def on_progress(p: dict) -> None:                     # one line per change, not one per progress write
        line = f"{p.get('state')} {p.get('done')}/{p.get('total')}"
        if line != said[0]:
            said[0] = line
            ctx.say(line)

    rss = _run_study_process(spec, out, executor, ctx, on_progress)
    wall = time.perf_counter() - t0
    events = read_events(out)
    progress = read_progress(out)
    done = [e for e in events if e.get("event") == "done"]
    failed = [e for e in events if e.get("event") == "failed"]
    first = {}
    for e in done:
        arm = e["cell"].split("-m")[0]
        first[arm] = min(first.get(arm, math.inf), float(e["t"]))
    encoder = progress.get("encoder") or {}
    figs = {"wall": figure([wall], "s", note=f"{len(done)} cells done, {len(failed)} failed; includes embedding "
                                             + (f"and encoder pretraining ({encoder.get('seconds', 0)} s)"
                                                if encoder.get("pretrained_now") else
                                                f"(the encoder {spec.init} was built already: see the pretrain and "
                                                "first_run benchmarks for that step)")),
            "first_point_all_curves": figure([max(first.values())] if first else [], "s",
                                             note="time until every arm has its first finished cell"),
            "cell": figure([e["seconds"] for e in done], "s", note="one fast-path cell: train + evaluate "
                                                                   "(values = every cell; spread = over cells)"),
            "cell_max": figure([max((e["seconds"] for e in done), default=math.nan)], "s",
                               note="the slowest cell (largest budgets train longest)"),
            "cell_train": figure([e.get("train_seconds", math.nan) for e in done], "s",
                                 note="the training loop of a cell (spread = over cells)"),
            "cell_eval": figure([e.get("eval_seconds", math.nan) for e in done], "s",
                                note="evaluate_run of a cell, incl. Grad-CAM pixel Dice (spread = over cells)"),
            "cell_overhead": figure([e["overhead_seconds"] for e in done], "s",
                                    note="cell seconds - train seconds - evaluation seconds (spread = over cells)"),
            "peak_rss": figure([rss.peak / 2 ** 20], "MiB", note="the `python -m ich study` process (on CPU the "
                               "cells run in its threads) and any worker processes, RSS summed (shared pages "
                               "counted in every process), sampled every 0.25 s"),
            "peak_pss": figure([rss.peak_pss / 2 ** 20], "MiB", note="the same tree's proportional set size: "
                               "shared pages (torch's libraries, the memory-mapped dataset) counted once")}
    for arm, t in first.items():
        figs[f"first_point_{arm}"] = figure([t], "s", note=f"first finished {arm} cell")
    if progress.get("embed_s") is not None:
        figs["embed"] = figure([progress["embed_s"]], "s", note="slice embeddings computed before the cells")
    goals = [goal(figs, "cell", "<=", 5.0, text="≤ 5 s per fast-path cell"),
             goal(figs, "cell_overhead", "<=", 2.0, text="< 2 s per cell"),
             goal(figs, "peak_rss", "<=", 1536.0, text="≤ 1.5 GB for the study's process tree (issue 14)")]
    if not ctx.quick:
        few, few_goals = _few_label_figures(out, ctx)
        figs.update(few)
        goals += few_goals
    return {"title": f"Study: the {'tiny (quick mode)' if ctx.quick else 'quick'} preset", "figures": figs,
            "goals": goals, "params": {"spec": spec.to_dict(), "executor": executor},
            "notes": [f"{len(failed)} cells failed: {failed[0].get('error')}"] if failed else []}


def _run_study_process(spec, out: Path, executor: str, ctx: BenchContext, on_progress) -> PeakRSS:
    """Run ``spec`` as a user does, ``python -m ich study ...`` in its own process (so the memory figure is
    the study's own, not the bench process's after earlier benchmarks loaded their models); relay its
    progress; return the sampled peak memory of its process tree. Raises RuntimeError with the log's tail."""
    import subprocess
    import sys

    from ich.recipe import study_argv
    from ich.study import read_progress

    argv = [sys.executable, "-m", "ich", *study_argv(spec, out), "--executor", executor, "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": str(ctx.threads)}          # torch's thread count in the child
    log = ctx.workdir / "study.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env)
        with PeakRSS(pid=proc.pid) as rss:
            while proc.poll() is None:
                progress = read_progress(out)                          # {} until the study writes it
                if progress:
                    on_progress(progress)
                time.sleep(1.0)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the study process exited with {proc.returncode}; the end of {log}:\n{tail}")
    return rss


def _few_label_figures(study: Path, ctx: BenchContext) -> tuple[dict, list]:
    """The learning-from-few-labels table of a finished quick study: mean test exam AUC per arm and budget,
    plus the weak learner on the whole training split (same spec, budget None, same seeds); and its goals:
    weak >= 0.80 at 48 exam labels and >= 0.95 on the whole split. The strong arm and the weak - strong gap
    are reported as figures only: a goal that caps the baseline, or expects weak to win, would prejudge the
    study's answer."""
    import pandas as pd

    from ich.study import Cell, cell_config, read_study
    from ich.train import fit

    spec, _ = read_study(study)
    table = pd.read_csv(study / "summary.csv")
    cells, means = table[table["row"] == "cell"], table[table["row"] == "mean"]
    figs: dict = {}
    for r in means.itertuples():
        per_seed = cells[(cells["arm"] == r.arm) & (cells["budget"] == r.budget)]["exam_auc"]
        figs[f"auc_{r.arm}_m{int(r.budget)}"] = figure(
            [r.exam_auc], "AUC", note=f"mean test exam AUC of {len(per_seed)} seeds "
                                      f"({', '.join(f'{v:.3f}' for v in per_seed)})")
    full = []
    for seed in spec.seeds:
        ctx.say(f"weak learner on the whole training split, seed {seed}")
        cfg = cell_config(spec, Cell("weak", "weak", None, seed, None))
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=ctx.threads))
        full.append(fit(cfg, ctx.scratch(f"weak-all-s{seed}") / "run")["test_exam_auc"])
    figs["auc_weak_all"] = figure([float(np.mean(full))], "AUC", note="weak learner, every exam label of the "
                                  f"training split; mean of seeds ({', '.join(f'{v:.3f}' for v in full)})")
    budgets = [b for b in spec.budgets if b <= 200]
    auc = lambda arm, b: (figs.get(f"auc_{arm}_m{b}") or {}).get("median")  # noqa: E731
    gaps = [auc("weak", b) - auc("strong", b) for b in budgets if auc("weak", b) is not None
            and auc("strong", b) is not None]
    figs["weak_minus_strong_min"] = figure([min(gaps)] if gaps else [], "AUC",
                                           note=f"smallest weak - strong gap over budgets {budgets}")
    if len(budgets) > 1 and auc("strong", budgets[0]) is not None and auc("strong", budgets[-1]) is not None:
        figs["strong_rise"] = figure([auc("strong", budgets[-1]) - auc("strong", budgets[0])], "AUC",
                                     note=f"strong AUC at {budgets[-1]} minus at {budgets[0]} slice labels")
    goals = [goal(figs, "auc_weak_m48", ">=", 0.80, text="weak ≥ 0.80 at 48 exam labels"),
             goal(figs, "auc_weak_all", ">=", 0.95, text="weak ≥ 0.95 on the whole training split"),
             ]
    return figs, goals


def bench_pretrain(ctx: BenchContext) -> dict:
    """Pretraining the default encoder (``PretrainConfig()`` on the default dataset): slice-pool load plus a
    sample of steps, extrapolated to the configured epochs."""
    from ich.pretrain import PretrainConfig, pretrain
    from ich.store import open_dataset

    class _Enough(Exception):
        pass

    ds = open_dataset(ctx.store())
    cfg = PretrainConfig(threads=ctx.threads)
    if ctx.quick:
        cfg = PretrainConfig(input_size=32, local_size=16, batch_size=8, epochs=2, threads=ctx.threads)
    sample = 4 if ctx.quick else 12
    stamps: list[float] = []
    info = {}

    def on_progress(e):
        stamps.append(time.perf_counter())
        info.update(e)
        if len(stamps) > sample:
            raise _Enough()

    t0 = time.perf_counter()
    ctx.say(f"{sample} steps of {cfg.method} pretraining")
    try:
        pretrain(ds, ctx.scratch("pretrain") / "enc.pt", cfg, on_progress=on_progress)
    except _Enough:
        pass
    if len(stamps) < 3:
        raise RuntimeError(f"pretraining finished after {len(stamps)} steps; too few to time")
    step = np.diff(stamps[1:])                                    # the first step includes warm-up
    setup = stamps[0] - t0 - float(np.median(step))
    total_steps = int(info["steps"])
    figs = {"step": figure(step, "s", note=f"one step: batch {cfg.batch_size}, method {cfg.method}, "
                                           f"{cfg.input_size}px"),
            "setup": figure([setup], "s", note="slice pool load + model build (time to the first step minus one step)"),
            "default_total": figure(setup + step * total_steps, "s", extrapolated=True,
                                    note=f"setup + {total_steps} steps ({cfg.epochs} epochs x "
                                         f"{total_steps // cfg.epochs} steps)")}
    goals = [goal(figs, "default_total", "<=", 300.0, text="≤ 5 min")]
    result = {"title": "Pretrain: the default encoder", "figures": figs, "goals": goals,
              "params": {"config": cfg.to_dict(), "sampled_steps": len(step)}}
    if ctx.profile and unmet(goals):
        stamps.clear()
        sample = 3

        def three_steps():
            try:
                pretrain(ds, ctx.scratch("pretrain-profile") / "enc.pt", cfg, on_progress=on_progress)
            except _Enough:
                pass
        result["profile"] = {"pretrain: pool load + 4 steps": torch_profile(three_steps)}
    return result


def bench_embed(ctx: BenchContext) -> dict:
    """Embedding every slice of the default dataset with the default (compact) encoder, cache cold."""
    import torch

    from ich.config import TrainConfig
    from ich.device import resolve_precision
    from ich.embed import embed_dataset
    from ich.models import build_encoder
    from ich.store import open_dataset

    ds = open_dataset(ctx.store())
    precision = resolve_precision(TrainConfig().precision, torch.device("cpu"))   # what a study cell embeds in
    torch.manual_seed(0)
    enc = build_encoder("compact", width=8 if ctx.quick else 32, embed_dim=16 if ctx.quick else 128)
    meta = {"windows": ["brain"], "input_size": ds.size}
    repeats = ctx.repeats if ctx.quick else 1
    times = []
    for r in range(repeats):
        ctx.say(f"{len(ds.slices)} slices, repeat {r + 1}/{repeats}")
        cache = ctx.scratch(f"embed-{r}")
        t0 = time.perf_counter()
        embed_dataset(ds, enc, meta, cache, precision=precision)
        times.append(time.perf_counter() - t0)
        shutil.rmtree(cache, ignore_errors=True)
    n = len(ds.slices)
    figs = {"whole_dataset": figure(times, "s", note=f"{n} slices of {len(ds)} exams at {ds.size}px, {precision}"),
            "slices_per_s": figure(n / np.array(times), "slices/s")}
    goals = [goal(figs, "whole_dataset", "<=", 60.0, text="≤ 1 min")]
    result = {"title": "Embed: the whole default dataset", "figures": figs, "goals": goals,
              "params": {"slices": n, "precision": precision}}
    if ctx.profile and unmet(goals):
        from ich.data import window_slices
        from ich.preprocess import resize

        def some_exams():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                for e in ds.exams["exam_id"].head(8):
                    x = window_slices(torch.from_numpy(resize(np.array(ds.load_raw(e)), ds.size)), ("brain",))
                    enc(x.contiguous(memory_format=torch.channels_last) if precision == "bf16" else x)
        result["profile"] = {"embed: 8 exams (load, window, encode)": torch_profile(some_exams)}
    return result
