"""The first run: the default phantom, its import and its encoder built as one chain of background jobs.

``make run`` calls ``start_chain`` (``python -m ich firstrun``) and then serves the app at once;
Home shows the chain with ``chain_status``. Each step is an ordinary ``ich.jobs`` job that waits
for the one before it (``jobs.submit(..., after=...)``), so a quick study queued meanwhile simply
waits for the encoder (``pending_job``). Calling ``start_chain`` again is cheap and safe:

- a step whose output exists is skipped (a second ``make run`` submits nothing);
- a step with a queued or running job is left alone;
- a step whose job died (a restart, a kill) or was cancelled is resumed: synth keeps the exams it
  finished (``synth --resume``) and pretraining the epochs it finished (``pretrain --resume``),
  so nothing is generated twice. The import writes under a temporary name and reads the DICOM
  files again from the start.

The default phantom is written at the size the learners use (128 px), not at 256 px and then
resized on import.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ich import jobs, paths

REPO = Path(__file__).resolve().parents[1]   # where `python -m ich` runs the chain's commands
STEPS = ("synth", "import", "pretrain")
#: Seconds each step takes on a quiet 2-core machine; they only set the ETA of steps that have not
#: started, scaled by how fast this chain's finished steps ran against them. synth: issue 14's 40 s
#: at 256 px / the 2.46x measured for 128 px (BENCHMARKS.md, first run); import: its 20 s at 256 px
#: halved (a quarter of the pixels, no resize; 4.5x measured under uneven load); pretrain: a third of
#: the 200 s `make run` measured for the former 30 epochs of 128 slices (9 epochs of 64 cost 3.3x
#: less, measured back to back; ich.pretrain's docstring).
TYPICAL_S = {"synth": 16.0, "import": 10.0, "pretrain": 60.0}
TITLES = {"synth": "Generating the default phantom (synthetic head-CT DICOM)",
          "import": "Importing it into the lab",
          "pretrain": "Pretraining its slice encoder (no labels used)"}


@dataclass(frozen=True)
class FirstRunConfig:
    """What the first run builds (the defaults are the app's default phantom)."""

    name: str = "phantom"                         # dataset name: data/dicom/<name>, data/datasets/<name>
    exams: int = 300                              # phantom exams
    seed: int = 0                                 # phantom seed
    size: int = 128                               # px, written at the size the learners use
    slices: tuple[int, int] | None = None         # slices per exam (None: the phantom's default)
    workers: int | None = None                    # synth/import processes (None: their defaults)
    pretrain_args: tuple[str, ...] = ()           # extra `ich pretrain` options (tests: a tiny run)


@dataclass(frozen=True)
class Step:
    """One link of the chain."""

    name: str            # synth | import | pretrain
    title: str           # plain words for Home
    argv: tuple[str, ...]  # arguments after `python -m ich`
    out: Path            # the folder or file the step writes
    done: Path           # exists once the step is complete
    resume_flag: str     # what `jobs.resume` adds to continue (already in argv: the import starts again)


def chain_steps(cfg: FirstRunConfig | None = None, root: str | os.PathLike | None = None) -> list[Step]:
    """The three steps for ``cfg`` under the data root ``root`` (default ``paths.data_root()``)."""
    cfg = cfg or FirstRunConfig()
    root = Path(root or paths.data_root()).resolve()
    dicom, dataset = root / "dicom" / cfg.name, root / "datasets" / cfg.name
    encoder = root / "encoders" / f"{cfg.name}-compact.pt"
    workers = ("--workers", str(cfg.workers)) if cfg.workers else ()
    synth = ("synth", "--out", str(dicom), "--exams", str(cfg.exams), "--seed", str(cfg.seed), "--size",
             str(cfg.size), *(("--slices", *map(str, cfg.slices)) if cfg.slices else ()), *workers, "--resume")
    imp = ("import", "phantom", str(dicom), "--out", str(dataset), "--size", str(cfg.size), *workers,
           "--no-progress")
    pre = ("pretrain", "--dataset", str(dataset), "--out", str(encoder), *cfg.pretrain_args, "--resume")
    return [Step("synth", TITLES["synth"], synth, dicom, dicom / "synth.json", "--resume"),
            Step("import", TITLES["import"], imp, dataset, dataset / "dataset.json", "--no-progress"),
            Step("pretrain", TITLES["pretrain"], pre, encoder, encoder, "--resume")]


def _needed(steps: list[Step]) -> dict[str, bool]:
    """The app needs the dataset and the encoder; the DICOM files only to import them."""
    synth, imp, pre = steps
    need_import = not imp.done.exists()
    return {"synth": need_import and not synth.done.exists(), "import": need_import,
            "pretrain": not pre.done.exists()}


def _latest_job(all_jobs: list[jobs.Job], step: Step) -> jobs.Job | None:
    out = str(step.out)
    return next((j for j in all_jobs if j.kind == step.name and j.out_dir == out), None)  # newest first


def start_chain(db: str | os.PathLike | None = None, cfg: FirstRunConfig | None = None,
                root: str | os.PathLike | None = None, workdir: str | os.PathLike | None = None) -> list[dict]:
    """Queue (or resume) the steps whose output is missing, each waiting for the one before.

    Returns:
        One dict per step: ``{"step", "action", "job_id"}``; action is ``done`` (output exists),
        ``skipped`` (not needed), ``active`` (a job is already queued or running), ``resumed``
        or ``submitted``.
    """
    db = db or paths.jobs_db()
    steps = chain_steps(cfg, root)
    needed = _needed(steps)
    all_jobs = jobs.list_jobs(db)
    workdir = str(Path(workdir or REPO))
    actions, prev = [], None
    for step in steps:
        if not needed[step.name]:
            actions.append({"step": step.name, "action": "done" if step.done.exists() else "skipped",
                            "job_id": None})
            continue
        job = _latest_job(all_jobs, step)
        if job is not None and job.state in ("queued", "running"):
            action = "active"
        elif job is not None and job.state in ("failed", "cancelled"):
            job, action = jobs.resume(db, job.id, resume_flag=step.resume_flag, after=prev), "resumed"
        else:   # never run, or done although its output has gone since: build it again
            job = jobs.submit(db, list(step.argv), kind=step.name, out_dir=step.out, title=step.title,
                              workdir=workdir, after=prev)
            action = "submitted"
        actions.append({"step": step.name, "action": action, "job_id": job.id})
        prev = job.id
    if prev is not None:
        jobs.start_queued(db)   # after a restart nobody else starts what was left queued
    return actions


_TQDM = re.compile(r"(\d+)/(\d+) \[")


def _progress(step: Step, job: jobs.Job | None, cfg: FirstRunConfig) -> float | None:
    """0-1 from the job's progress bar (synth, pretrain) or the files it wrote so far (import)."""
    if job is None or job.state != "running":
        return None
    hits = _TQDM.findall(jobs.tail_log(job, 3))
    if hits:
        done, total = map(int, hits[-1])
        return min(1.0, done / total) if total else None
    if step.name == "import":
        parts = list(step.out.parent.glob(f".{step.out.name}.tmp-*/volumes/*.npy"))
        return min(1.0, len(parts) / max(1, cfg.exams))
    return None


def chain_status(db: str | os.PathLike | None = None, cfg: FirstRunConfig | None = None,
                 root: str | os.PathLike | None = None) -> list[dict]:
    """Each step's state for Home: ``{"step", "title", "state", "progress", "eta_s", "job_id", "error"}``.

    state is ``done``, ``running``, ``queued``, ``failed``, ``cancelled`` or ``missing`` (no job
    and no output: run ``python -m ich firstrun``). ``eta_s`` is the step's remaining seconds:
    measured from its own progress once it runs, else ``TYPICAL_S`` scaled by how fast the
    finished steps of this chain ran against their typical time.
    """
    db = db or paths.jobs_db()
    cfg = cfg or FirstRunConfig()
    steps = chain_steps(cfg, root)
    needed = _needed(steps)
    all_jobs = jobs.list_jobs(db) if Path(db).exists() else []
    now = time.time()
    rows, ratios = [], []
    for step in steps:
        job = _latest_job(all_jobs, step)
        if not needed[step.name]:
            state = "done"
        elif job is None or job.state == "done":
            state = "missing"
        else:
            state = job.state
        progress = 1.0 if state == "done" else _progress(step, job, cfg)
        eta = None
        if state == "running" and job.started:
            eta = jobs.eta_seconds(now - job.started, progress)
        if job is not None and job.state == "done" and job.started and job.finished:
            ratios.append((job.finished - job.started) / TYPICAL_S[step.name])
        rows.append({"step": step.name, "title": step.title, "state": state, "progress": progress, "eta_s": eta,
                     "job_id": job.id if job else None, "error": job.error if job and state == "failed" else None})
    speed = sum(ratios) / len(ratios) if ratios else 1.0
    for row in rows:
        if row["state"] in ("queued", "running") and row["eta_s"] is None:
            row["eta_s"] = TYPICAL_S[row["step"]] * speed * (1 - (row["progress"] or 0.0))
    return rows


def remaining_s(rows: list[dict]) -> float | None:
    """Seconds until the whole chain is done (None when nothing is queued or running)."""
    left = [r["eta_s"] for r in rows if r["state"] in ("queued", "running")]
    return sum(left) if left and all(v is not None for v in left) else None


def pending_job(rows: list[dict]) -> int | None:
    """The job a new study on the default dataset should wait for: the last queued or running step."""
    active = [r["job_id"] for r in rows if r["state"] in ("queued", "running")]
    return active[-1] if active else None


def dataset_path(cfg: FirstRunConfig | None = None, root: str | os.PathLike | None = None) -> Path:
    """Where the chain puts the default dataset."""
    return chain_steps(cfg, root)[1].out


def study_after(dataset: str | os.PathLike, db: str | os.PathLike | None = None, cfg: FirstRunConfig | None = None,
                root: str | os.PathLike | None = None) -> int | None:
    """The chain job a study on ``dataset`` must wait for (None: not the chain's dataset, or nothing pending)."""
    if Path(dataset).resolve() != dataset_path(cfg, root):
        return None
    return pending_job(chain_status(db, cfg, root))


def queue_quick_study(out: str | os.PathLike, db: str | os.PathLike | None = None,
                      cfg: FirstRunConfig | None = None, root: str | os.PathLike | None = None,
                      extra: tuple[str, ...] = ()) -> jobs.Job:
    """Queue the quick study on the default dataset now; it starts once the chain's encoder is ready.

    ``extra``: more ``ich study`` options (the bench's quick mode shrinks the grid with them).
    """
    dataset = dataset_path(cfg, root)
    return jobs.submit(db or paths.jobs_db(), ["study", "--preset", "quick", "--dataset", str(dataset), "--out",
                                                str(out), *extra], kind="study", out_dir=out, workdir=REPO,
                       title=f"quick study on {dataset.name}", after=study_after(dataset, db, cfg, root))
