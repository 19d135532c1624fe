"""The dataset store: atomic dataset folders, patient-grouped splits, exam ids that are safe file names."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ich.store import DatasetWriter, check_exam_id, list_datasets, make_splits, open_dataset, safe_exam_id


def test_splits_keep_each_patient_in_one_split_and_follow_the_seed():
    exams = pd.DataFrame({"exam_id": [f"e{i}" for i in range(60)], "patient_id": [f"p{i // 3}" for i in range(60)],
                          "label": [float(i % 2) for i in range(60)]})
    split = make_splits(exams, seed=3)
    assert split.groupby(exams["patient_id"]).nunique().max() == 1              # no patient in two splits
    assert split.value_counts().to_dict() == {"train": 42, "val": 9, "test": 9}   # 70/15/15 of 60 exams
    assert split.equals(make_splits(exams, seed=3)) and not split.equals(make_splits(exams, seed=4))
    with pytest.raises(ValueError, match="summing to 1"):
        make_splits(exams, fractions=(0.5, 0.5, 0.5))


def test_exam_ids_are_file_names():
    assert check_exam_id("CQ500-CT-1.2_a") == "CQ500-CT-1.2_a"
    for bad in ("../x", "", "a/b", ".hidden", "x" * 129):
        with pytest.raises(ValueError, match="safe_exam_id"):
            check_exam_id(bad)
    assert safe_exam_id("1.2.840/../ series") == "1.2.840_.._series"
    long = safe_exam_id("u" * 300)
    assert len(long) == 128 and check_exam_id(long)


def test_a_dataset_appears_whole_or_not_at_all(tmp_path):
    hu = np.full((3, 32, 32), 30.0, np.float32)
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError):
        with DatasetWriter(out, source="folder", size=16) as w:
            w.add_exam("E1", patient_key="P1", hu=hu, slice_labels=np.array([0, 1, 0]))
            raise RuntimeError("the import stopped half-way")
    assert not out.exists() and list(tmp_path.iterdir()) == []                 # nothing half-written
    with DatasetWriter(out, source="folder", size=16) as w:
        w.add_exam("E1", patient_key="P1", hu=hu, slice_labels=np.array([0, 1, 0]))
        w.add_exam("E2", patient_key="P2", hu=hu, slice_labels=np.array([0, 0, 0]))
    ds = open_dataset(out)
    assert len(ds) == 2 and ds.size == 16 and ds.load_raw("E1").shape == (3, 16, 16)
    assert ds.exams.set_index("exam_id")["label"].to_dict() == {"E1": 1, "E2": 0}   # exam label = max slice label
    assert "P1" not in set(ds.exams["patient_id"])                                   # only a pseudonym is stored
    assert list(list_datasets(tmp_path)["name"]) == ["ds"]
    with pytest.raises(FileExistsError, match="already exists"):
        DatasetWriter(out, source="folder", size=16)


def test_recorded_readers_are_kept_as_read_columns_and_checked(tmp_path):
    from ich.labels import read_columns
    from ich.store import recorded_readers

    hu = np.full((3, 32, 32), 30.0, np.float32)
    with DatasetWriter(tmp_path / "r", source="folder", size=16) as w:
        w.add_exam("E1", patient_key="P1", hu=hu, label=1.0, reads={"R1": 1, "R2": 0, "R10": 1})
        w.add_exam("E2", patient_key="P2", hu=hu, label=0.0, reads={"R1": 0, "R2": None})
    ex = open_dataset(tmp_path / "r").exams.set_index("exam_id")
    assert read_columns(ex.columns) == ["R1", "R2", "R10"] == recorded_readers(tmp_path / "r")    # numeric order
    assert ex["read_R1"].tolist() == [1, 0] and pd.isna(ex.loc["E2", "read_R2"]) and pd.isna(ex.loc["E2", "read_R10"])
    with DatasetWriter(tmp_path / "plain", source="folder", size=16) as w:
        w.add_exam("E1", patient_key="P1", hu=hu, label=1.0)
    assert recorded_readers(tmp_path / "plain") == [] and recorded_readers(tmp_path / "missing") == []
    with DatasetWriter(tmp_path / "bad", source="folder", size=16) as w:
        with pytest.raises(ValueError, match="R1, R2"):
            w.add_exam("E1", patient_key="P1", hu=hu, label=1.0, reads={"reader one": 1})
        with pytest.raises(ValueError, match="0, 1 or None"):
            w.add_exam("E1", patient_key="P1", hu=hu, label=1.0, reads={"R1": 2})
        w.add_exam("E1", patient_key="P1", hu=hu, label=1.0)
