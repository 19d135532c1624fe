"""The first_run benchmark: a fresh data folder to a healthy app and the first point of both quick-study curves.

What a new user does, timed end to end: ``make run``'s two commands (``python -m ich firstrun``,
then ``streamlit run app.py``) on an empty data folder, the app's health endpoint polled until it
answers, the quick study queued at once behind the first-run chain (what Home's button does), and
the study's event file polled until a weak and a strong cell have finished. The app and the
study are stopped afterwards. Quick mode runs the same on a tiny phantom (40 exams of 64 px).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ich.bench.core import BenchContext, figure, goal

REPO = Path(__file__).resolve().parents[2]
TINY_PRETRAIN = ("--epochs", "2", "--batch-size", "16", "--input-size", "64", "--set", "local_size=32",
                 "--set", "local_jitter=2")
TINY_STUDY = ("--budgets", "4,8", "--seeds", "1", "--pixel-slices", "0", "--set", "train.epochs=2")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def _first_points(study: Path) -> dict[str, float]:
    """Each arm whose first cell has finished, with the time it was seen (epoch seconds; polled every 0.25 s)."""
    events = study / "cells.jsonl"
    first: dict[str, float] = {}
    if not events.is_file():
        return first
    for line in events.read_text().splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        if e.get("event") == "done":
            first.setdefault(e["cell"].split("-m")[0], time.time())
    return first


def bench_first_run(ctx: BenchContext) -> dict:
    """Fresh data folder -> app healthy -> first point of both quick-study curves (make run, then Home's button)."""
    from ich import firstrun, jobs

    root = ctx.scratch("first_run") / "data"
    root.mkdir()
    cfg = firstrun.FirstRunConfig(exams=40, size=64, slices=(8, 10), workers=1, pretrain_args=TINY_PRETRAIN) \
        if ctx.quick else firstrun.FirstRunConfig()
    db = root / "jobs.sqlite"
    port = _free_port()
    env = dict(os.environ, ICH_DATA=str(root), PYTHONUNBUFFERED="1")
    ctx.say(f"make run on an empty data folder ({'tiny phantom' if ctx.quick else 'the default phantom'})")
    t0 = time.time()
    if ctx.quick:   # the tiny chain has no CLI spelling: queue it as `ich firstrun` would
        firstrun.start_chain(db, cfg, root, workdir=REPO)
    else:
        subprocess.run([sys.executable, "-m", "ich", "firstrun"], cwd=REPO, env=env, check=True,
                       stdout=subprocess.DEVNULL)
    t_queued = time.time() - t0
    app = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                            "--server.address", "127.0.0.1", "--server.port", str(port),
                            "--browser.gatherUsageStats", "false"], cwd=REPO, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    study = root / "studies" / "quick-first-run"
    first: dict[str, float] = {}
    t_app = t_study = None
    limit = 600 if ctx.quick else 3600
    try:
        while time.time() - t0 < limit:
            if t_app is None and _healthy(port):
                t_app = time.time() - t0
                ctx.say(f"app healthy after {t_app:.1f} s; queueing the quick study behind the chain")
                job = firstrun.queue_quick_study(study, db, cfg, root, extra=TINY_STUDY if ctx.quick else ())
                t_study = time.time() - t0
            if t_app is not None:
                for arm, t in _first_points(study).items():
                    first.setdefault(arm, t - t0)
                if {"weak", "strong"} <= set(first):
                    break
                job_now = jobs.get(db, job.id)
                if job_now.state in ("failed", "cancelled"):
                    raise RuntimeError(f"the quick study failed: {job_now.error}")
            time.sleep(0.25)
        else:
            raise RuntimeError(f"no first point of both curves within {limit} s")
    finally:
        try:
            os.killpg(app.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        app.wait(timeout=30)
        for j in jobs.list_jobs(db):
            if j.state in ("queued", "running"):
                jobs.cancel(db, j.id)
    steps = {j.kind: j for j in jobs.list_jobs(db)}
    figs = {"first_run": figure([max(first.values())], "s", note="empty data folder -> first point of both the "
                                                             "weak and the strong curve of the quick study"),
            "app_healthy": figure([t_app], "s", note="`python -m ich firstrun` + streamlit up (health endpoint)"),
            "chain_queued": figure([t_queued], "s", note="`python -m ich firstrun` returned (jobs queued)")}
    for kind in firstrun.STEPS:
        j = steps.get(kind)
        if j is not None and j.started and j.finished:
            figs[f"step_{kind}"] = figure([j.finished - j.started], "s", note=f"the {kind} job of the chain")
    for arm, t in first.items():
        figs[f"first_point_{arm}"] = figure([t], "s", note=f"first finished {arm} cell of the quick study")
    goals = [goal(figs, "first_run", "<=", 90.0, text="≤ 90 s from an empty data folder on 2 cores"),
             goal(figs, "app_healthy", "<=", 15.0, text="≤ 15 s until the app answers")]
    return {"title": "First run: empty data folder -> app healthy -> first point of both quick-study curves",
            "figures": figs, "goals": goals,
            "notes": ["quick mode: a tiny phantom (40 exams, 64 px) and a 2-epoch encoder" if ctx.quick else
                      "the default phantom (300 exams at 128 px) and its default encoder, built as `make run` does"],
            "params": {"exams": cfg.exams, "size": cfg.size, "pretrain_args": list(cfg.pretrain_args),
                       "study_queued_after_s": t_study}}
