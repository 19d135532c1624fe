"""Tests for ich.runs: the run folder's files, atomic status, metrics, predictions, listing."""

import json
import os
import pickle
from pathlib import Path

import pandas as pd
import pytest
import torch

from ich import runs
from ich.config import make_config


@pytest.fixture
def run(tmp_path):
    return runs.create_run(tmp_path / "r1", make_config("ds", supervision="weak", budget=12, seed=1))


def test_create_and_read_config(run, tmp_path):
    assert runs.read_config(run) == make_config("ds", supervision="weak", budget=12, seed=1)
    assert runs.read_status(run)["state"] == "queued"
    with pytest.raises(FileExistsError, match="pass --resume to continue it"):
        runs.create_run(run, make_config("ds"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(FileExistsError, match="holds other files"):
        runs.create_run(tmp_path / "other", make_config("ds"))
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        runs.read_config(tmp_path / "other")


def test_status_merges_and_is_strict_json(run):
    runs.write_status(run, "running", epoch=2, progress=0.5)
    st = runs.write_status(run, summary={"auc": float("nan")})
    assert st["state"] == "running" and st["epoch"] == 2 and st["summary"]["auc"] is None
    json.loads((run / runs.STATUS_FILE).read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert not list(run.glob(".*tmp*"))                     # no temporary file left behind
    with pytest.raises(ValueError, match="state must be one of"):
        runs.write_status(run, "paused")


def test_metrics_append_read_truncate(run):
    assert runs.read_metrics(run).empty
    for e in (1, 2, 3):
        runs.append_metrics(run, {"epoch": e, "train_loss": 1.0 / e, "val_exam_auc": float("nan")})
    with open(run / runs.METRICS_FILE, "a") as f:
        f.write('{"epoch": 4, "train_lo')                   # a torn line from a killed process
    df = runs.read_metrics(run)
    assert df.epoch.tolist() == [1, 2, 3] and df.val_exam_auc.isna().all()
    runs.truncate_metrics(run, 2)
    assert runs.read_metrics(run).epoch.tolist() == [1, 2]


def test_predictions_round_trip(run):
    df = pd.DataFrame({"exam_id": ["a", "a", "b"], "index": [0, 1, 0], "split": "test",
                       "exam_score": [0.9, 0.9, 0.1], "exam_label": pd.array([1, 1, 0], dtype="Int8"),
                       "slice_score": [0.2, 0.8, 0.1], "attention": [0.3, 0.7, 1.0],
                       "slice_label": pd.array([0, 1, None], dtype="Int8")})
    runs.write_predictions(run, df)
    exams, slices = runs.read_predictions(run)
    assert exams.exam_id.tolist() == ["a", "b"] and exams.n_slices.tolist() == [2, 1]
    assert exams.exam_score.tolist() == [0.9, 0.1] and slices.slice_label.isna().tolist() == [False, False, True]
    with pytest.raises(ValueError, match="lack columns"):
        runs.write_predictions(run, df.drop(columns="attention"))
    with pytest.raises(FileNotFoundError, match="predictions are written when training ends"):
        runs.read_predictions(run, name="cq500")


def test_checkpoint_messages(run):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint yet \(state: queued\)"):
        runs.load_checkpoint(run)
    runs.save_checkpoint(run, {"epoch": 3, "model": {}})
    assert runs.load_checkpoint(run)["epoch"] == 3


def test_cancel_marker_and_listing(run, tmp_path):
    assert not runs.cancel_requested(run)
    runs.request_cancel(run)
    assert runs.cancel_requested(run)
    runs.clear_cancel(run)
    assert not runs.cancel_requested(run)
    runs.create_run(tmp_path / "r2", make_config("ds", supervision="strong", budget=40))
    runs.write_status(tmp_path / "r2", "done", summary={"test_exam_auc": 0.9, "best_epoch": 2})
    table = runs.list_runs(tmp_path)
    assert table.run.tolist() == ["r2", "r1"]
    assert table.set_index("run").loc["r2", "test_exam_auc"] == 0.9
    assert table.set_index("run").loc["r1", "budget"] == 12
    empty = runs.list_runs(tmp_path / "nothing")
    assert empty.empty and "state" in empty.columns


def test_run_name_and_prediction_names():
    cfg = make_config("ds", supervision="mixed", budget=30, seed=2)
    assert runs.run_name(cfg, 0).endswith("-mixed-m30-s2")
    with pytest.raises(ValueError, match="prediction name"):
        runs.predictions_path("x", "../evil")


# ------------------------------------------------------------------------------ one writer, safe files
def test_one_writer_per_run_folder(run):
    with runs.writer_lock(run):
        with pytest.raises(runs.RunLockedError, match=rf"being written by another process \(pid {os.getpid()}\)"):
            with runs.writer_lock(run):
                pass
    with runs.writer_lock(run):                             # released when the holder ends
        pass


def test_an_empty_or_lock_only_folder_is_a_new_run(tmp_path):
    (tmp_path / "empty").mkdir()
    runs.create_run(tmp_path / "empty", make_config("ds"))
    with runs.writer_lock(tmp_path / "locked"):
        runs.create_run(tmp_path / "locked", make_config("ds"))
    assert runs.is_run(tmp_path / "empty") and runs.is_run(tmp_path / "locked")


class _Interrupt:
    """Stops pickling half-way, as Ctrl-C or SIGTERM (mapped to KeyboardInterrupt) would."""

    def __reduce__(self):
        raise KeyboardInterrupt


def test_an_interrupted_or_failed_write_leaves_no_temporary_file(run):
    big = {"w": torch.zeros(1 << 16)}
    with pytest.raises(KeyboardInterrupt):
        runs.save_checkpoint(run, {"model": big, "x": _Interrupt()})
    with pytest.raises(TypeError):
        runs.write_status(run, "running", bad=object())
    assert not list(run.glob(".*tmp*")) and not runs.has_checkpoint(run)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_crafted_checkpoint_runs_nothing_and_names_the_trust_flag(run, tmp_path):
    marker = tmp_path / "MARKER"
    (run / runs.CHECKPOINT_FILE).write_bytes(pickle.dumps({"kind": runs.CHECKPOINT_KIND, "x": _RunsCode(marker)}))
    with pytest.raises(ValueError, match="objects that a safe load refuses.*pass --trust-checkpoint"):
        runs.load_checkpoint(run)
    torch.save({"kind": runs.CHECKPOINT_KIND, "x": _RunsCode(marker)}, run / runs.CHECKPOINT_FILE)
    with pytest.raises(ValueError, match="could run code"):
        runs.load_checkpoint(run)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", os.urandom(4096), b"PK\x03\x04" + os.urandom(300)])
def test_an_empty_or_damaged_checkpoint_gives_one_clear_line(run, content):
    (run / runs.CHECKPOINT_FILE).write_bytes(content)
    with pytest.raises(ValueError, match="empty \\(0 bytes\\)|damaged|not a checkpoint") as info:
        runs.load_checkpoint(run)
    assert "\n" not in str(info.value) and "train the run again" in str(info.value)


def test_a_trusted_old_checkpoint_is_converted_to_the_safe_format(run):
    import numpy as np

    torch.save({"kind": runs.CHECKPOINT_KIND, "epoch": 2, "best": {"auc": np.float64(0.75)},
                "model": {"w": torch.ones(2)}}, run / runs.CHECKPOINT_FILE)     # numpy scalars: an older writer
    with pytest.raises(ValueError, match="--trust-checkpoint"):
        runs.load_checkpoint(run)
    assert runs.trust_checkpoint(run) is True
    ckpt = runs.load_checkpoint(run)
    assert ckpt["best"]["auc"] == 0.75 and ckpt["epoch"] == 2 and torch.equal(ckpt["model"]["w"], torch.ones(2))
    assert runs.trust_checkpoint(run) is False               # already safe: nothing to do
    torch.save({"kind": runs.CHECKPOINT_KIND, "x": Path("a")}, run / runs.CHECKPOINT_FILE)
    with pytest.raises(ValueError, match="holds a PosixPath, which is neither a tensor nor plain data"):
        runs.trust_checkpoint(run)
