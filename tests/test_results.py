"""A study's standing in words (queued, running with time left, cancelled, failed, done) and readable tables."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from ich import jobs
from ich.results import readable, study_status
from ich.study import write_progress

REPO = Path(__file__).resolve().parents[1]


def a_job(state: str, out: Path) -> jobs.Job:
    return jobs.Job(id=1, kind="study", title="t", argv=[], workdir=".", out_dir=str(out), log_path="", state=state,
                    pid=None, returncode=None, error=None, created=0.0, started=None, finished=None)


def test_a_queued_study_says_so_before_it_has_written_anything(tmp_path):
    s = study_status(tmp_path / "s", a_job("queued", tmp_path / "s"))
    assert s["state"] == "queued" and s["live"] and "Queued" in s["sentence"]


def test_a_running_study_gives_the_time_left_at_its_cells_pace(tmp_path):
    write_progress(tmp_path, state="running", done=6, total=12, cells_from=time.time() - 60, cells_done_before=2)
    s = study_status(tmp_path)
    assert s["live"] and s["fraction"] == 0.5
    # 4 cells of 10 in 60 s: 6 left take 90 s
    assert "6 of 12 cells finished" in s["sentence"] and "about 2 min left" in s["sentence"], s["sentence"]
    assert 85 <= jobs.progress_of(tmp_path)["eta_s"] <= 95


def test_cancel_and_a_dead_job_end_the_live_view_in_plain_words(tmp_path):
    write_progress(tmp_path, state="cancelled", done=6, total=12)
    s = study_status(tmp_path)
    assert not s["live"] and s["sentence"].startswith("Cancelled: 6 of 12 cells") and "refreshing" not in s["sentence"]
    write_progress(tmp_path, state="running")                  # the process died without writing its end
    s = study_status(tmp_path, a_job("failed", tmp_path))
    assert not s["live"] and s["state"] == "failed" and "Resume it" in s["sentence"]
    write_progress(tmp_path, state="done", done=12)
    assert study_status(tmp_path, a_job("done", tmp_path))["sentence"] == "Finished: 12 of 12 cells."


def test_tables_show_plain_column_names_and_no_none():
    table = pd.DataFrame({"budget": [48], "diff_ci_low": [0.01], "label_noise": [None], "p_value": [np.nan]})
    shown = readable(table)
    assert list(shown.columns) == ["labels", "difference, 95% CI low", "label noise", "p (DeLong)"]
    assert shown["label noise"].iloc[0] == ""
    assert not any("_" in c for c in shown.columns)


def test_eta_words():
    assert jobs.eta_seconds(10, 0.01) is None and jobs.eta_seconds(10, 1.0) is None
    assert jobs.eta_seconds(30, 0.25) == 90
    assert jobs.describe_eta(None) == "" and jobs.describe_eta(42) == "about 40 s"
    assert jobs.describe_eta(150) == "about 2 min"


def test_a_finished_run_reads_as_a_sentence_not_a_json_dump(tiny_phantom_run):
    from ich import runs
    from ich.results import run_sentence

    summary = runs.read_status(tiny_phantom_run)["summary"]
    text = run_sentence(summary)
    assert text.startswith(f"Trained a {summary['supervision']} learner on {summary['n_labels']} ")
    assert "How the model was chosen: " in text and "{" not in text and "None" not in text
    assert run_sentence({"state": "cancelled"}) == "The run ended cancelled."
    guided = run_sentence({**summary, "supervision": "strong", "acquisition": "attention", "guide_exams": 24})
    assert "slice labels that a weak guide trained on 24 bought exam labels pointed at" in guided
    assert "bought in rounds by coreset" in run_sentence({**summary, "acquisition": "coreset"})


def test_the_evaluation_record_reads_old_and_new_metrics_and_refuses_newer(tiny_phantom_run, tmp_path):
    import json
    import shutil

    import pytest

    from ich import runs
    from ich.evaluate import evaluate_run
    from ich.record import FORMAT, Evaluation

    run = tmp_path / "run"
    shutil.copytree(tiny_phantom_run, run)
    written = evaluate_run(run, pixel=False)
    assert written["format"] == FORMAT
    m = Evaluation.read(run)
    assert m.exam_auc == written["exam"]["auc"] and m.supervision == written["supervision"]
    assert m.own_sequence_f1 == m.sequence_f1["probability" if m.supervision == "strong" else "attention"]
    old = {k: v for k, v in written.items() if k != "format"}           # a record from before the field
    assert Evaluation.from_dict(old).format == 1 and Evaluation.from_dict(old).exam_auc == m.exam_auc
    assert np.isnan(Evaluation.from_dict({"run": "r"}).exam_auc)      # missing figures are NaN, not errors
    with pytest.raises(ValueError, match="newer than this code reads"):
        Evaluation.from_dict({**written, "format": FORMAT + 1})
    assert json.loads(runs.evaluation_path(run).read_text())["format"] == FORMAT
