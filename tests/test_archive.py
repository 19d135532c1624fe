"""Archiving runs and studies: moved, never deleted; refused while written, for a study's cell, outside the data folder."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from ich import archive, paths, runs
from ich.study import StudyLock


@pytest.fixture
def data(tmp_path, monkeypatch, tiny_dataset):
    """A data folder with one single run and one study holding one cell (configs only: nothing is trained)."""
    from ich.config import make_config

    monkeypatch.setenv("ICH_DATA", str(tmp_path / "data"))
    cfg = make_config(str(tiny_dataset), preset="tiny", supervision="weak", budget=4)
    runs.create_run(paths.runs_dir() / "r1", cfg)
    study = paths.studies_dir() / "s1"
    study.mkdir(parents=True)
    (study / "study.json").write_text("{}")
    runs.create_run(study / "runs" / "weak-m4-s0", cfg)
    return tmp_path / "data"


def test_a_run_and_a_study_go_to_the_archive_and_come_back(data):
    run, study = paths.runs_dir() / "r1", paths.studies_dir() / "s1"
    moved = archive.archive(run)
    assert moved == (archive.archive_dir() / "runs" / "r1").resolve() and runs.is_run(moved) and not run.exists()
    moved_study = archive.archive(study)
    assert (moved_study / "runs" / "weak-m4-s0" / "config.json").is_file() and not study.exists()
    assert [p.name for p in archive.archived()] == ["r1", "s1"]
    assert archive.restore(moved) == run.resolve() and runs.is_run(run)
    assert archive.restore(moved_study) == study.resolve() and archive.archived() == []


def test_what_cannot_be_archived_is_refused_with_the_fix(data, tmp_path):
    with pytest.raises(ValueError, match="cell of study s1; archive the whole study"):
        archive.archive(paths.studies_dir() / "s1" / "runs" / "weak-m4-s0")
    with pytest.raises(ValueError, match="neither a run folder"):
        archive.archive(data / "datasets")
    elsewhere = tmp_path / "elsewhere" / "r2"
    shutil.copytree(paths.runs_dir() / "r1", elsewhere)
    with pytest.raises(ValueError, match="only the app's own runs"):
        archive.archive(elsewhere)
    archive.archive(paths.runs_dir() / "r1")
    shutil.copytree(elsewhere, paths.runs_dir() / "r1")
    with pytest.raises(FileExistsError, match="rename or remove it first"):
        archive.restore(archive.archive_dir() / "runs" / "r1")


def test_a_folder_being_written_is_refused(data):
    with StudyLock(paths.studies_dir() / "s1"):
        with pytest.raises(ValueError, match="cancel its job on the Runs page"):
            archive.archive(paths.studies_dir() / "s1")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom ich import runs\n"
                               "with runs.writer_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(30)",
                               str(paths.runs_dir() / "r1")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match="being written by another process"):
            archive.archive(paths.runs_dir() / "r1")
    finally:
        holder.kill()
        holder.wait()
    assert archive.archive(paths.runs_dir() / "r1").parent.name == "runs"      # free again once the writer is gone


def test_rename_takes_a_plain_name_and_refuses_a_taken_one(data):
    new = archive.rename(paths.studies_dir() / "s1", "weak-vs-strong-dec")
    assert new == (paths.studies_dir() / "weak-vs-strong-dec").resolve() and (new / "study.json").is_file()
    with pytest.raises(ValueError, match="study name must be 1-64 letters"):
        archive.rename(new, "../outside")
    runs.create_run(paths.runs_dir() / "r2", runs.read_config(paths.runs_dir() / "r1"))
    with pytest.raises(FileExistsError, match="exists already"):
        archive.rename(paths.runs_dir() / "r1", "r2")


def test_the_archive_verb_does_what_the_page_does(data, capsys):
    from ich.cli import main

    assert main(["archive", str(paths.runs_dir() / "r1")]) == 0
    assert "archived to" in capsys.readouterr().out and not (paths.runs_dir() / "r1").exists()
    assert main(["archive", "--list"]) == 0
    out = capsys.readouterr().out
    assert "study · s1" in out and "run · r1" in out.split("archived:")[1]
    assert main(["archive", str(archive.archive_dir() / "runs" / "r1"), "--restore"]) == 0
    assert main(["archive", str(paths.runs_dir() / "r1"), "--rename", "r9"]) == 0
    assert (paths.runs_dir() / "r9" / "config.json").is_file()
    assert main(["archive", str(paths.studies_dir() / "s1" / "runs" / "weak-m4-s0")]) == 2
    assert "archive the whole study" in capsys.readouterr().err
