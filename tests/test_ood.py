"""Tests for ich.ood: the training-slice Gaussian, its validation-fixed threshold and the verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from _series import ct_small_series
from ich import ood, runs
from ich.dicom import read_series
from ich.store import open_dataset


def test_reference_is_fitted_on_train_thresholded_on_val_and_cached(tiny_phantom_run):
    ref = ood.load_reference(tiny_phantom_run)
    exams = open_dataset(runs.read_config(tiny_phantom_run).data.dataset).exams
    assert len(ref.val_scores) == int((exams.split == "val").sum())        # validation exams only, never test
    assert ref.n_train_slices == int(exams.loc[exams.split == "train", "n_slices"].sum())
    assert ref.threshold == pytest.approx(np.quantile(ref.val_scores, ood.THRESHOLD_QUANTILE))
    assert runs.ood_path(tiny_phantom_run).is_file()
    again = ood.load_reference(tiny_phantom_run)
    np.testing.assert_array_equal(again.precision, ref.precision)
    assert again.threshold == ref.threshold


def test_a_real_body_ct_is_flagged_out_of_distribution(tiny_phantom_run, tmp_path):
    vol = read_series(ct_small_series(tmp_path / "ct", n=24))
    verdict = ood.score_hu(tiny_phantom_run, vol.hu)
    assert verdict["ood"] and verdict["ood_score"] > 1.5 * verdict["threshold"]
    assert "far from the images this model was trained on" in verdict["reason"]
    assert verdict["slice_distance"].shape == (24,)


def test_in_distribution_exams_are_mostly_not_flagged(tiny_phantom_run, tiny_dataset):
    tiny_dataset = open_dataset(tiny_dataset)
    table = ood.score_dataset(tiny_phantom_run, tiny_dataset.path)
    assert list(table.columns) == ["exam_id", "ood_score", "threshold", "ood", "reason"]
    assert len(table) == len(tiny_dataset.exams)
    assert table["ood"].mean() <= 0.35          # 3-4 validation exams fix a noisy threshold on this tiny set
    assert table.loc[~table.ood, "reason"].str.contains("resemble the training images").all()


def test_an_unfinished_run_has_no_reference(tiny_phantom_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_phantom_run, run)
    runs.ood_path(run).unlink(missing_ok=True)
    runs.write_status(run, "running")
    with pytest.raises(ValueError, match="is running, not done: the out-of-distribution check needs a finished run"):
        ood.load_reference(run)
