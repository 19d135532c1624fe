"""Tests for ich.jobs: the SQLite queue of background `python -m ich` commands."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from ich import jobs

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
