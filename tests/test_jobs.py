"""Tests for ich.jobs: the SQLite queue of background `python -m ich` commands."""

from __future__ import annotations

import os
import subprocess
import sys
import signal
import time
from pathlib import Path

import pytest

from ich import jobs, runs

REPO = Path(__file__).resolve().parents[1]


def wait_final(db, job_id, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = jobs.get(db, job_id)
        if job.state in jobs.FINAL_STATES:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s: {jobs.get(db, job_id)}")


def test_job_runs_and_records_success(tmp_path):
    db = tmp_path / "jobs.sqlite"
    job = jobs.submit(db, ["--help"], kind="help", out_dir=tmp_path / "out", workdir=REPO)
    assert job.state in ("running", "done")
    job = wait_final(db, job.id)
    assert job.state == "done" and job.returncode == 0
    assert "label-budget lab" in jobs.tail_log(job, 50)


def test_failed_job_keeps_the_error_line(tmp_path):
    db = tmp_path / "jobs.sqlite"
    job = jobs.submit(db, ["no-such-verb"], kind="bad", out_dir=tmp_path / "out", workdir=REPO)
    job = wait_final(db, job.id)
    assert job.state == "failed" and job.returncode == 2
    assert "invalid choice" in job.error


def test_one_slot_queues_the_second_job(tmp_path):
    db = tmp_path / "jobs.sqlite"
    a = jobs.submit(db, ["--help"], kind="help", out_dir=tmp_path / "a", workdir=REPO, start=False)
    b = jobs.submit(db, ["--help"], kind="help", out_dir=tmp_path / "b", workdir=REPO, start=False)
    assert jobs.start_queued(db, slots=1) == [a.id]
    assert jobs.get(db, b.id).state == "queued"
    wait_final(db, a.id)
    # the first worker starts the next queued job when it ends
    assert wait_final(db, b.id).state == "done"


def test_killed_job_shows_as_failed_with_reason(tmp_path):
    db = tmp_path / "jobs.sqlite"
    job = jobs.submit(db, ["synth", "--out", str(tmp_path / "big"), "--exams", "400", "--size", "128"],
                      kind="synth", out_dir=tmp_path / "big", workdir=REPO)
    os.killpg(job.pid, signal.SIGKILL)
    time.sleep(0.5)
    job = wait_final(db, job.id, timeout=10)
    assert job.state == "failed"
    assert "killed from outside" in job.error


def test_cancel_and_resume(tmp_path):
    db = tmp_path / "jobs.sqlite"
    job = jobs.submit(db, ["synth", "--out", str(tmp_path / "big"), "--exams", "400", "--size", "128"],
                      kind="synth", out_dir=tmp_path / "big", workdir=REPO)
    cancelled = jobs.cancel(db, job.id)
    assert cancelled.state == "cancelled"
    with pytest.raises(ValueError, match="already cancelled"):
        jobs.cancel(db, job.id)
    again = jobs.resume(db, job.id)
    assert again.id != job.id and again.argv[-1] == "--resume"
    jobs.cancel(db, again.id)


def test_submit_rejects_empty_argv(tmp_path):
    with pytest.raises(ValueError, match="non-empty list of strings"):
        jobs.submit(tmp_path / "jobs.sqlite", [], kind="x", out_dir=tmp_path)


def test_unknown_job_id_names_the_fix(tmp_path):
    db = tmp_path / "jobs.sqlite"
    jobs.submit(db, ["--help"], kind="help", out_dir=tmp_path / "a", workdir=REPO, start=False)
    with pytest.raises(KeyError, match="ich jobs list"):
        jobs.get(db, 99)


# ------------------------------------------------------------------------------ the job tells the truth
@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    from _blobs import write_blob_dataset

    path = tmp_path_factory.mktemp("jobs") / "easy"
    write_blob_dataset(path, 32, seed=3, size=64, slices=(8, 12), contrast=60.0, noise=5.0, radius=0.1)
    return path


def long_train(dataset, out) -> list[str]:
    return ["train", "--dataset", str(dataset), "--preset", "tiny", "--epochs", "500", "--out", str(out), "--quiet",
            "--threads", "1"]


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        frontier += kids
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_for(cond, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


def raw_state(db, job_id) -> str:
    """A job's state read straight from the database (no reconcile, no queue start)."""
    import sqlite3

    with sqlite3.connect(db) as con:
        return con.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()[0]


def test_killing_the_worker_ends_its_command_and_the_job_tells_the_truth(blobs, tmp_path):
    db, run = tmp_path / "jobs.sqlite", tmp_path / "run"
    job = jobs.submit(db, long_train(blobs, run), kind="train", out_dir=run, workdir=REPO)
    wait_for(lambda: runs.read_status(run).get("state") == "running", 120, "the trainer started")
    tree = descendants(job.pid)
    assert tree, "the worker has started its command"
    os.kill(job.pid, signal.SIGKILL)
    deadline = time.time() + 60
    while any(alive(p) for p in tree) and time.time() < deadline:
        state = jobs.get(db, job.id).state
        if state != "running":                 # only once the trainer has stopped (its run says so)
            assert runs.read_status(run)["state"] in runs.FINAL_STATES
        time.sleep(0.1)
    assert not [p for p in tree if alive(p)], "no orphan survives its worker"
    job = jobs.get(db, job.id)
    assert job.state == "failed" and f"worker (pid {job.pid}) was killed" in job.error
    assert runs.read_status(run)["state"] == "cancelled"


def test_the_queue_advances_by_itself_after_a_worker_dies(blobs, tmp_path):
    db, run = tmp_path / "jobs.sqlite", tmp_path / "run"
    a = jobs.submit(db, long_train(blobs, run), kind="train", out_dir=run, workdir=REPO, start=False)
    b = jobs.submit(db, ["--help"], kind="help", out_dir=tmp_path / "b", workdir=REPO, start=False)
    assert jobs.start_queued(db, slots=1) == [a.id]
    wait_for(lambda: runs.read_status(run).get("state") == "running", 120, "the trainer started")
    os.kill(jobs.get(db, a.id).pid, signal.SIGKILL)
    wait_for(lambda: raw_state(db, b.id) == "done", 90, "the queued job ran without anyone calling jobs")


def test_a_run_that_finished_leaves_its_job_done_not_failed(tmp_path):
    import sqlite3

    from ich.config import make_config

    db, run = tmp_path / "jobs.sqlite", tmp_path / "run"
    runs.create_run(run, make_config("ds"))
    runs.write_status(run, "done", summary={"best_epoch": 1})
    job = jobs.submit(db, ["train", "--resume", "--out", str(run)], kind="train", out_dir=run, start=False)
    gone = subprocess.Popen(["true"])
    gone.wait()
    with sqlite3.connect(db) as con:          # a worker that died after its run finished, before reporting
        con.execute("UPDATE jobs SET state='running', pid=? WHERE id=?", (gone.pid, job.id))
    job = jobs.get(db, job.id)
    assert job.state == "done" and job.error is None


_SUBMIT_AT_BARRIER = """import os, sys, time
from ich import jobs
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
jobs.submit(sys.argv[1], ["--help"], kind="help", out_dir=f"out-{os.getpid()}", start=False)  # one writer per folder
"""


@pytest.mark.slow
def test_concurrent_submits_on_a_new_database_lose_no_job(tmp_path):
    """36 processes submit at one instant (a barrier file) to a database that does not exist yet, twice."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for trial in range(2):
        db, go = tmp_path / f"t{trial}" / "jobs.sqlite", tmp_path / f"go{trial}"
        procs = [subprocess.Popen([sys.executable, "-c", _SUBMIT_AT_BARRIER, str(db), str(go)], cwd=tmp_path, env=env,
                                  stderr=subprocess.PIPE, text=True) for _ in range(36)]
        time.sleep(3.0)
        go.touch()
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0] * 36, [e for e in errors if e][:1]
        assert len(jobs.list_jobs(db)) == 36


def test_cancel_is_written_into_the_study_and_its_unfinished_runs(tmp_path, tiny_phantom_run):
    import shutil

    from ich import runs
    from ich.study import read_progress, write_progress

    study = tmp_path / "study"
    shutil.copytree(tiny_phantom_run, study / "runs" / "weak-b4-s0")
    shutil.copytree(tiny_phantom_run, study / "runs" / "weak-b8-s0")
    runs.write_status(study / "runs" / "weak-b4-s0", "running")
    write_progress(study, state="running", done=1, total=2, running=1)
    db = tmp_path / "jobs.sqlite"
    job = jobs.submit(db, ["synth", "--out", str(tmp_path / "big"), "--exams", "400", "--size", "128"],
                      kind="study", out_dir=study, workdir=REPO)
    assert jobs.cancel(db, job.id).state == "cancelled"
    assert read_progress(study)["state"] == "cancelled" and read_progress(study)["running"] == 0
    assert runs.read_status(study / "runs" / "weak-b4-s0")["state"] == "cancelled"
    assert runs.read_status(study / "runs" / "weak-b8-s0")["state"] == "done"          # finished cells stay done
    assert jobs.progress_of(study)["detail"] == "1/2 cells · cancelled"


def test_cancel_is_written_into_a_running_run(tmp_path, tiny_phantom_run):
    import shutil

    from ich import runs

    run = tmp_path / "run"
    shutil.copytree(tiny_phantom_run, run)
    runs.write_status(run, "running")
    db = tmp_path / "jobs.sqlite"
    job = jobs.submit(db, ["synth", "--out", str(tmp_path / "big"), "--exams", "400", "--size", "128"],
                      kind="train", out_dir=run, workdir=REPO)
    jobs.cancel(db, job.id)
    assert runs.read_status(run)["state"] == "cancelled"


def test_a_job_waits_for_the_one_it_comes_after(tmp_path):
    db = tmp_path / "jobs.sqlite"
    a = jobs.submit(db, ["--help"], kind="help", out_dir=tmp_path / "a", workdir=REPO, start=False)
    b = jobs.submit(db, ["--help"], kind="help", out_dir=tmp_path / "b", workdir=REPO, start=False, after=a.id)
    assert jobs.waits_for(db, b.id) == a.id and jobs.waits_for(db, a.id) is None
    assert jobs.start_queued(db, slots=2) == [a.id]      # b waits although a slot is free
    wait_final(db, a.id)
    assert wait_final(db, b.id).state == "done"          # a's worker started b when a was done


def test_a_waiting_job_follows_its_failed_job_into_resume_and_dies_with_a_cancel(tmp_path):
    db = tmp_path / "jobs.sqlite"
    a = jobs.submit(db, ["no-such-verb"], kind="bad", out_dir=tmp_path / "a", workdir=REPO, start=False)
    b = jobs.submit(db, ["--help"], kind="help", out_dir=tmp_path / "b", workdir=REPO, start=False, after=a.id)
    jobs.start_queued(db, slots=2)
    assert wait_final(db, a.id).state == "failed"
    assert jobs.start_queued(db, slots=2) == [] and jobs.get(db, b.id).state == "queued"   # waits on
    a2 = jobs.resume(db, a.id)
    assert jobs.waits_for(db, b.id) == a2.id
    wait_final(db, a2.id)
    assert jobs.get(db, b.id).state == "queued"
    jobs.cancel(db, b.id)
    c = jobs.submit(db, ["--help"], kind="help", out_dir=tmp_path / "c", workdir=REPO, start=False)
    d = jobs.submit(db, ["--help"], kind="help", out_dir=tmp_path / "d", workdir=REPO, start=False, after=c.id)
    jobs.cancel(db, c.id)
    d = jobs.get(db, d.id)
    assert d.state == "cancelled" and f"waited for job {c.id}" in d.error


def test_after_an_unknown_job_is_refused(tmp_path):
    with pytest.raises(KeyError, match="no job 7"):
        jobs.submit(tmp_path / "jobs.sqlite", ["--help"], kind="help", out_dir=tmp_path / "a", after=7)


def test_the_log_shows_a_redrawn_progress_bar_once_in_its_latest_state(tmp_path):
    log = tmp_path / "job.log"
    log.write_bytes(b"starting\n\rtrain:  10%|#   | 1/10\rtrain:  50%|##  | 5/10\rtrain: 100%|####| 10/10\n"
                    b"\rembed: 3%|\rembed: 60%|INFO ich.embed: cache written\n\r\ndone\n")
    job = jobs.Job(**{**{f: None for f in jobs.Job.__dataclass_fields__}, "log_path": str(log)})
    assert jobs.tail_log(job, 10).splitlines() == ["starting", "train: 100%|####| 10/10",
                                                   "embed: 60%|INFO ich.embed: cache written", "done"]
    assert jobs.tail_log(job, 2).splitlines() == ["embed: 60%|INFO ich.embed: cache written", "done"]


def test_a_runs_table_auc_is_the_one_that_chose_its_model_not_the_last_epochs(tmp_path, tiny_phantom_run):
    import shutil

    from ich import runs

    run = tmp_path / "run"
    shutil.copytree(tiny_phantom_run, run)
    (run / runs.METRICS_FILE).unlink()
    for epoch, auc in ((1, 0.70), (2, 0.813), (3, 0.765)):
        runs.append_metrics(run, {"epoch": epoch, "train_loss": 0.5, "val_exam_auc": auc})
    status = runs.read_status(run)
    runs.write_status(run, "running", progress=0.5, best={"epoch": 2, "val_exam_auc": 0.813}, summary=None)
    live = jobs.progress_of(run, started=time.time() - 20)
    assert live["val_exam_auc"] == 0.813
    assert 15 <= live["eta_s"] <= 25                           # half done in 20 s: about 20 s left
    runs.write_status(run, "done", **{k: status[k] for k in ("summary", "best") if k in status})
    assert jobs.progress_of(run)["val_exam_auc"] == status["summary"]["val_exam_auc"] and jobs.progress_of(run)["eta_s"] is None


def test_a_second_job_for_a_folder_being_written_is_refused(tmp_path):
    """One writer per folder: a double click (or Enter then the button) queues one job, not two."""
    db = tmp_path / "jobs.sqlite"
    first = jobs.submit(db, ["synth", "--out", str(tmp_path / "p"), "--exams", "400"], kind="synth",
                        out_dir=tmp_path / "p", start=False)
    with pytest.raises(FileExistsError, match=f"job #{first.id} \\(queued\\) already writes"):
        jobs.submit(db, ["synth", "--out", str(tmp_path / "p")], kind="synth", out_dir=tmp_path / "p", start=False)
    jobs.cancel(db, first.id)
    again = jobs.submit(db, ["synth", "--out", str(tmp_path / "p")], kind="synth", out_dir=tmp_path / "p", start=False)
    assert again.id != first.id and len(jobs.list_jobs(db)) == 2
    jobs.cancel(db, again.id)
