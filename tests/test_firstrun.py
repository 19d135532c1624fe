"""Tests for ich.firstrun: the default phantom, import and encoder as one resumable chain of jobs."""

from __future__ import annotations

import os
import signal
import time

import pytest

from ich import firstrun, jobs

TINY = firstrun.FirstRunConfig(exams=40, size=64, slices=(8, 10), workers=1, pretrain_args=(
    "--epochs", "6", "--batch-size", "16", "--input-size", "64", "--threads", "1",
    "--set", "local_size=32", "--set", "local_jitter=2"))


def wait_until(condition, what: str, timeout: float = 120.0, every: float = 0.02):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def kill_running(db, kind: str) -> None:
    """What a restart does to a job: its process tree is gone without a word."""
    job = next(j for j in jobs.list_jobs(db) if j.kind == kind and j.state == "running")
    os.killpg(job.pid, signal.SIGKILL)
    wait_until(lambda: jobs.get(db, job.id).state == "failed", f"{kind} marked failed", timeout=10)


def test_steps_default_to_the_phantom_at_the_size_it_is_used(tmp_path):
    steps = firstrun.chain_steps(root=tmp_path)
    assert [s.name for s in steps] == list(firstrun.STEPS)
    synth, imp, pre = steps
    assert synth.argv[synth.argv.index("--size") + 1] == "128" == imp.argv[imp.argv.index("--size") + 1]
    assert pre.out == tmp_path.resolve() / "encoders" / "phantom-compact.pt"
    assert firstrun.dataset_path(root=tmp_path) == imp.out


@pytest.mark.slow
def test_chain_survives_restarts_half_way_and_builds_nothing_twice(tmp_path):
    db, root = tmp_path / "jobs.sqlite", tmp_path / "data"
    actions = firstrun.start_chain(db, TINY, root)
    assert [a["action"] for a in actions] == ["submitted"] * 3
    synth, imp, pre = firstrun.chain_steps(TINY, root)
    assert jobs.waits_for(db, actions[2]["job_id"]) == actions[1]["job_id"]
    # a study queued at once waits for the encoder
    rows = firstrun.chain_status(db, TINY, root)
    assert firstrun.pending_job(rows) == actions[2]["job_id"]
    assert [r["state"] for r in rows][1:] == ["queued", "queued"] and firstrun.remaining_s(rows) > 0

    # restart 1: half-way through synth
    partial = synth.out.parent / f".{synth.out.name}.partial"
    wait_until(lambda: len(list((partial / "done").glob("PH*.json"))) >= 3, "three synthesised exams")
    kill_running(db, "synth")
    kept = {p.name: p.stat().st_mtime_ns for p in (partial / "done").glob("PH*.json")}
    first_files = {p.relative_to(partial): p.stat().st_mtime_ns
                   for e in kept for p in (partial / "exams" / e[:-5]).iterdir()}
    assert 3 <= len(kept) < TINY.exams and not synth.done.exists()
    assert [r["state"] for r in firstrun.chain_status(db, TINY, root)] == ["failed", "queued", "queued"]
    actions = firstrun.start_chain(db, TINY, root)
    assert [a["action"] for a in actions] == ["resumed", "active", "active"]

    # restart 2: half-way through pretraining (after at least one saved epoch)
    state = pre.out.with_name(pre.out.name + ".state")
    wait_until(state.exists, "a saved pretraining epoch", timeout=300, every=0.05)
    kill_running(db, "pretrain")
    assert not pre.done.exists()
    actions = firstrun.start_chain(db, TINY, root)
    assert [a["action"] for a in actions] == ["done", "done", "resumed"]
    wait_until(lambda: all(r["state"] == "done" for r in firstrun.chain_status(db, TINY, root))
               and all(j.state in jobs.FINAL_STATES for j in jobs.list_jobs(db)), "the chain", timeout=300, every=0.2)

    # nothing generated twice: the exams finished before the kill are the same files, untouched
    for rel, mtime in first_files.items():
        assert (synth.out / rel).stat().st_mtime_ns == mtime, rel
    logs = {j.kind: jobs.tail_log(j, 400) for j in jobs.list_jobs(db) if j.state == "done"}
    assert f"{len(kept)} exams already written" in logs["synth"]
    assert "resuming pretraining" in logs["pretrain"]
    assert (imp.done).exists() and not partial.exists()

    # a second `make run`: nothing to do, nothing submitted
    n = len(jobs.list_jobs(db))
    assert [a["action"] for a in firstrun.start_chain(db, TINY, root)] == ["done"] * 3
    assert len(jobs.list_jobs(db)) == n


def test_status_of_a_fresh_folder_says_missing(tmp_path):
    rows = firstrun.chain_status(tmp_path / "jobs.sqlite", TINY, tmp_path)
    assert [r["state"] for r in rows] == ["missing"] * 3
    assert firstrun.pending_job(rows) is None and firstrun.remaining_s(rows) is None
