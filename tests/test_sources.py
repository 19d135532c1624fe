"""Tests for ich.sources: every importer on a tiny tree in its dataset's exact layout, plus bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import _datasets as D
import ich.dicom as icd
from ich import sources
from ich.dicom import DecoderMissingError, DicomError
from ich.labels import SUBTYPES
from ich.pseudonyms import exam_pseudonym
from ich.store import DatasetWriter, open_dataset, patient_pseudonym

PX = D.PX


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """Pristine trees, written once per module; tests that change one copy it first."""
    root = tmp_path_factory.mktemp("trees")
    return {
        "rsna": (root / "rsna", D.make_rsna_tree(root / "rsna")),
        "cq500": (root / "cq500", D.make_cq500_tree(root / "cq500")),
        "ctich": (root / "ctich", D.make_ctich_tree(root / "ctich")),
        "phantom": (root / "phantom", D.make_phantom_tree(root / "phantom")),
        "folder": (root / "folder", D.make_folder_tree(root / "folder")),
    }


def _copy(trees, name, tmp_path) -> tuple[Path, dict]:
    src, truth = trees[name]
    dst = tmp_path / f"{name}-copy"
    shutil.copytree(src, dst)
    return dst, truth


def _run(name, src, out, **kw):
    kw.setdefault("size", PX)
    kw.setdefault("workers", 1)
    return sources.IMPORTERS[name](src, out, **kw)


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _fid(series_key: str) -> str:
    """The folder importer's exam id of a fixture series written with ``write_series(series_key=...)``."""
    return exam_pseudonym(icd.make_uid("series", series_key))


A, B = _fid("fa"), _fid("fb")  # patA/head, patB/head


def _slice_col(ds, exam_id, col="label"):
    return ds.exam_slices(exam_id)[col].tolist()


# --------------------------------------------------------------------------- contract over all importers

@pytest.mark.parametrize("name", sorted(sources.IMPORTERS))
def test_every_importer_writes_a_complete_dataset(trees, tmp_path, name):
    src, _ = trees[name]
    kw = {"bhx": src / "bhx.csv"} if name == "cq500" else {}
    report = _run(name, src, tmp_path / "out", **kw)
    ds = open_dataset(tmp_path / "out")
    s = ds.summary()
    assert s["exams"] == report["exams"] == len(ds.exams) > 0
    assert s["slices"] == report["slices"] == int(ds.exams["n_slices"].sum())
    assert ds.meta["source"] == name and ds.meta["report"]["exams"] == report["exams"]
    for key in ("dropped", "drops", "transfer_syntaxes", "decoders", "twelve_bit_fixes", "seconds", "decode_workers"):
        assert key in report
    assert set(ds.exams["split"]) <= {"train", "val", "test"}
    hu, _ = ds.load(ds.exams["exam_id"].iloc[0])
    assert hu.dtype == np.float32 and hu.shape[1:] == (PX, PX)
    assert _leftovers(tmp_path) == []


# --------------------------------------------------------------------------- RSNA

def test_rsna_import(trees, tmp_path):
    src, truth = trees["rsna"]
    report = _run("rsna", src, tmp_path / "out")
    ds = open_dataset(tmp_path / "out")
    ex = ds.exams.set_index("exam_id")
    assert sorted(ex.index) == ["ID_00series0", "ID_01series1", "ID_02series2", "ID_03series3"]
    assert ex.loc[["ID_00series0", "ID_01series1", "ID_02series2", "ID_03series3"], "label"].tolist() == [1, 0, 1, 0]
    assert ex.loc["ID_02series2", "n_slices"] == 5  # its corrupt slice was dropped
    assert _slice_col(ds, "ID_00series0") == [0, 0, 1, 1, 0, 0]  # anatomical order, not file or instance order
    assert _slice_col(ds, "ID_00series0", "intraparenchymal") == [0, 0, 1, 1, 0, 0]
    assert ex.loc["ID_00series0", "intraparenchymal"] == 1 and ex.loc["ID_00series0", "subdural"] == 0
    # slice 1 of series 0 carried the 12-bit bug: fixed, counted, HU restored
    assert report["twelve_bit_fixes"] == 1
    np.testing.assert_array_equal(ds.load("ID_00series0")[0], truth["series"]["ID_00series0"]["hu"])
    # one patient, two series: same split; patient ids are hashes
    assert ex.loc["ID_00series0", "split"] == ex.loc["ID_01series1", "split"]
    assert ex.loc["ID_00series0", "patient_id"] == ex.loc["ID_01series1", "patient_id"]
    assert not ds.exams["patient_id"].str.contains("patient").any()
    # the report: drops with reasons, CSV statistics
    assert report["dropped"] == {"corrupt": 1, "unlabelled": 1}
    corrupt = next(d for d in report["drops"] if d["kind"] == "corrupt")
    assert corrupt["item"] == f"stage_2_train/{truth['corrupt']}.dcm" and "pixel data truncated" in corrupt["reason"]
    labels = report["labels"]
    assert labels["duplicate_rows_dropped"] == 6 and labels["labels_without_file"] == 1
    assert labels["images"] == 25 and labels["rows"] == 6 * 25 + 6  # 24 with files, 1 without
    assert report["decoders"] == {"native": 23}
    assert list(report["transfer_syntaxes"]) == ["1.2.840.10008.1.2.1 (Explicit VR Little Endian)"]


def test_rsna_strict_mode_stops_at_the_corrupt_file(trees, tmp_path):
    src, truth = trees["rsna"]
    with pytest.raises(DicomError, match=rf"{truth['corrupt']}\.dcm: corrupt or truncated DICOM file"):
        _run("rsna", src, tmp_path / "out", on_error="raise")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["rsna", "cq500"])
def test_process_pool_gives_the_same_dataset(trees, tmp_path, monkeypatch, name):
    src, _ = trees[name]
    kw = {"bhx": src / "bhx.csv"} if name == "cq500" else {}
    _run(name, src, tmp_path / "serial", **kw)
    monkeypatch.setattr(sources.common, "PARALLEL_MIN_FILES", 1)
    monkeypatch.setattr(sources.common, "PARALLEL_MIN_COMPRESSED", 1)
    report = _run(name, src, tmp_path / "pool", workers=2, **kw)
    assert report["scan_workers"] == 2 and report["decode_workers"] == (2 if name == "cq500" else 1)
    a, b = open_dataset(tmp_path / "serial"), open_dataset(tmp_path / "pool")
    pd.testing.assert_frame_equal(a.exams, b.exams)
    pd.testing.assert_frame_equal(a.slices, b.slices)
    for e in a.exams["exam_id"]:
        np.testing.assert_array_equal(a.load_raw(e), b.load_raw(e))
        assert (a.load_mask(e) is None) == (b.load_mask(e) is None)


def test_rsna_missing_csv(tmp_path):
    (tmp_path / "stage_2_train").mkdir()
    with pytest.raises(FileNotFoundError, match=r"stage_2_train\.csv does not exist \(the label CSV\)"):
        _run("rsna", tmp_path, tmp_path / "out")


def test_rsna_label_csv_checks(tmp_path):
    csv = tmp_path / "labels.csv"
    pd.DataFrame({"ID": ["ID_abc_epidural", "ID_abc_bleed"], "Label": [0, 1]}).to_csv(csv, index=False)
    with pytest.raises(ValueError, match=r"subtype one of .*found 1 other IDs, e\.g\. \['ID_abc_bleed'\]"):
        sources.read_rsna_labels(csv)
    pd.DataFrame({"ID": ["ID_abc_epidural"], "Label": [2]}).to_csv(csv, index=False)
    with pytest.raises(ValueError, match="Label must be 0 or 1; line 2 has '2'"):
        sources.read_rsna_labels(csv)
    pd.DataFrame({"Image": ["x"]}).to_csv(csv, index=False)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['ID', 'Label'\]"):
        sources.read_rsna_labels(csv)
    rows = D.rsna_rows("ID_abc", {"any": 1, "epidural": 1}) + [{"ID": "ID_abc_any", "Label": 0}]
    pd.DataFrame(rows).to_csv(csv, index=False)
    table, stats = sources.read_rsna_labels(csv)
    assert stats["conflicting_duplicates"] == 1 and stats["duplicate_rows_dropped"] == 1
    assert table.loc["ID_abc", "any"] == 1  # the first row wins


# --------------------------------------------------------------------------- CQ500 + BHX

def test_cq500_import_with_bhx(trees, tmp_path):
    src, _ = trees["cq500"]
    report = _run("cq500", src, tmp_path / "out", bhx=src / "bhx.csv")
    ds = open_dataset(tmp_path / "out")
    ex = ds.exams.set_index("exam_id")
    assert sorted(ex.index) == ["CQ500-CT-12_CT_5mm", "CQ500-CT-3_CT_5mm", "CQ500-CT-7_CT_5mm"]
    # majority of three readers, for ICH and per subtype
    assert ex.loc[["CQ500-CT-3_CT_5mm", "CQ500-CT-7_CT_5mm", "CQ500-CT-12_CT_5mm"], "label"].tolist() == [1, 1, 0]
    assert ex.loc["CQ500-CT-3_CT_5mm", "intraparenchymal"] == 1 and ex.loc["CQ500-CT-7_CT_5mm", "subdural"] == 1
    assert ex.loc["CQ500-CT-12_CT_5mm", list(SUBTYPES)].sum() == 0
    # each reader's own ICH read is kept too (a label source of its own: --label-noise exam=R1)
    order = ["CQ500-CT-3_CT_5mm", "CQ500-CT-7_CT_5mm", "CQ500-CT-12_CT_5mm"]
    assert {r: ex.loc[order, f"read_{r}"].tolist() for r in ("R1", "R2", "R3")} == \
        {"R1": [1, 1, 0], "R2": [1, 0, 1], "R3": [1, 1, 0]}
    assert str(ex["read_R1"].dtype) == "Int8"
    # the reference series rule dropped the thin and the contrast series
    assert report["dropped"] == {"selection_rule": 2}
    reasons = {d["item"]: d["reason"] for d in report["drops"]}
    assert "slice thickness 0.625 mm < 3 mm" in reasons["CQ500-CT-3/CT PLAIN THIN"]
    assert "folder name contains 'contrast'" in reasons["CQ500-CT-3/CT PRE CONTRAST 5mm"]
    assert report["decoders"] == {"gdcm": 12, "native": 24}  # exam 3 is JPEG lossless
    assert any(k.startswith("1.2.840.10008.1.2.4.70") for k in report["transfer_syntaxes"])
    # BHX: masks and slice labels only for boxed series; Chronic -> subdural; smaller box wins overlaps
    assert ex["has_mask"].to_dict() == {"CQ500-CT-3_CT_5mm": True, "CQ500-CT-7_CT_5mm": True,
                                        "CQ500-CT-12_CT_5mm": False}
    assert _slice_col(ds, "CQ500-CT-3_CT_5mm") == [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]
    assert pd.isna(_slice_col(ds, "CQ500-CT-12_CT_5mm")).all()
    mask = ds.load_mask("CQ500-CT-3_CT_5mm")
    expected = np.zeros((PX, PX), dtype=np.uint8)
    expected[10:16, 8:19] = 2   # x 8.4 -> 8, x + w 18.6 -> 19 (round half up)
    expected[12:15, 12:15] = 5  # the Chronic box
    np.testing.assert_array_equal(mask[4], expected)
    assert (mask[5] == 2).sum() == 4  # the box at (30, 30) is clipped to the 32x32 image
    assert _slice_col(ds, "CQ500-CT-3_CT_5mm", "subdural")[4] == 1
    assert report["bhx"]["images_unmatched"] == 1 and report["bhx"]["label_names"]["Chronic"] == 1


def test_cq500_all_series(trees, tmp_path):
    src, _ = trees["cq500"]
    report = _run("cq500", src, tmp_path / "out", series="all")
    assert report["exams"] == 5 and report["dropped"] == {}
    assert pd.isna(open_dataset(tmp_path / "out").slices["label"]).all()  # exam labels only
    with pytest.raises(ValueError, match=r"series must be one of \['reference', 'all'\], not 'thick'"):
        _run("cq500", src, tmp_path / "x", series="thick")


def test_cq500_reads_csv_must_have_the_44_columns(trees, tmp_path):
    src, _ = _copy(trees, "cq500", tmp_path)
    reads = pd.read_csv(src / "reads.csv").drop(columns=["R3:MidlineShift"])
    reads.to_csv(src / "reads.csv", index=False)
    with pytest.raises(ValueError, match=r"not the 44-column CQ500 reads\.csv: missing columns \['R3:MidlineShift'\]"):
        _run("cq500", src, tmp_path / "out")


def test_cq500_bad_bhx_rows(trees, tmp_path):
    src, _ = trees["cq500"]
    bhx = pd.read_csv(src / "bhx.csv", index_col=0)
    bad = bhx.copy()
    bad.loc[0, "labelName"] = "Bleed"
    bad.to_csv(tmp_path / "b1.csv")
    with pytest.raises(ValueError, match=r"b1\.csv line 2: labelName 'Bleed' is not one of \['Chronic', "):
        sources.read_bhx(tmp_path / "b1.csv")
    bad = bhx.copy()
    bad.loc[1, "data"] = "__import__('os').getcwd()"
    bad.to_csv(tmp_path / "b2.csv")
    with pytest.raises(ValueError, match=r"b2\.csv line 3: data must be a dict string"):
        sources.read_bhx(tmp_path / "b2.csv")


def test_cq500_missing_decoder(trees, tmp_path, monkeypatch):
    src, _ = trees["cq500"]
    monkeypatch.setattr(icd.decode, "_available_decoders", lambda ts: ())
    with pytest.raises(DecoderMissingError, match=r"CT000000\.dcm uses JPEG Lossless.*1\.2\.840\.10008\.1\.2\.4\.70.*"
                                                  r"pip install python-gdcm"):
        _run("cq500", src, tmp_path / "out")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


# --------------------------------------------------------------------------- CT-ICH

def test_ctich_import(trees, tmp_path):
    src, truth = trees["ctich"]
    report = _run("ctich", src, tmp_path / "out")
    ds = open_dataset(tmp_path / "out")
    ex = ds.exams.set_index("exam_id")
    assert ex["label"].to_dict() == {"ctich-049": 1, "ctich-050": 0, "ctich-066": 1}
    assert ex["has_mask"].all() and ex.loc["ctich-049", "slice_thickness_mm"] == pytest.approx(5.0)
    assert _slice_col(ds, "ctich-049") == [0, 1, 1, 0, 0]  # SliceNumber 2, 3 (1-based)
    assert _slice_col(ds, "ctich-049", "subdural") == [0, 0, 1, 0, 0]
    # the file's slice order is kept and the transpose (2, 1, 0) undone
    np.testing.assert_array_equal(ds.load("ctich-066")[0], truth[66]["hu"])
    m49, m66 = ds.load_mask("ctich-049"), ds.load_mask("ctich-066")
    # slice 2 of 049 is IPH + SDH: the exam's more frequent subtype (IPH, 2 slices) gives the code
    assert set(np.unique(m49[2])) == {0, 2} and set(np.unique(m49[1])) == {0, 2}
    assert set(np.unique(m66[3])) == {0, 1}  # epidural
    np.testing.assert_array_equal(m66 > 0, truth[66]["mask"] > 0)
    labels = report["labels"]
    assert labels["csv_patients_without_volume"] == [59] and labels["mask_slices_multiple_subtypes"] == 1


def test_ctich_v1_jpg_layout_is_rejected(tmp_path):
    (tmp_path / "Patients_CT" / "049" / "brain").mkdir(parents=True)
    (tmp_path / "hemorrhage_diagnosis.csv").write_text("PatientNumber,SliceNumber\n")
    with pytest.raises(ValueError, match=r"CT-ICH v1\.0 layout .*download v1\.3\.1"):
        _run("ctich", tmp_path, tmp_path / "out")


def test_ctich_slice_count_must_match_the_csv(trees, tmp_path):
    src, _ = _copy(trees, "ctich", tmp_path)
    csv = pd.read_csv(src / "hemorrhage_diagnosis_raw_ct.csv")
    csv = csv[~((csv.PatientNumber == 50) & (csv.SliceNumber == 4))]
    csv.to_csv(src / "hemorrhage_diagnosis_raw_ct.csv", index=False)
    with pytest.raises(ValueError, match=r"050\.nii: the volume has 4 slices but hemorrhage_diagnosis_raw_ct\.csv "
                                         r"lists 3"):
        _run("ctich", src, tmp_path / "strict", on_error="raise")
    report = _run("ctich", src, tmp_path / "lenient")
    assert report["exams"] == 2 and report["dropped"] == {"bad_volume": 1}


def test_ctich_mask_must_be_binary(trees, tmp_path):
    src, truth = _copy(trees, "ctich", tmp_path)
    mask = (truth[49]["mask"] * 3).astype(np.uint8)
    mask[0, 0, 0] = 1
    nib.save(nib.Nifti1Image(np.transpose(mask, (2, 1, 0)), np.eye(4)), str(src / "masks" / "049.nii"))
    with pytest.raises(ValueError, match=r"049\.nii: CT-ICH masks must be binary, found values \[0, 1, 3\]"):
        _run("ctich", src, tmp_path / "out", on_error="raise")


def test_ctich_mask_codes_rule():
    sub = np.array([[0, 1, 0, 0, 0], [0, 1, 0, 0, 1], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 1]])
    codes, ambiguous, unlabelled = sources.ctich.mask_codes(sub, np.array([1, 1, 1, 0, 1], dtype=bool))
    # one subtype -> its code; several -> the exam's most frequent of them; none -> the exam's most frequent
    assert codes.tolist() == [2, 2, 2, 2, 5] and ambiguous == 1 and unlabelled == 1
    codes, _, _ = sources.ctich.mask_codes(np.zeros((2, 5), dtype=int), np.array([True, False]))
    assert codes[0] == SUBTYPES.index("intraparenchymal") + 1


# --------------------------------------------------------------------------- phantom

def test_phantom_import(trees, tmp_path):
    src, truth = trees["phantom"]
    report = _run("phantom", src, tmp_path / "out")
    ds = open_dataset(tmp_path / "out")
    assert ds.exams["exam_id"].tolist() == ["PH0000", "PH0001", "PH0002"]
    assert ds.exams["has_mask"].all() and ds.exams["label"].tolist() == [1, 0, 1]
    for exam_id, t in truth.items():
        hu, mask = ds.load(exam_id)
        np.testing.assert_array_equal(hu, t["hu"])
        np.testing.assert_array_equal(mask, t["mask"])
        assert _slice_col(ds, exam_id) == (t["mask"].reshape(5, -1).max(axis=1) > 0).astype(int).tolist()
    assert _slice_col(ds, "PH0000", "subdural") == [0, 0, 1, 0, 0]
    assert report["synth"]["generator"] == "ich.phantom"


def test_phantom_requires_synth_json(trees, tmp_path):
    src, _ = _copy(trees, "phantom", tmp_path)
    (src / "synth.json").write_text(json.dumps({"generator": "someone-else", "version": 1}))
    with pytest.raises(ValueError, match=r"generator 'someone-else' version 1; expected 'ich\.phantom' version 1"):
        _run("phantom", src, tmp_path / "out")
    (src / "synth.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no synth.json, so it is not a phantom folder"):
        _run("phantom", src, tmp_path / "out")


def test_phantom_mask_with_wrong_axes(trees, tmp_path):
    src, truth = _copy(trees, "phantom", tmp_path)
    wrong = truth["PH0001"]["mask"]  # saved as (S, H, W), without the (2, 1, 0) transpose
    nib.save(nib.Nifti1Image(wrong, np.eye(4)), str(src / "masks" / "PH0001.nii.gz"))
    with pytest.raises(ValueError, match=r"PH0001\.nii\.gz: mask shape \(S, H, W\) = \(32, 32, 5\) does not match"):
        _run("phantom", src, tmp_path / "strict", on_error="raise")
    report = _run("phantom", src, tmp_path / "lenient")
    assert report["exams"] == 2 and report["dropped"] == {"bad_mask": 1}


# --------------------------------------------------------------------------- folder

def test_folder_import(trees, tmp_path):
    src, truth = trees["folder"]
    report = _run("folder", src, tmp_path / "out")
    ds = open_dataset(tmp_path / "out")
    ids = ds.exams["exam_id"].tolist()
    assert ids[:2] == [A, B] and len(ids) == 4
    assert set(ids[2:]) == {_fid("mix1"), _fid("mix2")}  # two series in one folder: two exams
    assert report["dropped"] == {"not_ct": 1} and "modality is 'MR'" in report["drops"][0]["reason"]
    assert report["files"] == {"dicom": 18, "images": 18, "non_image": 0, "unreadable": 0}  # README ignored
    assert ds.exams["label"].isna().all() and not ds.exams["has_mask"].any()
    np.testing.assert_array_equal(ds.load(B)[0], truth["patB/head"]["hu"])


def test_folder_with_labels_csv(trees, tmp_path):
    src, truth = trees["folder"]
    sops = truth["patA/head"]["sops"]
    rows = [r for i, s in enumerate(sops) for r in D.rsna_rows(s, {"any": 1, "subdural": 1} if i == 1 else {})]
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    _run("folder", src, tmp_path / "out", labels=tmp_path / "labels.csv")
    ds = open_dataset(tmp_path / "out")
    ex = ds.exams.set_index("exam_id")
    assert ex.loc[A, "label"] == 1 and ex.loc[A, "subdural"] == 1
    assert _slice_col(ds, A) == [0, 1, 0, 0]
    assert pd.isna(ex.loc[B, "label"])


def test_folder_labels_naming_unknown_images(trees, tmp_path):
    src, truth = trees["folder"]
    rows = D.rsna_rows(truth["patA/head"]["sops"][0], {}) + D.rsna_rows("1.2.3.4.5", {})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(ValueError, match=r"labels\.csv: 1 of 2 labelled images are not in .*\['1\.2\.3\.4\.5'\]"):
        _run("folder", src, tmp_path / "out", labels=tmp_path / "labels.csv")
    assert not (tmp_path / "out").exists()


def test_folder_labels_covering_part_of_an_exam(trees, tmp_path):
    src, truth = trees["folder"]
    pd.DataFrame(D.rsna_rows(truth["patA/head"]["sops"][0], {})).to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(ValueError, match=f"exam {A}: .*labels only some of its 4 slices"):
        _run("folder", src, tmp_path / "out", labels=tmp_path / "labels.csv", on_error="raise")
    report = _run("folder", src, tmp_path / "ok", labels=tmp_path / "labels.csv")
    assert report["dropped"] == {"not_ct": 1, "partial_labels": 1}


def test_folder_bad_series_are_dropped_or_raise(trees, tmp_path):
    src, truth = _copy(trees, "folder", tmp_path)
    sops = truth["patA/head"]["sops"]
    D.edit(src / "patA" / "head" / f"{sops[1]}.dcm", ImagePositionPatient=None)
    shutil.copy(src / "patB" / "head" / f"{truth['patB/head']['sops'][0]}.dcm", src / "patB" / "head" / "dup.dcm")
    D.edit(src / "patB" / "head" / "dup.dcm", SOPInstanceUID="1.2.3.77")
    report = _run("folder", src, tmp_path / "out")
    assert report["dropped"] == {"not_ct": 1, "missing_position": 1, "duplicate_position": 1}
    assert report["exams"] == 2
    with pytest.raises(DicomError, match="no ImagePositionPatient"):
        _run("folder", src, tmp_path / "strict", on_error="raise")


def test_folder_with_only_non_ct_series(trees, tmp_path):
    src, _ = trees["folder"]
    with pytest.raises(ValueError, match=r"no series could be imported \(dropped by kind: not_ct: 1\).*'MR'"):
        _run("folder", src / "patD", tmp_path / "out")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


# --------------------------------------------------------------------------- output folder, interruption, privacy

def test_empty_source_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty holds no DICOM files"):
        _run("folder", tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="nope does not exist"):
        _run("folder", tmp_path / "nope", tmp_path / "out")


def test_output_folder_that_holds_a_dataset_or_other_files(trees, tmp_path):
    src, _ = trees["phantom"]
    _run("phantom", src, tmp_path / "out")
    with pytest.raises(FileExistsError, match="already exists and holds an ich dataset; .*--overwrite"):
        _run("phantom", src, tmp_path / "out")
    assert _run("phantom", src, tmp_path / "out", overwrite=True)["exams"] == 3
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="already exists and holds other files; choose a new --out folder"):
        _run("phantom", src, tmp_path / "mine")
    with pytest.raises(FileExistsError, match="holds files that are not an ich dataset; refusing to overwrite"):
        _run("phantom", src, tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    (tmp_path / "empty").mkdir()                              # an empty folder is a new one, not "other files"
    assert _run("phantom", src, tmp_path / "empty")["exams"] == 3


def test_interrupted_import_leaves_nothing(trees, tmp_path, monkeypatch):
    src, _ = trees["phantom"]
    calls = []
    original = DatasetWriter.add_exam

    def interrupt(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DatasetWriter, "add_exam", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _run("phantom", src, tmp_path / "out")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_no_identifying_tag_reaches_the_dataset(trees, tmp_path, caplog):
    src, truth = _copy(trees, "folder", tmp_path)
    for f in src.rglob("*.dcm"):
        D.plant_identity(f)
    _run("folder", src, tmp_path / "out")
    blob = b"".join(p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file())
    for secret in (D.SECRET_NAME, D.SECRET_ID, D.SECRET_BIRTH, "Secret General", "ACC-SECRET"):
        assert secret.encode() not in blob and secret not in caplog.text
    ds = open_dataset(tmp_path / "out")
    assert set(ds.exams["patient_id"]) == {patient_pseudonym(icd.key_hash(D.SECRET_ID))}


def test_progress_callback_reports_each_stage(trees, tmp_path):
    src, _ = trees["rsna"]
    seen = []
    _run("rsna", src, tmp_path / "out", on_progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert seen[-1] == ("decode", 24, 24)
    assert ("scan", 25, 25) in seen  # 24 series files (one corrupt) + the one missing from the CSV


def test_folder_and_file_names_never_reach_ids_tables_or_file_names(tmp_path):
    """A tree named after a patient (as clinical exports often are) leaves no trace of those names."""
    names = ("Doe_Jane_MRN4711", "DOE-JANE-19450317.dcm")
    hu, _ = D.head_volume(4)
    sops = D.write_series(hu, tmp_path / "src" / names[0], patient_id="P", series_key="named",
                          file_names=[f"{k}-{names[1]}" for k in range(4)])
    D.write_series(hu[:3], tmp_path / "src" / names[0] / "other", patient_id="P", series_key="named-2")
    broken = tmp_path / "src" / names[0] / "other" / "broken.dcm"
    shutil.copy(tmp_path / "src" / names[0] / f"0-{names[1]}", broken)
    D.edit(broken, SOPInstanceUID="1.2.3.99", ImagePositionPatient=[0, 0, 99])
    D.truncate_pixels(broken)
    report = _run("folder", tmp_path / "src", tmp_path / "out")
    assert report["dropped"] == {"corrupt": 1}
    ds = open_dataset(tmp_path / "out")
    assert len(ds) == 2 and all(e.startswith("exam-") for e in ds.exams["exam_id"])
    outputs = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    for name in ("Doe", "Jane", "MRN4711", "19450317"):
        assert not any(name in str(p.relative_to(tmp_path)) for p in outputs), name
        for p in outputs:
            if p.suffix == ".parquet":
                assert name.encode() not in p.read_bytes(), (name, p.name)
    meta = (tmp_path / "out" / "dataset.json").read_text()
    assert str(tmp_path) not in meta and str(tmp_path.resolve()) not in meta  # no absolute source path
    assert json.loads(meta)["report"]["drops"][0]["item"].endswith("broken.dcm")  # relative, still useful
    assert sops  # the fixture wrote the series under the patient-named folder


def test_fifo_and_other_special_files_in_an_import_folder_are_skipped_not_waited_on(trees, tmp_path):
    import os
    import threading

    src, truth = _copy(trees, "folder", tmp_path)
    fifos = [src / "patA" / "pipe", src / "patB" / "head" / "pipe.dcm"]  # no suffix, and a DICOM suffix
    for f in fifos:
        os.mkfifo(f)
    os.symlink(src / "missing.dcm", src / "patA" / "dangling.dcm")
    result = {}
    thread = threading.Thread(target=lambda: result.update(report=_run("folder", src, tmp_path / "out")),
                              daemon=True)
    thread.start()
    thread.join(60)
    if thread.is_alive():  # the old code blocks in open(): give it a writer so the thread can end
        for f in fifos:
            try:
                os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
    assert not thread.is_alive(), "the import hung on a FIFO"
    assert result["report"]["exams"] == 4 and result["report"]["files"]["dicom"] == 18


@pytest.mark.parametrize("source,expected", [("folder", "give the folder that holds the DICOM series"),
                                             ("rsna", "give the rsna dataset folder")])
def test_missing_source_wording(tmp_path, source, expected):
    with pytest.raises(FileNotFoundError, match=f"does not exist on this machine; {expected}$"):
        _run(source, tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=f"is not a folder; {expected}$"):
        _run(source, tmp_path / "file", tmp_path / "out")


def test_slice_labels_join_by_sop_uid_or_file_name(tmp_path):
    """The label join of every DICOM importer: by SOPInstanceUID, else the file name; None for any gap."""
    from types import SimpleNamespace

    from ich.sources.common import LabelLookup, read_rsna_labels, slice_labels_from_table

    rows = [(f"{image}_{name}", value) for image, values in (("1.2.3", (1, 0, 1, 0, 0, 0)), ("ID_f00d", (0,) * 6),
                                                              ("ID_half", (1, 1, 0, 0, 0, 0)))
            for name, value in zip(("any", *SUBTYPES), values)]
    rows = [r for r in rows if r[0] != "ID_half_subdural"]                  # one image lacks a subtype label
    (tmp_path / "labels.csv").write_text("ID,Label\n" + "".join(f"{i},{v}\n" for i, v in rows))
    table, stats = read_rsna_labels(tmp_path / "labels.csv")
    labels = LabelLookup.of(table)
    by_uid = SimpleNamespace(sop_uid="1.2.3", path=str(tmp_path / "ID_other.dcm"))
    by_name = SimpleNamespace(sop_uid="9.9.9", path=str(tmp_path / "ID_f00d.dcm"))
    found = slice_labels_from_table([by_uid, by_name], labels)
    assert found is not None
    np.testing.assert_array_equal(found[0], [1, 0])
    np.testing.assert_array_equal(found[1], [[0, 1, 0, 0, 0], [0, 0, 0, 0, 0]])   # labels.SUBTYPES order
    assert found[0].dtype == np.int8 and found[1].dtype == np.int8
    unknown = SimpleNamespace(sop_uid="7.7", path=str(tmp_path / "ID_missing.dcm"))
    assert slice_labels_from_table([by_uid, unknown], labels) is None
    half = SimpleNamespace(sop_uid=None, path=str(tmp_path / "ID_half.dcm"))
    assert stats["incomplete_images"] == 1 and slice_labels_from_table([half], labels) is None
