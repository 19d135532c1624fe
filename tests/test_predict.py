"""Tests for ich.predict: scoring datasets and single volumes with a finished run; device/precision rules."""

import numpy as np
import pandas as pd
import pytest
import torch

from _blobs import write_blob_dataset
from ich import device, predict, runs
from ich.config import make_config
from ich.train import fit


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    ds = write_blob_dataset(root / "ds", 16, seed=5, size=32, slices=(5, 8), contrast=60.0, radius=0.12)
    other = write_blob_dataset(root / "other", 6, seed=6, size=48, slices=(5, 8))
    cfg = make_config(str(root / "ds"), preset="tiny", overrides={"train.epochs": 2, "train.threads": 1,
                                                                  "data.input_size": 32})
    fit(cfg, root / "run")
    return root / "run", ds, other


def test_predict_other_dataset_writes_named_file(finished):
    run, ds, other = finished
    path = predict.predict_dataset(run, other.path, device="cpu")
    assert path.name == "predictions-other.parquet"
    exams, slices = runs.read_predictions(run, name="other")
    assert sorted(exams.exam_id) == sorted(other.exams.exam_id) and len(slices) == len(other.slices)
    assert set(exams.split) == set(other.exams.split)
    with pytest.raises(ValueError, match="split must be one of"):
        predict.predict_dataset(run, other.path, split="holdout")


def test_predict_own_dataset_matches_training_predictions(finished):
    run, ds, _ = finished
    before = pd.read_parquet(runs.predictions_path(run))
    predict.predict_dataset(run, ds.path, device="cpu")
    after = pd.read_parquet(runs.predictions_path(run))
    np.testing.assert_allclose(after.exam_score, before.exam_score, rtol=1e-5, atol=1e-6)


def test_predict_volume_agrees_with_the_dataset_path(finished):
    run, ds, _ = finished
    exams, slices = runs.read_predictions(run)
    exam_id = exams.exam_id.iloc[0]
    hu, _ = ds.load(exam_id)
    score, table = predict.predict_volume(run, hu, device="cpu")
    assert score == pytest.approx(float(exams.exam_score.iloc[0]), abs=1e-5)
    assert list(table.columns) == ["index", "slice_score", "attention"] and len(table) == len(hu)
    with pytest.raises(ValueError, match=r"\(S, H, W\) HU volume"):
        predict.predict_volume(run, hu[0])


def test_device_and_precision_rules():
    assert device.resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="device must be one of"):
        device.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            device.resolve_device("cuda")
    cpu = torch.device("cpu")
    assert device.resolve_precision("auto", cpu) in ("bf16", "fp32")
    with pytest.raises(ValueError, match="fp16' needs a CUDA device"):
        device.resolve_precision("fp16", cpu)


def test_auc_helper_handles_one_class_and_missing_labels():
    assert np.isnan(predict.labelled_auc([1, 1], [0.2, 0.3]))
    assert np.isnan(predict.labelled_auc([np.nan], [0.2]))
    assert predict.labelled_auc([0, 1, np.nan], [0.1, 0.9, 0.5]) == 1.0
    assert predict.labelled_auc([0, 1, 1, 0], [0.1, 0.9, 0.4, 0.4]) == 0.875      # ties count 1/2, as sklearn


def test_cli_predict_one_dicom_series(finished, tiny_dicom_phantom, tmp_path, capsys):
    from ich.cli import main
    from ich.dicom import read_series
    run, _, _ = finished
    series = tiny_dicom_phantom / "exams" / "PH000002"
    out = tmp_path / "one.csv"
    assert main(["predict", str(run), "--dicom", str(series), "--out", str(out), "--device", "cpu"]) == 0
    table = pd.read_csv(out)
    hu = read_series(series).hu
    assert len(table) == len(hu) and table.exam_score.nunique() == 1
    score, _ = predict.predict_volume(run, hu, device="cpu")
    assert table.exam_score.iloc[0] == pytest.approx(score, abs=1e-6)
    text = capsys.readouterr().out
    assert "series 1 (" in text and "exam score" in text
    assert "OUT OF DISTRIBUTION" in text          # a run trained on blobs has never seen a head phantom


def test_cli_predict_json_flags_a_body_ct_and_refuses_a_broken_series(tiny_phantom_run, tiny_dicom_phantom,
                                                                     tmp_path, capsys):
    import json
    import shutil

    from _series import ct_small_series
    from ich.cli import main

    folder = tmp_path / "mixed"
    ct_small_series(folder / "body", n=24)
    broken = ct_small_series(tmp_path / "broken", n=12)
    (broken / "slice005.dcm").unlink()
    capsys.readouterr()
    assert main(["predict", str(tiny_phantom_run), "--dicom", str(folder), "--json", "--device", "cpu"]) == 0
    (body,) = json.loads(capsys.readouterr().out)["exams"]
    assert body["ood"] is True and "far from the images" in body["ood_reason"]
    assert 0 <= body["exam_score"] <= 1 and body["n_slices"] == 24 and body["refusals"] == []
    assert any("does not look like a head" in w for w in body["warnings"])

    assert main(["predict", str(tiny_phantom_run), "--dicom", str(broken), "--json", "--device", "cpu"]) == 2
    out = capsys.readouterr()
    (refused,) = json.loads(out.out)["exams"]
    assert refused["exam_score"] is None and "slices are missing" in refused["refusals"][0]
    assert "no series could be scored" in out.err

    head = tmp_path / "head"
    shutil.copytree(tiny_dicom_phantom / "exams" / "PH000002", head)
    assert main(["predict", str(tiny_phantom_run), "--dicom", str(head), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "series 1 (" in text and "exam score" in text and "typicality distance" in text


def test_one_exam_score_rule_for_tensors_and_arrays():
    logit, probs = np.array([0.0, 2.0]), np.array([[0.1, 0.7, -np.inf], [0.2, 0.3, 0.4]])
    assert np.allclose(predict.exam_probability("strong", logit, probs), [0.7, 0.4])
    assert np.allclose(predict.exam_probability("weak", logit, probs), 1 / (1 + np.exp(-logit)))
    t = predict.exam_probability("strong", torch.tensor(logit), torch.tensor(probs))
    assert torch.is_tensor(t) and np.allclose(t.numpy(), [0.7, 0.4])
    assert predict.exam_probability("strong", 0.0, probs[1]) == 0.4                     # one exam: a float
    assert predict.exam_probability("mixed", 0.0, probs[1]) == 0.5
