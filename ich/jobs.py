"""Background jobs: a SQLite queue of ``python -m ich ...`` commands run as subprocesses.

The app never trains in its own process. ``submit`` records a job (a command line and the
folder it writes) and starts it when a slot is free: at most one training job per GPU, one
on CPU. Each job runs as ``python -m ich.jobs <db> <job_id>`` in a new process session; that
worker runs the command, records its exit, and starts the next queued job. Nothing here needs a daemon.

The job's state matches its process tree: the command (the worker's child) gets SIGTERM when the
worker dies (Linux ``PR_SET_PDEATHSIG``), stops as on Ctrl-C, records the job's end itself and starts
the next queued job, so the queue advances without anyone looking. A job stays "running" while any
process of its group lives; once all are gone without reporting (killed from outside), it is marked
failed with the reason the next time anyone looks (done, if its run folder says the run finished).

States: queued -> running -> done | failed | cancelled.

A job may wait for another (``submit(..., after=ID)``, kept in the small ``job_after`` table):
it stays queued until that job is done, waits on while it is failed (``resume`` hands the wait
over to the resumed job), and is cancelled with it.
"""

from __future__ import annotations

import ctypes
import fcntl
import glob
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATES = ("done", "failed", "cancelled")
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    argv TEXT NOT NULL,
    workdir TEXT NOT NULL,
    out_dir TEXT NOT NULL,
    log_path TEXT NOT NULL,
    state TEXT NOT NULL,
    pid INTEGER,
    returncode INTEGER,
    error TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL
)
"""
AFTER_SCHEMA = "CREATE TABLE IF NOT EXISTS job_after (job_id INTEGER PRIMARY KEY, after_id INTEGER NOT NULL)"


@dataclass(frozen=True)
class Job:
    """One row of the job table."""

    id: int
    kind: str          # train | study | pretrain | synth | import | ...
    title: str         # short human label
    argv: list[str]    # arguments after ``python -m ich``
    workdir: str       # working directory of the command
    out_dir: str       # the run / study / dataset folder the command writes
    log_path: str      # what the command printed (stdout and stderr), in <db folder>/logs/
    state: str
    pid: int | None
    returncode: int | None
    error: str | None
    created: float
    started: float | None
    finished: float | None


def _connect(db: str | os.PathLike) -> sqlite3.Connection:
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(str(db), timeout=30, isolation_level=None)
    # SQLite answers a switch to WAL that races another connection's set-up with an immediate "database is
    # locked" (no busy wait): about 1 in 36 concurrent first submits was lost. An OS lock serialises set-up.
    with open(f"{db}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute(SCHEMA)
        con.execute(AFTER_SCHEMA)
    return con


def _row_to_job(row: tuple) -> Job:
    (id_, kind, title, argv, workdir, out_dir, log_path, state, pid, rc, error, created, started, finished) = row
    return Job(id_, kind, title, json.loads(argv), workdir, out_dir, log_path, state, pid, rc, error, created,
               started, finished)


def default_slots() -> int:
    """Concurrent jobs allowed: one per CUDA GPU, else one on CPU.

    Without a GPU device node (``/dev/nvidia*``, ``/dev/kfd``) the answer is 1 without importing
    torch, which takes seconds on a busy machine (``make run`` queues jobs before serving the app).
    """
    if "torch" not in sys.modules and not (glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd")):
        return 1
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except Exception:  # pragma: no cover - torch missing is not a job-queue concern
        return 1


def submit(db: str | os.PathLike, argv: list[str], *, kind: str, out_dir: str | os.PathLike,
           title: str | None = None, workdir: str | os.PathLike | None = None,
           slots: int | None = None, start: bool = True, after: int | None = None) -> Job:
    """Queue ``python -m ich <argv>`` and start it if a slot is free.

    Args:
        db: the SQLite file (the app uses ``data/jobs.sqlite``).
        argv: arguments after ``python -m ich``, e.g. ``["train", "--dataset", ...]``.
        kind: what the job is (shown in the app).
        out_dir: the folder the command writes (a run or study folder).
        slots: concurrent jobs allowed (default: ``default_slots()``).
        start: start queued jobs now (tests may pass False).
        after: the id of a job this one waits for (it starts once that job is done).

    Raises:
        ValueError: if ``argv`` is empty or not a list of strings.
        KeyError: if ``after`` names no job.
        FileExistsError: if a queued or running job already writes ``out_dir`` (one writer per folder:
            a double click or a form submitted twice queues one job, not two).
    """
    if after is not None:
        get(db, after)
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"argv must be a non-empty list of strings (arguments after `python -m ich`), not {argv!r}")
    workdir = str(Path(workdir or os.getcwd()).resolve())
    out_dir = str(Path(workdir, out_dir).resolve())
    logs = Path(db).resolve().parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with closing(_connect(db)) as con:
        con.execute("BEGIN IMMEDIATE")           # the check and the insert are one transaction
        busy = con.execute("SELECT id, state FROM jobs WHERE out_dir = ? AND state IN ('queued', 'running')",
                           (out_dir,)).fetchone()
        if busy is not None:
            con.execute("ROLLBACK")
            raise FileExistsError(f"job #{busy[0]} ({busy[1]}) already writes {out_dir}; wait for it, cancel it on "
                                  "the Runs page (`python -m ich jobs cancel ID`), or choose another name")
        cur = con.execute(
            "INSERT INTO jobs (kind, title, argv, workdir, out_dir, log_path, state, created) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (kind, title or " ".join(argv[:1] + [Path(out_dir).name]), json.dumps(argv), workdir, out_dir,
             "", "queued", time.time()),
        )
        job_id = cur.lastrowid
        con.execute("UPDATE jobs SET log_path=? WHERE id=?", (str(logs / f"job-{job_id}.log"), job_id))
        if after is not None:
            con.execute("INSERT INTO job_after (job_id, after_id) VALUES (?,?)", (job_id, int(after)))
        con.execute("COMMIT")
    if start:
        start_queued(db, slots=slots)
    return get(db, job_id)


def get(db: str | os.PathLike, job_id: int) -> Job:
    """One job by id (after reconciling dead processes)."""
    reconcile(db)
    with closing(_connect(db)) as con:
        row = con.execute("SELECT * FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
    if row is None:
        raise KeyError(f"no job {job_id} in {db}; list jobs with `python -m ich jobs list`")
    return _row_to_job(row)


def waits_for(db: str | os.PathLike, job_id: int) -> int | None:
    """The id of the job ``job_id`` waits for (``submit(..., after=...)``), or None."""
    with closing(_connect(db)) as con:
        row = con.execute("SELECT after_id FROM job_after WHERE job_id = ?", (int(job_id),)).fetchone()
    return None if row is None else int(row[0])


def list_jobs(db: str | os.PathLike) -> list[Job]:
    """Every job, newest first (after reconciling dead processes)."""
    if not Path(db).exists():
        return []
    reconcile(db)
    with closing(_connect(db)) as con:
        rows = con.execute("SELECT * FROM jobs ORDER BY id DESC").fetchall()
    return [_row_to_job(r) for r in rows]


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's process
        return True
    try:  # a zombie (exited, not yet reaped) counts as dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _group_alive(pgid: int | None) -> bool:
    """Whether a process of group ``pgid`` (a worker and what it started) still runs; zombies do not count."""
    if not pgid:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's processes
        return True
    if not Path("/proc/self/stat").exists():  # pragma: no cover - no /proc: trust killpg
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()      # state, ppid, pgrp, ...
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            return True
    return False


def _run_finished(out_dir: str) -> bool:
    """Whether ``out_dir`` is a run folder whose status says done."""
    from ich import runs

    return runs.is_run(out_dir) and runs.read_status(out_dir).get("state") == "done"


def reconcile(db: str | os.PathLike) -> None:
    """Settle running jobs whose processes are all gone: failed with the reason (done if their run finished);
    then start queued jobs in the slots they held."""
    ended = False
    with closing(_connect(db)) as con:
        rows = con.execute("SELECT id, pid, out_dir FROM jobs WHERE state = 'running'").fetchall()
        for job_id, pid, out_dir in rows:
            if _alive(pid) or _group_alive(pid):
                continue          # the worker, or a command it started, still runs: the job is running
            finished = _run_finished(out_dir)
            error = None if finished else (
                f"the job's process (pid {pid}) ended without reporting: it was killed from outside or the machine "
                "restarted. Resume it to continue from its last checkpoint.")
            cur = con.execute("UPDATE jobs SET state=?, finished=?, error=? WHERE id=? AND state='running'",
                              ("done" if finished else "failed", time.time(), error, job_id))
            ended = ended or cur.rowcount > 0
    if ended:
        start_queued(db)


def start_queued(db: str | os.PathLike, *, slots: int | None = None) -> list[int]:
    """Start queued jobs (oldest first) while fewer than ``slots`` are running. Returns started ids."""
    slots = slots or default_slots()
    reconcile(db)
    started = []
    with closing(_connect(db)) as con:
        con.execute("BEGIN IMMEDIATE")
        try:
            running = con.execute("SELECT COUNT(*) FROM jobs WHERE state='running'").fetchone()[0]
            queued = _ready(con)
            for job_id in queued[: max(0, slots - running)]:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "ich.jobs", str(Path(db).resolve()), str(job_id)],
                    cwd=con.execute("SELECT workdir FROM jobs WHERE id=?", (job_id,)).fetchone()[0],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
                con.execute("UPDATE jobs SET state='running', pid=?, started=? WHERE id=?",
                            (proc.pid, time.time(), job_id))
                started.append(job_id)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return started


def _ready(con: sqlite3.Connection) -> list[int]:
    """Queued jobs free to start, oldest first; those waiting for a cancelled job are cancelled with it."""
    rows = con.execute("SELECT j.id, a.after_id, d.state FROM jobs j LEFT JOIN job_after a ON a.job_id = j.id "
                       "LEFT JOIN jobs d ON d.id = a.after_id WHERE j.state='queued' ORDER BY j.id").fetchall()
    ready = []
    for job_id, after_id, dep_state in rows:
        if after_id is None or dep_state == "done":
            ready.append(job_id)
        elif dep_state == "cancelled" or dep_state is None:
            con.execute("UPDATE jobs SET state='cancelled', finished=?, error=? WHERE id=?",
                        (time.time(), f"cancelled: it waited for job {after_id}, which was cancelled", job_id))
    return ready


def cancel(db: str | os.PathLike, job_id: int) -> Job:
    """Cancel a queued or running job (its whole process group is terminated)."""
    job = get(db, job_id)
    if job.state in FINAL_STATES:
        raise ValueError(f"job {job_id} is already {job.state}; only queued or running jobs can be cancelled")
    with closing(_connect(db)) as con:
        con.execute("UPDATE jobs SET state='cancelled', finished=?, error=? WHERE id=?",
                    (time.time(), "cancelled by the user", job_id))
    if job.state == "running" and job.pid:
        try:
            os.killpg(job.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.time() + 5          # let the processes write their own ending first
        while _alive(job.pid) and time.time() < deadline:
            time.sleep(0.1)
    mark_cancelled(job.out_dir)
    start_queued(db)
    return get(db, job_id)


def mark_cancelled(out_dir: str | os.PathLike) -> None:
    """Write "cancelled" into what a cancelled job was writing: a run's status.json or a study's progress."""
    from ich import runs

    out = Path(out_dir)
    try:
        if runs.is_run(out):
            if runs.read_status(out).get("state") in ("queued", "running"):
                runs.write_status(out, "cancelled", error="cancelled by the user")
        elif (out / "progress.json").is_file():
            from ich.study import mark_cancelled as mark_study

            mark_study(out)
    except OSError as err:                  # a vanished folder: the job table still says cancelled
        log.warning("could not mark %s cancelled: %s", out, err)


def resume(db: str | os.PathLike, job_id: int, *, resume_flag: str = "--resume", after: int | None = None) -> Job:
    """Queue a finished-but-unsuccessful job again, with ``--resume`` so it continues from its checkpoint.

    The new job waits for ``after`` when given, else for the job the old one waited for.
    """
    job = get(db, job_id)
    if job.state not in ("failed", "cancelled"):
        raise ValueError(f"job {job_id} is {job.state}; only failed or cancelled jobs can be resumed")
    argv = job.argv if resume_flag in job.argv else [*job.argv, resume_flag]
    new = submit(db, argv, kind=job.kind, out_dir=job.out_dir, title=job.title, workdir=job.workdir, start=False,
                 after=after if after is not None else waits_for(db, job_id))
    with closing(_connect(db)) as con:   # jobs that waited for the old job now wait for the new one
        con.execute("UPDATE job_after SET after_id=? WHERE after_id=?", (new.id, job_id))
    start_queued(db)
    return get(db, new.id)


def tail_log(job: Job, lines: int = 20) -> str:
    """The last lines the job's command printed (stdout and stderr together), as a terminal shows them: a
    progress bar redrawn with carriage returns is one line in its latest state, not one line per redraw."""
    if not job.log_path or not Path(job.log_path).exists():
        return ""
    with open(job.log_path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64 * 1024))
        text = f.read().decode("utf-8", errors="replace")
    shown = []
    for line in text.split("\n"):
        drawn = [part for part in line.split("\r") if part.strip()]
        if drawn:
            shown.append(drawn[-1])
    return "\n".join(shown[-lines:])


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """In a child between fork and exec: get SIGTERM when ``parent`` dies (Linux); exit if it already has."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if os.getppid() != parent:
        os._exit(1)


def _finish(db: str, job_id: int, rc: int, error: str | None) -> None:
    """Record a job's end (once: only a running job changes)."""
    with closing(_connect(db)) as con:
        con.execute(
            "UPDATE jobs SET state=?, returncode=?, finished=?, error=COALESCE(error, ?) "
            "WHERE id=? AND state='running'",
            ("done" if rc == 0 else "failed", rc, time.time(), None if rc == 0 else error, job_id),
        )


def _worker(db: str, job_id: int) -> int:
    """Run one job's command (as this worker's child), record its end, start the next queued job."""
    job = get(db, job_id)
    Path(job.out_dir).parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    worker = os.getpid()
    with open(job.log_path, "ab") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "ich.jobs", "--command", db, str(job_id)], cwd=job.workdir,
                                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                preexec_fn=lambda: _die_with_parent(worker))

        def forward(signum, _frame):
            proc.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        rc = proc.wait()
    error = None
    if rc != 0:
        last = tail_log(job, 5).strip().splitlines()
        error = next((ln for ln in reversed(last) if ln.startswith("error:")), last[-1] if last else f"exit {rc}")
    _finish(db, job_id, rc, error)
    start_queued(db)
    return rc


def _interrupt(signum, _frame):
    raise KeyboardInterrupt


def _command(db: str, job_id: int) -> int:
    """The worker's child: run the job's ``python -m ich`` command in this process.

    SIGTERM (a cancel, or the worker's death) stops it as Ctrl-C would. When the worker died meanwhile,
    nobody else will record the end: this process records it and starts the next queued job.
    """
    worker = os.getppid()
    signal.signal(signal.SIGTERM, _interrupt)
    argv = get(db, job_id).argv
    try:
        from ich.cli import main

        rc = main(argv)
    except SystemExit as stop:                    # argparse refusals
        rc = stop.code if isinstance(stop.code, int) else 1
    except KeyboardInterrupt:
        rc = 130
    if os.getppid() != worker:
        _finish(db, job_id, rc, f"the job's worker (pid {worker}) was killed; its command stopped (exit {rc}). "
                                "Resume it to continue from its last checkpoint.")
        start_queued(db)
    return rc


if __name__ == "__main__":  # python -m ich.jobs <db> <job_id>  (worker) | --command <db> <job_id>  (its child)
    if sys.argv[1] == "--command":
        raise SystemExit(_command(sys.argv[2], int(sys.argv[3])))
    raise SystemExit(_worker(sys.argv[1], int(sys.argv[2])))


def eta_seconds(elapsed_s: float, fraction_done: float | None) -> float | None:
    """Seconds left at the pace so far (``elapsed * (1 - f) / f``); None before 2% is done."""
    if fraction_done is None or not 0.02 <= fraction_done < 1 or elapsed_s <= 0:
        return None
    return elapsed_s * (1 - fraction_done) / fraction_done


def describe_eta(seconds: float | None) -> str:
    """Plain words for a remaining time: 'about 40 s', 'about 3 min', or '' when unknown."""
    if seconds is None:
        return ""
    if seconds < 90:
        return f"about {max(5, int(round(seconds / 5.0)) * 5)} s"
    return f"about {int(round(seconds / 60.0))} min"


def progress_of(out_dir: str | os.PathLike, started: float | None = None) -> dict:
    """Live progress of what a job writes: a run folder's status.json, or a study's progress.

    ``started`` is the job's start (epoch seconds), for a run's time left.
    Returns ``{"progress": 0-1 or None, "detail": short text, "val_exam_auc": float or None,
    "eta_s": seconds left or None}``. A run's AUC is the one that chose its model (the best
    validation AUC so far while it trains), not its last epoch's.
    """
    from ich import runs

    out = Path(out_dir)
    now = time.time()
    if runs.is_run(out):
        st = runs.read_status(out)
        chosen = (st.get("summary") or st.get("best") or {}).get("val_exam_auc")
        epoch = st.get("epoch")
        running = st.get("state") == "running"
        eta = eta_seconds(now - started, st.get("progress")) if running and started else None
        return {"progress": st.get("progress"), "detail": f"epoch {epoch}" if epoch is not None else st["state"],
                "val_exam_auc": float(chosen) if isinstance(chosen, (int, float)) else None, "eta_s": eta}
    study_progress = out / "progress.json"
    if study_progress.is_file():
        try:
            p = json.loads(study_progress.read_text())
        except json.JSONDecodeError:
            p = {}
        done, total = p.get("done", 0), p.get("total") or 0
        ended = f" · {p['state']}" if p.get("state") in ("cancelled", "failed") else ""
        return {"progress": done / total if total else None, "detail": f"{done}/{total} cells{ended}",
                "val_exam_auc": None, "eta_s": study_eta(p, now)}
    return {"progress": None, "detail": "", "val_exam_auc": None, "eta_s": None}


def study_eta(progress: dict, now: float | None = None) -> float | None:
    """A running study's seconds left at its cells' own pace since they began (set-up excluded), from its
    progress.json (``cells_from``, ``cells_done_before``, ``done``, ``total``); None before that is known."""
    total, before = progress.get("total") or 0, progress.get("cells_done_before", 0)
    if progress.get("state") != "running" or not progress.get("cells_from") or total <= before:
        return None
    elapsed = (now or time.time()) - progress["cells_from"]
    return eta_seconds(elapsed, (progress.get("done", 0) - before) / (total - before))


def overview_row(job: Job) -> dict:
    """One job as the Runs page and `ich jobs list` show it, with its live progress and time left."""
    live = progress_of(job.out_dir, job.started) if job.state == "running" or job.state in FINAL_STATES else {}
    progress = 1.0 if job.state == "done" else live.get("progress")
    eta = live.get("eta_s") if job.state == "running" else None
    return {"id": job.id, "state": job.state, "kind": job.kind, "title": job.title,
            "progress": float(progress) if progress is not None else 0.0, "detail": live.get("detail", ""),
            "val_exam_auc": live.get("val_exam_auc"), "eta_s": eta, "time_left": describe_eta(eta),
            "error": job.error, "out_dir": job.out_dir,
            "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.created))}


def overview(db: str | os.PathLike) -> list[dict]:
    """Every job (newest first) with its live progress (``overview_row``)."""
    return [overview_row(j) for j in list_jobs(db)]
